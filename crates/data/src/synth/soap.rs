//! Doctor–patient dialogues paired with SOAP notes in the MedSynth note format: numbered bold
//! section headers, `- **Key:** value` bullets, optional CC/HPI/ROS sub-headers, a referral to an
//! invented doctor. Every fact in the note is spoken in the dialogue first, so a model can learn
//! the mapping; vitals, doses and durations vary per pair.

use super::Gen;
use crate::soap::SoapExample;

struct Med {
    name: &'static str,
    dose: &'static str,
    route: &'static str,
    frequency: &'static str,
}

struct Condition {
    icd10: &'static str,
    name: &'static str,
    specialty: &'static str,
    complaint: &'static str,
    /// What the patient says about the symptoms (first person).
    story: &'static [&'static str],
    /// Pertinent negatives, asked by the doctor and denied.
    negatives: &'static [&'static str],
    exam: &'static [&'static str],
    results: &'static [&'static str],
    assessment: &'static str,
    meds: &'static [Med],
    tests: &'static [&'static str],
    advice: &'static str,
}

const CONDITIONS: &[Condition] = &[
    Condition {
        icd10: "I10",
        name: "essential hypertension",
        specialty: "Cardiology",
        complaint: "elevated home blood pressure readings",
        story: &[
            "My home readings have been running around 150 over 95 most mornings.",
            "I get a dull headache at the back of my head some evenings.",
        ],
        negatives: &["chest pain", "shortness of breath", "vision changes"],
        exam: &[
            "Heart has a regular rate and rhythm without murmurs",
            "Lungs are clear to auscultation bilaterally",
        ],
        results: &["Basic metabolic panel from last month was within normal limits"],
        assessment: "Essential hypertension, newly diagnosed, without evidence of end-organ damage.",
        meds: &[Med {
            name: "Lisinopril",
            dose: "10 mg",
            route: "orally",
            frequency: "once daily",
        }],
        tests: &["Lipid panel", "Urinalysis for microalbumin"],
        advice: "reduce salt intake, walk thirty minutes a day and keep a blood pressure log",
    },
    Condition {
        icd10: "E11.65",
        name: "type 2 diabetes mellitus with hyperglycemia",
        specialty: "Endocrinology",
        complaint: "increased thirst and frequent urination",
        story: &[
            "I've been really thirsty and I'm up three or four times a night to urinate.",
            "My fasting sugars at home have been in the two hundreds.",
        ],
        negatives: &["numbness in the feet", "blurred vision", "weight loss"],
        exam: &[
            "Monofilament sensation is intact in both feet",
            "No acanthosis nigricans",
        ],
        results: &["Hemoglobin A1c is 9.2 percent"],
        assessment: "Type 2 diabetes mellitus with hyperglycemia, suboptimally controlled on current therapy.",
        meds: &[
            Med {
                name: "Metformin",
                dose: "1000 mg",
                route: "orally",
                frequency: "twice daily",
            },
            Med {
                name: "Empagliflozin",
                dose: "10 mg",
                route: "orally",
                frequency: "once daily",
            },
        ],
        tests: &[
            "Repeat hemoglobin A1c in three months",
            "Dilated eye examination",
        ],
        advice: "follow a carbohydrate-consistent diet and check fasting glucose every morning",
    },
    Condition {
        icd10: "J45.41",
        name: "moderate persistent asthma with acute exacerbation",
        specialty: "Pulmonology",
        complaint: "wheezing and shortness of breath",
        story: &[
            "I've been wheezing for about a week, worse at night.",
            "I'm using my rescue inhaler four or five times a day.",
        ],
        negatives: &["fever", "chest pain", "leg swelling"],
        exam: &[
            "Diffuse expiratory wheezes in both lung fields",
            "No accessory muscle use",
        ],
        results: &["Peak expiratory flow is 62 percent of predicted"],
        assessment: "Moderate persistent asthma with acute exacerbation, likely triggered by a recent viral infection.",
        meds: &[
            Med {
                name: "Prednisone",
                dose: "40 mg",
                route: "orally",
                frequency: "once daily for 5 days",
            },
            Med {
                name: "Budesonide-formoterol",
                dose: "160/4.5 mcg, two puffs",
                route: "inhaled",
                frequency: "twice daily",
            },
        ],
        tests: &["Spirometry after recovery"],
        advice: "avoid smoke exposure and use the spacer with every inhaler dose",
    },
    Condition {
        icd10: "M17.11",
        name: "primary osteoarthritis of the right knee",
        specialty: "Orthopedics",
        complaint: "right knee pain",
        story: &[
            "My right knee has been aching for months, worse going down stairs.",
            "It's stiff for about twenty minutes when I get up in the morning.",
        ],
        negatives: &["knee locking", "fever", "recent injury"],
        exam: &[
            "Crepitus with range of motion of the right knee",
            "Mild medial joint line tenderness without effusion",
        ],
        results: &["X-ray shows medial joint space narrowing and osteophytes"],
        assessment: "Primary osteoarthritis of the right knee, moderate, limiting stair climbing.",
        meds: &[Med {
            name: "Naproxen",
            dose: "500 mg",
            route: "orally",
            frequency: "twice daily with food",
        }],
        tests: &["Physical therapy evaluation"],
        advice: "do quadriceps strengthening exercises and use ice after activity",
    },
    Condition {
        icd10: "N30.00",
        name: "acute cystitis without hematuria",
        specialty: "Urology",
        complaint: "burning with urination",
        story: &[
            "It started three days ago, it burns when I pee and I have to go all the time.",
            "There's some pressure low in my belly.",
        ],
        negatives: &["fever", "flank pain", "blood in the urine"],
        exam: &[
            "Mild suprapubic tenderness",
            "No costovertebral angle tenderness",
        ],
        results: &["Urine dipstick is positive for leukocyte esterase and nitrites"],
        assessment: "Acute uncomplicated cystitis without hematuria.",
        meds: &[Med {
            name: "Nitrofurantoin",
            dose: "100 mg",
            route: "orally",
            frequency: "twice daily for 5 days",
        }],
        tests: &["Urine culture"],
        advice: "drink plenty of fluids and return if fever or back pain develops",
    },
    Condition {
        icd10: "G43.009",
        name: "migraine without aura",
        specialty: "Neurology",
        complaint: "recurrent headaches",
        story: &[
            "I get a throbbing headache on one side about four times a month.",
            "Light and noise make it worse and I feel sick to my stomach.",
        ],
        negatives: &["weakness", "vision loss", "the worst headache of my life"],
        exam: &[
            "Cranial nerves II through XII are intact",
            "Normal gait and coordination",
        ],
        results: &["No prior imaging on file"],
        assessment: "Migraine without aura, episodic, without red-flag features.",
        meds: &[
            Med {
                name: "Sumatriptan",
                dose: "50 mg",
                route: "orally",
                frequency: "at headache onset, may repeat once after 2 hours",
            },
            Med {
                name: "Propranolol",
                dose: "40 mg",
                route: "orally",
                frequency: "twice daily",
            },
        ],
        tests: &["Headache diary for eight weeks"],
        advice: "keep regular sleep and meals and limit caffeine",
    },
    Condition {
        icd10: "D50.9",
        name: "iron deficiency anemia",
        specialty: "Hematology",
        complaint: "fatigue",
        story: &[
            "I've been exhausted for two months, even climbing one flight of stairs.",
            "My periods have been heavier than usual.",
        ],
        negatives: &["black stools", "chest pain", "fainting"],
        exam: &["Conjunctival pallor", "No hepatosplenomegaly"],
        results: &["Hemoglobin is 9.8 g/dL and ferritin is 6 ng/mL"],
        assessment: "Iron deficiency anemia, likely from heavy menstrual bleeding.",
        meds: &[Med {
            name: "Ferrous sulfate",
            dose: "325 mg",
            route: "orally",
            frequency: "every other day",
        }],
        tests: &["Complete blood count in six weeks", "Pelvic ultrasound"],
        advice: "take the iron with orange juice and not with tea or coffee",
    },
    Condition {
        icd10: "F41.1",
        name: "generalized anxiety disorder",
        specialty: "Psychiatry",
        complaint: "constant worry and poor sleep",
        story: &[
            "I can't stop worrying about work and my family, it's every day.",
            "I lie awake for hours and my shoulders are always tense.",
        ],
        negatives: &["thoughts of harming myself", "panic attacks", "alcohol use"],
        exam: &[
            "Alert and oriented, anxious affect",
            "Thought process is linear and goal-directed",
        ],
        results: &["GAD-7 score is 14"],
        assessment: "Generalized anxiety disorder, moderate severity.",
        meds: &[Med {
            name: "Sertraline",
            dose: "50 mg",
            route: "orally",
            frequency: "once daily",
        }],
        tests: &["Thyroid-stimulating hormone"],
        advice: "start cognitive behavioral therapy and practise daily relaxation breathing",
    },
];

const FIRST_NAMES: &[&str] = &[
    "Dale", "Maria", "Priya", "Tomasz", "Aisha", "Kenji", "Elena", "Samuel", "Grace", "Omar",
    "Ingrid", "Luis", "Hannah", "Wei", "Fatima", "Jonas",
];
const LAST_NAMES: &[&str] = &[
    "Halvorsen",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Castellano",
    "Nakamura",
    "Brennan",
    "Adeyemi",
    "Kowalczyk",
    "Fontaine",
    "Haddad",
    "Sorensen",
];
const DOCTORS: &[&str] = &[
    "Reyes",
    "Patel",
    "Whitfield",
    "Novak",
    "Abernathy",
    "Chen",
    "Morrison",
    "Iyer",
];
const DURATIONS: &[&str] = &[
    "three days",
    "about a week",
    "two weeks",
    "a month",
    "several months",
];

#[derive(Clone, Copy)]
enum Tags {
    Bracket,
    BracketNoColon,
    Bold,
}

impl Tags {
    fn doctor(self) -> &'static str {
        match self {
            Tags::Bracket => "[doctor]:",
            Tags::BracketNoColon => "[doctor]",
            Tags::Bold => "**Doctor:**",
        }
    }
    fn patient(self) -> &'static str {
        match self {
            Tags::Bracket => "[patient]:",
            Tags::BracketNoColon => "[patient]",
            Tags::Bold => "**Patient:**",
        }
    }
}

/// `n` synthetic pairs; ids `SYN-SOAP-000001`…
pub fn soap_pairs(n: usize, seed: u64) -> Vec<SoapExample> {
    let mut g = Gen::new(seed ^ 0x534f_4150);
    (0..n).map(|i| one_pair(&mut g, i)).collect()
}

fn one_pair(g: &mut Gen, i: usize) -> SoapExample {
    let c = &CONDITIONS[g.range(0, CONDITIONS.len() as u32 - 1) as usize];
    let first = g.pick(FIRST_NAMES);
    let last = g.pick(LAST_NAMES);
    let age = g.range(24, 81);
    let doctor = g.pick(DOCTORS);
    let referral = g.pick(DOCTORS);
    let duration = g.pick(DURATIONS);
    let tags = [Tags::Bracket, Tags::BracketNoColon, Tags::Bold][g.range(0, 2) as usize];
    let (sys, dia) = (g.range(112, 162), g.range(68, 98));
    let hr = g.range(58, 104);
    let rr = g.range(12, 20);
    let temp = 36.4 + g.range(0, 12) as f64 / 10.0;
    let spo2 = g.range(94, 99);
    let weeks = g.range(2, 8);

    let mut d: Vec<String> = Vec::new();
    let mut say = |doctor_turn: bool, s: String| {
        let tag = if doctor_turn {
            tags.doctor()
        } else {
            tags.patient()
        };
        d.push(format!("{tag} {s}"));
    };
    say(
        true,
        format!("Good morning, I'm Dr. {doctor}. Can you confirm your name and age for me?"),
    );
    say(false, format!("{first} {last}, I'm {age}."));
    say(true, "Thank you. What brings you in today?".to_string());
    say(
        false,
        format!("I've had {} for {duration}. {}", c.complaint, c.story[0]),
    );
    for line in &c.story[1..] {
        say(true, "Tell me more about that.".to_string());
        say(false, line.to_string());
    }
    for neg in c.negatives {
        say(true, format!("Have you noticed any {neg}?"));
        say(
            false,
            g.pick(&["No, none of that.", "No.", "Not that I've noticed."])
                .to_string(),
        );
    }
    say(
        true,
        format!(
            "Your blood pressure today is {sys} over {dia}, heart rate {hr}, respiratory rate {rr}, temperature {temp:.1} degrees, and oxygen saturation {spo2} percent."
        ),
    );
    let exam_spoken: Vec<String> = c.exam.iter().map(|e| e.to_lowercase()).collect();
    say(
        true,
        format!("On examination, {}.", exam_spoken.join(", and ")),
    );
    for r in c.results {
        say(true, format!("{r}."));
    }
    say(
        true,
        format!(
            "This looks like {}. {}",
            c.name, "Here is what I'd like to do."
        ),
    );
    for m in c.meds {
        say(
            true,
            format!(
                "I'm prescribing {} {}, {} {}.",
                m.name.to_lowercase(),
                m.dose,
                m.route,
                m.frequency
            ),
        );
    }
    say(
        true,
        format!(
            "We'll also order {}, and I'd like you to {}.",
            c.tests
                .iter()
                .map(|t| t.to_lowercase())
                .collect::<Vec<_>>()
                .join(" and "),
            c.advice
        ),
    );
    say(
        true,
        format!(
            "I'm referring you to Dr. {referral} in {}. Let's see you back in {weeks} weeks.",
            c.specialty.to_lowercase()
        ),
    );
    say(false, "Okay, thank you, doctor.".to_string());
    let dialogue = d.join("\n\n");

    let mut note = String::new();
    note.push_str(g.pick(&["", "", "**Medical Note**\n\n", "#####\n"]));
    let split_subjective = g.chance(0.5);
    note.push_str("**1. Subjective:**\n\n");
    let hpi = format!(
        "{first} {last}, a {age}-year-old patient, presents with {} for {duration}. {}",
        c.complaint,
        c.story
            .iter()
            .map(|s| s
                .replace("I've", "The patient has")
                .replace("I'm", "The patient is"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ros = format!(
        "Denies {}.",
        c.negatives
            .iter()
            .map(|n| n.replace("my life", "their life"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if split_subjective {
        note.push_str(&format!(
            "**Chief Complaint (CC):** {}.\n\n**History of Present Illness (HPI):** {hpi}\n\n**Review of Systems (ROS):** {ros}\n\n",
            capitalize(c.complaint)
        ));
    } else {
        note.push_str(&format!("{hpi} {ros}\n\n"));
    }
    note.push_str(&format!(
        "**2. Objective:**\n\n- **Blood Pressure:** {sys}/{dia} mmHg\n- **Heart Rate:** {hr} bpm\n- **Respiratory Rate:** {rr} breaths/min\n- **Temperature:** {temp:.1}°C\n- **Oxygen Saturation:** {spo2}%\n"
    ));
    for e in c.exam {
        note.push_str(&format!("- **Examination:** {e}.\n"));
    }
    for r in c.results {
        note.push_str(&format!("- **Results:** {r}.\n"));
    }
    note.push_str(&format!("\n**3. Assessment:**\n\n{}\n\n", c.assessment));
    note.push_str("**4. Plan:**\n\n");
    for m in c.meds {
        note.push_str(&format!(
            "- **Medication:** {} {} {} {}.\n",
            m.name, m.dose, m.route, m.frequency
        ));
    }
    for t in c.tests {
        note.push_str(&format!("- **Tests:** {t}.\n"));
    }
    note.push_str(&format!(
        "- **Lifestyle:** Advised to {}.\n- **Referral:** Referral to Dr {referral}, {}.\n- **Follow-up:** Return in {weeks} weeks.",
        c.advice, c.specialty
    ));

    SoapExample {
        id: format!("SYN-SOAP-{:06}", i + 1),
        dialogue,
        note: Some(note),
        icd10: Some(c.icd10.to_string()),
        line: i as u64 + 1,
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{has_all_soap_sections, speaker_tag_style};

    #[test]
    fn pairs_look_like_medsynth() {
        let pairs = soap_pairs(60, 3);
        assert_eq!(pairs.len(), 60);
        let styles: std::collections::HashSet<&str> = pairs
            .iter()
            .map(|p| speaker_tag_style(&p.dialogue))
            .collect();
        assert_eq!(styles.len(), 3, "all three speaker-tag styles appear");
        for p in &pairs {
            let note = p.note.as_deref().unwrap();
            assert!(has_all_soap_sections(note));
            assert!(note.contains("**1. Subjective:**") && note.contains("**4. Plan:**"));
            // Vitals in the note are spoken in the dialogue.
            let bp_line = note.lines().find(|l| l.contains("Blood Pressure")).unwrap();
            let sys = bp_line
                .split_whitespace()
                .nth(3)
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            assert!(p.dialogue.contains(&format!("{sys} over")));
        }
        assert_eq!(
            soap_pairs(5, 3)
                .iter()
                .map(|p| p.note.clone())
                .collect::<Vec<_>>(),
            pairs[..5]
                .iter()
                .map(|p| p.note.clone())
                .collect::<Vec<_>>()
        );
    }
}

//! Staged pathology reports in the style of OCR'd TCGA reports: one line, section headers in
//! capitals, synoptic fields. About half state the stage as a pTNM string; the rest give only the
//! findings (size, depth of invasion, positive nodes) from which the stage follows by the AJCC
//! rules used for that organ. M is stated only when a distant metastasis was resected or the
//! report says M0/M1, as in real reports.

use super::Gen;
use crate::tnm::{TnmLabels, TnmRecord};

struct Organ {
    code: &'static str,
    specimen: &'static [&'static str],
    histology: &'static [&'static str],
    /// Findings that establish T1..T4 when no stage string is given.
    t_findings: [&'static [&'static str]; 4],
    /// Largest N category the organ's AJCC chapter has.
    max_n: u8,
    /// Positive-node count range for N0..N3.
    n_counts: [(u32, u32); 4],
    /// Where the nodes were, per N category (for lung the station decides N1 vs N2).
    node_sites: [&'static str; 4],
    /// Tumour size range in cm per T category (None where T is not size-based).
    sizes: [Option<(f64, f64)>; 4],
}

const ORGANS: &[Organ] = &[
    Organ {
        code: "BRCA",
        specimen: &[
            "Breast, left, modified radical mastectomy",
            "Breast, right, segmental mastectomy",
            "Breast, left, total mastectomy with sentinel lymph node biopsy",
        ],
        histology: &[
            "Invasive ductal carcinoma, Nottingham grade 2",
            "Invasive lobular carcinoma, classic type",
            "Invasive ductal carcinoma, Nottingham grade 3",
        ],
        t_findings: [
            &["the tumor measures {size} cm in greatest dimension"],
            &["the tumor measures {size} cm in greatest dimension"],
            &["the tumor measures {size} cm in greatest dimension"],
            &[
                "the tumor invades the chest wall",
                "the carcinoma ulcerates the overlying skin with skin nodules",
            ],
        ],
        max_n: 3,
        n_counts: [(0, 0), (1, 3), (4, 9), (10, 16)],
        node_sites: ["axillary lymph nodes"; 4],
        sizes: [
            Some((0.4, 1.9)),
            Some((2.2, 4.8)),
            Some((5.3, 9.0)),
            Some((2.0, 8.0)),
        ],
    },
    Organ {
        code: "COAD",
        specimen: &[
            "Colon, right, hemicolectomy",
            "Colon, sigmoid, resection",
            "Colon, transverse, segmental resection",
        ],
        histology: &[
            "Adenocarcinoma, moderately differentiated",
            "Mucinous adenocarcinoma",
            "Adenocarcinoma, poorly differentiated",
        ],
        t_findings: [
            &["the tumor invades the submucosa"],
            &["the tumor invades the muscularis propria"],
            &["the tumor invades through the muscularis propria into pericolorectal tissues"],
            &[
                "the tumor penetrates the visceral peritoneum",
                "the tumor directly invades the adjacent small bowel",
            ],
        ],
        max_n: 2,
        n_counts: [(0, 0), (1, 3), (4, 11), (0, 0)],
        node_sites: ["regional lymph nodes"; 4],
        sizes: [None, None, None, None],
    },
    Organ {
        code: "LUAD",
        specimen: &[
            "Lung, right upper lobe, lobectomy",
            "Lung, left lower lobe, lobectomy",
            "Lung, right middle lobe, wedge resection",
        ],
        histology: &[
            "Adenocarcinoma, acinar predominant",
            "Adenocarcinoma, solid predominant",
            "Adenocarcinoma, papillary predominant",
        ],
        t_findings: [
            &["the tumor measures {size} cm and is surrounded by lung parenchyma"],
            &[
                "the tumor measures {size} cm and invades the visceral pleura",
                "the tumor measures {size} cm and involves the main bronchus",
            ],
            &["the tumor invades the parietal pleura and chest wall"],
            &["the tumor invades the mediastinal fat and pericardium"],
        ],
        max_n: 2,
        n_counts: [(0, 0), (1, 3), (1, 4), (0, 0)],
        node_sites: [
            "hilar and mediastinal lymph nodes",
            "hilar and peribronchial lymph nodes (stations 10-11)",
            "subcarinal and ipsilateral mediastinal lymph nodes (stations 4R and 7)",
            "contralateral mediastinal lymph nodes",
        ],
        sizes: [
            Some((0.8, 2.9)),
            Some((3.2, 4.8)),
            Some((2.5, 4.5)),
            Some((3.0, 4.5)),
        ],
    },
    Organ {
        code: "STAD",
        specimen: &[
            "Stomach, subtotal gastrectomy",
            "Stomach, total gastrectomy",
        ],
        histology: &[
            "Adenocarcinoma, intestinal type",
            "Signet ring cell carcinoma, diffuse type",
        ],
        t_findings: [
            &["the tumor invades the submucosa"],
            &["the tumor invades the muscularis propria"],
            &[
                "the tumor penetrates the subserosal connective tissue without invasion of the serosa",
            ],
            &["the tumor perforates the serosa (visceral peritoneum)"],
        ],
        max_n: 3,
        n_counts: [(0, 0), (1, 2), (3, 6), (7, 15)],
        node_sites: ["perigastric lymph nodes"; 4],
        sizes: [None, None, None, None],
    },
    Organ {
        code: "KIRC",
        specimen: &[
            "Kidney, left, radical nephrectomy",
            "Kidney, right, partial nephrectomy",
        ],
        histology: &[
            "Clear cell renal cell carcinoma, ISUP grade 2",
            "Clear cell renal cell carcinoma, ISUP grade 3",
        ],
        t_findings: [
            &["the tumor measures {size} cm and is limited to the kidney"],
            &["the tumor measures {size} cm and is limited to the kidney"],
            &[
                "the tumor extends into the renal vein",
                "the tumor invades perinephric fat",
            ],
            &["the tumor invades beyond Gerota's fascia"],
        ],
        max_n: 1,
        n_counts: [(0, 0), (1, 3), (0, 0), (0, 0)],
        node_sites: ["hilar lymph nodes"; 4],
        sizes: [
            Some((1.5, 6.8)),
            Some((7.5, 12.0)),
            Some((4.0, 9.0)),
            Some((8.0, 14.0)),
        ],
    },
    Organ {
        code: "THCA",
        specimen: &["Thyroid, total thyroidectomy", "Thyroid, right lobectomy"],
        histology: &[
            "Papillary thyroid carcinoma, classic variant",
            "Papillary thyroid carcinoma, follicular variant",
        ],
        t_findings: [
            &["the tumor measures {size} cm and is confined to the thyroid"],
            &["the tumor measures {size} cm and is confined to the thyroid"],
            &[
                "the tumor measures {size} cm with gross extrathyroidal extension into strap muscles",
            ],
            &["the tumor invades the trachea and recurrent laryngeal nerve"],
        ],
        max_n: 1,
        n_counts: [(0, 0), (1, 6), (0, 0), (0, 0)],
        node_sites: ["central compartment lymph nodes"; 4],
        sizes: [
            Some((0.3, 1.9)),
            Some((2.1, 3.9)),
            Some((4.2, 6.0)),
            Some((2.0, 5.0)),
        ],
    },
];

const T_WEIGHTS: [f64; 4] = [0.25, 0.34, 0.30, 0.11];
const N_WEIGHTS: [f64; 4] = [0.58, 0.26, 0.12, 0.04];

/// `n` synthetic reports; ids `SYN-TNM-000001`…, cancer types BRCA/COAD/LUAD/STAD/KIRC/THCA.
pub fn tnm_reports(n: usize, seed: u64) -> Vec<TnmRecord> {
    let mut g = Gen::new(seed ^ 0x544e_4d00);
    (0..n).map(|i| one_report(&mut g, i)).collect()
}

fn stage_string(g: &mut Gen, letter: char, category: u8, prefix: &str) -> String {
    let suffix = match (letter, category) {
        ('T', 1..=4) => g.pick(&["", "", "a", "b"]),
        ('N', 1..=3) => g.pick(&["", "", "a", "b"]),
        ('M', 1) => g.pick(&["", "a", "b"]),
        _ => "",
    };
    format!("{prefix}{letter}{category}{suffix}")
}

fn one_report(g: &mut Gen, i: usize) -> TnmRecord {
    let organ = &ORGANS[g.range(0, ORGANS.len() as u32 - 1) as usize];
    let t = g.weighted(&T_WEIGHTS) as u8 + 1;
    let mut n = g.weighted(&N_WEIGHTS[..=organ.max_n as usize]) as u8;
    if organ.n_counts[n as usize] == (0, 0) && n > 0 {
        n = 1;
    }
    let explicit = g.chance(0.55);
    let post_therapy = g.chance(0.05);
    let nodes_examined = !g.chance(0.12);
    let t_missing = explicit && g.chance(0.03);
    let m = if g.chance(0.06) {
        Some(1)
    } else if explicit && g.chance(0.15) {
        Some(0)
    } else {
        None
    };
    let labels = TnmLabels {
        t: (!t_missing).then_some(t),
        n: nodes_examined.then_some(n),
        m,
    };

    let size = organ.sizes[t as usize - 1].map(|(lo, hi)| g.uniform(lo, hi));
    let size_text = size.map_or_else(String::new, |s| format!("{s:.1}"));
    let finding = g
        .pick(organ.t_findings[t as usize - 1])
        .replace("{size}", &size_text);
    let (lo, hi) = organ.n_counts[n as usize];
    let positive = if n == 0 { 0 } else { g.range(lo, hi) };
    let examined = positive + g.range(2, 24);
    let specimen = g.pick(organ.specimen);
    let histology = g.pick(organ.histology);
    let acc = format!("S{:02}-{:05}", g.range(5, 14), g.range(1, 99999));

    let mut s = String::new();
    s.push_str(g.pick(&[
        "SURGICAL PATHOLOGY REPORT",
        "Pathology Report",
        "FINAL SURGICAL PATHOLOGY REPORT",
    ]));
    s.push_str(&format!(
        " Accession #: {acc} Patient: [REDACTED] MRN: XXXXXXX Collected: XX/XX/XXXX SPECIMEN(S) RECEIVED: A. {specimen}"
    ));
    if nodes_examined {
        s.push_str(&format!(
            " B. Lymph nodes, {}",
            organ.node_sites[n as usize]
        ));
    }
    if m == Some(1) {
        s.push_str(" C. Liver, segment VI, wedge biopsy");
    }
    s.push_str(" CLINICAL HISTORY: ");
    if post_therapy {
        s.push_str("Status post neoadjuvant chemotherapy. ");
    }
    s.push_str(g.pick(&[
        "Mass identified on imaging.",
        "Biopsy-proven carcinoma.",
        "Abnormal screening study, biopsy positive for carcinoma.",
    ]));
    if explicit && g.chance(0.15) {
        // A prior clinical stage in the history is never the pathologic label.
        s.push_str(&format!(
            " Prior clinical staging cT{} cN{}.",
            g.range(1, 4),
            g.range(0, organ.max_n as u32)
        ));
    }
    s.push_str(&format!(
        " FINAL DIAGNOSIS: A. {}: - {histology}. - On microscopic examination {finding}. - Margins of resection are {}. - Lymphovascular invasion: {}.",
        specimen.to_uppercase(),
        g.pick(&["free of tumor", "negative for carcinoma", "uninvolved by carcinoma"]),
        g.pick(&["not identified", "present", "not identified"])
    ));
    if nodes_examined {
        if positive == 0 {
            s.push_str(&format!(
                " B. LYMPH NODES: - {examined} {} negative for metastatic carcinoma (0/{examined}).",
                organ.node_sites[n as usize]
            ));
        } else {
            s.push_str(&format!(
                " B. LYMPH NODES: - Metastatic carcinoma in {positive} of {examined} {} ({positive}/{examined}).",
                organ.node_sites[n as usize]
            ));
        }
    } else {
        s.push_str(" No lymph nodes are identified in the specimen.");
    }
    if m == Some(1) {
        s.push_str(
            " C. LIVER, WEDGE BIOPSY: - Metastatic carcinoma, consistent with the primary tumor.",
        );
    }
    s.push_str(&format!(
        " GROSS DESCRIPTION: Received in formalin labeled with the patient's name is a {} specimen.",
        specimen.split(',').next().unwrap_or("tissue").to_lowercase()
    ));
    if let Some(sz) = size {
        s.push_str(&format!(
            " Sectioning reveals a firm tan-white mass measuring {sz:.1} x {:.1} x {:.1} cm.",
            sz * 0.8,
            sz * 0.6
        ));
    } else {
        s.push_str(" Sectioning reveals an ulcerated tan-white mass.");
    }
    s.push_str(" Representative sections are submitted in cassettes A1-A12.");
    if explicit {
        let prefix = if post_therapy { "yp" } else { "p" };
        let t_str = if t_missing {
            format!("{prefix}TX")
        } else {
            stage_string(g, 'T', t, prefix)
        };
        let n_str = if nodes_examined {
            stage_string(g, 'N', n, prefix)
        } else {
            format!("{prefix}NX")
        };
        let m_str = match m {
            Some(1) => stage_string(g, 'M', 1, "p"),
            Some(_) => g.pick(&["cM0", "M0"]).to_string(),
            None => g.pick(&["pMX", "", ""]).to_string(),
        };
        let stage = [t_str, n_str, m_str]
            .into_iter()
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>();
        if g.chance(0.5) {
            s.push_str(&format!(
                " SYNOPTIC REPORT: Pathologic Staging (pTNM): {}",
                stage.join(" ")
            ));
        } else {
            s.push_str(&format!(
                " COMMENT: AJCC 8th edition pathologic stage: {}.",
                stage.join(", ")
            ));
        }
    } else if m == Some(0) {
        s.push_str(" COMMENT: No distant metastasis is clinically evident (M0).");
    }
    s.push_str(g.pick(&[
        " Electronically signed out by XXXX, M.D.",
        " This report has been reviewed and signed electronically.",
        "",
    ]));

    TnmRecord {
        id: format!("SYN-TNM-{:06}", i + 1),
        patient: None,
        text: Some(s),
        labels,
        post_therapy,
        cancer_type: Some(organ.code.to_string()),
        line: i as u64 + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ajcc::{self, Stage};

    #[test]
    fn deterministic_and_labelled() {
        let a = tnm_reports(200, 1);
        let b = tnm_reports(200, 1);
        assert_eq!(
            a.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
            b.iter().map(|r| r.text.clone()).collect::<Vec<_>>()
        );
        assert_ne!(a[0].text, tnm_reports(1, 2)[0].text);
        for stage in Stage::ALL {
            let present: std::collections::HashSet<u8> =
                a.iter().filter_map(|r| r.labels.get(stage)).collect();
            assert_eq!(
                present.len(),
                stage.num_classes(),
                "{stage} covers all classes"
            );
        }
    }

    #[test]
    fn explicit_stage_strings_parse_to_the_labels() {
        for r in tnm_reports(300, 9) {
            let text = r.text.unwrap();
            let Some(pos) = text.find("(pTNM): ").map(|p| p + 8) else {
                continue;
            };
            let tokens: Vec<&str> = text[pos..].split_whitespace().collect();
            let t = ajcc::normalize(Stage::T, tokens[0]).unwrap().category;
            assert_eq!(t, r.labels.t);
            let n = ajcc::normalize(Stage::N, tokens[1]).unwrap().category;
            assert_eq!(n, r.labels.n);
        }
    }
}

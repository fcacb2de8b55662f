//! The corpus readers on real-format files: the TCGA label files bundled in data/tcga, the
//! MedSynth release's quirks, the official files, and round trips through the writers.

use std::path::{Path, PathBuf};

use clinstruct_data::Stage;
use clinstruct_data::soap::{self, SoapCorpus, SoapFormat};
use clinstruct_data::split::train_dev_split;
use clinstruct_data::stats::{SoapStats, TnmStats};
use clinstruct_data::synth;
use clinstruct_data::tnm::{self, TnmCorpus, TnmFormat};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// seed-system.md: 3,898 patients carry all three labels; M1 is 6.4% of them.
/// data.md §2.3 gives the other counts.
#[test]
fn tcga_label_files_reproduce_the_published_figures() {
    let mut t = TnmCorpus::load(&repo("data/tcga/TCGA_T14_patients.csv")).unwrap();
    assert_eq!(t.format, TnmFormat::GdcLabels);
    let others = [
        TnmCorpus::load(&repo("data/tcga/TCGA_N03_patients.csv")).unwrap(),
        TnmCorpus::load(&repo("data/tcga/TCGA_M01_patients.csv")).unwrap(),
    ];
    let join = t.join_labels(&others).unwrap();
    let s = TnmStats::compute(&t, Some(join), None);
    assert_eq!(s.records, 6994);
    assert_eq!(s.coverage.all_three, 3898);
    assert_eq!(s.coverage.none, 53);
    assert_eq!(s.coverage.patterns["T+N"], 1742);
    assert_eq!(s.coverage.patterns["T+M"], 669);
    assert_eq!(s.coverage.patterns["T"], 578);
    assert_eq!(
        (
            s.labels.t.labelled,
            s.labels.n.labelled,
            s.labels.m.labelled
        ),
        (6887, 5678, 4608)
    );
    assert_eq!(s.labels.t.counts["T1"], 1739);
    assert_eq!(s.labels.m.counts["M1"], 313);
    let full = &s.fully_labelled;
    assert_eq!(
        [
            full.t.counts["T1"],
            full.t.counts["T2"],
            full.t.counts["T3"],
            full.t.counts["T4"]
        ],
        [872, 1377, 1196, 453]
    );
    assert_eq!(full.m.counts["M1"], 250);
    assert_eq!(format!("{:.1}", 100.0 * full.m.shares["M1"]), "6.4");
    assert_eq!(s.cancer_types["BRCA"], 1034);
}

#[test]
fn reports_join_label_files_by_barcode() {
    let dir = tempfile::tempdir().unwrap();
    let reports = write(
        dir.path(),
        "k.csv",
        "patient_filename,label,text\nTCGA-AR-A5QQ.abc-1,2,report one\nTCGA-ZZ-0000.def,0,report two\n",
    );
    let labels = write(
        dir.path(),
        "n.csv",
        "ajcc_pathologic_n,project_id,case_id,case_submitter_id\nN1a,TCGA-BRCA,x,TCGA-AR-A5QQ\nN0,TCGA-BRCA,y,TCGA-A2-A04Q\n",
    );
    let tl = write(
        dir.path(),
        "t.csv",
        "ajcc_pathologic_t,project_id,case_id,case_submitter_id\nypT2,TCGA-BRCA,x,TCGA-AR-A5QQ\n",
    );
    let mut c = TnmCorpus::load(&reports).unwrap();
    assert_eq!(c.format, TnmFormat::Kefeli);
    let j = c
        .join_labels(&[
            TnmCorpus::load(&labels).unwrap(),
            TnmCorpus::load(&tl).unwrap(),
        ])
        .unwrap();
    assert_eq!(
        (
            j.label_patients,
            j.matched_records,
            j.unmatched_label_patients
        ),
        (2, 1, 1)
    );
    assert_eq!(j.conflicts, 1, "Kefeli T3 vs GDC ypT2");
    let r = &c.records[0];
    assert_eq!(
        (r.labels.t, r.labels.n, r.labels.m),
        (Some(3), Some(1), None)
    );
    assert!(r.post_therapy);
    assert_eq!(r.cancer_type.as_deref(), Some("BRCA"));
    assert_eq!(c.records[1].labels.n, None);
}

#[test]
fn official_tnm_file_with_pandas_floats_and_blanks() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "tcga_tnm_train.csv",
        "patient_filename,text,t,n,m\nTCGA-05-4245.a,\"line one\n  line two\",2.0,,0.0\nTCGA-05-4244.b,  ,1,0,0\nTCGA-05-4246.c,text,,nan,1\n",
    );
    let c = TnmCorpus::load(&p).unwrap();
    assert_eq!(c.format, TnmFormat::Official);
    assert_eq!(c.rows_read, 3);
    assert_eq!(c.records.len(), 2);
    assert_eq!(c.dropped, vec![("empty text".to_string(), 1)]);
    assert_eq!(c.records[0].text.as_deref(), Some("line one line two"));
    assert_eq!(
        (
            c.records[0].labels.t,
            c.records[0].labels.n,
            c.records[0].labels.m
        ),
        (Some(2), None, Some(0))
    );
    assert_eq!(c.records[0].patient.as_deref(), Some("TCGA-05-4245"));
    assert_eq!(Stage::T.sentinel(c.records[1].labels.t), -1);
    assert_eq!(c.stages, vec![Stage::T, Stage::N, Stage::M]);
}

#[test]
fn unlabelled_test_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "Task6_test_hard.csv",
        "id,text\nTNM_0001,some report\n",
    );
    let c = TnmCorpus::load(&p).unwrap();
    assert_eq!(c.records[0].labels.count(), 0);
    assert!(c.stages.is_empty());
}

#[test]
fn medsynth_release_quirks() {
    let dir = tempfile::tempdir().unwrap();
    // Stray spaces in the header, a null dialogue, and a pair repeated under a second ICD-10 code.
    let p = write(
        dir.path(),
        "MedSynth_huggingface_final.csv",
        " Note , Dialogue ,ICD10, ICD10_desc\nnote A,dialogue A,I10,Hypertension\nnote B,,E11,Diabetes\nnote A,dialogue A,I15,Secondary hypertension\nnote C,dialogue C,J45,Asthma\n,dialogue D,K21,GERD\n",
    );
    let c = SoapCorpus::load(&p).unwrap();
    assert_eq!(c.format, SoapFormat::MedSynth);
    assert_eq!(c.rows_read, 5);
    assert_eq!(c.examples.len(), 2);
    assert_eq!(
        c.dropped,
        vec![
            ("empty dialogue".to_string(), 1),
            ("empty note".to_string(), 1),
            ("duplicate (note, dialogue) pair".to_string(), 1)
        ]
    );
    assert_eq!(c.examples[1].id, "4");
    assert_eq!(c.examples[1].icd10.as_deref(), Some("J45"));
}

#[test]
fn official_soap_files_and_submissions() {
    let dir = tempfile::tempdir().unwrap();
    let gold = write(
        dir.path(),
        "eval.csv",
        "id,note,dialogue\n1,note one,dial one\n2,note two,dial two\n",
    );
    let c = SoapCorpus::load(&gold).unwrap();
    assert_eq!(c.format, SoapFormat::Official);
    let blind = write(dir.path(), "test.csv", "id,dialogue\n7,dial\n");
    assert_eq!(SoapCorpus::load(&blind).unwrap().examples[0].note, None);
    let sub = write(dir.path(), "sub.csv", "id,generated_note\n1,pred one\n2,\n");
    let preds = soap::load_predictions(&sub).unwrap();
    assert_eq!(
        preds[1].text, "",
        "a blank prediction scores as the empty string"
    );
    let refs = soap::load_references(&gold).unwrap();
    assert_eq!(refs[0].text, "note one");
    let jl = write(
        dir.path(),
        "refs.jsonl",
        "{\"id\":\"1\",\"reference\":\"r\"}\n",
    );
    assert_eq!(soap::load_references(&jl).unwrap()[0].text, "r");
}

#[test]
fn bundled_samples_load() {
    let t = TnmCorpus::load(&repo("data/samples/tnm-reports.jsonl")).unwrap();
    assert_eq!(t.format, TnmFormat::Jsonl);
    assert_eq!(t.records.len(), 60);
    let s = TnmStats::compute(&t, None, None);
    assert_eq!(s.labels.t.labelled, 59);
    assert_eq!(s.labels.m.counts["M1"], 4);
    let p = SoapCorpus::load(&repo("data/samples/soap-pairs.jsonl")).unwrap();
    assert_eq!(p.examples.len(), 30);
    let s = SoapStats::compute(&p, None);
    assert_eq!(s.notes_with_all_sections, 30);
    assert_eq!(s.speaker_tags.len(), 3);
}

#[test]
fn synthetic_corpora_round_trip_through_csv_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let reports = synth::tnm_reports(50, 4);
    for name in ["r.csv", "r.jsonl"] {
        let p = dir.path().join(name);
        tnm::write_corpus(&p, &reports).unwrap();
        let back = TnmCorpus::load(&p).unwrap();
        assert_eq!(back.records.len(), 50, "{name}");
        for (a, b) in reports.iter().zip(&back.records) {
            assert_eq!(
                (&a.id, a.labels, &a.text),
                (&b.id, b.labels, &b.text),
                "{name}"
            );
        }
    }
    let pairs = synth::soap_pairs(20, 4);
    for name in ["p.csv", "p.jsonl"] {
        let p = dir.path().join(name);
        soap::write_corpus(&p, &pairs).unwrap();
        let back = SoapCorpus::load(&p).unwrap();
        assert_eq!(back.examples.len(), 20, "{name}");
        for (a, b) in pairs.iter().zip(&back.examples) {
            assert_eq!(
                (&a.id, &a.dialogue, &a.note),
                (&b.id, &b.dialogue, &b.note),
                "{name}"
            );
        }
    }
}

#[test]
fn dev_split_is_seeded() {
    let pairs = synth::soap_pairs(100, 0);
    let (train, dev) = train_dev_split(pairs.clone(), 0.1, 42);
    assert_eq!((train.len(), dev.len()), (90, 10));
    let (_, dev2) = train_dev_split(pairs, 0.1, 42);
    assert_eq!(
        dev.iter().map(|e| &e.id).collect::<Vec<_>>(),
        dev2.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
}

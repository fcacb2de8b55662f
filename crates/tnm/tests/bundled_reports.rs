//! The rule stager on the 60 bundled reports (35 state their stage): it must read every stated
//! stage right, including the tricky ones (prior stages in the history, ypTNM, addendum
//! revisions, odd suffixes), and must not invent a stage for the 25 that state none.

use std::path::Path;

use clinstruct_data::Stage;
use clinstruct_tnm::rules::stage_report;

#[test]
fn explicit_reports_are_read_exactly_and_implicit_ones_are_left_alone() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/samples/tnm-reports.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let (mut explicit, mut implicit) = (0, 0);
    let mut wrong = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_str().unwrap();
        let r = stage_report(v["text"].as_str().unwrap());
        let gold = |k: &str| v[k].as_u64().map(|x| x as u8);
        if v["explicit"].as_bool().unwrap() {
            explicit += 1;
            // T and N follow the written stage; M only when the report states it.
            for (stage, k) in [(Stage::T, "t"), (Stage::N, "n")] {
                if r.category(stage) != gold(k) {
                    wrong.push(format!(
                        "{id} {stage}: got {:?}, gold {:?}",
                        r.category(stage),
                        gold(k)
                    ));
                }
            }
            if r.category(Stage::M).is_some() && r.category(Stage::M) != gold("m") {
                wrong.push(format!(
                    "{id} M: got {:?}, gold {:?}",
                    r.category(Stage::M),
                    gold("m")
                ));
            }
        } else {
            implicit += 1;
            for stage in [Stage::T, Stage::N] {
                if let Some(c) = r.category(stage) {
                    wrong.push(format!(
                        "{id} {stage}: invented {c} in a report without a stage string"
                    ));
                }
            }
        }
    }
    assert_eq!((explicit, implicit), (35, 25));
    assert!(
        wrong.is_empty(),
        "{} errors:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

//! `tnm::score`, `validate` and `render_table` never panic, whatever the input.

use clinstruct_metrics::tnm::{self, Stage, TnmReport};

/// A tiny deterministic generator (no `rand` dependency for a test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn label(rng: &mut Lcg) -> Option<u8> {
    match rng.below(10) {
        0 => None,
        1 => Some(u8::try_from(rng.below(256)).unwrap_or(u8::MAX)),
        _ => Some(u8::try_from(rng.below(4)).unwrap_or(0)),
    }
}

fn value(rng: &mut Lcg) -> f64 {
    match rng.below(12) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -0.0,
        3 => 1e308,
        4 => -0.5,
        _ => rng.below(5) as f64 / 4.0,
    }
}

#[test]
fn arbitrary_inputs_never_panic() {
    let mut rng = Lcg(42);
    for round in 0..400 {
        let n = usize::try_from(rng.below(12)).unwrap_or(0);
        let reports: Vec<TnmReport> = (0..n)
            .map(|_| {
                let mut r = TnmReport::default();
                for s in Stage::ALL {
                    r.gold[s.index()] = label(&mut rng);
                    r.pred[s.index()] = label(&mut rng);
                    if rng.below(4) != 0 {
                        let len = if rng.below(5) == 0 {
                            usize::try_from(rng.below(6)).unwrap_or(0)
                        } else {
                            s.n_classes()
                        };
                        r.prob[s.index()] = Some((0..len).map(|_| value(&mut rng)).collect());
                    }
                }
                r
            })
            .collect();
        let s = tnm::score(&reports);
        let _ = tnm::validate(&reports);
        let _ = tnm::score_checked(&reports);
        let table = tnm::render_table(&s);
        assert!(table.contains("TNM staging scores"), "round {round}");
        for stage in Stage::ALL {
            let st = s.stage(stage);
            for v in [
                st.accuracy,
                st.macro_f1,
                st.micro_f1,
                st.weighted_f1,
                st.macro_f1_all_labels,
                st.auroc,
            ]
            .into_iter()
            .flatten()
            {
                assert!(
                    (0.0..=1.0).contains(&v),
                    "round {round}: {stage} value {v} out of [0, 1]"
                );
            }
            assert!(
                st.auroc.is_some() || st.auroc_note.is_some(),
                "round {round}: {stage} null AUROC without a note"
            );
        }
    }
}

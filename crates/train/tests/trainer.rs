//! The training loop's bookkeeping on a recipe small enough to reason about: a vector fitted to
//! targets by AdamW, with a scripted evaluation metric. Keep-best, early stopping, the metrics
//! log, the curve, resume and its refusal on changed settings.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use clinstruct_train::{BatchLoss, BestMetric, LrSchedule, Recipe, TrainerConfig, read_log, train};

struct Fit {
    w: Var,
    targets: Vec<Tensor>,
    /// Metric values returned by successive evaluations.
    script: Vec<f64>,
    evals: usize,
    training: bool,
    rng: u64,
}

impl Fit {
    fn new(script: Vec<f64>) -> Fit {
        let dev = Device::Cpu;
        let targets = (0..6)
            .map(|i| Tensor::new(&[i as f32, 1.0, -2.0, 0.5 * i as f32], &dev).unwrap())
            .collect();
        Fit {
            w: Var::zeros(4, DType::F32, &dev).unwrap(),
            targets,
            script,
            evals: 0,
            training: false,
            rng: 0,
        }
    }
}

impl Recipe for Fit {
    fn train_len(&self) -> usize {
        self.targets.len()
    }
    fn trainable(&self) -> Vec<(String, Var)> {
        vec![("w".to_string(), self.w.clone())]
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn loss(&mut self, batch: &[usize]) -> Result<BatchLoss> {
        assert!(self.training, "loss outside training mode");
        self.rng += 1;
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for &i in batch {
            let d = (self.w.as_tensor() - &self.targets[i])?;
            total = (total + d.sqr()?.mean_all()?)?;
        }
        Ok(BatchLoss {
            loss: (total / batch.len() as f64)?,
            tokens: batch.len(),
        })
    }
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        assert!(!self.training, "evaluation in training mode");
        let v = self.script.get(self.evals).copied().unwrap_or(9.0);
        self.evals += 1;
        Ok(BTreeMap::from([("score".to_string(), v)]))
    }
    fn export(&self, dir: &Path) -> Result<()> {
        let t = self.w.as_tensor().clone();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("w", t)]),
            dir.join("w.safetensors"),
        )
    }
    fn rng_state(&self) -> u64 {
        self.rng
    }
    fn set_rng_state(&mut self, state: u64) {
        self.rng = state;
    }
}

fn config(out: &Path, max_steps: usize) -> TrainerConfig {
    let mut cfg = TrainerConfig::new(out, max_steps, LrSchedule::cosine(0.1, 2, max_steps));
    cfg.batch_size = 2;
    cfg.progress = false;
    cfg.eval_every = Some(2);
    cfg.save_every = Some(2);
    cfg.best = Some(BestMetric {
        name: "score".to_string(),
        higher_is_better: true,
    });
    cfg
}

fn w_of(path: &Path) -> Vec<f32> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()["w"]
        .to_vec1()
        .unwrap()
}

#[test]
fn keeps_the_best_evaluation_and_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = Fit::new(vec![0.1, 0.5, 0.4, 0.3, 0.9]);
    let mut cfg = config(dir.path(), 20);
    cfg.patience = Some(2);
    let s = train(&mut recipe, &cfg).unwrap();
    assert!(s.stopped_early);
    assert_eq!(
        s.steps, 8,
        "two evaluations without improvement after step 4"
    );
    assert_eq!(s.best, Some((4, 0.5)));
    let best = w_of(&dir.path().join("best/w.safetensors"));
    assert_eq!(best, w_of(&dir.path().join("w.safetensors")));
    assert_ne!(best, recipe.w.as_tensor().to_vec1::<f32>().unwrap());
    let log = read_log(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(log.iter().filter(|r| r.get("loss").is_some()).count(), 8);
    assert_eq!(log.iter().filter(|r| r.get("eval").is_some()).count(), 4);
    // It trained: w moved from 0 towards the mean target (2.5, 1, -2, 1.25).
    let w = recipe.w.as_tensor().to_vec1::<f32>().unwrap();
    assert!(
        w[0] > 0.3 && w[1] > 0.3 && w[2] < -0.3 && w[3] > 0.3,
        "{w:?}"
    );
    let svg = std::fs::read_to_string(dir.path().join("training_curve.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn resume_continues_bit_identically() {
    let straight = tempfile::tempdir().unwrap();
    let mut r = Fit::new(vec![0.1, 0.2, 0.3, 0.4, 0.5]);
    train(&mut r, &config(straight.path(), 10)).unwrap();
    let want = r.w.as_tensor().to_vec1::<f32>().unwrap();

    let split = tempfile::tempdir().unwrap();
    let mut r1 = Fit::new(vec![0.1, 0.2, 0.3, 0.4, 0.5]);
    let mut cfg = config(split.path(), 10);
    cfg.stop_after = Some(5);
    let s = train(&mut r1, &cfg).unwrap();
    assert!(s.interrupted && s.steps == 5);
    // A new process: fresh weights, the rest comes from the checkpoint at step 4.
    let mut r2 = Fit::new(vec![0.3, 0.4, 0.5]);
    cfg.stop_after = None;
    cfg.resume = true;
    let s = train(&mut r2, &cfg).unwrap();
    assert_eq!(s.resumed_from, Some(4));
    assert_eq!(r2.w.as_tensor().to_vec1::<f32>().unwrap(), want);
    assert_eq!(r2.rng, r.rng, "the recipe's random stream was not restored");
    let a = read_log(&straight.path().join("metrics.jsonl")).unwrap();
    let b = read_log(&split.path().join("metrics.jsonl")).unwrap();
    let losses = |l: &[serde_json::Value]| -> Vec<f64> {
        l.iter().filter_map(|r| r["loss"].as_f64()).collect()
    };
    assert_eq!(losses(&a), losses(&b));

    // Changed settings are refused, naming what changed.
    cfg.batch_size = 3;
    let e = train(&mut Fit::new(vec![]), &cfg).unwrap_err().to_string();
    assert!(
        e.contains("cannot resume, batch_size was 2 and is now 3"),
        "{e}"
    );
    // A fresh run does not overwrite a finished one.
    cfg.resume = false;
    cfg.batch_size = 2;
    let e = train(&mut Fit::new(vec![]), &cfg).unwrap_err().to_string();
    assert!(e.contains("checkpoint of an earlier run"), "{e}");
}

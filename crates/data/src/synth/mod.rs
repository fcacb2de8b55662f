//! Synthetic corpora for tests, benchmarks and the demo, so that nothing depends on data that
//! cannot be shipped. Both generators are seeded and pure: the same (n, seed) gives the same
//! corpus on every machine. The texts are invented; no real patient is described.

mod soap;
mod tnm;

use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use soap::soap_pairs;
pub use tnm::tnm_reports;

/// Seeded generator with the few helpers the templates need.
pub(crate) struct Gen(ChaCha8Rng);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &'a [&'a T]) -> &'a T {
        items.choose(&mut self.0).expect("non-empty template list")
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p.clamp(0.0, 1.0))
    }

    pub fn range(&mut self, lo: u32, hi_inclusive: u32) -> u32 {
        self.0.random_range(lo..=hi_inclusive)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.random_range(lo..hi)
    }

    /// Index drawn with the given (unnormalised) weights.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.uniform(0.0, total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

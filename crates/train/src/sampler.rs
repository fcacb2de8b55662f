//! The order in which training examples are visited: a fresh seeded shuffle every epoch, and a
//! position that a checkpoint saves, so a resumed run sees exactly the batches the interrupted
//! one would have.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where a run is in its data: everything needed to continue the same sequence of batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    /// Examples of this epoch's order already handed out.
    pub position: usize,
}

#[derive(Debug, Clone)]
pub struct EpochSampler {
    len: usize,
    seed: u64,
    shuffle: bool,
    state: SamplerState,
    order: Vec<usize>,
}

impl EpochSampler {
    pub fn new(len: usize, seed: u64, shuffle: bool) -> EpochSampler {
        let state = SamplerState {
            epoch: 0,
            position: 0,
        };
        let order = epoch_order(len, seed, shuffle, 0);
        EpochSampler {
            len,
            seed,
            shuffle,
            state,
            order,
        }
    }

    pub fn state(&self) -> SamplerState {
        self.state
    }

    pub fn restore(&mut self, state: SamplerState) {
        self.order = epoch_order(self.len, self.seed, self.shuffle, state.epoch);
        self.state = state;
    }

    /// The next `batch_size` example indices. A batch never spans two epochs: the last batch of
    /// an epoch may be shorter (as a PyTorch `DataLoader` without `drop_last`).
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        if self.state.position >= self.len {
            self.state.epoch += 1;
            self.state.position = 0;
            self.order = epoch_order(self.len, self.seed, self.shuffle, self.state.epoch);
        }
        let end = (self.state.position + batch_size.max(1)).min(self.len);
        let batch = self.order[self.state.position..end].to_vec();
        self.state.position = end;
        batch
    }

    /// Epochs completed, as a fraction (for logs).
    pub fn epoch_progress(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        self.state.epoch as f64 + self.state.position as f64 / self.len as f64
    }
}

fn epoch_order(len: usize, seed: u64, shuffle: bool, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        order.shuffle(&mut rng);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_a_new_order_each_epoch() {
        let mut s = EpochSampler::new(10, 7, true);
        let mut first: Vec<usize> = Vec::new();
        while first.len() < 10 {
            first.extend(s.next_batch(3));
        }
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (0..4).flat_map(|_| s.next_batch(3)).collect();
        assert_eq!(second.len(), 10);
        assert_ne!(first, second, "epoch 1 reuses epoch 0's order");
    }

    #[test]
    fn a_restored_sampler_continues_the_same_sequence() {
        let mut a = EpochSampler::new(7, 3, true);
        for _ in 0..4 {
            a.next_batch(2);
        }
        let saved = a.state();
        let rest: Vec<Vec<usize>> = (0..6).map(|_| a.next_batch(2)).collect();
        let mut b = EpochSampler::new(7, 3, true);
        b.restore(saved);
        let again: Vec<Vec<usize>> = (0..6).map(|_| b.next_batch(2)).collect();
        assert_eq!(rest, again);
    }

    #[test]
    fn without_shuffle_the_file_order_is_kept() {
        let mut s = EpochSampler::new(5, 1, false);
        assert_eq!(s.next_batch(2), vec![0, 1]);
        assert_eq!(s.next_batch(2), vec![2, 3]);
        assert_eq!(s.next_batch(2), vec![4]);
        assert_eq!(s.next_batch(2), vec![0, 1]);
    }
}

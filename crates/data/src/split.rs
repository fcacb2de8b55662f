//! Seeded train/dev split. The seed system holds out 10% of the cleaned training data as a dev
//! split for model selection; the same seed gives the same split on every machine.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub const DEFAULT_DEV_FRACTION: f64 = 0.10;

/// Splits `items` into (train, dev), each in the original order. `dev` gets
/// `round(fraction · n)` items, at least one when `n ≥ 2` and `fraction > 0`.
pub fn train_dev_split<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let fraction = fraction.clamp(0.0, 1.0);
    let mut n_dev = (fraction * n as f64).round() as usize;
    if n_dev == 0 && fraction > 0.0 && n >= 2 {
        n_dev = 1;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut is_dev = vec![false; n];
    for &i in &order[..n_dev] {
        is_dev[i] = true;
    }
    let (mut train, mut dev) = (Vec::with_capacity(n - n_dev), Vec::with_capacity(n_dev));
    for (item, dev_item) in items.into_iter().zip(is_dev) {
        if dev_item {
            dev.push(item);
        } else {
            train.push(item);
        }
    }
    (train, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_determinism() {
        let items: Vec<u32> = (0..1000).collect();
        let (train, dev) = train_dev_split(items.clone(), 0.1, 7);
        assert_eq!((train.len(), dev.len()), (900, 100));
        let (train2, dev2) = train_dev_split(items.clone(), 0.1, 7);
        assert_eq!((train, dev.clone()), (train2, dev2));
        let (_, dev3) = train_dev_split(items, 0.1, 8);
        assert_ne!(dev, dev3);
        assert!(dev.windows(2).all(|w| w[0] < w[1]), "original order kept");
    }

    #[test]
    fn tiny_inputs() {
        assert_eq!(train_dev_split(Vec::<u8>::new(), 0.1, 0), (vec![], vec![]));
        let (t, d) = train_dev_split(vec![1, 2], 0.1, 0);
        assert_eq!((t.len(), d.len()), (1, 1));
        let (t, d) = train_dev_split(vec![1, 2, 3], 0.0, 0);
        assert_eq!((t.len(), d.len()), (3, 0));
    }
}

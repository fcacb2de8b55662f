//! Dropout whose masks can be replayed.
//!
//! Inside [`scoped`]`(seed, f)`, every mask drawn by [`dropout`] (and by LoRA's input dropout)
//! comes from a generator seeded by `seed` and the draw's rank in the scope, so running `f`
//! again in a scope with the same seed draws the same masks. Gradient checkpointing relies on
//! it: the backward pass recomputes a block with the masks of its forward. Outside a scope,
//! masks are fresh random draws.

use std::cell::Cell;

use candle_core::{Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    /// `(seed, masks drawn so far)` of the innermost scope on this thread.
    static SCOPE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Restores the enclosing scope even when `f` fails or panics.
struct Restore(Option<(u64, u64)>);

impl Drop for Restore {
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.0));
    }
}

/// Runs `f` with dropout masks derived from `seed` (see the module docs). Scopes nest.
pub fn scoped<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(SCOPE.with(|s| s.replace(Some((seed, 0)))));
    f()
}

/// Whether this thread runs inside a [`scoped`] call.
pub fn in_scope() -> bool {
    SCOPE.with(|s| s.get().is_some())
}

/// A nested scope's seed when inside a scope (see [`next_seed`]), `None` outside: model code
/// gives each block its own scope only when the caller asked for reproducible masks, so
/// LoRA's own mask sequence (`AdapterControl`, resumable) is kept otherwise.
pub fn nested_seed() -> Option<u64> {
    in_scope().then(next_seed)
}

/// `f` inside [`scoped`]`(seed)` when a seed is given, as is otherwise.
pub fn maybe_scoped<R>(seed: Option<u64>, f: impl FnOnce() -> R) -> R {
    match seed {
        Some(seed) => scoped(seed, f),
        None => f(),
    }
}

/// The generator of the next mask in the current scope, `None` outside scopes.
pub(crate) fn scoped_rng() -> Option<ChaCha8Rng> {
    SCOPE.with(|s| {
        let (seed, n) = s.get()?;
        s.set(Some((seed, n + 1)));
        Some(ChaCha8Rng::seed_from_u64(
            seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ))
    })
}

/// The seed for a nested scope: drawn from the current scope (so a whole run under one seed
/// is reproducible), or fresh outside scopes.
pub fn next_seed() -> u64 {
    match scoped_rng() {
        Some(mut rng) => rng.random(),
        None => rand::rng().random(),
    }
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by
/// `1 / (1 - p)`; the identity for `p == 0`. Differentiable (a product with a constant mask).
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 || p.is_nan() {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}");
    }
    let Some(mut rng) = scoped_rng() else {
        return candle_nn::ops::dropout(x, p);
    };
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn scopes_replay_their_masks() -> Result<()> {
        let x = Tensor::ones((64, 33), DType::F32, &Device::Cpu)?;
        let run = |seed| {
            scoped(seed, || -> Result<(Vec<f32>, Vec<f32>)> {
                let a = dropout(&x, 0.3)?.flatten_all()?.to_vec1()?;
                let b = dropout(&x, 0.3)?.flatten_all()?.to_vec1()?;
                Ok((a, b))
            })
        };
        let (a1, b1) = run(7)?;
        let (a2, b2) = run(7)?;
        assert_eq!((&a1, &b1), (&a2, &b2), "same seed, same masks");
        assert_ne!(a1, b1, "successive draws differ");
        assert_ne!(run(8)?.0, a1, "another seed, another mask");
        let dropped = a1.iter().filter(|&&v| v == 0.0).count() as f32 / a1.len() as f32;
        assert!((dropped - 0.3).abs() < 0.06, "{dropped}");
        assert!(a1.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        // Outside a scope masks are fresh.
        let f1: Vec<f32> = dropout(&x, 0.5)?.flatten_all()?.to_vec1()?;
        let f2: Vec<f32> = dropout(&x, 0.5)?.flatten_all()?.to_vec1()?;
        assert_ne!(f1, f2);
        assert!(dropout(&x, 1.0).is_err());
        Ok(())
    }
}

//! Gradient (activation) checkpointing: a block's forward runs without keeping its internal
//! activations, and its backward recomputes the block and backpropagates through it.
//!
//! candle has no hook for this, so [`checkpoint`] is a custom op on the block input: its
//! forward returns the output of the block run on a detached copy of the input (the block's
//! graph is dropped at once), and its backward runs the block again on a fresh variable holding
//! the input, backpropagates `Σ out · grad_out`, returns the input gradient to candle and adds
//! the gradients of the block's trainable variables (LoRA A/B, or full weights) to a side
//! [`Gradients`] store. The caller merges that store after `loss.backward()`:
//!
//! ```ignore
//! let grads = model.checkpoint_gradients().backward(&loss)?;
//! ```
//!
//! Dropout masks are replayed: the forward and the recompute run in the same
//! [`crate::dropout::scoped`] seed. Other sources of randomness inside a block are not.
//! CPU only; elsewhere the block runs with its whole graph (same gradients, no saving).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, TensorId, Var};

use crate::dropout;

/// A model whose layers can be checkpointed. It keeps an optional [`Gradients`] store, set
/// while checkpointing is on: checkpointed layers put their parameter gradients there, and
/// `gradients().backward(&loss)` gives every gradient, with or without checkpointing.
pub trait Checkpointed {
    /// The store (`None`: checkpointing off).
    fn checkpoint_store(&self) -> &Option<Gradients>;

    fn checkpoint_store_mut(&mut self) -> &mut Option<Gradients>;

    /// Each layer's activations are dropped after its forward and recomputed in the backward
    /// pass (dropout masks replayed).
    fn set_gradient_checkpointing(&mut self, on: bool) {
        *self.checkpoint_store_mut() = on.then(Gradients::new);
    }

    fn gradient_checkpointing(&self) -> bool {
        self.checkpoint_store().is_some()
    }

    /// Where checkpointed layers put their parameter gradients (an empty store when off).
    fn gradients(&self) -> Gradients {
        self.checkpoint_store().clone().unwrap_or_default()
    }
}

/// Implements [`Checkpointed`] for a model with a `checkpointing: Option<Gradients>` field.
#[macro_export]
macro_rules! impl_checkpointed {
    ($t:ty) => {
        impl $crate::checkpoint::Checkpointed for $t {
            fn checkpoint_store(&self) -> &Option<$crate::checkpoint::Gradients> {
                &self.checkpointing
            }

            fn checkpoint_store_mut(&mut self) -> &mut Option<$crate::checkpoint::Gradients> {
                &mut self.checkpointing
            }
        }
    };
}

/// Parameter gradients produced by checkpointed blocks during a backward pass. Clones share
/// the store.
#[derive(Clone, Default)]
pub struct Gradients {
    inner: Arc<Mutex<HashMap<TensorId, (Tensor, Tensor)>>>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map_or(0, |m| m.len());
        f.debug_struct("Gradients").field("pending", &n).finish()
    }
}

impl Gradients {
    pub fn new() -> Gradients {
        Gradients::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<TensorId, (Tensor, Tensor)>>> {
        self.inner
            .lock()
            .map_err(|_| candle_core::Error::msg("checkpoint gradients: lock poisoned"))
    }

    /// Adds `grad` to the gradient recorded for variable `var`.
    fn add(&self, var: &Tensor, grad: &Tensor) -> Result<()> {
        let mut map = self.lock()?;
        match map.get_mut(&var.id()) {
            Some((_, g)) => *g = (&*g + grad)?,
            None => {
                map.insert(var.id(), (var.clone(), grad.clone()));
            }
        }
        Ok(())
    }

    /// Variables with a recorded gradient.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the recorded gradients into `grads`, summed with any gradient it already has for
    /// the same variable (a weight used both inside and outside checkpointed blocks).
    pub fn merge_into(&self, grads: &mut GradStore) -> Result<()> {
        let pending = std::mem::take(&mut *self.lock()?);
        for (_, (var, g)) in pending {
            let sum = match grads.get(&var) {
                Some(existing) => (existing + &g)?,
                None => g,
            };
            grads.insert(&var, sum);
        }
        Ok(())
    }

    /// `loss.backward()` plus [`Self::merge_into`]: the gradients of every variable, inside
    /// checkpointed blocks or not. Gradients left from an earlier, unmerged pass are dropped
    /// first.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.lock()?.clear();
        let mut grads = loss.backward()?;
        self.merge_into(&mut grads)?;
        Ok(grads)
    }
}

/// A block that can be run again: the same input gives the same output (dropout aside, which
/// [`checkpoint`] replays).
pub type Block = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// `block(x)` without keeping the block's activations; the backward pass recomputes them (see
/// the module docs). Parameter gradients of the block go to `grads`.
pub fn checkpoint(x: &Tensor, grads: &Gradients, block: Block) -> Result<Tensor> {
    checkpoint_seeded(x, grads, block, dropout::next_seed())
}

/// [`checkpoint`] with the dropout scope's seed given: the same masks as
/// `dropout::scoped(seed, || block(x))`.
pub fn checkpoint_seeded(x: &Tensor, grads: &Gradients, block: Block, seed: u64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return dropout::scoped(seed, || block(x));
    }
    // candle records an op only on a tracked input. Below frozen embeddings (LoRA) the first
    // block's input is untracked, and no block's backward would ever run.
    let x = if x.track_op() {
        x.clone()
    } else {
        Var::from_tensor(x)?.into_inner()
    };
    let out = dropout::scoped(seed, || block(&x.detach()))?
        .detach()
        .contiguous()?;
    x.apply_op1(Checkpoint {
        block,
        seed,
        grads: grads.clone(),
        out: Mutex::new(Some(out)),
    })
}

struct Checkpoint {
    block: Block,
    seed: u64,
    grads: Gradients,
    /// The block's output until the forward hands it to candle.
    out: Mutex<Option<Tensor>>,
}

impl CustomOp1 for Checkpoint {
    fn name(&self) -> &'static str {
        "clinstruct-checkpoint"
    }

    fn cpu_fwd(&self, _storage: &CpuStorage, _layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(out) = self.out.lock().ok().and_then(|mut o| o.take()) else {
            candle_core::bail!("checkpoint: forward ran twice");
        };
        let (storage, layout) = out.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("checkpoint: block output is not on the CPU");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("checkpoint: block output is not contiguous");
        };
        let copy = match cpu {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
            CpuStorage::BF16(v) => CpuStorage::BF16(v[a..b].to_vec()),
            CpuStorage::F16(v) => CpuStorage::F16(v[a..b].to_vec()),
            _ => candle_core::bail!("checkpoint: unsupported output dtype {:?}", out.dtype()),
        };
        Ok((copy, out.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let input = Var::from_tensor(&arg.detach())?;
        let out = dropout::scoped(self.seed, || (self.block)(input.as_tensor()))?;
        let loss = (out * grad.detach())?.sum_all()?;
        let mut store = loss.backward()?;
        for node in loss.sorted_nodes() {
            if node.is_variable()
                && node.id() != input.id()
                && let Some(g) = store.remove(node)
            {
                self.grads.add(node, &g)?;
            }
        }
        Ok(store.remove(input.as_tensor()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Two blocks with weights, dropout, and a weight also used outside them: the input and
    /// every weight get the gradients of the plain graph with the same dropout masks.
    #[test]
    fn gradients_equal_the_plain_graph() -> Result<()> {
        let dev = Device::Cpu;
        let w1 = Var::randn(0f32, 0.5, (8, 8), &dev)?;
        let w2 = Var::randn(0f32, 0.5, (8, 8), &dev)?;
        let x0 = Var::randn(0f32, 1., (5, 8), &dev)?;
        let block = |w: &Var, shared: &Var| -> Block {
            let (w, shared) = (w.as_tensor().clone(), shared.as_tensor().clone());
            Arc::new(move |x: &Tensor| {
                let h = dropout::dropout(&x.matmul(&w)?.tanh()?, 0.3)?;
                h.matmul(&shared)? + x
            })
        };
        let blocks = [(block(&w1, &w2), 5u64), (block(&w2, &w2), 6)];
        let run = |ckpt: Option<&Gradients>| -> Result<GradStore> {
            let mut x = (x0.as_tensor() * 1.0)?;
            for (b, seed) in &blocks {
                x = match ckpt {
                    Some(g) => checkpoint_seeded(&x, g, b.clone(), *seed)?,
                    None => dropout::scoped(*seed, || b(&x))?,
                };
            }
            let loss = (x.matmul(w2.as_tensor())?.sqr()?.sum_all()? * 0.1)?;
            match ckpt {
                Some(g) => g.backward(&loss),
                None => loss.backward(),
            }
        };
        let side = Gradients::new();
        let with = run(Some(&side))?;
        assert!(side.is_empty(), "merged into the store");
        let plain = run(None)?;
        for v in [&w1, &w2, &x0] {
            let (a, b) = (with.get(v).unwrap(), plain.get(v).unwrap());
            // Unseeded random inputs: f32 sums in another order may differ by a few ulps.
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
            assert!(a.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        // Without replay (other seeds) the gradients would differ: the test can fail.
        let other = dropout::scoped(99, || -> Result<GradStore> {
            let mut x = (x0.as_tensor() * 1.0)?;
            for (b, _) in &blocks {
                x = b(&x)?;
            }
            (x.matmul(w2.as_tensor())?.sqr()?.sum_all()? * 0.1)?.backward()
        })?;
        assert!(max_diff(other.get(&w1).unwrap(), plain.get(&w1).unwrap()) > 1e-4);
        Ok(())
    }

    /// A block on an untracked input (the output of a frozen embedding under LoRA): its
    /// weights still get their gradients.
    #[test]
    fn untracked_input_still_backpropagates_into_the_block() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 0.5, (8, 8), &dev)?;
        let x = Tensor::randn(0f32, 1., (5, 8), &dev)?;
        assert!(!x.track_op());
        let wb = w.clone();
        let block: Block = Arc::new(move |x: &Tensor| x.matmul(wb.as_tensor())?.tanh());
        let plain = block(&x)?.sqr()?.sum_all()?.backward()?;
        let grads = Gradients::new();
        let y = checkpoint(&x, &grads, block)?;
        let ckpt = grads.backward(&y.sqr()?.sum_all()?)?;
        let (g, want) = (
            ckpt.get(w.as_tensor()).unwrap(),
            plain.get(w.as_tensor()).unwrap(),
        );
        assert!(max_diff(g, want) < 1e-6);
        Ok(())
    }
}

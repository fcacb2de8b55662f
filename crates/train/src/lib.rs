//! The training engine: losses, the fused AdamW optimiser, gradient clipping and accumulation,
//! learning-rate schedules, the shared training loop with atomic checkpoints and bit-identical
//! resume, and the task recipes. Model-side pieces (frozen and quantised bases, LoRA adapters,
//! PEFT files) live in `clinstruct_nn`.

pub mod curve;
pub mod loss;
pub mod optim;
pub mod recipes;
pub mod sampler;
pub mod schedule;
pub mod trainer;

pub use loss::{
    Head, HeadNorm, IGNORE_INDEX, Reduction, causal_lm_loss, causal_lm_loss_on_hidden,
    cross_entropy, inverse_frequency_weights, label_counts, masked_multi_head_loss,
};
pub use optim::{AdamW, AdamWConfig, GradAccumulator, clip_coefficient, clip_grad_norm, grad_norm};
pub use sampler::{EpochSampler, SamplerState};
pub use schedule::{Decay, LrSchedule, warmup_steps_from_ratio};
pub use trainer::{BatchLoss, BestMetric, Recipe, TrainSummary, TrainerConfig, read_log, train};

//! Linear layers over frozen weights whose backward reaches the input only.
//!
//! candle's autograd differentiates a matmul with respect to both operands, so a frozen weight
//! still costs a full `xᵀ·g` gemm and a weight-sized gradient per step (measured: 2× backward
//! time, 1.4 GB more memory on a Llama-1B-shaped stack). Here the product is computed without a
//! graph and re-attached to the input through a custom op whose backward is `dx = g · W` only.
//! The weight is captured by the backward closure, never an operand of the graph, so no
//! gradient is ever allocated for it. It works on every device: the forward uses candle's own
//! matmul (or ggml kernels), the re-attachment copies one output-sized buffer.
//!
//! Candle records a custom op only when one of its inputs is tracked: with an untracked input
//! (frozen embeddings feeding the first layer) the output is untracked as well, which is right
//! since nothing upstream can learn.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Layout, MetalStorage, Result, Shape, Tensor,
};

use crate::quant::nf4::Nf4Tensor;

/// The gradient of the input from the gradient of the output.
pub type InputGradFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// Forwards a precomputed value; backward sends `bwd(grad)` to the first operand only.
struct InputGrad {
    name: &'static str,
    bwd: Arc<InputGradFn>,
}

fn check_contiguous(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("input-grad: the value must be contiguous from offset 0");
    }
    Ok(())
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        value: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        value: &MetalStorage,
        l: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _input: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.bwd)(grad)?), None))
    }
}

/// `value` (computed from `input` without a graph) as a differentiable function of `input`
/// whose input gradient is `bwd(grad_of_value)`.
pub fn attach_input_grad(
    name: &'static str,
    input: &Tensor,
    value: Tensor,
    bwd: Arc<InputGradFn>,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    // The op hands the value's buffer over by one clone, which must hold exactly the value.
    let value = if value.is_contiguous() && value.layout().start_offset() == 0 {
        value
    } else {
        value.affine(1.0, 0.0)?
    };
    input.apply_op2(&value, InputGrad { name, bwd })
}

/// `x · Wᵀ` for `x (rows, in)` and a frozen dense `W (out, in)`.
pub fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.detach().matmul(&w.to_dtype(x.dtype())?.t()?)?;
    let w = w.clone();
    attach_input_grad(
        "frozen-dense",
        x,
        y,
        Arc::new(move |g: &Tensor| g.matmul(&w.to_dtype(g.dtype())?)),
    )
}

/// `x · Wᵀ` for an NF4 weight: dequantise, gemm, drop the dense copy; the backward
/// dequantises again (QLoRA keeps only the 4-bit weight between calls).
pub fn nf4(x: &Tensor, w: &Arc<Nf4Tensor>) -> Result<Tensor> {
    let dense = w.dequantize()?.to_dtype(x.dtype())?;
    let y = x.detach().matmul(&dense.t()?)?;
    drop(dense);
    let w = w.clone();
    attach_input_grad(
        "nf4-linear",
        x,
        y,
        Arc::new(move |g: &Tensor| g.matmul(&w.dequantize()?.to_dtype(g.dtype())?)),
    )
}

/// Up to this many rows the ggml kernel (which quantises the activations to 8 bits and works
/// row by row) beats dequantise + gemm on CPU; above, the gemm wins (measured in
/// `examples/ggml_paths.rs`: see the `nn` crate docs).
pub const GGML_KERNEL_MAX_ROWS: usize = 16;

/// `x · Wᵀ` for a ggml block-quantized weight (Q4_0, Q8_0, Q4_K, Q6_K, ...).
pub fn ggml(x: &Tensor, w: &Arc<QTensor>) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let dtype = x.dtype();
    let y = if rows <= GGML_KERNEL_MAX_ROWS {
        x.detach()
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(w.as_ref())?
            .to_dtype(dtype)?
    } else {
        let dense = w.dequantize(x.device())?.to_dtype(dtype)?;
        x.detach().matmul(&dense.t()?)?
    };
    let w = w.clone();
    attach_input_grad(
        "ggml-linear",
        x,
        y,
        Arc::new(move |g: &Tensor| g.matmul(&w.dequantize(g.device())?.to_dtype(g.dtype())?)),
    )
}

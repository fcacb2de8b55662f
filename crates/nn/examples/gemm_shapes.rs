//! gemm throughput for the shapes of a 256-token step on a Llama-3.2-1B-sized layer: `x · Wᵀ`
//! against weights of N rows, one thread and all threads, with the destination column-major,
//! the same with `x` column-major too (what `frozen::xwt_colmajor` uses), with W as gemm's
//! left operand, and row-major. What the quantized bases' tile size (`frozen::tile_rows`) and
//! the layouts of `frozen::xwt_colmajor` are chosen from.
//!
//! `--rows` and `--k` change the token count (256) and the input width (2048); the last line
//! per shape times the whole column-major path (both transposes included) and
//! `dense::matmul_t`, which picks its layout by the number of rows.
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-nn --example gemm_shapes [--rows 1024 --k 1024]

use std::time::Instant;

fn best<F: FnMut()>(n: usize, mut f: F) -> f64 {
    let mut b = f64::INFINITY;
    for _ in 0..n {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

/// Strides of one operand as gemm takes them: (column stride, row stride).
type Strides = (isize, isize);

/// Best of 5 seconds for `dst (m, n) = lhs (m, k) · rhs (k, n)` with the given layouts.
#[allow(clippy::too_many_arguments)]
fn time(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    d: Strides,
    lhs: &[f32],
    l: Strides,
    rhs: &[f32],
    r: Strides,
    par: gemm::Parallelism,
) -> f64 {
    best(5, || {
        // SAFETY: every layout used below addresses only elements inside its buffer.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                d.0,
                d.1,
                false,
                lhs.as_ptr(),
                l.0,
                l.1,
                rhs.as_ptr(),
                r.0,
                r.1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    })
}

/// `--name value` from the command line, or the default.
fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// Best of 5 seconds for [`clinstruct_nn::dense::matmul_t`] (what the models run, layout
/// changes and allocation included).
fn time_matmul_t(m: usize, n: usize, k: usize) -> f64 {
    use candle_core::{Device, Tensor, Var};
    let x = Tensor::full(0.5f32, (m, k), &Device::Cpu).unwrap();
    let w = Var::from_tensor(&Tensor::full(0.25f32, (n, k), &Device::Cpu).unwrap()).unwrap();
    best(5, || {
        clinstruct_nn::dense::matmul_t(&x, w.as_tensor()).unwrap();
    })
}

fn main() {
    let (m, k) = (arg("--rows", 256), arg("--k", 2048));
    let x = vec![0.5f32; m * k];
    let xt: Vec<f32> = (0..m * k).map(|i| x[(i % m) * k + i / m]).collect();
    for n in [64usize, 128, 256, 512, 1024, 2048, 4096, 8192] {
        let w = vec![0.25f32; n * k];
        let mut c = vec![0f32; m * n];
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        let (mi, ni, ki) = (m as isize, n as isize, k as isize);
        let mut colmajor_gemm = 0.0;
        for (name, par) in [
            ("1t", gemm::Parallelism::None),
            ("2t", gemm::Parallelism::Rayon(2)),
        ] {
            // Column-major destination, x row-major, Wᵀ read in place.
            let t1 = time((m, n, k), &mut c, (mi, 1), &x, (1, ki), &w, (ki, 1), par);
            // The same with x column-major.
            let t4 = time((m, n, k), &mut c, (mi, 1), &xt, (mi, 1), &w, (ki, 1), par);
            // (x·Wᵀ)ᵀ = W · xᵀ with W as the left operand.
            let t2 = time((n, m, k), &mut c, (1, mi), &w, (1, ki), &x, (ki, 1), par);
            // Row-major destination.
            let t3 = time((m, n, k), &mut c, (1, ni), &x, (1, ki), &w, (ki, 1), par);
            colmajor_gemm = t4;
            println!(
                "n={n} {name}: colmaj {:.0}  x colmaj too {:.0}  W-as-lhs {:.0}  rowmaj {:.0} GFLOP/s",
                fl / t1,
                fl / t4,
                fl / t2,
                fl / t3
            );
        }
        if rayon::current_num_threads() > 1 {
            // The whole column-major path: `x` transposed in, the product transposed back.
            let transposes = best(5, || {
                clinstruct_nn::frozen::transpose(&x, m, k);
            }) + best(5, || {
                clinstruct_nn::frozen::transpose(&c, n, m);
            });
            println!(
                "n={n} column-major path incl. transposes {:.0}  dense::matmul_t {:.0} GFLOP/s",
                fl / (colmajor_gemm + transposes),
                fl / time_matmul_t(m, n, k)
            );
        }
    }
}

//! gemm throughput for the shapes of a 256-token step on a Llama-3.2-1B-sized layer: `x · Wᵀ`
//! against weights of N rows, one thread and all threads, with the destination column-major
//! (what `frozen::xwt_colmajor` uses), with W as gemm's left operand, and row-major. What the
//! quantized bases' tile size (`frozen::tile_rows`) is chosen from.
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-nn --example gemm_shapes

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
fn main() {
    let (m, k) = (256usize, 2048usize);
    let x = vec![0.5f32; m * k];
    for n in [64usize, 128, 256, 512, 1024, 2048, 4096, 8192] {
        let w = vec![0.25f32; n * k];
        let mut c = vec![0f32; m * n];
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        for (name, par) in [
            ("1t", gemm::Parallelism::None),
            ("2t", gemm::Parallelism::Rayon(2)),
        ] {
            // colmajor dst, lhs x rowmajor, rhs Wt
            let t1 = best(5, || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    m as isize,
                    1,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            });
            // colmajor dst via transposed problem: dstT (n, m) rowmajor = W (n,k) . xT (k, m)
            let t2 = best(5, || unsafe {
                gemm::gemm(
                    n,
                    m,
                    k,
                    c.as_mut_ptr(),
                    1,
                    m as isize,
                    false,
                    w.as_ptr(),
                    1,
                    k as isize,
                    x.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            });
            // rowmajor dst
            let t3 = best(5, || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            });
            println!(
                "n={n} {name}: colmaj {:.0}  W-as-lhs {:.0}  rowmaj {:.0} GFLOP/s",
                fl / t1,
                fl / t2,
                fl / t3
            );
        }
    }
}

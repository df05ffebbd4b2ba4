//! The predictor's hidden-layer products in phase 1 (batch 4096): burn Flex's matmul against the
//! decoder's GEMM on the same shapes — forward `X W`, input gradient `dZ W^T`, weight gradient
//! `X^T dZ` — in CPU milliseconds per call (transposes included where each side needs them).
//! Run with `RAYON_NUM_THREADS=1` for one core.
//!
//! `cargo bench --bench mlp_gemm`
//!
//! Measured on the 2-core Zen 1 VM (2026-12-02, one thread): ours is 1.2-1.26x faster on the
//! forward and input-gradient products but 0.4x on the weight gradient (a 4096-long reduction
//! whose right-hand side does not stay in L2), so over the three products burn is ahead (29.3 ms
//! against 37.5 ms at hidden 180). Even with the weight gradient blocked to the forward's speed
//! the products would gain about 1.14x, some 10 % of phase 1: the predictor's matmuls stay
//! burn's.

mod common;
use common::cpu_seconds;

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use nernc::decode::gemm::gemm_bias_rows;

type B = Flex;

/// CPU ms per call of `f`, over enough calls for about a second of work.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let (t, c) = (Instant::now(), cpu_seconds());
    let mut n = 0;
    while t.elapsed().as_secs_f64() < 1.0 {
        f();
        n += 1;
    }
    (cpu_seconds() - c) * 1e3 / n as f64
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 31 + seed * 17) % 23) as f32 * 0.01 - 0.1)
        .collect()
}

fn transpose(a: &[f32], rows: usize, cols: usize, ld: usize) -> Vec<f32> {
    let mut t = vec![0f32; cols * ld];
    for r in 0..rows {
        for c in 0..cols {
            t[c * ld + r] = a[r * cols + c];
        }
    }
    t
}

fn main() {
    let device = Default::default();
    println!("| hidden | product | burn Flex ms | our GEMM ms | ratio |");
    println!("|---|---|---|---|---|");
    let m = 4096;
    for h in [180usize, 320] {
        let x = values(m * h, 1);
        let w = values(h * h, 2);
        let dz = values(m * h, 3);
        let tensor = |v: &[f32], r, c| {
            Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &device)
        };
        let (xt, wt, dzt) = (tensor(&x, m, h), tensor(&w, h, h), tensor(&dz, m, h));
        let ld = h.next_multiple_of(16);
        let zeros = vec![0f32; h];
        let mut out = vec![0f32; m * h];
        let pad = |v: &[f32], rows: usize| {
            let mut p = vec![0f32; rows * ld];
            for r in 0..rows {
                p[r * ld..r * ld + h].copy_from_slice(&v[r * h..(r + 1) * h]);
            }
            p
        };
        // Forward: X [m,h] . W [h,h].
        let burn_fwd = time(|| {
            std::hint::black_box(xt.clone().matmul(wt.clone()).into_data());
        });
        let ours_fwd = time(|| {
            let wp = pad(&w, h);
            gemm_bias_rows(&x, h, m, &wp, ld, (h, h), &zeros, &mut out, h, false);
            std::hint::black_box(&out);
        });
        // Input gradient: dZ [m,h] . W^T.
        let burn_dx = time(|| {
            std::hint::black_box(dzt.clone().matmul(wt.clone().transpose()).into_data());
        });
        let ours_dx = time(|| {
            let wtp = transpose(&w, h, h, ld);
            gemm_bias_rows(&dz, h, m, &wtp, ld, (h, h), &zeros, &mut out, h, false);
            std::hint::black_box(&out);
        });
        // Weight gradient: X^T [h,m] . dZ [m,h].
        let mut dw = vec![0f32; h * h];
        let burn_dw = time(|| {
            std::hint::black_box(xt.clone().transpose().matmul(dzt.clone()).into_data());
        });
        let ours_dw = time(|| {
            let xtr = transpose(&x, m, h, m);
            let dzp = pad(&dz, m);
            gemm_bias_rows(&xtr, m, h, &dzp, ld, (m, h), &zeros, &mut dw, h, false);
            std::hint::black_box(&dw);
        });
        for (name, b, o) in [
            ("forward X W", burn_fwd, ours_fwd),
            ("input grad dZ W^T", burn_dx, ours_dx),
            ("weight grad X^T dZ", burn_dw, ours_dw),
        ] {
            println!("| {h} | {name} | {b:.2} | {o:.2} | {:.2} |", b / o);
        }
    }
}

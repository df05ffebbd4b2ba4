//! The predictor's hidden-layer products in phase 1 (batch 4096): burn Flex's matmul against
//! [`nernc::dense`] (the decoder's GEMM, what CPU training runs since session 11) on the same
//! shapes — forward `X W + b`, and the backward (`dZ W^T` and `X^T dZ`, plus the bias sums on our
//! side) — in CPU milliseconds per call. Run with `RAYON_NUM_THREADS=1` for one core.
//!
//! `cargo bench --bench mlp_gemm`
//!
//! Session 10 (Zen 1, one thread, raw GEMM calls) found the weight gradient 0.4x burn's as one
//! 4096-long product; [`nernc::dense`] sums it over fixed 256-row blocks. Session 11 (Emerald
//! Rapids, AVX-512, one thread, three runs): forward 1.3-1.9x burn's, backward 1.04-1.2x.

mod common;
use common::cpu_seconds;

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use nernc::dense::{self, DenseShape};

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

fn main() {
    // As training does: freed buffers stay in the heap instead of returning as fresh pages.
    nernc::device::keep_freed_memory();
    let device = Default::default();
    println!("| hidden | product | burn Flex ms | nernc::dense ms | ratio |");
    println!("|---|---|---|---|---|");
    let m = 4096;
    for h in [180usize, 320] {
        let x = values(m * h, 1);
        let w = values(h * h, 2);
        let b = values(h, 4);
        let dz = values(m * h, 3);
        let tensor = |v: &[f32], r, c| {
            Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &device)
        };
        let (xt, wt, dzt) = (tensor(&x, m, h), tensor(&w, h, h), tensor(&dz, m, h));
        let bt = Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [h]), &device);
        let s = DenseShape {
            rows: m,
            inputs: h,
            outputs: h,
        };
        let burn_fwd = time(|| {
            let y = xt.clone().matmul(wt.clone()) + bt.clone().unsqueeze::<2>();
            std::hint::black_box(y.into_data());
        });
        let ours_fwd = time(|| {
            std::hint::black_box(dense::forward(&x, &w, &b, s, false));
        });
        let burn_bwd = time(|| {
            std::hint::black_box(dzt.clone().matmul(wt.clone().transpose()).into_data());
            std::hint::black_box(xt.clone().transpose().matmul(dzt.clone()).into_data());
        });
        let ours_bwd = time(|| {
            std::hint::black_box(dense::backward(&x, &w, None, &dz, s, true));
        });
        for (name, b, o) in [
            ("forward X W + b", burn_fwd, ours_fwd),
            ("backward dZ W^T, X^T dZ", burn_bwd, ours_bwd),
        ] {
            println!("| {h} | {name} | {b:.2} | {o:.2} | {:.2} |", b / o);
        }
    }
}

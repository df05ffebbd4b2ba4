//! The decoder's GEMM on the shapes of phase-2 training convolutions (ResNet-20 on 28x28
//! inputs, one image): forward `W . cols`, weight gradient `cols . dy^T`, input gradient
//! `W^T . dy`, for the 16- and 64-channel stages, plus a square reference. One thread, GFLOP/s
//! and CPU milliseconds per 2 GFLOP (CPU time stays comparable when other work shares the
//! cores).
//!
//! `cargo bench --bench conv_gemm [-- INDEX]` (INDEX: only that row).

mod common;
use common::cpu_seconds;

use std::time::Instant;

use nernc::decode::gemm::gemm_bias_rows;

fn main() {
    let only: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let shapes = [
        (16usize, 144usize, 784usize, "forward, 16 ch, 28x28"),
        (144, 784, 16, "weight grad, 16 ch"),
        (144, 16, 784, "input grad, 16 ch"),
        (64, 576, 49, "forward, 64 ch, 7x7"),
        (576, 49, 64, "weight grad, 64 ch"),
        (576, 64, 49, "input grad, 64 ch"),
        (192, 192, 192, "square 192"),
    ];
    println!("| # | product | m | k | n | GFLOP/s | CPU ms per 2 GFLOP |");
    println!("|---|---|---|---|---|---|---|");
    for (idx, &(m, k, n, name)) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != idx) {
            continue;
        }
        let ldw = n.next_multiple_of(16);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..k * ldw).map(|i| (i % 5) as f32 * 0.1).collect();
        let bias = vec![0f32; n];
        let mut c = vec![0f32; m * n];
        let reps = (2e9 / (2.0 * (m * k * n) as f64)).ceil() as usize;
        let (wall, cpu) = (Instant::now(), cpu_seconds());
        for _ in 0..reps {
            gemm_bias_rows(&a, k, m, &w, ldw, (k, n), &bias, &mut c, n, false);
        }
        let (wall, cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        let flops = 2.0 * (m * k * n * reps) as f64;
        println!(
            "| {idx} | {name} | {m} | {k} | {n} | {:.1} | {:.0} |",
            flops / wall / 1e9,
            cpu * 1e3 * 2e9 / flops
        );
        std::hint::black_box(&c);
    }
}

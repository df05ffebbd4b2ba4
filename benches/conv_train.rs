//! The training convolution (`src/conv.rs`) on ResNet-20's phase-2 layer shapes at batch 128:
//! wall milliseconds of the forward pass and of the backward pass (input, weight and bias
//! gradients) per layer, and the GFLOP/s they reach, on all cores (as phase 2 runs them).
//! Rows are one layer each; a ResNet-20 step runs the 16-, 32- and 64-channel rows 6-7 times
//! each for the student (forward + backward) and once more forward for the teacher.
//!
//! `cargo bench --bench conv_train`; `NERNC_BENCH_REPS` sets the timed repetitions (default 5).

use std::time::Instant;

use nernc::conv::{ConvGeometry, backward, forward};

fn main() {
    let reps: usize = std::env::var("NERNC_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // As training runs: freed buffers stay with the process (no page faults on reuse).
    nernc::device::keep_freed_memory();
    let threads = nernc::decode::default_threads();
    let rows = [
        ("16 ch, 28x28", 16, 28, 16, 1),
        ("16 -> 32 ch, stride 2", 16, 28, 32, 2),
        ("32 ch, 14x14", 32, 14, 32, 1),
        ("32 -> 64 ch, stride 2", 32, 14, 64, 2),
        ("64 ch, 7x7", 64, 7, 64, 1),
    ];
    println!("threads: {threads}, batch 128, {reps} timed repetitions after one untimed");
    println!("| layer | forward ms | GFLOP/s | backward ms | GFLOP/s |");
    println!("|---|---|---|---|---|");
    for (name, cin, hw, cout, stride) in rows {
        let g = ConvGeometry {
            batch: 128,
            cin,
            h: hw,
            w: hw,
            cout,
            k: 3,
            stride,
            pad: 1,
        };
        let x: Vec<f32> = (0..g.batch * cin * hw * hw)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..cout * cin * 9)
            .map(|i| ((i * 104729) % 1000) as f32 / 5000.0 - 0.1)
            .collect();
        let flops = 2.0 * (g.batch * cout * g.out_h() * g.out_w() * cin * 9) as f64;
        let y = forward(&x, &w, None, &g, threads);
        let _ = backward(&x, &w, &y, &g, true, threads);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(forward(&x, &w, None, &g, threads));
        }
        let fwd = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(backward(&x, &w, &y, &g, true, threads));
        }
        let bwd = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "| {name} | {:.2} | {:.1} | {:.2} | {:.1} |",
            fwd * 1e3,
            flops / fwd / 1e9,
            bwd * 1e3,
            2.0 * flops / bwd / 1e9
        );
    }
}

//! Encoder throughput: kernels per second (forward + backward + Adam step) at batch 4096 for
//! hidden 140, 180 and 320 on the ResNet-20 fixture. CPU always; CUDA too when built with
//! `--features cuda` and run with `NERNC_BENCH_CUDA=1`.
//!
//! Phase 2: images per second of distillation steps (predictor over all kernels, student forward
//! and backward, teacher forward) at 128 images per step, hidden 140 and 180, on noise inputs.
//!
//! `cargo bench --bench encode [--features cuda]`; `NERNC_BENCH_STEPS` sets the timed steps,
//! `NERNC_BENCH_DEVICES` (`cpu`, `cuda` or `cpu,cuda`) the devices, `NERNC_BENCH_MODEL` another
//! checkpoint (the bench binary then runs away from the source tree, e.g. on a GPU machine),
//! `NERNC_BENCH_PHASES` (`1`, `2` or `1,2`, the default) the tables (e.g. to profile one phase),
//! `NERNC_BENCH_HIDDEN` (e.g. `180`) the widths instead of every row's.
//!
//! Both tables time steps after untimed warm-up steps of the same shapes: on CUDA the first
//! steps compile their kernels (NVRTC, autotune), which is a one-time cost and not throughput.

use std::path::Path;

use nernc::encode::{
    DeviceKind, DistillOptions, DistillSource, EncodeOptions, NoProgress, encode,
    training_throughput,
};

fn main() {
    let steps: usize = std::env::var("NERNC_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let input = std::env::var_os("NERNC_BENCH_MODEL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fmnist-resnet20.safetensors"),
        std::path::PathBuf::from,
    );
    let devices = bench_devices();
    let phases = std::env::var("NERNC_BENCH_PHASES").unwrap_or_else(|_| "1,2".into());
    let wants = |p: &str| phases.split(',').any(|x| x.trim() == p);
    if wants("1") {
        phase1(&devices, &input, steps);
    }
    if wants("2") {
        phase2(&devices, &input, (steps / 4).max(3));
    }
}

/// Phase-1 throughput table.
fn phase1(devices: &[DeviceKind], input: &Path, steps: usize) {
    println!("| device | hidden | batch | timed steps | kernels/s | ms/step |");
    println!("|---|---|---|---|---|---|");
    for &device in devices {
        for hidden in widths(&[140, 180, 320]) {
            let opts = EncodeOptions {
                hidden: Some(hidden),
                steps: Some(steps),
                batch: 4096,
                device,
                // The work of the PyTorch reference (and of this bench's earlier rows).
                pe_levels: 40,
                ..EncodeOptions::default()
            };
            match training_throughput(input, &opts) {
                Ok(kps) => println!(
                    "| {} | {hidden} | 4096 | {steps} | {kps:.0} | {:.1} |",
                    device.name(),
                    4096.0 / kps * 1e3
                ),
                Err(e) => println!(
                    "| {} | {hidden} | 4096 | - | error: {e} | - |",
                    device.name()
                ),
            }
        }
    }
}

/// The hidden widths to measure: `NERNC_BENCH_HIDDEN` (comma-separated) or the table's own.
fn widths(default: &[u32]) -> Vec<u32> {
    match std::env::var("NERNC_BENCH_HIDDEN") {
        Ok(list) => list
            .split(',')
            .filter_map(|w| w.trim().parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// The devices to measure: `NERNC_BENCH_DEVICES`, else the CPU (plus CUDA with the older
/// `NERNC_BENCH_CUDA=1`).
fn bench_devices() -> Vec<DeviceKind> {
    if let Ok(list) = std::env::var("NERNC_BENCH_DEVICES") {
        return list
            .split(',')
            .filter_map(|d| match d.trim() {
                "cpu" => Some(DeviceKind::Cpu),
                "cuda" => Some(DeviceKind::Cuda),
                other => {
                    eprintln!("NERNC_BENCH_DEVICES: unknown device {other:?} (cpu or cuda)");
                    None
                }
            })
            .collect();
    }
    let mut devices = vec![DeviceKind::Cpu];
    if std::env::var_os("NERNC_BENCH_CUDA").is_some() {
        devices.push(DeviceKind::Cuda);
    }
    devices
}

/// Phase-2 throughput table.
fn phase2(devices: &[DeviceKind], input: &Path, steps: usize) {
    println!();
    println!("| device | hidden | images/step | steps | images/s | s/step |");
    println!("|---|---|---|---|---|---|");
    for &device in devices {
        for hidden in widths(&[140, 180]) {
            let mut opts = EncodeOptions {
                hidden: Some(hidden),
                steps: Some(1),
                device,
                pe_levels: 40,
                predictor_dtype: nernc::predictor::WeightDtype::F16,
                distill: Some(DistillOptions {
                    steps,
                    source: DistillSource::Noise,
                    batch: 128,
                    ..DistillOptions::default()
                }),
                ..EncodeOptions::default()
            };
            // Warm-up: the same shapes for two steps, untimed.
            let distill = opts.distill.clone().expect("phase 2 options");
            opts.distill = Some(DistillOptions {
                steps: 2,
                ..distill.clone()
            });
            let warm = encode(input, &opts, &NoProgress);
            opts.distill = Some(distill);
            match warm.and_then(|_| encode(input, &opts, &NoProgress)) {
                Ok((_, r)) => {
                    let s = r.distill.map_or(f64::NAN, |d| d.seconds);
                    println!(
                        "| {} | {hidden} | 128 | {steps} | {:.0} | {:.2} |",
                        device.name(),
                        128.0 * steps as f64 / s,
                        s / steps as f64
                    );
                }
                Err(e) => println!(
                    "| {} | {hidden} | 128 | - | error: {e} | - |",
                    device.name()
                ),
            }
        }
    }
}

//! Decoder benchmark: decode time of the fixtures at hidden 180 and 320, and the decoder's
//! GFLOP/s against this machine's f32 GEMM peak measured in the same run (matrixmultiply sgemm).
//!
//! `cargo bench --bench decode` prints a table. Decode time does not depend on the trained values,
//! so the predictors here are randomly initialised at the real shapes with the real layer tables.
//! A second table times coded convs (format 1.8, `CODE`) at the shapes of the 4x-wide ResNet-20's
//! `--code layer3=1/8 --code layer=1` files (random codes: the time does not depend on them).

use std::path::Path;
use std::time::Instant;

use nernc::checkpoint::{is_predictable, natural_cmp, parse_safetensors};
use nernc::decode::{decode_layers, default_threads};
use nernc::format::{CodedMatrix, CodedTensor, LayerEntry, TensorDtype};
use nernc::io::MappedFile;
use nernc::permute::{Permutation, PermutationKind};
use nernc::predictor::{Predictor, PredictorConfig};
use nernc::rng::SplitMix64;

fn layers_of(path: &Path) -> Vec<LayerEntry> {
    let file = MappedFile::open(path).expect("fixture");
    let ck = parse_safetensors(path, file.bytes()).expect("parse");
    let mut t: Vec<_> = ck.tensors.iter().filter(|t| is_predictable(t)).collect();
    t.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    t.iter()
        .map(|t| LayerEntry {
            name: t.name.clone(),
            dtype: TensorDtype::F32,
            permutation: PermutationKind::None,
            shape: [
                t.shape[0] as u32,
                t.shape[1] as u32,
                t.shape[2] as u32,
                t.shape[3] as u32,
            ],
        })
        .collect()
}

fn random_predictor(hidden: u32, k: u32) -> Predictor {
    let config = PredictorConfig::reference(hidden, k, 40, 0.76);
    Predictor::init(&config, &mut SplitMix64::new(1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_it(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn gemm_peak(threads: usize) -> f64 {
    let n = 1536;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    // matrixmultiply reads its thread count from this variable.
    // SAFETY: set before any other thread of this benchmark runs matrixmultiply.
    unsafe { std::env::set_var("MATMUL_NUM_THREADS", threads.to_string()) };
    let s = time_it(5, || unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            n as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    });
    2.0 * (n * n * n) as f64 / s / 1e9
}

/// Hardware FMA peak: independent AVX-512 FMA chains on every thread (no memory traffic).
#[cfg(target_arch = "x86_64")]
fn fma_peak(threads: usize) -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,fma")]
    fn chains(iters: usize) -> f32 {
        // Twelve independent chains in named registers (an array may be kept in memory).
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let z = _mm512_setzero_ps();
        let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5) = (z, z, z, z, z, z);
        let (mut c6, mut c7, mut c8, mut c9, mut c10, mut c11) = (z, z, z, z, z, z);
        for _ in 0..iters {
            c0 = _mm512_fmadd_ps(c0, a, b);
            c1 = _mm512_fmadd_ps(c1, a, b);
            c2 = _mm512_fmadd_ps(c2, a, b);
            c3 = _mm512_fmadd_ps(c3, a, b);
            c4 = _mm512_fmadd_ps(c4, a, b);
            c5 = _mm512_fmadd_ps(c5, a, b);
            c6 = _mm512_fmadd_ps(c6, a, b);
            c7 = _mm512_fmadd_ps(c7, a, b);
            c8 = _mm512_fmadd_ps(c8, a, b);
            c9 = _mm512_fmadd_ps(c9, a, b);
            c10 = _mm512_fmadd_ps(c10, a, b);
            c11 = _mm512_fmadd_ps(c11, a, b);
        }
        [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11]
            .iter()
            .map(|x| _mm512_reduce_add_ps(*x))
            .sum()
    }
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let iters = 40_000_000;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            // SAFETY: the features were detected above.
            s.spawn(|| std::hint::black_box(unsafe { chains(iters) }));
        }
    });
    Some(threads as f64 * (iters * 12 * 16 * 2) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_: usize) -> Option<f64> {
    None
}

fn main() {
    let threads = default_threads();
    let peak = gemm_peak(threads);
    println!("threads: {threads}");
    println!("f32 GEMM peak (matrixmultiply sgemm 1536^3, {threads} threads): {peak:.1} GFLOP/s");
    let fma = fma_peak(threads);
    if let Some(f) = fma {
        println!("f32 FMA issue peak (AVX-512 FMA chains, {threads} threads): {f:.1} GFLOP/s");
    }
    println!();
    println!(
        "| model | hidden | kernels | decode (s, median of 7) | GFLOP executed | GFLOP/s | % of GEMM peak | % of FMA peak |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for name in ["fmnist-resnet20", "fmnist-resnet56"] {
        let layers = layers_of(&root.join(format!("{name}.safetensors")));
        let perms = vec![Permutation::Identity; layers.len()];
        let kernels: usize = layers.iter().map(LayerEntry::kernels).sum();
        for hidden in [180u32, 320] {
            let p = random_predictor(hidden, 3);
            let h = f64::from(hidden);
            // Executed work: three hidden GEMMs and the output GEMM per kernel, the first layer's
            // three adds per unit, and the per-coordinate tables of the separable first layer.
            let per_row = 2.0 * (3.0 * h * h + h * 9.0) + 3.0 * h;
            let extents = nernc::decode::coordinate_extents(&layers);
            let tables = 2.0 * 80.0 * h * extents.iter().sum::<usize>() as f64;
            let flops = per_row * kernels as f64 + tables;
            let s = time_it(7, || {
                std::hint::black_box(decode_layers(&p, &layers, &perms, threads));
            });
            let gflops = flops / s / 1e9;
            println!(
                "| {name} | {hidden} | {kernels} | {s:.4} | {:.2} | {gflops:.1} | {:.0} % | {} |",
                flops / 1e9,
                100.0 * gflops / peak,
                fma.map_or("-".to_string(), |f| format!("{:.0} %", 100.0 * gflops / f))
            );
        }
    }
    coded_table(&root);
}

/// Random `rows x cols` codes at `bits` with small positive row scales.
fn random_matrix(rows: usize, cols: usize, bits: u8, rng: &mut SplitMix64) -> CodedMatrix {
    let span = 1u64 << bits;
    let half = (span / 2) as i64;
    CodedMatrix {
        rows,
        cols,
        scales: (0..rows).map(|i| 0.01 + 1e-4 * i as f32).collect(),
        codes: (0..rows * cols)
            .map(|_| (rng.below(span) as i64 - half) as i8)
            .collect(),
    }
}

/// Decode time of the coded convs of a 4x-wide ResNet-20 file: the ResNet-20 fixture's layer
/// table with every channel count (but the input's) four times larger, `layer3` as rank-Cout/8
/// factors and the other `layer*` convs whole, 3-bit codes. One thread (`coded_weights` is per
/// tensor; the decoder runs tensors one after another).
fn coded_table(root: &Path) {
    let layers = layers_of(&root.join("fmnist-resnet20.safetensors"));
    let mut rng = SplitMix64::new(3);
    let mut coded = Vec::new();
    for l in layers.iter().filter(|l| l.name.starts_with("layer")) {
        let shape = [l.shape[0] * 4, l.shape[1] * 4, l.shape[2], l.shape[3]];
        let (cout, cols) = (shape[0] as usize, (shape[1] * shape[2] * shape[3]) as usize);
        let rank = if l.name.starts_with("layer3") && cout / 8 * (cout + cols) < cout * cols {
            cout / 8
        } else {
            0
        };
        let matrices = if rank == 0 {
            vec![random_matrix(cout, cols, 3, &mut rng)]
        } else {
            vec![
                random_matrix(cout, rank, 3, &mut rng),
                random_matrix(rank, cols, 3, &mut rng),
            ]
        };
        coded.push(CodedTensor {
            name: l.name.clone(),
            shape,
            bits: 3,
            rank: rank as u32,
            matrices,
        });
    }
    let weights: usize = coded.iter().map(CodedTensor::elements).sum();
    let flops: f64 = coded
        .iter()
        .map(|t| 2.0 * t.elements() as f64 * f64::from(t.rank))
        .sum();
    let s = time_it(7, || {
        for t in &coded {
            std::hint::black_box(nernc::decode::coded::coded_weights(t).unwrap());
        }
    });
    println!();
    println!(
        "| coded convs | tensors | weights out | decode (s, median of 7, 1 thread) | GFLOP (factor products) | GFLOP/s |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| 4x-wide ResNet-20 shapes, layer3 rank Cout/8, 3-bit | {} | {weights} | {s:.4} | {:.3} | {:.1} |",
        coded.len(),
        flops / 1e9,
        flops / s / 1e9
    );
}

//! The decoder: regenerates every predicted convolution weight from a validated container.
//!
//! Framework-free and deterministic: the arithmetic is the normative one of spec §6, so the
//! output is bit-identical on every machine and for any number of threads.

pub mod coded;
pub mod gemm;

use std::sync::Mutex;

use crate::checkpoint::{OutBytes, OutTensor, write_safetensors};
use crate::error::Result;
use crate::format::{Container, LayerEntry};
use crate::permute::Permutation;
use crate::predictor::{COORDS, Predictor, TABLES};
use gemm::PackedMatrix;

/// Rows (kernels) per work item: small enough to stay in L2 with the weights, large enough to
/// amortise the packed-weight reads.
const ROWS_PER_TASK: usize = 192;

/// A predictor prepared for fast evaluation: packed weights and the first layer's per-coordinate
/// partial sums (the first layer is separable across the three coordinates).
pub struct PreparedPredictor {
    kernel_size: usize,
    first_bias: Vec<f32>,
    /// `tables[c][n * h + j]`: partial pre-activation of hidden unit `j` from coordinate `c = n`.
    tables: [Vec<f32>; COORDS],
    /// `embedded[t][r * h + j]`: the same from row `r` of embedding table `t` (format 1.7; empty
    /// without tables).
    embedded: Vec<Vec<f32>>,
    hidden: Vec<(PackedMatrix, Vec<f32>)>,
    width: usize,
}

impl PreparedPredictor {
    /// `extents[c]` is one past the largest value coordinate `c` takes.
    pub fn new(p: &Predictor, extents: [usize; COORDS]) -> Self {
        let cfg = &p.config;
        let cw = cfg.coord_width();
        let first = &p.layers[0];
        let h = first.outputs;
        // `n` input rows of width `w` times the first layer's block of rows `from..from + w`.
        let partial = |input: &[f32], n: usize, w: usize, from: usize| {
            let packed = PackedMatrix::new(&first.weight[from * h..(from + w) * h], w, h);
            let mut out = vec![0f32; n * h];
            gemm::gemm_bias(input, w, n, &packed, &vec![0f32; h], &mut out, h, false);
            out
        };
        let tables =
            std::array::from_fn(|c| partial(&cfg.pe_table(extents[c]), extents[c], cw, c * cw));
        let embedded = (0..p.embeddings.len())
            .map(|t| {
                let e = &p.embeddings[t];
                let rows: Vec<f32> = (0..e.inputs).flat_map(|r| p.embedding_row(t, r)).collect();
                partial(&rows, e.inputs, e.outputs, COORDS * cw + t * e.outputs)
            })
            .collect();
        let hidden = p.layers[1..]
            .iter()
            .map(|l| {
                (
                    PackedMatrix::new(&l.weight, l.inputs, l.outputs),
                    l.bias.clone(),
                )
            })
            .collect();
        PreparedPredictor {
            kernel_size: cfg.kernel_size as usize,
            first_bias: first.bias.clone(),
            tables,
            embedded,
            hidden,
            width: cfg.max_width(),
        }
    }

    /// Predicts `rows` consecutive kernel positions of layer `layer` starting at `start`, writes
    /// each kernel's centre `k x k` crop into `out` (row-major, `rows * k * k`). `first_rows`:
    /// the layer's first row of each embedding table.
    #[allow(clippy::too_many_arguments)]
    fn predict_rows(
        &self,
        layer: usize,
        first_rows: [usize; TABLES],
        cin: usize,
        k: usize,
        start: usize,
        rows: usize,
        out: &mut [f32],
        scratch: &mut [Vec<f32>; 2],
    ) {
        let w = self.width;
        let h = self.first_bias.len();
        let [a_buf, b_buf] = scratch;
        a_buf.resize(rows * w, 0.0);
        b_buf.resize(rows * w, 0.0);
        let tl = &self.tables[0][layer * h..(layer + 1) * h];
        for r in 0..rows {
            let p = start + r;
            let (fa, cb) = (p / cin, p % cin);
            let tf = &self.tables[1][fa * h..(fa + 1) * h];
            let tc = &self.tables[2][cb * h..(cb + 1) * h];
            let dst = &mut a_buf[r * w..r * w + h];
            if self.embedded.is_empty() {
                for j in 0..h {
                    let z = ((self.first_bias[j] + tl[j]) + tf[j]) + tc[j];
                    dst[j] = if z > 0.0 { z } else { 0.0 };
                }
            } else {
                let (rf, rc) = (first_rows[0] + fa, first_rows[1] + cb);
                let ef = &self.embedded[0][rf * h..(rf + 1) * h];
                let ec = &self.embedded[1][rc * h..(rc + 1) * h];
                for j in 0..h {
                    let z = ((((self.first_bias[j] + tl[j]) + tf[j]) + tc[j]) + ef[j]) + ec[j];
                    dst[j] = if z > 0.0 { z } else { 0.0 };
                }
            }
        }
        let last = self.hidden.len() - 1;
        let (mut src, mut dst) = (a_buf, b_buf);
        for (i, (packed, bias)) in self.hidden.iter().enumerate() {
            gemm::gemm_bias(src, w, rows, packed, bias, dst, w, i != last);
            std::mem::swap(&mut src, &mut dst);
        }
        // `src` now holds the K*K outputs of each row.
        let big = self.kernel_size;
        let off = (big - k) / 2;
        for r in 0..rows {
            let row = &src[r * w..r * w + big * big];
            let o = &mut out[r * k * k..(r + 1) * k * k];
            for y in 0..k {
                o[y * k..(y + 1) * k].copy_from_slice(&row[(y + off) * big + off..][..k]);
            }
        }
    }
}

/// Coordinate extents a container needs: layers, largest `cout`, largest `cin`.
pub fn coordinate_extents(layers: &[LayerEntry]) -> [usize; COORDS] {
    [
        layers.len(),
        layers.iter().map(LayerEntry::cout).max().unwrap_or(0),
        layers.iter().map(LayerEntry::cin).max().unwrap_or(0),
    ]
}

/// Number of worker threads to use by default.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Decodes every predicted layer; returns weights in the source layout `[cout, cin, k, k]`.
pub fn decode_layers(
    predictor: &Predictor,
    layers: &[LayerEntry],
    permutations: &[Permutation],
    threads: usize,
) -> Vec<Vec<f32>> {
    let prepared = PreparedPredictor::new(predictor, coordinate_extents(layers));
    // Each layer's first row of the embedding tables: the filters and channels of the layers
    // before it (spec §5.1).
    let first_rows: Vec<[usize; TABLES]> = layers
        .iter()
        .scan([0usize; TABLES], |next, l| {
            let first = *next;
            *next = [next[0] + l.cout(), next[1] + l.cin()];
            Some(first)
        })
        .collect();
    // Position-ordered predictions, computed in independent tasks.
    let mut by_position: Vec<Vec<f32>> = layers.iter().map(|l| vec![0f32; l.elements()]).collect();
    {
        let mut tasks = Vec::new();
        for (li, (layer, buf)) in layers.iter().zip(by_position.iter_mut()).enumerate() {
            let kk = layer.kernel() * layer.kernel();
            for (t, chunk) in buf.chunks_mut(ROWS_PER_TASK * kk).enumerate() {
                tasks.push((li, t * ROWS_PER_TASK, chunk));
            }
        }
        let queue = Mutex::new(tasks.into_iter());
        let work = || {
            let mut scratch = [Vec::new(), Vec::new()];
            loop {
                let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                let Some((li, start, chunk)) = next else {
                    break;
                };
                let l = &layers[li];
                let kk = l.kernel() * l.kernel();
                let rows = chunk.len() / kk;
                let first = first_rows[li];
                prepared.predict_rows(
                    li,
                    first,
                    l.cin(),
                    l.kernel(),
                    start,
                    rows,
                    chunk,
                    &mut scratch,
                );
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads.max(1) {
                s.spawn(work);
            }
            work();
        });
    }
    // Scatter positions back to the original kernel order.
    layers
        .iter()
        .zip(permutations)
        .zip(by_position)
        .map(|((l, perm), pos)| {
            if matches!(perm, Permutation::Identity) {
                return pos;
            }
            let kk = l.kernel() * l.kernel();
            let mut out = vec![0f32; l.elements()];
            for (orig, kernel) in perm.originals(l.cout(), l.cin()).zip(pos.chunks_exact(kk)) {
                out[orig * kk..(orig + 1) * kk].copy_from_slice(kernel);
            }
            out
        })
        .collect()
}

/// A decoded tensor, ready to write.
pub enum DecodedTensor<'a> {
    Predicted {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// Stored bytes, written as they are.
    Passthrough(&'a crate::format::PassEntry, &'a [u8]),
    /// An F32 passthrough tensor stored as binary16, widened back (exactly) to F32.
    Widened {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
}

/// Decodes a whole container: every tensor by name, in container order (layers first).
pub fn decode_container<'a>(
    c: &'a Container<'a>,
    threads: usize,
) -> Result<Vec<(String, DecodedTensor<'a>)>> {
    let weights = decode_layers(&c.predictor, &c.layers, &c.permutations, threads);
    let mut out: Vec<(String, DecodedTensor<'a>)> = c
        .layers
        .iter()
        .zip(weights)
        .map(|(l, data)| {
            (
                l.name.clone(),
                DecodedTensor::Predicted {
                    shape: l.shape.iter().map(|&d| d as usize).collect(),
                    data,
                },
            )
        })
        .collect();
    for t in &c.coded {
        out.push((
            t.name.clone(),
            DecodedTensor::Predicted {
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                data: coded::coded_weights(t)?,
            },
        ));
    }
    for p in &c.passthrough {
        let bytes = c.tensor_bytes(p);
        let t = match p.storage {
            crate::format::PassStorage::Verbatim => DecodedTensor::Passthrough(p, bytes),
            crate::format::PassStorage::F16 => DecodedTensor::Widened {
                shape: p.shape.iter().map(|&d| d as usize).collect(),
                data: bytes
                    .chunks_exact(2)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect(),
            },
        };
        out.push((p.name.clone(), t));
    }
    Ok(out)
}

/// Summary of a decode to disk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeSummary {
    pub tensors: usize,
    pub predicted_tensors: usize,
    /// Conv weights decoded from codes (`CODE`, format 1.8).
    pub coded_tensors: usize,
    pub output_bytes: u64,
    pub seconds: f64,
}

/// Reads, verifies and decodes `input`, writing a safetensors checkpoint to `output` atomically.
pub fn decode_file(
    input: &std::path::Path,
    output: &std::path::Path,
    threads: usize,
    limits: &crate::format::Limits,
) -> Result<DecodeSummary> {
    let started = std::time::Instant::now();
    crate::store::Location::from_arg(output)?.check_output()?;
    let file = crate::io::MappedFile::open(input)?;
    let container = crate::format::read_container(file.bytes(), limits)?;
    let tensors = decode_container(&container, threads)?;
    let out: Vec<(String, OutTensor<'_>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let tensor = match t {
                DecodedTensor::Predicted { shape, data }
                | DecodedTensor::Widened { shape, data } => OutTensor {
                    dtype: crate::format::TensorDtype::F32,
                    shape,
                    bytes: OutBytes::F32(data),
                },
                DecodedTensor::Passthrough(entry, bytes) => OutTensor {
                    dtype: entry.dtype,
                    shape: entry.shape.iter().map(|&d| d as usize).collect(),
                    bytes: OutBytes::Raw(bytes),
                },
            };
            (name, tensor)
        })
        .collect();
    write_safetensors(output, &out, container.source_metadata.as_ref())?;
    Ok(DecodeSummary {
        tensors: out.len(),
        predicted_tensors: container.layers.len(),
        coded_tensors: container.coded.len(),
        output_bytes: container.output_bytes(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

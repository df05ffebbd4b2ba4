//! The predictor: a plain MLP that maps the positional encoding of a kernel coordinate
//! `(layer, filter position, channel position)` to one `K x K` kernel.
//!
//! This module holds the framework-free description shared by the container, the decoder and
//! the encoder. The arithmetic a decoder must follow is normative (`spec/nern-format.md` §6).

/// Every hyper-parameter a decoder needs to run the predictor.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictorConfig {
    /// Positional-encoding levels `L` per coordinate (input width `E = 6 L`).
    pub pe_levels: u32,
    /// Positional-encoding base `b`: level `l` uses frequency `pi * b^l`.
    pub pe_base: f64,
    /// Output kernel size `K` (the largest predicted kernel; smaller ones are centre crops).
    pub kernel_size: u32,
    /// Widths of all activations, input to output: `[E, h, ..., h, K*K]` (`depth + 1` entries).
    pub widths: Vec<u32>,
    /// How the weights are stored in the file (the decoder always computes in f32).
    pub weight_dtype: WeightDtype,
    /// Learned embedding tables beside the positional encoding (format 1.7), `None` for the
    /// plain coordinate encoding.
    pub embedding: Option<Embedding>,
}

/// The learned embeddings of format 1.7 (spec §5.1, §6.1): one row of `width` values per
/// (layer, filter position) and one per (layer, channel position), numbered across the layers
/// in `LAYR` order. The first layer's input is `[PE(l), PE(a), PE(b), F[f], C[c]]`, so its
/// width is `6 L + 2 width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding {
    pub width: u32,
    /// Rows of the filter table (the sum of the predicted layers' `cout`) and of the channel
    /// table (the sum of their `cin`).
    pub rows: [u32; 2],
}

/// The number of embedding tables (filter, channel).
pub const TABLES: usize = 2;

/// Storage dtype of the predictor's weights (`PRED` dtype code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightDtype {
    #[default]
    F32,
    F16,
    Bf16,
    /// Symmetric int8 weights with one f32 scale per output unit; biases stay f32 (format 1.1).
    Int8,
    /// Symmetric int4 weights (codes -7..=7, two per byte) with one f32 scale per output unit;
    /// biases stay f32 (format 1.3).
    Int4,
    /// Symmetric 6-bit codes (-31..=31), bit-packed, one f32 scale per output unit (format 1.4).
    Int6,
    /// Symmetric 5-bit codes (-15..=15), bit-packed, one f32 scale per output unit (format 1.4).
    Int5,
}

impl WeightDtype {
    pub fn code(self) -> u8 {
        match self {
            WeightDtype::F32 => 0,
            WeightDtype::F16 => 1,
            WeightDtype::Bf16 => 2,
            WeightDtype::Int8 => 3,
            WeightDtype::Int4 => 4,
            WeightDtype::Int6 => 5,
            WeightDtype::Int5 => 6,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(WeightDtype::F32),
            1 => Some(WeightDtype::F16),
            2 => Some(WeightDtype::Bf16),
            3 => Some(WeightDtype::Int8),
            4 => Some(WeightDtype::Int4),
            5 => Some(WeightDtype::Int6),
            6 => Some(WeightDtype::Int5),
            _ => None,
        }
    }
    /// Bytes one linear layer takes in `PRED` (spec §5.1), `None` on overflow.
    pub fn layer_bytes(self, inputs: u64, outputs: u64) -> Option<u64> {
        let weights = inputs.checked_mul(outputs)?;
        match self {
            WeightDtype::F32 => weights.checked_add(outputs)?.checked_mul(4),
            WeightDtype::F16 | WeightDtype::Bf16 => weights.checked_add(outputs)?.checked_mul(2),
            // scales (f32) + codes bit-packed + biases (f32)
            WeightDtype::Int8 | WeightDtype::Int6 | WeightDtype::Int5 | WeightDtype::Int4 => {
                let bits = u64::from(self.code_bits()?);
                weights
                    .checked_mul(bits)?
                    .div_ceil(8)
                    .checked_add(outputs.checked_mul(8)?)
            }
        }
    }
    /// Bits per stored code of the integer dtypes (`None` for the float ones).
    pub fn code_bits(self) -> Option<u32> {
        match self {
            WeightDtype::Int8 => Some(8),
            WeightDtype::Int6 => Some(6),
            WeightDtype::Int5 => Some(5),
            WeightDtype::Int4 => Some(4),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Int8 => "int8",
            WeightDtype::Int4 => "int4",
            WeightDtype::Int6 => "int6",
            WeightDtype::Int5 => "int5",
        }
    }
    /// Largest code magnitude of the integer dtypes (`None` for the float ones).
    /// `2^(bits-1) - 1`: the codes are symmetric, the most negative one is never written.
    pub fn max_code(self) -> Option<f32> {
        self.code_bits().map(|b| ((1u32 << (b - 1)) - 1) as f32)
    }
    /// The value `v` takes once stored (round to nearest, ties to even). Int8 is not a
    /// per-value rounding: see [`quantize_codes`]; its biases are f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            WeightDtype::F32
            | WeightDtype::Int8
            | WeightDtype::Int6
            | WeightDtype::Int5
            | WeightDtype::Int4 => v,
            WeightDtype::F16 => half::f16::from_f32(v).to_f32(),
            WeightDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// Quantises a `[inputs][outputs]` weight matrix with one scale per output unit (column):
/// `scale_j = max_k |W[k][j]| / max`, `q = round_ties_even(W / scale_j)` in `-max..=max` (127 for
/// int8, 7 for int4). The stored value is `q as f32 * scale_j` (one f32 product, spec §5.1).
pub fn quantize_codes(weight: &[f32], outputs: usize, max: f32) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0.0f32; outputs];
    for row in weight.chunks_exact(outputs) {
        for (s, &w) in scales.iter_mut().zip(row) {
            *s = s.max(w.abs());
        }
    }
    for s in &mut scales {
        *s /= max;
    }
    let q = int_codes(weight, &scales, max);
    (q, scales)
}

/// Smallest positive normal binary16 (`2^-14`): a scale below it would lose precision as f16.
pub const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// The per-output scales and biases rounded to binary16 (to nearest), when every scale is zero
/// or a normal binary16 after rounding (its relative error then at most `2^-11`, against the
/// `1/62` of a 6-bit code) and every bias fits binary16's range; `None` otherwise.
pub fn side_values_f16(scales: &[f32], bias: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    let round = |v: f32| half::f16::from_f32(v).to_f32();
    let scales: Vec<f32> = scales.iter().map(|&s| round(s)).collect();
    let bias: Vec<f32> = bias.iter().map(|&b| round(b)).collect();
    let scales_ok = scales
        .iter()
        .all(|&s| s == 0.0 || (s.is_finite() && s >= F16_MIN_NORMAL));
    (scales_ok && bias.iter().all(|b| b.is_finite())).then_some((scales, bias))
}

/// `round_ties_even(W / scale_j)` clamped to `-max..=max` (0 where the scale is 0).
pub fn int_codes(weight: &[f32], scales: &[f32], max: f32) -> Vec<i8> {
    weight
        .chunks_exact(scales.len())
        .flat_map(|row| {
            row.iter().zip(scales).map(move |(&w, &s)| {
                if s == 0.0 {
                    0
                } else {
                    (w / s).round_ties_even().clamp(-max, max) as i8
                }
            })
        })
        .collect()
}

/// `q * scale` for every weight of a `[inputs][outputs]` int8 or int4 matrix (the decoder's weights).
pub fn dequantize_codes(q: &[i8], scales: &[f32]) -> Vec<f32> {
    q.chunks_exact(scales.len())
        .flat_map(|row| row.iter().zip(scales).map(|(&q, &s)| f32::from(q) * s))
        .collect()
}

/// Linear layers of the reference predictor (NeRN's: four hidden layers).
pub const REFERENCE_LAYERS: usize = 5;

/// Number of coordinates encoded per kernel: layer, filter position, channel position.
pub const COORDS: usize = 3;

impl PredictorConfig {
    /// The reference architecture: `E -> h -> h -> h -> h -> K*K` ([`REFERENCE_LAYERS`] linear
    /// layers).
    pub fn reference(hidden: u32, kernel_size: u32, pe_levels: u32, pe_base: f64) -> Self {
        Self::mlp(hidden, REFERENCE_LAYERS, kernel_size, pe_levels, pe_base)
    }

    /// `layers` linear layers (at least 2): `E -> h -> ... -> h -> K*K`.
    pub fn mlp(hidden: u32, layers: usize, kernel_size: u32, pe_levels: u32, pe_base: f64) -> Self {
        let e = 2 * COORDS as u32 * pe_levels;
        let mut widths = vec![e];
        widths.extend(std::iter::repeat_n(hidden, layers.max(2) - 1));
        widths.push(kernel_size * kernel_size);
        PredictorConfig {
            pe_levels,
            pe_base,
            kernel_size,
            widths,
            weight_dtype: WeightDtype::F32,
            embedding: None,
        }
    }

    /// This configuration with learned embedding tables of `width` values per row (`width`
    /// 0: none); the first layer's input widens by `2 width`.
    pub fn with_embedding(mut self, width: u32, rows: [u32; 2]) -> Self {
        self.widths[0] = 2 * COORDS as u32 * self.pe_levels;
        self.embedding = None;
        if width > 0 {
            self.widths[0] += TABLES as u32 * width;
            self.embedding = Some(Embedding { width, rows });
        }
        self
    }

    /// Embedding width (0 without tables).
    pub fn embedding_width(&self) -> usize {
        self.embedding.map_or(0, |e| e.width as usize)
    }

    /// `(inputs, outputs)` of every stored matrix in `PRED` order: the MLP's layers, then the
    /// filter and channel tables (each a linear layer on a one-hot row index, spec §6.1).
    pub fn stored_shapes(&self) -> Vec<(usize, usize)> {
        let mut shapes: Vec<(usize, usize)> = self
            .widths
            .windows(2)
            .map(|w| (w[0] as usize, w[1] as usize))
            .collect();
        if let Some(e) = self.embedding {
            shapes.extend(e.rows.map(|r| (r as usize, e.width as usize)));
        }
        shapes
    }

    /// Width of the hidden layers (all equal in the shapes the encoder builds).
    pub fn hidden(&self) -> u32 {
        self.widths.get(1).copied().unwrap_or(0)
    }

    /// Number of linear layers.
    pub fn depth(&self) -> usize {
        self.widths.len().saturating_sub(1)
    }

    pub fn input_width(&self) -> usize {
        self.widths.first().copied().unwrap_or(0) as usize
    }

    /// Per-coordinate encoding width `2 L`.
    pub fn coord_width(&self) -> usize {
        2 * self.pe_levels as usize
    }

    pub fn output_width(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) as usize
    }

    /// Largest hidden width (buffer sizing).
    pub fn max_width(&self) -> usize {
        self.widths.iter().copied().max().unwrap_or(0) as usize
    }

    /// Weights plus biases of all layers and tables.
    pub fn parameter_count(&self) -> u64 {
        self.stored_shapes()
            .iter()
            .map(|&(i, o)| (i as u64) * (o as u64) + o as u64)
            .sum()
    }

    /// The encodings of the coordinate values `0..values`, row after row (`values x 2 L`).
    pub fn pe_table(&self, values: usize) -> Vec<f32> {
        let cw = self.coord_width();
        let freqs = self.frequencies();
        let mut pe = vec![0f32; values * cw];
        for (v, row) in pe.chunks_exact_mut(cw).enumerate() {
            encode_coordinate(v as u32, &freqs, row);
        }
        pe
    }

    /// Frequencies `pi * b^l`, computed with the pure-Rust `libm` so every platform agrees.
    pub fn frequencies(&self) -> Vec<f64> {
        (0..self.pe_levels)
            .map(|l| std::f64::consts::PI * libm::pow(self.pe_base, f64::from(l)))
            .collect()
    }
}

/// Encodes one integer coordinate into `out` (`2 L` values, `[level][sin, cos]`).
///
/// Normative: `theta = freq[l] * n` in f64, then `sin`/`cos` from `libm` (musl's algorithms),
/// rounded to f32.
pub fn encode_coordinate(n: u32, frequencies: &[f64], out: &mut [f32]) {
    for (pair, &f) in out.chunks_exact_mut(2).zip(frequencies) {
        let theta = f * f64::from(n);
        pair[0] = libm::sin(theta) as f32;
        pair[1] = libm::cos(theta) as f32;
    }
}

/// One linear layer, weight stored `[in][out]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearWeights {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// Int8 and int4 storage only: the per-output scales, with `weight == q * scales[j]` exactly.
    /// Empty for the other dtypes.
    pub scales: Vec<f32>,
}

/// A predictor: configuration plus the weights of every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictor {
    pub config: PredictorConfig,
    pub layers: Vec<LinearWeights>,
    /// The filter and channel embedding tables (`[rows][width]`, bias `[width]`), empty
    /// without [`PredictorConfig::embedding`].
    pub embeddings: Vec<LinearWeights>,
}

impl Predictor {
    /// A predictor of `cfg` at PyTorch's default `Linear` initialisation, U(-1/sqrt(in),
    /// 1/sqrt(in)) for weights and biases, drawn from `rng` layer by layer (weights, then biases):
    /// phase 1's starting point.
    pub fn init(cfg: &PredictorConfig, rng: &mut crate::rng::SplitMix64) -> Self {
        let layers = cfg
            .widths
            .windows(2)
            .map(|dims| {
                let (inputs, outputs) = (dims[0] as usize, dims[1] as usize);
                let bound = 1.0 / (inputs as f64).sqrt();
                let mut draw = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                        .collect()
                };
                let weight = draw(inputs * outputs);
                let bias = draw(outputs);
                LinearWeights {
                    inputs,
                    outputs,
                    weight,
                    bias,
                    scales: Vec::new(),
                }
            })
            .collect();
        // Embedding rows U(-1, 1) (the encoding's range), biases zero.
        let embeddings = cfg
            .stored_shapes()
            .into_iter()
            .skip(cfg.depth())
            .map(|(rows, width)| LinearWeights {
                inputs: rows,
                outputs: width,
                weight: (0..rows * width)
                    .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                    .collect(),
                bias: vec![0.0; width],
                scales: Vec::new(),
            })
            .collect();
        Predictor {
            config: cfg.clone(),
            layers,
            embeddings,
        }
    }

    /// Every stored matrix in `PRED` order: the layers, then the embedding tables.
    pub fn stored(&self) -> impl Iterator<Item = &LinearWeights> {
        self.layers.iter().chain(&self.embeddings)
    }

    /// The embedding row `row` of table `t` (0 filter, 1 channel) as the decoder uses it: the
    /// table's linear layer on a one-hot input, `W[row][j] + b[j]` in binary32 (spec §6.1).
    pub fn embedding_row(&self, t: usize, row: usize) -> Vec<f32> {
        let e = &self.embeddings[t];
        e.weight[row * e.outputs..(row + 1) * e.outputs]
            .iter()
            .zip(&e.bias)
            .map(|(&w, &b)| b + w)
            .collect()
    }

    /// Rounds every weight to the storage dtype, so that what is measured is what is stored.
    /// Fails when a value does not fit (f16 overflows beyond 65504).
    pub fn store_as(&mut self, dtype: WeightDtype) -> crate::Result<()> {
        for l in self.layers.iter_mut().chain(self.embeddings.iter_mut()) {
            if !l.weight.iter().chain(&l.bias).all(|v| v.is_finite()) {
                return Err(crate::Error::NonFinite {
                    tensor: "predictor".into(),
                });
            }
            let Some(max) = dtype.max_code() else {
                l.scales.clear();
                for v in l.weight.iter_mut().chain(l.bias.iter_mut()) {
                    let r = dtype.round(*v);
                    if !r.is_finite() {
                        return Err(crate::Error::InvalidArgument(format!(
                            "predictor weight {v} does not fit {}",
                            dtype.name()
                        )));
                    }
                    *v = r;
                }
                continue;
            };
            if l.outputs == 0 {
                continue;
            }
            // Already stored at this precision (its scales reproduce the weights exactly): keep
            // the codes, so that storing twice changes nothing.
            let stored = (l.scales.len() == l.outputs)
                .then(|| int_codes(&l.weight, &l.scales, max))
                .filter(|q| dequantize_codes(q, &l.scales) == l.weight);
            let (q, scales) = match stored {
                Some(q) => (q, l.scales.clone()),
                None => quantize_codes(&l.weight, l.outputs, max),
            };
            // Scales and biases rounded to binary16 values where that keeps the scales'
            // precision: stored as f32 (spec §5.1) their 13 low mantissa bits are then zero,
            // and zstd's `PRED` takes them in about 2 bytes instead of 4.
            let (scales, bias) =
                side_values_f16(&scales, &l.bias).unwrap_or_else(|| (scales, l.bias.clone()));
            l.weight = dequantize_codes(&q, &scales);
            l.scales = scales;
            l.bias = bias;
        }
        self.config.weight_dtype = dtype;
        Ok(())
    }

    /// Runs the predictor on one coordinate the plain way, in f64. Not the normative arithmetic:
    /// the independent reference a conforming f32 decoder is compared against (spec §6.4).
    /// `rows` are the kernel's embedding rows (filter, channel), ignored without tables.
    pub fn forward_f64(&self, coord: [u32; COORDS], rows: [u32; TABLES]) -> Vec<f64> {
        let freqs = self.config.frequencies();
        let mut x = Vec::with_capacity(self.config.input_width());
        for n in coord {
            for &f in &freqs {
                let theta = f * f64::from(n);
                x.push(libm::sin(theta) as f32 as f64);
                x.push(libm::cos(theta) as f32 as f64);
            }
        }
        for (t, e) in self.embeddings.iter().enumerate() {
            let r = rows[t] as usize * e.outputs;
            let w = &e.weight[r..r + e.outputs];
            x.extend(
                w.iter()
                    .zip(&e.bias)
                    .map(|(&w, &b)| f64::from(w) + f64::from(b)),
            );
        }
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let mut y: Vec<f64> = layer.bias.iter().map(|&b| f64::from(b)).collect();
            for (k, &xk) in x.iter().enumerate() {
                let row = &layer.weight[k * layer.outputs..(k + 1) * layer.outputs];
                for (yj, &w) in y.iter_mut().zip(row) {
                    *yj += xk * f64::from(w);
                }
            }
            if i != last {
                for v in &mut y {
                    *v = v.max(0.0);
                }
            }
            x = y;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parameter_counts_match_method() {
        // method.md: 3h^2 + 253h + 9 for E = 240, K = 3.
        for (h, want) in [(140, 94_229), (180, 142_749), (320, 388_169)] {
            assert_eq!(
                PredictorConfig::reference(h, 3, 40, 0.76).parameter_count(),
                want
            );
        }
    }

    #[test]
    fn depth_sets_the_hidden_layers_and_the_parameter_count() {
        assert_eq!(
            PredictorConfig::mlp(180, REFERENCE_LAYERS, 3, 40, 0.76),
            PredictorConfig::reference(180, 3, 40, 0.76)
        );
        // E = 120, h = 100, K = 3: (120 + 1) h + (L - 2) (h + 1) h + (h + 1) 9.
        for (layers, hidden_layers) in [(2, 1), (3, 2), (7, 6)] {
            let cfg = PredictorConfig::mlp(100, layers, 3, 20, 0.76);
            assert_eq!(cfg.depth(), layers);
            assert_eq!(cfg.widths.len(), hidden_layers + 2);
            assert_eq!(cfg.hidden(), 100);
            let want = 121 * 100 + (layers as u64 - 2) * 101 * 100 + 101 * 9;
            assert_eq!(cfg.parameter_count(), want);
        }
    }

    #[test]
    fn encoding_layout_is_level_major_sin_cos() {
        let cfg = PredictorConfig::reference(8, 3, 4, 0.5);
        let freqs = cfg.frequencies();
        let mut out = vec![0.0; 8];
        encode_coordinate(3, &freqs, &mut out);
        assert_eq!(out[0], (std::f64::consts::PI * 3.0).sin() as f32);
        assert!((out[3] - (std::f64::consts::PI * 0.5 * 3.0).cos() as f32).abs() < 1e-6);
        assert!((out[6] - (std::f64::consts::PI * 0.125 * 3.0).sin() as f32).abs() < 1e-6);
    }

    #[test]
    fn int8_quantisation_is_within_half_a_step_and_idempotent() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let (inputs, outputs) = (37, 5);
        let mut weight: Vec<f32> = (0..inputs * outputs)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
            .collect();
        // An all-zero output unit gets scale 0 and codes 0.
        for row in weight.chunks_exact_mut(outputs) {
            row[2] = 0.0;
        }
        let (q, scales) = quantize_codes(&weight, outputs, 127.0);
        assert_eq!(scales[2], 0.0);
        assert!(q.iter().all(|&c| c != -128));
        let deq = dequantize_codes(&q, &scales);
        for (k, (w, d)) in weight.iter().zip(&deq).enumerate() {
            assert!((w - d).abs() <= scales[k % outputs] * 0.5 + 1e-7, "{w} {d}");
        }
        // The largest weight of each unit maps to +-127.
        for j in [0, 1, 3, 4] {
            assert!(q.iter().skip(j).step_by(outputs).any(|c| c.abs() == 127));
        }
        let mut p = Predictor {
            config: PredictorConfig::reference(outputs as u32, 1, 1, 0.5),
            layers: vec![LinearWeights {
                inputs,
                outputs,
                weight,
                bias: vec![0.5; outputs],
                scales: Vec::new(),
            }],
            embeddings: Vec::new(),
        };
        p.store_as(WeightDtype::Int8).unwrap();
        // The same codes, with the scales rounded to binary16 values.
        let l = &p.layers[0];
        assert_eq!(int_codes(&l.weight, &l.scales, 127.0), q);
        assert_eq!(l.weight, dequantize_codes(&q, &l.scales));
        let once = p.clone();
        p.store_as(WeightDtype::Int8).unwrap();
        assert_eq!(p, once, "storing twice changed the weights");
        assert_eq!(
            p.layers[0].bias,
            vec![0.5; outputs],
            "0.5 is a binary16 value"
        );
        p.layers[0].weight[0] = f32::NAN;
        assert!(p.store_as(WeightDtype::Int8).is_err());
    }

    /// Whether every scale and bias of an integer layer is exactly a binary16 value.
    fn side_values_are_f16(l: &LinearWeights) -> bool {
        l.scales
            .iter()
            .chain(&l.bias)
            .all(|&v| half::f16::from_f32(v).to_f32() == v)
    }

    /// Integer storage rounds the per-output scales and the biases to binary16 values and keeps
    /// them so when stored again; a scale under binary16's normal range keeps the layer's
    /// scales and biases f32.
    #[test]
    fn integer_storage_makes_scales_and_biases_binary16() {
        let (inputs, outputs) = (7, 5);
        let mut rng = crate::rng::SplitMix64::new(9);
        let weight: Vec<f32> = (0..inputs * outputs).map(|_| rng.symmetric_f32()).collect();
        let layer = |weight: Vec<f32>| LinearWeights {
            inputs,
            outputs,
            weight,
            bias: (0..outputs).map(|j| 0.1 + j as f32 / 3.0).collect(),
            scales: Vec::new(),
        };
        let mut p = Predictor {
            config: PredictorConfig::reference(outputs as u32, 1, 1, 0.5),
            layers: vec![layer(weight.clone())],
            embeddings: Vec::new(),
        };
        p.store_as(WeightDtype::Int6).unwrap();
        let l = &p.layers[0];
        assert!(side_values_are_f16(l));
        let q = int_codes(&l.weight, &l.scales, 31.0);
        assert_eq!(dequantize_codes(&q, &l.scales), l.weight);
        let (_, f32_scales) = quantize_codes(&weight, outputs, 31.0);
        for (s16, s32) in l.scales.iter().zip(&f32_scales) {
            assert!((s16 - s32).abs() <= s32 * 2f32.powi(-11), "{s16} {s32}");
        }
        let once = p.clone();
        p.store_as(WeightDtype::Int6).unwrap();
        assert_eq!(p, once, "storing twice changed the weights");
        // Weights so small that a scale falls under 2^-14: the layer stays f32.
        let tiny: Vec<f32> = weight.iter().map(|w| w * 1e-4).collect();
        let mut p = Predictor {
            config: PredictorConfig::reference(outputs as u32, 1, 1, 0.5),
            layers: vec![layer(tiny.clone())],
            embeddings: Vec::new(),
        };
        p.store_as(WeightDtype::Int6).unwrap();
        assert_eq!(p.layers[0].scales, quantize_codes(&tiny, outputs, 31.0).1);
        assert_eq!(p.layers[0].bias, layer(tiny).bias);
    }

    /// Int4: codes within -7..=7, the largest weight of each unit at +-7, storing twice is a
    /// no-op, and an int8-stored layer re-stored as int4 is requantised (its codes do not fit).
    #[test]
    fn int4_storage_uses_seven_levels_per_sign() {
        let (inputs, outputs) = (9, 4);
        let mut rng = crate::rng::SplitMix64::new(5);
        let weight: Vec<f32> = (0..inputs * outputs).map(|_| rng.symmetric_f32()).collect();
        let mut p = Predictor {
            config: PredictorConfig::reference(outputs as u32, 1, 1, 0.5),
            layers: vec![LinearWeights {
                inputs,
                outputs,
                weight: weight.clone(),
                bias: vec![0.25; outputs],
                scales: Vec::new(),
            }],
            embeddings: Vec::new(),
        };
        p.store_as(WeightDtype::Int8).unwrap();
        p.store_as(WeightDtype::Int4).unwrap();
        let l = &p.layers[0];
        let q = int_codes(&l.weight, &l.scales, 7.0);
        assert!(q.iter().all(|c| c.abs() <= 7));
        for j in 0..outputs {
            assert!(q.iter().skip(j).step_by(outputs).any(|c| c.abs() == 7));
        }
        assert_eq!(dequantize_codes(&q, &l.scales), l.weight);
        // The int4 grid is coarser than int8's: the weights moved.
        assert_ne!(l.weight, weight);
        let once = p.clone();
        p.store_as(WeightDtype::Int4).unwrap();
        assert_eq!(p, once, "storing twice changed the weights");
        assert_eq!(p.config.weight_dtype, WeightDtype::Int4);
        assert_eq!(WeightDtype::Int4.layer_bytes(9, 4), Some(18 + 32));
        assert_eq!(WeightDtype::from_code(4), Some(WeightDtype::Int4));
    }

    /// The bit-packed dtypes: their code ranges, byte counts and codes.
    #[test]
    fn packed_dtypes_sizes_and_levels() {
        let cases = [
            (WeightDtype::Int8, 3, 127.0, 36),
            (WeightDtype::Int6, 5, 31.0, 27),
            (WeightDtype::Int5, 6, 15.0, 23),
            (WeightDtype::Int4, 4, 7.0, 18),
        ];
        for (d, code, max, weight_bytes) in cases {
            assert_eq!(d.code(), code);
            assert_eq!(WeightDtype::from_code(code), Some(d));
            assert_eq!(d.max_code(), Some(max));
            // 9 x 4 weights, ceil(36 bits / 8) bytes, plus scales and biases.
            assert_eq!(d.layer_bytes(9, 4), Some(weight_bytes + 32), "{d:?}");
        }
        assert_eq!(WeightDtype::from_code(7), None);
    }
}

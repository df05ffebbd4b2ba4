//! Size budgets (`--target-size`): what a predictor shape costs in the file, and the candidate
//! shapes that fill a budget. Which candidate wins is measured by the pipeline, not predicted.

use std::collections::HashMap;

use super::options::{EncodeOptions, embedding_for};
use super::source::Source;
use crate::error::{Error, Result};
use crate::format::{CodedTensor, ContainerParts, LayerEntry, predictor_bytes, write_container};
use crate::permute::Permutation;
use crate::predictor::{Embedding, LinearWeights, Predictor, PredictorConfig, WeightDtype};

/// Bytes kept free for `META` (the provenance; about 1.5 KB compressed on the fixtures). Should
/// the provenance not fit, its histories are dropped first (see `assemble`).
pub const META_RESERVE: u64 = 2048;

/// Widest predictor a budget may choose (training time grows with its square).
pub const MAX_HIDDEN: u32 = 1024;
/// Narrowest predictor worth training.
pub const MIN_HIDDEN: u32 = 8;

/// Positional-encoding levels a budget tries when `--pe-levels` is not given: the first layer
/// holds `6 L x hidden` weights, so fewer levels buy a wider predictor.
pub const CANDIDATE_LEVELS: [u32; 3] = [10, 20, 30];

/// One predictor shape and storage that fits a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub config: PredictorConfig,
    pub dtype: WeightDtype,
    /// Upper bound of the file's size with this predictor (`PRED` raw, `META` reserved).
    pub bound: u64,
}

/// The everything-but-the-predictor's-values of a file: sizes candidates exactly.
pub struct Sizer<'a> {
    source: &'a Source<'a>,
    layers: &'a [LayerEntry],
    permutations: &'a [Permutation],
    /// `DATA` stays raw in the file (`--raw-passthrough`): no saving to count.
    raw_data: bool,
    /// The coded convs (`--code`) as they start: sized with the file. Training moves their
    /// codes, so after it [`Self::actual`] takes the trained ones.
    coded: Vec<CodedTensor>,
    /// [`Self::data_saving`], computed once: compressing a large passthrough at zstd-19 for every
    /// step of a width search would cost minutes.
    data_saving: std::cell::OnceCell<u64>,
}

impl<'a> Sizer<'a> {
    pub fn new(
        source: &'a Source<'a>,
        layers: &'a [LayerEntry],
        permutations: &'a [Permutation],
        raw_data: bool,
        coded: Vec<CodedTensor>,
    ) -> Self {
        Sizer {
            source,
            layers,
            permutations,
            raw_data,
            coded,
            data_saving: std::cell::OnceCell::new(),
        }
    }

    /// The file's size with a predictor of `cfg` stored as `dtype`: exact for `PRED` and `DATA`
    /// stored raw (compression only ever makes them smaller), plus [`META_RESERVE`].
    pub fn bound(&self, cfg: &PredictorConfig, dtype: WeightDtype) -> Result<u64> {
        let p = blank(cfg, dtype)?;
        Ok(self.write(&p, (true, true), None)? + META_RESERVE)
    }

    /// The file's size with this trained predictor and passthrough (the source's, or the
    /// tuned tensors' bytes from [`Source::tuned_bytes`]) as the writer stores them, plus
    /// [`META_RESERVE`].
    pub fn actual(
        &self,
        p: &Predictor,
        tuned: Option<&HashMap<String, Vec<u8>>>,
        coded: &[CodedTensor],
    ) -> Result<u64> {
        Ok(self.write_with(p, (false, self.raw_data), tuned, coded)? + META_RESERVE)
    }

    /// [`Self::bound`] with the coded convs `coded` in place of those this sizer started with:
    /// what the budget's choice of a predictor then checks, so a file sized by it leaves room
    /// for the predictor of `cfg`.
    pub fn bound_with_coded(
        &self,
        cfg: &PredictorConfig,
        dtype: WeightDtype,
        coded: &[CodedTensor],
    ) -> Result<u64> {
        let p = blank(cfg, dtype)?;
        Ok(self.write_with(&p, (true, true), None, coded)? + META_RESERVE)
    }

    /// The container's length, `PRED` and `DATA` stored raw as `(raw_predictor, raw_data)` say.
    fn write(
        &self,
        p: &Predictor,
        raw: (bool, bool),
        tuned: Option<&HashMap<String, Vec<u8>>>,
    ) -> Result<u64> {
        self.write_with(p, raw, tuned, &self.coded)
    }

    fn write_with(
        &self,
        p: &Predictor,
        (raw_predictor, raw_data): (bool, bool),
        tuned: Option<&HashMap<String, Vec<u8>>>,
        coded: &[CodedTensor],
    ) -> Result<u64> {
        let passthrough = match tuned {
            Some(t) => self.source.passthrough_with(t).collect(),
            None => self.source.passthrough().collect(),
        };
        let bytes = write_container(&ContainerParts {
            predictor: p,
            layers: self.layers,
            permutations: self.permutations,
            passthrough,
            coded,
            source_metadata: self.source.checkpoint.metadata.clone(),
            metadata: None,
            raw_predictor,
            raw_data,
        })?;
        Ok(bytes.len() as u64)
    }

    /// Bytes the writer saves by compressing the source's `DATA` (format 1.6). `DATA` is the
    /// last section, so the saving is the same for every predictor. Tuned values compress
    /// differently, which [`Self::actual`] measures after training.
    fn data_saving(&self, cfg: &PredictorConfig, dtype: WeightDtype) -> Result<u64> {
        if self.raw_data {
            return Ok(0);
        }
        if let Some(&s) = self.data_saving.get() {
            return Ok(s);
        }
        let p = blank(cfg, dtype)?;
        let raw = self.write(&p, (true, true), None)?;
        let saving = raw.saturating_sub(self.write(&p, (true, false), None)?);
        Ok(*self.data_saving.get_or_init(|| saving))
    }

    /// The file's size when the predictor's `PRED` takes `ratio` of its raw (packed) bytes, as a
    /// trained predictor of this kind was measured to (code layout 1 under zstd), and `DATA` is
    /// compressed as the source's compresses.
    pub fn estimate(&self, cfg: &PredictorConfig, dtype: WeightDtype, ratio: f64) -> Result<u64> {
        let bound = self.bound(cfg, dtype)?;
        let (raw, _) = predictor_bytes(&blank(cfg, dtype)?)?;
        Ok(
            bound - raw + (ratio.clamp(0.0, 1.0) * raw as f64).ceil() as u64
                - self.data_saving(cfg, dtype)?,
        )
    }

    /// The widest hidden width above `chosen`'s whose [`Self::estimate`] at `ratio` fits
    /// `budget` (`None` when none is wider). The file is checked after training: the estimate
    /// is not a bound.
    pub fn widen(&self, budget: u64, chosen: &Candidate, ratio: f64) -> Result<Option<Candidate>> {
        let c = &chosen.config;
        let base = Cfg {
            kernel_size: c.kernel_size,
            layers: c.depth(),
            pe_base: c.pe_base,
            embedding: c.embedding,
        };
        let (h0, levels) = (c.hidden(), c.pe_levels);
        let fits = |h: u32| -> Result<bool> {
            Ok(self.estimate(&base.config(h, levels), chosen.dtype, ratio)? <= budget)
        };
        if !fits(h0 + 1)? {
            return Ok(None);
        }
        let (mut lo, mut hi) = (h0 + 1, MAX_HIDDEN + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let config = base.config(lo, levels);
        Ok(Some(Candidate {
            bound: self.estimate(&config, chosen.dtype, ratio)?,
            config,
            dtype: chosen.dtype,
        }))
    }

    /// After a widened predictor of hidden `over` came out over `budget` with its codes at
    /// `measured` of their packed bytes: the shape to train instead, the widest under `over`
    /// whose estimate at that measured share fits, else `sure` (the shape that fits by its raw
    /// bound).
    pub fn retry(
        &self,
        budget: u64,
        sure: &Candidate,
        over: u32,
        measured: f64,
    ) -> Result<PredictorConfig> {
        Ok(self
            .widen(budget, sure, measured)?
            .filter(|w| w.config.hidden() < over)
            .map_or_else(|| sure.config.clone(), |w| w.config))
    }

    /// The widest hidden width in `MIN_HIDDEN..=MAX_HIDDEN` whose file fits `budget` (sizes grow
    /// with the width, so a binary search).
    fn widest(
        &self,
        budget: u64,
        levels: u32,
        dtype: WeightDtype,
        base: &Cfg,
    ) -> Result<Option<u32>> {
        let fits =
            |h: u32| -> Result<bool> { Ok(self.bound(&base.config(h, levels), dtype)? <= budget) };
        if !fits(MIN_HIDDEN)? {
            return Ok(None);
        }
        let (mut lo, mut hi) = (MIN_HIDDEN, MAX_HIDDEN + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Some(lo))
    }
}

/// A predictor of `cfg` with zero weights stored as `dtype`: what sizes are computed on.
fn blank(cfg: &PredictorConfig, dtype: WeightDtype) -> Result<Predictor> {
    let mut layers: Vec<LinearWeights> = cfg
        .stored_shapes()
        .into_iter()
        .map(|(i, o)| LinearWeights {
            inputs: i,
            outputs: o,
            weight: vec![0.0; i * o],
            bias: vec![0.0; o],
            scales: Vec::new(),
        })
        .collect();
    let embeddings = layers.split_off(cfg.depth());
    let mut p = Predictor {
        config: cfg.clone(),
        layers,
        embeddings,
    };
    p.store_as(dtype)?;
    Ok(p)
}

/// What the candidates share (kernel size, depth, PE base).
pub struct Cfg {
    pub kernel_size: u32,
    pub layers: usize,
    pub pe_base: f64,
    pub embedding: Option<Embedding>,
}

impl Cfg {
    fn config(&self, hidden: u32, levels: u32) -> PredictorConfig {
        let cfg = PredictorConfig::mlp(hidden, self.layers, self.kernel_size, levels, self.pe_base);
        match self.embedding {
            Some(e) => cfg.with_embedding(e.width, e.rows),
            None => cfg,
        }
    }
}

/// The candidates for `budget` bytes: for each PE level count (or the pinned one), the widest
/// predictor that fits (or the pinned width, if it fits), stored as `dtype` (the one asked for,
/// else the default: int6 when phase 2 trains on data, int8 otherwise).
/// Int4 is never chosen on its own: rounded to int4 a trained predictor has collapsed to chance
/// in every measurement so far (README). An error names the smallest file possible when nothing
/// fits.
pub fn candidates(
    sizer: &Sizer<'_>,
    opts: &EncodeOptions,
    dtype: WeightDtype,
    kernel_size: u32,
    budget: u64,
) -> Result<Vec<Candidate>> {
    let base = Cfg {
        kernel_size,
        layers: opts.layers,
        pe_base: opts.pe_base,
        embedding: embedding_for(opts.embedding_width, sizer.layers),
    };
    let levels: Vec<u32> = if opts.pinned.pe_levels {
        vec![opts.pe_levels]
    } else {
        CANDIDATE_LEVELS.to_vec()
    };
    let mut out: Vec<Candidate> = Vec::new();
    for &l in &levels {
        let hidden = if let Some(h) = opts.hidden {
            let cfg = base.config(h, l);
            (sizer.bound(&cfg, dtype)? <= budget).then_some(h)
        } else {
            sizer.widest(budget, l, dtype, &base)?
        };
        if let Some(h) = hidden {
            let config = base.config(h, l);
            let bound = sizer.bound(&config, dtype)?;
            if !out.iter().any(|c| c.config == config) {
                out.push(Candidate {
                    config,
                    dtype,
                    bound,
                });
            }
        }
    }
    if out.is_empty() {
        let smallest_h = opts.hidden.unwrap_or(MIN_HIDDEN);
        let smallest = sizer.bound(&base.config(smallest_h, levels[0]), dtype)?;
        return Err(Error::Budget(format!(
            "no predictor fits {budget} bytes: the smallest file with {} (hidden {smallest_h}, \
             PE L={}) takes {smallest} bytes, {} of them the tensors stored verbatim",
            dtype.name(),
            levels[0],
            sizer.passthrough_bytes(),
        )));
    }
    Ok(out)
}

/// The one candidate when coded convs fill the budget (`--code PREFIX=FRACTION@auto`): their bits
/// were chosen with the predictor of the convs left at the shape it was given or defaults to
/// (sized by the predicted weights: small when few are left), so that shape stays. Searching or
/// widening it would spend the codes' bytes on a few kernels and cost a probe run per candidate
/// (measured: ResNet-20's stem alone, 144 weights, was widened to hidden 38, came out over the
/// budget, and phase 2 ran twice).
pub fn coded_candidate(
    sizer: &Sizer<'_>,
    config: &PredictorConfig,
    dtype: WeightDtype,
    budget: u64,
) -> Result<Candidate> {
    let bound = sizer.bound(config, dtype)?;
    if bound > budget {
        return Err(Error::Budget(format!(
            "the file with its coded convs and the predictor of the others (hidden {}, {}) takes \
             {bound} bytes, over the budget of {budget}: fewer bits (--code ...@BITS or @auto) \
             or a smaller --hidden",
            config.widths[1],
            dtype.name()
        )));
    }
    Ok(Candidate {
        config: config.clone(),
        dtype,
        bound,
    })
}

impl Sizer<'_> {
    /// Bytes of the tensors stored verbatim.
    pub fn passthrough_bytes(&self) -> u64 {
        self.source
            .passthrough()
            .map(|t| t.bytes.len() as u64)
            .sum()
    }
}

/// With `--resume`, the predictor's shape is the file's: the storage dtype is the most precise
/// of f16 and int8 (or the pinned one) that fits.
pub fn resumed_dtype(
    sizer: &Sizer<'_>,
    opts: &EncodeOptions,
    cfg: &PredictorConfig,
    budget: u64,
) -> Result<WeightDtype> {
    let dtypes = if opts.pinned.predictor_dtype {
        vec![opts.predictor_dtype]
    } else {
        vec![WeightDtype::F16, WeightDtype::Int8]
    };
    for d in &dtypes {
        if sizer.bound(cfg, *d)? <= budget {
            return Ok(*d);
        }
    }
    let last = *dtypes.last().unwrap_or(&WeightDtype::Int8);
    Err(Error::Budget(format!(
        "the resumed predictor (widths {:?}) takes at least {} bytes as {}, over the budget of {budget}; \
         encode without --resume to choose a smaller one",
        cfg.widths,
        sizer.bound(cfg, last)?,
        last.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permute::PermutationKind;
    use crate::rng::SplitMix64;

    /// A predictor of `cfg` whose weights are peaked like trained ones (Laplace-distributed), so
    /// its int6 codes compress under code layout 1.
    fn peaked(cfg: &PredictorConfig, seed: u64) -> Predictor {
        let mut rng = SplitMix64::new(seed);
        let mut p = blank(cfg, WeightDtype::F32).unwrap();
        for l in &mut p.layers {
            for w in &mut l.weight {
                let u = rng.next_f64() - 0.5;
                *w = (-u.signum() * (1.0 - 2.0 * u.abs()).max(1e-12).ln() * 0.02) as f32;
            }
        }
        p.store_as(WeightDtype::Int6).unwrap();
        p
    }

    #[test]
    fn compressing_codes_widen_a_shape_within_the_budget() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/fmnist-resnet20.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let source = Source::parse(&path, &bytes, PermutationKind::None).unwrap();
        let perms = vec![Permutation::Identity; source.layers.len()];
        let sizer = Sizer::new(&source, &source.layers, &perms, false, Vec::new());
        let base = Cfg {
            kernel_size: 3,
            layers: 5,
            pe_base: 0.76,
            embedding: None,
        };
        let budget = 60_000;
        let h0 = sizer
            .widest(budget, 20, WeightDtype::Int6, &base)
            .unwrap()
            .unwrap();
        let chosen = Candidate {
            config: base.config(h0, 20),
            dtype: WeightDtype::Int6,
            bound: sizer
                .bound(&base.config(h0, 20), WeightDtype::Int6)
                .unwrap(),
        };
        // Incompressible codes: a wider shape fits only by what the shuffled zstd DATA saves
        // (format 1.6; about 2.9 KB of ResNet-20's F32 passthrough), which the estimate counts
        // and the raw bound does not.
        let by_data = sizer.widen(budget, &chosen, 1.0).unwrap().expect("wider");
        let saving = sizer
            .data_saving(&by_data.config, WeightDtype::Int6)
            .unwrap();
        assert!(saving > 2000, "DATA saved {saving} bytes");
        let raw_bound = sizer.bound(&by_data.config, WeightDtype::Int6).unwrap();
        assert_eq!(by_data.bound, raw_bound - saving);
        assert!(by_data.bound <= budget && raw_bound > budget);
        // With `--raw-passthrough` DATA saves nothing: the same incompressible codes do not widen.
        let raw_sizer = Sizer::new(&source, &source.layers, &perms, true, Vec::new());
        assert!(raw_sizer.widen(budget, &chosen, 1.0).unwrap().is_none());
        // Codes that compress: measured on one predictor, a wider shape fits by the estimate,
        // and a predictor of that shape with the same statistics does fit.
        let (raw, stored) = predictor_bytes(&peaked(&chosen.config, 1)).unwrap();
        let ratio = stored as f64 / raw as f64;
        assert!(ratio < 0.95, "synthetic codes did not compress: {ratio}");
        let wide = sizer.widen(budget, &chosen, ratio).unwrap().expect("wider");
        let h1 = wide.config.widths[1];
        assert!(h1 > h0, "{h1} <= {h0}");
        assert!(wide.bound <= budget);
        assert!(
            sizer
                .estimate(&base.config(h1 + 1, 20), WeightDtype::Int6, ratio)
                .unwrap()
                > budget
        );
        let actual = sizer.actual(&peaked(&wide.config, 2), None, &[]).unwrap();
        assert!(actual <= budget, "{actual} > {budget}");
        // The packed bound of the wider shape is over: only the measurement lets it in.
        assert!(sizer.bound(&wide.config, WeightDtype::Int6).unwrap() > budget);

        // A widened run that came out over: the retry is sized by the share its codes took,
        // between the sure fit and the width that was over, and fits by that estimate.
        let measured = (ratio * 1.03).min(1.0);
        let retry = sizer.retry(budget, &chosen, h1, measured).unwrap();
        let hr = retry.hidden();
        assert!(h0 < hr && hr < h1, "{h0} < {hr} < {h1}");
        assert!(sizer.estimate(&retry, WeightDtype::Int6, measured).unwrap() <= budget);
        // Nothing between them fits: the sure fit.
        assert_eq!(
            sizer.retry(budget, &chosen, h0 + 1, measured).unwrap(),
            chosen.config
        );
    }
}

//! The training data of phase 1: every predicted kernel with its coordinates, centred target and
//! crop mask, and the reference's kernel sampler.

use crate::decode::coordinate_extents;
use crate::format::LayerEntry;
use crate::permute::Permutation;
use crate::predictor::COORDS;
use crate::rng::SplitMix64;

/// Every predicted kernel in position order: coordinates, the centred `K x K` target and the
/// crop mask, and the original kernel's L2 norm (for weighted sampling).
pub struct KernelSet {
    pub coords: Vec<[u32; COORDS]>,
    pub targets: Vec<f32>,
    pub masks: Vec<f32>,
    pub norms: Vec<f32>,
    pub extents: [usize; COORDS],
    pub out_width: usize,
    /// Each kernel's row of the filter and of the channel embedding table (spec §5.1).
    pub table_rows: Vec<[u32; 2]>,
    pub table_extents: [usize; 2],
}

impl KernelSet {
    /// `weights` are the targets (the source, or the previous round's decoded weights);
    /// `original` gives the norms for sampling. Both are per layer, `[cout, cin, k, k]`.
    pub fn new(
        layers: &[LayerEntry],
        perms: &[Permutation],
        weights: &[Vec<f32>],
        original: &[Vec<f32>],
        kernel_size: usize,
    ) -> Self {
        let big = kernel_size;
        let kk_big = big * big;
        let total: usize = layers.iter().map(LayerEntry::kernels).sum();
        let mut set = KernelSet {
            coords: Vec::with_capacity(total),
            targets: vec![0.0; total * kk_big],
            masks: vec![0.0; total * kk_big],
            norms: Vec::with_capacity(total),
            extents: coordinate_extents(layers),
            out_width: kk_big,
            table_rows: Vec::with_capacity(total),
            table_extents: [0, 0],
        };
        let mut row = 0;
        for (li, ((l, perm), (w, orig))) in layers
            .iter()
            .zip(perms)
            .zip(weights.iter().zip(original))
            .enumerate()
        {
            let (cin, k) = (l.cin(), l.kernel());
            let off = (big - k) / 2;
            let [gf, gc] = set.table_extents;
            set.table_extents = [gf + l.cout(), gc + cin];
            for (p, o) in perm.originals(l.cout(), cin).enumerate() {
                set.table_rows
                    .push([(gf + p / cin) as u32, (gc + p % cin) as u32]);
                set.coords
                    .push([li as u32, (p / cin) as u32, (p % cin) as u32]);
                let src = &w[o * k * k..(o + 1) * k * k];
                let norm = orig[o * k * k..(o + 1) * k * k]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt();
                set.norms.push(norm);
                for y in 0..k {
                    for x in 0..k {
                        let at = row * kk_big + (y + off) * big + (x + off);
                        set.targets[at] = src[y * k + x];
                        set.masks[at] = 1.0;
                    }
                }
                row += 1;
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.coords.len()
    }
}

/// The reference sampling: with probability 0.8 a uniform subset, otherwise draws with
/// replacement proportional to the original kernel's L2 norm.
pub struct Sampler {
    cumulative: Vec<f64>,
    pool: std::cell::RefCell<Vec<i32>>,
}

impl Sampler {
    pub fn new(norms: &[f32]) -> Self {
        let mut acc = 0.0;
        let cumulative = norms
            .iter()
            .map(|&w| {
                acc += f64::from(w);
                acc
            })
            .collect();
        Sampler {
            cumulative,
            pool: std::cell::RefCell::new((0..norms.len() as i32).collect()),
        }
    }

    /// `size` kernel positions (`size <= norms.len()`).
    pub fn batch(&self, rng: &mut SplitMix64, size: usize) -> Vec<i32> {
        let n = self.cumulative.len();
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        if rng.next_f64() < 0.8 || total <= 0.0 {
            // A persistent pool keeps each uniform batch O(size).
            let mut pool = self.pool.borrow_mut();
            rng.partial_shuffle(&mut pool, size);
            pool[..size].to_vec()
        } else {
            (0..size)
                .map(|_| {
                    let u = rng.next_f64() * total;
                    self.cumulative.partition_point(|&c| c <= u).min(n - 1) as i32
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TensorDtype;
    use crate::permute::PermutationKind;

    fn layer(name: &str, shape: [u32; 4]) -> LayerEntry {
        LayerEntry {
            name: name.into(),
            dtype: TensorDtype::F32,
            permutation: PermutationKind::CrossFilter,
            shape,
        }
    }

    /// A 1x1 layer among 3x3 ones is centred in the 3x3 target with a one-pixel mask, and each
    /// position holds the kernel its table names.
    #[test]
    fn kernels_are_placed_by_their_tables_and_centred() {
        let layers = [layer("a", [1, 2, 3, 3]), layer("b", [2, 1, 1, 1])];
        let w0: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let w1 = vec![-1.0, -2.0];
        let perms = [
            Permutation::CrossFilter {
                kernels: vec![1, 0],
            },
            Permutation::Identity,
        ];
        let weights = [w0.clone(), w1];
        let set = KernelSet::new(&layers, &perms, &weights, &weights, 3);
        assert_eq!(set.len(), 4);
        assert_eq!(set.extents, [2, 2, 2]);
        assert_eq!(set.coords, [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0]]);
        // Position 0 of layer a is original kernel 1 (values 9..18).
        assert_eq!(&set.targets[..9], &w0[9..18]);
        assert_eq!(set.targets[2 * 9 + 4], -1.0);
        assert_eq!(set.masks[2 * 9..3 * 9].iter().sum::<f32>(), 1.0);
        assert_eq!(set.masks[2 * 9 + 4], 1.0);
        let norm1 = w0[9..18].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert_eq!(set.norms[0], norm1);
    }

    #[test]
    fn sampler_batches_are_in_range_and_uniform_batches_distinct() {
        let sampler = Sampler::new(&[0.0, 1.0, 2.0, 3.0, 0.5]);
        let mut rng = SplitMix64::new(9);
        for _ in 0..200 {
            let b = sampler.batch(&mut rng, 3);
            assert_eq!(b.len(), 3);
            assert!(b.iter().all(|&i| (0..5).contains(&i)));
        }
        // All-zero norms: always the uniform subset, so no position repeats within a batch.
        let zero = Sampler::new(&[0.0; 6]);
        for _ in 0..50 {
            let mut b = zero.batch(&mut rng, 6);
            b.sort_unstable();
            assert_eq!(b, [0, 1, 2, 3, 4, 5]);
        }
    }
}

//! Permutation tables: which original kernel sits at each coordinate of a predicted layer.
//!
//! Filters of a CNN have no natural order, so before training the kernels of each conv layer may
//! be re-ordered so that neighbouring coordinates hold similar kernels (NeRN's permutations). The
//! tensors are never moved: a [`Permutation`] records which original kernel sits at each
//! coordinate. This module is what the reader and decoder need; the encoder's search for good
//! tables lives in `encode::search`.

/// How the kernels of a layer are ordered before training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermutationKind {
    None,
    InFilter,
    CrossFilter,
}

/// Coordinate tables of one predicted layer. All tables map a *position* (coordinate) to an
/// *original index*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permutation {
    /// Kernel at coordinate (a, b) is original kernel (a, b).
    Identity,
    /// `filters[a]` is the original filter at filter position a (len cout).
    /// `channels[f * cin + b]` is the original channel at channel position b *of original filter f*
    /// (len cout*cin; row f is a permutation of 0..cin).
    /// Coordinate (a, b) holds original kernel (filters[a], channels[filters[a]*cin + b]).
    InFilter {
        filters: Vec<u32>,
        channels: Vec<u32>,
    },
    /// `kernels[p]` is the original flat kernel index f*cin + c at position p (len cout*cin);
    /// position p has coordinate (p / cin, p % cin).
    CrossFilter { kernels: Vec<u32> },
}

impl Permutation {
    /// Original flat kernel index (f*cin + c) of the kernel at coordinate (a, b).
    ///
    /// Panics if (a, b) lies outside the layer the tables were built for.
    pub fn original_kernel(&self, cin: usize, a: usize, b: usize) -> usize {
        match self {
            Self::Identity => a * cin + b,
            Self::InFilter { filters, channels } => {
                let f = filters[a] as usize;
                f * cin + channels[f * cin + b] as usize
            }
            Self::CrossFilter { kernels } => kernels[a * cin + b] as usize,
        }
    }

    /// Original flat kernel index of every position `0..cout*cin`, in position order (position
    /// p has coordinate `(p / cin, p % cin)`). Panics if the tables are not for this layer.
    pub fn originals(&self, cout: usize, cin: usize) -> impl Iterator<Item = usize> + '_ {
        (0..cout * cin).map(move |p| self.original_kernel(cin, p / cin, p % cin))
    }

    /// Checks the tables are permutations of the right lengths for a [cout, cin] layer.
    pub fn is_valid(&self, cout: usize, cin: usize) -> bool {
        let Some(n) = cout.checked_mul(cin) else {
            return false;
        };
        match self {
            Self::Identity => true,
            Self::InFilter { filters, channels } => {
                is_permutation(filters, cout)
                    && channels.len() == n
                    // chunks_exact(0) would panic; with cin == 0 the table is empty anyway.
                    && (cin == 0 || channels.chunks_exact(cin).all(|row| is_permutation(row, cin)))
            }
            Self::CrossFilter { kernels } => is_permutation(kernels, n),
        }
    }
}

/// Whether `table` holds each of 0..n exactly once.
pub(crate) fn is_permutation(table: &[u32], n: usize) -> bool {
    if table.len() != n {
        return false;
    }
    let mut seen = vec![false; n];
    table.iter().all(|&i| {
        let i = i as usize;
        i < n && !std::mem::replace(&mut seen[i], true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_kernel_per_variant() {
        let cin = 3;
        assert_eq!(Permutation::Identity.original_kernel(cin, 1, 2), 5);
        let p = Permutation::InFilter {
            filters: vec![1, 0],
            channels: vec![0, 1, 2, 2, 0, 1],
        };
        assert!(p.is_valid(2, 3));
        // Position (0, b) is original filter 1 with its channel row [2, 0, 1].
        assert_eq!([0, 1, 2].map(|b| p.original_kernel(cin, 0, b)), [5, 3, 4]);
        assert_eq!([0, 1, 2].map(|b| p.original_kernel(cin, 1, b)), [0, 1, 2]);
        let p = Permutation::CrossFilter {
            kernels: vec![4, 0, 5, 1, 3, 2],
        };
        assert!(p.is_valid(2, 3));
        assert_eq!(p.original_kernel(cin, 1, 0), 1);
        assert_eq!(p.original_kernel(cin, 0, 2), 5);
    }

    #[test]
    fn is_valid_rejects_bad_tables() {
        assert!(
            !Permutation::CrossFilter {
                kernels: vec![0, 1, 1, 2]
            }
            .is_valid(2, 2)
        );
        assert!(
            !Permutation::CrossFilter {
                kernels: vec![0, 1, 2]
            }
            .is_valid(2, 2)
        );
        assert!(
            !Permutation::CrossFilter {
                kernels: vec![0, 1, 2, 4]
            }
            .is_valid(2, 2)
        );
        let bad_row = Permutation::InFilter {
            filters: vec![0, 1],
            channels: vec![0, 1, 0, 0],
        };
        assert!(!bad_row.is_valid(2, 2));
        let bad_filters = Permutation::InFilter {
            filters: vec![1, 1],
            channels: vec![0, 1, 1, 0],
        };
        assert!(!bad_filters.is_valid(2, 2));
        assert!(
            Permutation::InFilter {
                filters: vec![1, 0],
                channels: vec![0, 1, 1, 0]
            }
            .is_valid(2, 2)
        );
    }

    #[test]
    fn originals_lists_positions_in_order() {
        let p = Permutation::InFilter {
            filters: vec![1, 0],
            channels: vec![0, 1, 2, 2, 0, 1],
        };
        assert_eq!(p.originals(2, 3).collect::<Vec<_>>(), [5, 3, 4, 0, 1, 2]);
        assert_eq!(
            Permutation::Identity.originals(2, 2).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }
}

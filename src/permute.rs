//! TEMPORARY STUB: replaced by the real module (helper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermutationKind {
    None,
    InFilter,
    CrossFilter,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permutation {
    Identity,
    InFilter {
        filters: Vec<u32>,
        channels: Vec<u32>,
    },
    CrossFilter {
        kernels: Vec<u32>,
    },
}
impl Permutation {
    pub fn original_kernel(&self, cin: usize, a: usize, b: usize) -> usize {
        match self {
            Permutation::Identity => a * cin + b,
            Permutation::InFilter { filters, channels } => {
                let f = filters[a] as usize;
                f * cin + channels[f * cin + b] as usize
            }
            Permutation::CrossFilter { kernels } => kernels[a * cin + b] as usize,
        }
    }
    pub fn is_valid(&self, _cout: usize, _cin: usize) -> bool {
        true
    }
}
pub fn search(
    _w: &[f32],
    _cout: usize,
    _cin: usize,
    _k: usize,
    _kind: PermutationKind,
) -> Permutation {
    Permutation::Identity
}

//! TEMPORARY STUB: replaced by the real module (helper).
pub struct PackedMatrix {
    k: usize,
    n: usize,
    w: Vec<f32>,
}
impl PackedMatrix {
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        PackedMatrix {
            k,
            n,
            w: w.to_vec(),
        }
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
}
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
    relu: bool,
) {
    for i in 0..m {
        for j in 0..w.n {
            let mut acc = bias[j];
            for kk in 0..w.k {
                acc = a[i * lda + kk].mul_add(w.w[kk * w.n + j], acc);
            }
            c[i * ldc + j] = if relu {
                if acc > 0.0 { acc } else { 0.0 }
            } else {
                acc
            };
        }
    }
}

//! Dense layers for training on the CPU: `y = act(x W + b)` and its gradients as products of the
//! decoder's GEMM ([`crate::decode::gemm::gemm_bias_rows`]), rows split across rayon's pool.
//!
//! burn Flex's matmul runs the `gemm` crate's AVX2 kernels even on AVX-512 machines; there the
//! decoder's kernel is about 2.3x faster on the forward and input-gradient products of the
//! predictor's hidden layers (`cargo bench --bench mlp_gemm`). The weight gradient `x^T dy`
//! reduces over the whole batch: done as one product its right-hand side leaves the cache, so
//! here it is summed over fixed blocks of [`REDUCTION_BLOCK`] batch rows.
//!
//! Every output element is computed in one fixed order whatever the thread count (rows are
//! independent; the reduction's blocks are fixed), so training stays deterministic and the file
//! does not depend on `RAYON_NUM_THREADS`. Layouts are row-major: `x [rows, inputs]`,
//! `w [inputs, outputs]`, `y [rows, outputs]`, as burn stores them.

use rayon::prelude::*;

use crate::decode::gemm::{RECOMMENDED_ROW_BLOCK, gemm_bias_rows};

/// Batch rows per block of the weight-gradient reduction: the block of `dy` (at most a few
/// hundred KB at the predictor's widths) stays in L2 while every output row passes it.
pub const REDUCTION_BLOCK: usize = 256;

/// Batch rows per weight-gradient task, at least: four reduction blocks.
const GRAD_GROUP_ROWS: usize = 4 * REDUCTION_BLOCK;

/// At most this many weight-gradient groups (each holds a partial `inputs x outputs` sum).
const MAX_GRAD_GROUPS: usize = 32;

/// Batch rows per weight-gradient group: a function of the batch alone (never of the thread
/// count), whole reduction blocks, at most [`MAX_GRAD_GROUPS`] groups.
fn grad_group_rows(rows: usize) -> usize {
    rows.div_ceil(MAX_GRAD_GROUPS)
        .next_multiple_of(REDUCTION_BLOCK)
        .max(GRAD_GROUP_ROWS)
}

/// A dense layer's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseShape {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// Gradients of one dense layer.
pub struct DenseGrads {
    /// `dL/dx`, when asked for.
    pub dx: Option<Vec<f32>>,
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// `src` (`rows x cols`, row-major) with its rows `ld = cols` rounded up to 16 floats apart, the
/// layout the GEMM's right-hand side needs.
fn padded(src: &[f32], rows: usize, cols: usize) -> (Vec<f32>, usize) {
    let ld = cols.next_multiple_of(16).max(16);
    let mut out = vec![0f32; rows * ld];
    for (d, s) in out.chunks_exact_mut(ld).zip(src.chunks_exact(cols.max(1))) {
        d[..cols].copy_from_slice(s);
    }
    (out, ld)
}

/// `src` (`rows x cols`) transposed, rows `ld >= rows` apart (padding zero).
fn transposed(src: &[f32], rows: usize, cols: usize, ld: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols * ld];
    transpose_into(src, rows, cols, &mut out, ld);
    out
}

/// `src` (`rows x cols`, row-major) transposed into `dst` (rows `ld >= rows` apart; entries past
/// `rows` untouched), in blocks so both sides stay in cache for a long dimension. A copy, so
/// every path gives the same values; with AVX2 the inner blocks are 8 x 8 register transposes
/// (the scalar loop took 6 % of a phase-2 step in the weight gradients).
pub(crate) fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(ld >= rows, "transpose: ld {ld} < rows {rows}");
    assert!(src.len() >= rows * cols, "transpose: src");
    assert!(dst.len() >= (cols - 1) * ld + rows, "transpose: dst");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; the asserts above bound every access.
        unsafe { avx2::transpose_into(src, rows, cols, dst, ld) };
        return;
    }
    transpose_block(src, (0, rows), (0, cols), cols, dst, ld);
}

/// Rows `r0..r1` and columns `c0..c1` of `src` (`cols` wide) into `dst` (rows `ld` apart).
fn transpose_block(
    src: &[f32],
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    cols: usize,
    dst: &mut [f32],
    ld: usize,
) {
    const B: usize = 32;
    for rb in (r0..r1).step_by(B) {
        for cb in (c0..c1).step_by(B) {
            for r in rb..(rb + B).min(r1) {
                for c in cb..(cb + B).min(c1) {
                    dst[c * ld + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// ReLU in place, as burn's: entries <= 0 (-0.0 included) become 0, NaN stays.
pub(crate) fn relu_in_place(v: &mut [f32]) {
    for a in v {
        *a = if *a <= 0.0 { 0.0 } else { *a };
    }
}

/// The gradient through a ReLU: `dy` where the ReLU's output `y` is positive, else 0.
pub(crate) fn relu_grad_into(dst: &mut [f32], dy: &[f32], y: &[f32]) {
    for ((d, &g), &out) in dst.iter_mut().zip(dy).zip(y) {
        *d = if out > 0.0 { g } else { 0.0 };
    }
}

/// A zeroed buffer of `len` floats, zeroed by rayon's pool: a multi-MB `vec![0; len]` is one
/// memset on the calling thread while the pool waits (training reuses freed heap blocks, which
/// calloc must clear; those serial memsets were about a tenth of a phase-2 step's wall time).
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    const SERIAL_BELOW: usize = 1 << 16;
    if len < SERIAL_BELOW {
        return vec![0f32; len];
    }
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()
        .par_chunks_mut(SERIAL_BELOW)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the capacity is at least `len` and its first `len` elements were written above.
    unsafe { v.set_len(len) };
    v
}

/// The predictor's separable first layer on the host: row `r` of the result is
/// `act(sum_c parts[c][rows[c][r]] + bias)`, where `parts[c]` (`[extent_c, width]`, row-major) is
/// coordinate `c`'s encoding table times its block of W1 and `rows[c][r]` kernel `r`'s row of
/// that table. One pass over the output instead of a gather, an add and a copy per coordinate
/// plus the bias and the ReLU as separate tensor operations (each a pass over `rows x width`
/// floats, most of them on one thread).
pub fn gather_sum(parts: &[&[f32]], rows: &[&[u32]], bias: &[f32], relu: bool) -> Vec<f32> {
    let width = bias.len();
    let n = check_gather(parts, rows, width);
    let mut y = zeroed(n * width);
    if width == 0 {
        return y;
    }
    let block = RECOMMENDED_ROW_BLOCK;
    y.par_chunks_mut(block * width)
        .enumerate()
        .for_each(|(blk, yb)| {
            for (i, yr) in yb.chunks_exact_mut(width).enumerate() {
                let r = blk * block + i;
                for (c, (p, idx)) in parts.iter().zip(rows).enumerate() {
                    let v = idx[r] as usize;
                    let src = &p[v * width..(v + 1) * width];
                    if c == 0 {
                        yr.copy_from_slice(src);
                    } else {
                        yr.iter_mut().zip(src).for_each(|(a, &s)| *a += s);
                    }
                }
                yr.iter_mut().zip(bias).for_each(|(a, &b)| *a += b);
                if relu {
                    relu_in_place(yr);
                }
            }
        });
    y
}

/// Kernel count of a gather, after checking that every index is inside its table.
fn check_gather(parts: &[&[f32]], rows: &[&[u32]], width: usize) -> usize {
    assert_eq!(parts.len(), rows.len(), "gather: one index list per table");
    assert!(!rows.is_empty(), "gather: no tables");
    let n = rows[0].len();
    for (p, idx) in parts.iter().zip(rows) {
        assert_eq!(idx.len(), n, "gather: index lists of different lengths");
        assert_eq!(p.len() % width.max(1), 0, "gather: table width");
        let extent = p.len() / width.max(1);
        assert!(
            idx.iter().all(|&v| (v as usize) < extent),
            "gather: an index past its table ({extent} rows)"
        );
    }
    n
}

/// Gradients of [`gather_sum`]: each table's (`[extent_c, width]`) and the bias's.
pub struct GatherGrads {
    pub dparts: Vec<Vec<f32>>,
    pub dbias: Vec<f32>,
}

/// The backward of [`gather_sum`] from `dy`; with ReLU, `y` is the forward's output (its
/// positive entries pass the gradient). Row `r`'s gradient is added to row `rows[c][r]` of
/// table `c`'s: over fixed groups of rows (a function of the row count alone), whose partial
/// sums are added in order, so the result does not depend on the thread count.
pub fn gather_sum_backward(
    dy: &[f32],
    y: Option<&[f32]>,
    rows: &[&[u32]],
    extents: &[usize],
    width: usize,
) -> GatherGrads {
    assert_eq!(
        rows.len(),
        extents.len(),
        "gather: one index list per table"
    );
    let n = rows.first().map_or(0, |r| r.len());
    assert_eq!(dy.len(), n * width, "gather: dy");
    if let Some(y) = y {
        assert_eq!(y.len(), n * width, "gather: y");
    }
    for (idx, &e) in rows.iter().zip(extents) {
        assert_eq!(idx.len(), n, "gather: index lists of different lengths");
        assert!(
            idx.iter().all(|&v| (v as usize) < e),
            "gather: an index past its table ({e} rows)"
        );
    }
    // One partial per group: every table's rows, then the bias.
    let offsets: Vec<usize> = extents
        .iter()
        .scan(0, |o, &e| {
            let at = *o;
            *o += e * width;
            Some(at)
        })
        .collect();
    let bias_at = extents.iter().sum::<usize>() * width;
    let part_len = bias_at + width;
    let group = grad_group_rows(n);
    let groups = n.div_ceil(group).max(1);
    let mut partials = vec![0f32; groups * part_len];
    if width > 0 {
        partials
            .par_chunks_mut(part_len)
            .enumerate()
            .for_each(|(grp, acc)| {
                let mut g = vec![0f32; width];
                for r in grp * group..((grp + 1) * group).min(n) {
                    let d = &dy[r * width..(r + 1) * width];
                    match y {
                        Some(y) => relu_grad_into(&mut g, d, &y[r * width..(r + 1) * width]),
                        None => g.copy_from_slice(d),
                    }
                    for (idx, &off) in rows.iter().zip(&offsets) {
                        let at = off + idx[r] as usize * width;
                        acc[at..at + width]
                            .iter_mut()
                            .zip(&g)
                            .for_each(|(a, &v)| *a += v);
                    }
                    acc[bias_at..]
                        .iter_mut()
                        .zip(&g)
                        .for_each(|(a, &v)| *a += v);
                }
            });
    }
    let mut total = vec![0f32; part_len];
    for p in partials.chunks_exact(part_len) {
        total.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
    }
    let dbias = total[bias_at..].to_vec();
    let dparts = extents
        .iter()
        .zip(&offsets)
        .map(|(&e, &off)| total[off..off + e * width].to_vec())
        .collect();
    GatherGrads { dparts, dbias }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::transpose_into`] with 8 x 8 blocks in registers; the ragged edges go through
    /// the scalar loop. The caller checks the bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_into(
        src: &[f32],
        rows: usize,
        cols: usize,
        dst: &mut [f32],
        ld: usize,
    ) {
        const B: usize = 32;
        let (rows8, cols8) = (rows / 8 * 8, cols / 8 * 8);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for rb in (0..rows8).step_by(B) {
            for cb in (0..cols8).step_by(B) {
                for r in (rb..(rb + B).min(rows8)).step_by(8) {
                    for c in (cb..(cb + B).min(cols8)).step_by(8) {
                        // SAFETY: r + 7 < rows and c + 7 < cols, so every read is inside
                        // rows * cols and every write inside (cols - 1) * ld + rows.
                        unsafe { block8(s.add(r * cols + c), cols, d.add(c * ld + r), ld) };
                    }
                }
            }
        }
        super::transpose_block(src, (rows8, rows), (0, cols), cols, dst, ld);
        super::transpose_block(src, (0, rows8), (cols8, cols), cols, dst, ld);
    }

    /// One 8 x 8 block: rows of `s` `lds` apart into rows of `d` `ldd` apart.
    #[target_feature(enable = "avx2")]
    unsafe fn block8(s: *const f32, lds: usize, d: *mut f32, ldd: usize) {
        // SAFETY: the caller guarantees 8 rows of 8 floats on both sides.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(s.add(i * lds)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(d.add(j * ldd), v);
            }
        }
    }
}

/// `c = a W + bias` (then ReLU when `relu`) for `m` rows of `a` (`k` wide, rows `lda` apart),
/// with `w` padded as [`padded`] gives; row blocks run in parallel.
#[allow(clippy::too_many_arguments)]
fn product(
    a: &[f32],
    lda: usize,
    (m, k, n): (usize, usize, usize),
    w: &[f32],
    ldw: usize,
    bias: &[f32],
    relu: bool,
) -> Vec<f32> {
    let mut c = zeroed(m * n);
    if n == 0 {
        return c;
    }
    let rows = RECOMMENDED_ROW_BLOCK;
    c.par_chunks_mut(rows * n).enumerate().for_each(|(blk, c)| {
        let mr = c.len() / n;
        let a = &a[blk * rows * lda..];
        gemm_bias_rows(a, lda, mr, w, ldw, (k, n), bias, c, n, relu);
    });
    c
}

/// `y = x w + b`, then ReLU when `relu`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], s: DenseShape, relu: bool) -> Vec<f32> {
    check(x, w, b, s);
    let (wp, ldw) = padded(w, s.inputs, s.outputs);
    product(
        x,
        s.inputs,
        (s.rows, s.inputs, s.outputs),
        &wp,
        ldw,
        b,
        relu,
    )
}

fn check(x: &[f32], w: &[f32], b: &[f32], s: DenseShape) {
    assert_eq!(x.len(), s.rows * s.inputs, "dense: x");
    assert_eq!(w.len(), s.inputs * s.outputs, "dense: w");
    assert_eq!(b.len(), s.outputs, "dense: b");
    assert!(s.inputs > 0, "dense: no inputs");
}

/// Gradients of `y = act(x w + b)` from `dy`. With `relu`, `y` is the forward's output (its
/// positive entries pass the gradient). `dx` only when `need_dx`.
pub fn backward(
    x: &[f32],
    w: &[f32],
    y: Option<&[f32]>,
    dy: &[f32],
    s: DenseShape,
    need_dx: bool,
) -> DenseGrads {
    let DenseShape {
        rows,
        inputs,
        outputs,
    } = s;
    assert_eq!(x.len(), rows * inputs, "dense: x");
    assert_eq!(w.len(), inputs * outputs, "dense: w");
    assert_eq!(dy.len(), rows * outputs, "dense: dy");
    // The gradient at the pre-activation, padded as the weight gradient's right-hand side.
    let ldg = outputs.next_multiple_of(16).max(16);
    let mut g = zeroed(rows * ldg);
    g.par_chunks_mut(RECOMMENDED_ROW_BLOCK * ldg)
        .enumerate()
        .for_each(|(blk, gb)| {
            let r0 = blk * RECOMMENDED_ROW_BLOCK;
            for (i, row) in gb.chunks_exact_mut(ldg).enumerate() {
                let r = r0 + i;
                let src = &dy[r * outputs..(r + 1) * outputs];
                match y {
                    Some(y) => relu_grad_into(row, src, &y[r * outputs..(r + 1) * outputs]),
                    None => row[..outputs].copy_from_slice(src),
                }
            }
        });
    // db: column sums in row order.
    let mut db = vec![0f32; outputs];
    for row in g.chunks_exact(ldg) {
        for (a, &v) in db.iter_mut().zip(row) {
            *a += v;
        }
    }
    // dw = x^T g. The batch is cut into fixed groups of whole reduction blocks; a task sums its
    // group's block products in order (each block's x transposed once, then one product over
    // all inputs against the block of g, both L2-sized), and the groups' sums are added in
    // order. Every value is summed the same way whatever the thread count, and x and g are read
    // from memory once (a task per output-row slice re-read all of g for every slice: 8.5 % of
    // a phase-2 step went to those strided copies alone).
    let mut dw = vec![0f32; inputs * outputs];
    if outputs > 0 && rows > 0 {
        let group_rows = grad_group_rows(rows);
        let mut sums = vec![0f32; rows.div_ceil(group_rows) * inputs * outputs];
        let zeros = vec![0f32; outputs];
        sums.par_chunks_mut(inputs * outputs)
            .enumerate()
            .for_each(|(grp, acc)| {
                // Rows 16 floats more than the block apart: not a power of two (L1 sets).
                let ldx = REDUCTION_BLOCK + 16;
                let mut xt = vec![0f32; inputs * ldx];
                let mut part = vec![0f32; inputs * outputs];
                let end = ((grp + 1) * group_rows).min(rows);
                for r0 in (grp * group_rows..end).step_by(REDUCTION_BLOCK) {
                    let kb = REDUCTION_BLOCK.min(end - r0);
                    transpose_into(
                        &x[r0 * inputs..(r0 + kb) * inputs],
                        kb,
                        inputs,
                        &mut xt,
                        ldx,
                    );
                    gemm_bias_rows(
                        &xt,
                        ldx,
                        inputs,
                        &g[r0 * ldg..(r0 + kb) * ldg],
                        ldg,
                        (kb, outputs),
                        &zeros,
                        &mut part,
                        outputs,
                        false,
                    );
                    for (a, &p) in acc.iter_mut().zip(&part) {
                        *a += p;
                    }
                }
            });
        for sum in sums.chunks_exact(inputs * outputs) {
            for (a, &v) in dw.iter_mut().zip(sum) {
                *a += v;
            }
        }
    }
    // dx = g w^T.
    let dx = need_dx.then(|| {
        let ldw = inputs.next_multiple_of(16).max(16);
        let wt = transposed(w, inputs, outputs, ldw);
        let zeros = vec![0f32; inputs];
        product(&g, ldg, (rows, outputs, inputs), &wt, ldw, &zeros, false)
    });
    DenseGrads { dx, dw, db }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` on a pool of `threads` threads.
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| (r.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// Plain f64 sums: the reference the blocked products must match to f32 rounding.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        dy: &[f32],
        s: DenseShape,
        relu: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (m, k, n) = (s.rows, s.inputs, s.outputs);
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut a = b[j] as f64;
                for t in 0..k {
                    a += x[i * k + t] as f64 * w[t * n + j] as f64;
                }
                y[i * n + j] = if relu { a.max(0.0) } else { a };
            }
        }
        let g: Vec<f64> = (0..m * n)
            .map(|e| {
                if !relu || y[e] > 0.0 {
                    dy[e] as f64
                } else {
                    0.0
                }
            })
            .collect();
        let mut dx = vec![0f64; m * k];
        let mut dw = vec![0f64; k * n];
        let mut db = vec![0f64; n];
        for i in 0..m {
            for j in 0..n {
                db[j] += g[i * n + j];
                for t in 0..k {
                    dx[i * k + t] += g[i * n + j] * w[t * n + j] as f64;
                    dw[t * n + j] += x[i * k + t] as f64 * g[i * n + j];
                }
            }
        }
        (y, dx, dw, db)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} against {w}"
            );
        }
    }

    /// Forward and all three gradients equal plain sums, across block edges (rows past two
    /// reduction blocks and past two weight-gradient groups, widths not multiples of 16, a 9-wide output like the predictor's last).
    #[test]
    fn products_equal_plain_sums() {
        for (rows, inputs, outputs, relu) in [
            (600, 37, 9, false),
            (530, 20, 45, true),
            (2600, 24, 19, true),
        ] {
            let s = DenseShape {
                rows,
                inputs,
                outputs,
            };
            let (x, w, b, dy) = (
                values(rows * inputs, 1),
                values(inputs * outputs, 2),
                values(outputs, 3),
                values(rows * outputs, 4),
            );
            let (y_ref, dx_ref, dw_ref, db_ref) = reference(&x, &w, &b, &dy, s, relu);
            let y = forward(&x, &w, &b, s, relu);
            close(&y, &y_ref, "y");
            let g = backward(&x, &w, relu.then_some(&y[..]), &dy, s, true);
            close(g.dx.as_deref().unwrap(), &dx_ref, "dx");
            close(&g.dw, &dw_ref, "dw");
            close(&g.db, &db_ref, "db");
            assert!(backward(&x, &w, None, &dy, s, false).dx.is_none());
        }
    }

    /// The transpose (register blocks and ragged edges) equals the plain definition, and leaves
    /// the entries past `rows` alone.
    #[test]
    fn transposes_equal_the_definition() {
        for (rows, cols, pad) in [
            (1, 1, 0),
            (8, 8, 0),
            (37, 70, 3),
            (256, 180, 16),
            (9, 33, 1),
        ] {
            let src = values(rows * cols, 9);
            let ld = rows + pad;
            let mut dst = vec![7f32; cols * ld];
            transpose_into(&src, rows, cols, &mut dst, ld);
            for c in 0..cols {
                for r in 0..ld {
                    let want = if r < rows { src[r * cols + c] } else { 7.0 };
                    assert_eq!(dst[c * ld + r], want, "{rows}x{cols} at ({r}, {c})");
                }
            }
        }
    }

    /// The first layer's gather (several tables, repeated and unused rows) and its gradients
    /// equal plain sums, across several row blocks and gradient groups; one thread and three
    /// give the same bits.
    #[test]
    fn gathered_sums_and_their_gradients_equal_plain_sums() {
        let (n, width, extents) = (2300usize, 21usize, [3usize, 7, 40]);
        let parts: Vec<Vec<f32>> = extents
            .iter()
            .enumerate()
            .map(|(c, &e)| values(e * width, 20 + c as u64))
            .collect();
        let mut r = crate::rng::SplitMix64::new(30);
        let rows: Vec<Vec<u32>> = extents
            .iter()
            .map(|&e| (0..n).map(|_| r.below(e as u64 - 1) as u32).collect())
            .collect();
        let (bias, dy) = (values(width, 31), values(n * width, 32));
        let p: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        let idx: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        for relu in [false, true] {
            let run = |threads: usize| {
                on_threads(threads, || {
                    let y = gather_sum(&p, &idx, &bias, relu);
                    let g = gather_sum_backward(&dy, relu.then_some(&y[..]), &idx, &extents, width);
                    (y, g.dparts, g.dbias)
                })
            };
            let (y, dparts, dbias) = run(3);
            assert!(run(1) == (y.clone(), dparts.clone(), dbias.clone()));
            let mut want_dparts: Vec<Vec<f64>> =
                extents.iter().map(|&e| vec![0f64; e * width]).collect();
            let mut want_dbias = vec![0f64; width];
            let mut want_y = vec![0f64; n * width];
            for k in 0..n {
                for j in 0..width {
                    let mut a = bias[j] as f64;
                    for c in 0..extents.len() {
                        a += parts[c][rows[c][k] as usize * width + j] as f64;
                    }
                    let out = if relu { a.max(0.0) } else { a };
                    want_y[k * width + j] = out;
                    let g = if !relu || out > 0.0 {
                        dy[k * width + j] as f64
                    } else {
                        0.0
                    };
                    want_dbias[j] += g;
                    for c in 0..extents.len() {
                        want_dparts[c][rows[c][k] as usize * width + j] += g;
                    }
                }
            }
            close(&y, &want_y, "y");
            close(&dbias, &want_dbias, "dbias");
            for c in 0..extents.len() {
                close(&dparts[c], &want_dparts[c], "dparts");
                // The last row of every table is never gathered: its gradient is exactly zero.
                assert!(
                    dparts[c][(extents[c] - 1) * width..]
                        .iter()
                        .all(|&v| v == 0.0)
                );
            }
        }
    }

    /// An index past its table is refused before anything is read.
    #[test]
    #[should_panic(expected = "past its table")]
    fn a_gather_index_past_its_table_is_refused() {
        let t = [0f32; 6];
        gather_sum(&[&t], &[&[0, 3]], &[0.0, 0.0], false);
    }

    /// One thread and several give bit-identical results: the file must not depend on the pool.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Three weight-gradient groups, the last one short.
        let s = DenseShape {
            rows: 2300,
            inputs: 70,
            outputs: 50,
        };
        let (x, w, b, dy) = (
            values(2300 * 70, 5),
            values(70 * 50, 6),
            values(50, 7),
            values(2300 * 50, 8),
        );
        let run = |threads: usize| {
            on_threads(threads, || {
                let y = forward(&x, &w, &b, s, true);
                let g = backward(&x, &w, Some(&y), &dy, s, true);
                (y, g.dx.unwrap(), g.dw, g.db)
            })
        };
        assert!(run(1) == run(3));
    }
}

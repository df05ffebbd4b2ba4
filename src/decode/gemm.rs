//! Bit-reproducible `C = act(A * W + bias)` for the decoder's weight-regenerating MLP.
//!
//! Every output element is computed as `bias[j]` followed by one fused multiply-add per `kk`
//! in ascending order. Each SIMD lane holds exactly one output element, so the AVX-512, AVX2
//! and scalar paths all round identically and the result does not depend on the CPU or on how
//! the caller splits rows across threads.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Floats per zmm register; also the packing granule.
const LANES: usize = 16;
/// Widest column panel. The last panel is 16 wide when at most 16 columns remain.
const NR: usize = 2 * LANES;

/// One 64-byte line so packed panels start on cache-line boundaries.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; LANES]);

/// `W` of shape `[k, n]`, packed as column panels of [`NR`] (the last possibly 16), each stored
/// `[k][width]` row-major and zero padded past column `n`. Immutable after construction.
#[derive(Clone)]
pub struct PackedMatrix {
    data: Vec<Line>,
    k: usize,
    n: usize,
}

impl PackedMatrix {
    /// Packs a row-major `w` (`w[kk * n + j]`). Panics if `w.len() < k * n`.
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        assert!(
            w.len() >= k * n,
            "w has {} elements, need {}",
            w.len(),
            k * n
        );
        let mut flat = Vec::new();
        let mut col0 = 0;
        while col0 < n {
            let width = panel_width(n, col0);
            for kk in 0..k {
                for l in 0..width {
                    let j = col0 + l;
                    flat.push(if j < n { w[kk * n + j] } else { 0.0 });
                }
            }
            col0 += width;
        }
        let data = flat
            .chunks_exact(LANES)
            .map(|c| Line(c.try_into().expect("chunk of LANES")))
            .collect();
        Self { data, k, n }
    }

    /// Rows of `W` (the inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `W` (output columns).
    pub fn n(&self) -> usize {
        self.n
    }

    fn floats(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` around `[f32; LANES]` (size 64, no padding), so the
        // vector's buffer is exactly `len * LANES` initialized, contiguous f32 values.
        unsafe {
            std::slice::from_raw_parts(self.data.as_ptr().cast::<f32>(), self.data.len() * LANES)
        }
    }

    /// Panel starting at column `col0`: (width, packed `[k][width]` data).
    fn panel(&self, col0: usize) -> (usize, &[f32]) {
        let width = panel_width(self.n, col0);
        // Every panel before this one is NR wide.
        let start = col0 * self.k;
        (width, &self.floats()[start..start + width * self.k])
    }

    /// `W[kk][j]`, read back from the packed layout.
    fn get(&self, kk: usize, j: usize) -> f32 {
        let col0 = j / NR * NR;
        let (width, p) = self.panel(col0);
        p[kk * width + (j - col0)]
    }
}

/// Normative ReLU: NaN and -0.0 map to +0.0.
fn relu0(x: f32) -> f32 {
    if x > 0.0 { x } else { 0.0 }
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix {{ k: {}, n: {} }}", self.k, self.n)
    }
}

/// The right-hand side as the kernels read it: column panels of [`panel_width`] columns, each
/// row of a panel contiguous, rows `stride` floats apart.
#[derive(Clone, Copy)]
enum WRef<'a> {
    Packed(&'a PackedMatrix),
    /// Row-major `[k, n]` with rows `ld >= round_up(n, 16)` floats apart: every panel row can be
    /// read whole (columns past `n` are read but never stored).
    Rows {
        data: &'a [f32],
        ld: usize,
        k: usize,
        n: usize,
    },
}

impl<'a> WRef<'a> {
    fn k(&self) -> usize {
        match self {
            WRef::Packed(w) => w.k,
            WRef::Rows { k, .. } => *k,
        }
    }
    fn n(&self) -> usize {
        match self {
            WRef::Packed(w) => w.n,
            WRef::Rows { n, .. } => *n,
        }
    }
    /// Panel at column `col0`: (width, data from its row 0, row stride).
    fn panel(&self, col0: usize) -> (usize, &'a [f32], usize) {
        match *self {
            WRef::Packed(w) => {
                let (width, p) = w.panel(col0);
                (width, p, width)
            }
            WRef::Rows { data, ld, n, .. } => (panel_width(n, col0), &data[col0..], ld),
        }
    }
}

fn panel_width(n: usize, col0: usize) -> usize {
    if n - col0 <= LANES { LANES } else { NR }
}

/// Rows per internal block, also a good row block for callers splitting work across threads:
/// large enough to amortize streaming `W`, small enough that the A block stays in L2. A
/// multiple of both microkernel heights (12 and 6), so short tail tiles only occur at the end.
pub const RECOMMENDED_ROW_BLOCK: usize = 192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn best_path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if path_supported(Path::Avx512) {
            return Path::Avx512;
        }
        if path_supported(Path::Avx2) {
            return Path::Avx2;
        }
    }
    Path::Scalar
}

fn path_supported(path: Path) -> bool {
    match path {
        Path::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"),
    }
}

/// Computes, for every row `i < m` and column `j < n`:
/// `acc = bias[j]; for kk in 0..k { acc = a[i*lda+kk].mul_add(W[kk][j], acc) }`, then
/// `c[i*ldc+j] = if relu { if acc > 0.0 { acc } else { 0.0 } } else { acc }`.
/// Columns `j >= n` of `c` are left untouched. Uses the fastest path the CPU supports; all
/// paths give bit-identical results.
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
    gemm_path(best_path(), a, lda, m, WRef::Packed(w), bias, c, ldc, relu);
}

/// [`gemm_bias`] with a row-major right-hand side `w` (`[k, n]`, rows `ldw` floats apart, no
/// packing). `ldw` must be at least `n` rounded up to a multiple of 16, and `w` hold
/// `(k - 1) * ldw + ldw` floats: the kernels read whole 16-float groups of every row (values
/// past column `n` are read and discarded). Same arithmetic as [`gemm_bias`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_rows(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &[f32],
    ldw: usize,
    (k, n): (usize, usize),
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
    relu: bool,
) {
    assert!(
        ldw >= n.next_multiple_of(LANES),
        "ldw {ldw} < n {n} rounded up to 16"
    );
    assert!(
        k == 0 || w.len() >= k * ldw,
        "w has {} < k * ldw = {}",
        w.len(),
        k * ldw
    );
    let w = WRef::Rows {
        data: w,
        ld: ldw,
        k,
        n,
    };
    gemm_path(best_path(), a, lda, m, w, bias, c, ldc, relu);
}

/// A product whose operand rows are gathered: for `i < m = a_rows.len()`, `j < n`,
/// `acc = 0; for kk in 0..k { acc = a[a_rows[i] + kk].mul_add(b[b_rows[kk] + j], acc) }`, then
/// `c[i*ldc + j] = acc`, with `k = b_rows.len()`. Rows may overlap: the training convolution
/// reads a padded image's shifted planes in place this way (an implicit im2col). `b` must hold
/// `b_rows[kk] + n` rounded up to 16 floats for every `kk` (the SIMD paths read whole 16-float
/// groups; values past column `n` are read and discarded). One FMA per `kk` in ascending order,
/// so every path gives bit-identical results.
#[allow(clippy::too_many_arguments)]
pub fn gemm_gather(
    a: &[f32],
    a_rows: &[usize],
    b: &[f32],
    b_rows: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_gather_path(best_path(), a, a_rows, b, b_rows, n, c, ldc);
}

#[allow(clippy::too_many_arguments)]
fn gemm_gather_path(
    path: Path,
    a: &[f32],
    a_rows: &[usize],
    b: &[f32],
    b_rows: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let (m, k) = (a_rows.len(), b_rows.len());
    assert!(ldc >= n, "ldc {ldc} < n {n}");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1)
            .checked_mul(ldc)
            .and_then(|l| l.checked_add(n))
            .is_some_and(|l| c.len() >= l),
        "c too short"
    );
    assert!(
        a_rows
            .iter()
            .all(|&r| r.checked_add(k).is_some_and(|e| e <= a.len())),
        "a row out of bounds"
    );
    let width = n.next_multiple_of(LANES);
    assert!(
        b_rows
            .iter()
            .all(|&r| r.checked_add(width).is_some_and(|e| e <= b.len())),
        "b row out of bounds (rows need n rounded up to 16 floats)"
    );
    assert!(path_supported(path), "{path:?} not supported by this CPU");
    match path {
        Path::Scalar => {
            for (i, &ar) in a_rows.iter().enumerate() {
                let out = &mut c[i * ldc..i * ldc + n];
                out.fill(0.0);
                for (kk, &br) in b_rows.iter().enumerate() {
                    let x = a[ar + kk];
                    for (o, &bv) in out.iter_mut().zip(&b[br..br + n]) {
                        *o = x.mul_add(bv, *o);
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA support was checked; the asserts above bound every access.
        Path::Avx2 => unsafe { avx2::gemm_gather(a, a_rows, b, b_rows, n, c, ldc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F+FMA support was checked; the asserts above bound every access.
        Path::Avx512 => unsafe { avx512::gemm_gather(a, a_rows, b, b_rows, n, c, ldc) },
    }
}

/// The normative definition of [`gemm_bias`], written plainly.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_reference(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
    relu: bool,
) {
    check_args(a, lda, m, WRef::Packed(w), bias, c, ldc);
    for i in 0..m {
        for j in 0..w.n {
            let mut acc = bias[j];
            for kk in 0..w.k {
                acc = a[i * lda + kk].mul_add(w.get(kk, j), acc);
            }
            c[i * ldc + j] = if relu { relu0(acc) } else { acc };
        }
    }
}

/// Panics unless every access the kernels make is in bounds; the SIMD paths rely on this.
fn check_args(a: &[f32], lda: usize, m: usize, w: WRef<'_>, bias: &[f32], c: &[f32], ldc: usize) {
    assert!(lda >= w.k(), "lda {lda} < k {}", w.k());
    assert!(ldc >= w.n(), "ldc {ldc} < n {}", w.n());
    assert!(bias.len() >= w.n(), "bias has {} < n {}", bias.len(), w.n());
    if m > 0 {
        // Checked arithmetic: a wrapped length must not pass for a valid one.
        let need = |ld: usize, width: usize| (m - 1).checked_mul(ld)?.checked_add(width);
        assert!(
            need(lda, w.k()).is_some_and(|l| a.len() >= l),
            "a too short"
        );
        assert!(
            need(ldc, w.n()).is_some_and(|l| c.len() >= l),
            "c too short"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_path(
    path: Path,
    a: &[f32],
    lda: usize,
    m: usize,
    w: WRef<'_>,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
    relu: bool,
) {
    check_args(a, lda, m, w, bias, c, ldc);
    assert!(path_supported(path), "{path:?} not supported by this CPU");
    if m == 0 || w.n() == 0 {
        return;
    }
    // Row blocks keep the A block L2-resident while every W panel streams past it.
    let mut r0 = 0;
    while r0 < m {
        let rows = RECOMMENDED_ROW_BLOCK.min(m - r0);
        let (a, c) = (&a[r0 * lda..], &mut c[r0 * ldc..]);
        match path {
            Path::Scalar => gemm_scalar(a, lda, rows, w, bias, c, ldc, relu),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2+FMA support was checked above; check_args bounds every access.
            Path::Avx2 => unsafe { avx2::gemm(a, lda, rows, w, bias, c, ldc, relu) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F+FMA support was checked above; check_args bounds every access.
            Path::Avx512 => unsafe { avx512::gemm(a, lda, rows, w, bias, c, ldc, relu) },
        }
        r0 += rows;
    }
}

/// Portable path over the same packed panels (also exercises the packing on every target).
#[allow(clippy::too_many_arguments)]
fn gemm_scalar(
    a: &[f32],
    lda: usize,
    m: usize,
    w: WRef<'_>,
    bias: &[f32],
    c: &mut [f32],
    ldc: usize,
    relu: bool,
) {
    let (k, n) = (w.k(), w.n());
    let mut col0 = 0;
    while col0 < n {
        let (width, pw, stride) = w.panel(col0);
        let cols = width.min(n - col0);
        for i in 0..m {
            let mut acc = [0.0f32; NR];
            acc[..cols].copy_from_slice(&bias[col0..col0 + cols]);
            let row = &a[i * lda..i * lda + k];
            for (kk, &x) in row.iter().enumerate() {
                let wrow = &pw[kk * stride..kk * stride + cols];
                for (acc, &wv) in acc.iter_mut().zip(wrow) {
                    *acc = x.mul_add(wv, *acc);
                }
            }
            let out = &mut c[i * ldc + col0..i * ldc + col0 + cols];
            for (o, &v) in out.iter_mut().zip(&acc) {
                *o = if relu { relu0(v) } else { v };
            }
        }
        col0 += width;
    }
}

/// The SIMD paths. Both ISAs share one kernel, written once in [`simd_kernel!`]: a module
/// defines its vector type, lane count, tile height and nine small primitives, then expands the
/// macro. Every output element is one lane: bias, then one FMA per `kk` ascending, then ReLU.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    ($features:literal, tails: [$($r:literal),*]) => {
        /// Safety: the CPU has the module's features, and `check_args` passed.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn gemm(
            a: &[f32],
            lda: usize,
            m: usize,
            w: WRef<'_>,
            bias: &[f32],
            c: &mut [f32],
            ldc: usize,
            relu: bool,
        ) {
            let (k, n) = (w.k(), w.n());
            let mut col0 = 0;
            while col0 < n {
                let (width, pw, stride) = w.panel(col0);
                // Strips of up to two vectors; every strip has >= 1 valid column.
                let mut s = 0;
                while s < width && col0 + s < n {
                    let strip_width = (width - s).min(2 * V);
                    let cols = (n - col0 - s).min(strip_width);
                    let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(V))];
                    // Whole strips use plain loads and stores: AVX2's masked store is
                    // microcoded on some CPUs (AMD Zen 1: several times a plain store).
                    let full = cols == strip_width;
                    let (ap, cp) = (a.as_ptr(), c.as_mut_ptr().wrapping_add(col0 + s));
                    let (bp, wp) = (
                        bias.as_ptr().wrapping_add(col0 + s),
                        pw.as_ptr().wrapping_add(s),
                    );
                    // SAFETY: check_args guarantees rows < m of a (k wide) and c (n wide) and
                    // bias[..n] are in bounds; the masks keep loads/stores to valid columns.
                    unsafe {
                        if strip_width == 2 * V {
                            strip::<2>(ap, lda, m, k, wp, stride, bp, (masks, full), cp, ldc, relu);
                        } else {
                            strip::<1>(ap, lda, m, k, wp, stride, bp, (masks, full), cp, ldc, relu);
                        }
                    }
                    s += strip_width;
                }
                col0 += width;
            }
        }

        /// All `m` rows of one strip of `NV` vectors. Safety: `a`/`c` valid for `m` rows of
        /// `k`/`masks` columns (all `NV * V` when `full`), `w` for `k` rows of stride `wstride`
        /// holding `NV * V` floats, `bias` for the masked columns.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn strip<const NV: usize>(
            a: *const f32,
            lda: usize,
            m: usize,
            k: usize,
            w: *const f32,
            wstride: usize,
            bias: *const f32,
            masks: ([Mask; 2], bool),
            c: *mut f32,
            ldc: usize,
            relu: bool,
        ) {
            let mut i = 0;
            // SAFETY (whole block): rows i..i+rows stay below m, as the caller requires.
            unsafe {
                while i + MR <= m {
                    let (ai, ci) = (a.add(i * lda), c.add(i * ldc));
                    tile::<MR, NV>(ai, lda, k, w, wstride, bias, masks, ci, ldc, relu);
                    i += MR;
                }
                if i < m {
                    let (a, c) = (a.add(i * lda), c.add(i * ldc));
                    match m - i {
                        $($r => tile::<$r, NV>(a, lda, k, w, wstride, bias, masks, c, ldc, relu),)*
                        _ => unreachable!(),
                    }
                }
            }
        }

        /// R x (NV * V) register tile: accumulators start at bias, one FMA per kk ascending.
        /// Safety: as for `strip`, with `R` rows.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn tile<const R: usize, const NV: usize>(
            a: *const f32,
            lda: usize,
            k: usize,
            w: *const f32,
            wstride: usize,
            bias: *const f32,
            masks: ([Mask; 2], bool),
            c: *mut f32,
            ldc: usize,
            relu: bool,
        ) {
            let (masks, full) = masks;
            let mut acc = [[zero(); NV]; R];
            for v in 0..NV {
                // SAFETY: the mask only enables lanes of valid columns of bias (all when full).
                let b = unsafe {
                    if full {
                        load(bias.wrapping_add(v * V))
                    } else {
                        load_masked(bias.wrapping_add(v * V), masks[v])
                    }
                };
                for row in acc.iter_mut() {
                    row[v] = b;
                }
            }
            for kk in 0..k {
                let mut wv = [zero(); NV];
                for (v, x) in wv.iter_mut().enumerate() {
                    // SAFETY: the strip lies within a panel of k rows of wstride floats.
                    *x = unsafe { load(w.add(kk * wstride + v * V)) };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: row r < R rows of a, kk < k <= lda.
                    let x = splat(unsafe { *a.add(r * lda + kk) });
                    for v in 0..NV {
                        row[v] = fma(x, wv[v], row[v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for v in 0..NV {
                    let out = if relu { relu0_vec(row[v]) } else { row[v] };
                    let p = c.wrapping_add(r * ldc + v * V);
                    // SAFETY: the mask only enables valid columns of row r of c (all when full).
                    unsafe {
                        if full {
                            store(p, out)
                        } else {
                            store_masked(p, masks[v], out)
                        }
                    };
                }
            }
        }
    };
}

/// The gathered product ([`gemm_gather`]) for one ISA, from the same primitives as
/// [`simd_kernel!`]: strips of up to two vectors, tiles of up to `MR` rows, accumulators from
/// zero, one FMA per `kk` ascending.
#[cfg(target_arch = "x86_64")]
macro_rules! gather_kernel {
    ($features:literal, tails: [$($r:literal),*]) => {
        /// Safety: the CPU has the module's features, and `gemm_gather_path`'s asserts passed.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn gemm_gather(
            a: &[f32],
            a_rows: &[usize],
            b: &[f32],
            b_rows: &[usize],
            n: usize,
            c: &mut [f32],
            ldc: usize,
        ) {
            let m = a_rows.len();
            let mut col0 = 0;
            while col0 < n {
                let strip_width = (n - col0).min(2 * V).next_multiple_of(V);
                let cols = (n - col0).min(strip_width);
                let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(V))];
                let full = cols == strip_width;
                let mut i = 0;
                // SAFETY: rows < m of c hold n columns; b rows hold n rounded up to V floats;
                // a rows hold k floats (the caller's asserts).
                unsafe {
                    let cp = c.as_mut_ptr().wrapping_add(col0);
                    let bp = b.as_ptr().wrapping_add(col0);
                    while i < m {
                        let rows = &a_rows[i..(i + MR).min(m)];
                        let ci = cp.add(i * ldc);
                        let nv = strip_width / V;
                        match (rows.len(), nv) {
                            (MR, 2) => gtile::<MR, 2>(a, rows, bp, b_rows, (masks, full), ci, ldc),
                            (MR, _) => gtile::<MR, 1>(a, rows, bp, b_rows, (masks, full), ci, ldc),
                            $(($r, 2) => gtile::<$r, 2>(a, rows, bp, b_rows, (masks, full), ci, ldc),)*
                            $(($r, _) => gtile::<$r, 1>(a, rows, bp, b_rows, (masks, full), ci, ldc),)*
                            _ => unreachable!(),
                        }
                        i += MR;
                    }
                }
                col0 += strip_width;
            }
        }

        /// R x (NV * V) tile of the gathered product. Safety: as for `gemm_gather`, with `R`
        /// rows (`rows.len() == R`) and the strip's columns.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn gtile<const R: usize, const NV: usize>(
            a: &[f32],
            rows: &[usize],
            b: *const f32,
            b_rows: &[usize],
            masks: ([Mask; 2], bool),
            c: *mut f32,
            ldc: usize,
        ) {
            let (masks, full) = masks;
            let ap: [*const f32; R] = core::array::from_fn(|r| a.as_ptr().wrapping_add(rows[r]));
            let mut acc = [[zero(); NV]; R];
            for (kk, &br) in b_rows.iter().enumerate() {
                let mut wv = [zero(); NV];
                for (v, x) in wv.iter_mut().enumerate() {
                    // SAFETY: b rows hold the strip's NV * V floats (n rounded up to V).
                    *x = unsafe { load(b.add(br + v * V)) };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: a row r holds k floats, kk < k.
                    let x = splat(unsafe { *ap[r].add(kk) });
                    for v in 0..NV {
                        row[v] = fma(x, wv[v], row[v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for v in 0..NV {
                    let p = c.wrapping_add(r * ldc + v * V);
                    // SAFETY: the mask only enables valid columns of row r (all when full).
                    unsafe {
                        if full {
                            store(p, row[v])
                        } else {
                            store_masked(p, masks[v], row[v])
                        }
                    };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    type Mask = __mmask16;
    /// Floats per zmm register.
    const V: usize = LANES;
    /// Rows per microkernel tile: MR x 2 zmm accumulators = 24 of the 32 registers.
    const MR: usize = 12;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    /// Zero as the second operand: vmaxps returns it for NaN and for +-0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn relu0_vec(x: __m512) -> __m512 {
        _mm512_max_ps(x, _mm512_setzero_ps())
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_masked(p: *const f32, m: Mask) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_masked(p: *mut f32, m: Mask, v: __m512) {
        unsafe { _mm512_mask_storeu_ps(p, m, v) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline]
    fn lane_mask(valid: usize) -> Mask {
        if valid >= V {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        }
    }

    simd_kernel!("avx512f,fma", tails: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    gather_kernel!("avx512f,fma", tails: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    type Mask = __m256i;
    /// Floats per ymm register.
    const V: usize = LANES / 2;
    /// Rows per tile: 6 x 2 ymm accumulators + 2 W registers + a broadcast = 15 of 16.
    const MR: usize = 6;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    /// Zero as the second operand: vmaxps returns it for NaN and for +-0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn relu0_vec(x: __m256) -> __m256 {
        _mm256_max_ps(x, _mm256_setzero_ps())
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_masked(p: *const f32, m: Mask) -> __m256 {
        unsafe { _mm256_maskload_ps(p, m) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_masked(p: *mut f32, m: Mask, v: __m256) {
        unsafe { _mm256_maskstore_ps(p, m, v) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane_mask(valid: usize) -> Mask {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(V) as i32), idx)
    }

    simd_kernel!("avx2,fma", tails: [1, 2, 3, 4, 5]);
    gather_kernel!("avx2,fma", tails: [1, 2, 3, 4, 5]);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::SplitMix64 as Rng;

    /// `n` values uniform in [-1, 1); with `special`, ~6% are NaN, +-0, +-inf, subnormal or huge.
    fn values(rng: &mut Rng, n: usize, special: bool) -> Vec<f32> {
        const S: [f32; 8] = [
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            -3e38,
            3e38,
        ];
        (0..n)
            .map(|_| {
                let r = rng.next_u64();
                if special && r.is_multiple_of(16) {
                    S[(r >> 8) as usize % S.len()]
                } else {
                    ((r >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                }
            })
            .collect()
    }

    const SENTINEL: f32 = 12345.678;

    /// The gathered product on every path equals its definition bit for bit (overlapping,
    /// unordered rows; every strip and tile width), and writes nothing else.
    #[test]
    fn gathered_product_matches_its_definition() {
        let mut rng = Rng::new(11);
        for (m, k, n) in [
            (1usize, 1usize, 1usize),
            (5, 7, 3),
            (12, 9, 32),
            (13, 20, 33),
            (29, 3, 70),
            (7, 0, 5),
        ] {
            let a = values(&mut rng, 64 + k, true);
            let b = values(&mut rng, 96 + n.next_multiple_of(LANES), true);
            let a_rows: Vec<usize> = (0..m).map(|_| rng.below(64) as usize).collect();
            let b_rows: Vec<usize> = (0..k).map(|_| rng.below(96) as usize).collect();
            let ldc = n + 3;
            let len = (m - 1) * ldc + n;
            let mut want = vec![SENTINEL; len + LANES];
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f32;
                    for kk in 0..k {
                        acc = a[a_rows[i] + kk].mul_add(b[b_rows[kk] + j], acc);
                    }
                    want[i * ldc + j] = acc;
                }
            }
            for path in paths() {
                let mut got = vec![SENTINEL; len + LANES];
                gemm_gather_path(path, &a, &a_rows, &b, &b_rows, n, &mut got[..len], ldc);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{path:?} m {m} k {k} n {n}");
            }
        }
    }

    /// Every path this CPU can run, so each is checked against the reference.
    fn paths() -> Vec<Path> {
        let all = [
            Path::Scalar,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2,
            #[cfg(target_arch = "x86_64")]
            Path::Avx512,
        ];
        all.into_iter().filter(|&p| path_supported(p)).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        rng: &mut Rng,
        m: usize,
        k: usize,
        n: usize,
        pad_a: usize,
        pad_c: usize,
        special: bool,
    ) {
        let (lda, ldc) = (k + pad_a, n + pad_c);
        // Minimal slice lengths: the last row has no stride padding.
        let (alen, clen) = ((m - 1) * lda + k, (m - 1) * ldc + n);
        let a = values(rng, alen, special);
        let wraw = values(rng, k * n, special);
        let bias = values(rng, n, special);
        let w = PackedMatrix::new(&wraw, k, n);
        for relu in [false, true] {
            // Extra trailing sentinels catch any store past the end of c.
            let mut want = vec![SENTINEL; clen + LANES];
            gemm_bias_reference(&a, lda, m, &w, &bias, &mut want[..clen], ldc, relu);
            for path in paths() {
                let mut got = vec![SENTINEL; clen + LANES];
                gemm_path(
                    path,
                    &a,
                    lda,
                    m,
                    WRef::Packed(&w),
                    &bias,
                    &mut got[..clen],
                    ldc,
                    relu,
                );
                // Exact bits, NaN payloads and signed zeros included; columns >= n and
                // everything past c must still hold the sentinel.
                for (idx, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    let (i, j) = (idx / ldc, idx % ldc);
                    assert!(
                        g.to_bits() == r.to_bits(),
                        "{path:?} m={m} k={k} n={n} relu={relu} c[{i}][{j}]: {g:e} ({:#x}) != {r:e} ({:#x})",
                        g.to_bits(),
                        r.to_bits()
                    );
                }
            }
        }
    }

    #[test]
    fn all_paths_match_reference() {
        let mut rng = Rng::new(1);
        let ks = [1, 2, 7, 80, 180];
        let ns = [1, 5, 9, 16, 17, 31, 33, 49, 180, 181];
        let ms: Vec<usize> = (1..=20).chain([100, 257]).collect();
        for (t, &m) in ms.iter().enumerate() {
            for &k in &ks {
                for &n in &ns {
                    let (pad_a, pad_c) = ((t + k) % 3 * 5, (t + n) % 4 * 3);
                    check(&mut rng, m, k, n, pad_a, pad_c, false);
                    if (m + k + n) % 3 == 0 {
                        check(&mut rng, m, k, n, pad_a, pad_c, true);
                    }
                }
            }
        }
    }

    #[test]
    fn special_values_everywhere() {
        let mut rng = Rng::new(2);
        for m in [1, 5, 12, 13, 25] {
            for (k, n) in [(1, 1), (2, 17), (7, 33), (3, 49), (5, 64)] {
                check(&mut rng, m, k, n, 1, 2, true);
            }
        }
    }

    #[test]
    fn relu_and_signed_zero_semantics() {
        // k = 1, a = 0, W = -1: acc = fma(0, -1, bias), which keeps -0.0 as -0.0.
        let bias = [
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -2.5,
            2.5,
        ];
        let n = bias.len();
        let w = PackedMatrix::new(&vec![-1.0; n], 1, n);
        for path in paths() {
            let mut c = vec![SENTINEL; n];
            gemm_path(
                path,
                &[0.0],
                1,
                1,
                WRef::Packed(&w),
                &bias,
                &mut c,
                n,
                false,
            );
            assert!(c[0].is_nan(), "{path:?}");
            let bits: Vec<u32> = c[1..].iter().map(|x| x.to_bits()).collect();
            let want = [-0.0f32, 0.0, f32::INFINITY, f32::NEG_INFINITY, -2.5, 2.5];
            assert_eq!(bits, want.map(f32::to_bits), "{path:?}");
            gemm_path(path, &[0.0], 1, 1, WRef::Packed(&w), &bias, &mut c, n, true);
            let want = [0.0f32, 0.0, 0.0, f32::INFINITY, 0.0, 0.0, 2.5];
            assert_eq!(
                c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.map(f32::to_bits),
                "{path:?}"
            );
        }
    }

    #[test]
    fn fused_not_separate_multiply_add() {
        // (1 + 2^-12)^2 - 1 - 2^-11 = 2^-24 exactly with one rounding, 0 with two.
        let x = 1.0 + f32::EPSILON * 2048.0;
        let w = PackedMatrix::new(&[x], 1, 1);
        for path in paths() {
            let mut c = [0.0];
            gemm_path(
                path,
                &[x],
                1,
                1,
                WRef::Packed(&w),
                &[-1.0 - f32::EPSILON * 4096.0],
                &mut c,
                1,
                false,
            );
            assert_eq!(c[0], (2.0f32).powi(-24), "{path:?}");
        }
    }

    #[test]
    fn reference_matches_unpacked_definition() {
        let mut rng = Rng::new(3);
        for (m, k, n) in [(3, 5, 1), (4, 9, 17), (2, 33, 49), (5, 3, 70)] {
            let a = values(&mut rng, m * k, false);
            let wraw = values(&mut rng, k * n, false);
            let bias = values(&mut rng, n, false);
            let w = PackedMatrix::new(&wraw, k, n);
            assert_eq!((w.k(), w.n()), (k, n));
            let mut c = vec![0.0; m * n];
            gemm_bias_reference(&a, k, m, &w, &bias, &mut c, n, false);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(w.get(i % k, j).to_bits(), wraw[(i % k) * n + j].to_bits());
                    let mut acc = bias[j];
                    for kk in 0..k {
                        acc = a[i * k + kk].mul_add(wraw[kk * n + j], acc);
                    }
                    assert_eq!(c[i * n + j].to_bits(), acc.to_bits());
                }
            }
        }
    }

    #[test]
    fn row_split_is_deterministic() {
        // The caller splits rows across threads; any split must give the same bits.
        let mut rng = Rng::new(4);
        let (m, k, n) = (77, 80, 49);
        let a = values(&mut rng, m * k, false);
        let w = PackedMatrix::new(&values(&mut rng, k * n, false), k, n);
        let bias = values(&mut rng, n, false);
        let mut whole = vec![0.0; m * n];
        gemm_bias(&a, k, m, &w, &bias, &mut whole, n, true);
        let mut parts = vec![0.0; m * n];
        for (r0, r1) in [(0, 5), (5, 31), (31, 32), (32, 77)] {
            let rows = r1 - r0;
            gemm_bias(
                &a[r0 * k..],
                k,
                rows,
                &w,
                &bias,
                &mut parts[r0 * n..],
                n,
                true,
            );
        }
        assert_eq!(
            whole.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            parts.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    /// A row-major right-hand side (no packing) gives the same bits as the packed one, on every
    /// path, with garbage (NaN) in the padding columns that must never reach the output.
    #[test]
    fn row_major_rhs_matches_packed_on_every_path() {
        let mut rng = Rng::new(7);
        for (m, k, n) in [
            (1, 1, 1),
            (13, 5, 16),
            (7, 9, 17),
            (25, 3, 33),
            (12, 8, 64),
            (5, 4, 70),
        ] {
            let a = values(&mut rng, m * k, true);
            let w = values(&mut rng, k * n, true);
            let bias = values(&mut rng, n, false);
            let ldw = n.next_multiple_of(LANES) + 16;
            let mut rows = vec![f32::NAN; k * ldw];
            for kk in 0..k {
                rows[kk * ldw..kk * ldw + n].copy_from_slice(&w[kk * n..(kk + 1) * n]);
            }
            let packed = PackedMatrix::new(&w, k, n);
            let mut want = vec![SENTINEL; m * n];
            gemm_bias_reference(&a, k, m, &packed, &bias, &mut want, n, true);
            for path in paths() {
                let mut got = vec![SENTINEL; m * n];
                let w_rows = WRef::Rows {
                    data: &rows,
                    ld: ldw,
                    k,
                    n,
                };
                gemm_path(path, &a, k, m, w_rows, &bias, &mut got, n, true);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{path:?} m {m} k {k} n {n}");
            }
        }
    }

    #[test]
    fn packed_matrix_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<PackedMatrix>();
    }

    #[test]
    #[should_panic(expected = "c too short")]
    fn rejects_short_output() {
        let w = PackedMatrix::new(&[1.0; 6], 2, 3);
        gemm_bias(&[0.0; 4], 2, 2, &w, &[0.0; 3], &mut [0.0; 5], 3, false);
    }

    #[test]
    fn empty_rows_and_zero_k() {
        let w = PackedMatrix::new(&[], 0, 3);
        let mut c = [SENTINEL; 3];
        for path in paths() {
            gemm_path(
                path,
                &[],
                0,
                1,
                WRef::Packed(&w),
                &[-1.0, 0.5, -0.0],
                &mut c,
                3,
                true,
            );
            assert_eq!(c, [0.0, 0.5, 0.0]);
            gemm_path(
                path,
                &[],
                0,
                0,
                WRef::Packed(&w),
                &[1.0; 3],
                &mut [],
                3,
                true,
            );
        }
    }
}

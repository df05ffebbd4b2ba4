//! 2-D convolution for training on the CPU: forward and both gradients as GEMMs over patch rows
//! ("same" stride-1 layers read them in place from padded planes through
//! [`crate::decode::gemm::gemm_gather`], see [`SameGrid`]; others build the patch matrix, im2col,
//! for [`crate::decode::gemm::gemm_bias_rows`]), images split across threads.
//!
//! burn Flex's own conv2d and the generic backward it inherits (a transposed convolution for the
//! input gradient, a batch-as-channels convolution for the weight gradient) ran at 3-15 GFLOP/s
//! on the phase-2 shapes (batch 128, 16-64 channels, 7x7-28x28 maps), which made phase 2 three
//! times slower than PyTorch. Every product here is a GEMM with one long dimension, which the
//! decoder's kernel runs near the machine's FMA peak.
//!
//! Layouts are NCHW (inputs, outputs, gradients) and `[cout, cin, k, k]` (weights), as burn and
//! PyTorch use. Results are deterministic for a given thread count: each thread owns a fixed
//! range of images, and per-thread weight-gradient partials are summed in thread order.

use crate::decode::gemm::{gemm_bias_rows, gemm_gather};
use crate::dense::transpose_into;

/// One convolution's sizes: square kernels, equal stride and padding on both axes, no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeometry {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
    fn out_len(&self) -> usize {
        self.cout * self.out_pixels()
    }
    /// Length of one patch: `cin * k * k`.
    fn patch(&self) -> usize {
        self.cin * self.k * self.k
    }
    /// Whether the geometry describes a convolution at all (non-empty output, kernel fits).
    pub fn is_valid(&self) -> bool {
        self.k > 0
            && self.stride > 0
            && self.h + 2 * self.pad >= self.k
            && self.w + 2 * self.pad >= self.k
    }
}

/// Input row (or column) of output position `o` and kernel offset `t`, if inside the image.
#[inline]
fn source(o: usize, t: usize, g: &ConvGeometry, len: usize) -> Option<usize> {
    (o * g.stride + t).checked_sub(g.pad).filter(|&i| i < len)
}

/// Output columns `lo..hi` whose input column for kernel offset `kx` lies inside the image.
fn valid_columns(kx: usize, g: &ConvGeometry) -> (usize, usize) {
    let ow = g.out_w();
    let lo = g.pad.saturating_sub(kx).div_ceil(g.stride).min(ow);
    let hi = if g.w + g.pad > kx {
        ((g.w + g.pad - kx - 1) / g.stride + 1).min(ow)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// One patch row of one image: `out[p] = x[ci, iy(p), ix(p)]` (zero outside) for the patch
/// element `(ci, ky, kx)` at every output pixel `p`.
fn patch_row(x: &[f32], g: &ConvGeometry, (ci, ky, kx): (usize, usize, usize), out: &mut [f32]) {
    let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
    let ow = g.out_w();
    if g.stride == 1 && ow == g.w && g.out_h() == g.h {
        return shifted_plane(plane, g, ky, kx, out);
    }
    let (lo, hi) = valid_columns(kx, g);
    for (oy, d) in out.chunks_exact_mut(ow).enumerate() {
        let Some(iy) = source(oy, ky, g, g.h) else {
            d.fill(0.0);
            continue;
        };
        d[..lo].fill(0.0);
        d[hi..].fill(0.0);
        if lo == hi {
            continue;
        }
        let ix0 = lo * g.stride + kx - g.pad;
        let src = &plane[iy * g.w..(iy + 1) * g.w];
        if g.stride == 1 {
            d[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
        } else {
            for (t, v) in d[lo..hi].iter_mut().enumerate() {
                *v = src[ix0 + t * g.stride];
            }
        }
    }
}

/// [`patch_row`] for "same" stride-1 convolutions: the patch row is the plane shifted by
/// `(ky - pad, kx - pad)`, so valid rows are one block copy (a row-by-row copy costs a call per
/// image row) and only the wrapped border columns need zeroing.
fn shifted_plane(plane: &[f32], g: &ConvGeometry, ky: usize, kx: usize, out: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    // Output rows whose input row iy = oy + ky - pad is inside the image.
    let oy_lo = g.pad.saturating_sub(ky).min(h);
    let oy_hi = (h + g.pad).saturating_sub(ky).min(h).max(oy_lo);
    out[..oy_lo * w].fill(0.0);
    out[oy_hi * w..].fill(0.0);
    if oy_lo == oy_hi {
        return;
    }
    // out[p] = plane[p + delta] over the valid rows, delta = (ky - pad) * w + (kx - pad).
    let delta = (ky * w + kx) as isize - (g.pad * w + g.pad) as isize;
    let (p_lo, p_hi) = (oy_lo * w, oy_hi * w);
    let src_lo = (p_lo as isize + delta).clamp(0, (h * w) as isize) as usize;
    let src_hi = (p_hi as isize + delta).clamp(0, (h * w) as isize) as usize;
    let dst_lo = (src_lo as isize - delta) as usize;
    out[p_lo..dst_lo].fill(0.0);
    out[dst_lo..dst_lo + src_hi - src_lo].copy_from_slice(&plane[src_lo..src_hi]);
    out[dst_lo + src_hi - src_lo..p_hi].fill(0.0);
    // Columns whose input column ix = ox + kx - pad falls off the left or right edge took
    // values from the neighbouring row: zero them.
    zero_border_columns(&mut out[p_lo..p_hi], w, valid_columns(kx, g));
}

/// Zeroes columns outside `lo..hi` of every `w`-wide row of `rows`. Column by column: the
/// border is a column or two, and per-row `fill`s of one float cost a call each.
fn zero_border_columns(rows: &mut [f32], w: usize, (lo, hi): (usize, usize)) {
    for c in (0..lo).chain(hi..w) {
        for v in rows.iter_mut().skip(c).step_by(w) {
            *v = 0.0;
        }
    }
}

/// The transpose of [`shifted_plane`]: adds the patch row `d` back onto the plane it was taken
/// from, as one block add over the valid rows. `d`'s border columns (those [`shifted_plane`]
/// zeroes) are zeroed first so the block add leaves their plane entries unchanged. Every plane
/// entry receives the same additions in the same order as [`add_patch_row`] gives it.
fn add_shifted_plane(d: &mut [f32], g: &ConvGeometry, ky: usize, kx: usize, plane: &mut [f32]) {
    let (h, w) = (g.h, g.w);
    let oy_lo = g.pad.saturating_sub(ky).min(h);
    let oy_hi = (h + g.pad).saturating_sub(ky).min(h).max(oy_lo);
    if oy_lo == oy_hi {
        return;
    }
    let (p_lo, p_hi) = (oy_lo * w, oy_hi * w);
    zero_border_columns(&mut d[p_lo..p_hi], w, valid_columns(kx, g));
    // plane[p + delta] += d[p] over the valid rows, delta = (ky - pad) * w + (kx - pad).
    let delta = (ky * w + kx) as isize - (g.pad * w + g.pad) as isize;
    let src_lo = (p_lo as isize + delta).clamp(0, (h * w) as isize) as usize;
    let src_hi = (p_hi as isize + delta).clamp(0, (h * w) as isize) as usize;
    let dst_lo = (src_lo as isize - delta) as usize;
    plane[src_lo..src_hi]
        .iter_mut()
        .zip(&d[dst_lo..dst_lo + src_hi - src_lo])
        .for_each(|(a, v)| *a += v);
}

/// Adds one patch row's gradient back onto the image (the transpose of [`patch_row`]).
fn add_patch_row(d: &[f32], g: &ConvGeometry, (ci, ky, kx): (usize, usize, usize), dx: &mut [f32]) {
    let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
    let ow = g.out_w();
    let (lo, hi) = valid_columns(kx, g);
    if lo == hi {
        return;
    }
    for (oy, src) in d.chunks_exact(ow).enumerate() {
        let Some(iy) = source(oy, ky, g, g.h) else {
            continue;
        };
        let ix0 = lo * g.stride + kx - g.pad;
        let row = &mut plane[iy * g.w..(iy + 1) * g.w];
        if g.stride == 1 {
            row[ix0..ix0 + hi - lo]
                .iter_mut()
                .zip(&src[lo..hi])
                .for_each(|(r, v)| *r += v);
        } else {
            for (t, v) in src[lo..hi].iter().enumerate() {
                row[ix0 + t * g.stride] += v;
            }
        }
    }
}

/// `(ci, ky, kx)` of patch element `j`.
fn patch_element(g: &ConvGeometry, j: usize) -> (usize, usize, usize) {
    (j / (g.k * g.k), j / g.k % g.k, j % g.k)
}

/// Patches of one image as columns: `cols[j * pixels + p]`, `j = (ci * k + ky) * k + kx`.
/// Rows are `ld >= pixels` floats apart; the padding is left as it is.
fn im2col_cols(x: &[f32], g: &ConvGeometry, cols: &mut [f32], ld: usize) {
    for (j, row) in cols.chunks_exact_mut(ld).enumerate() {
        patch_row(x, g, patch_element(g, j), &mut row[..g.out_pixels()]);
    }
}

/// Adds column-layout patch gradients back onto the image they were taken from (`cols` is
/// scratch: "same" stride-1 convolutions zero its border columns on the way).
fn col2im_cols(cols: &mut [f32], g: &ConvGeometry, dx: &mut [f32]) {
    let same = g.stride == 1 && g.out_w() == g.w && g.out_h() == g.h;
    let plane_len = g.h * g.w;
    for (j, row) in cols.chunks_exact_mut(g.out_pixels()).enumerate() {
        let (ci, ky, kx) = patch_element(g, j);
        if same {
            let plane = &mut dx[ci * plane_len..(ci + 1) * plane_len];
            add_shifted_plane(row, g, ky, kx, plane);
        } else {
            add_patch_row(row, g, (ci, ky, kx), dx);
        }
    }
}

/// The weight and bias gradients from the workers' partials `(dW^T, db)`, summed in worker
/// order (the order fixes the rounding), `dW` back in `[cout, patch]` layout.
fn sum_partials(partials: &[(Vec<f32>, Vec<f32>)], g: &ConvGeometry) -> (Vec<f32>, Vec<f32>) {
    let patch = g.patch();
    let mut dwt = vec![0f32; patch * g.cout];
    let mut db = vec![0f32; g.cout];
    for (p_dwt, p_db) in partials {
        dwt.iter_mut().zip(p_dwt).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(p_db).for_each(|(a, v)| *a += v);
    }
    let mut dw = vec![0f32; g.cout * patch];
    transpose_into(&dwt, patch, g.cout, &mut dw, patch);
    (dw, db)
}

/// Elements per parallel task of the epilogue and its backward.
const EPILOGUE_CHUNK: usize = 1 << 14;

/// A residual block's epilogue on a convolution's output, in place: `y += residual` (when
/// given), then ReLU (when `relu`), in parallel chunks. The network's adds and ReLUs as tensor
/// operations were passes over the activations on the calling thread while the pool waited.
pub fn epilogue(y: &mut [f32], residual: Option<&[f32]>, relu: bool) {
    use rayon::prelude::*;
    if let Some(r) = residual {
        assert_eq!(r.len(), y.len(), "epilogue: residual");
    }
    y.par_chunks_mut(EPILOGUE_CHUNK)
        .enumerate()
        .for_each(|(i, c)| {
            if let Some(r) = residual {
                let r = &r[i * EPILOGUE_CHUNK..i * EPILOGUE_CHUNK + c.len()];
                c.iter_mut().zip(r).for_each(|(a, &b)| *a += b);
            }
            if relu {
                crate::dense::relu_in_place(c);
            }
        });
}

/// The gradient at an epilogue's input from the gradient at its output `dy`: with ReLU, `dy`
/// where the output `y` is positive, else 0 (the residual's gradient is the same tensor).
pub fn epilogue_backward(dy: &[f32], y: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(dy.len(), y.len(), "epilogue: y");
    let mut dz = crate::dense::zeroed(dy.len());
    dz.par_chunks_mut(EPILOGUE_CHUNK)
        .enumerate()
        .for_each(|(i, c)| {
            let at = i * EPILOGUE_CHUNK;
            crate::dense::relu_grad_into(c, &dy[at..], &y[at..]);
        });
    dz
}

/// Runs `work(first_image, images)` on `threads` contiguous ranges of the batch, on rayon's
/// pool (the one burn Flex uses, so no second set of threads competes for the cores); results
/// come back in range order.
fn split_images<R: Send>(
    batch: usize,
    threads: usize,
    work: impl Fn(usize, usize) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let threads = threads.clamp(1, batch.max(1));
    let per = batch.div_ceil(threads);
    let ranges: Vec<(usize, usize)> = (0..threads)
        .map(|t| (t * per, (batch.min((t + 1) * per)).saturating_sub(t * per)))
        .filter(|&(_, n)| n > 0)
        .collect();
    if ranges.len() <= 1 {
        return ranges.iter().map(|&(s, n)| work(s, n)).collect();
    }
    ranges.par_iter().map(|&(s, n)| work(s, n)).collect()
}

/// A raw pointer to an output buffer whose disjoint image ranges the workers fill.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: each worker writes only its own images' range (split_images gives disjoint ranges).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Images `start..start + n` of length `len` each.
    ///
    /// # Safety
    /// The range lies inside the buffer and no other live slice overlaps it.
    unsafe fn images(self, start: usize, n: usize, len: usize) -> &'static mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start * len), n * len) }
    }
}

/// "Same" stride-1 convolutions (odd `k`, `pad = (k - 1) / 2`) skip the patch matrix: each
/// image is copied once into zero-padded planes, and the GEMM reads every patch row in place as
/// a shifted view of them ([`gemm_gather`]), computing outputs over the padded width (the extra
/// columns are dropped). The input gradient is the same kind of convolution of the padded
/// output gradient with the flipped, transposed kernel, so no col2im is needed either.
#[derive(Clone, Copy, Debug)]
struct SameGrid {
    /// Padded width and plane size.
    w2: usize,
    plane: usize,
    /// Outputs over the padded grid: `h * w2`.
    n: usize,
}

impl SameGrid {
    fn of(g: &ConvGeometry) -> Option<Self> {
        let same = g.stride == 1 && g.k % 2 == 1 && 2 * g.pad == g.k - 1;
        same.then(|| {
            let w2 = g.w + 2 * g.pad;
            Self {
                w2,
                plane: (g.h + 2 * g.pad) * w2,
                n: g.h * w2,
            }
        })
    }

    /// Offsets of the patch rows `(c, ky, kx)`, `c < channels`, in padded planes.
    fn patch_rows(&self, channels: usize, k: usize) -> Vec<usize> {
        (0..channels * k * k)
            .map(|j| (j / (k * k)) * self.plane + (j / k % k) * self.w2 + j % k)
            .collect()
    }

    /// Length of a padded buffer of `channels` planes: the last patch row's view reads `n`
    /// rounded up to 16 floats past its offset.
    fn buffer_len(&self, channels: usize, k: usize) -> usize {
        let last = (channels - 1) * self.plane + (k - 1) * (self.w2 + 1);
        (last + self.n.next_multiple_of(16)).max(channels * self.plane)
    }

    /// Copies `channels` planes of `h x w` into the padded buffer (borders stay zero).
    fn pad_into(&self, src: &[f32], g: &ConvGeometry, channels: usize, dst: &mut [f32]) {
        let (h, w, p) = (g.h, g.w, g.pad);
        for c in 0..channels {
            for y in 0..h {
                let s = &src[(c * h + y) * w..(c * h + y + 1) * w];
                let d0 = c * self.plane + (y + p) * self.w2 + p;
                dst[d0..d0 + w].copy_from_slice(s);
            }
        }
    }

    /// Drops the padded grid's extra columns: `dst[c, y, x] = src[c * n + y * w2 + x] + add[c]`.
    fn compact(&self, src: &[f32], g: &ConvGeometry, add: Option<&[f32]>, dst: &mut [f32]) {
        let (h, w) = (g.h, g.w);
        for (c, plane) in dst.chunks_exact_mut(h * w).enumerate() {
            let b = add.map_or(0.0, |a| a[c]);
            for (y, row) in plane.chunks_exact_mut(w).enumerate() {
                let s = &src[c * self.n + y * self.w2..c * self.n + y * self.w2 + w];
                if add.is_some() {
                    row.iter_mut().zip(s).for_each(|(d, v)| *d = v + b);
                } else {
                    row.copy_from_slice(s);
                }
            }
        }
    }
}

/// [`forward`] for a "same" stride-1 convolution (see [`SameGrid`]). The sums are the ones the
/// patch-matrix path computes, in the same order.
fn forward_same(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    grid: SameGrid,
    threads: usize,
) -> Vec<f32> {
    let patch = g.patch();
    let b_rows = grid.patch_rows(g.cin, g.k);
    let a_rows: Vec<usize> = (0..g.cout).map(|co| co * patch).collect();
    let bias = (!bias.is_empty()).then_some(bias);
    let mut y = crate::dense::zeroed(g.batch * g.out_len());
    let out = Shared(y.as_mut_ptr());
    split_images(g.batch, threads, |start, n| {
        // SAFETY: split_images hands out disjoint image ranges inside `y`.
        let y = unsafe { out.images(start, n, g.out_len()) };
        let mut xp = vec![0f32; grid.buffer_len(g.cin, g.k)];
        let mut yp = vec![0f32; g.cout * grid.n];
        for (i, y_img) in y.chunks_exact_mut(g.out_len()).enumerate() {
            let img = start + i;
            grid.pad_into(
                &x[img * g.in_len()..(img + 1) * g.in_len()],
                g,
                g.cin,
                &mut xp,
            );
            gemm_gather(weight, &a_rows, &xp, &b_rows, grid.n, &mut yp, grid.n);
            grid.compact(&yp, g, bias, y_img);
        }
    });
    y
}

/// [`backward`] for a "same" stride-1 convolution (see [`SameGrid`]).
fn backward_same(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    grid: SameGrid,
    want_dx: bool,
    threads: usize,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (patch, pixels, k) = (g.patch(), g.out_pixels(), g.k);
    let x_rows = grid.patch_rows(g.cin, k);
    // The input gradient's kernel: wflip[ci][co][ky][kx] = weight[co][ci][k-1-ky][k-1-kx].
    let tpatch = g.cout * k * k;
    let mut wflip = vec![0f32; g.cin * tpatch];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for t in 0..k * k {
                wflip[ci * tpatch + co * k * k + (k * k - 1 - t)] =
                    weight[(co * g.cin + ci) * k * k + t];
            }
        }
    }
    let dy_rows = grid.patch_rows(g.cout, k);
    let flip_rows: Vec<usize> = (0..g.cin).map(|ci| ci * tpatch).collect();
    let ld_out = g.cout.next_multiple_of(16);
    // Rows of the transposed output gradient over the padded grid.
    let q_rows: Vec<usize> = (0..grid.n).map(|q| q * ld_out).collect();
    let mut dx = want_dx.then(|| crate::dense::zeroed(g.batch * g.in_len()));
    let dx_out = dx.as_mut().map(|v| Shared(v.as_mut_ptr()));
    let partials = split_images(g.batch, threads, |start, n| {
        let mut xp = vec![0f32; grid.buffer_len(g.cin, k)];
        // Rows of padded-grid columns past the image width stay zero: they add nothing to dW.
        let mut dyt = vec![0f32; grid.n * ld_out];
        let mut dyp = vec![
            0f32;
            if want_dx {
                grid.buffer_len(g.cout, k)
            } else {
                0
            }
        ];
        let mut dxp = vec![0f32; if want_dx { g.cin * grid.n } else { 0 }];
        let mut dw_img = vec![0f32; patch * g.cout];
        let mut dwt = vec![0f32; patch * g.cout];
        let mut db = vec![0f32; g.cout];
        // SAFETY: split_images hands out disjoint image ranges inside `dx`.
        let mut dx = dx_out.map(|o| unsafe { o.images(start, n, g.in_len()) });
        for i in 0..n {
            let img = start + i;
            let dy_img = &dy[img * g.out_len()..(img + 1) * g.out_len()];
            grid.pad_into(
                &x[img * g.in_len()..(img + 1) * g.in_len()],
                g,
                g.cin,
                &mut xp,
            );
            // dyt[q][co] = dy[co][y][x] at q = y * w2 + x.
            for y in 0..g.h {
                let rows = &mut dyt[y * grid.w2 * ld_out..];
                for co in 0..g.cout {
                    let src = &dy_img[co * pixels + y * g.w..co * pixels + (y + 1) * g.w];
                    for (xx, &v) in src.iter().enumerate() {
                        rows[xx * ld_out + co] = v;
                    }
                }
            }
            // dW^T [patch, cout] = (shifted padded planes) [patch, n] . dyt [n, cout]
            gemm_gather(&xp, &x_rows, &dyt, &q_rows, g.cout, &mut dw_img, g.cout);
            dwt.iter_mut().zip(&dw_img).for_each(|(a, v)| *a += v);
            for (c, plane) in dy_img.chunks_exact(pixels).enumerate() {
                db[c] += plane.iter().sum::<f32>();
            }
            if let Some(dx) = dx.as_mut() {
                grid.pad_into(dy_img, g, g.cout, &mut dyp);
                gemm_gather(&wflip, &flip_rows, &dyp, &dy_rows, grid.n, &mut dxp, grid.n);
                let dx_img = &mut dx[i * g.in_len()..(i + 1) * g.in_len()];
                grid.compact(&dxp, g, None, dx_img);
            }
        }
        (dwt, db)
    });
    let (dw, db) = sum_partials(&partials, g);
    (dx, dw, db)
}

/// `y = conv(x, weight) + bias` (bias per output channel, zero when `None`).
pub fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    threads: usize,
) -> Vec<f32> {
    let patch = g.patch();
    assert_eq!(x.len(), g.batch * g.in_len(), "x");
    assert_eq!(weight.len(), g.cout * patch, "weight");
    assert!(bias.is_none_or(|b| b.len() == g.cout), "bias");
    let bias = bias.unwrap_or(&[]);
    match SameGrid::of(g) {
        Some(grid) => forward_same(x, weight, bias, g, grid, threads),
        None => forward_patches(x, weight, bias, g, threads),
    }
}

/// [`forward`] through the patch matrix (im2col), for any geometry.
fn forward_patches(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: &ConvGeometry,
    threads: usize,
) -> Vec<f32> {
    let (patch, pixels) = (g.patch(), g.out_pixels());
    let zeros = vec![0f32; g.out_pixels()];
    let mut y = crate::dense::zeroed(g.batch * g.out_len());
    let out = Shared(y.as_mut_ptr());
    // Patch rows padded to whole 16-float groups: the GEMM reads them in place, unpacked.
    let ld = pixels.next_multiple_of(16);
    split_images(g.batch, threads, |start, n| {
        // SAFETY: split_images hands out disjoint image ranges inside `y`.
        let y = unsafe { out.images(start, n, g.out_len()) };
        let mut cols = vec![0f32; patch * ld];
        for (i, y_img) in y.chunks_exact_mut(g.out_len()).enumerate() {
            let img = start + i;
            let x_img = &x[img * g.in_len()..(img + 1) * g.in_len()];
            // y [cout, pixels] = W [cout, patch] . cols [patch, pixels]
            im2col_cols(x_img, g, &mut cols, ld);
            let dims = (patch, pixels);
            gemm_bias_rows(
                weight, patch, g.cout, &cols, ld, dims, &zeros, y_img, pixels, false,
            );
            for (plane, b) in y_img.chunks_exact_mut(pixels).zip(bias) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
    });
    y
}

/// Gradients of a convolution: `(dx, dweight, dbias)` for the output gradient `dy`; `dx` only
/// when `want_dx` (the first layer's input needs none).
pub fn backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    want_dx: bool,
    threads: usize,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let patch = g.patch();
    assert_eq!(x.len(), g.batch * g.in_len(), "x");
    assert_eq!(weight.len(), g.cout * patch, "weight");
    assert_eq!(dy.len(), g.batch * g.out_len(), "dy");
    match SameGrid::of(g) {
        Some(grid) => backward_same(x, weight, dy, g, grid, want_dx, threads),
        None => backward_patches(x, weight, dy, g, want_dx, threads),
    }
}

/// [`backward`] through the patch matrix (im2col, col2im), for any geometry.
fn backward_patches(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    want_dx: bool,
    threads: usize,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (patch, pixels) = (g.patch(), g.out_pixels());
    let mut wt = vec![0f32; patch * g.cout];
    transpose_into(weight, g.cout, patch, &mut wt, g.cout);
    let zero_patch = vec![0f32; pixels.max(patch)];
    let zero_out = vec![0f32; g.cout];
    // Row strides in whole 16-float groups, so the GEMM reads these operands unpacked.
    let (ld_out, ld_pix) = (g.cout.next_multiple_of(16), pixels.next_multiple_of(16));
    let mut dx = want_dx.then(|| crate::dense::zeroed(g.batch * g.in_len()));
    let dx_out = dx.as_mut().map(|v| Shared(v.as_mut_ptr()));
    let partials = split_images(g.batch, threads, |start, n| {
        let mut cols = vec![0f32; patch * pixels];
        let mut dyt = vec![0f32; pixels * ld_out];
        let mut dyp = vec![0f32; g.cout * ld_pix];
        let mut dw_img = vec![0f32; patch * g.cout];
        let mut dwt = vec![0f32; patch * g.cout];
        let mut db = vec![0f32; g.cout];
        // SAFETY: split_images hands out disjoint image ranges inside `dx`.
        let mut dx = dx_out.map(|o| unsafe { o.images(start, n, g.in_len()) });
        for i in 0..n {
            let img = start + i;
            let x_img = &x[img * g.in_len()..(img + 1) * g.in_len()];
            let dy_img = &dy[img * g.out_len()..(img + 1) * g.out_len()];
            // dW^T [patch, cout] += cols [patch, pixels] . dy^T [pixels, cout]
            im2col_cols(x_img, g, &mut cols, pixels);
            transpose_into(dy_img, g.cout, pixels, &mut dyt, ld_out);
            let dims = (pixels, g.cout);
            let dw = &mut dw_img;
            gemm_bias_rows(
                &cols, pixels, patch, &dyt, ld_out, dims, &zero_out, dw, g.cout, false,
            );
            dwt.iter_mut().zip(&dw_img).for_each(|(a, v)| *a += v);
            for (c, plane) in dy_img.chunks_exact(pixels).enumerate() {
                db[c] += plane.iter().sum::<f32>();
            }
            // dcols [patch, pixels] = W^T [patch, cout] . dy [cout, pixels]
            if let Some(dx) = dx.as_mut() {
                // The GEMM reads dy's rows in place when they are whole 16-float groups.
                let dy_rows = if ld_pix == pixels {
                    dy_img
                } else {
                    for (dst, src) in dyp
                        .chunks_exact_mut(ld_pix)
                        .zip(dy_img.chunks_exact(pixels))
                    {
                        dst[..pixels].copy_from_slice(src);
                    }
                    &dyp[..]
                };
                let dims = (g.cout, pixels);
                let (zp, c) = (&zero_patch, &mut cols);
                gemm_bias_rows(
                    &wt, g.cout, patch, dy_rows, ld_pix, dims, zp, c, pixels, false,
                );
                let dx_img = &mut dx[i * g.in_len()..(i + 1) * g.in_len()];
                col2im_cols(&mut cols, g, dx_img);
            }
        }
        (dwt, db)
    });
    let (dw, db) = sum_partials(&partials, g);
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The definition, in f64.
    fn naive_forward(x: &[f32], w: &[f32], b: &[f32], g: &ConvGeometry) -> Vec<f64> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut y = vec![0f64; g.batch * g.cout * oh * ow];
        for n in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = f64::from(b[co]);
                        for ci in 0..g.cin {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + ci) * g.h + iy as usize) * g.w
                                        + ix as usize];
                                    let wv = w[((co * g.cin + ci) * g.k + ky) * g.k + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        y[((n * g.cout + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.symmetric_f32()).collect()
    }

    fn geometries() -> Vec<ConvGeometry> {
        let g = |batch, cin, h, w, cout, k, stride, pad| ConvGeometry {
            batch,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
        };
        vec![
            g(3, 2, 7, 6, 5, 3, 1, 1),
            g(4, 3, 8, 8, 4, 3, 2, 1),
            g(2, 4, 6, 6, 3, 1, 2, 0),
            g(5, 1, 5, 7, 2, 3, 1, 0),
            g(1, 17, 9, 9, 33, 3, 1, 1),
            // "Same" stride-1 convolutions take the shifted-plane path: 5x5 and 1x1 kernels too.
            g(2, 3, 6, 5, 4, 5, 1, 2),
            g(2, 3, 4, 4, 2, 1, 1, 0),
            // Padding larger than the kernel needs, and a kernel as large as the image.
            g(2, 2, 3, 3, 3, 3, 1, 2),
            g(1, 2, 3, 3, 2, 3, 1, 0),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        let mut rng = SplitMix64::new(1);
        for g in geometries() {
            let x = values(&mut rng, g.batch * g.in_len());
            let w = values(&mut rng, g.cout * g.patch());
            let b = values(&mut rng, g.cout);
            let want = naive_forward(&x, &w, &b, &g);
            for threads in [1, 2, 3] {
                let got = forward(&x, &w, Some(&b), &g, threads);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-4, "{g:?}: forward off by {err}");
            }
        }
    }

    /// The in-place path of "same" convolutions computes the patch-matrix path's sums: the
    /// forward and the weight gradient bit for bit (same terms, same order), the input gradient
    /// to rounding (its terms are summed in another order).
    #[test]
    fn same_convolutions_match_the_patch_path() {
        let mut rng = SplitMix64::new(3);
        for g in geometries()
            .into_iter()
            .filter(|g| SameGrid::of(g).is_some())
        {
            let grid = SameGrid::of(&g).unwrap();
            let x = values(&mut rng, g.batch * g.in_len());
            let w = values(&mut rng, g.cout * g.patch());
            let b = values(&mut rng, g.cout);
            let dy = values(&mut rng, g.batch * g.out_len());
            for threads in [1, 2] {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let same = forward_same(&x, &w, &b, &g, grid, threads);
                let patches = forward_patches(&x, &w, &b, &g, threads);
                assert_eq!(bits(&same), bits(&patches), "{g:?} forward");
                let (dx1, dw1, db1) = backward_same(&x, &w, &dy, &g, grid, true, threads);
                let (dx2, dw2, db2) = backward_patches(&x, &w, &dy, &g, true, threads);
                assert_eq!(bits(&dw1), bits(&dw2), "{g:?} dw");
                assert_eq!(bits(&db1), bits(&db2), "{g:?} db");
                let err = dx1
                    .unwrap()
                    .iter()
                    .zip(&dx2.unwrap())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(err < 1e-5, "{g:?} dx off by {err}");
            }
        }
    }

    /// Gradients against the definition: `<dy, conv(x, w)>` is linear in each of x, w, b, so its
    /// derivative along a random direction equals a central difference of the f64 forward.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = SplitMix64::new(2);
        for g in geometries() {
            let x = values(&mut rng, g.batch * g.in_len());
            let w = values(&mut rng, g.cout * g.patch());
            let b = values(&mut rng, g.cout);
            let dy = values(&mut rng, g.batch * g.out_len());
            let objective = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                naive_forward(x, w, b, &g)
                    .iter()
                    .zip(&dy)
                    .map(|(y, d)| y * f64::from(*d))
                    .sum()
            };
            let (dx, dw, db) = backward(&x, &w, &dy, &g, true, 2);
            let dx = dx.unwrap();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| f64::from(*p) * f64::from(*q))
                    .sum()
            };
            // The objective is bilinear, so the difference along a direction is exact up to
            // rounding with any step; 1.0 keeps it well conditioned.
            let dir_x = values(&mut rng, x.len());
            let plus: Vec<f32> = x.iter().zip(&dir_x).map(|(a, d)| a + d).collect();
            let want = objective(&plus, &w, &b) - objective(&x, &w, &b);
            assert!(
                (dot(&dx, &dir_x) - want).abs() < 1e-3 * (1.0 + want.abs()),
                "{g:?} dx"
            );
            let dir_w = values(&mut rng, w.len());
            let plus: Vec<f32> = w.iter().zip(&dir_w).map(|(a, d)| a + d).collect();
            let want = objective(&x, &plus, &b) - objective(&x, &w, &b);
            assert!(
                (dot(&dw, &dir_w) - want).abs() < 1e-3 * (1.0 + want.abs()),
                "{g:?} dw"
            );
            let want_db: Vec<f64> = (0..g.cout)
                .map(|c| {
                    (0..g.batch)
                        .flat_map(|n| {
                            let s = (n * g.cout + c) * g.out_pixels();
                            dy[s..s + g.out_pixels()].iter().map(|v| f64::from(*v))
                        })
                        .sum()
                })
                .collect();
            for (a, b) in db.iter().zip(&want_db) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{g:?} db"
                );
            }
            // Same thread count, same result; no input gradient when not asked.
            let (none, dw2, _) = backward(&x, &w, &dy, &g, false, 2);
            assert!(none.is_none());
            assert_eq!(dw, dw2);
        }
    }
}

//! The encoder's search for permutation tables (see `crate::permute` for what they mean).
//!
//! The reference greedy chain (start at item 0, repeatedly go to the most similar unvisited item)
//! is O(N^2), which takes hours on 512x512 layers. [`greedy_chain`] computes exactly the same chain
//! with a k-d tree whose nodes keep the bounding box and lowest index of their *unvisited* points
//! only, so visited regions are skipped at once, pruning stays tight to the end of the chain, and
//! ties (duplicate kernels) are pruned too. Everything is single-threaded and deterministic.

use crate::permute::{Permutation, PermutationKind};

/// Searches the tables for one layer. `k` is the kernel size (1, 3, 5, 7...).
///
/// Kernels are compared by cosine similarity: a [`greedy_chain`] on L2-normalised kernels (a zero
/// kernel stays zero). `CrossFilter` chains all cout*cin kernels; `InFilter` chains the cin
/// kernels of each filter, then the filters by highest summed channel-aligned cosine
/// sum_c cos(W[f,c], W[g,c]) (ties to the lowest index).
///
/// For k == 1 the cosine of two scalars is only a sign, so 1x1 kernels are chained by raw value,
/// and the in-filter filter similarity is the cosine of the cin-long filter vectors.
pub fn search(
    weights: &[f32],
    cout: usize,
    cin: usize,
    k: usize,
    kind: PermutationKind,
) -> Permutation {
    let kk = k * k;
    debug_assert_eq!(weights.len(), cout * cin * kk, "weights: [cout, cin, k, k]");
    // k == 1: raw scalars (see above); a copy keeps the code paths uniform and is cheap.
    let kernels = || {
        if kk == 1 {
            weights.to_vec()
        } else {
            normalised(weights, kk)
        }
    };
    match kind {
        PermutationKind::None => Permutation::Identity,
        PermutationKind::CrossFilter => Permutation::CrossFilter {
            kernels: greedy_chain(&kernels(), cout * cin, kk),
        },
        PermutationKind::InFilter => {
            let points = kernels();
            let row = cin * kk;
            let mut channels = Vec::with_capacity(cout * cin);
            for f in 0..cout {
                channels.extend(greedy_chain(&points[f * row..(f + 1) * row], cin, kk));
            }
            // Summed channel-aligned cosines = dot product of the concatenated unit kernels.
            let (rows, dim) = if kk == 1 {
                (normalised(weights, cin), cin)
            } else {
                (points, row)
            };
            let gram = gram(&rows, cout, dim);
            // Negation is exact: lowest -similarity = highest similarity, same ties.
            let filters = scan_chain(cout, |i, j| -gram[i * cout + j]);
            Permutation::InFilter { filters, channels }
        }
    }
}

/// Rows of length `dim` scaled to unit L2 norm; zero or non-finite rows become zero vectors
/// (a zero vector is at distance 1 from every unit vector and has similarity 0 to everything).
fn normalised(values: &[f32], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    if dim == 0 {
        return out;
    }
    for (src, dst) in values.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        // f64 norm: no overflow/underflow for any f32 row.
        let norm = src
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 && norm.is_finite() {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (f64::from(s) / norm) as f32;
            }
        }
    }
    out
}

/// Gram matrix of `n` rows of length `dim` (n*n, row-major, exactly symmetric).
fn gram(rows: &[f32], n: usize, dim: usize) -> Vec<f32> {
    // Tiles of ROWS x ROWS pairs over COLS-wide column strips keep both row strips in L1/L2
    // (2 * 32 rows * 1 KiB) instead of streaming the whole matrix once per row.
    const ROWS: usize = 32;
    const COLS: usize = 256;
    let mut g = vec![0.0f32; n * n];
    for i0 in (0..n).step_by(ROWS) {
        let i1 = (i0 + ROWS).min(n);
        for j0 in (i0..n).step_by(ROWS) {
            let j1 = (j0 + ROWS).min(n);
            for c0 in (0..dim).step_by(COLS) {
                let c1 = (c0 + COLS).min(dim);
                for i in i0..i1 {
                    let a = &rows[i * dim + c0..i * dim + c1];
                    for j in j0.max(i)..j1 {
                        g[i * n + j] += dot(a, &rows[j * dim + c0..j * dim + c1]);
                    }
                }
            }
        }
    }
    for i in 0..n {
        for j in 0..i {
            g[i * n + j] = g[j * n + i];
        }
    }
    g
}

/// Dot product with 8 independent accumulators so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The greedy chain over `n` points of dimension `dim` (row-major `points`, len n*dim):
/// start at 0, repeatedly go to the nearest unvisited point (squared Euclidean distance,
/// ties to the lowest index). Returns the visiting order.
///
/// Exact: the result equals the O(n^2) scan's, ties included (distances are f32 sums in
/// dimension order, compared as (distance, index)). Non-finite coordinates are treated as 0 so
/// that every distance is comparable.
pub fn greedy_chain(points: &[f32], n: usize, dim: usize) -> Vec<u32> {
    debug_assert_eq!(points.len(), n * dim, "points must be n x dim");
    debug_assert!(u32::try_from(n).is_ok(), "indices must fit u32");
    // Below this a plain scan beats building a tree.
    const SMALL: usize = 64;
    if dim == 0 {
        return (0..n as u32).collect(); // all distances are 0: index order
    }
    let pts: Vec<f32> = points
        .iter()
        .map(|&x| if x.is_finite() { x } else { 0.0 })
        .collect();
    if n < SMALL {
        let row = |i: usize| &pts[i * dim..(i + 1) * dim];
        return scan_chain(n, |i, j| sq_dist(row(i), row(j)));
    }
    // Constant dimensions for the common kernel sizes let the distance loops unroll.
    match dim {
        1 => KdTree::<1>::chain(pts, dim),
        9 => KdTree::<9>::chain(pts, dim),
        25 => KdTree::<25>::chain(pts, dim),
        _ => KdTree::<0>::chain(pts, dim),
    }
}

/// O(n^2) greedy chain from item 0: repeatedly the unvisited item of lowest `cost(cur, j)`,
/// ties to the lowest index.
fn scan_chain(n: usize, cost: impl Fn(usize, usize) -> f32) -> Vec<u32> {
    let mut visited = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut cur = 0;
    while cur < n {
        visited[cur] = true;
        order.push(cur as u32);
        let mut best: Option<(f32, usize)> = None;
        for j in (0..n).filter(|&j| !visited[j]) {
            let c = cost(cur, j);
            // Strict `<` keeps the lowest index among equal costs.
            if best.is_none_or(|(bc, _)| c < bc) {
                best = Some((c, j));
            }
        }
        cur = best.map_or(n, |(_, j)| j);
    }
    order
}

/// Squared Euclidean distance, summed in dimension order.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        let e = x - y;
        s += e * e;
    }
    s
}

const NONE: u32 = u32::MAX;
/// Points per leaf (measured: 16 beats 4, 8 and 32 on 9-D data).
const LEAF: usize = 16;

#[derive(Clone, Copy)]
struct Node {
    /// First slot of the node's points (in tree order).
    start: u32,
    /// Leaves only: unvisited points, kept in slots start..start+count.
    count: u32,
    /// First of the two adjacent children (NONE for a leaf); children have larger ids.
    child: u32,
    parent: u32,
    /// Lowest original index among the unvisited points below (NONE if none): lets ties at
    /// equal distance (duplicates, e.g. the zero kernels of a pruned layer) be pruned too.
    min_id: u32,
}

impl Node {
    fn new(start: u32, count: u32, parent: u32) -> Self {
        Self {
            start,
            count,
            child: NONE,
            parent,
            min_id: NONE,
        }
    }
}

/// k-d tree over the unvisited points of a greedy chain. `D` is the point dimension, or 0 for
/// the run-time `dim`.
struct KdTree<const D: usize> {
    dim: usize,
    nodes: Vec<Node>,
    /// Per node, `lo[dim]` then `hi[dim]`: the box of its *unvisited* points, so pruning stays
    /// tight as the chain empties regions. An empty node has lo = +inf, hi = -inf, hence a
    /// distance bound of +inf: it is never entered once any candidate is known.
    bounds: Vec<f32>,
    /// Points in slot order, so a leaf scans contiguous memory.
    pts: Vec<f32>,
    /// Slot -> original index, original index -> slot, original index -> leaf.
    ids: Vec<u32>,
    slot: Vec<u32>,
    leaf: Vec<u32>,
    /// One box of scratch for `refit`.
    scratch: Vec<f32>,
}

impl<const D: usize> KdTree<D> {
    #[inline(always)]
    fn d(&self) -> usize {
        if D == 0 { self.dim } else { D }
    }

    /// Builds the tree over `points` (n x dim, finite) and walks the chain.
    fn chain(points: Vec<f32>, dim: usize) -> Vec<u32> {
        let n = points.len() / dim;
        let mut t = Self {
            dim,
            nodes: vec![Node::new(0, n as u32, NONE)],
            bounds: Vec::new(),
            pts: points,
            ids: (0..n as u32).collect(),
            slot: vec![0; n],
            leaf: vec![0; n],
            scratch: vec![0.0; 2 * dim],
        };
        let mut ids = std::mem::take(&mut t.ids);
        t.build(&mut ids, 0);
        t.pts = ids
            .iter()
            .flat_map(|&i| t.row(i as usize))
            .copied()
            .collect();
        t.ids = ids;
        for (s, &i) in t.ids.iter().enumerate() {
            t.slot[i as usize] = s as u32;
        }
        t.bounds = vec![0.0; t.nodes.len() * 2 * dim];
        // Children come after their parent, so a reverse sweep fits leaves before parents.
        for id in (0..t.nodes.len()).rev() {
            let node = t.nodes[id];
            if node.child == NONE {
                for &i in &t.ids[node.start as usize..(node.start + node.count) as usize] {
                    t.leaf[i as usize] = id as u32;
                }
            }
            t.refit(id);
        }

        let mut order = Vec::with_capacity(n);
        let mut q = vec![0.0f32; dim];
        let mut cur = 0;
        loop {
            order.push(cur as u32);
            if order.len() == n {
                return order;
            }
            q.copy_from_slice(t.row(t.slot[cur] as usize));
            t.remove(cur);
            let mut best = (f32::INFINITY, NONE);
            t.nearest(0, &q, &mut best);
            if best.1 == NONE {
                // Unreachable: any unvisited point beats the initial (+inf, NONE).
                return order;
            }
            cur = best.1 as usize;
        }
    }

    /// Row `i` of `pts` (original order during the build, slot order afterwards).
    #[inline]
    fn row(&self, i: usize) -> &[f32] {
        let d = self.d();
        &self.pts[i * d..(i + 1) * d]
    }

    /// Splits node `id` (holding the original indices `ids`) at the median of its widest
    /// dimension, recursively.
    fn build(&mut self, ids: &mut [u32], id: usize) {
        let (len, d) = (ids.len(), self.d());
        if len <= LEAF {
            return;
        }
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        for &i in ids.iter() {
            grow(&mut lo, &mut hi, self.row(i as usize));
        }
        let spread = |t: usize| hi[t] - lo[t];
        let axis = (0..d).max_by(|&a, &b| spread(a).total_cmp(&spread(b)));
        let axis = axis.unwrap_or(0);
        let key = |i: u32| self.pts[i as usize * d + axis];
        ids.select_nth_unstable_by(len / 2, |&a, &b| key(a).total_cmp(&key(b)));
        // Split at the median but keep equal keys on one side: duplicates (e.g. the zero kernels
        // of a pruned layer) then end in subtrees of their own with single-point boxes, so
        // other boxes no longer hide them at bound 0.
        let v = key(ids[len / 2]);
        let mut mid = partition(ids, |i| key(i).total_cmp(&v).is_lt());
        if mid == 0 {
            mid = partition(ids, |i| key(i).total_cmp(&v).is_le());
        }
        if mid == len {
            mid = len / 2; // all points equal (the widest axis has no spread)
        }
        let (start, c, mid32) = (self.nodes[id].start, self.nodes.len(), mid as u32);
        self.nodes.push(Node::new(start, mid32, id as u32));
        self.nodes
            .push(Node::new(start + mid32, (len - mid) as u32, id as u32));
        self.nodes[id].child = c as u32;
        let (left, right) = ids.split_at_mut(mid);
        self.build(left, c);
        self.build(right, c + 1);
    }

    /// Recomputes the box and `min_id` of `id` from its unvisited points (leaf) or its
    /// children; returns whether they changed (if not, no ancestor's change either).
    fn refit(&mut self, id: usize) -> bool {
        let (d, node) = (self.d(), self.nodes[id]);
        let (lo, hi) = self.scratch.split_at_mut(d);
        lo.fill(f32::INFINITY);
        hi.fill(f32::NEG_INFINITY);
        let min_id;
        if node.child == NONE {
            let (s, e) = (node.start as usize, (node.start + node.count) as usize);
            for p in self.pts[s * d..e * d].chunks_exact(d) {
                grow(lo, hi, p);
            }
            min_id = self.ids[s..e].iter().copied().min().unwrap_or(NONE);
        } else {
            let c = node.child as usize;
            min_id = self.nodes[c].min_id.min(self.nodes[c + 1].min_id);
            for b in self.bounds[c * 2 * d..(c + 2) * 2 * d].chunks_exact(2 * d) {
                // Union (an empty child's +inf..-inf box changes nothing).
                let (blo, bhi) = b.split_at(d);
                lo.iter_mut().zip(blo).for_each(|(l, &x)| *l = l.min(x));
                hi.iter_mut().zip(bhi).for_each(|(h, &x)| *h = h.max(x));
            }
        }
        let own = &mut self.bounds[id * 2 * d..(id + 1) * 2 * d];
        let changed = *own != *self.scratch || min_id != node.min_id;
        own.copy_from_slice(&self.scratch);
        self.nodes[id].min_id = min_id;
        changed
    }

    /// Marks original point `i` visited: swaps it out of its leaf's active range and shrinks
    /// the boxes up the tree.
    fn remove(&mut self, i: usize) {
        let d = self.d();
        let (leaf, s) = (self.leaf[i] as usize, self.slot[i] as usize);
        self.nodes[leaf].count -= 1;
        let last = (self.nodes[leaf].start + self.nodes[leaf].count) as usize;
        if s != last {
            let (a, b) = self.pts.split_at_mut(last * d);
            a[s * d..(s + 1) * d].swap_with_slice(&mut b[..d]);
            self.ids.swap(s, last);
            self.slot[self.ids[s] as usize] = s as u32;
            self.slot[self.ids[last] as usize] = last as u32;
        }
        let mut id = leaf as u32;
        while id != NONE && self.refit(id as usize) {
            id = self.nodes[id as usize].parent;
        }
    }

    /// Lower bounds on the distance from `q` to the boxes of children `c` and `c + 1`, computed
    /// together for instruction-level parallelism. Per dimension the gap is <= |q - p| for any
    /// p in the box and the terms are summed in [`sq_dist`]'s order, so (rounding being
    /// monotone) a bound never exceeds a computed point distance: the pruning is exact.
    #[inline]
    fn child_bounds(&self, c: usize, q: &[f32]) -> (f32, f32) {
        let d = self.d();
        let b = &self.bounds[c * 2 * d..(c + 2) * 2 * d];
        let (lo0, hi0, lo1, hi1) = (&b[..d], &b[d..2 * d], &b[2 * d..3 * d], &b[3 * d..]);
        let q = &q[..d]; // a constant length lets the loop unroll
        let (mut s0, mut s1) = (0.0f32, 0.0f32);
        for t in 0..d {
            // Branchless: the branches were unpredictable. At most one term is non-zero.
            let g0 = pos(lo0[t] - q[t]) + pos(q[t] - hi0[t]);
            let g1 = pos(lo1[t] - q[t]) + pos(q[t] - hi1[t]);
            s0 += g0 * g0;
            s1 += g1 * g1;
        }
        (s0, s1)
    }

    /// Improves `best` = (distance, original index) with the unvisited points under `id`
    /// (ties to the lowest index).
    fn nearest(&self, id: usize, q: &[f32], best: &mut (f32, u32)) {
        let node = self.nodes[id];
        if node.child == NONE {
            let (s, e) = (node.start as usize, (node.start + node.count) as usize);
            let (d, q) = (self.d(), &q[..self.d()]);
            for (p, &i) in self.pts[s * d..e * d].chunks_exact(d).zip(&self.ids[s..e]) {
                let dist = sq_dist(q, p);
                if dist < best.0 || (dist == best.0 && i < best.1) {
                    *best = (dist, i);
                }
            }
            return;
        }
        let c = node.child as usize;
        let (b0, b1) = self.child_bounds(c, q);
        let (m0, m1) = (self.nodes[c].min_id, self.nodes[c + 1].min_id);
        // Nearer child first (lower indices on ties): it most likely tightens `best` first.
        let mut visit = [(b0, m0, c), (b1, m1, c + 1)];
        if b1 < b0 || (b1 == b0 && m1 < m0) {
            visit.swap(0, 1);
        }
        for (bound, min_id, child) in visit {
            // A box exactly at the best distance may still hold a lower-index tie.
            if bound < best.0 || (bound == best.0 && min_id < best.1) {
                self.nearest(child, q, best);
            }
        }
    }
}

/// max(x, 0) as one `maxss` (`f32::max` adds NaN handling; x is never NaN here).
#[inline(always)]
fn pos(x: f32) -> f32 {
    if x > 0.0 { x } else { 0.0 }
}

/// Moves the ids satisfying `pred` to the front; returns how many there are.
fn partition(ids: &mut [u32], pred: impl Fn(u32) -> bool) -> usize {
    let mut k = 0;
    for j in 0..ids.len() {
        if pred(ids[j]) {
            ids.swap(k, j);
            k += 1;
        }
    }
    k
}

/// Extends the box (lo, hi) to contain `p`.
#[inline]
fn grow(lo: &mut [f32], hi: &mut [f32], p: &[f32]) {
    for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(p) {
        *l = l.min(x);
        *h = h.max(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::permute::is_permutation;
    use crate::rng::SplitMix64 as Rng;

    /// The O(n^2) reference, written independently of the module's scan.
    fn naive_chain(points: &[f32], n: usize, dim: usize) -> Vec<u32> {
        let dist = |a: usize, b: usize| {
            (0..dim).fold(0.0f32, |s, t| {
                let e = points[a * dim + t] - points[b * dim + t];
                s + e * e
            })
        };
        let mut visited = vec![false; n];
        let mut order = Vec::new();
        let mut cur = 0;
        for _ in 0..n {
            visited[cur] = true;
            order.push(cur as u32);
            let mut best = (f32::INFINITY, usize::MAX);
            for (j, _) in visited.iter().enumerate().filter(|(_, v)| !**v) {
                if best.1 == usize::MAX || dist(cur, j) < best.0 {
                    best = (dist(cur, j), j);
                }
            }
            cur = best.1;
        }
        order
    }

    /// Kernels closer to trained ones than iid noise: low-rank, mixes of 4 shared random bases
    /// with Gaussian coefficients, plus a little noise and a per-filter scale.
    fn correlated_weights(rng: &mut Rng, cout: usize, cin: usize, kk: usize) -> Vec<f32> {
        let bases: Vec<f32> = (0..4 * kk).map(|_| rng.rough_gaussian()).collect();
        let mut w = Vec::with_capacity(cout * cin * kk);
        for _ in 0..cout {
            let scale = 0.5 + rng.symmetric_f32().abs();
            for _ in 0..cin {
                let c: Vec<f32> = (0..4).map(|_| rng.rough_gaussian()).collect();
                for t in 0..kk {
                    let v: f32 = (0..4).map(|r| c[r] * bases[r * kk + t]).sum();
                    w.push(scale * (v + 0.1 * rng.rough_gaussian()));
                }
            }
        }
        w
    }

    #[test]
    fn greedy_chain_matches_naive() {
        let mut rng = Rng::new(1);
        for dim in [1, 2, 3, 9, 25] {
            for n in [0, 1, 2, 5, 63, 64, 65, 200, 1000, 2500] {
                for variant in 0..5 {
                    let pts = test_points(&mut rng, n, dim, variant);
                    let got = greedy_chain(&pts, n, dim);
                    let want = naive_chain(&pts, n, dim);
                    assert_eq!(got, want, "n={n} dim={dim} variant={variant}");
                }
            }
        }
    }

    /// Point sets for the exactness test.
    fn test_points(rng: &mut Rng, n: usize, dim: usize, variant: u32) -> Vec<f32> {
        match variant {
            // Continuous values.
            0 => (0..n * dim).map(|_| rng.symmetric_f32()).collect(),
            // Few distinct values: many exact duplicates and distance ties.
            1 => (0..n * dim).map(|_| rng.below(3) as f32 - 1.0).collect(),
            // Clustered, correlated data.
            2 => correlated_weights(rng, 1, n, dim),
            // Unit vectors with some (3) or mostly (4) zero vectors, as `search` produces for
            // a pruned layer.
            _ => {
                let raw: Vec<f32> = (0..n * dim).map(|_| rng.rough_gaussian()).collect();
                let mut pts = normalised(&raw, dim);
                for row in pts.chunks_exact_mut(dim) {
                    if rng.below(10) < if variant == 3 { 2 } else { 9 } {
                        row.fill(0.0);
                    }
                }
                pts
            }
        }
    }

    #[test]
    fn greedy_chain_edge_cases() {
        assert_eq!(greedy_chain(&[], 3, 0), vec![0, 1, 2]);
        assert_eq!(greedy_chain(&[0.0, 5.0, 1.0, -0.5], 4, 1), vec![0, 3, 2, 1]);
        // All points equal: every distance ties, so index order.
        let same = vec![0.25f32; 300 * 2];
        assert_eq!(greedy_chain(&same, 300, 2), (0..300).collect::<Vec<u32>>());
        // Non-finite coordinates do not break the chain.
        let mut pts: Vec<f32> = (0..200).map(|i| i as f32).collect();
        pts[10] = f32::NAN;
        pts[20] = f32::INFINITY;
        assert!(is_permutation(&greedy_chain(&pts, 200, 1), 200));
    }

    #[test]
    fn search_gives_valid_tables() {
        let mut rng = Rng::new(2);
        let shapes = [(1, 1), (1, 7), (7, 1), (3, 5), (16, 16), (40, 70), (70, 40)];
        for &(cout, cin) in &shapes {
            for k in [1, 3, 5] {
                let w: Vec<f32> = (0..cout * cin * k * k)
                    .map(|_| rng.rough_gaussian())
                    .collect();
                for kind in [
                    PermutationKind::None,
                    PermutationKind::InFilter,
                    PermutationKind::CrossFilter,
                ] {
                    let p = search(&w, cout, cin, k, kind);
                    assert!(p.is_valid(cout, cin), "{cout}x{cin}x{k} {kind:?}");
                    assert_eq!(p, search(&w, cout, cin, k, kind), "deterministic");
                    let mut seen: Vec<usize> = (0..cout)
                        .flat_map(|a| (0..cin).map(move |b| (a, b)))
                        .map(|(a, b)| p.original_kernel(cin, a, b))
                        .collect();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..cout * cin).collect::<Vec<_>>());
                }
            }
        }
        assert!(search(&[], 0, 5, 3, PermutationKind::CrossFilter).is_valid(0, 5));
        assert!(search(&[], 4, 0, 3, PermutationKind::InFilter).is_valid(4, 0));
    }

    #[test]
    fn cross_filter_is_cosine_chain() {
        let mut rng = Rng::new(3);
        let (cout, cin, k) = (12, 9, 3);
        let mut w: Vec<f32> = (0..cout * cin * 9).map(|_| rng.rough_gaussian()).collect();
        w[5 * 9..6 * 9].fill(0.0);
        let Permutation::CrossFilter { kernels } =
            search(&w, cout, cin, k, PermutationKind::CrossFilter)
        else {
            panic!("wrong variant");
        };
        assert_eq!(kernels, naive_chain(&normalised(&w, 9), cout * cin, 9));
        // Scaling a kernel leaves cosine similarity, hence the order, unchanged.
        let mut scaled = w.clone();
        scaled[9..18].iter_mut().for_each(|x| *x *= 4.0);
        assert_eq!(
            search(&scaled, cout, cin, k, PermutationKind::CrossFilter),
            Permutation::CrossFilter { kernels }
        );
        // 1x1 layers chain raw values.
        let p = search(
            &[0.0, 5.0, 1.0, -0.5],
            2,
            2,
            1,
            PermutationKind::CrossFilter,
        );
        assert_eq!(
            p,
            Permutation::CrossFilter {
                kernels: vec![0, 3, 2, 1]
            }
        );
    }

    #[test]
    fn in_filter_orders_filters_by_summed_cosine() {
        let mut rng = Rng::new(4);
        let a: Vec<f32> = (0..2 * 9).map(|_| rng.rough_gaussian()).collect();
        let noise: Vec<f32> = (0..2 * 9).map(|_| 0.3 * rng.rough_gaussian()).collect();
        // Filter 2 = 2a (summed cosine 2 with filter 0), 3 = a + noise (slightly less), 1 = -a.
        let mut w = a.clone();
        w.extend(a.iter().map(|x| -x));
        w.extend(a.iter().map(|x| 2.0 * x));
        w.extend(a.iter().zip(&noise).map(|(x, e)| x + e));
        let Permutation::InFilter { filters, channels } =
            search(&w, 4, 2, 3, PermutationKind::InFilter)
        else {
            panic!("wrong variant");
        };
        assert_eq!(filters, vec![0, 2, 3, 1]);
        assert_eq!(channels, vec![0, 1, 0, 1, 0, 1, 0, 1]);
        // Channel rows are per-filter cosine chains.
        let (cout, cin) = (5, 30);
        let w: Vec<f32> = (0..cout * cin * 9).map(|_| rng.rough_gaussian()).collect();
        let Permutation::InFilter { channels, .. } =
            search(&w, cout, cin, 3, PermutationKind::InFilter)
        else {
            panic!("wrong variant");
        };
        let unit = normalised(&w, 9);
        for f in 0..cout {
            let row = &unit[f * cin * 9..(f + 1) * cin * 9];
            assert_eq!(&channels[f * cin..(f + 1) * cin], naive_chain(row, cin, 9));
        }
    }

    /// Timings: `cargo test --release -- --ignored --nocapture timings`.
    #[test]
    #[ignore]
    fn timings() {
        let mut rng = Rng::new(5);
        let cases = [
            (512, 512, 3, PermutationKind::CrossFilter),
            (64, 64, 3, PermutationKind::CrossFilter),
            (512, 512, 3, PermutationKind::InFilter),
            (512, 512, 1, PermutationKind::CrossFilter),
            (512, 256, 1, PermutationKind::InFilter),
        ];
        for (cout, cin, k, kind) in cases {
            let len = cout * cin * k * k;
            for data in [
                "uniform",
                "gaussian",
                "correlated",
                "half-pruned",
                "ternary",
            ] {
                let mut w: Vec<f32> = match data {
                    "uniform" => (0..len).map(|_| rng.symmetric_f32()).collect(),
                    "correlated" => correlated_weights(&mut rng, cout, cin, k * k),
                    "ternary" => (0..len).map(|_| rng.below(3) as f32 - 1.0).collect(),
                    _ => (0..len).map(|_| rng.rough_gaussian()).collect(),
                };
                if data == "half-pruned" {
                    for kernel in w.chunks_exact_mut(k * k) {
                        if rng.below(2) == 0 {
                            kernel.fill(0.0);
                        }
                    }
                }
                let t = Instant::now();
                let p = search(&w, cout, cin, k, kind);
                let secs = t.elapsed().as_secs_f64();
                assert!(p.is_valid(cout, cin));
                println!("{kind:?} {cout}x{cin}x{k}x{k} {data}: {secs:.3} s");
            }
        }
    }
}

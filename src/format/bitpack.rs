//! Fixed-width bit packing of permutation tables (spec §5.3): entry `i` of a block occupies bits
//! `[i w, (i+1) w)` of the block, bit `j` being bit `j % 8` of byte `j / 8`; blocks end on a
//! byte boundary, padding bits are zero.

use crate::error::{Error, Result};
use crate::permute::Permutation;

/// `ceil(log2 n)` bits: enough for values `0..n` (0 bits when `n <= 1`).
pub fn bit_width(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

fn block_bytes(count: u64, n: u64) -> Option<u64> {
    count
        .checked_mul(u64::from(bit_width(n)))
        .and_then(|bits| bits.checked_add(7))
        .map(|b| b / 8)
}

/// Bytes the tables of a `[cout, cin]` layer take in `PERM`.
pub fn permutation_bytes(
    kind: crate::permute::PermutationKind,
    cout: u64,
    cin: u64,
) -> Option<u64> {
    use crate::permute::PermutationKind as K;
    match kind {
        K::None => Some(0),
        K::InFilter => {
            let rows = block_bytes(cin, cin)?.checked_mul(cout)?;
            block_bytes(cout, cout)?.checked_add(rows)
        }
        K::CrossFilter => block_bytes(cout.checked_mul(cin)?, cout.checked_mul(cin)?),
    }
}

pub(crate) fn pack_block(values: &[u32], n: u64, out: &mut Vec<u8>) {
    let w = bit_width(n);
    let start = out.len();
    let total_bits = values.len() as u64 * u64::from(w);
    out.resize(start + total_bits.div_ceil(8) as usize, 0);
    let block = &mut out[start..];
    let mut bit = 0u64;
    for &v in values {
        for b in 0..w {
            if (v >> b) & 1 == 1 {
                let j = bit + u64::from(b);
                block[(j / 8) as usize] |= 1 << (j % 8);
            }
        }
        bit += u64::from(w);
    }
}

/// Unpacks `count` entries of `bit_width(n)` bits and checks they form a permutation of `0..n`
/// (so `count == n` is required by the caller).
pub(crate) fn unpack_permutation(block: &[u8], count: usize, n: u64) -> Result<Vec<u32>> {
    let w = bit_width(n);
    let mut seen = vec![false; count];
    let mut out = Vec::with_capacity(count);
    let mut bit = 0u64;
    for _ in 0..count {
        let mut v = 0u64;
        for b in 0..w {
            let j = bit + u64::from(b);
            let byte = block.get((j / 8) as usize).copied().unwrap_or(0);
            v |= u64::from((byte >> (j % 8)) & 1) << b;
        }
        bit += u64::from(w);
        let slot = seen
            .get_mut(v as usize)
            .filter(|s| !**s)
            .ok_or(Error::InvalidPermutation {
                layer: String::new(),
            })?;
        *slot = true;
        out.push(v as u32);
    }
    // Padding bits of the last byte must be zero (one canonical encoding).
    let used = bit;
    let total = block.len() as u64 * 8;
    for j in used..total {
        if (block[(j / 8) as usize] >> (j % 8)) & 1 == 1 {
            return Err(Error::malformed("PERM", "non-zero padding bits"));
        }
    }
    Ok(out)
}

/// Appends the tables of one layer.
pub(crate) fn pack_permutation(p: &Permutation, cout: usize, cin: usize, out: &mut Vec<u8>) {
    match p {
        Permutation::Identity => {}
        Permutation::InFilter { filters, channels } => {
            pack_block(filters, cout as u64, out);
            for row in channels.chunks(cin.max(1)) {
                pack_block(row, cin as u64, out);
            }
        }
        Permutation::CrossFilter { kernels } => pack_block(kernels, (cout * cin) as u64, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(bit_width(0), 0);
        assert_eq!(bit_width(1), 0);
        assert_eq!(bit_width(2), 1);
        assert_eq!(bit_width(3), 2);
        assert_eq!(bit_width(16), 4);
        assert_eq!(bit_width(17), 5);
        assert_eq!(bit_width(64 * 64), 12);
    }

    #[test]
    fn pack_unpack_round_trip() {
        for n in [1usize, 2, 3, 5, 16, 17, 100] {
            let perm: Vec<u32> = (0..n as u32).rev().collect();
            let mut buf = Vec::new();
            pack_block(&perm, n as u64, &mut buf);
            assert_eq!(buf.len() as u64, block_bytes(n as u64, n as u64).unwrap());
            assert_eq!(unpack_permutation(&buf, n, n as u64).unwrap(), perm);
        }
    }

    #[test]
    fn rejects_duplicates_and_out_of_range() {
        let mut buf = Vec::new();
        pack_block(&[0, 0, 1], 3, &mut buf);
        assert!(matches!(
            unpack_permutation(&buf, 3, 3),
            Err(Error::InvalidPermutation { .. })
        ));
        let mut buf = Vec::new();
        pack_block(&[0, 1, 3], 3, &mut buf); // 3 fits in 2 bits but is out of range
        assert!(unpack_permutation(&buf, 3, 3).is_err());
    }
}

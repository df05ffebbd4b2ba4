//! Checked little-endian cursor over untrusted bytes, and its writing counterpart.

use crate::error::{Error, Result};

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    section: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], section: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            section,
        }
    }

    pub fn err(&self, detail: impl Into<String>) -> Error {
        Error::malformed(self.section, detail)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "needs {n} more bytes at offset {}, only {} left",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A reserved field: must be zero so that future versions can give it a meaning.
    pub fn zeros(&mut self, n: usize, what: &str) -> Result<()> {
        if self.bytes(n)?.iter().any(|&b| b != 0) {
            return Err(self.err(format!("reserved field {what} is not zero")));
        }
        Ok(())
    }

    /// A UTF-8 string with a u16 (`wide == false`) or u32 length prefix, at most `max` bytes.
    pub fn string(&mut self, wide: bool, max: usize) -> Result<String> {
        let len = if wide {
            self.u32()? as usize
        } else {
            self.u16()? as usize
        };
        if len > max {
            return Err(self.err(format!("string of {len} bytes exceeds {max}")));
        }
        let raw = self.bytes(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    /// Little-endian f32 values.
    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let len = n
            .checked_mul(4)
            .ok_or(Error::Overflow("predictor weight bytes"))?;
        Ok(le_f32s(self.bytes(len)?))
    }

    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// Little-endian f32 values of `bytes` (a trailing partial value is ignored).
pub fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Length-prefixed UTF-8; the caller has checked the length fits the prefix.
    pub fn string(&mut self, s: &str, wide: bool) {
        if wide {
            self.u32(s.len() as u32);
        } else {
            self.u16(s.len() as u16);
        }
        self.bytes(s.as_bytes());
    }
}

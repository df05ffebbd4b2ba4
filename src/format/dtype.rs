//! Tensor dtype codes stored in `.nern` (spec §5.4). Only whole-byte dtypes are supported.

use crate::error::{Error, Result};

/// A safetensors dtype that `.nern` can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorDtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    F8E4M3,
    F8E5M2,
}

const TABLE: [(TensorDtype, u8, &str, usize); 15] = [
    (TensorDtype::Bool, 1, "BOOL", 1),
    (TensorDtype::U8, 2, "U8", 1),
    (TensorDtype::I8, 3, "I8", 1),
    (TensorDtype::I16, 4, "I16", 2),
    (TensorDtype::U16, 5, "U16", 2),
    (TensorDtype::F16, 6, "F16", 2),
    (TensorDtype::Bf16, 7, "BF16", 2),
    (TensorDtype::I32, 8, "I32", 4),
    (TensorDtype::U32, 9, "U32", 4),
    (TensorDtype::F32, 10, "F32", 4),
    (TensorDtype::F64, 11, "F64", 8),
    (TensorDtype::I64, 12, "I64", 8),
    (TensorDtype::U64, 13, "U64", 8),
    (TensorDtype::F8E4M3, 14, "F8_E4M3", 1),
    (TensorDtype::F8E5M2, 15, "F8_E5M2", 1),
];

impl TensorDtype {
    fn row(self) -> &'static (TensorDtype, u8, &'static str, usize) {
        // Every variant is in TABLE (tested below), so the fallback is never taken.
        TABLE.iter().find(|r| r.0 == self).unwrap_or(&TABLE[0])
    }
    pub fn code(self) -> u8 {
        self.row().1
    }
    pub fn name(self) -> &'static str {
        self.row().2
    }
    pub fn size(self) -> usize {
        self.row().3
    }
    pub fn from_code(code: u8) -> Result<Self> {
        TABLE
            .iter()
            .find(|r| r.1 == code)
            .map(|r| r.0)
            .ok_or(Error::UnknownDtypeCode(code))
    }

    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        use safetensors::Dtype as D;
        Some(match d {
            D::BOOL => TensorDtype::Bool,
            D::U8 => TensorDtype::U8,
            D::I8 => TensorDtype::I8,
            D::I16 => TensorDtype::I16,
            D::U16 => TensorDtype::U16,
            D::F16 => TensorDtype::F16,
            D::BF16 => TensorDtype::Bf16,
            D::I32 => TensorDtype::I32,
            D::U32 => TensorDtype::U32,
            D::F32 => TensorDtype::F32,
            D::F64 => TensorDtype::F64,
            D::I64 => TensorDtype::I64,
            D::U64 => TensorDtype::U64,
            D::F8_E4M3 => TensorDtype::F8E4M3,
            D::F8_E5M2 => TensorDtype::F8E5M2,
            _ => return None,
        })
    }

    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as D;
        match self {
            TensorDtype::Bool => D::BOOL,
            TensorDtype::U8 => D::U8,
            TensorDtype::I8 => D::I8,
            TensorDtype::I16 => D::I16,
            TensorDtype::U16 => D::U16,
            TensorDtype::F16 => D::F16,
            TensorDtype::Bf16 => D::BF16,
            TensorDtype::I32 => D::I32,
            TensorDtype::U32 => D::U32,
            TensorDtype::F32 => D::F32,
            TensorDtype::F64 => D::F64,
            TensorDtype::I64 => D::I64,
            TensorDtype::U64 => D::U64,
            TensorDtype::F8E4M3 => D::F8_E4M3,
            TensorDtype::F8E5M2 => D::F8_E5M2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for row in TABLE {
            assert_eq!(TensorDtype::from_code(row.1).unwrap(), row.0);
            assert_eq!(row.0.code(), row.1);
            assert_eq!(
                TensorDtype::from_safetensors(row.0.to_safetensors()),
                Some(row.0)
            );
            assert_eq!(row.0.size() * 8, row.0.to_safetensors().bitsize());
        }
        assert!(matches!(
            TensorDtype::from_code(0),
            Err(Error::UnknownDtypeCode(0))
        ));
        assert!(TensorDtype::from_code(16).is_err());
    }
}

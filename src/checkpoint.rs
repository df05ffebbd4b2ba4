//! Safetensors checkpoints: parsing a source checkpoint (validated by the safetensors crate) and
//! writing a decoded one in the byte layout spec §6.4 makes normative.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{RawTensor, TensorDtype};

/// A parsed checkpoint: tensors in the file's order plus its `__metadata__`.
pub struct Checkpoint<'a> {
    pub tensors: Vec<RawTensor<'a>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Parses and validates a safetensors buffer (the safetensors crate checks offsets and lengths).
pub fn parse_safetensors<'a>(path: &Path, buf: &'a [u8]) -> Result<Checkpoint<'a>> {
    let bad = |detail: String| Error::Safetensors {
        path: path.to_path_buf(),
        detail,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(buf).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(buf).map_err(|e| bad(e.to_string()))?;
    let mut tensors = Vec::new();
    // Keep the file's data order: offsets ascending.
    let mut views: Vec<_> = st.iter().collect();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    for (name, view) in views {
        let dtype =
            TensorDtype::from_safetensors(view.dtype()).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
                why: "sub-byte dtypes cannot be carried by .nern version 1",
            })?;
        tensors.push(RawTensor {
            name: name.to_string(),
            dtype,
            shape: view.shape().iter().map(|&d| d as u64).collect(),
            bytes: view.data(),
            storage: crate::format::PassStorage::Verbatim,
        });
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(Checkpoint { tensors, metadata })
}

/// Orders names so that `layer1.10` follows `layer1.9` (network order for the usual layouts).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x, y) {
            ((true, nx), (true, ny)) => {
                let (tx, ty) = (nx.trim_start_matches('0'), ny.trim_start_matches('0'));
                tx.len()
                    .cmp(&ty.len())
                    .then(tx.cmp(ty))
                    .then(nx.len().cmp(&ny.len()))
            }
            ((_, sx), (_, sy)) => sx.cmp(sy),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

/// Whether a tensor is a convolution weight the predictor covers: 4-D, square odd kernel.
pub fn is_predictable(t: &RawTensor<'_>) -> bool {
    t.shape.len() == 4
        && t.shape[2] == t.shape[3]
        && t.shape[2] % 2 == 1
        && t.shape[2] <= 31
        && t.shape[0] > 0
        && t.shape[1] > 0
        && u32::try_from(t.shape[0]).is_ok()
        && u32::try_from(t.shape[1]).is_ok()
}

/// Reads an F32 tensor's values (little-endian), rejecting NaN and infinities.
pub fn f32_values(t: &RawTensor<'_>) -> Result<Vec<f32>> {
    if t.dtype != TensorDtype::F32 {
        return Err(Error::UnsupportedDtype {
            tensor: t.name.clone(),
            dtype: t.dtype.name().into(),
            why: "predicted convolution weights must be F32 in format version 1",
        });
    }
    let v = crate::format::le_f32s(t.bytes);
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            tensor: t.name.clone(),
        });
    }
    Ok(v)
}

/// A tensor of a decoded checkpoint, ready to write.
pub struct OutTensor<'a> {
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    pub bytes: OutBytes<'a>,
}

/// Predicted weights stay `f32` (no byte copy); passthrough bytes borrow from the input map.
pub enum OutBytes<'a> {
    F32(Vec<f32>),
    Raw(&'a [u8]),
}

impl OutTensor<'_> {
    /// The little-endian bytes of the tensor's data.
    fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.bytes {
            OutBytes::F32(v) => f32_le_bytes(v),
            OutBytes::Raw(b) => std::borrow::Cow::Borrowed(b),
        }
    }
}

/// Little-endian bytes of `data`: a view on little-endian machines, a copy elsewhere.
fn f32_le_bytes(data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no padding, u8 has alignment 1 and every byte is a valid u8; the view
        // covers exactly the slice's memory and borrows it.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        })
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Rank of a dtype in the output's tensor order (spec §6.4: the safetensors crate's order).
fn dtype_rank(d: TensorDtype) -> u8 {
    use TensorDtype as T;
    match d {
        T::U64 => 0,
        T::I64 => 1,
        T::F64 => 2,
        T::F32 => 3,
        T::U32 => 4,
        T::I32 => 5,
        T::Bf16 => 6,
        T::F16 => 7,
        T::U16 => 8,
        T::I16 => 9,
        T::F8E4M3 => 10,
        T::F8E5M2 => 11,
        T::I8 => 12,
        T::U8 => 13,
        T::Bool => 14,
    }
}

/// The header of spec §6.4 (compact JSON, metadata keys ascending, padded with spaces to a
/// multiple of 8) for `tensors` in output order.
fn safetensors_header(
    tensors: &[&(String, OutTensor<'_>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut h = String::from("{");
    let mut first = true;
    if let Some(m) = metadata {
        // A BTreeMap serialises in ascending key order; serde_json escapes as §6.4 specifies.
        h += "\"__metadata__\":";
        h += &json(m)?;
        first = false;
    }
    let mut offset = 0u64;
    for (name, t) in tensors {
        if !first {
            h.push(',');
        }
        first = false;
        let len = t.bytes().len() as u64;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        h += &format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json(name)?,
            t.dtype.name(),
            shape.join(","),
            offset,
            offset + len
        );
        offset += len;
    }
    h.push('}');
    // The safetensors format's readers (the crate, PyTorch's loader) refuse larger headers.
    const MAX_HEADER: u64 = 100_000_000;
    if h.len() as u64 > MAX_HEADER {
        return Err(Error::LimitExceeded {
            what: "safetensors header bytes",
            value: h.len() as u64,
            limit: MAX_HEADER,
            hint: "",
        });
    }
    let mut bytes = h.into_bytes();
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// Compact JSON of `v` (serde_json's escapes are the ones §6.4 specifies).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Named tensors in output order.
type Ordered<'t, 'a> = Vec<&'t (String, OutTensor<'a>)>;

/// Tensors in output order (dtype rank, then name bytewise) and the header of spec §6.4.
fn layout<'t, 'a>(
    tensors: &'t [(String, OutTensor<'a>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(Ordered<'t, 'a>, Vec<u8>)> {
    let mut order: Vec<&(String, OutTensor<'_>)> = tensors.iter().collect();
    order.sort_by(|(na, a), (nb, b)| {
        dtype_rank(a.dtype)
            .cmp(&dtype_rank(b.dtype))
            .then_with(|| na.as_bytes().cmp(nb.as_bytes()))
    });
    let header = safetensors_header(&order, metadata)?;
    Ok((order, header))
}

/// The size prefix, the header and every tensor's data, in order.
fn write_parts(
    out: &mut impl std::io::Write,
    order: &[&(String, OutTensor<'_>)],
    header: &[u8],
) -> std::io::Result<()> {
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    for (_, t) in order {
        out.write_all(&t.bytes())?;
    }
    out.flush()
}

/// A safetensors checkpoint in memory, byte for byte as [`write_safetensors`] writes it.
pub fn safetensors_bytes(
    tensors: &[(String, OutTensor<'_>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let (order, header) = layout(tensors, metadata)?;
    let mut out = Vec::new();
    write_parts(&mut out, &order, &header)
        .map_err(|e| Error::InvalidArgument(format!("in-memory write: {e}")))?;
    Ok(out)
}

/// Writes a safetensors checkpoint to `path` atomically, byte for byte as spec §6.4 specifies
/// (tensors by dtype rank then name, metadata keys ascending, header padded to 8).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, OutTensor<'_>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let (order, header) = layout(tensors, metadata)?;
    match crate::store::Location::from_arg(path)? {
        crate::store::Location::Local(local) => crate::io::write_atomic_with(&local, |file, _| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            write_parts(&mut out, &order, &header).map_err(|e| Error::io(path, e))
        }),
        // An object is written by one PUT of the whole file.
        #[allow(unreachable_patterns)]
        remote => {
            let mut bytes = Vec::new();
            write_parts(&mut bytes, &order, &header).map_err(|e| Error::io(path, e))?;
            remote.write(&bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_follows_the_network() {
        let mut names = vec![
            "layer1.10.conv1.weight",
            "layer1.2.conv1.weight",
            "conv1.weight",
            "layer1.1.conv2.weight",
            "layer1.1.conv1.weight",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "conv1.weight",
                "layer1.1.conv1.weight",
                "layer1.1.conv2.weight",
                "layer1.2.conv1.weight",
                "layer1.10.conv1.weight"
            ]
        );
    }
}

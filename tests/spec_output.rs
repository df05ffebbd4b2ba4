//! Spec §6.3-6.4: the decoded safetensors file, byte for byte. The expected bytes are built here
//! from the spec's rules alone (tensor order, compact JSON with its escapes, space padding, packed
//! data) and compared with what `nernc::decode::decode_file` writes, for the golden files and for
//! crafted files covering every dtype code, JSON escapes, zero passthrough tensors, absent / empty
//! `__metadata__`, and permutation kind "none".

mod common;
#[path = "common/craft.rs"]
#[allow(dead_code)]
mod craft;
use common::*;
use craft::*;

use std::collections::BTreeMap;

use nernc::format::{Container, Limits, read_container};

/// Dtype codes of §5.4: (code, safetensors name, element bytes).
const DTYPES: [(u8, &str, u64); 15] = [
    (1, "BOOL", 1),
    (2, "U8", 1),
    (3, "I8", 1),
    (4, "I16", 2),
    (5, "U16", 2),
    (6, "F16", 2),
    (7, "BF16", 2),
    (8, "I32", 4),
    (9, "U32", 4),
    (10, "F32", 4),
    (11, "F64", 8),
    (12, "I64", 8),
    (13, "U64", 8),
    (14, "F8_E4M3", 1),
    (15, "F8_E5M2", 1),
];

/// §6.4: the order of dtypes in the output, first to last.
const OUTPUT_ORDER: [&str; 15] = [
    "U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2",
    "I8", "U8", "BOOL",
];

fn golden_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture("golden").join(format!("{name}.nern"))).unwrap()
}

/// One output tensor as the spec describes it; `bytes` is known for passthrough tensors.
struct Out {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    len: u64,
    bytes: Option<Vec<u8>>,
}

/// §6.4 JSON string: `"` and `\` escaped, \b \f \n \r \t short, other C0 controls as \u00xx
/// (lowercase hex), everything else (DEL, non-ASCII UTF-8, `/`) verbatim.
fn json_string(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The whole expected file, except the data of predicted tensors (their ranges are returned).
fn expected(
    mut tensors: Vec<Out>,
    meta: Option<&BTreeMap<String, String>>,
) -> (Vec<u8>, Vec<(String, std::ops::Range<usize>)>) {
    let rank = |d: &str| OUTPUT_ORDER.iter().position(|o| *o == d).unwrap();
    tensors.sort_by(|a, b| {
        rank(a.dtype)
            .cmp(&rank(b.dtype))
            .then(a.name.as_bytes().cmp(b.name.as_bytes()))
    });
    let mut fields = Vec::new();
    if let Some(m) = meta {
        let pairs: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        fields.push(format!("\"__metadata__\":{{{}}}", pairs.join(",")));
    }
    let mut offset = 0u64;
    for t in &tensors {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        fields.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_string(&t.name),
            t.dtype,
            shape.join(","),
            offset,
            offset + t.len
        ));
        offset += t.len;
    }
    let mut header = format!("{{{}}}", fields.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    let mut predicted = Vec::new();
    for t in tensors {
        match t.bytes {
            Some(b) => file.extend_from_slice(&b),
            None => {
                predicted.push((t.name, file.len()..file.len() + t.len as usize));
                file.resize(file.len() + t.len as usize, 0);
            }
        }
    }
    (file, predicted)
}

fn dtype_name(d: nernc::format::TensorDtype) -> &'static str {
    DTYPES.iter().find(|r| r.0 == d.code()).unwrap().1
}

/// The tensors a container decodes to, per §6.3-6.4.
fn outputs(c: &Container<'_>) -> Vec<Out> {
    let mut v: Vec<Out> = c
        .layers
        .iter()
        .map(|l| Out {
            name: l.name.clone(),
            dtype: "F32",
            shape: l.shape.iter().map(|&d| u64::from(d)).collect(),
            len: 4 * l.elements() as u64,
            bytes: None,
        })
        .collect();
    v.extend(c.passthrough.iter().map(|p| Out {
        name: p.name.clone(),
        dtype: dtype_name(p.dtype),
        shape: p.shape.clone(),
        len: p.len,
        bytes: Some(c.tensor_bytes(p).to_vec()),
    }));
    v
}

fn decode(bytes: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("x.nern"), dir.path().join("x.safetensors"));
    std::fs::write(&input, bytes).unwrap();
    nernc::decode::decode_file(&input, &output, 2, &Limits::default()).unwrap();
    std::fs::read(output).unwrap()
}

/// Decodes `bytes` and checks the output against the spec's layout, byte for byte except the
/// predicted values (whose bytes the golden SHA-256s hold). Returns the output.
fn check_layout(bytes: &[u8]) -> Vec<u8> {
    let c = read_container(bytes, &Limits::default()).unwrap();
    let (mut want, predicted) = expected(outputs(&c), c.source_metadata.as_ref());
    let got = decode(bytes);
    assert_eq!(got.len(), want.len(), "file length");
    for (name, range) in &predicted {
        want[range.clone()].copy_from_slice(&got[range.clone()]);
        assert!(
            !got[range.clone()].iter().all(|&b| b == 0),
            "{name} all zero"
        );
    }
    if got != want {
        let n = 8 + u64::from_le_bytes(got[..8].try_into().unwrap()) as usize;
        panic!(
            "output differs from §6.4\n got: {}\nwant: {}",
            String::from_utf8_lossy(&got[..n.min(got.len())]),
            String::from_utf8_lossy(&want[..n.min(want.len())])
        );
    }
    got
}

#[test]
fn golden_outputs_have_the_specified_layout() {
    for name in [
        "resnet20-h16-infilter",
        "resnet20-h16-crossfilter",
        "resnet20-h16-f16",
        "resnet20-h16-int8",
    ] {
        check_layout(&golden_bytes(name));
    }
}

/// A `PASS` payload and its `DATA` (§5.4) for (name, dtype code, shape) tensors.
fn pass_and_data(
    meta: Option<&BTreeMap<String, String>>,
    tensors: &[(String, u8, Vec<u64>)],
) -> (Vec<u8>, Vec<u8>) {
    let mut pass = (tensors.len() as u32).to_le_bytes().to_vec();
    pass.push(u8::from(meta.is_some()));
    pass.extend_from_slice(&[0; 3]);
    let empty = BTreeMap::new();
    let m = meta.unwrap_or(&empty);
    pass.extend_from_slice(&(m.len() as u32).to_le_bytes());
    for (k, v) in m {
        for s in [k, v] {
            pass.extend_from_slice(&(s.len() as u32).to_le_bytes());
            pass.extend_from_slice(s.as_bytes());
        }
    }
    let mut data = Vec::new();
    for (i, (name, code, shape)) in tensors.iter().enumerate() {
        let size = DTYPES.iter().find(|r| r.0 == *code).unwrap().2;
        let len = shape.iter().product::<u64>() * size;
        data.resize(data.len().next_multiple_of(8), 0);
        let offset = data.len() as u64;
        data.extend((0..len).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)));
        pass.extend_from_slice(&(name.len() as u16).to_le_bytes());
        pass.extend_from_slice(name.as_bytes());
        pass.push(*code);
        pass.push(shape.len() as u8);
        for d in shape {
            pass.extend_from_slice(&d.to_le_bytes());
        }
        pass.extend_from_slice(&offset.to_le_bytes());
        pass.extend_from_slice(&len.to_le_bytes());
    }
    (pass, data)
}

/// The in-filter golden with its `PASS`/`DATA` replaced.
fn with_passthrough(
    meta: Option<&BTreeMap<String, String>>,
    tensors: &[(String, u8, Vec<u64>)],
) -> Vec<u8> {
    let mut e = split(&golden_bytes("resnet20-h16-infilter"));
    let (pass, data) = pass_and_data(meta, tensors);
    find(&mut e, b"PASS").payload = pass;
    find(&mut e, b"DATA").payload = data;
    assemble(&e)
}

#[test]
fn every_dtype_code_and_json_escapes_in_the_specified_order() {
    // One tensor per dtype, named so that name order and dtype order disagree; names that
    // sort between the predicted ones ("conv1.weight", "layer1...") share their dtype F32.
    let mut tensors: Vec<(String, u8, Vec<u64>)> = DTYPES
        .iter()
        .enumerate()
        .map(|(i, &(code, name, _))| {
            (
                format!("{}.{}", (b'z' - i as u8) as char, name.to_lowercase()),
                code,
                vec![3, i as u64 % 4 + 1],
            )
        })
        .collect();
    tensors.push(("conv2".into(), 10, vec![5]));
    tensors.push(("layer1.0.conv1.weighs".into(), 10, vec![]));
    tensors.push(("empty".into(), 12, vec![0, 4]));
    // Every escape class of §6.4 in one name: quote, backslash, the five short escapes, other
    // C0 controls, and bytes written verbatim (slash, DEL, non-ASCII).
    tensors.push((
        "q\"b\\s/\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é€".into(),
        13,
        vec![1],
    ));
    let meta = BTreeMap::from([("fo\"r\nmat".to_string(), "pt\u{0}é".to_string())]);
    let out = check_layout(&with_passthrough(Some(&meta), &tensors));
    // Spot check against the literal text of §6.4.
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains(r#""q\"b\\s/\b\f\n\r\t\u0001\u001f"#),
        "{text}"
    );
    let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&out[8..8 + n]).unwrap();
    assert!(
        header.starts_with(concat!(
            r#"{"__metadata__":{"fo\"r\nmat":"pt\u0000é"},"#,
            r#""n.u64":{"dtype":"U64","shape":[3,1],"data_offsets":[0,24]},"#
        )),
        "{header}"
    );
}

#[test]
fn metadata_absent_empty_and_zero_passthrough_tensors() {
    // No passthrough tensor at all (DATA empty) and no __metadata__: the output holds the
    // predicted tensors only and no "__metadata__" key.
    let out = check_layout(&with_passthrough(None, &[]));
    assert!(!String::from_utf8_lossy(&out).contains("__metadata__"));
    // Empty but present __metadata__ stays present.
    let out = check_layout(&with_passthrough(Some(&BTreeMap::new()), &[]));
    assert!(out[8..].starts_with(b"{\"__metadata__\":{},\"conv1.weight\":{"));
}

/// §6.4: `__metadata__` keys in ascending bytewise order (as `PASS` stores them), so that the
/// output bytes do not depend on a hash map's iteration order.
#[test]
fn metadata_keys_in_ascending_order() {
    let meta: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("key{i:02}"), format!("value {i}")))
        .collect();
    let file = with_passthrough(Some(&meta), &[("t".into(), 10, vec![2])]);
    for _ in 0..4 {
        check_layout(&file);
    }
}

/// §6.3: permutation kind "none" is the identity. conv1 of the in-filter golden re-declared as
/// "none" (its `PERM` blocks removed) decodes the prediction for position (a, b) to original
/// kernel (a, b); with its in-filter tables the same prediction lands at (F[a], C_F[a][b]).
#[test]
fn permutation_kind_none_is_the_identity() {
    let b = golden_bytes("resnet20-h16-infilter");
    let c = read_container(&b, &Limits::default()).unwrap();
    let layer = c.layers[0].clone();
    assert_eq!(layer.shape, [16, 1, 3, 3]);
    let mut e = split(&b);
    let layr = &mut find(&mut e, b"LAYR").payload;
    let kind_at = 4 + 2 + layer.name.len() + 1;
    assert_eq!(layr[kind_at], 1);
    layr[kind_at] = 0;
    // conv1's blocks: 16 filter entries of 4 bits, then 16 channel blocks of 0 bits.
    find(&mut e, b"PERM").payload.drain(0..8);
    let none = assemble(&e);
    let c_none = read_container(&none, &Limits::default()).unwrap();
    assert_eq!(
        c_none.permutations[0],
        nernc::permute::Permutation::Identity
    );

    let tensor = |file: &[u8]| -> Vec<f32> {
        let out = decode(file);
        let st = safetensors::SafeTensors::deserialize(&out).unwrap();
        st.tensor(&layer.name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (orig, ident) = (tensor(&b), tensor(&none));
    let (cin, kk) = (layer.cin(), layer.kernel() * layer.kernel());
    for a in 0..layer.cout() {
        for bb in 0..cin {
            let permuted = c.permutations[0].original_kernel(cin, a, bb);
            assert_eq!(
                ident[(a * cin + bb) * kk..][..kk],
                orig[permuted * kk..][..kk],
                "position ({a}, {bb})"
            );
        }
    }
    assert_ne!(ident, orig);
}

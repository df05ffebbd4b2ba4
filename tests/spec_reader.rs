//! Spec §2-§5 and §7: one test per reader duty and per layout rule the spec states, on files
//! crafted from the golden files (valid hashes, so only the named defect is wrong).

mod common;
#[path = "common/craft.rs"]
#[allow(dead_code)]
mod craft;
use common::*;
use craft::*;

use nernc::Error;
use nernc::format::{
    ContainerParts, Limits, RawTensor, TensorDtype, read_container, write_container,
};
use nernc::permute::Permutation;

const GOLDEN: [&str; 4] = [
    "resnet20-h16-infilter",
    "resnet20-h16-crossfilter",
    "resnet20-h16-f16",
    "resnet20-h16-int8",
];

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(fixture("golden").join(format!("{name}.nern"))).unwrap()
}

fn infilter() -> Vec<u8> {
    golden("resnet20-h16-infilter")
}

fn err(bytes: &[u8]) -> Error {
    read_container(bytes, &Limits::default()).expect_err("invalid file was accepted")
}

fn ok(bytes: &[u8]) -> nernc::format::Container<'_> {
    read_container(bytes, &Limits::default()).unwrap()
}

fn layout_err(bytes: &[u8], needle: &str) {
    match err(bytes) {
        Error::SectionLayout(m) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected SectionLayout({needle}), got {other:?}"),
    }
}

fn malformed(e: Error, section: &str, needle: &str) {
    match e {
        Error::Malformed { section: s, detail } => {
            assert_eq!(s, section, "{detail}");
            assert!(detail.contains(needle), "{detail}");
        }
        other => panic!("expected Malformed({section}: {needle}), got {other:?}"),
    }
}

/// Writes the parsed container back through `write_container`.
fn rewrite(c: &nernc::format::Container<'_>) -> Vec<u8> {
    rewrite_with(c, false)
}

/// As [`rewrite`], with `PRED` raw in code layout 0 (packed codes) whatever compresses best.
fn rewrite_packed(c: &nernc::format::Container<'_>) -> Vec<u8> {
    rewrite_with(c, true)
}

fn rewrite_with(c: &nernc::format::Container<'_>, raw_predictor: bool) -> Vec<u8> {
    write_with_predictor(c, &c.predictor, raw_predictor)
}

/// `c` written with predictor `p` in its place (`write_container` checks shapes, not meaning).
fn write_with_predictor(
    c: &nernc::format::Container<'_>,
    p: &nernc::predictor::Predictor,
    raw_predictor: bool,
) -> Vec<u8> {
    let passthrough = c
        .passthrough
        .iter()
        .map(|p| RawTensor {
            name: p.name.clone(),
            dtype: p.dtype,
            shape: p.shape.clone(),
            bytes: c.tensor_bytes(p),
            storage: p.storage,
        })
        .collect();
    write_container(&ContainerParts {
        predictor: p,
        layers: &c.layers,
        permutations: &c.permutations,
        passthrough,
        coded: &c.coded,
        source_metadata: c.source_metadata.clone(),
        metadata: c.metadata(&Limits::default()).unwrap(),
        raw_predictor,
        raw_data: raw_predictor,
    })
    .unwrap()
}

fn minor(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[10], bytes[11]])
}

// ---- §2 header -----------------------------------------------------------------------------

/// §2: any minor version of major 1 is read; writers write the lowest minor the file needs
/// (1 only for an int8 predictor); an int8 predictor in a file marked 1.0 is not an error.
#[test]
fn s2_minor_versions() {
    for m in [0u16, 1, 2, 0xffff] {
        let mut b = infilter();
        b[10..12].copy_from_slice(&m.to_le_bytes());
        rehash_header(&mut b);
        assert_eq!(ok(&b).minor, m);
    }
    for name in GOLDEN {
        let b = golden(name);
        let c = ok(&b);
        let int8 = c.predictor.config.weight_dtype == nernc::predictor::WeightDtype::Int8;
        assert_eq!(minor(&b), u16::from(int8), "{name}");
        // Rewritten today, PRED is zstd-compressed when that is smaller (format 1.2), and so
        // are LAYR and PASS (1.4): the tables of names always shrink; so does DATA, shuffled
        // (1.6).
        let again = rewrite(&c);
        let entries = split(&again);
        let encoded =
            |tag: &[u8; 4], enc: u8| entries.iter().any(|e| &e.tag == tag && e.encoding == enc);
        assert!(
            encoded(b"LAYR", 1) && encoded(b"PASS", 1),
            "{name} rewritten"
        );
        assert!(encoded(b"DATA", 2), "{name} rewritten");
        assert_eq!(minor(&again), 6, "{name} rewritten");
        assert_eq!(ok(&again).data, c.data);
        assert_eq!(ok(&again).layers, c.layers);
        assert_eq!(ok(&again).passthrough, c.passthrough);
    }
    // The int8 golden relabelled 1.0 reads exactly as before.
    let b = golden("resnet20-h16-int8");
    let mut old = b.clone();
    old[10..12].copy_from_slice(&0u16.to_le_bytes());
    rehash_header(&mut old);
    let (c, c_old) = (ok(&b), ok(&old));
    assert_eq!(c_old.minor, 0);
    assert_eq!(c_old.predictor, c.predictor);
}

// ---- §3 section table ----------------------------------------------------------------------

fn with_extra(tag: [u8; 4], flags: u16, encoding: u8, decoded_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = split(&infilter());
    e.push(Entry {
        tag,
        flags,
        encoding,
        decoded_len,
        payload: payload.to_vec(),
    });
    assemble(&e)
}

/// §3: a tag is four bytes `A-Z` / `0-9`; any other byte makes the file invalid (it is not an
/// unknown optional section).
#[test]
fn s3_tags_are_ascii_capitals_or_digits() {
    for name in GOLDEN {
        for s in ok(&golden(name)).sections {
            assert!(
                s.tag
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            );
        }
    }
    for good in [*b"ZZZZ", *b"X9Y0", *b"0000"] {
        assert_eq!(ok(&with_extra(good, 0, 0, 2, b"hi")).sections.len(), 7);
    }
    for bad in [
        *b"zzzz",
        *b"Zzzz",
        *b"ZZ Z",
        *b"AB-C",
        [b'A', b'B', b'C', 0],
        [0xC9, b'A', b'B', b'C'],
        [b'E', 0xC3, 0x89, b'T'],
    ] {
        layout_err(
            &with_extra(bad, 0, 0, 2, b"hi"),
            "capital letters or digits",
        );
    }
}

/// §3/§5: a known section whose required flag differs from what version 1 assigns is invalid.
#[test]
fn s3_known_sections_with_the_wrong_required_flag_are_refused() {
    let b = infilter();
    for tag in [*b"PRED", *b"LAYR", *b"PERM", *b"PASS", *b"DATA", *b"META"] {
        let mut e = split(&b);
        let s = find(&mut e, &tag);
        assert_eq!(s.flags, u16::from(&tag != b"META"));
        s.flags ^= 1;
        layout_err(&assemble(&e), "required flag");
    }
}

/// §3: an unknown optional section is skipped without decoding whatever its encoding (0 or 1),
/// its hash still checked; another encoding, or the required flag, is refused.
#[test]
fn s3_unknown_sections() {
    // Not zstd at all, absurd decoded length: never decoded, so accepted.
    let x = with_extra(*b"ZZZZ", 0, 1, u64::MAX, b"not a zstd frame");
    assert_eq!(ok(&x).sections.len(), 7);
    assert_eq!(
        ok(&with_extra(*b"ZZZZ", 0, 0, 5, b"hello")).sections.len(),
        7
    );
    // Hash still checked.
    let mut y = x.clone();
    let last = y.len() - 1;
    y[last] ^= 1;
    assert!(matches!(err(&y), Error::SectionHashMismatch { tag } if tag == "ZZZZ"));
    // Shuffled zstd (2, format 1.6) is an encoding too: skipped undecoded.
    let z = with_extra(*b"ZZZZ", 0, 2, u64::MAX, b"no stride, no frame");
    assert_eq!(ok(&z).sections.len(), 7);
    // Encodings other than 0, 1 and 2.
    for enc in [3u8, 0xff] {
        layout_err(&with_extra(*b"ZZZZ", 0, enc, 5, b"hello"), "encoding");
    }
    // Unknown required sections, raw or zstd.
    for enc in [0u8, 1] {
        match err(&with_extra(*b"ZZZZ", 1, enc, 5, b"hello")) {
            Error::UnknownRequiredSection { tag } => assert_eq!(tag, "ZZZZ"),
            other => panic!("{other:?}"),
        }
    }
    // A raw section's decoded length is its stored length, known or not.
    let x = assemble_with(
        &{
            let mut e = split(&infilter());
            e.push(Entry {
                tag: *b"ZZZZ",
                flags: 0,
                encoding: 0,
                decoded_len: 0,
                payload: b"hello".to_vec(),
            });
            e
        },
        |i, row| {
            if i == 6 {
                row[24..32].copy_from_slice(&6u64.to_le_bytes());
            }
        },
    );
    layout_err(&x, "decoded length");
}

// ---- §4 validation order -------------------------------------------------------------------

/// §4: a file of 8-31 bytes starting with the magic is a truncated header; shorter prefixes of
/// the magic too; anything else without the magic is not a .nern file.
#[test]
fn s4_short_files() {
    let b = infilter();
    for len in 0..32 {
        match err(&b[..len]) {
            Error::Truncated {
                what: "header",
                needed: 32,
                available,
            } => assert_eq!(available, len as u64),
            other => panic!("{len} bytes: {other:?}"),
        }
    }
    let mut junk = b[..20].to_vec();
    junk[0] = b'P';
    assert!(matches!(err(&junk), Error::BadMagic));
    assert!(matches!(err(b"\x89NERX"), Error::BadMagic));
}

// ---- §5.1 PRED -----------------------------------------------------------------------------

/// Offsets of layer `i`'s scales, codes and biases in an int8 `PRED` payload.
fn int8_layout(widths: &[u32], i: usize) -> (usize, usize, usize) {
    let mut at = 24 + 4 * widths.len();
    for d in widths.windows(2).take(i) {
        at += (d[0] * d[1] + 8 * d[1]) as usize;
    }
    let (n_in, n_out) = (widths[i] as usize, widths[i + 1] as usize);
    (at, at + 4 * n_out, at + 4 * n_out + n_in * n_out)
}

/// §5.1: every int8 weight is the binary32 product `f32(Q) * s` rounded to nearest even, and
/// most of those products are not exact (the spec no longer says they are).
#[test]
fn s5_1_int8_weight_is_one_rounded_binary32_product() {
    let b = golden("resnet20-h16-int8");
    let c = ok(&b);
    let pred = &split(&b)[0].payload;
    let widths = &c.predictor.config.widths;
    let (mut products, mut rounded) = (0, 0);
    for (i, layer) in c.predictor.layers.iter().enumerate() {
        let (s_at, q_at, _) = int8_layout(widths, i);
        for k in 0..layer.inputs {
            for j in 0..layer.outputs {
                let q = pred[q_at + k * layer.outputs + j] as i8;
                let at = s_at + 4 * j;
                let s = f32::from_le_bytes(pred[at..at + 4].try_into().unwrap());
                let w = layer.weight[k * layer.outputs + j];
                assert_eq!(w.to_bits(), (f32::from(q) * s).to_bits());
                products += 1;
                rounded += usize::from(f64::from(q) * f64::from(s) != f64::from(w));
            }
        }
    }
    println!("{rounded} of {products} int8 products rounded");
    assert_eq!((rounded, products), (4147, 4752));
}

/// §5.1 (format 1.2): PRED may be zstd-compressed; it reads exactly as its raw form, and a
/// frame that is not zstd or decodes to another length than the table declares is refused.
#[test]
fn s5_1_zstd_pred_reads_as_raw_and_is_checked() {
    let b = golden("resnet20-h16-int8-zstd");
    let c = ok(&b);
    assert_eq!(c.minor, 2);
    let mut e = split(&b);
    let stored = e.iter().find(|e| &e.tag == b"PRED").unwrap();
    assert_eq!(stored.encoding, 1);
    let (packed, decoded_len) = (stored.payload.clone(), stored.decoded_len);
    // `find` hands out the raw layout; reassembled raw, the file holds the same predictor.
    find(&mut e, b"PRED");
    let raw = assemble(&e);
    assert_eq!(ok(&raw).predictor, c.predictor);
    assert_eq!(ok(&raw).minor, 1);
    // Declared length one short or one long: refused.
    for (declared, needle) in [(decoded_len - 1, "zstd"), (decoded_len + 1, "declares")] {
        let mut e = split(&b);
        e.iter_mut()
            .find(|e| &e.tag == b"PRED")
            .unwrap()
            .decoded_len = declared;
        malformed(err(&assemble(&e)), "PRED", needle);
    }
    // Not a zstd frame.
    let mut e = split(&b);
    let p = e.iter_mut().find(|e| &e.tag == b"PRED").unwrap();
    p.payload = packed[4..].to_vec();
    malformed(err(&assemble(&e)), "PRED", "zstd");
}

/// §5.2 / §5.4 (format 1.4): `LAYR` and `PASS` may be zstd-compressed; they read exactly as
/// raw, and a wrong declared length or a non-zstd payload is refused.
#[test]
fn s5_2_s5_4_zstd_tables_read_as_raw_and_are_checked() {
    let b = golden("resnet20-h16-int6");
    let c = ok(&b);
    for (tag, name) in [(b"LAYR", "LAYR"), (b"PASS", "PASS")] {
        let mut e = split(&b);
        let stored = e.iter().find(|e| &e.tag == tag).unwrap();
        assert_eq!(stored.encoding, 1, "{name} is compressed in the golden");
        let (packed, decoded_len) = (stored.payload.clone(), stored.decoded_len);
        // Raw, the file holds the same tables.
        find(&mut e, tag);
        let raw = ok(&assemble(&e)).layers == c.layers;
        assert!(raw);
        let mut e = split(&b);
        find(&mut e, tag);
        let r = assemble(&e);
        assert_eq!(ok(&r).passthrough, c.passthrough);
        for (declared, needle) in [(decoded_len - 1, "zstd"), (decoded_len + 1, "declares")] {
            let mut e = split(&b);
            e.iter_mut().find(|e| &e.tag == tag).unwrap().decoded_len = declared;
            malformed(err(&assemble(&e)), name, needle);
        }
        let mut e = split(&b);
        e.iter_mut().find(|e| &e.tag == tag).unwrap().payload = packed[4..].to_vec();
        malformed(err(&assemble(&e)), name, "zstd");
    }
    // DATA stays raw (read in place): zstd there is refused.
    let mut e = split(&b);
    let d = e.iter_mut().find(|e| &e.tag == b"DATA").unwrap();
    d.decoded_len = d.payload.len() as u64;
    d.payload = zstd::bulk::compress(&d.payload, 3).unwrap();
    d.encoding = 1;
    assert!(matches!(err(&assemble(&e)), Error::SectionLayout(m) if m.contains("not allowed")));
}

/// §3 / §5.4 (format 1.6): `DATA` may be stored byte-shuffled under zstd (encoding 2). Every
/// stride `1 ..= 8` reads as the raw section, tensor for tensor; another stride, a missing stride
/// byte, a non-zstd payload, a declared length other than the index's, or a checkpoint over the
/// output limit are refused, and so is encoding 2 on every other known section.
#[test]
fn s5_4_shuffled_zstd_data_reads_as_raw_and_is_checked() {
    let b = golden("resnet20-h16-int6-pass16");
    let c = ok(&b);
    assert_eq!(c.data_stride, None);
    let raw = c.data.to_vec();
    let with_data = |payload: Vec<u8>, declared: u64| {
        let mut e = split(&b);
        let d = e.iter_mut().find(|e| &e.tag == b"DATA").unwrap();
        assert_eq!(d.encoding, 0, "raw in the 1.4 golden");
        (d.payload, d.encoding, d.decoded_len) = (payload, 2, declared);
        assemble(&e)
    };
    let n = raw.len() as u64;
    for stride in 1..=8u8 {
        let f = with_data(shuffled_zstd(&raw, stride), n);
        let r = ok(&f);
        assert_eq!((r.minor, r.data_stride), (6, Some(stride)));
        assert_eq!(&*r.data, &raw[..], "stride {stride}");
        for p in &c.passthrough {
            assert_eq!(r.tensor_bytes(p), c.tensor_bytes(p), "{}", p.name);
        }
    }
    let stored = shuffled_zstd(&raw, 2);
    for bad in [0u8, 9, 0xff] {
        let mut s = stored.clone();
        s[0] = bad;
        malformed(err(&with_data(s, n)), "DATA", "stride");
    }
    malformed(err(&with_data(Vec::new(), n)), "DATA", "stride byte");
    malformed(
        err(&with_data(
            stored[..1].iter().chain(&stored[5..]).copied().collect(),
            n,
        )),
        "DATA",
        "zstd",
    );
    // A declared length other than the index's is refused before decompressing.
    malformed(
        err(&with_data(stored.clone(), n - 1)),
        "DATA",
        "the index declares",
    );
    malformed(
        err(&with_data(stored.clone(), n + 1)),
        "DATA",
        "the index declares",
    );
    // A checkpoint over the output limit is refused before DATA is decompressed.
    let f = with_data(stored.clone(), n);
    let tight = Limits {
        max_output_bytes: ok(&f).output_bytes() - 1,
        ..Limits::default()
    };
    assert!(matches!(
        read_container(&f, &tight),
        Err(Error::LimitExceeded { .. })
    ));
    // Only DATA: encoding 2 anywhere else is refused by the section table.
    for tag in [b"META", b"PRED", b"LAYR", b"PERM", b"PASS"] {
        let mut e = split(&b);
        let s = e.iter_mut().find(|e| &e.tag == tag).unwrap();
        s.encoding = 2;
        layout_err(&assemble(&e), "not allowed");
    }
}

/// A hidden-3, L = 1 predictor (odd code counts: layer 0 is 6 x 3) with random weights stored
/// as `dtype`, to exercise padding bits.
fn odd_predictor(dtype: nernc::predictor::WeightDtype, seed: u64) -> nernc::predictor::Predictor {
    let mut cfg = nernc::predictor::PredictorConfig::reference(3, 3, 1, 0.76);
    cfg.weight_dtype = nernc::predictor::WeightDtype::F32;
    let mut rng = nernc::rng::SplitMix64::new(seed);
    let layers = cfg
        .widths
        .windows(2)
        .map(|d| {
            let (i, o) = (d[0] as usize, d[1] as usize);
            nernc::predictor::LinearWeights {
                inputs: i,
                outputs: o,
                weight: (0..i * o).map(|_| rng.symmetric_f32()).collect(),
                bias: vec![0.1; o],
                scales: Vec::new(),
            }
        })
        .collect();
    let mut p = nernc::predictor::Predictor {
        config: cfg,
        layers,
        embeddings: Vec::new(),
    };
    p.store_as(dtype).unwrap();
    p
}

/// §5.1 (format 1.3): int4 codes two per byte, low nibble first, 4-bit two's complement; with
/// an odd count the last high nibble is zero padding, and anything else there is refused.
#[test]
fn s5_1_int4_nibbles_are_low_first_and_padding_is_zero() {
    let b = golden("resnet20-h16-int4");
    let c = ok(&b);
    assert_eq!(c.minor, 3);
    assert_eq!(
        c.predictor.config.weight_dtype,
        nernc::predictor::WeightDtype::Int4
    );
    let mut e = split(&b);
    let pred = find(&mut e, b"PRED").payload.clone();
    let widths = &c.predictor.config.widths;
    // Layer 0: 24 + 4 (D+1) header bytes, then w_1 f32 scales, then the packed codes.
    let (w0, w1) = (widths[0] as usize, widths[1] as usize);
    let at = 24 + 4 * widths.len();
    let scales: Vec<f32> = pred[at..at + 4 * w1]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let packed = &pred[at + 4 * w1..at + 4 * w1 + (w0 * w1).div_ceil(2)];
    let l = &c.predictor.layers[0];
    for k in 0..w0 * w1 {
        let byte = packed[k / 2];
        let nibble = if k % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        let code = ((nibble << 4) as i8) >> 4;
        assert!((-7..=7).contains(&code));
        assert_eq!(l.weight[k], f32::from(code) * scales[k % w1], "weight {k}");
    }
    // A predictor with an odd layer (hidden 3: the 3 x 3 layer has 9 codes, 5 bytes, the last
    // high nibble padding), written by nernc: a set padding nibble is refused.
    let mut c3 = ok(&b);
    c3.predictor = odd_predictor(nernc::predictor::WeightDtype::Int4, 4);
    let odd = rewrite_packed(&c3);
    assert_eq!(ok(&odd).predictor, c3.predictor);
    let mut e = split(&odd);
    let pred = &mut find(&mut e, b"PRED").payload;
    let w = &c3.predictor.config.widths;
    // Layer 0 (6 x 3: 9 bytes of codes), then layer 1's scales; its last code byte is padded.
    let layer1 = 24 + 4 * w.len() + (4 * 3 + 9 + 4 * 3);
    let last = layer1 + 4 * 3 + 5 - 1;
    assert_eq!(pred[last] >> 4, 0, "nernc writes a zero padding nibble");
    pred[last] |= 0x70;
    malformed(err(&assemble(&e)), "PRED", "padding");
}

/// §5.1 (format 1.5): code layout 1. PRED byte 7 = 1: every layer's codes first, one signed byte
/// each (`[in][out]` row-major, inside the dtype's range), then each layer's scales and bias;
/// the weights are `f32(Q) * s` as in layout 0. A code outside the range, layout 1 with a float
/// dtype, and an unknown layout are refused.
#[test]
fn s5_1_code_layout_1_stores_every_code_first_one_byte_each() {
    use nernc::predictor::WeightDtype;
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let b = golden("resnet20-h195-int6-bytecodes");
    let c = ok(&b);
    assert_eq!(c.minor, 5);
    assert_eq!(c.code_layout, 1);
    assert_eq!(ok(&golden("resnet20-h16-int6")).code_layout, 0);
    let mut e = split(&b);
    let pred = find(&mut e, b"PRED").payload.clone();
    assert_eq!((pred[6], pred[7]), (WeightDtype::Int6.code(), 1));
    // inspect names the layout.
    let text = nernc::inspect::render(&nernc::inspect::inspect(&c, &Limits::default()).unwrap());
    assert!(text.contains("code layout 1"), "{text}");
    let widths = c.predictor.config.widths.clone();
    let codes_at = 24 + 4 * widths.len();
    let mut at = codes_at;
    let mut codes = Vec::new();
    for d in widths.windows(2) {
        let n = d[0] as usize * d[1] as usize;
        codes.push(pred[at..at + n].to_vec());
        at += n;
    }
    for ((layer, d), q) in c.predictor.layers.iter().zip(widths.windows(2)).zip(&codes) {
        let wo = d[1] as usize;
        let scales = f32s(&pred[at..at + 4 * wo]);
        at += 4 * wo;
        for (m, &byte) in q.iter().enumerate() {
            let code = byte as i8;
            assert!((-31..=31).contains(&code), "code {code}");
            assert_eq!(layer.weight[m], f32::from(code) * scales[m % wo], "{m}");
        }
        assert_eq!(layer.bias, f32s(&pred[at..at + 4 * wo]));
        at += 4 * wo;
    }
    assert_eq!(at, pred.len(), "section length");
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = split(&b);
        f(&mut find(&mut e, b"PRED").payload);
        assemble(&e)
    };
    // -32 is int6's minimum, 32 is outside it.
    assert!(read_container(&with(&|p| p[codes_at] = (-32i8) as u8), &Limits::default()).is_ok());
    malformed(err(&with(&|p| p[codes_at] = 32)), "PRED", "outside");
    malformed(err(&with(&|p| p[7] = 2)), "PRED", "unknown code layout");
    malformed(
        err(&with(&|p| p[6] = WeightDtype::F32.code())),
        "PRED",
        "integer weight dtype",
    );
}

/// §5.1 (format 1.4): int6 and int5 codes are one LSB-first bit stream per layer (stream bit t
/// is bit t mod 8 of byte t / 8), q-bit two's complement; the unused bits of the last byte are
/// zero, and anything else there is refused. Read here bit by bit, independently of the writer.
#[test]
fn s5_1_int6_int5_codes_are_bit_packed_lsb_first_and_padding_is_zero() {
    use nernc::predictor::WeightDtype;
    for (name, dtype, q) in [
        ("resnet20-h16-int6", WeightDtype::Int6, 6usize),
        ("resnet20-h16-int5", WeightDtype::Int5, 5),
    ] {
        let b = golden(name);
        let c = ok(&b);
        assert_eq!(c.minor, 4, "{name}");
        assert_eq!(c.predictor.config.weight_dtype, dtype);
        let mut e = split(&b);
        let pred = find(&mut e, b"PRED").payload.clone();
        assert_eq!(pred[6], dtype.code());
        let widths = &c.predictor.config.widths;
        let max = (1i32 << (q - 1)) - 1;
        let mut at = 24 + 4 * widths.len();
        for (layer, d) in c.predictor.layers.iter().zip(widths.windows(2)) {
            let (wi, wo) = (d[0] as usize, d[1] as usize);
            let scales: Vec<f32> = pred[at..at + 4 * wo]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            at += 4 * wo;
            let stream = &pred[at..at + (wi * wo * q).div_ceil(8)];
            for m in 0..wi * wo {
                let mut v = 0i32;
                for bit in 0..q {
                    let t = m * q + bit;
                    v |= i32::from((stream[t / 8] >> (t % 8)) & 1) << bit;
                }
                // Sign-extend the q-bit value.
                let code = if v >= 1 << (q - 1) { v - (1 << q) } else { v };
                assert!((-max..=max).contains(&code), "{name}: code {code}");
                assert_eq!(layer.weight[m], code as f32 * scales[m % wo], "{name} {m}");
            }
            at += stream.len();
            let bias: Vec<f32> = pred[at..at + 4 * wo]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(layer.bias, bias);
            at += 4 * wo;
        }
        assert_eq!(at, pred.len(), "{name}: section length");

        // An odd-sized predictor (hidden 3, L = 1: layer 0 is 6 x 3 = 18 codes), written by
        // nernc: for int5 its 90 bits leave 6 padding bits, for int6 108 bits leave 4.
        let mut c3 = ok(&b);
        c3.predictor = odd_predictor(dtype, 5);
        let odd = rewrite_packed(&c3);
        assert_eq!(ok(&odd).predictor, c3.predictor);
        let mut e = split(&odd);
        let pred = &mut find(&mut e, b"PRED").payload;
        let w = &c3.predictor.config.widths;
        let bytes = (18 * q).div_ceil(8);
        let last = 24 + 4 * w.len() + 4 * 3 + bytes - 1;
        let used = (18 * q) % 8;
        assert_eq!(pred[last] >> used, 0, "nernc writes zero padding bits");
        pred[last] |= 0x80;
        malformed(err(&assemble(&e)), "PRED", "padding");
    }
}

/// §5.1: a product `Q * s` that overflows to infinity is a non-finite weight: invalid.
#[test]
fn s5_1_int8_product_overflowing_is_refused() {
    let b = golden("resnet20-h16-int8");
    let widths = ok(&b).predictor.config.widths.clone();
    let (s_at, q_at, _) = int8_layout(&widths, 0);
    let (n_in, n_out) = (widths[0] as usize, widths[1] as usize);
    // Output unit 0 of layer 0: scale s, code q for input 0, codes 0 elsewhere.
    let with = |q: i8, s: f32| {
        let mut e = split(&b);
        let pred = &mut find(&mut e, b"PRED").payload;
        pred[s_at..s_at + 4].copy_from_slice(&s.to_le_bytes());
        for k in 0..n_in {
            pred[q_at + k * n_out] = 0;
        }
        pred[q_at] = q as u8;
        assemble(&e)
    };
    // f32::MAX * 1 is finite: valid.
    ok(&with(1, f32::MAX));
    for q in [2, -2, 127, -128] {
        assert!(
            matches!(err(&with(q, f32::MAX)), Error::NonFinite { .. }),
            "q = {q}"
        );
    }
}

// ---- §5.3 PERM -----------------------------------------------------------------------------

/// §5.3's worked example: a block of five 3-bit entries `[3, 0, 4, 1, 2]` is the two bytes
/// `03 23` (LSB first); written so by the writer and read so by the reader.
#[test]
fn s5_3_permutation_bits_are_lsb_first() {
    const EXAMPLE: [u8; 2] = [0x03, 0x23];
    let b = infilter();
    let c = ok(&b);
    assert_eq!(c.layers[0].shape, [16, 1, 3, 3]);
    // The golden's own first block: 16 entries of 4 bits, entry 2i in the low nibble of byte i.
    let perm = split(&b)[2].payload.clone();
    let Permutation::InFilter { filters, .. } = &c.permutations[0] else {
        panic!("in-filter expected");
    };
    for (i, byte) in perm[..8].iter().enumerate() {
        assert_eq!(
            (filters[2 * i], filters[2 * i + 1]),
            (u32::from(byte & 0xf), u32::from(byte >> 4))
        );
    }
    // conv1 re-declared [5, 1, 3, 3]: its PERM blocks become the example (channel blocks of
    // cin = 1 take zero bits).
    let mut e = split(&b);
    let layr = &mut find(&mut e, b"LAYR").payload;
    let shape_at = 4 + 2 + "conv1.weight".len() + 2;
    layr[shape_at..shape_at + 4].copy_from_slice(&5u32.to_le_bytes());
    let perm = &mut find(&mut e, b"PERM").payload;
    perm.splice(0..8, EXAMPLE);
    let x = assemble(&e);
    let c = ok(&x);
    assert_eq!(
        c.permutations[0],
        Permutation::InFilter {
            filters: vec![3, 0, 4, 1, 2],
            channels: vec![0; 5],
        }
    );
    let written = rewrite(&c);
    let perm_of = |b: &[u8]| find(&mut split(b), b"PERM").payload.clone();
    assert_eq!(perm_of(&written)[..2], EXAMPLE);
    assert_eq!(perm_of(&written), perm_of(&x));
    // Its padding bit (bit 15) set: refused.
    let mut e = split(&x);
    find(&mut e, b"PERM").payload[1] |= 0x80;
    malformed(err(&assemble(&e)), "PERM", "padding");
}

// ---- §5.4 PASS and DATA --------------------------------------------------------------------

/// §5.4 (format 1.4): dtype code 16 is an F32 tensor stored as binary16: 2 bytes per element in
/// `DATA`, widened exactly to F32 in the decoded checkpoint; other tensors stay byte-exact; a
/// length of 4 bytes per element is refused for it.
#[test]
fn s5_4_f32_stored_as_binary16_widens_exactly() {
    use nernc::format::PassStorage;
    let b = golden("resnet20-h16-int6-pass16");
    let c = ok(&b);
    assert_eq!(c.minor, 4);
    let src_file = std::fs::read(fixture("fmnist-resnet20.safetensors")).unwrap();
    let src = safetensors::SafeTensors::deserialize(&src_file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.safetensors");
    let path = fixture("golden").join("resnet20-h16-int6-pass16.nern");
    nernc::decode::decode_file(&path, &out, 1, &Limits::default()).unwrap();
    let dec_file = std::fs::read(&out).unwrap();
    let dec = safetensors::SafeTensors::deserialize(&dec_file).unwrap();
    let mut halves = 0;
    for p in &c.passthrough {
        let (s, d) = (src.tensor(&p.name).unwrap(), dec.tensor(&p.name).unwrap());
        assert_eq!(s.dtype(), d.dtype(), "{}", p.name);
        assert_eq!(s.shape(), d.shape());
        if p.storage == PassStorage::F16 {
            halves += 1;
            assert_eq!(p.dtype, nernc::format::TensorDtype::F32);
            let stored = c.tensor_bytes(p);
            assert_eq!(stored.len() * 2, s.data().len());
            for ((h, sv), dv) in stored
                .chunks_exact(2)
                .zip(s.data().chunks_exact(4))
                .zip(d.data().chunks_exact(4))
            {
                let h = half::f16::from_le_bytes([h[0], h[1]]);
                let source = f32::from_le_bytes(sv.try_into().unwrap());
                let decoded = f32::from_le_bytes(dv.try_into().unwrap());
                // Stored: the source rounded to nearest binary16; decoded: that, exactly.
                assert_eq!(h, half::f16::from_f32(source));
                assert_eq!(decoded, h.to_f32());
            }
        } else {
            assert_eq!(s.data(), d.data(), "{} is byte-exact", p.name);
        }
    }
    // Every F32 tensor of the source's passthrough (BN, FC); num_batches_tracked stays I64.
    assert_eq!(halves, 86);
    // Code 16 with 4 bytes per element: the length rule refuses it.
    let mut e = split(&b);
    let pass = &mut find(&mut e, b"PASS").payload;
    let name = c
        .passthrough
        .iter()
        .find(|p| p.storage == PassStorage::F16)
        .unwrap();
    let at = pass
        .windows(name.name.len())
        .position(|w| w == name.name.as_bytes())
        .unwrap()
        + name.name.len();
    assert_eq!(pass[at], 16, "dtype code after the name");
    pass[at] = 10; // F32: the stored length is now half of what F32 needs
    malformed(err(&assemble(&e)), "PASS", "needs");
}

/// §5.4: `PASS` ends after its last entry.
#[test]
fn s5_4_pass_trailing_bytes_are_refused() {
    for extra in [&[0u8][..], &[0; 8], b"\x01\x00x"] {
        let mut e = split(&infilter());
        find(&mut e, b"PASS").payload.extend_from_slice(extra);
        malformed(err(&assemble(&e)), "PASS", "trailing");
    }
}

/// §5.4: the dtype code table (code, name, element bytes) in the spec is the one nernc uses,
/// and codes outside it are refused.
#[test]
fn s5_4_dtype_table_matches_the_spec_text() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/nern-format.md"))
        .unwrap();
    let start = spec.find("| dtype code |").expect("dtype table in §5.4");
    let rows: Vec<(u8, String, usize)> = spec[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (
                f[1].parse().unwrap(),
                f[2].to_string(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 15);
    for (code, name, size) in rows {
        let d = TensorDtype::from_code(code).unwrap();
        assert_eq!((d.name(), d.size()), (name.as_str(), size), "code {code}");
    }
    for code in std::iter::once(0).chain(16..=255) {
        assert!(matches!(
            TensorDtype::from_code(code),
            Err(Error::UnknownDtypeCode(c)) if c == code
        ));
    }
}

/// §5.4: zero passthrough tensors are valid; `DATA` is then present and empty.
#[test]
fn s5_4_zero_passthrough_tensors() {
    let mut pass = 0u32.to_le_bytes().to_vec();
    pass.extend_from_slice(&[0; 8]);
    let mut e = split(&infilter());
    find(&mut e, b"PASS").payload = pass;
    find(&mut e, b"DATA").payload.clear();
    let x = assemble(&e);
    let c = ok(&x);
    assert!(c.passthrough.is_empty() && c.data.is_empty() && c.source_metadata.is_none());
    // A non-empty DATA without tensors is not canonical.
    find(&mut e, b"DATA").payload = vec![0; 8];
    malformed(err(&assemble(&e)), "DATA", "declares 0");
    // DATA cannot be left out.
    e.retain(|s| &s.tag != b"DATA");
    assert!(matches!(err(&assemble(&e)), Error::MissingSection("DATA")));
}

// ---- §5.5 META -----------------------------------------------------------------------------

fn with_meta(encoding: u8, decoded_len: u64, payload: Vec<u8>) -> Vec<u8> {
    let mut e = split(&infilter());
    let m = find(&mut e, b"META");
    m.encoding = encoding;
    m.decoded_len = decoded_len;
    m.payload = payload;
    assemble(&e)
}

/// A broken META is refused by `nernc decode` and `nernc inspect` too (it is checked while the
/// file is read, not when the metadata is used).
fn cli_refuses(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.nern");
    std::fs::write(&path, bytes).unwrap();
    let p = path.to_str().unwrap();
    let out = dir.path().join("out.safetensors");
    assert_clean_failure(&nernc(&["inspect", p]), "META");
    assert_clean_failure(&nernc(&["decode", p, "-o", out.to_str().unwrap()]), "META");
    assert!(!out.exists());
}

#[test]
fn s5_5_golden_meta_is_a_json_object() {
    for name in GOLDEN {
        let b = golden(name);
        let meta = ok(&b).metadata(&Limits::default()).unwrap().unwrap();
        assert!(meta.is_object(), "{name}");
    }
}

#[test]
fn s5_5_meta_that_is_not_zstd_is_refused() {
    let x = with_meta(1, 20, b"{\"not\": \"zstd\"}".to_vec());
    malformed(err(&x), "META", "zstd");
    cli_refuses(&x);
}

#[test]
fn s5_5_meta_decoding_to_another_length_is_refused() {
    let json = br#"{"encoder":"test"}"#;
    let packed = zstd::bulk::compress(json, 3).unwrap();
    ok(&with_meta(1, json.len() as u64, packed.clone()));
    for declared in [json.len() as u64 - 1, json.len() as u64 + 1, 0] {
        let x = with_meta(1, declared, packed.clone());
        match err(&x) {
            Error::Malformed {
                section: "META", ..
            } => {}
            other => panic!("declared {declared}: {other:?}"),
        }
    }
    cli_refuses(&with_meta(1, json.len() as u64 + 1, packed));
    // Beyond the configured limit: refused at read time, before decompressing.
    let limits = Limits {
        max_metadata_bytes: json.len() as u64 - 1,
        ..Limits::default()
    };
    let x = with_meta(1, json.len() as u64, zstd::bulk::compress(json, 3).unwrap());
    assert!(matches!(
        read_container(&x, &limits),
        Err(Error::LimitExceeded { .. })
    ));
}

#[test]
fn s5_5_meta_that_is_not_a_json_object_is_refused() {
    for (text, needle) in [
        (&b"[1, 2]"[..], "not a JSON object"),
        (b"\"text\"", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{\"a\": ", "JSON"),
        (b"{\"a\": \"\xff\"}", "JSON"),
        (b"", "JSON"),
    ] {
        // zstd (as written) and raw.
        let packed = zstd::bulk::compress(text, 3).unwrap();
        malformed(
            err(&with_meta(1, text.len() as u64, packed)),
            "META",
            needle,
        );
        malformed(
            err(&with_meta(0, text.len() as u64, text.to_vec())),
            "META",
            needle,
        );
    }
    let text = b"[\"not an object\"]";
    cli_refuses(&with_meta(0, text.len() as u64, text.to_vec()));
    // A valid raw JSON object is fine; so is a file without META.
    ok(&with_meta(0, 2, b"{}".to_vec()));
    let mut e = split(&infilter());
    e.retain(|s| &s.tag != b"META");
    assert!(
        ok(&assemble(&e))
            .metadata(&Limits::default())
            .unwrap()
            .is_none()
    );
}

// ---- §7 limits -----------------------------------------------------------------------------

/// §7: the tensor bound applies to `LAYR` and `PASS` together.
#[test]
fn s7_tensor_limit_counts_layr_and_pass_together() {
    let b = infilter();
    let c = ok(&b);
    let (l, p) = (c.layers.len() as u64, c.passthrough.len() as u64);
    let at = |max_tensors| {
        read_container(
            &b,
            &Limits {
                max_tensors,
                ..Limits::default()
            },
        )
    };
    assert!(at(l + p).is_ok());
    assert!(l.max(p) < l + p - 1);
    for max in [l + p - 1, l.max(p)] {
        assert!(
            matches!(
                at(max),
                Err(Error::LimitExceeded {
                    what: "tensor count",
                    ..
                })
            ),
            "{max}"
        );
    }
    assert_eq!(Limits::default().max_tensors, 1 << 20);
}

// ---- format 1.7: learned embedding tables --------------------------------------------------

/// The embedding golden rewritten with a raw `PRED` in code layout 0 (the byte positions below
/// are those of the packed layout).
fn embed_golden() -> (nernc::predictor::Predictor, Vec<u8>) {
    let b = golden("resnet20-h16-int6-embed");
    let c = ok(&b);
    (c.predictor.clone(), rewrite_packed(&c))
}

/// §5.1 (format 1.7): coordinate convention 1. After the widths come the embedding width `d`
/// and the two tables' row counts (the predicted layers' filters and input channels, summed in
/// `LAYR` order); the first width is `6 L + 2 d`; after the `D` layers the two tables are stored
/// in the layers' form (`[rows][d]` codes, `d` scales and biases). Older conventions and
/// impossible fields are refused.
#[test]
fn s5_1_embedding_tables_follow_the_layers() {
    let original = golden("resnet20-h16-int6-embed");
    let c = ok(&original);
    assert_eq!(c.minor, 7, "tables need format 1.7");
    let (p, b) = embed_golden();
    let c = ok(&b);
    assert_eq!(c.predictor, p, "rewriting changed the predictor");
    let e = p.config.embedding.expect("the golden has tables");
    let filters: u32 = c.layers.iter().map(|l| l.shape[0]).sum();
    let channels: u32 = c.layers.iter().map(|l| l.shape[1]).sum();
    assert_eq!(e.rows, [filters, channels]);
    assert_eq!(p.config.widths[0], 6 * p.config.pe_levels + 2 * e.width);
    let mut s = split(&b);
    let pred = find(&mut s, b"PRED").payload.clone();
    assert_eq!(pred[4], 1, "coordinate convention");
    let u32_at = |at: usize| u32::from_le_bytes(pred[at..at + 4].try_into().unwrap());
    let after_widths = 24 + 4 * p.config.widths.len();
    assert_eq!(
        [
            u32_at(after_widths),
            u32_at(after_widths + 4),
            u32_at(after_widths + 8)
        ],
        [e.width, filters, channels]
    );
    // The tables come last, each as a layer of `rows` inputs and `d` outputs: scales, packed
    // 6-bit codes, biases. Check the channel table's (the last) scales, codes and biases.
    let d = e.width as usize;
    let rows = channels as usize;
    let table_bytes = 4 * d + (rows * d * 6).div_ceil(8) + 4 * d;
    let at = pred.len() - table_bytes;
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let table = &p.embeddings[1];
    assert_eq!((table.inputs, table.outputs), (rows, d));
    let scales = f32s(&pred[at..at + 4 * d]);
    assert_eq!(scales, table.scales);
    assert_eq!(f32s(&pred[pred.len() - 4 * d..]), table.bias);
    // Code 0 of the table: the low 6 bits of its first byte, two's complement.
    let raw = pred[at + 4 * d] & 0x3f;
    let code = if raw & 0x20 != 0 {
        raw as i8 - 64
    } else {
        raw as i8
    };
    assert_eq!(table.weight[0], f32::from(code) * scales[0]);

    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut s = split(&b);
        f(&mut find(&mut s, b"PRED").payload);
        assemble(&s)
    };
    malformed(err(&with(&|p| p[4] = 2)), "PRED", "coordinate convention");
    let put = |p: &mut Vec<u8>, at: usize, v: u32| p[at..at + 4].copy_from_slice(&v.to_le_bytes());
    malformed(
        err(&with(&|p| put(p, after_widths, 0))),
        "PRED",
        "embedding width",
    );
    malformed(
        err(&with(&|p| put(p, after_widths + 4, 0))),
        "PRED",
        "embedding rows",
    );
    // One row more than the layers need: the section no longer matches its declared shape.
    malformed(
        err(&with(&|p| put(p, after_widths + 8, channels + 1))),
        "PRED",
        "do not match",
    );
    // Convention 0 with the wider first layer: the widths disagree with the encoding.
    malformed(
        err(&with(&|p| p[4] = 0)),
        "PRED",
        "input width is not 6 * pe_levels",
    );
}

/// §5.1: tables whose rows are consistent within `PRED` but not with `LAYR` are refused.
#[test]
fn s5_1_embedding_rows_must_match_the_layer_table() {
    let (mut p, _) = embed_golden();
    let c0 = golden("resnet20-h16-int6-embed");
    let c = ok(&c0);
    // One more filter row, in the config and in the table.
    let e = p.config.embedding.as_mut().unwrap();
    e.rows[0] += 1;
    let t = &mut p.embeddings[0];
    t.inputs += 1;
    t.weight.extend(vec![0.0; t.outputs]);
    let bytes = write_with_predictor(&c, &p, true);
    malformed(err(&bytes), "PRED", "the layers need");
}

/// §6.1-6.2 with tables, computed here from the spec's text alone: the kernel at position
/// `(a, b)` of layer `l` reads row `F_l + a` of the filter table and `C_l + b` of the channel
/// table (`F_l`, `C_l`: the filters and input channels of the layers before `l`), each row
/// `W[r][i] + b[i]` in binary32; each table's partial sum runs over its `d` values like an
/// encoding's, and the sums are added after the three encodings'. Bit-exact with the decoder.
#[test]
fn s6_2_embedding_rows_are_added_after_the_encodings() {
    let b = golden("resnet20-h16-int6-embed");
    let c = ok(&b);
    let p = &c.predictor;
    let cfg = &p.config;
    let d = cfg.embedding.unwrap().width as usize;
    let cw = 2 * cfg.pe_levels as usize;
    let pe = |n: u32| -> Vec<f32> {
        (0..cfg.pe_levels)
            .flat_map(|k| {
                let f = std::f64::consts::PI * libm::pow(cfg.pe_base, f64::from(k));
                let t = f * f64::from(n);
                [libm::sin(t) as f32, libm::cos(t) as f32]
            })
            .collect()
    };
    let first = &p.layers[0];
    let h = first.outputs;
    let partial = |x: &[f32], from: usize| -> Vec<f32> {
        (0..h)
            .map(|j| {
                x.iter().enumerate().fold(0.0f32, |u, (i, &v)| {
                    v.mul_add(first.weight[(from + i) * h + j], u)
                })
            })
            .collect()
    };
    let row = |t: usize, r: usize| -> Vec<f32> {
        let e = &p.embeddings[t];
        (0..d).map(|i| e.bias[i] + e.weight[r * d + i]).collect()
    };
    let decoded = nernc::decode::decode_layers(p, &c.layers, &c.permutations, 2);
    let big = cfg.kernel_size as usize;
    let (mut f0, mut c0) = (0usize, 0usize);
    let mut checked = 0;
    for (li, (layer, w)) in c.layers.iter().zip(&decoded).enumerate() {
        let (cin, k) = (layer.cin(), layer.kernel());
        for pos in (0..layer.kernels()).step_by(29) {
            let (a, bb) = (pos / cin, pos % cin);
            let u = [
                partial(&pe(li as u32), 0),
                partial(&pe(a as u32), cw),
                partial(&pe(bb as u32), 2 * cw),
                partial(&row(0, f0 + a), 3 * cw),
                partial(&row(1, c0 + bb), 3 * cw + d),
            ];
            let mut y: Vec<f32> = (0..h)
                .map(|j| {
                    let z = ((((first.bias[j] + u[0][j]) + u[1][j]) + u[2][j]) + u[3][j]) + u[4][j];
                    if z > 0.0 { z } else { 0.0 }
                })
                .collect();
            let last = p.layers.len() - 1;
            for (i, l) in p.layers.iter().enumerate().skip(1) {
                y = (0..l.outputs)
                    .map(|j| {
                        let acc = y.iter().enumerate().fold(l.bias[j], |acc, (kk, &v)| {
                            v.mul_add(l.weight[kk * l.outputs + j], acc)
                        });
                        if i == last || acc > 0.0 { acc } else { 0.0 }
                    })
                    .collect();
            }
            let off = (big - k) / 2;
            let orig = c.permutations[li].original_kernel(cin, a, bb);
            for yy in 0..k {
                for xx in 0..k {
                    let want = y[(yy + off) * big + xx + off];
                    let got = w[orig * k * k + yy * k + xx];
                    assert_eq!(got.to_bits(), want.to_bits(), "layer {li} kernel {pos}");
                }
            }
            checked += 1;
        }
        f0 += layer.cout();
        c0 += cin;
    }
    assert!(checked > 900, "{checked} kernels checked");
}

/// §5.1: a table row is `b + W[r]` in binary32; a sum that overflows (each term finite) is a
/// non-finite input and the file is refused.
#[test]
fn s5_1_embedding_row_overflowing_is_refused() {
    let (mut p, _) = embed_golden();
    let c0 = golden("resnet20-h16-int6-embed");
    let c = ok(&c0);
    let t = &mut p.embeddings[1];
    t.bias[0] = 3.0e38;
    t.weight[0] = 3.0e38;
    t.scales.clear();
    p.store_as(nernc::predictor::WeightDtype::Int6).unwrap();
    assert!(
        p.embeddings[1].weight[0] > 2.9e38,
        "the large weight was not stored"
    );
    let bytes = write_with_predictor(&c, &p, true);
    assert!(
        matches!(err(&bytes), Error::NonFinite { .. }),
        "an overflowing row was accepted"
    );
}

// ---- format 1.8: coded convs (`CODE`) ------------------------------------------------------

fn coded_golden() -> Vec<u8> {
    golden("resnet20-h16-int6-coded")
}

/// §5.6: `CODE` is a required section (zstd allowed) that a 1.8 file carries; its entries, as
/// the spec lays them out (written here from the spec, independently of the writer), are what
/// the reader returns; rewritten, the file stays 1.8 and reads the same.
#[test]
fn s5_6_coded_tensors_follow_the_layout() {
    let b = coded_golden();
    let c = ok(&b);
    assert_eq!(c.minor, 8);
    assert!(!c.coded.is_empty());
    let mut e = split(&b);
    let code = find(&mut e, b"CODE");
    assert_eq!(code.flags, 1, "CODE carries the required flag");
    let p = code.payload.clone();
    let u32_at = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap()) as usize;
    let count = u32_at(0);
    assert_eq!(count, c.coded.len());
    let mut at = 4;
    let mut heads = Vec::new();
    for _ in 0..count {
        let len = u16::from_le_bytes([p[at], p[at + 1]]) as usize;
        let name = std::str::from_utf8(&p[at + 2..at + 2 + len])
            .unwrap()
            .to_string();
        at += 2 + len;
        let (bits, reserved) = (p[at], p[at + 1]);
        assert_eq!(reserved, 0);
        at += 2;
        let shape: Vec<usize> = (0..4).map(|i| u32_at(at + 4 * i)).collect();
        let rank = u32_at(at + 16);
        at += 20;
        heads.push((name, bits, shape, rank));
    }
    for ((name, bits, shape, rank), t) in heads.iter().zip(&c.coded) {
        assert_eq!((name, *bits), (&t.name, t.bits));
        assert_eq!(*rank as u32, t.rank);
        let cols = shape[1] * shape[2] * shape[3];
        let mats = if *rank == 0 {
            vec![(shape[0], cols)]
        } else {
            vec![(shape[0], *rank), (*rank, cols)]
        };
        for ((rows, cols), m) in mats.into_iter().zip(&t.matrices) {
            let scales: Vec<f32> = (0..rows)
                .map(|i| f32::from_le_bytes(p[at + 4 * i..at + 4 * i + 4].try_into().unwrap()))
                .collect();
            at += 4 * rows;
            let codes: Vec<i8> = p[at..at + rows * cols].iter().map(|&x| x as i8).collect();
            at += rows * cols;
            assert_eq!((&scales, &codes), (&m.scales, &m.codes), "{name}");
            let lim = 1i8 << (bits - 1);
            assert!(codes.iter().all(|&q| q >= -lim && q < lim));
        }
    }
    assert_eq!(at, p.len(), "CODE ends after the last matrix");
    // Raw, the same tensors; rewritten, the same file content and version.
    let raw = assemble(&e);
    assert_eq!(ok(&raw).coded, c.coded);
    let again = rewrite(&c);
    assert_eq!(minor(&again), 8);
    assert_eq!(ok(&again).coded, c.coded);
}

/// §5.6: the entry rules: bits, reserved byte, shape, rank, codes in range, scales finite and
/// non-negative, exact length; names unique across `LAYR`, `CODE` and `PASS`; a zstd `CODE`
/// declaring the wrong length.
#[test]
fn s5_6_bad_coded_entries_are_refused() {
    let b = coded_golden();
    let c = ok(&b);
    let with_code = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut e = split(&b);
        edit(&mut find(&mut e, b"CODE").payload);
        assemble(&e)
    };
    let name_len = c.coded[0].name.len();
    let bits_at = 4 + 2 + name_len;
    for (at, value, needle) in [
        (bits_at, 1u8, "bit"),
        (bits_at, 9, "bit"),
        (bits_at + 1, 1, "reserved"),
        (bits_at + 2, 0, "shape"),
    ] {
        malformed(err(&with_code(&|p| p[at] = value)), "CODE", needle);
    }
    // Rank above cout (entry 0's cout is 32).
    let rank_at = bits_at + 2 + 16;
    malformed(err(&with_code(&|p| p[rank_at] = 33)), "CODE", "rank");
    // Trailing byte; one byte short.
    malformed(err(&with_code(&|p| p.push(0))), "CODE", "trailing");
    malformed(
        err(&with_code(&|p| {
            p.pop();
        })),
        "CODE",
        "needs",
    );
    // The data start: after every entry header.
    let heads: usize = 4 + c.coded.iter().map(|t| 2 + t.name.len() + 22).sum::<usize>();
    let rows0 = c.coded[0].matrices[0].rows;
    // A code outside entry 0's 3-bit range; a negative and an infinite scale.
    malformed(
        err(&with_code(&|p| p[heads + 4 * rows0] = 4)),
        "CODE",
        "range",
    );
    malformed(err(&with_code(&|p| p[heads + 3] |= 0x80)), "CODE", "scale");
    malformed(
        err(&with_code(&|p| {
            p[heads..heads + 4].copy_from_slice(&f32::INFINITY.to_le_bytes())
        })),
        "CODE",
        "scale",
    );
    // A coded tensor named like a predicted layer.
    let layer = c.layers[0].name.clone();
    let mut renamed = c.coded.clone();
    renamed[0].name = layer.clone();
    let bytes = write_container(&ContainerParts {
        predictor: &c.predictor,
        layers: &c.layers,
        permutations: &c.permutations,
        passthrough: Vec::new(),
        coded: &renamed,
        source_metadata: None,
        metadata: None,
        raw_predictor: false,
        raw_data: false,
    })
    .unwrap();
    malformed(err(&bytes), "PASS", "duplicate");
    // zstd CODE with a declared length one long.
    let mut e = split(&b);
    let code = e.iter_mut().find(|e| &e.tag == b"CODE").unwrap();
    assert_eq!(code.encoding, 1, "CODE is compressed in the golden");
    code.decoded_len += 1;
    malformed(err(&assemble(&e)), "CODE", "declares");
}

/// §6.5 / §7: coded weights count toward the output bound and the tensor limit; an entry whose
/// weights overflow refuses the file at decode time and leaves no output.
#[test]
fn s6_5_coded_weights_are_bounded_and_must_be_finite() {
    let b = coded_golden();
    let c = ok(&b);
    let total = c.output_bytes();
    let coded: u64 = c.coded.iter().map(|t| t.elements() as u64 * 4).sum();
    assert!(coded > 0 && coded < total);
    let limits = |max_output_bytes, max_tensors| Limits {
        max_output_bytes,
        max_tensors,
        ..Limits::default()
    };
    assert!(read_container(&b, &limits(total, 1 << 20)).is_ok());
    assert!(matches!(
        read_container(&b, &limits(total - 1, 1 << 20)),
        Err(Error::LimitExceeded { .. })
    ));
    let n = (c.layers.len() + c.coded.len() + c.passthrough.len()) as u64;
    assert!(read_container(&b, &limits(total, n)).is_ok());
    assert!(matches!(
        read_container(&b, &limits(total, n - 1)),
        Err(Error::LimitExceeded { .. })
    ));
    // Scales near f32::MAX: every value finite, the sum over the rank is not.
    let mut big = c.coded.clone();
    let t = big.iter_mut().find(|t| t.rank > 0).unwrap();
    for m in &mut t.matrices {
        m.scales.iter_mut().for_each(|s| *s = 1.0e30);
    }
    let bytes = write_container(&ContainerParts {
        predictor: &c.predictor,
        layers: &c.layers,
        permutations: &c.permutations,
        passthrough: Vec::new(),
        coded: &big,
        source_metadata: None,
        metadata: None,
        raw_predictor: false,
        raw_data: false,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (
        dir.path().join("big.nern"),
        dir.path().join("out.safetensors"),
    );
    std::fs::write(&input, &bytes).unwrap();
    let e = nernc::decode::decode_file(&input, &out, 2, &Limits::default()).unwrap_err();
    malformed(e, "CODE", "decodes to");
    assert!(!out.exists(), "no output after a refused decode");
}

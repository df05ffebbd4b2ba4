//! Spec §6.1: nernc's positional encoding against the independently computed test vectors in
//! `spec/vectors/pe_vectors.txt` (made by `spec/vectors/pe_vectors.py` from exact rationals),
//! bit for bit: `pow(B, k)`, `f_k`, `t`, libm 0.2.16's binary64 `sin`/`cos`, and the f32
//! encoding values through the public `PredictorConfig::{frequencies, pe_table}` and
//! `encode_coordinate`.

use nernc::predictor::{PredictorConfig, encode_coordinate};

const VECTORS: &str = include_str!("../spec/vectors/pe_vectors.txt");

struct Freq {
    k: usize,
    pow: u64,
    freq: u64,
}

struct Pe {
    k: usize,
    n: u32,
    t: u64,
    sin64: u64,
    cos64: u64,
    sin32: u32,
    cos32: u32,
}

struct Case {
    base: f64,
    levels: u32,
    freqs: Vec<Freq>,
    pes: Vec<Pe>,
}

fn hex64(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
}

fn hex32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[0] {
            "base" => {
                assert_eq!((f.len(), f[3]), (5, "levels"), "{line}");
                let base = f64::from_bits(hex64(f[1]));
                assert_eq!(base, f[2].parse::<f64>().unwrap(), "{line}");
                cases.push(Case {
                    base,
                    levels: f[4].parse().unwrap(),
                    freqs: Vec::new(),
                    pes: Vec::new(),
                });
            }
            "freq" => {
                assert_eq!(f.len(), 5, "{line}");
                cases.last_mut().unwrap().freqs.push(Freq {
                    k: f[1].parse().unwrap(),
                    pow: hex64(f[2]),
                    freq: hex64(f[3]),
                });
            }
            "pe" => {
                assert_eq!(f.len(), 9, "{line}");
                cases.last_mut().unwrap().pes.push(Pe {
                    k: f[1].parse().unwrap(),
                    n: f[2].parse().unwrap(),
                    t: hex64(f[3]),
                    sin64: hex64(f[4]),
                    cos64: hex64(f[5]),
                    sin32: hex32(f[6]),
                    cos32: hex32(f[7]),
                });
            }
            other => panic!("unknown line kind {other:?}"),
        }
    }
    cases
}

/// Every disagreement between nernc/libm and the vectors, as readable lines.
fn mismatches(cases: &[Case]) -> Vec<String> {
    let mut out = Vec::new();
    for c in cases {
        let cfg = PredictorConfig::reference(8, 3, c.levels, c.base);
        let freqs = cfg.frequencies();
        if freqs.len() != c.freqs.len() {
            out.push(format!("B={}: {} levels listed", c.base, c.freqs.len()));
            continue;
        }
        for v in &c.freqs {
            let pow = libm::pow(c.base, v.k as f64);
            if pow.to_bits() != v.pow {
                out.push(format!(
                    "B={} k={}: libm pow {:016x}, vector {:016x}",
                    c.base,
                    v.k,
                    pow.to_bits(),
                    v.pow
                ));
            }
            if freqs[v.k].to_bits() != v.freq {
                out.push(format!(
                    "B={} k={}: f_k {:016x}, vector {:016x}",
                    c.base,
                    v.k,
                    freqs[v.k].to_bits(),
                    v.freq
                ));
            }
        }
        let rows = c.pes.iter().map(|p| p.n).max().unwrap_or(0) as usize + 1;
        let table = cfg.pe_table(rows);
        let cw = cfg.coord_width();
        let mut enc = vec![0f32; cw];
        for p in &c.pes {
            let at = format!("B={} k={} n={}", c.base, p.k, p.n);
            let t = freqs[p.k] * f64::from(p.n);
            if t.to_bits() != p.t {
                out.push(format!("{at}: t {:016x}, vector {:016x}", t.to_bits(), p.t));
            }
            let t = f64::from_bits(p.t);
            let (s, co) = (libm::sin(t), libm::cos(t));
            if (s.to_bits(), co.to_bits()) != (p.sin64, p.cos64) {
                out.push(format!(
                    "{at}: libm sin/cos {:016x} {:016x}, vector {:016x} {:016x}",
                    s.to_bits(),
                    co.to_bits(),
                    p.sin64,
                    p.cos64
                ));
            }
            encode_coordinate(p.n, &freqs, &mut enc);
            let row = &table[p.n as usize * cw..(p.n as usize + 1) * cw];
            for (what, got) in [("encode_coordinate", &enc[..]), ("pe_table", row)] {
                let pair = (got[2 * p.k].to_bits(), got[2 * p.k + 1].to_bits());
                if pair != (p.sin32, p.cos32) {
                    out.push(format!(
                        "{at}: {what} {:08x} {:08x}, vector {:08x} {:08x}",
                        pair.0, pair.1, p.sin32, p.cos32
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn vectors_cover_the_required_cases() {
    let cases = parse(VECTORS);
    let have: Vec<(f64, u32)> = cases.iter().map(|c| (c.base, c.levels)).collect();
    // The goldens' base, the review's 1.3 with 64 levels, and powers of integers.
    for want in [(0.76, 40), (1.3, 64), (2.0, 24)] {
        assert!(have.contains(&want), "{want:?} missing from {have:?}");
    }
    for c in &cases {
        assert_eq!(c.freqs.len(), c.levels as usize, "B={}", c.base);
        assert!(c.freqs.iter().enumerate().all(|(i, f)| f.k == i));
        let ns: std::collections::BTreeSet<u32> = c.pes.iter().map(|p| p.n).collect();
        assert!(ns.len() >= 10, "B={}: {ns:?}", c.base);
        assert_eq!(c.pes.len(), c.levels as usize * ns.len(), "B={}", c.base);
    }
}

#[test]
fn positional_encoding_matches_the_vectors_bit_for_bit() {
    let bad = mismatches(&parse(VECTORS));
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The comparison is strict: one flipped bit in any column of any vector is reported.
#[test]
fn one_flipped_bit_in_a_vector_is_caught() {
    let pristine = parse(VECTORS);
    let mut flips = 0;
    for col in 0..7 {
        for bit in [0u32, 17, 31] {
            let mut cases = parse(VECTORS);
            let c = &mut cases[1];
            let i = (col * 37 + bit as usize) % c.pes.len();
            let j = i % c.freqs.len();
            match col {
                0 => c.freqs[j].pow ^= 1 << bit,
                1 => c.freqs[j].freq ^= 1 << bit,
                2 => c.pes[i].t ^= 1 << bit,
                3 => c.pes[i].sin64 ^= 1 << bit,
                4 => c.pes[i].cos64 ^= 1 << bit,
                5 => c.pes[i].sin32 ^= 1 << bit,
                _ => c.pes[i].cos32 ^= 1 << bit,
            }
            assert!(!mismatches(&cases).is_empty(), "column {col} bit {bit}");
            flips += 1;
        }
    }
    assert_eq!(flips, 21);
    assert!(mismatches(&pristine).is_empty());
}

/// The checked-in vectors are the script's output (skipped where python3 is not installed).
#[test]
fn vector_file_is_what_the_script_prints() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/vectors/pe_vectors.py");
    match std::process::Command::new("python3").arg(script).output() {
        Ok(o) if o.status.success() => {
            assert!(
                String::from_utf8_lossy(&o.stdout) == VECTORS,
                "spec/vectors/pe_vectors.txt is stale: rerun the script"
            );
        }
        Ok(o) => panic!("{script} failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => println!("python3 not available ({e}): vector file not regenerated"),
    }
}

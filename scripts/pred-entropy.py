#!/usr/bin/env python3
# Entropy-coding headroom of a .nern predictor (issue 11, lever 2): the bytes PRED takes now, the
# same integer codes stored one per byte (the int8 layout, and code layout 1 of format 1.5) under
# zstd-19, and the order-0 entropy
# of the codes per layer (what a static per-layer arithmetic/rANS coder would approach).
#
#   scripts/pred-entropy.py FILE.nern     (needs the zstandard module: out/torchenv has it)
import math, struct, sys, collections
import zstandard
path = sys.argv[1]
b = open(path, "rb").read()
n = struct.unpack_from("<I", b, 12)[0]
for i in range(n):
    e = 32 + 64 * i
    tag = b[e:e+4].decode()
    enc = b[e+6]
    off, stored, decoded = struct.unpack_from("<QQQ", b, e + 8)
    if tag == "PRED":
        raw = b[off:off+stored]
        if enc == 1:
            raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=decoded)
        pred_stored = stored
L, conv, act, dtype, layout = struct.unpack_from("<IBBBB", raw, 0)
K, D = struct.unpack_from("<II", raw, 16)
widths = struct.unpack_from(f"<{D+1}I", raw, 24)
q = {3: 8, 4: 4, 5: 6, 6: 5}[dtype]
pos = 24 + 4 * (D + 1)
header = raw[:pos]
int8_layout = bytearray(header)
int8_layout[6] = 3
ent_bits = 0.0
hist_total = collections.Counter()
layout1_codes, layout1_tail = bytearray(), bytearray()
byte_codes = []
if layout == 1:  # format 1.5: every layer's codes first, one byte each
    for i in range(D):
        m = widths[i] * widths[i + 1]
        byte_codes.append(raw[pos:pos + m]); pos += m
for i in range(D):
    wi, wo = widths[i], widths[i + 1]
    m = wi * wo
    if layout == 1:
        scales = raw[pos:pos + 4 * wo]; pos += 4 * wo
        packed = byte_codes[i]
        bias = raw[pos:pos + 4 * wo]; pos += 4 * wo
    else:
        scales = raw[pos:pos + 4 * wo]; pos += 4 * wo
        nbytes = (m * q + 7) // 8
        packed = raw[pos:pos + nbytes]; pos += nbytes
        bias = raw[pos:pos + 4 * wo]; pos += 4 * wo
    if q == 8 or layout == 1:
        codes = [x - 256 if x > 127 else x for x in packed]
    else:
        bits = int.from_bytes(packed, "little")
        mask = (1 << q) - 1
        codes = []
        for k in range(m):
            v = (bits >> (k * q)) & mask
            codes.append(v - (1 << q) if v >> (q - 1) else v)
    c = collections.Counter(codes)
    hist_total.update(c)
    ent_bits += -sum(v * math.log2(v / m) for v in c.values())
    int8_layout += scales + bytes((x & 255) for x in codes) + bias
    layout1_codes += bytes((x & 255) for x in codes)
    layout1_tail += scales + bias
assert pos == len(raw)
z = zstandard.ZstdCompressor(level=19)
alt = len(z.compress(bytes(int8_layout)))
packed_z = len(z.compress(raw))
layout1_header = bytearray(header)
layout1_header[7] = 1
layout1 = len(z.compress(bytes(layout1_header + layout1_codes + layout1_tail)))
ncodes = sum(hist_total.values())
side = len(raw) - sum(widths[i] * widths[i+1] for i in range(D)) * (1 if layout == 1 else q / 8)
print(f"{path}: dtype q={q}, code layout {layout}, widths {widths}")
print(f"  PRED stored now: {pred_stored} bytes (raw {len(raw)}, zstd-19 of packed {packed_z})")
print(f"  codes one per byte + zstd-19 (int8 container): {alt} bytes ({100 * (alt - pred_stored) / pred_stored:+.1f} %)")
print(f"  code layout 1 (all codes first, one byte each) + zstd-19: {layout1} bytes ({100 * (layout1 - pred_stored) / pred_stored:+.1f} %)")
print(f"  order-0 entropy of codes, per layer: {ent_bits / ncodes:.3f} bits/code -> {ent_bits / 8 + side:.0f} bytes with scales/biases/header raw")
print(f"  file: {len(b)} bytes; with the int8 container it would be {len(b) - pred_stored + alt}")

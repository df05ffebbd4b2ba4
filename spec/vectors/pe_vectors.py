#!/usr/bin/env python3
"""Positional-encoding test vectors for spec/nern-format.md section 6.1, computed without nernc.

Standard library only (fractions, decimal). Every step of section 6.1 is done exactly or to
proven precision and rounded the way the spec says:

    pow_k = pow(B, k)             the binary64 nearest to the exact B^k (B is the binary64 base)
    f_k   = RN64(PI64 * pow_k)    PI64 = 0x400921FB54442D18, one correctly rounded product
    t     = RN64(f_k * n)         one correctly rounded product
    sin64 = RN64(sin(t)), cos64 = RN64(cos(t))   (exact sine/cosine of the binary64 t)
    PE    = RN32(sin64), RN32(cos64)            (binary64 -> binary32, ties to even)

RN is round to nearest, ties to even. The spec's routines are those of the Rust libm crate
0.2.16; they are not correctly rounded everywhere. Where a libm result is not the correctly
rounded one, that case is listed in LIBM_EXCEPTIONS below (found by tests/spec_vectors.rs,
which checks every value here against nernc and libm bit for bit), the vector carries libm's
value (the spec's routine wins) and the line is marked. The downstream steps are still
computed here from that value, and where the binary32 result differs from the one an
all-correctly-rounded pipeline gives, the line says so (`f32-cr:<sin>/<cos>`).

Run:  python3 spec/vectors/pe_vectors.py > spec/vectors/pe_vectors.txt
"""

import decimal
import functools
from decimal import Decimal
from fractions import Fraction

# (base as a Python float = binary64, levels L)
CASES = [(0.76, 40), (1.3, 64), (2.0, 24), (3.0, 24)]
# Coordinate values n (layer / filter / channel positions).
COORDS = [0, 1, 2, 3, 5, 7, 16, 63, 64, 255, 511, 4095]

PI64_BITS = 0x400921FB54442D18

# Where libm 0.2.16 is not correctly rounded: (routine, base, k[, n]) -> libm result minus the
# correctly rounded binary64 result, in units in the last place. Routine "pow" is pow(B, k);
# "sin"/"cos" are of t = f_k * n.
LIBM_EXCEPTIONS = {
    ("pow", 0.76, 26): -1,
    ("pow", 1.3, 7): -1,
    ("pow", 1.3, 17): -1,
    ("pow", 1.3, 28): +1,
    ("pow", 1.3, 31): +1,
    # sin/cos: (routine, base, k, n)
    ("cos", 0.76, 2, 16): -1,
    ("cos", 0.76, 4, 64): -1,
    ("cos", 0.76, 5, 255): -1,
    ("sin", 0.76, 9, 511): -1,
    ("cos", 0.76, 10, 64): +1,
    ("sin", 0.76, 10, 4095): +1,
    ("cos", 0.76, 10, 4095): +1,
    ("sin", 0.76, 11, 5): +1,
    ("cos", 0.76, 11, 5): -1,
    ("cos", 0.76, 14, 16): +1,
    ("sin", 0.76, 18, 5): +1,
    ("cos", 0.76, 19, 16): -1,
    ("cos", 0.76, 22, 64): +1,
    ("sin", 0.76, 25, 255): -1,
    ("sin", 0.76, 27, 255): +1,
    ("sin", 0.76, 32, 255): +1,
    ("sin", 0.76, 35, 255): +1,
    ("sin", 1.3, 2, 64): +1,
    ("sin", 1.3, 4, 2): -1,
    ("cos", 1.3, 11, 16): +1,
    ("cos", 1.3, 13, 1): -1,
    ("sin", 1.3, 13, 16): -1,
    ("sin", 1.3, 16, 511): -1,
    ("sin", 1.3, 17, 64): +1,
    ("sin", 1.3, 18, 5): -1,
    ("cos", 1.3, 18, 7): +1,
    ("cos", 1.3, 19, 1): +1,
    ("sin", 1.3, 20, 4095): -1,
    ("sin", 1.3, 26, 2): -1,
    ("cos", 1.3, 26, 7): +1,
    ("sin", 1.3, 30, 255): -1,
    ("sin", 1.3, 33, 7): -1,
    ("cos", 1.3, 33, 63): -1,
    ("cos", 1.3, 33, 64): +1,
    ("sin", 1.3, 34, 2): -1,
    ("cos", 1.3, 34, 255): -1,
    ("sin", 1.3, 39, 1): -1,
    ("sin", 1.3, 42, 16): -1,
    ("sin", 1.3, 43, 5): -1,
    ("sin", 1.3, 54, 2): +1,
    ("sin", 1.3, 55, 2): +1,
    ("cos", 1.3, 55, 511): -1,
    ("cos", 1.3, 55, 4095): +1,
    ("cos", 1.3, 56, 3): -1,
    ("cos", 1.3, 60, 2): +1,
    ("sin", 1.3, 60, 511): +1,
    ("cos", 1.3, 60, 4095): -1,
    ("cos", 1.3, 61, 5): -1,
    ("cos", 1.3, 61, 255): -1,
    ("cos", 1.3, 63, 5): -1,
}

# --- binary formats, exactly -----------------------------------------------------------------

F64 = (53, -1022, 1023, 11)  # precision, emin, emax, exponent bits
F32 = (24, -126, 127, 8)


def floor_log2(a):
    """floor(log2(a)) for a positive Fraction."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    elif Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


def round_to(x, fmt):
    """Round the rational x to the binary format fmt, to nearest, ties to even."""
    p, emin, emax, _ = fmt
    if x == 0:
        return Fraction(0)
    sign = -1 if x < 0 else 1
    a = abs(x)
    e = max(floor_log2(a), emin)
    quantum = Fraction(2) ** (e - (p - 1))
    q, r = divmod(a, quantum)  # q integer, r Fraction remainder
    half = quantum / 2
    if r > half or (r == half and q % 2 == 1):
        q += 1
    v = q * quantum
    if v >= Fraction(2) ** (emax + 1):
        raise OverflowError(x)
    return sign * v


def bits(v, fmt):
    """The IEEE bit pattern of the exactly representable value v in fmt."""
    p, emin, _, ebits = fmt
    bias = (1 << (ebits - 1)) - 1
    sign = 1 if v < 0 else 0
    a = abs(v)
    if a == 0:
        return sign << (ebits + p - 1)
    e = floor_log2(a)
    if e < emin:
        exp, mant = 0, a / Fraction(2) ** (emin - (p - 1))
    else:
        exp, mant = e + bias, a / Fraction(2) ** (e - (p - 1)) - (1 << (p - 1))
    assert mant.denominator == 1, v
    return (sign << (ebits + p - 1)) | (exp << (p - 1)) | int(mant)


def from_bits64(b):
    sign = -1 if b >> 63 else 1
    exp = (b >> 52) & 0x7FF
    mant = b & ((1 << 52) - 1)
    if exp == 0:
        return sign * Fraction(mant) * Fraction(2) ** (-1074)
    return sign * Fraction((1 << 52) | mant) * Fraction(2) ** (exp - 1075)


def ulp_step(v, steps, fmt):
    """v moved by `steps` units in the last place of fmt (v and the result normal, same binade)."""
    p = fmt[0]
    e = floor_log2(abs(v))
    return v + steps * Fraction(2) ** (e - (p - 1))


# --- sine and cosine to proven precision -------------------------------------------------

@functools.lru_cache(maxsize=None)
def pi_decimal(digits):
    """pi to `digits` significant digits (Machin: 16 atan(1/5) - 4 atan(1/239))."""
    with decimal.localcontext() as ctx:
        ctx.prec = digits + 10

        def atan_inv(x):
            x = Decimal(x)
            total, term, k, x2 = Decimal(0), 1 / x, 1, x * x
            while term != 0:
                total += term / k if (k // 2) % 2 == 0 else -term / k
                term /= x2
                k += 2
            return total

        pi = 16 * atan_inv(5) - 4 * atan_inv(239)
    return +pi


def sin_cos(t, digits):
    """(sin t, cos t) as Decimals with absolute error below 10**-digits, t a Fraction."""
    work = digits + 40
    with decimal.localcontext() as ctx:
        ctx.prec = work
        td = Decimal(float(t))  # t is a binary64 value: this conversion is exact
        assert Fraction(td) == t
        half_pi = pi_decimal(work + 20) / 2
        m = int((td / half_pi).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))
        r = td - m * half_pi  # |r| <= pi/4 (+ rounding)
        s, c = Decimal(0), Decimal(0)
        term, k = r, 1  # sin series
        while abs(term) > Decimal(10) ** -(work + 5):
            s += term
            term = -term * r * r / ((k + 1) * (k + 2))
            k += 2
        term, k = Decimal(1), 0  # cos series
        while abs(term) > Decimal(10) ** -(work + 5):
            c += term
            term = -term * r * r / ((k + 1) * (k + 2))
            k += 2
        quadrant = m % 4
        return [(s, c), (c, -s), (-s, -c), (-c, s)][quadrant]


def rn64_sin_cos(t):
    """Correctly rounded binary64 sin(t) and cos(t) (Ziv's loop: widen until both ends of the
    error interval round alike)."""
    digits = 40
    while True:
        out = []
        eps = Fraction(1, 10**digits)
        for v in map(Fraction, sin_cos(t, digits)):
            lo, hi = round_to(v - eps, F64), round_to(v + eps, F64)
            if lo != hi:
                break
            out.append(lo)
        else:
            return out
        digits *= 2
        assert digits < 2000, "sin/cos rounding not resolved"


# --- the vectors ---------------------------------------------------------------------------

def main():
    pi64 = from_bits64(PI64_BITS)
    assert float(pi64) == 3.141592653589793
    print("# Positional-encoding test vectors, spec/nern-format.md section 6.1.")
    print("# Generated by spec/vectors/pe_vectors.py (Python standard library, exact rationals);")
    print("# checked bit for bit by tests/spec_vectors.rs. All values are IEEE bit patterns in hex.")
    print("#")
    print("# base <B as f64 bits> <B decimal> levels <L>")
    print("# freq <k> <pow(B,k) f64> <f_k f64> <cr|libm(+-N ulp vs correctly rounded)>")
    print("# pe <k> <n> <t f64> <sin f64> <cos f64> <sin f32> <cos f32> <cr|note>")
    print("#   pe rows follow their base; t = f_k * n; the f32 values are PE(n)[2k], PE(n)[2k+1].")
    print("# Every value is what libm 0.2.16 (pow, sin, cos) and the spec's roundings give.")
    print("# 'cr': libm's results on this line are the correctly rounded ones (computed here).")
    print("# 'libm(-1ulp)': libm's result is one unit in the last place below the correctly")
    print("#   rounded one (+1ulp: above); the line holds libm's value; pe lines of such a freq")
    print("#   use its f_k. 'sin:'/'cos:' prefixes say which function of a pe line.")
    print("# 'f32-cr:S/C': with correctly rounded pow/sin/cos the f32 values would be S/C instead.")
    print("# libm results that are not correctly rounded here:", len(LIBM_EXCEPTIONS))
    for base, levels in CASES:
        bq = Fraction(base)
        print(f"base {bits(bq, F64):016x} {base!r} levels {levels}")
        freqs, freqs_cr = [], []
        for k in range(levels):
            pow_cr = round_to(bq**k, F64)
            off = LIBM_EXCEPTIONS.get(("pow", base, k), 0)
            pw = ulp_step(pow_cr, off, F64) if off else pow_cr
            f = round_to(pi64 * pw, F64)
            freqs.append(f)
            freqs_cr.append(round_to(pi64 * pow_cr, F64))
            note = "cr" if off == 0 else f"libm({off:+d}ulp)"
            print(f"freq {k} {bits(pw, F64):016x} {bits(f, F64):016x} {note}")
        for k, f in enumerate(freqs):
            for n in COORDS:
                t = round_to(f * n, F64)
                outs, notes = [], []
                exact = rn64_sin_cos(t) if t != 0 else [Fraction(0), Fraction(1)]
                for v, name in zip(exact, ("sin", "cos")):
                    off = LIBM_EXCEPTIONS.get((name, base, k, n), 0)
                    if off:
                        v = ulp_step(v, off, F64)
                        notes.append(f"{name}:libm({off:+d}ulp)")
                    outs.append(v)
                s64, c64 = outs
                s32, c32 = round_to(s64, F32), round_to(c64, F32)
                # The same step with correctly rounded pow, sin and cos throughout.
                t_cr = round_to(freqs_cr[k] * n, F64)
                if t_cr != t:
                    notes.insert(0, "t:from-libm-pow")
                    exact = rn64_sin_cos(t_cr) if t_cr != 0 else [Fraction(0), Fraction(1)]
                cr32 = [round_to(v, F32) for v in exact]
                if cr32 != [s32, c32]:
                    notes.append("f32-cr:%08x/%08x" % tuple(bits(v, F32) for v in cr32))
                note = ",".join(notes) or "cr"
                print(
                    f"pe {k} {n} {bits(t, F64):016x} {bits(s64, F64):016x} "
                    f"{bits(c64, F64):016x} {bits(s32, F32):08x} {bits(c32, F32):08x} {note}"
                )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The frontier table and plot from the JSON files scripts/frontier.sh leaves in OUT.
    python3 scripts/frontier_table.py OUT FIXTURE...
Writes OUT/frontier.md and OUT/frontier.svg (standard library only) and prints the table.
"""
import glob
import json
import os
import re
import sys

out, fixtures = sys.argv[1], sys.argv[2:]


def load(path):
    with open(path) as f:
        return json.load(f)


rows = []  # (fixture, method, size %, held-out, test, seconds, device)
for fx in fixtures:
    for bits in ("int8", "int4", "int3", "int2"):
        p = os.path.join(out, f"{fx}-ptq-{bits}.json")
        if os.path.exists(p):
            r = load(p)
            rows.append((fx, f"plain {bits} per-channel + zstd", r["quantized"]["percent"], None,
                         r["model"]["accuracy"], None, "cpu"))
    p = os.path.join(out, f"{fx}-qat.json")
    if os.path.exists(p):
        r = load(p)
        for bits, v in sorted(r["by_bits"].items()):
            rows.append((fx, f"QAT {bits}-bit + KD, 600 steps (PyTorch)", v["pct"], None, v["acc"],
                         v["seconds"], "cpu"))
    def budget_and_seed(p):
        m = re.search(r"-([0-9.]+)-s(\d+)\.json$", p)
        return (float(m.group(1)), int(m.group(2))) if m else (0.0, 0)

    for p in sorted(glob.glob(os.path.join(out, f"{fx}-*-s*.json")), key=budget_and_seed):
        m = re.match(rf"{re.escape(fx)}-([0-9.]+)-s(\d+)\.json$", os.path.basename(p))
        if not m:
            continue
        r = load(p)
        wall = None
        if os.path.exists(p + ".wall"):
            wall = load(p + ".wall")["wall_seconds"]
        pct = 100.0 * r["nern_bytes"] / r["source_bytes"]
        d = r.get("distill") or {}
        hidden = next((c["hidden"] for c in r.get("candidates", []) if c.get("chosen")), None)
        # A width the size probe widened is told by the notes.
        for note in r.get("notes", []):
            found = re.search(r"was widened to (\d+)", note)
            if found:
                hidden = int(found.group(1))
        label = f"nernc <= {m.group(1)} %, seed {m.group(2)}"
        if hidden:
            label += f" (hidden {hidden})"
        rows.append((fx, label, pct, r["accuracy"]["held_out"], r["accuracy"]["test"],
                     wall or r["total_seconds"], r.get("device", "?")))

fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)
lines = ["| fixture | method | size % | held-out % | test % | seconds | device |",
         "|---|---|---|---|---|---|---|"]
for fx, meth, pct, held, test, sec, dev in rows:
    lines.append(f"| {fx} | {meth} | {pct:.2f} | {fmt(held)} | {fmt(test)} | {fmt(sec, '{:.0f}')} | {dev} |")
table = "\n".join(lines)
with open(os.path.join(out, "frontier.md"), "w") as f:
    f.write(table + "\n")
print(table)

# The plot: one panel per fixture, size % (x) against test accuracy (y).
W, H, PAD = 420, 300, 48
colors = {"plain": "#888888", "QAT": "#d95f02", "nernc": "#1b9e77"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * max(1, len(fixtures))}" height="{H}" '
       'font-family="sans-serif" font-size="11">']
for i, fx in enumerate(fixtures):
    # Points below 80 % (collapsed settings, e.g. int2) stay in the table but off the plot.
    pts = [(r[2], r[4], r[1].split()[0]) for r in rows
           if r[0] == fx and r[4] is not None and r[4] >= 80.0]
    x0 = i * W
    svg.append(f'<text x="{x0 + W / 2}" y="14" text-anchor="middle">{fx}</text>')
    if not pts:
        continue
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    xlo, xhi = 0.0, max(xs) * 1.05
    ylo, yhi = min(ys) - 0.5, max(ys) + 0.3
    X = lambda v: x0 + PAD + (v - xlo) / (xhi - xlo) * (W - 1.5 * PAD)
    Y = lambda v: H - PAD + (-(v - ylo) / (yhi - ylo)) * (H - 1.6 * PAD)
    svg.append(f'<line x1="{X(xlo)}" y1="{Y(ylo)}" x2="{X(xhi)}" y2="{Y(ylo)}" stroke="black"/>')
    svg.append(f'<line x1="{X(xlo)}" y1="{Y(ylo)}" x2="{X(xlo)}" y2="{Y(yhi)}" stroke="black"/>')
    for k in range(5):
        xv = xlo + (xhi - xlo) * k / 4
        yv = ylo + (yhi - ylo) * k / 4
        svg.append(f'<text x="{X(xv)}" y="{Y(ylo) + 14}" text-anchor="middle">{xv:.1f}</text>')
        svg.append(f'<text x="{X(xlo) - 4}" y="{Y(yv) + 4}" text-anchor="end">{yv:.1f}</text>')
    svg.append(f'<text x="{X((xlo + xhi) / 2)}" y="{H - 8}" text-anchor="middle">size, % of fp32</text>')
    svg.append(f'<text x="{x0 + 10}" y="{H / 2}" transform="rotate(-90 {x0 + 10} {H / 2})" '
               'text-anchor="middle">test accuracy %</text>')
    for kind, color in colors.items():
        series = sorted((p[0], p[1]) for p in pts if p[2] == kind)
        if len(series) > 1:
            path = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in series)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{color}"/>')
        for a, b in series:
            svg.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="3" fill="{color}"/>')
    for j, (kind, color) in enumerate(colors.items()):
        svg.append(f'<text x="{x0 + W - 1.2 * PAD}" y="{30 + 14 * j}" fill="{color}">{kind}</text>')
svg.append("</svg>")
with open(os.path.join(out, "frontier.svg"), "w") as f:
    f.write("\n".join(svg) + "\n")

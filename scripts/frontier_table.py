#!/usr/bin/env python3
"""The frontier table and plot from the JSON files scripts/frontier.sh leaves in OUT.
    python3 scripts/frontier_table.py OUT FIXTURE...
Also reads OUT/points.csv when present: points measured by earlier runs whose JSON is not
kept (columns fixture, kind, label, size_pct, test_pct, source; kind is nernc, plain, QAT or
original). docs/frontier/ holds the README's points that way.
Writes OUT/frontier.md and one plot per fixture, OUT/frontier-FIXTURE.svg (size % against test
accuracy, standard library only), and prints the table.
"""
import csv
import glob
import json
import os
import re
import sys

out, fixtures = sys.argv[1], sys.argv[2:]


def load(path):
    with open(path) as f:
        return json.load(f)


rows = []  # (fixture, kind, label, size %, held-out, test, seconds, device or source)
original = {}  # fixture -> test accuracy of the fp32 checkpoint
for fx in fixtures:
    for bits in ("int8", "int4", "int3", "int2"):
        p = os.path.join(out, f"{fx}-ptq-{bits}.json")
        if os.path.exists(p):
            r = load(p)
            original.setdefault(fx, r["reference"]["accuracy"])
            rows.append((fx, "plain", f"plain {bits} per-channel + zstd", r["quantized"]["percent"],
                         None, r["model"]["accuracy"], None, "cpu"))
    # FX-qat.json is seed 0 (the shared bench's own draw), FX-qat-sS.json seed S.
    for p in sorted(glob.glob(os.path.join(out, f"{fx}-qat*.json"))):
        m = re.match(rf"{re.escape(fx)}-qat(?:-s(\d+))?\.json$", os.path.basename(p))
        if not m:
            continue
        r = load(p)
        for bits, v in sorted(r["by_bits"].items()):
            rows.append((fx, "QAT", f"QAT {bits}-bit + KD 600 steps (PyTorch), seed {m.group(1) or 0}",
                         v["pct"], None, v["acc"], v["seconds"], "cpu"))

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
        hidden = next((c["hidden"] for c in r.get("candidates", []) if c.get("chosen")), None)
        # A width the size probe widened is told by the notes.
        for note in r.get("notes", []):
            found = re.search(r"was widened to (\d+)", note)
            if found:
                hidden = int(found.group(1))
        label = f"nernc <= {m.group(1)} %, seed {m.group(2)}"
        if hidden:
            label += f" (hidden {hidden})"
        rows.append((fx, "nernc", label, pct, r["accuracy"]["held_out"], r["accuracy"]["test"],
                     wall or r["total_seconds"], r.get("device", "?")))

    # Coded-conv recipes (frontier.sh's CODED): one point per recipe and seed.
    for p in sorted(glob.glob(os.path.join(out, f"{fx}-code-*-s*.json"))):
        m = re.match(rf"{re.escape(fx)}-code-(.+)-s(\d+)\.json$", os.path.basename(p))
        if not m:
            continue
        r = load(p)
        wall = load(p + ".wall")["wall_seconds"] if os.path.exists(p + ".wall") else None
        rows.append((fx, "nernc", f"nernc coded convs, recipe {m.group(1)}, seed {m.group(2)}",
                     100.0 * r["nern_bytes"] / r["source_bytes"], r["accuracy"]["held_out"],
                     r["accuracy"]["test"], wall or r["total_seconds"], r.get("device", "?")))

points = os.path.join(out, "points.csv")
if os.path.exists(points):
    with open(points, newline="") as f:
        for r in csv.DictReader(f):
            if r["fixture"] not in fixtures:
                continue
            if r["kind"] == "original":
                original[r["fixture"]] = float(r["test_pct"])
                continue
            rows.append((r["fixture"], r["kind"], r["label"], float(r["size_pct"]), None,
                         float(r["test_pct"]), None, r["source"]))

fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)
lines = ["| fixture | method | size % | held-out % | test % | seconds | device / source |",
         "|---|---|---|---|---|---|---|"]
for fx in fixtures:
    for _, kind, label, pct, held, test, sec, dev in sorted(
            (r for r in rows if r[0] == fx), key=lambda r: r[3]):
        lines.append(f"| {fx} | {label} | {pct:.2f} | {fmt(held)} | {fmt(test)} | "
                     f"{fmt(sec, '{:.0f}')} | {dev} |")
table = "\n".join(lines)
with open(os.path.join(out, "frontier.md"), "w") as f:
    f.write(table + "\n")
print(table)


def front(series):
    """The points no smaller-or-equal point beats on accuracy: the kind's frontier."""
    best, kept = float("-inf"), []
    for a, b in sorted(series, key=lambda p: (p[0], -p[1])):
        if b > best:
            kept.append((a, b))
            best = b
    return kept


def recipe(label):
    """A run's label without its seed and width: the runs of one recipe share it."""
    return re.sub(r",? seed \d+| \(hidden \d+\)", "", label)


def means(runs):
    """(size, test) averaged over the runs of each recipe: seeds are draws, not choices."""
    groups = {}
    for a, b, label in runs:
        groups.setdefault(recipe(label), []).append((a, b))
    return [(sum(a for a, _ in g) / len(g), sum(b for _, b in g) / len(g))
            for g in groups.values()]


# One plot per fixture: size % (x) against test accuracy (y), over the sizes and accuracies
# where the codecs compete; a point outside is drawn on the edge as a triangle with its figures.
W, H, L, R, T, B = 560, 360, 56, 16, 28, 44
colors = {"nernc": "#1b9e77", "QAT": "#d95f02", "plain": "#666666"}
names = {"nernc": "nernc", "QAT": "QAT + KD (PyTorch)", "plain": "plain per-channel + zstd"}
for fx in fixtures:
    pts = [(r[3], r[5], r[1], r[2]) for r in rows if r[0] == fx and r[5] is not None]
    if not pts:
        continue
    orig = original.get(fx)
    inside = [p for p in pts if p[0] <= 15 and (orig is None or p[1] >= orig - 1.0)]
    xhi = max([p[0] for p in inside] + [1.0]) * 1.08
    ys = [p[1] for p in inside] + ([orig] if orig else [])
    ylo, yhi = min(ys) - 0.15, max(ys) + 0.12
    X = lambda v: L + v / xhi * (W - L - R)
    Y = lambda v: H - B - (v - ylo) / (yhi - ylo) * (H - B - T)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{fx}: size against '
           'test accuracy (10,000 images)</text>']
    svg.append(f'<line x1="{L}" y1="{Y(ylo):.1f}" x2="{W - R}" y2="{Y(ylo):.1f}" stroke="black"/>')
    svg.append(f'<line x1="{L}" y1="{Y(ylo):.1f}" x2="{L}" y2="{T}" stroke="black"/>')
    for k in range(0, int(xhi) + 1):
        svg.append(f'<line x1="{X(k):.1f}" y1="{Y(ylo):.1f}" x2="{X(k):.1f}" '
                   f'y2="{Y(ylo) + 4:.1f}" stroke="black"/>')
        svg.append(f'<text x="{X(k):.1f}" y="{Y(ylo) + 16:.1f}" text-anchor="middle">{k}</text>')
    ystep = 0.1 if yhi - ylo <= 1 else 0.2 if yhi - ylo <= 2 else 0.5
    v = round(ylo / ystep + 0.5) * ystep
    while v <= yhi:
        svg.append(f'<line x1="{L - 4}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" '
                   'stroke="#e4e4e4"/>')
        svg.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        v += ystep
    svg.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">size, % of the '
               'fp32 checkpoint (every side table included)</text>')
    svg.append(f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" '
               'text-anchor="middle">test accuracy %</text>')
    if orig is not None:
        for v, text, dash in ((orig, f"original {orig:.2f} %", ""),
                              (orig - 0.3, "original - 0.3 points", ' stroke-dasharray="4 3"')):
            svg.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" '
                       f'stroke="#3366cc"{dash}/>')
            svg.append(f'<text x="{L + 4}" y="{Y(v) - 3:.1f}" fill="#3366cc">{text}</text>')
    for kind, color in colors.items():
        runs = [(a, b, label) for a, b, k, label in pts if k == kind]
        shown = [(a, b) for a, b, _ in runs if a <= xhi and b >= ylo]
        line = [(a, b) for a, b in front(means(runs)) if a <= xhi and b >= ylo]
        if len(line) > 1:
            path = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in line)
            svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       'stroke-width="1.5"/>')
        for a, b in shown:
            svg.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="3" fill="{color}" '
                       'fill-opacity="0.7"/>')
        for a, b, _ in runs:
            if a > xhi:
                # Past the right edge: a triangle pointing right at its accuracy (or the floor).
                x, y = X(xhi), Y(min(max(b, ylo), yhi))
                svg.append(f'<path d="M{x - 8:.1f},{y - 4:.1f} L{x - 8:.1f},{y + 4:.1f} '
                           f'L{x - 1:.1f},{y:.1f} Z" fill="{color}"/>')
                svg.append(f'<text x="{x - 11:.1f}" y="{y + 4:.1f}" text-anchor="end" '
                           f'fill="{color}">{a:.1f} %: {b:.2f}</text>')
            elif b < ylo:
                x, y = X(a), Y(ylo)
                svg.append(f'<path d="M{x - 4:.1f},{y - 8:.1f} L{x + 4:.1f},{y - 8:.1f} '
                           f'L{x:.1f},{y - 1:.1f} Z" fill="{color}"/>')
                svg.append(f'<text x="{x:.1f}" y="{y - 11:.1f}" text-anchor="middle" '
                           f'fill="{color}">{b:.1f}</text>')
    # The legend sits at the left, under the lines, where small sizes leave room.
    legend_y = (Y(orig - 0.3) if orig is not None else T) + 30
    for j, (kind, color) in enumerate(colors.items()):
        y = legend_y + 14 * j
        svg.append(f'<circle cx="{L + 14}" cy="{y - 4}" r="3" fill="{color}"/>')
        svg.append(f'<text x="{L + 22}" y="{y}" fill="{color}">{names[kind]}</text>')
    for j, text in enumerate(("dots: runs (seeds apart);", "lines: frontier of the",
                              "means of each recipe")):
        svg.append(f'<text x="{L + 10}" y="{legend_y + 14 * (len(colors) + j)}" '
                   f'fill="#444444">{text}</text>')
    svg.append("</svg>")
    with open(os.path.join(out, f"frontier-{fx}.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")

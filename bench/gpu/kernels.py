#!/usr/bin/env python3
"""Kernel-by-kernel comparison of one warm prefill and one decode step, from the CSVs of
`bench/gpu/run.sh profile NAME` (Nsight Compute, one duration per kernel).

Each side's process runs the same shape twice (an untimed run, then a timed one) after its own
set-up. The decode steps are the repeating tail of the kernel sequence; the last prefill is what
lies between them and the previous run's last decode step (with the first token's sampling).

    python3 bench/gpu/kernels.py ncu-engine-llama-8b-bf16.csv ncu-mlx-lm-llama-8b-bf16.csv [--top 25]
"""
import argparse
import csv
import gzip
import re
from collections import defaultdict


def load(path):
    rows = []
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        rows.append((short(r["Kernel Name"]), float(r["Metric Value"].replace(",", "")) / 1e3, r["Grid Size"]))
    return rows  # (name, microseconds, grid)


def short(name):
    """Template arguments and parameter lists dropped: the kernel's family."""
    name = re.sub(r"\(.*$", "", name)
    depth, out = 0, []
    for c in name:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out).replace("void ", "").strip()[:70]


def step_period(names, min_len=50):
    """The decode step's kernel count: the smallest p >= min_len with names[-p:] == names[-2p:-p]."""
    for p in range(min_len, len(names) // 2 + 1):
        if names[-p:] == names[-2 * p:-p]:
            return p
    return 0


def split(rows):
    """(prefill, one decode step, decode steps seen) of the last run: the decode steps are the
    repeating tail; the prefill is what lies between them and the previous run's last step."""
    names = [r[0] for r in rows]
    p = step_period(names)
    if not p:
        return rows, [], 0
    step = names[-p:]
    d0 = len(names) - p
    while d0 >= p and names[d0 - p:d0] == step:
        d0 -= p
    j = d0
    while j >= p and names[j - p:j] != step:
        j -= 1
    return rows[j if j >= p else 0:d0], rows[-p:], (len(names) - d0) // p


def by_family(rows):
    d = defaultdict(lambda: [0, 0.0])
    for name, us, _ in rows:
        d[name][0] += 1
        d[name][1] += us
    return d


def table(title, sides, top):
    print(f"\n## {title}\n")
    fams = [by_family(r) for r in sides]
    tot = [sum(us for _, us, _ in r) for r in sides]
    print(f"| kernel | engine n | engine us | mlx-lm n | mlx-lm us |\n|---|---|---|---|---|")
    keys = sorted(set(fams[0]) | set(fams[1]), key=lambda k: -max(fams[0].get(k, [0, 0])[1], fams[1].get(k, [0, 0])[1]))
    for k in keys[:top]:
        a, b = fams[0].get(k, [0, 0.0]), fams[1].get(k, [0, 0.0])
        print(f"| `{k}` | {a[0]} | {a[1]:.0f} | {b[0]} | {b[1]:.0f} |")
    print(f"| **all** | {len(sides[0])} | {tot[0]:.0f} | {len(sides[1])} | {tot[1]:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine")
    ap.add_argument("mlx_lm")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    parts = [split(load(p)) for p in (a.engine, a.mlx_lm)]
    for side, (pre, dec, steps) in zip(("engine", "mlx-lm"), parts):
        print(f"{side}: prefill {len(pre)} kernels {sum(u for _, u, _ in pre) / 1e3:.2f} ms; "
              f"decode step {len(dec)} kernels {sum(u for _, u, _ in dec) / 1e3:.3f} ms ({steps} steps seen)")
    table("prefill", [parts[0][0], parts[1][0]], a.top)
    table("one decode step", [parts[0][1], parts[1][1]], a.top)


if __name__ == "__main__":
    main()

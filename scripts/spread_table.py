"""Prints the spread table of `scripts/blas-matrix.sh`: for every quantity the model tests
compare (one JSON line per comparison, written where MLX_ENGINE_SPREAD_LOG points), the worst
value under each BLAS kernel, the worst overall, the spread across kernels, the bound the tests
hold it to, and whether the bound keeps its rule (docs/testing.md):

  noise    a difference from a reference that should agree up to rounding: bound >= 3x worst;
  ceiling  an intended approximation's error (bf16, quantization): bound - worst >= 3x spread.

Usage: python3 scripts/spread_table.py target/blas-matrix/Haswell target/blas-matrix/Zen ...
(each argument a run, read from <run>.jsonl; runs without a file are left out).
"""
import json
import sys
from pathlib import Path


def main(runs: list[str]) -> None:
    worst: dict[str, dict[str, float]] = {}
    bounds: dict[str, set[float]] = {}
    kinds: dict[str, str] = {}
    names = []
    for run in runs:
        path = Path(run + ".jsonl")
        if not path.exists():
            continue
        name = path.stem
        names.append(name)
        for line in path.read_text().splitlines():
            m = json.loads(line)
            q = m["quantity"]
            per = worst.setdefault(q, {})
            per[name] = max(per.get(name, 0.0), m["value"])
            bounds.setdefault(q, set()).add(m["bound"])
            # Logs written before kinds were recorded count as noise unless another says ceiling.
            if kinds.get(q) != "ceiling":
                kinds[q] = m.get("kind", "noise")
    if not names:
        print("no measurements found")
        return
    print("| quantity | kind | " + " | ".join(names) + " | worst | spread | bound | rule |")
    print("|---|---|" + "---|" * (len(names) + 4))
    broken = 0
    for q in sorted(worst):
        per = worst[q]
        top, spread = max(per.values()), max(per.values()) - min(per.values())
        # A quantity may be checked against several bounds (e.g. per bit width): the tightest.
        bound = min(bounds[q])
        if kinds[q] == "ceiling":
            ok = bound - top >= 3 * spread
            rule = f"{'ok' if ok else 'BROKEN'}: room {bound - top:.3g} vs 3x spread {3 * spread:.3g}"
        else:
            ok = bound >= 3 * top
            ratio = f"{bound / top:.1f}x" if top > 0 else "exact"
            rule = f"{'ok' if ok else 'BROKEN'}: {ratio} the worst"
        broken += not ok
        cells = " | ".join(f"{per[n]:.3g}" if n in per else "-" for n in names)
        print(f"| {q} | {kinds[q]} | {cells} | {top:.3g} | {spread:.3g} | {bound:.3g} | {rule} |")
    if broken:
        print(f"\n{broken} bound(s) break their rule")


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""Markdown tables from a results folder (bench/results/NAME/): compare-*.json written by
bench/compare.py, speculative.jsonl written by `mlx-engine bench --only speculative --json`.

    python3 bench/report.py bench/results/gpu-h200-2026-12-01
"""
import json
import sys
from pathlib import Path


def compare_table(rows):
    out = ["| model | prompt | decode tok/s engine | mlx-lm | ratio | prompt tok/s engine | mlx-lm | ratio "
           "| TTFT s engine | mlx-lm | peak MB engine | mlx-lm |", "|---" * 12 + "|"]
    for t in rows:
        e, m = t["engine"], t["mlx_lm"]
        out.append(f"| {t['model']} | {t['prompt_tokens']} | {e['decode_tps']:.1f} | {m['decode_tps']:.1f} | "
                   f"**{t['decode_ratio']:.2f}** | {e['prompt_tps']:.0f} | {m['prompt_tps']:.0f} | "
                   f"**{t['prompt_ratio']:.2f}** | {e['ttft_s']:.3f} | {m['ttft_s']:.3f} | {e['peak_mb']:.0f} | "
                   f"{m['peak_mb']:.0f} |")
    return out


def speculative_table(rows):
    out = ["| main model | drafter | k | prompt | tokens | plain tok/s | speculative tok/s | ratio "
           "| drafted / accepted | same tokens |", "|---" * 10 + "|"]
    for r in rows:
        s = r["stats"] or {}
        rate = f"{s.get('drafted', 0)} / {s.get('accepted', 0)} ({100 * s.get('acceptance_rate', 0):.0f}%)"
        out.append(f"| {Path(r['model']).name} | {r.get('drafter_label') or s.get('drafter', '-')} | "
                   f"{s.get('num_draft_tokens', '-')} | {r['prompt']} | {r['generated_tokens']} | "
                   f"{r['plain_tps']:.1f} | {r['speculative_tps']:.1f} | **{r['ratio']:.2f}** | {rate} | "
                   f"{'yes' if r['same_tokens'] else 'no'} |")
    return out


def main():
    folder = Path(sys.argv[1])
    rows = []
    for f in sorted(folder.glob("compare-*.json")):
        rows += json.loads(f.read_text())
    if rows:
        print("\n".join(compare_table(rows)))
    spec = folder / "speculative.jsonl"
    if spec.exists():
        print()
        print("\n".join(speculative_table([json.loads(line) for line in spec.read_text().splitlines() if line])))


if __name__ == "__main__":
    main()

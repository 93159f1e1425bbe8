#!/usr/bin/env python3
"""Markdown tables from a results folder (bench/results/NAME/): compare-*.json written by
bench/compare.py, speculative.jsonl written by `mlx-engine bench --only speculative --json`,
attention-*.jsonl and ttft-{choice,fused}/ written by `bench/gpu/run.sh attention`, and
attention_choice.json written by bench/gpu/attention_choice.py.

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


def attention_table(folder, model, records):
    """The engine's attention choice against the fused kernel always, one model."""
    sides = ("choice", "fused")
    by = {side: [r for r in records if r["attention"] == side] for side in sides}

    def ttft_runs(side):
        f = folder / f"ttft-{side}" / f"ttft-{model}.txt"
        if not f.exists():
            return "-"
        runs = [float(line.split()[-1]) for line in f.read_text().splitlines() if line.startswith("prompt_tokens")]
        return ", ".join(f"{t:.3f}" for t in runs) + " s"

    def one(side, part, pick):
        found = [pick(r) for r in by[side] if r["part"] == part]
        return found[0] if found else "-"

    out = [f"| {model} | choice | fused |", "|---|---|---|",
           f"| cold process, TTFT per process | {ttft_runs('choice')} | {ttft_runs('fused')} |"]
    for r in [r for r in by["choice"] if r["part"] == "cache"][:1]:
        f = r["follow_up"]
        label = f"follow-up turn, {f['prompt_tokens'] - f['cached_tokens']} new over {f['cached_tokens']} cached, TTFT"
        cells = [one(side, "cache", lambda r: f"{r['follow_up']['ttft_s']:.3f} s") for side in sides]
        out.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for n in sorted({r["prompt_tokens"] for r in by["choice"] if r["part"] == "speed"}):
        cells = [[f"{r['ttft_s']:.3f} s ({r['prompt_tps']:.0f} tok/s)" for r in by[side]
                  if r["part"] == "speed" and r["prompt_tokens"] == n] or ["-"] for side in sides]
        out.append(f"| warm {n}-token prompt, TTFT | {cells[0][0]} | {cells[1][0]} |")
    for prompt in [r["prompt"] for r in by["choice"] if r["part"] == "speculative"]:
        cells = [[f"{r['ratio']:.2f}x ({r['stats']['drafted']} drafted in {r['stats']['rounds']} rounds)"
                  for r in by[side] if r["part"] == "speculative" and r["prompt"] == prompt] or ["-"]
                 for side in sides]
        out.append(f"| prompt lookup, {prompt}, speculative / plain | {cells[0][0]} | {cells[1][0]} |")
    return out


def attention_choice_table(data):
    """Per-call cost of a new shape and a repeated one, fused against plain ops."""
    out = ["| head dim | call | fused, new | fused, warm | plain ops, new | plain ops, warm "
           "| plain ops f32, new | plain ops f32, warm |", "|---" * 8 + "|"]
    for r in data["records"]:
        cells = " | ".join(f"{r[k]['new_ms']:.2f} ms | {r[k]['warm_ms']:.2f} ms" for k in ("fused", "composed", "composed_f32"))
        out.append(f"| {r['head_dim']} | {r['case']} | {cells} |")
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
    for f in sorted(folder.glob("attention-*.jsonl")):
        model = f.stem.removeprefix("attention-")
        print()
        print("\n".join(attention_table(folder, model, [json.loads(line) for line in f.read_text().splitlines() if line])))
    choice = folder / "attention_choice.json"
    if choice.exists():
        print()
        print("\n".join(attention_choice_table(json.loads(choice.read_text()))))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A/B of one environment setting in the same engine binary: `mlx-engine bench ... --json` run
as is and with VAR=VALUE set, alternating for --rounds, each record tagged "side": "default" or
the setting. Writes the records as JSON lines (--out) and prints a table of time to first
token and throughput per part.

    python3 bench/env_ab.py --set MLX_ENGINE_LAST_POSITION_ONLY=0 --rounds 2 \\
        --out bench/results/cpu-2026-12-08/last-position.jsonl -- \\
        -m models/smollm2-135m-instruct/f32 --only speed,cache --prompt-tokens 128,512 \\
        --gen-tokens 8 --runs 2 --cache-prompt-tokens 512

On the GPU machine: `bench/gpu/run.sh python bench/env_ab.py --engine /tmp/gpu/pkg/bin/mlx-engine ...`.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median


def run(engine, bench_args, env_set):
    env = dict(os.environ)
    if env_set:
        key, value = env_set.split("=", 1)
        env[key] = value
    out = subprocess.run([engine, "bench", *bench_args, "--json"], env=env, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def cells(records):
    """(row label, value) pairs of one side's records, for the table."""
    for r in records:
        if r["part"] == "speed":
            n = r["prompt_tokens"]
            yield f"{n}-token prompt, TTFT s", r["ttft_s"]
            yield f"{n}-token prompt, decode tok/s", r.get("decode_tps")
        elif r["part"] == "cache":
            f = r["follow_up"]
            yield f"follow-up turn ({f['prompt_tokens'] - f['cached_tokens']} new over {f['cached_tokens']}), TTFT s", f["ttft_s"]
            yield f"cold {r['cold']['prompt_tokens']}-token prompt (cache part), TTFT s", r["cold"]["ttft_s"]


def table(records, setting):
    sides = ("default", setting)
    rows = {}
    for side in sides:
        for label, value in cells(r for r in records if r["side"] == side):
            if value is not None:
                rows.setdefault(label, {}).setdefault(side, []).append(value)
    out = [f"| measure | default | {setting} | default / {setting} |", "|---|---|---|---|"]
    for label, by in rows.items():
        vals = [by.get(side, []) for side in sides]
        text = [", ".join(f"{v:.3f}" for v in vs) or "-" for vs in vals]
        ratio = f"{median(vals[0]) / median(vals[1]):.2f}" if all(vals) else "-"
        out.append(f"| {label} | {text[0]} | {text[1]} | {ratio} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", required=True, help="VAR=VALUE, the B side")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--engine", default="target/release/mlx-engine")
    p.add_argument("--out", type=Path)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the arguments of `mlx-engine bench`")
    a = p.parse_args()
    bench_args = a.bench_args[1:] if a.bench_args[:1] == ["--"] else a.bench_args
    if "=" not in a.set:
        sys.exit("--set takes VAR=VALUE")
    records = []
    for i in range(a.rounds):
        for side, env_set in (("default", None), (a.set, a.set)):
            for r in run(a.engine, bench_args, env_set):
                records.append({"side": side, "round": i, **r})
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(table(records, a.set))


if __name__ == "__main__":
    main()

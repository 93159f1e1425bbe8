"""Aggregate decode throughput of an OpenAI-compatible server at several concurrency levels.

Each level runs `concurrency` client threads, each sending `--rounds` streaming chat requests
one after another (distinct prompts, greedy, `--max-tokens` each); the aggregate rate is all
completion tokens over the level's wall time. Works against `mlx-engine serve` and
`mlx_lm.server` alike (both report usage with `stream_options.include_usage`). Plain HTTP from
the standard library, so it also runs where the `openai` package is not installed (the GPU
machine, `bench/gpu/run.sh serve`).

usage: bench.py --base-url http://127.0.0.1:8080 --model NAME [--levels 1,2,4,8,16]
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse

TOPICS = ["the sea", "mountains", "a city at night", "autumn", "a library", "the desert", "rain",
          "a train journey", "the moon", "a garden", "winter", "a market", "the forest", "bridges",
          "an old house", "the river"]

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--levels", default="1,2,4,8,16")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--warmup", action="store_true",
                help="run every level once, unreported, first (MLX compiles each new kernel shape once)")
args = ap.parse_args()
url = urllib.parse.urlsplit(args.base_url)


def chat_stream(body):
    """Completion tokens of one streamed chat, from its usage chunk."""
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    tokens = None
    for line in resp:
        line = line.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            usage = json.loads(line[6:]).get("usage")
            if usage:
                tokens = usage["completion_tokens"]
    conn.close()
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return tokens


def worker(i, out, failures):
    for r in range(args.rounds):
        topic = TOPICS[(i + r * 7) % len(TOPICS)]
        try:
            out.append(chat_stream({
                "model": args.model, "temperature": 0, "max_tokens": args.max_tokens, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Write a long story about {topic}, request {i}-{r}."}],
            }))
        except Exception as e:  # counted and reported with the level, not fatal to the others
            failures.append(str(e))


def measure(level):
    counts, failures = [], []
    threads = [threading.Thread(target=worker, args=(i, counts, failures)) for i in range(level)]
    t = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.time() - t
    row = {"concurrency": level, "tokens": sum(counts), "seconds": round(wall, 2),
           "tok_per_s": round(sum(counts) / wall, 1), "failures": len(failures)}
    if failures:
        row["first_failure"] = failures[0]
    return row


levels = [int(x) for x in args.levels.split(",")]
if args.warmup:
    for level in levels:
        measure(level)
for level in levels:
    print(json.dumps(measure(level)), flush=True)

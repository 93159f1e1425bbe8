"""Aggregate decode throughput of an OpenAI-compatible server at several concurrency levels.

Each level runs `concurrency` client threads, each sending `--rounds` streaming chat requests
one after another (distinct prompts, greedy, `--max-tokens` each); the aggregate rate is all
completion tokens over the level's wall time. Works against `mlx-engine serve` and
`mlx_lm.server` alike (both report usage with `stream_options.include_usage`).

usage: bench.py --base-url http://127.0.0.1:8080 --model NAME [--levels 1,2,4,8,16]
"""

import argparse
import json
import threading
import time

from openai import OpenAI

TOPICS = ["the sea", "mountains", "a city at night", "autumn", "a library", "the desert", "rain",
          "a train journey", "the moon", "a garden", "winter", "a market", "the forest", "bridges",
          "an old house", "the river"]

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--levels", default="1,2,4,8,16")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--max-tokens", type=int, default=64)
args = ap.parse_args()
client = OpenAI(base_url=args.base_url + "/v1", api_key="none", max_retries=0, timeout=600)


def worker(i, out):
    for r in range(args.rounds):
        topic = TOPICS[(i + r * 7) % len(TOPICS)]
        stream = client.chat.completions.create(
            model=args.model, temperature=0, max_tokens=args.max_tokens, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"Write a long story about {topic}, request {i}-{r}."}],
        )
        for chunk in stream:
            if chunk.usage is not None:
                out.append(chunk.usage.completion_tokens)


rows = []
for level in [int(x) for x in args.levels.split(",")]:
    counts = []
    threads = [threading.Thread(target=worker, args=(i, counts)) for i in range(level)]
    t = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.time() - t
    rows.append({"concurrency": level, "tokens": sum(counts), "seconds": round(wall, 2),
                 "tok_per_s": round(sum(counts) / wall, 1)})
    print(json.dumps(rows[-1]), flush=True)

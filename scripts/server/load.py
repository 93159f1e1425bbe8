"""A bounded loopback load test of `mlx-engine serve`: REQUESTS requests from CONCURRENCY client
threads, mixing short and long prompts and streaming and non-streaming calls. Every request must
succeed; the server's resident memory (from /proc/PID/status) is sampled after each request and
its slope after warm-up (the first quarter) is reported in MiB per 100 requests. That includes
what the batch in flight uses; with --rounds R the requests come in R rounds, and resident
memory once the server is idle after each round gives the slope of what it keeps (after the
first round).

usage: load.py --base-url URL --model NAME --pid SERVER_PID [--requests 300] [--concurrency 16]
               [--long-items 40] [--short-tokens 32] [--long-tokens 16]

The last line of stdout is the result as JSON; engine/tests/server_load.rs runs this script.
"""

import argparse
import json
import sys
import threading
import time

from openai import OpenAI

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--requests", type=int, default=300)
ap.add_argument("--concurrency", type=int, default=16)
ap.add_argument("--long-items", type=int, default=40, help="size of the long prompts (about 12 tokens each)")
ap.add_argument("--short-tokens", type=int, default=32, help="max_tokens of the short prompts")
ap.add_argument("--long-tokens", type=int, default=16, help="max_tokens of the long prompts (every 4th request)")
ap.add_argument("--rounds", type=int, default=1,
                help="send the requests in this many rounds, sampling resident memory when idle after each")
args = ap.parse_args()
client = OpenAI(base_url=args.base_url + "/v1", api_key="none", max_retries=0, timeout=600)
LONG = " ".join(f"Item {i}: a note about topic number {i}." for i in range(args.long_items))


def rss_mib():
    with open(f"/proc/{args.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


lock = threading.Lock()
next_i = 0
failures = []
samples = []


def one(i):
    long = i % 4 == 0
    content = (LONG + f"\nSummarise item {i % args.long_items}.") if long else f"Say something about the number {i}."
    kw = dict(model=args.model, messages=[{"role": "user", "content": content}], temperature=0,
              max_tokens=args.long_tokens if long else args.short_tokens)
    if i % 2:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                       if c.choices)
    else:
        text = client.chat.completions.create(**kw).choices[0].message.content
    if not text:
        raise RuntimeError("empty answer")


def worker():
    global next_i
    while True:
        with lock:
            if next_i >= args.requests:
                return
            i = next_i
            next_i += 1
        try:
            one(i)
        except Exception as e:  # every failure is counted and reported
            with lock:
                failures.append(f"{i}: {e!r}")
        with lock:
            samples.append((len(samples) + 1, rss_mib()))


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / max(sum((x - mx) ** 2 for x, _ in points), 1e-9)


def idle_rss():
    """Resident memory once the server has no rows and no queue (what it keeps, not what the
    batch in flight uses)."""
    import urllib.request
    for _ in range(600):
        with urllib.request.urlopen(args.base_url + "/health") as r:
            h = json.load(r)
        if h["active_rows"] == 0 and h["queued"] == 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return rss_mib()


t = time.time()
idle = [(0, idle_rss())]
per_round = -(-args.requests // args.rounds)
total = args.requests
for r in range(args.rounds):
    args.requests = min(total, (r + 1) * per_round)
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    idle.append((args.requests, idle_rss()))
args.requests = total
wall = time.time() - t
warm = samples[len(samples) // 4:]
result = {
    "requests": args.requests, "concurrency": args.concurrency, "failures": len(failures),
    "seconds": round(wall, 1), "rss_mib_first": round(samples[0][1], 1), "rss_mib_last": round(samples[-1][1], 1),
    "rss_mib_peak": round(max(y for _, y in samples), 1),
    "rss_slope_mib_per_100_requests_after_warmup": round(slope(warm) * 100, 2),
    "idle_rss_mib": [round(y, 1) for _, y in idle],
}
if args.rounds >= 3:
    # After the first round (warm-up: the prompt cache fills, MLX's buffers are made).
    result["idle_rss_slope_mib_per_100_requests_after_warmup"] = round(slope(idle[1:]) * 100, 2)
print(json.dumps(result))
for f in failures[:10]:
    print("FAILED", f, file=sys.stderr)
raise SystemExit(1 if failures else 0)

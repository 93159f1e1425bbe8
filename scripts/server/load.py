"""A bounded loopback load test of `mlx-engine serve`: REQUESTS requests from CONCURRENCY client
threads, mixing short and long prompts and streaming and non-streaming calls. Every request must
succeed; the server's resident memory (from /proc/PID/status) is sampled after each request and
its slope after warm-up (the first quarter) is reported in MiB per 100 requests.

usage: load.py --base-url URL --model NAME --pid SERVER_PID [--requests 300] [--concurrency 16]
"""

import argparse
import json
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
              max_tokens=16 if long else 32)
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


t = time.time()
threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
for th in threads:
    th.start()
for th in threads:
    th.join()
wall = time.time() - t
warm = samples[len(samples) // 4:]
n = len(warm)
mx = sum(x for x, _ in warm) / n
my = sum(y for _, y in warm) / n
slope = sum((x - mx) * (y - my) for x, y in warm) / max(sum((x - mx) ** 2 for x, _ in warm), 1e-9)
print(json.dumps({
    "requests": args.requests, "concurrency": args.concurrency, "failures": len(failures),
    "seconds": round(wall, 1), "rss_mib_first": round(samples[0][1], 1), "rss_mib_last": round(samples[-1][1], 1),
    "rss_slope_mib_per_100_requests_after_warmup": round(slope * 100, 2),
}))
for f in failures[:10]:
    print("FAILED", f)
raise SystemExit(1 if failures else 0)

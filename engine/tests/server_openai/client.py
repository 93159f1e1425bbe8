"""Drives a running `mlx-engine serve` with the official `openai` client and raw HTTP.

Run by engine/tests/server_openai.rs, which starts the server and compares what this script
prints (one JSON object on the last stdout line) with the library's own greedy output. The
protocol checks (status codes, error objects, stream framing) are asserted here; any failure
exits non-zero with the reason.

usage: client.py CONFIG_JSON, with base_url, model, api_key, chat_prompt, completion_prompt,
max_body_bytes and batch_prompts (sent at once; their outputs are compared with the library's
greedy outputs by the Rust side).
"""

import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

import openai
from openai import OpenAI

cfg = json.loads(sys.argv[1])
base, model, key = cfg["base_url"], cfg["model"], cfg["api_key"]
chat_prompt, completion_prompt, max_body = cfg["chat_prompt"], cfg["completion_prompt"], cfg["max_body_bytes"]
url = urllib.parse.urlparse(base)
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
results = {}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def raw(method, path, body=None, headers=None, auth=True):
    """One raw HTTP request: (status, headers, parsed JSON or text)."""
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    h = {"content-type": "application/json"}
    if auth:
        h["authorization"] = f"Bearer {key}"
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    try:
        data = json.loads(data)
    except ValueError:
        pass
    return resp.status, dict(resp.getheaders()), data


def error_object(status, data, want_status, what):
    check(status == want_status, f"{what}: status {status}, want {want_status}: {data}")
    check(isinstance(data, dict) and "error" in data, f"{what}: no error object: {data}")
    e = data["error"]
    for k in ("message", "type", "param", "code"):
        check(k in e, f"{what}: error object lacks `{k}`: {e}")
    check(isinstance(e["message"], str) and e["message"], f"{what}: empty message")
    return e


messages = [{"role": "user", "content": chat_prompt}]

# --- the official client ------------------------------------------------------------------
models = client.models.list()
check([m.id for m in models.data] == [model], f"models: {models}")

r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
check(r.object == "chat.completion", f"object {r.object}")
check(r.choices[0].message.role == "assistant", "role")
check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, f"usage {r.usage}")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "total_tokens")
results["chat"] = r.choices[0].message.content
results["chat_finish"] = r.choices[0].finish_reason
results["chat_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]

# The same prompt again: most of it now comes from the prompt cache.
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
check(r.choices[0].message.content == results["chat"], "repeat differs")
cached = r.usage.prompt_tokens_details.cached_tokens
check(cached > 0 and cached < r.usage.prompt_tokens, f"cached_tokens {cached} of {r.usage.prompt_tokens}")

# Streaming: role first, content deltas, a finish chunk, usage last, then [DONE].
stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=24, stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage, first_role = [], None, None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
        check(chunk.choices == [], "the usage chunk has choices")
        continue
    d = chunk.choices[0].delta
    if first_role is None:
        first_role = d.role
    if d.content:
        parts.append(d.content)
    if chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
check(first_role == "assistant", f"first delta role {first_role}")
check(finish == results["chat_finish"], f"stream finish {finish}")
check(usage is not None and usage.completion_tokens == results["chat_usage"][1], f"stream usage {usage}")
results["chat_stream"] = "".join(parts)

# Stop strings: the text ends before the stop string, finish_reason stop.
words = results["chat"].split()
check(len(words) >= 3, f"too short to test stop: {results['chat']!r}")
stop_word = " " + words[2]
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24, stop=[stop_word])
results["chat_stop"] = r.choices[0].message.content
check(r.choices[0].finish_reason == "stop", f"stop finish {r.choices[0].finish_reason}")

# Length: max_completion_tokens bounds the output.
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_completion_tokens=3)
check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3, f"length: {r}")

# Logprobs with top alternatives.
r = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
)
lp = r.choices[0].logprobs.content
check(len(lp) == r.usage.completion_tokens, f"{len(lp)} logprobs for {r.usage.completion_tokens} tokens")
for e in lp:
    check(len(e.top_logprobs) == 3, "top_logprobs count")
    # Greedy: the chosen token is the most likely one.
    check(abs(e.top_logprobs[0].logprob - e.logprob) < 1e-5, f"greedy token not top: {e}")
    check(e.logprob <= 0, "logprob > 0")
results["chat_logprobs"] = [[e.token, e.logprob] for e in lp]

# Completions (raw prompt), plain and streamed, with logprobs.
r = client.completions.create(model=model, prompt=completion_prompt, temperature=0, max_tokens=12, logprobs=2)
check(r.object == "text_completion", f"object {r.object}")
results["completion"] = r.choices[0].text
c_lp = r.choices[0].logprobs
check(len(c_lp.tokens) == len(c_lp.token_logprobs) == r.usage.completion_tokens, "completion logprobs")
check("".join(c_lp.tokens) == r.choices[0].text or r.choices[0].finish_reason == "stop", "tokens join to text")
stream = client.completions.create(model=model, prompt=completion_prompt, temperature=0, max_tokens=12, stream=True)
results["completion_stream"] = "".join(c.choices[0].text for c in stream if c.choices)

# Seeded sampling is reproducible.
a = client.completions.create(model=model, prompt=completion_prompt, temperature=0.9, seed=7, max_tokens=10)
b = client.completions.create(model=model, prompt=completion_prompt, temperature=0.9, seed=7, max_tokens=10)
check(a.choices[0].text == b.choices[0].text, "seeded sampling differs")

# logit_bias can force a token.
r = client.completions.create(
    model=model, prompt=completion_prompt, temperature=0, max_tokens=3, logit_bias={"33": 100}, logprobs=0
)
results["biased_tokens"] = r.choices[0].logprobs.tokens

# The client's exception classes follow the status codes.
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "unknown model accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, "404")
try:
    client.chat.completions.create(model=model, messages=messages, n=2)
    check(False, "n=2 accepted")
except openai.BadRequestError as e:
    check(e.body["param"] == "n", f"n error {e.body}")
try:
    OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "401")

# --- raw HTTP error cases -------------------------------------------------------------------
s, _, d = raw("POST", "/v1/chat/completions", '{"model": "x", "messages": [')
error_object(s, d, 400, "malformed JSON")
s, _, d = raw("POST", "/v1/chat/completions", {"model": model, "messages": messages, "temperature": "hot"})
e = error_object(s, d, 400, "wrong type")
check(e["param"] == "temperature", f"wrong type param {e}")
s, _, d = raw("POST", "/v1/chat/completions", {"model": model, "messages": "hello"})
error_object(s, d, 400, "messages not a list")
s, _, d = raw("POST", "/v1/completions", {"model": model, "prompt": "x", "top_p": 3})
e = error_object(s, d, 400, "top_p out of range")
check(e["param"] == "top_p", f"top_p param {e}")
s, _, d = raw("POST", "/v1/chat/completions", {"model": "nope", "messages": messages})
e = error_object(s, d, 404, "unknown model")
check(e["code"] == "model_not_found", f"unknown model code {e}")
s, _, d = raw("POST", "/v1/chat/completions", {"model": model, "messages": messages}, auth=False)
error_object(s, d, 401, "missing key")
s, _, d = raw("POST", "/v1/chat/completions", {"model": model, "messages": messages},
              headers={"authorization": "Bearer nope"})
error_object(s, d, 401, "wrong key")
s, _, d = raw("POST", "/v1/completions", json.dumps({"model": model, "prompt": "x" * (max_body + 10)}))
error_object(s, d, 413, "oversize body")
s, _, d = raw("GET", "/health", auth=False)
check(s == 200 and d["status"] == "ok", f"health {s} {d}")
s, _, d = raw("GET", "/v1/nothing")
error_object(s, d, 404, "unknown route")

# --- a disconnect mid-stream cancels the row ------------------------------------------------
body = json.dumps({
    "model": model, "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 2000, "stream": True,
}).encode()
sock = socket.create_connection((url.hostname, url.port), timeout=300)
sock.sendall(
    b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    + f"authorization: Bearer {key}\r\nx-request-id: disconnect-test\r\n".encode()
    + f"content-length: {len(body)}\r\n\r\n".encode() + body
)
f = sock.makefile("rb")
check(f.readline().startswith(b"HTTP/1.1 200"), "stream status")
events = 0
while events < 4:
    line = f.readline()
    check(line, "the stream ended early")
    if line.startswith(b"data: "):
        events += 1
# Gone mid-stream, without a word.
f.close()
sock.close()
results["disconnect_events_read"] = events
deadline = time.time() + 120
while True:
    _, _, h = raw("GET", "/health", auth=False)
    if h["active_rows"] == 0:
        break
    check(time.time() < deadline, f"the disconnected row still runs: {h}")
    time.sleep(0.05)

# The server still answers.
r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
check(r.choices[0].message.content == results["chat"], "answer after the disconnect differs")

# --- a full queue answers 503 with Retry-After ---------------------------------------------


def metric(name):
    _, _, text = raw("GET", "/metrics", auth=False)
    for line in text.splitlines():
        if line.startswith(f"mlx_engine_{name} "):
            return float(line.split()[1])
    check(False, f"no metric {name} in {text}")


def open_stream(i):
    body = json.dumps({"model": model, "prompt": f"{i}, {i + 1}, {i + 2},", "temperature": 0,
                       "max_tokens": 2000, "stream": True}).encode()
    sk = socket.create_connection((url.hostname, url.port), timeout=300)
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    return sk


capacity = cfg["max_concurrency"] + cfg["queue"]
holders = [open_stream(i) for i in range(capacity)]
deadline = time.time() + 180
# Admitted, then (after tokenizing) in the batch or its queue.
while (metric("requests_in_flight"), metric("active_rows"), metric("queue_depth")) != (
        capacity, cfg["max_concurrency"], cfg["queue"]):
    check(time.time() < deadline, f"only {metric('requests_in_flight')} of {capacity} admitted")
    time.sleep(0.05)
s, h, d = raw("POST", "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 2})
error_object(s, d, 503, "full queue")
check(h.get("retry-after", h.get("Retry-After")) == "1", f"Retry-After: {h}")
for sk in holders:
    sk.close()
deadline = time.time() + 180
while metric("requests_in_flight") > 0 or metric("active_rows") > 0:
    check(time.time() < deadline, "abandoned requests still held")
    time.sleep(0.05)
check(metric("rejected_total") >= 1, "rejected_total")
check(metric("prompt_cache_hits_total") >= 1, "prompt cache hits")
check(metric("generated_tokens_total") > 0, "generated tokens")

# --- continuous batching: requests sent at once share the batch -----------------------------
prompts = cfg["batch_prompts"]
together = [None] * len(prompts)


def one(i):
    r = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompts[i]}], temperature=0, max_tokens=20,
        extra_headers={"x-request-id": f"batch-{i}"},
    )
    together[i] = r.parse().choices[0].message.content


threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
for t in threads:
    t.start()
for t in threads:
    t.join()
results["together"] = together
check(metric("max_batch_rows") >= 2, "no decode step ever carried two rows")
results["max_batch_rows"] = metric("max_batch_rows")

print(json.dumps(results))

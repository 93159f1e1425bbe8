"""Drives `mlx-engine serve` with the official `openai` client: structured output.

Run by engine/tests/server_structured.rs, which starts the server, then validates what this
script prints (one JSON object on the last stdout line) against the schemas and compares it
with the library's own constrained greedy output. The protocol checks (finish reasons,
tool_calls shape, error objects) are asserted here; a failure exits non-zero with the reason.

usage: client.py CONFIG_JSON, with base_url, model, person_schema, colour_schema, tools.
"""

import json
import sys
import threading

import openai
from openai import OpenAI

cfg = json.loads(sys.argv[1])
client = OpenAI(base_url=cfg["base_url"] + "/v1", api_key="unused", max_retries=0, timeout=300)
model = cfg["model"]
results = {}


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def chat(prompt, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=160, **kw
    )


# response_format json_schema, plain and streamed.
r = chat(cfg["person_prompt"], response_format=schema_format("person", cfg["person_schema"]))
check(r.choices[0].finish_reason == "stop", f"json_schema finish_reason: {r.choices[0].finish_reason}")
results["person"] = r.choices[0].message.content
stream = chat(cfg["person_prompt"], response_format=schema_format("person", cfg["person_schema"]), stream=True)
parts, finish = [], None
for chunk in stream:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
check(finish == "stop", f"streamed json_schema finish_reason: {finish}")
results["person_stream"] = "".join(parts)

# json_object.
r = chat("What is 2+2? Answer as a JSON object.", response_format={"type": "json_object"})
check(r.choices[0].finish_reason == "stop", f"json_object finish_reason: {r.choices[0].finish_reason}")
results["object"] = r.choices[0].message.content

# Forced tool calls: `required` (any tool) and a named one (streamed).
tools = cfg["tools"]
r = chat("What is the weather like in Paris?", tools=tools, tool_choice="required")
c = r.choices[0]
check(c.finish_reason == "tool_calls", f"required: finish_reason {c.finish_reason}: {c.message}")
check(c.message.tool_calls, f"required: no tool_calls: {c.message}")
results["required"] = [{"name": t.function.name, "arguments": t.function.arguments} for t in c.message.tool_calls]

named = {"type": "function", "function": {"name": "get_time"}}
stream = chat("What is the weather like in Paris?", tools=tools, tool_choice=named, stream=True)
calls, finish = {}, None
for chunk in stream:
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    for t in d.tool_calls or []:
        entry = calls.setdefault(t.index, {"name": "", "arguments": ""})
        entry["name"] += t.function.name or ""
        entry["arguments"] += t.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
check(finish == "tool_calls", f"named: finish_reason {finish}")
check(calls, "named: no tool_calls in the stream")
results["named"] = [calls[i] for i in sorted(calls)]

# Two requests with different schemas at once, in one batch.
together = [None, None]


def one(i, prompt, name, schema):
    r = client.with_options(default_headers={"x-request-id": f"batch-{i}"}).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=160,
        response_format=schema_format(name, schema),
    )
    together[i] = r.choices[0].message.content


threads = [
    threading.Thread(target=one, args=(0, cfg["person_prompt"], "person", cfg["person_schema"])),
    threading.Thread(target=one, args=(1, cfg["colour_prompt"], "colours", cfg["colour_schema"])),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(all(x is not None for x in together), f"a batched request failed: {together}")
results["together"] = together

# Refusals name the parameter.
for body, param, what in [
    (schema_format("bad", {"type": "objekt"}), "response_format", "invalid JSON schema"),
    ({"type": "json_schema"}, "response_format", "json_schema"),
    ({"type": "xml"}, "response_format", "not supported"),
]:
    try:
        chat("x", response_format=body)
        check(False, f"{body} was accepted")
    except openai.BadRequestError as e:
        err = e.body if isinstance(e.body, dict) else {}
        check(e.status_code == 400, f"{body}: status {e.status_code}")
        check(err.get("param") == param, f"{body}: param {err.get('param')}: {err}")
        check(what in err.get("message", ""), f"{body}: message {err.get('message')}")
for choice, what in [
    ({"type": "function", "function": {"name": "nope"}}, "not in `tools`"),
    ("sometimes", "tool_choice must be"),
]:
    try:
        chat("x", tools=tools, tool_choice=choice)
        check(False, f"tool_choice {choice} was accepted")
    except openai.BadRequestError as e:
        err = e.body if isinstance(e.body, dict) else {}
        check(err.get("param") == "tool_choice" and what in err.get("message", ""), f"{choice}: {err}")
try:
    chat("x", tool_choice="required")
    check(False, "required without tools was accepted")
except openai.BadRequestError as e:
    check(e.body.get("param") == "tool_choice", f"required without tools: {e.body}")

print(json.dumps(results))

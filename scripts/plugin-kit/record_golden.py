"""Record the golden a plugin is checked against: mlx-lm's own outputs for a model type.

Usage (documented in docs/plugin-authoring.md):
  .venv/bin/python scripts/plugin-kit/record_golden.py --config tiny/config.json --out tiny
  .venv/bin/python scripts/plugin-kit/record_golden.py --model CHECKPOINT_DIR --out DIR

With --config, mlx-lm's model class for the config's `model_type` is built with seeded random
weights (its own initialisers, with every norm scale drawn around 1 so norms are exercised) and
saved to OUT/model.safetensors with OUT/config.json: a tiny checkpoint in mlx-lm's naming, so
`WeightsFormat::Mlx`. With --model, an existing checkpoint folder is used as is.

OUT/golden.json then holds, in the format of scripts/goldens/record.py, what mlx-lm computes in
f32 on the CPU for fixed token-id prompts: greedy decoding through mlx-lm's generate_step (tokens,
logprobs, top-2 gaps) and the logits of one cache-less forward over each prompt.
`mlx-engine check-plugin PLUGIN.so --config OUT/config.json --golden OUT/golden.json` compares.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "goldens"))
import record  # noqa: E402  (re-executes with OpenBLAS preloaded, as the engine links it)

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402


def prompts(vocab: int) -> list[dict]:
    """Two fixed prompts of ids spread over the vocabulary (no tokenizer needed); the long one has
    enough tokens for mixture-of-experts layers to take their sorted path (64 token-expert pairs)."""
    a = [(7 * i + 3) % vocab for i in range(11)]
    b = [(31 * i + 17) % vocab for i in range(40)]
    return [{"name": "short", "ids": a}, {"name": "long", "ids": b}]


def random_checkpoint(config_path: Path, out: Path, seed: int) -> None:
    from mlx_lm.utils import _get_classes

    config = json.loads(config_path.read_text())
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    params = dict(tree_flatten(model.parameters()))
    for name, p in params.items():
        if "norm" in name and p.ndim == 1:
            params[name] = 1.0 + 0.1 * mx.random.normal(p.shape)
    model.update(tree_unflatten(list(params.items())))
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(out / "model.safetensors"))
    if config_path.resolve() != (out / "config.json").resolve():
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="config.json to build a random checkpoint from")
    src.add_argument("--model", type=Path, help="an existing checkpoint folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40, help="greedy decode steps per prompt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])

    if args.config:
        random_checkpoint(args.config, args.out, args.seed)
        folder = args.out
    else:
        folder = args.model
    config = json.loads((folder / "config.json").read_text())
    golden = record.record(f"plugin-kit/{config['model_type']}", folder, prompts(config["vocab_size"]),
                           args.steps, command, {})
    golden["header"]["generator"] = "scripts/plugin-kit/record_golden.py"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "golden.json").write_text(record.to_json(golden))
    print(f"wrote {args.out / 'golden.json'}")


if __name__ == "__main__":
    main()

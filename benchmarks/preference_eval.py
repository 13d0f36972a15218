"""Do a preference run's greedy replies move toward the chosen responses? ROUGE-L before and after tuning.

For each held-out prompt of a preference config (its ``--split``, default test: pairs the run never trained
on), greedy replies by the untuned model (the config's ``model.name_or_path``: a model, or the SFT run a
preference run started from) and by the tuned run, with the run's ``generate`` settings and chat template. Each
reply is scored by ROUGE-L F1 (x 100, rouge-score; over characters and over jieba words, as
``glmtune.metrics.generation`` does) against the pair's chosen response and against its rejected one; the
number that matters is ``rougeL_*_margin`` = against chosen minus against rejected, before vs after.

With the built-in ``chatterbot-zh-pairs`` the rejected response is the untuned SmolLM2's own greedy reply
(``benchmarks/preference_pairs.py``), so before tuning the reply matches the rejected one (ROUGE-L near 100) by
construction; the check is how far tuning moves the replies toward the corpus's replies and away from the model's
old ones. Also reported: the replies' mean length in characters, the share containing any CJK character, the share
ended by the end-of-turn token, and a few examples.

    .venv/bin/python benchmarks/preference_eval.py --config examples/preference-dpo.yaml --run runs/preference-dpo

Writes benchmarks/results/preference_eval.json (``--out`` to change) with the hardware block.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import auto_precision, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = 5


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= char <= "\u9fff" for char in text)


def score(replies: list[str], chosen: list[str], rejected: list[str]) -> dict[str, Any]:
    """ROUGE-L (char and word) of ``replies`` against each side, the margins, and the replies' shape."""
    from glmtune.metrics.generation import generation_metrics

    against_chosen, against_rejected = (
        generation_metrics(replies, chosen),
        generation_metrics(replies, rejected),
    )
    out: dict[str, Any] = {}
    for kind in ("char", "word"):
        key = f"rougeL_{kind}"
        out[f"{key}_chosen"] = round(against_chosen[key], 2)
        out[f"{key}_rejected"] = round(against_rejected[key], 2)
        out[f"{key}_margin"] = round(against_chosen[key] - against_rejected[key], 2)
    out["mean_reply_chars"] = round(sum(len(r) for r in replies) / len(replies), 1)
    out["share_with_cjk"] = round(sum(map(has_cjk, replies)) / len(replies), 3)
    return out


def replies_of(loaded: Any, prompts: list[Any]) -> tuple[list[str], float, float]:
    """Greedy replies, the share ended by a stop token, and seconds."""
    from glmtune.infer.lm import reply_all

    began = time.perf_counter()
    rows = reply_all(loaded, prompts)
    stopped = sum(r["finish_reason"] == "stop" for r in rows) / len(rows)
    return [r["output"].strip() for r in rows], stopped, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="examples/preference-dpo.yaml")
    parser.add_argument("--run", required=True, help="the finished run of that config")
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--out", type=Path, default=RESULTS / "preference_eval.json")
    args = parser.parse_args()

    from glmtune.core import config as config_mod
    from glmtune.core.hardware import apply_threads
    from glmtune.data.messages import Conversation
    from glmtune.data.preference_load import load_preference
    from glmtune.infer.lm import load, load_run

    apply_threads()
    tuned = load_run(args.run)
    cfg = tuned.cfg
    examples = getattr(load_preference(config_mod.load(args.config).data), args.split)
    prompts = [Conversation(e.prompt, e.tools, e.line, e.source) for e in examples]
    chosen = [e.chosen.content for e in examples]
    rejected = [e.rejected.content if e.rejected is not None else "" for e in examples]
    payload: dict[str, Any] = {
        "command": " ".join(["benchmarks/preference_eval.py", *sys.argv[1:]]),
        "config": args.config,
        "run": args.run,
        "model": cfg.model.name_or_path,
        "loss": cfg.preference.loss,
        "split": args.split,
        "prompts": len(prompts),
        "generate": dataclasses.asdict(cfg.generate),
    }
    samples: list[dict[str, str]] = [
        {"prompt": e.prompt[-1].content, "chosen": c, "rejected": r}
        for e, c, r in zip(examples[:EXAMPLES], chosen, rejected)
    ]
    untuned = load(cfg.model.name_or_path, cfg.data.template)
    untuned.cfg.generate, untuned.cfg.eval = cfg.generate, cfg.eval  # the same decoding on both sides
    for case, loaded in (("before", untuned), ("after", tuned)):
        replies, stopped, seconds = replies_of(loaded, prompts)
        payload[case] = score(replies, chosen, rejected) | {
            "share_stopped": round(stopped, 3),
            "seconds": round(seconds, 1),
        }
        for sample, reply in zip(samples, replies):
            sample[f"reply_{case}"] = reply
        print(case, payload[case], flush=True)
    payload["margin_gain"] = {
        kind: round(payload["after"][f"rougeL_{kind}_margin"] - payload["before"][f"rougeL_{kind}_margin"], 2)
        for kind in ("char", "word")
    }
    payload["examples"] = samples
    write_results(args.out, payload, precision=auto_precision())
    print(f"ROUGE-L margin (chosen - rejected) gain: {payload['margin_gain']}  ->  {args.out}")


if __name__ == "__main__":
    main()

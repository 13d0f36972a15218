"""Build the rejected side of the built-in ``chatterbot-zh-pairs``: SmolLM2-135M-Instruct's own greedy replies.

``chatterbot-zh-pairs`` pairs each single-turn chat of ``chatterbot-zh`` (the corpus's reply: chosen) with the
reply the untuned built-in ``smollm2-135m-instruct`` writes to the same question (rejected), as SPIN does (Chen et
al. 2024, *Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models*: the data's response
against the model's own). Those replies are mostly English, an echo of the question or a loop of one phrase; a
model tuned on the pairs is pushed from its own habits toward the corpus's short Chinese replies, and its greedy
replies can be measured moving (``benchmarks/preference_eval.py``).

Generation: glmtune's chat template for the model (its tokenizer's), greedy, at most ``--max-new-tokens`` new
tokens (48: the corpus's replies are shorter), fp32, batched; the text is the visible reply, stripped. Each
distinct prompt is generated once. Output: ``src/glmtune/data/builtin_data/chatterbot-zh-smollm2-replies.jsonl``,
one ``{"prompt", "reply", "finish_reason"}`` per line, in corpus order.

    flock /tmp/glmtune-cpu.lock .venv/bin/python benchmarks/preference_pairs.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "glmtune" / "data" / "builtin_data" / "chatterbot-zh-smollm2-replies.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    from glmtune.core.hardware import apply_threads
    from glmtune.data.builtin import single_turn_chats
    from glmtune.data.messages import Conversation, Message
    from glmtune.infer.lm import load_base, reply_all

    apply_threads()
    prompts = list(dict.fromkeys(prompt for prompt, _reply, _line, _source in single_turn_chats()))
    loaded = load_base(args.model)
    loaded.cfg.generate = dataclasses.replace(loaded.cfg.generate, max_new_tokens=args.max_new_tokens)
    loaded.cfg.eval = dataclasses.replace(loaded.cfg.eval, batch_size=args.batch_size)
    began = time.perf_counter()
    rows = reply_all(
        loaded, [Conversation([Message("user", p)], None, None, "chatterbot-zh") for p in prompts]
    )
    print(f"{len(prompts)} replies in {time.perf_counter() - began:.0f} s")
    with open(args.out, "w", encoding="utf-8") as file:
        for prompt, row in zip(prompts, rows):
            record = {"prompt": prompt, "reply": row["output"].strip(), "finish_reason": row["finish_reason"]}
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

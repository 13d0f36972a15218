"""DPO training throughput and peak memory: glmtune's ``task: preference`` against TRL's ``DPOTrainer`` + peft.

Both sides get the same model, the same pairs (glmtune's training split of the built-in ``chatterbot-zh-pairs``,
handed to TRL as conversational ``prompt``/``chosen``/``rejected`` messages, so each side renders them through the
tokenizer's own chat template), the same batch size (pairs per step), sequence cut, LoRA settings (r=8, alpha=16,
dropout 0.05, all linear layers), β, AdamW, learning rate, warm-up and linear schedule, and precision. The
reference model is, on both sides, the same weights with the adapter switched off. Each side batches as it does
for a user (glmtune length-grouped, TRL randomly), so the loss curves are comparable in level (``mean_loss``).

Each side runs in its own child process so peak RSS is its own. Throughput counts only real (non-padding)
tokens of the chosen and rejected rows, once per step (both sides also run the reference forward over the same
tokens), timed from the end of the first optimizer step to the end of the last. TRL's count comes from a forward
pre-hook that sees the policy's and the reference's forward, so it is halved.

    .venv/bin/python benchmarks/preference_throughput.py [--steps 30] [--batch-size 4] [--max-seq-len 128]

The committed results were measured on the earlier ``chatterbot-zh-pairs`` (another question's corpus reply as
rejected; today's rejected replies are the untuned SmolLM2's own, longer). LoRA DPO against LoRA SFT memory:
``benchmarks/preference_memory.py``.

Writes benchmarks/results/preference_throughput.json (``--out`` to change) with the machine and each side's
precision (``harness.write_results``), and prints the ratio glmtune / TRL.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import TrainerClock, auto_precision, glmtune_rate, run_child, worker_output, write_and_print  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
BETA = 0.1
LR = 5e-5


def overrides(args) -> list[str]:
    """The run both sides train: one config, as dotted overrides of the defaults."""
    return [
        "task=preference",
        f"model.name_or_path={args.model}",
        "data.dataset=chatterbot-zh-pairs",
        "data.validation_size=8",
        "data.test_size=8",
        "method.name=lora",
        f"method.lora_r={LORA['r']}",
        f"method.lora_alpha={LORA['alpha']}",
        f"method.lora_dropout={LORA['dropout']}",
        "preference.loss=dpo",
        f"preference.beta={BETA}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.max_seq_len={args.max_seq_len}",
        f"train.lr={LR}",
        "train.log_steps=1",
        f"train.mixed_precision='{args.precision}'",  # quoted: YAML reads a bare no as false
        f"train.eval_steps={args.steps}",
    ]


def shared_pairs(args) -> list[dict]:
    """glmtune's training pairs as TRL's conversational records."""
    from glmtune.core import config
    from glmtune.data.preference_load import load_preference

    def turns(messages):
        return [{"role": m.role, "content": m.content} for m in messages]

    data = load_preference(config.load(None, overrides(args)).data)
    return [
        {"prompt": turns(e.prompt), "chosen": turns([e.chosen]), "rejected": turns([e.rejected])}
        for e in data.train
    ]


def worker_glmtune(args) -> dict:
    """The real product path: `glmtune train` in-process; tokens and times read back from its log.jsonl."""
    from glmtune.cli import main

    out = Path(tempfile.mkdtemp()) / "run"
    main(["train", *overrides(args), "--output", str(out)])
    return glmtune_rate(out) | {"precision": "bf16" if args.precision == "bf16" else "fp32"}


def worker_trl(args) -> dict:
    """TRL's DPOTrainer + peft, as TRL's docs show it, on the same pairs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from glmtune.core.config import ModelConfig
    from glmtune.models import load_tokenizer, resolve_builtin

    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin(args.model))
    clock = TrainerClock(model)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=LR,
        warmup_steps=math.ceil(0.06 * args.steps),  # glmtune's defaults: 6% warm-up, linear decay, decay 0.01
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        beta=BETA,
        max_length=args.max_seq_len,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=42,
        disable_tqdm=True,
        gradient_checkpointing=False,
    )
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(shared_pairs(args)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock.callback],
    )
    trainer.train()
    rate = clock.rate()
    rate["tokens"] //= 2  # the hook saw the policy's and the reference's forward over the same rows
    return rate | {"precision": "bf16" if config.bf16 else "fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument(
        "--precision", choices=["bf16", "no"], default=None, help="both sides (default: auto here)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "preference_throughput.json")
    parser.add_argument("--worker", choices=["glmtune", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision is None:
        args.precision = "bf16" if auto_precision() == "bf16" else "no"
    if args.worker:
        from glmtune.core.hardware import apply_threads

        apply_threads()  # both sides compute with glmtune's thread count
        worker_output(worker_glmtune(args) if args.worker == "glmtune" else worker_trl(args))
        return
    argv = ["--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    argv += ["--max-seq-len", str(args.max_seq_len), "--precision", args.precision]
    results = {
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "out")}
        | {"lora": LORA, "beta": BETA, "lr": LR},
        "trl": run_child(__file__, "trl", argv),
        "glmtune": run_child(__file__, "glmtune", argv),
    }
    results["speedup"] = results["glmtune"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    results["rss_ratio"] = results["glmtune"]["peak_rss_mib"] / results["trl"]["peak_rss_mib"]
    write_and_print(args.out, results, "trl", "TRL", "mean_loss")
    print(args.out)


if __name__ == "__main__":
    main()

"""Training throughput and peak memory: glmtune against a plain transformers ``Trainer`` + peft, same run.

Both sides get the same model, the same reviews (the first N of glmtune's training split), the same batch
size, sequence cut, LoRA settings (r=8, alpha=16, dropout 0.05, all linear layers), AdamW, learning rate and
precision: the one glmtune's ``auto`` picks on this machine (bf16 autocast where the CPU does bf16 natively, AMX
or AVX512-BF16; fp32 elsewhere, where bf16 would be emulated and a bf16 Trainer absurdly slow), unless
``--precision`` says otherwise; the results record each side's. Each runs in its own child process so peak RSS
is its own. Throughput counts only real (non-padding) tokens, timed from the end of the first optimizer step to
the end of the last (model loading and the warm-up step excluded on both sides).

    .venv/bin/python benchmarks/train_throughput.py [--model gemma3-270m] [--steps 40] [--batch-size 16]
                                                    [--precision bf16|no]

Writes benchmarks/results/train_throughput.json (``--out`` to change; with the machine: ``harness.write_results``) and prints the
ratio glmtune / Trainer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    TrainerClock,
    auto_precision,
    glmtune_rate,
    run_child,
    worker_output,
    write_and_print,
)

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}


def shared_data(args) -> tuple[list[str], list[int], list[str]]:
    """The first steps × batch reviews of glmtune's own training split for the sentiment example."""
    from glmtune.core import config
    from glmtune.data import load_classification

    cfg = config.load(None, [f"data.max_train_samples={args.steps * args.batch_size}"])
    data = load_classification(cfg.data)
    return [e.text for e in data.train], [e.label for e in data.train], data.labels


def worker_glmtune(args) -> dict:
    """The real product path: `glmtune train` in-process; tokens and times read back from its log.jsonl."""
    from glmtune.cli import main

    out = Path(tempfile.mkdtemp()) / "run"
    overrides = [
        f"model.name_or_path={args.model}",
        f"data.max_train_samples={args.steps * args.batch_size}",
        "data.validation_size=16",
        "data.test_size=16",
        "method.name=lora",
        f"method.lora_r={LORA['r']}",
        f"method.lora_alpha={LORA['alpha']}",
        f"method.lora_dropout={LORA['dropout']}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.max_seq_len={args.max_seq_len}",
        "train.lr=2e-4",
        "train.log_steps=1",
        f"train.mixed_precision='{args.precision}'",  # quoted: YAML reads a bare no as false
        f"train.eval_steps={args.steps}",
    ]
    main(["train", *overrides, "--output", str(out)])
    return glmtune_rate(out) | {"precision": "bf16" if args.precision == "bf16" else "fp32"}


def worker_trainer(args) -> dict:
    """transformers Trainer + peft, as its docs show it, on identical data and settings."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from glmtune.core.config import ModelConfig
    from glmtune.models import load_tokenizer, resolve_builtin

    texts, labels, names = shared_data(args)
    path = resolve_builtin(args.model)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
        ),
    )
    encoded = tokenizer(texts, truncation=True, max_length=args.max_seq_len)
    dataset = [
        {"input_ids": ids, "attention_mask": m, "labels": y}
        for ids, m, y in zip(encoded["input_ids"], encoded["attention_mask"], labels)
    ]
    clock = TrainerClock(model)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-4,
        bf16=args.precision == "bf16",  # the same choice as glmtune's side
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=42,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[clock.callback],
    )
    trainer.train()
    return clock.rate() | {"precision": "bf16" if training_args.bf16 else "fp32"}


def child(kind: str, args) -> dict:
    argv = [
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-len",
        str(args.max_seq_len),
        "--precision",
        args.precision,
    ]
    return run_child(__file__, kind, argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument(
        "--precision", choices=["bf16", "no"], default=None, help="both sides (default: glmtune's auto here)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    parser.add_argument("--worker", choices=["glmtune", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = args.precision or ("bf16" if auto_precision() == "bf16" else "no")
    if args.worker:
        from glmtune.core.hardware import apply_threads

        apply_threads()  # both sides compute with glmtune's thread count (the glmtune CLI would set it anyway)
        worker_output(worker_glmtune(args) if args.worker == "glmtune" else worker_trainer(args))
        return
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")} | {"lora": LORA},
        "trainer": child("trainer", args),
        "glmtune": child("glmtune", args),
    }
    results["speedup"] = results["glmtune"]["tokens_per_s"] / results["trainer"]["tokens_per_s"]
    results["rss_ratio"] = results["glmtune"]["peak_rss_mib"] / results["trainer"]["peak_rss_mib"]
    out = args.out
    write_and_print(out, results, "trainer", "Trainer", "final_loss")
    print(out)


if __name__ == "__main__":
    main()

"""SFT training throughput and peak memory: glmtune against a plain transformers ``Trainer`` + peft, same run.

Both sides get the same model, the same conversations (glmtune's SFT training split of a built-in dataset),
encoded once by glmtune's chat template into identical ``input_ids`` and ``labels`` (the Trainer side receives
those token ids, so templates and label masks cannot differ), the same batch size, sequence cut, LoRA settings
(r=8, alpha=16, dropout 0.05, all linear layers, never the LM head), AdamW, learning rate, schedule and
precision. Batches, two ways (``--batches``):

* ``own`` (default): each side batches as it does for a user. glmtune with its length-grouped sampler, the
  Trainer with its own (``train_sampling_strategy="group_by_length"``). This is what switching tools buys,
  padding included; the loss curves are comparable in level (``mean_loss``), not step by step.
* ``same``: the Trainer gets glmtune's batches of its first epoch, in order (a dataset in that order with
  sequential sampling): the engines alone, and the two loss curves comparable step by step (``loss_curve``);
  what differs is LoRA's random init of A and the dropout draws.

Each side runs in its own child process so peak RSS is its own. Throughput counts only real (non-padding)
tokens, timed from the end of the first optimizer step to the end of the last (model loading, the warm-up step
and glmtune's evaluations excluded). ``--steps`` is at most glmtune's full batches in one epoch.

    .venv/bin/python benchmarks/sft_throughput.py [--steps 40] [--batches own|same] [--model …] [--batch-size 8]

Writes benchmarks/results/sft_throughput.json (``own``) or sft_throughput_same.json (``same``), ``--out`` to
change, with the machine and each side's precision (``harness.write_results``), and prints the ratio glmtune /
Trainer. The precision is glmtune's ``auto`` choice on this machine for both sides (fp32 where bf16 would be
emulated), unless ``--precision`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    TrainerClock,
    auto_precision,
    compare_losses,
    glmtune_rate,
    run_child,
    worker_output,
    write_and_print,
)

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}


def overrides(args) -> list[str]:
    """The run both sides train: one config, as dotted overrides of the defaults."""
    return [
        "task=sft",
        f"model.name_or_path={args.model}",
        f"data.dataset={args.dataset}",
        f"data.template={args.template}",
        "data.validation_size=8",
        "data.test_size=8",
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
        "generate.max_new_tokens=8",
    ]


def shared_examples(args) -> list[tuple[list[int], list[int]]]:
    """glmtune's encoded training conversations (ids, labels): exactly what its own run trains on."""
    from glmtune.core import config
    from glmtune.data.sft import load_sft
    from glmtune.data.templates import encode_conversations
    from glmtune.models.load import load_tokenizer

    cfg = config.load(None, overrides(args))
    tokenizer = load_tokenizer(cfg.model)
    encoded = encode_conversations(
        tokenizer, load_sft(cfg.data).train, cfg.data.template, max_seq_len=cfg.train.max_seq_len
    )
    return [(list(e.input_ids), list(e.labels)) for e in encoded.examples]


def glmtune_order(args, lengths: list[int]) -> list[int]:
    """The example indices in the order glmtune's training loader yields them: its batches, concatenated."""
    from glmtune.core import config
    from glmtune.data.encode import LengthGroupedBatchSampler

    train = config.load(None, overrides(args)).train
    sampler = LengthGroupedBatchSampler(
        lengths, train.batch_size, train.seed, shuffle=True, group_by_length=train.group_by_length
    )
    return [index for batch in sampler.batches() for index in batch]


def worker_glmtune(args) -> dict:
    """The real product path: `glmtune train` in-process; tokens and times read back from its log.jsonl."""
    from glmtune.cli import main

    out = Path(tempfile.mkdtemp()) / "run"
    main(["train", *overrides(args), "--output", str(out)])
    return glmtune_rate(out) | {"precision": "bf16" if args.precision == "bf16" else "fp32"}


def worker_trainer(args) -> dict:
    """transformers Trainer + peft, as their docs show it, on the identical token ids and labels."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from glmtune.core.config import ModelConfig
    from glmtune.models import load_tokenizer, resolve_builtin

    examples = shared_examples(args)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.model))
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin(args.model))
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
        ),
    )
    if args.batches == "same":
        examples = [examples[i] for i in glmtune_order(args, [len(ids) for ids, _ in examples])]
    dataset = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels} for ids, labels in examples
    ]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    clock = TrainerClock(model)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-4,
        # glmtune's defaults, so both follow the same schedule: 6% warm-up, linear decay, weight decay 0.01
        warmup_steps=math.ceil(0.06 * args.steps),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        # same: the dataset is already in glmtune's batch order; own: the Trainer's length grouping
        train_sampling_strategy="sequential" if args.batches == "same" else "group_by_length",
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
        data_collator=collator,
        callbacks=[clock.callback],
    )
    trainer.train()
    return clock.rate() | {"precision": "bf16" if training_args.bf16 else "fp32"}


def child(kind: str, args) -> dict:
    argv = []
    for name in (
        "model",
        "dataset",
        "template",
        "steps",
        "batch_size",
        "max_seq_len",
        "precision",
        "batches",
    ):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return run_child(__file__, kind, argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="chatterbot-zh")
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--steps", type=int, default=40)  # one epoch of full batches at most
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument(
        "--precision", choices=["bf16", "no"], default=None, help="both sides (default: glmtune's auto here)"
    )
    parser.add_argument("--batches", choices=["own", "same"], default="own", help="see the module docstring")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sft_throughput[_same].json")
    parser.add_argument("--worker", choices=["glmtune", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (
        args.precision is None
    ):  # the Trainer runs as its users would here: glmtune's auto choice, on both sides
        args.precision = "bf16" if auto_precision() == "bf16" else "no"
    if args.worker:
        from glmtune.core.hardware import apply_threads

        apply_threads()  # both sides compute with glmtune's thread count (the glmtune CLI would set it anyway)
        worker_output(worker_glmtune(args) if args.worker == "glmtune" else worker_trainer(args))
        return
    available = len(shared_examples(args))
    if available < args.steps * args.batch_size:  # the short batch, or a second epoch: the sides would part
        raise SystemExit(
            f"{args.dataset} has {available} training conversations: at most "
            f"--steps {available // args.batch_size} full batches of {args.batch_size} in one epoch"
        )
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")} | {"lora": LORA},
        "trainer": child("trainer", args),
        "glmtune": child("glmtune", args),
    }
    results["speedup"] = results["glmtune"]["tokens_per_s"] / results["trainer"]["tokens_per_s"]
    results["rss_ratio"] = results["glmtune"]["peak_rss_mib"] / results["trainer"]["peak_rss_mib"]
    if args.batches == "same":  # step by step only over the same batches
        results["loss_curve"] = compare_losses(results["trainer"]["losses"], results["glmtune"]["losses"])
    args.out = args.out or RESULTS / (
        "sft_throughput.json" if args.batches == "own" else "sft_throughput_same.json"
    )
    write_and_print(args.out, results, "trainer", "Trainer", "final_loss")
    curve = results.get("loss_curve")
    if curve:
        print(
            f"loss curves over the same {curve['steps']} batches: mean |difference| "
            f"{curve['mean_abs_diff']:.4f} ({100 * curve['mean_rel_diff']:.2f}%), largest {curve['max_abs_diff']:.4f}"
        )
    print(args.out)


if __name__ == "__main__":
    main()

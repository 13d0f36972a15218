"""``--quantize int8``: the merged model scored in fp32, quantized in place, scored again: quantization.json."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError

MEASURE_LIMIT = {
    "classification": 256,
    "sft": 32,
    "preference": 32,
}  # examples timed and scored per precision


def holder_of(loaded: Any) -> Any:
    """The module with ``.backbone`` (``CausalLM`` or ``SequenceClassifier``)."""
    return loaded.model if hasattr(loaded, "model") else loaded.classifier


def _weights_mb(model: Any) -> float:
    from glmtune.models import int8 as int8_mod

    state, _ = int8_mod.int8_state(model)
    seen: set[int] = set()
    total = 0
    for tensor in state.values():  # tied tensors once
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return round(total / 2**20, 3)


def _measure_data(loaded: Any, data: str | None) -> list[Any]:
    """Labelled examples (classification) or conversations (sft; preference: each prompt with its chosen or
    desirable response): ``data`` or the run's test split."""
    cfg = loaded.cfg
    # ``data`` is read as training read its files (data.format, data.columns, data.encoding, data.sheet)
    if cfg.task == "preference":
        from glmtune.data.messages import Conversation
        from glmtune.data.preference_load import load_preference, read_examples

        examples = read_examples(data, cfg.data) if data else load_preference(cfg.data).test
        items = [
            Conversation([*e.prompt, e.chosen], e.tools, e.line, e.source)
            for e in examples
            if e.rejected is not None or e.desirable  # a KTO record labelled undesirable is not a target
        ]
    elif cfg.task == "sft":
        from glmtune.data.sft import load_sft, read_file

        items = read_file(data, cfg.data) if data else load_sft(cfg.data).test
    else:
        from glmtune import data as data_mod
        from glmtune.data.classification import read_labelled_file

        if data:
            items = read_labelled_file(data, cfg.data, loaded.labels)
        else:
            items = data_mod.load_classification(cfg.data).test
    if not items:
        raise UserError(
            "no examples to measure int8 quality on", file=data, expected="a non-empty test split"
        )
    return items[: MEASURE_LIMIT[cfg.task]]


def _score(loaded: Any, items: list[Any]) -> dict[str, Any]:
    """Quality and wall times of one precision on ``items`` (one thread count, whatever torch uses).

    ``forward_seconds`` runs the same tokens on both sides (the speed-up); sft's ``seconds`` adds greedy
    generation, whose length depends on what each precision generates."""
    import torch

    start = time.perf_counter()
    if loaded.cfg.task in CAUSAL_TASKS:
        from glmtune.infer import lm

        lm.conversation_loss(loaded, items)
        forward = time.perf_counter() - start
        metrics, _ = lm.evaluate_conversations(loaded, items, progress=False)
        metrics["forward_seconds"] = round(forward, 4)
        metrics["seconds"] = round(time.perf_counter() - start - forward, 4)
    else:
        from glmtune.infer import classifier

        probs = classifier.predict_texts(loaded, [e.text for e in items])
        gold = torch.tensor([e.label for e in items])
        metrics = {"accuracy": float((probs.argmax(-1) == gold).float().mean()), "n": len(items)}
        metrics["predictions"] = probs.argmax(-1).tolist()
        metrics["forward_seconds"] = round(time.perf_counter() - start, 4)
    return metrics


def measure_int8(loaded: Any, data: str | None) -> dict[str, Any]:
    """Score the merged fp32 model, quantize it to int8 in place, score again: the report for quantization.json."""
    import torch

    from glmtune.models import int8 as int8_mod

    items = _measure_data(loaded, data)  # data mistakes before any timing
    holder = holder_of(loaded)
    holder.float().cpu().eval()
    # Both sides without autocast: int8 Linears take fp32 activations, so fp32 is the fair baseline.
    loaded.cfg = dataclasses.replace(
        loaded.cfg, train=dataclasses.replace(loaded.cfg.train, mixed_precision="no")
    )
    fp32_mb = _weights_mb(holder.backbone)
    _score(loaded, items[:2])  # warm-up (first-call allocations, kernel selection)
    fp32 = _score(loaded, items)
    int8_mod.quantize(holder.backbone)
    _score(loaded, items[:2])
    int8 = _score(loaded, items)
    report: dict[str, Any] = {
        "method": "torch.ao dynamic quantization: int8 weights per output channel, activations int8 per tensor per call",
        "quantized": "every nn.Linear of the model (the LM output layer included); embeddings, norms, head fp32",
        "threads": torch.get_num_threads(),
        "examples": len(items),
        "fp32": {k: v for k, v in fp32.items() if k != "predictions"},
        "int8": {k: v for k, v in int8.items() if k != "predictions"},
        "speedup": round(fp32["forward_seconds"] / max(int8["forward_seconds"], 1e-9), 3),
        "weights_mb": {"fp32": fp32_mb, "int8": _weights_mb(holder.backbone)},
    }
    if "predictions" in fp32:
        same = sum(a == b for a, b in zip(fp32["predictions"], int8["predictions"]))
        report["agreement"] = round(same / len(items), 4)
        report["delta"] = {"accuracy": round(int8["accuracy"] - fp32["accuracy"], 4)}
    else:
        keys = [k for k in fp32 if k != "n" and "seconds" not in k and isinstance(fp32[k], (int, float))]
        report["speedup_with_generation"] = round(fp32["seconds"] / max(int8["seconds"], 1e-9), 3)
        report["delta"] = {k: round(int8[k] - fp32[k], 4) for k in keys}
    return report


__all__ = ["MEASURE_LIMIT", "holder_of", "measure_int8"]

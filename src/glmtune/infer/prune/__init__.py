"""``glmtune prune RUN --out DIR``: a finished run → a smaller run-like folder that every command accepts.

What is cut (at least one of):

- whole decoder layers: ``layers`` of them (``--layers N``: N layers are *removed*), or ``round(sparsity · L)``
  of the L layers (``--sparsity F``); the ones with the lowest Block Influence on the calibration batches
  (ShortGPT, Men et al. 2024; see ``importance``). The model really shrinks and speeds up.
- MLP channels (``--mlp-sparsity F``): in every remaining layer, the ``round(F · intermediate)`` channels of lowest
  activation × weight importance; every layer keeps the same count, so the config's ``intermediate_size`` holds.
- single weights (``--unstructured F``): ``torch.nn.utils.prune.l1_unstructured`` on every decoder-layer Linear.
  Honest note: the zeros are stored densely, so neither speed nor file size changes (only a sparse format or
  sparse kernels could use them); it is there to study quality against sparsity.

The run's trained weights are merged first (``export.merge``: LoRA folded in, full/freeze as trained), so the cut
applies to the model the run actually is. The output folder:

    DIR/model/           the pruned model as a standalone HF folder (``export``'s writer: weights, config,
                         tokenizer; sft: chat template and generation_config.json; classification: head + labels)
    DIR/config.yaml      the run's config with ``model.name_or_path: DIR/model`` (absolute), ``method: full``
    DIR/body.safetensors empty: nothing is trained on top of model/ (a full run's body file, so loaders agree)
    DIR/head.safetensors, labels.json   classification only
    DIR/glmtune.json     the run marker (task, ``pruned_from``); DIR/prune.json: what was cut and why

so ``glmtune predict|eval|chat|serve|export DIR`` load it like any run, and ``model/`` loads without glmtune.
Calibration uses the run's validation split (its first ``calibration`` examples). Never imports train/
(recovery, a short distillation from the unpruned run, is the CLI's: ``cli/prune.py``).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError
from glmtune.infer.prune import importance, surgery
from glmtune.models.anatomy import transformer_layers

PRUNE_FILE = "prune.json"
MODEL_DIR = "model"
CITATION = (
    "Block Influence: Men et al. 2024, ShortGPT: Layers in Large Language Models are More Redundant Than You "
    "Expect, arXiv:2403.03853"
)


@dataclass
class Request:
    """What to cut (see the module docstring); ``calibration``: validation examples the importance is measured on."""

    layers: int | None = None
    sparsity: float | None = None
    mlp_sparsity: float | None = None
    unstructured: float | None = None
    calibration: int = 64

    def __post_init__(self) -> None:
        if self.layers is not None and self.sparsity is not None:
            raise UserError("--layers and --sparsity both set", field="--layers", expected="one of them")
        if self.layers is not None and self.layers < 1:
            raise UserError(
                f"got {self.layers}", field="--layers", expected="a number of layers to remove ≥ 1"
            )
        for name in ("sparsity", "mlp_sparsity", "unstructured"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise UserError(
                    f"got {value}", field=f"--{name.replace('_', '-')}", expected="a fraction in (0, 1)"
                )
        if self.calibration < 1:
            raise UserError(f"got {self.calibration}", field="--calibration", expected="≥ 1 examples")
        if all(getattr(self, n) is None for n in ("layers", "sparsity", "mlp_sparsity", "unstructured")):
            raise UserError(
                "nothing to prune",
                expected="--layers N, --sparsity F, --mlp-sparsity F and/or --unstructured F",
            )


# =========================================================================== loading and calibration


def load_merged(run_dir: Path) -> Any:
    """The run (``lm.LoadedLM`` or ``classifier.LoadedRun``) unquantized, its training merged into a plain
    transformers model on the CPU (``holder_of(loaded).backbone``)."""
    from glmtune.core import config as config_mod
    from glmtune.core.runs import RunDir
    from glmtune.infer import classifier, lm
    from glmtune.infer.export import merge
    from glmtune.methods import PROMPT_LEARNING

    run = RunDir(run_dir)
    info = run.check(need_weights=True)
    cfg = config_mod.load(run.config)
    if cfg.method.name in (*PROMPT_LEARNING, "ptuning") or cfg.prompt.template is not None:
        what = f"method {cfg.method.name}" if cfg.prompt.template is None else "prompt classification"
        raise UserError(
            f"a {what} run cannot be pruned (its virtual tokens, prefix or label words are not plain weights)",
            file=str(run.path),
            expected="a classification, sft or preference run with method full, freeze or lora",
        )
    causal = info.get("task", cfg.task) in CAUSAL_TASKS
    loaded = (lm if causal else classifier).load_run(run_dir, full_precision=True)
    merge(loaded)  # on the CPU, in eval mode, in the run's model.dtype
    (loaded.model if causal else loaded.classifier).cpu()
    return loaded


def calibration_batches(loaded: Any, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` validation examples of the run, encoded and batched as its evaluation does."""
    cfg = loaded.cfg
    if cfg.task in CAUSAL_TASKS:
        from glmtune.data.sft import make_sft_loader
        from glmtune.infer.lm import encode_for_eval
        from glmtune.models.load import pad_token_id

        items = _causal_validation(cfg)[:count]
        encoded = encode_for_eval(loaded, items).examples
        loader = make_sft_loader(encoded, cfg.eval.batch_size, pad_token_id(loaded.tokenizer))
    else:
        from glmtune import data as data_mod
        from glmtune.infer.classifier import encode

        items = data_mod.load_classification(cfg.data).validation[:count]
        dataset = encode(loaded, loaded.tokenizer, items, cfg.train.max_seq_len)
        loader = data_mod.make_loader(dataset, cfg.eval.batch_size, pad_id=loaded.tokenizer.pad_token_id)
    batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in loader]
    if not batches:
        raise UserError(
            "no validation examples to measure importance on", expected="a non-empty validation split"
        )
    return batches


def _causal_validation(cfg: Any) -> list[Any]:
    """sft: the validation conversations; preference: each validation prompt with its chosen response."""
    if cfg.task == "preference":
        from glmtune.data.messages import Conversation
        from glmtune.data.preference_load import load_preference

        return [
            Conversation([*e.prompt, e.chosen], e.tools, e.line, e.source)
            for e in load_preference(cfg.data).validation
            if e.rejected is not None or e.desirable
        ]
    from glmtune.data.sft import load_sft

    return load_sft(cfg.data).validation


def _forward(holder: Any, causal: bool):
    def run(batch: dict[str, torch.Tensor]) -> Any:
        if causal:
            return holder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return holder(batch["input_ids"], batch["attention_mask"])

    return run


# =========================================================================== the cut


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def apply(loaded: Any, request: Request) -> dict[str, Any]:
    """Cut the merged model of ``loaded`` in place as ``request`` says; returns the report (prune.json's body)."""
    causal = loaded.cfg.task in CAUSAL_TASKS
    holder = loaded.model if causal else loaded.classifier
    model = holder.backbone
    total = surgery.num_layers(model)
    remove = request.layers if request.layers is not None else round((request.sparsity or 0.0) * total)
    if remove >= total:
        raise UserError(
            f"removing {remove} of {total} layers leaves none",
            field="--layers" if request.layers is not None else "--sparsity",
            expected=f"at most {total - 1}",
        )
    report: dict[str, Any] = {
        "request": dataclasses.asdict(request),
        "layers_before": total,
        "parameters_before": count_parameters(model),
    }
    if request.mlp_sparsity is not None:
        surgery.mlp_parts(transformer_layers(model)[1][0])  # an unsupported layout fails before any work
    batches = calibration_batches(loaded, request.calibration) if remove or request.mlp_sparsity else []
    with torch.no_grad():
        if remove:
            scores = importance.measure(model, batches, _forward(holder, causal))
            removed = importance.least_influential(scores.block_influence, remove)
            surgery.drop_layers(model, removed)
            report["layers"] = {
                "importance": "block influence (1 - mean cosine(input, output)) on validation tokens",
                "citation": CITATION,
                "block_influence": [round(b, 6) for b in scores.block_influence],
                "removed": removed,
                "calibration_tokens": scores.tokens,
            }
        if request.mlp_sparsity is not None:
            scores = importance.measure(model, batches, _forward(holder, causal), channels=True)
            inter = surgery.mlp_parts(transformer_layers(model)[1][0]).down.in_features
            keep = max(1, inter - round(request.mlp_sparsity * inter))
            surgery.shrink_mlp(model, importance.top_channels(scores.channels or [], keep))
            report["mlp"] = {
                "importance": "mean |activation| x down-projection column norm, per channel, on validation tokens",
                "intermediate_before": inter,
                "intermediate_after": keep,
            }
        if request.unstructured is not None:
            linears = surgery.layer_linears(model)
            zeroed = surgery.unstructured(model, request.unstructured)
            weights = sum(m.weight.numel() for m in linears)
            report["unstructured"] = {
                "method": "torch.nn.utils.prune.l1_unstructured per decoder-layer Linear, made permanent",
                "zeroed": zeroed,
                "fraction_of_layer_weights": round(zeroed / weights, 6),
                "note": "stored densely: no speed-up and no smaller file unless exported in a sparse format",
            }
    report["layers_after"] = surgery.num_layers(model)
    report["parameters_after"] = count_parameters(model)
    return report


# =========================================================================== the output folder


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write(loaded: Any, run_dir: Path, out: Path, report: dict[str, Any]) -> None:
    """The run-like folder ``out`` (see the module docstring), written to a temporary name and renamed."""
    from safetensors.torch import save_file

    from glmtune.core import config as config_mod
    from glmtune.core.runs import RunDir, atomic_write_json, atomic_write_text
    from glmtune.infer.export import _write_model, new_folder

    out = out.absolute()
    causal = loaded.cfg.task in CAUSAL_TASKS
    holder = loaded.model if causal else loaded.classifier
    cfg = loaded.cfg
    model_cfg = dataclasses.replace(
        cfg.model, name_or_path=str(out / MODEL_DIR), num_layers=None, quantization="none"
    )
    cfg = dataclasses.replace(cfg, model=model_cfg, method=dataclasses.replace(cfg.method, name="full"))
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, distill=type(cfg.method.distill)()))
    with new_folder(out) as tmp:
        _write_model(tmp / MODEL_DIR, loaded, holder.backbone, False)
        for extra in ("head.safetensors", "labels.json"):  # they belong to the run folder, not the model
            if (tmp / MODEL_DIR / extra).is_file():
                shutil.move(tmp / MODEL_DIR / extra, tmp / extra)
        run = RunDir(tmp)
        run.write_marker({"task": cfg.task, "pruned_from": str(run_dir.absolute())})
        save_file({}, str(run.body))  # method full with nothing on top of model/
        atomic_write_text(run.config, config_mod.dump(cfg))
        report = {**report, "run": str(run_dir.absolute()), "model_bytes": folder_size(tmp / MODEL_DIR)}
        atomic_write_json(tmp / PRUNE_FILE, report)


def prune(run_dir: str | Path, out: str | Path, request: Request) -> dict[str, Any]:
    """Prune the run ``run_dir`` into the new folder ``out`` (never overwritten); returns prune.json's content."""
    from glmtune.core.runs import read_json

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise UserError(
            "output folder exists (prune never overwrites)", file=str(out), expected="a new --out"
        )
    loaded = load_merged(run_dir)
    report = apply(loaded, request)
    write(loaded, run_dir, out, report)
    return read_json(out / PRUNE_FILE)


__all__ = ["CITATION", "MODEL_DIR", "PRUNE_FILE", "Request", "apply", "load_merged", "prune", "write"]

"""Preference tuning (``task: preference``): a causal LM learns to prefer the chosen response over the rejected one
(DPO, IPO, ORPO, SimPO) or desirable over undesirable ones (KTO).

Data: ``data.preference_load`` (files or a built-in preference dataset, seeded splits) → ``data.preference`` (SFT's
chat templates and label masks: only the final response is scored, the prompt encoded once and shared) → one
forward per batch over every chosen row then every rejected row. Loss: ``train.techniques.preference``.
The reference model (dpo, ipo, kto): with a peft method (LoRA, prompt/P-tuning) the same weights with the adapter
switched off (``disable_adapter``; no second copy in memory); with full/freeze, log-probabilities computed once
from the untrained weights before training (batched) and written to the run folder
(``reference_logps.safetensors``; read back on ``--resume``). Evaluation: the loss and the reward metrics over a whole split
(``PREFERENCE_METRICS``); metrics.json holds ``before``/``after`` like SFT. The run folder is a causal LM run's.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from glmtune import methods
from glmtune.core.config import Config
from glmtune.core.config.choices import PREFERENCE_METRICS
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, atomic_path, atomic_write_json
from glmtune.infer.lm import as_config_field, resolve_template, run_base
from glmtune.models.causal import accepts_learned_mask, learned_mask
from glmtune.train.techniques import preference as losses_mod

REFERENCE_FILE = "reference_logps.safetensors"
TABLE_ROWS = tuple((m, m) for m in PREFERENCE_METRICS) + (("n", "n"),)


class Preference:
    """The preference task (see ``glmtune.train.tasks`` for the protocol)."""

    compare_before_after = True  # metrics.json: the untuned model's reward accuracy next to the tuned one's
    logged = PREFERENCE_METRICS

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.loaders: dict[str, Any] = {}
        # split → [examples, 2] reference log-probs, when precomputed
        self.reference: dict[str, torch.Tensor] = {}
        self.paired = cfg.preference.loss != "kto"
        self.needs_reference = cfg.preference.loss not in losses_mod.REFERENCE_FREE
        self.adapter_off = False  # set in make_loaders: the reference is the model with its adapter off
        self.resumed_run: Path | None = (
            None  # set by the recipe on --resume: the reference cache is read back
        )
        self.reference_source: str | None = None  # where precomputed reference log-probs came from
        if cfg.preference.reference == "adapter_off" and cfg.method.name not in methods.PEFT_METHODS:
            raise UserError(
                f"method {cfg.method.name} has no adapter to switch off",
                field="preference.reference",
                expected="auto or precomputed with full/freeze, or a peft method (lora, prompt_tuning, p_tuning)",
            )

    # 1. data (every bad-input error happens here)
    def load_data(self) -> None:
        from glmtune.data.preference import encode_example
        from glmtune.data.preference_load import load_preference
        from glmtune.models.load import load_tokenizer

        cfg = self.cfg
        self.data = load_preference(cfg.data)
        self.splits = {
            name: self._shape(getattr(self.data, name)) for name in ("train", "validation", "test")
        }
        self.tokenizer = load_tokenizer(run_base(cfg.model))  # a run folder: the tokenizer of its model
        # one format for every split, knowing whether any prompt has tools (refused where the template drops them)
        conversations = [[e.conversation() for e in examples] for examples in self.splits.values()]
        self.format = resolve_template(self.tokenizer, cfg.data.template, *conversations)
        self.encoded: dict[str, list[Any]] = {}
        try:
            for name, examples in self.splits.items():
                encoded = [
                    encode_example(self.tokenizer, self.format, e, cfg.train.max_seq_len) for e in examples
                ]
                if not self.paired:  # KTO's KL term: each prompt with the previous example's completion
                    encoded = [e._replace(kl=encoded[i - 1].responses[0]) for i, e in enumerate(encoded)]
                self.encoded[name] = encoded
        except UserError as error:
            raise as_config_field(error) from None
        self.truncated = {n: sum(e.truncated for e in enc) for n, enc in self.encoded.items()}

    def _shape(self, examples: list[Any]) -> list[Any]:
        """Pairs for the paired losses (KTO data is refused); KTO takes unpaired examples, or splits each pair
        into a desirable and an undesirable one."""
        from glmtune.data.preference import PreferenceExample

        if not examples or examples[0].paired == self.paired:
            return examples
        if self.paired:
            first = examples[0]
            raise UserError(
                f"unpaired (KTO) examples, but loss {self.cfg.preference.loss} needs chosen/rejected pairs",
                file=first.source,
                line=first.line,
                field="preference.loss",
                expected="kto for labelled completions, or pairs in the data",
            )
        unpaired = []
        for e in examples:
            unpaired.append(PreferenceExample(e.prompt, e.tools, e.chosen, None, True, e.source, e.line))
            unpaired.append(PreferenceExample(e.prompt, e.tools, e.rejected, None, False, e.source, e.line))
        return unpaired

    # 2. model (a finished SFT run as model.name_or_path: its LoRA adapter merged into its base first)
    def build_model(self) -> tuple[torch.nn.Module, Any]:
        from glmtune.infer.lm import load_model_or_run
        from glmtune.models.load import load_config

        cfg = self.cfg
        overrides = methods.config_overrides(cfg.method, load_config(run_base(cfg.model)))
        model, _ = load_model_or_run(cfg.model, dropout=cfg.train.dropout, config_overrides=overrides)
        return model, self.tokenizer

    # 3. batches, and the reference log-probabilities when they are precomputed
    def make_loaders(self, tokenizer: Any, model: torch.nn.Module) -> dict[str, Any]:
        from glmtune.data.preference import make_preference_loader
        from glmtune.models.load import pad_token_id

        cfg, train = self.cfg, self.cfg.train
        peft = cfg.method.name in methods.PEFT_METHODS
        self.adapter_off = self.needs_reference and peft and cfg.preference.reference != "precomputed"
        pad_id = pad_token_id(tokenizer)
        loader = lambda name, size, **kw: make_preference_loader(  # noqa: E731
            self.encoded[name], size, pad_id, train.max_seq_len, **kw
        )
        loaders = {"train": loader("train", train.batch_size, seed=train.seed, shuffle=True)}
        loaders.update({n: loader(n, cfg.eval.batch_size) for n in ("validation", "test")})
        if self.needs_reference and not self.adapter_off:
            # The untrained weights: read back on resume (cached by the first run), else computed now, every split
            self.reference = self._cached_reference(loaders) or {
                n: self._precompute(model, loader(n, cfg.eval.batch_size)) for n in loaders
            }
        return loaders

    def _cached_reference(self, loaders: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """A resumed run's cached reference log-probs, when they fit its splits (else None: computed again)."""
        if not self.resumed_run or not (path := Path(self.resumed_run) / REFERENCE_FILE).is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            cached = load_file(str(path))
        except (SafetensorError, OSError):  # damaged: computing it again gives the same numbers
            return None
        if set(cached) != set(loaders) or any(
            cached[n].shape != (len(loaders[n].dataset), 2) for n in loaders
        ):
            return None
        self.reference_source = f"read from {REFERENCE_FILE}"
        return cached

    @torch.no_grad()
    def _precompute(self, model: torch.nn.Module, loader: Any) -> torch.Tensor:
        """[examples, 2] reference log-probs of one split: (chosen, rejected), or KTO's (completion, KL row)."""
        from functools import partial

        from accelerate import PartialState

        from glmtune.models.precision import AUTOCAST_DTYPES, mixed_precision

        was_training = model.training
        model.eval()
        device = PartialState().device
        model.to(device)
        precision = mixed_precision(
            self.cfg.train
        )  # as the policy's forward will run: under the same autocast
        autocast = (
            partial(torch.autocast, device.type, dtype=AUTOCAST_DTYPES[precision])
            if precision in AUTOCAST_DTYPES
            else nullcontext
        )
        out = torch.zeros(len(loader.dataset), 2)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            first, second = self._rows_logps(model, batch, autocast)
            out[batch["index"].cpu()] = torch.stack((first, second), dim=1).float().cpu()
        model.train(was_training)
        return out

    def describe(self) -> list[str]:
        p = self.cfg.preference
        reference = f"precomputed ({self.reference_source or 'before training'})"
        if not self.needs_reference or self.adapter_off:
            reference = "adapter off" if self.needs_reference else "none"
        lines = [
            f"template {self.format.name} · loss {p.loss} (beta {p.strength:g}) · reference {reference}",
            f"{' / '.join(f'{len(self.splits[n])} {n}' for n in ('train', 'validation', 'test'))} "
            + ("pairs" if self.paired else "labelled completions"),
        ]
        if any(self.truncated.values()):
            lines.append(
                f"truncated at train.max_seq_len={self.cfg.train.max_seq_len}: {self.truncated} per split"
            )
        return lines

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def eval_scale(self, split: str) -> float:
        """A final evaluation of ``split`` relative to validation's: the ratio of their example counts."""
        return self.size(split) / max(self.size("validation"), 1)

    # 4. the loss of one batch
    def _logps(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        attention: torch.Tensor,
        labels: torch.Tensor,
        autocast: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of each row's learned tokens [rows] and their counts [rows]; the LM head runs on the
        learned positions only where the model allows it."""
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": attention}
        mask = learned_mask(labels) if accepts_learned_mask(model) else None  # [rows, seq]
        if mask is not None:
            inputs["logits_to_keep"] = mask
        with autocast():
            logits = model(**inputs).logits  # [learned, vocab] with a mask, else [rows, seq, vocab]
        return losses_mod.sequence_logps(logits, labels, mask)

    def _rows_logps(self, model: torch.nn.Module, batch: dict[str, Any], autocast: Any) -> tuple[Any, Any]:
        """Reference-side log-probs of a batch: pairs (chosen [pairs], rejected [pairs]); KTO (completion
        [examples], KL rows [examples])."""
        logps, _ = self._logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], autocast)
        if self.paired:
            return tuple(logps.chunk(2))
        kl, _ = self._logps(
            model, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"], autocast
        )
        return logps, kl

    @torch.no_grad()
    def _reference(self, model: torch.nn.Module, batch: dict[str, Any], split: str, accelerator: Any) -> Any:
        if not self.adapter_off:
            ref = self.reference[split].to(batch["input_ids"].device)[batch["index"]]  # [batch, 2]
            return ref[:, 0], ref[:, 1]
        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()  # no dropout in the reference
        try:
            with unwrapped.backbone.disable_adapter():
                return self._rows_logps(model, batch, accelerator.autocast)
        finally:
            unwrapped.train(was_training)

    def compute(
        self, model: torch.nn.Module, batch: dict[str, Any], split: str, accelerator: Any
    ) -> tuple[losses_mod.Losses, torch.Tensor, torch.Tensor]:
        """The loss of a batch, with the chosen and rejected (KTO: desirable, undesirable) log-probs."""
        p, beta = self.cfg.preference, self.cfg.preference.strength
        logps, counts = self._logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], accelerator.autocast
        )  # [rows], [rows]
        if not self.paired:
            desirable = batch["desirable"]  # [examples]
            with torch.no_grad():
                kl, _ = self._logps(
                    model,
                    batch["kl_input_ids"],
                    batch["kl_attention_mask"],
                    batch["kl_labels"],
                    accelerator.autocast,
                )
            ref, ref_kl = self._reference(model, batch, split, accelerator)
            out = losses_mod.kto(
                logps, ref, desirable, kl, ref_kl, beta, p.desirable_weight, p.undesirable_weight
            )
            return out, logps[desirable].detach(), logps[~desirable].detach()
        chosen, rejected = logps.chunk(2)  # [pairs] each
        n_chosen, n_rejected = counts.chunk(2)  # [pairs] each
        if p.loss == "orpo":
            out = losses_mod.orpo(chosen, rejected, n_chosen, n_rejected, beta)
        elif p.loss == "simpo":
            out = losses_mod.simpo(
                chosen, rejected, n_chosen, n_rejected, beta, p.simpo_gamma, p.label_smoothing
            )
        else:
            ref_chosen, ref_rejected = self._reference(model, batch, split, accelerator)
            if p.loss == "ipo":
                out = losses_mod.ipo(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta)
            else:
                out = losses_mod.dpo(chosen, rejected, ref_chosen, ref_rejected, beta, p.label_smoothing)
        return out, chosen.detach(), rejected.detach()

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], accelerator: Any
    ) -> tuple[torch.Tensor, int]:
        out, _, _ = self.compute(model, batch, "train", accelerator)
        tokens = batch["attention_mask"].sum() + (batch["kl_attention_mask"].sum() if not self.paired else 0)
        return out.loss, int(tokens)

    # 5. evaluation: every metric over the whole (sharded) split
    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, split: str, accelerator: Any, final: bool = False
    ) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("loss", "size", "chosen", "rejected", "cl", "rl")
        }
        for batch in self.loaders[split]:
            out, chosen_logps, rejected_logps = self.compute(model, batch, split, accelerator)
            size = torch.tensor([float(len(batch["index"]))], device=out.loss.device)
            gathered = accelerator.gather_for_metrics(
                (
                    out.loss.detach().reshape(1) * size,
                    size,
                    out.chosen,
                    out.rejected,
                    chosen_logps,
                    rejected_logps,
                ),
                use_gather_object=False,
            )
            for key, value in zip(parts, gathered):
                parts[key].append(value.float().cpu())
        model.train(was_training)
        if not parts["size"]:
            return {"loss": float("nan"), "n": 0}
        cat = {k: torch.cat(v) for k, v in parts.items()}
        mean_loss = cat["loss"].sum() / cat["size"].sum()
        split_losses = losses_mod.Losses(mean_loss, cat["chosen"], cat["rejected"])
        metrics: dict[str, Any] = losses_mod.metrics(split_losses, cat["cl"], cat["rl"], self.paired)
        metrics["n"] = self.size(split)
        return metrics

    # 6. the run folder
    def write_start(self, run: RunDir) -> None:
        atomic_write_json(run.path / "data_summary.json", self.data.summary())
        if self.reference:
            from safetensors.torch import save_file

            with atomic_path(Path(run.path) / REFERENCE_FILE) as tmp:
                save_file({k: v.contiguous() for k, v in self.reference.items()}, str(tmp))

    def write_outputs(self, run: RunDir, results: dict[str, Any]) -> None:
        from glmtune import metrics as evaluation

        columns = {k: results[k] for k in ("before", "after", "test") if k in results}
        if "after" not in columns and "validation" in results:
            columns["validation"] = results["validation"]
        print(evaluation.format_metrics_table(columns, TABLE_ROWS))


def evaluate_file(run_path: str | Path, data_path: str | None) -> tuple[str, dict[str, Any], Path]:
    """``glmtune eval RUN [--data pairs.jsonl]``: a finished preference run's metrics on a file of pairs (or its
    test split), written to ``RUN/eval/NAME/metrics.json``; returns (name, metrics, that folder)."""
    from accelerate import Accelerator

    from glmtune.core import config as config_mod
    from glmtune.data.preference_load import read_examples
    from glmtune.models.precision import mixed_precision

    run = RunDir(run_path)
    run.check(need_weights=True)
    cfg = config_mod.load(run.config)
    task = Preference(cfg)
    task.load_data()  # the tokenizer, template and the run's own splits
    name = "test"
    if data_path is not None:
        from glmtune.data.preference import encode_example

        name = Path(data_path).stem
        task.splits["test"] = task._shape(read_examples(data_path, cfg.data))
        task.encoded["test"] = [
            encode_example(task.tokenizer, task.format, e, cfg.train.max_seq_len) for e in task.splits["test"]
        ]
        if not task.paired:
            task.encoded["test"] = [
                e._replace(kl=task.encoded["test"][i - 1].responses[0])
                for i, e in enumerate(task.encoded["test"])
            ]
    if not task.encoded["test"]:
        raise UserError("no examples to evaluate", file=data_path, expected="at least one")
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train))
    model, tokenizer = task.build_model()
    methods.apply(
        model, cfg.method
    )  # the adapter's structure (peft), then the reference from the untrained weights
    loaders = task.make_loaders(tokenizer, model)
    methods.restore(model, cfg.method, run)
    model = accelerator.prepare(model)
    task.loaders = {"test": accelerator.prepare(loaders["test"])}
    metrics = task.evaluate(model, "test", accelerator, final=True)
    out = run.path / "eval" / name
    atomic_write_json(out / "metrics.json", metrics)
    return name, metrics, out


__all__ = ["REFERENCE_FILE", "Preference", "evaluate_file"]

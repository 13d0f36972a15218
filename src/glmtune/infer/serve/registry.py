"""What the server serves: run folders and models loaded once, by the name clients put in ``model``.

* an SFT run (any method) or a bare model (a built-in name or an HF folder): chat and completions;
* a classification run: ``/v1/classify``;
* several LoRA SFT runs over the same base model (same ``model:`` section in their config.yaml) share one copy
  of the base: the first run's adapter is loaded with it and every further one is added with peft's
  ``load_adapter``; the worker activates a run's adapter (``set_adapter``) before each of its batches. Every LoRA
  variant shares it: DoRA and rsLoRA adapters apply to the untouched base as they are, and PiSSA/OLoRA, which
  trained on a rewritten base, were saved converted to a plain LoRA on the untouched one (``methods.variants``).
  Runs of the other methods (full, freeze, ptuning) change the base's own weights or its shape, so each gets its
  own copy.

A model's name is the run folder's name, or the model name / folder as given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError
from glmtune.core.runs import MARKER, RunDir


@dataclass
class ServedModel:
    """One name clients can ask for, and what answers it."""

    name: str
    task: str  # "sft" (chat and completions) or "classification" (classifier)
    lm: Any = None  # lm.LoadedLM for sft
    classifier: Any = None  # classifier.LoadedRun for classification
    adapter: str | None = None  # the peft adapter to activate (several runs over one base)
    window: int = 0  # tokens of prompt + reply the model can take
    stop_ids: list[int] = field(default_factory=list)
    pad_id: int = 0

    # ---- prompts
    def chat_prompt(self, messages: list[Any], tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids of a chat prompt in the format the model was loaded with (a UserError if it cannot express
        it: tools it does not render are refused, never dropped)."""
        from glmtune.infer.lm import prompt_ids

        fmt = self.lm.format
        if tools and not fmt.renders_tools:
            raise UserError(
                f"model '{self.name}' has chat format '{fmt.name}', which cannot show tools to the model",
                field="tools",
                expected="no tools for this model (or serve a model whose chat format renders tools)",
            )
        messages = self.lm.with_knowledge(messages, tools)  # knowledge.kb: the run's passages, as in training
        return prompt_ids(self.lm.tokenizer, messages, tools, fmt, 10**9)

    def text_prompt(self, text: str) -> list[int]:
        """Token ids of a raw prompt (``/v1/completions``), with the tokenizer's own BOS if it adds one."""
        return list(self.lm.tokenizer(text)["input_ids"])

    def parse_reply(self, text: str) -> dict[str, Any]:
        """The template's reading of a reply: ``{"content"}`` or a tool call ``{"name", "parameters"}``."""
        return self.lm.format.parse_reply(text)

    def reply_text(self, text: str) -> str:
        """A reply's text as the client sees it: the format's ``reply_text`` (a format that writes a line before
        every answer, such as an empty metadata line, leaves it out)."""
        return self.lm.format.reply_text(text) if self.lm is not None else text

    @property
    def supports_tools(self) -> bool:
        """Whether replies can be read back as tool calls: the format's ``parses_tool_calls`` (text templates
        cannot)."""
        return self.lm is not None and self.lm.format.parses_tool_calls

    # ---- batches (on the worker thread)
    def run_generation(self, jobs: list[Any]) -> None:
        from glmtune.infer.serve.batch import generate_rows

        if self.adapter is not None:
            self.lm.model.backbone.set_adapter(self.adapter)
        with self.lm.autocast():
            generate_rows(self.lm.model, self.lm.tokenizer, jobs, self.stop_ids, self.pad_id)

    def run_classify(self, jobs: list[Any]) -> None:
        """Every job's texts in one ``classifier.predict_texts`` call; each job gets its rows of probabilities.
        When that call fails, each job runs alone, so only the one that broke it gets the error."""
        from glmtune.infer.classifier import predict_texts

        live = [job for job in jobs if not job.is_cancelled()]
        texts = [text for job in live for text in job.payload]
        if not texts:
            return
        try:
            probs = predict_texts(self.classifier, texts)  # [n, num_labels]
        except Exception as error:  # noqa: BLE001 - one job's texts must not fail the others
            if len(live) == 1:
                live[0].emit_error(error)
                return
            for job in live:
                self.run_classify([job])
            return
        start = 0
        for job in live:
            job.emit_done(probs[start : start + len(job.payload)])
            start += len(job.payload)

    def runner(self):
        return self.run_classify if self.task == "classification" else self.run_generation

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"task": self.task}
        if self.lm is not None:
            info.update(template=self.lm.format.name, context_window=self.window)
        if self.classifier is not None:
            info["labels"] = list(self.classifier.labels)
        return info


def model_name(target: str) -> str:
    """The name clients use for ``target``: a run folder's (or model folder's) name, else the model name."""
    path = Path(target)
    return path.resolve().name if path.is_dir() else target


def _run_task(path: Path) -> str | None:
    """The task of a run folder (checked: marker, layout version, weights), or None for a model."""
    if not (path / MARKER).is_file():
        return None
    return RunDir(path).check(need_weights=True).get("task", "classification")


def _shared_base(served: dict[str, ServedModel], run: Path) -> ServedModel | None:
    """A served LoRA run over the same base as LoRA run ``run``, if any (its model takes the new adapter)."""
    from glmtune.core import config as config_mod

    cfg = config_mod.load(RunDir(run).config)
    if cfg.method.name != "lora":
        return None
    for other in served.values():
        if other.lm is None or other.lm.run is None or other.adapter is None:
            continue
        if dataclasses.asdict(other.lm.cfg.model) == dataclasses.asdict(cfg.model):
            return other
    return None


def _add_adapter(base: ServedModel, run_path: Path, adapter: str, name: str) -> ServedModel:
    from glmtune.core import config as config_mod
    from glmtune.infer.lm import LoadedLM, open_knowledge, resolve_template

    run = RunDir(run_path)
    cfg = config_mod.load(run.config)
    base.lm.model.backbone.load_adapter(str(run.adapter), adapter_name=adapter)
    tokenizer = base.lm.tokenizer
    fmt = resolve_template(tokenizer, cfg.data.template)
    lm = LoadedLM(cfg, base.lm.model, tokenizer, fmt, run, open_knowledge(run, cfg))
    return _sft(name, lm, adapter)


def _sft(name: str, lm: Any, adapter: str | None) -> ServedModel:
    from glmtune.infer.chat import context_window
    from glmtune.models.load import pad_token_id

    return ServedModel(
        name,
        "sft",
        lm=lm,
        adapter=adapter,
        window=context_window(lm),
        stop_ids=lm.format.stop_ids(),
        pad_id=pad_token_id(lm.tokenizer),
    )


def load_models(targets: list[str], template: str | None = None) -> dict[str, ServedModel]:
    """Load every target (run folder or model) once, by name; bad input is a UserError before anything serves."""
    from glmtune.infer import classifier
    from glmtune.infer import lm as lm_mod

    if not targets:
        raise UserError("nothing to serve", expected="glmtune serve RUN_DIR|MODEL [RUN_DIR|MODEL ...]")
    served: dict[str, ServedModel] = {}
    for number, target in enumerate(targets):
        name = model_name(target)
        if name in served:
            raise UserError(
                f"two models would both be named '{name}'",
                file=target,
                expected="run folders with different names",
            )
        path = Path(target)
        task = _run_task(path) if path.is_dir() else None
        if task is not None and template is not None:
            raise UserError(
                "a run serves with the template it was trained with",
                field="--template",
                expected="no --template",
            )
        if task == "classification":
            loaded = classifier.load_run(path)
            served[name] = ServedModel(name, "classification", classifier=loaded)
            continue
        base = _shared_base(served, path) if task in CAUSAL_TASKS else None
        if base is not None:
            served[name] = _add_adapter(base, path, f"adapter{number}", name)
            continue
        lm = lm_mod.load_run(path) if task in CAUSAL_TASKS else lm_mod.load_base(target, template or "auto")
        is_lora = task in CAUSAL_TASKS and lm.cfg.method.name == "lora"
        # peft names the adapter loaded with the model "default"
        served[name] = _sft(name, lm, "default" if is_lora else None)
    return served


__all__ = ["ServedModel", "load_models", "model_name"]

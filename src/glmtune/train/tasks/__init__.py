"""Tasks: what differs between kinds of training run, one module each; ``train.run`` is the same loop for all.

A task object (``Classification``, ``SFT``, ``Preference``) does, in the order ``train.run`` calls it:

* ``load_data()`` — read, check and split the data (SFT also loads the tokenizer and encodes here); every
  bad-input error happens here or in the next two steps, before the run folder is touched;
* ``build_model()`` — the model (``.backbone`` and ``.head``, for ``methods.apply``) and its tokenizer;
* ``make_loaders(tokenizer, model)`` — batched ``train`` / ``validation`` / ``test`` loaders (``train.run``
  prepares them with accelerate and hands them back as ``task.loaders``);
* ``describe()`` — lines for the log (split sizes, truncation); ``size(split)`` — examples in a split;
* ``loss(model, batch, accelerator)`` — the training loss of one batch and its real (non-padding) tokens;
* ``evaluate(model, split, accelerator, final)`` — a metrics dict (always with ``loss``) over a whole split;
  ``final`` asks for everything (SFT: generation), not only what picks the best checkpoint;
* ``write_start(run)`` / ``write_outputs(run, results)`` — the task's files in the run folder (labels,
  predictions, plots) and the printed table.

Attributes: ``logged`` (validation metrics written to log.jsonl/TensorBoard) and ``compare_before_after``
(evaluate the untuned model first; metrics.json then holds ``before`` and ``after``). ``train.run`` sets
``progress`` to a name (``before: validation``) around that first evaluation: a task whose evaluation takes long
shows progress bars under it (SFT does); the training bar starts only after it. ``resumed_run`` is the run folder
on ``--resume`` (else None), set before ``load_data``: what the task cached there may be read back (preference:
the reference log-probs).
"""

from __future__ import annotations

from typing import Any

from glmtune.core.config import Config


def create(cfg: Config) -> Any:
    """The task object for ``cfg.task``."""
    if cfg.task == "sft":
        from glmtune.train.tasks.sft import SFT

        return SFT(cfg)
    if cfg.task == "preference":
        from glmtune.train.tasks.preference import Preference

        return Preference(cfg)
    from glmtune.train.tasks.classification import Classification

    return Classification(cfg)


__all__ = ["create"]

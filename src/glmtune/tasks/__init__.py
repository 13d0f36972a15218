"""Tasks: what differs between kinds of training run, one module each; ``train.run`` is the same loop for all.

A task object (``Classification``, ``SFT``) does, in the order ``train.run`` calls it:

* ``load_data()`` — read, check and split the data (every bad-input error happens here or in the next two);
* ``build_model()`` — the model (``.backbone`` and ``.head``, for ``methods.apply``) and its tokenizer;
* ``make_loaders(tokenizer, model)`` — encoded, batched ``train`` / ``validation`` / ``test`` loaders;
* ``loss(model, batch)`` — the training loss of one batch and its real (non-padding) token count;
* ``evaluate(model, split, accelerator, final)`` — a metrics dict (always with ``loss``) over a whole split;
  ``final`` asks for everything (generation included), not just what picks the best checkpoint;
* ``write_start(run)`` / ``write_outputs(run, results)`` — task files of the run folder (labels, predictions,
  plots) and the printed table.
"""

from __future__ import annotations

from typing import Any

from glmtune.config import Config


def create(cfg: Config) -> Any:
    """The task object for ``cfg.task``."""
    if cfg.task == "sft":
        from glmtune.tasks.sft import SFT

        return SFT(cfg)
    from glmtune.tasks.classification import Classification

    return Classification(cfg)


__all__ = ["create"]

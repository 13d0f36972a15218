"""The data section as a run folder's config.yaml records it: what was read, from anywhere.

``run_config(cfg)`` returns ``cfg`` with every data file as an absolute path (``train_file``, ``train_files``
paths, ``validation_file``, ``test_file``, ``dataset_info``, ``augment.synonyms_file``), so the run folder
re-runs, resumes and evaluates from any working directory; without a ``data.dataset`` that a file overrode
(``train_file`` or ``train_files`` is what is read: a ``dataset:`` beside it would only mislead); and with the
``dataset_info`` dataset that was read when the config named none (the file's only one).
"""

from __future__ import annotations

import dataclasses
import os

from glmtune.core.config import Config
from glmtune.data.dataset_info import dataset_name


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def run_config(cfg: Config) -> Config:
    """``cfg`` as config.yaml records it (see the module docstring); ``cfg`` itself is left as it is."""
    data = cfg.data
    files = data.train_file is not None or bool(data.train_files)
    dataset = None if files else data.dataset
    if not files and data.dataset_info is not None:
        dataset = dataset_name(data.dataset_info, data.dataset)
    sources = None
    if data.train_files:
        sources = [dataclasses.replace(s, path=_absolute(s.path)) for s in data.train_files]
    augment = dataclasses.replace(data.augment, synonyms_file=_absolute(data.augment.synonyms_file))
    data = dataclasses.replace(
        data,
        dataset=dataset,
        train_file=_absolute(data.train_file),
        train_files=sources,
        validation_file=_absolute(data.validation_file),
        test_file=_absolute(data.test_file),
        dataset_info=_absolute(data.dataset_info),
        augment=augment,
    )
    model = dataclasses.replace(cfg.model, from_run=_absolute(cfg.model.from_run))  # continued from anywhere
    return dataclasses.replace(cfg, model=model, data=data)


__all__ = ["run_config"]

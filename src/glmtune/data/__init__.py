"""The data layer: read files and built-in datasets → classification splits → token ids → batches.

Direction inside the package: ``read`` and ``builtin`` know nothing of tasks; ``classification`` turns their
records into checked, split ``Example``s; ``encode`` turns examples into tensors. Nothing here imports a model.
``encode`` (torch) is imported on first use, so ``glmtune data list`` stays quick.
"""

from typing import Any

from glmtune.data.builtin import BuiltinDataset, get_dataset, list_datasets, load_builtin
from glmtune.data.classification import (
    ClassificationData,
    Example,
    describe,
    load_classification,
    load_labelled_file,
)
from glmtune.data.read import columns_of, read_records, require_columns, where

__all__ = [
    "BuiltinDataset",
    "ClassificationData",
    "ClassificationDataset",
    "EncodedTexts",
    "EpochPermutation",
    "Example",
    "LengthGroupedBatchSampler",
    "collate",
    "columns_of",
    "describe",
    "encode_examples",
    "encode_texts",
    "get_dataset",
    "list_datasets",
    "load_builtin",
    "load_classification",
    "load_labelled_file",
    "make_loader",
    "read_records",
    "require_columns",
    "where",
]

_LAZY_ENCODE = {
    "ClassificationDataset",
    "EncodedTexts",
    "EpochPermutation",
    "LengthGroupedBatchSampler",
    "collate",
    "encode_examples",
    "encode_texts",
    "make_loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ENCODE:
        from glmtune.data import encode

        return getattr(encode, name)
    raise AttributeError(f"module 'glmtune.data' has no attribute '{name}'")

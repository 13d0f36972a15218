"""Training state as data: plain Python values and tensors ↔ JSON + safetensors, and the random generators.

``save_packed(folder, stem, value)`` writes ``stem.json`` (and ``stem.safetensors`` when ``value`` holds tensors);
``load_packed`` reads them back. JSON has no tuples, non-string keys, tensors or nan: those are written as small
tagged objects. Anything but plain data is a TypeError, so nothing is ever pickled, and reading runs no code.
Used by ``glmtune.train.checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmtune.core.errors import os_errors_are_user_errors

_UMASK = os.umask(0)
os.umask(_UMASK)
_TAG = "__glmtune__"  # marks what JSON has no type for: tuples, non-string keys, tensors, nan/inf


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from: python, numpy, torch CPU and CUDA."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "gauss": [int(has_gauss), float(cached)],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"]), python["gauss_next"]))
    keys = np.asarray(numpy["keys"], dtype=np.uint32)
    has_gauss, cached = numpy["gauss"]
    np.random.set_state((numpy["kind"], keys, int(numpy["pos"]), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in state["cuda"]][: torch.cuda.device_count()])


def pack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` (named ``t0``, ``t1``, ...). Plain data only:
    anything else is a TypeError (a bug, never silently pickled)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_TAG: "float", "value": repr(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {_TAG: "tensor", "name": name}
    if isinstance(value, (np.integer, np.floating)):
        return pack(value.item(), tensors)
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [pack(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: pack(v, tensors) for k, v in value.items()}
        return {_TAG: "dict", "items": [[pack(k, tensors), pack(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"a checkpoint holds plain data and tensors only, not {type(value).__name__}")


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``pack``."""
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: unpack(v, tensors) for k, v in value.items()}
    if tag == "tensor":
        return tensors[value["name"]]
    if tag == "float":
        return float(value["value"])
    if tag == "tuple":
        return tuple(unpack(v, tensors) for v in value["items"])
    if tag == "dict":
        return {unpack(k, tensors): unpack(v, tensors) for k, v in value["items"]}
    raise ValueError(f"unknown tag {tag!r}")


def save_packed(folder: Path, stem: str, value: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(pack(value, tensors), indent=1, allow_nan=False) + "\n"
    if tensors:
        save_tensors(folder / f"{stem}.safetensors", tensors)
    with os_errors_are_user_errors(folder / f"{stem}.json"):
        (folder / f"{stem}.json").write_text(text, encoding="utf-8")


def load_packed(folder: Path, stem: str) -> Any:
    tensors = {}
    if (folder / f"{stem}.safetensors").is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(folder / f"{stem}.safetensors"))
    return unpack(json.loads((folder / f"{stem}.json").read_text(encoding="utf-8")), tensors)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with os_errors_are_user_errors(path):  # a full disk names the file (safetensors' error does not)
        save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_UMASK)  # safetensors makes 0600 files; the run folder follows the user's umask


__all__ = ["load_packed", "pack", "rng_state", "save_packed", "save_tensors", "set_rng_state", "unpack"]

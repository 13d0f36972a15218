"""Make a loaded model train faster without changing what it computes.

Measured on the 2-core CPU (``benchmarks/sft_throughput.py``, README "SFT throughput"): a LoRA step spends more
time in what surrounds the matrix products than in them. Two of those costs are avoidable:

* **Autocast re-casts frozen weights at every forward.** Under bf16 autocast, ``F.linear`` casts an fp32 weight
  to bf16 each call and caches the cast only for weights that require grad, so every frozen weight of the base
  model (LoRA, freeze, P-tuning) is converted again at every forward. :func:`cast_frozen_linears` stores those
  weights in the autocast dtype once: autocast would have cast them to exactly these values, so the products are
  bit-for-bit the same (tested). Only ``nn.Linear`` weights and biases: norms and embeddings keep their dtype,
  because autocast does not cast them and the numbers would change (an LM head tied to the embeddings gets its own
  copy). peft's adapters then take their input in the autocast dtype instead of an fp32 copy of it.
* **Dropout draws one 32-bit random number per element.** peft's LoRA dropout (``nn.Dropout`` on each adapter's
  input) runs ``bernoulli_`` over every activation entering every adapted layer. :class:`FastDropout` takes the
  same Bernoulli mask from 16-bit slices of 64-bit random words (four draws per word), with ``p`` rounded to a
  multiple of 1/65536 (0.05 → 0.049988…), and scales kept values by ``1 / (1 - p)`` as ``nn.Dropout`` does.

And one that changes what is computed again, not what is computed:

* **``freeze`` recomputes its frozen layers every epoch.** With the bottom layers frozen and nothing random in
  them, their output for a training example is the same every epoch. :class:`FrozenOutputs` keeps it (fp32, the
  example's real tokens only) after the example's first pass, within a memory budget, and later passes feed it to
  the first trained layer instead of running the frozen ones. Equal to recomputing up to float rounding (the
  example sat in a batch of another shape when it was computed); a resumed run starts with an empty cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_LEVELS = 1 << 16  # one draw: 16 random bits


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit random draws (4 per 64-bit word) instead of ``bernoulli_``."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * _LEVELS)  # an element is dropped when its draw (0 … 65535) is below this
        self.p = self.threshold / _LEVELS  # the probability actually used
        self.scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        info = torch.iinfo(torch.int64)
        words = torch.randint(info.min, info.max, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        draws = words.view(torch.int16)[:n].view(x.shape)  # [*x.shape], uniform over -32768 … 32767
        kept = draws >= self.threshold - _LEVELS // 2  # P(dropped) = threshold / 65536
        # One multiply by a scaled 0/1 mask: measured faster than masked_fill or where (forward + backward).
        return x * kept.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace peft's LoRA dropout modules (``lora_dropout[adapter]``, ``nn.Dropout``) by :class:`FastDropout`.
    Returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the weights (and biases) of frozen fp32 ``nn.Linear`` layers in ``dtype``, the autocast dtype the
    model trains under. Returns how many layers were cast.

    A frozen LM head tied to frozen embeddings gets its own ``dtype`` copy of the matrix instead (the embedding
    lookup is not autocast, so the shared fp32 tensor must stay): autocast would otherwise make that copy again
    at every forward and keep it for the backward, so peak memory does not grow. Quantized layers (bitsandbytes'
    ``nn.Linear`` subclasses) and peft's adapters (trainable) are left alone.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    cast = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        if id(weight) in embeddings:  # tied: untie into a frozen copy, the embedding keeps the original
            module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        else:
            module.to(dtype)
        cast += 1
    return cast


def keep_adapter_inputs(model: nn.Module) -> int:
    """Under autocast, let peft's adapters take their input in the compute dtype (peft's documented
    ``cast_input_dtype_enabled`` switch) instead of up-casting it to the fp32 adapter weights' dtype, only for
    autocast to cast it straight back for the adapter's matrix product. The adapter's dropout then runs on the
    compute-dtype input: the same mask, kept values scaled in that dtype. Returns how many layers were set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def for_autocast(model: nn.Module, dtype: torch.dtype) -> None:
    """Everything above that only holds under autocast in ``dtype``: call once, before training starts."""
    cast_frozen_linears(model, dtype)
    keep_adapter_inputs(model)


class FrozenOutputs:
    """The output of the frozen bottom ``layers[:frozen]`` per training example (its dataset index), kept within
    ``budget_bytes``. Active only inside :meth:`training_batch`: evaluation and anything else run every layer."""

    def __init__(self, layers: nn.ModuleList, frozen: int, budget_bytes: int):
        self.store: dict[int, torch.Tensor] = {}  # index → [real tokens, hidden]
        self.bytes, self.budget = 0, budget_bytes
        self.rows: list[int] | None = None  # the dataset indices of the batch in training, None outside
        self.mask: torch.Tensor | None = None  # [batch, seq] bool, real tokens
        self.hit = False  # every row of this batch is stored: the frozen layers are skipped
        self.frozen = frozen
        for i in range(frozen):
            layers[i] = _CachedLayer(layers[i], self, first=i == 0, last=i == frozen - 1)

    @contextmanager
    def training_batch(self, indices: torch.Tensor, attention_mask: torch.Tensor) -> Iterator[None]:
        self.rows, self.mask = indices.tolist(), attention_mask.bool()
        try:
            yield
        finally:
            self.rows, self.mask = None, None

    def lookup(self, like: torch.Tensor) -> torch.Tensor:
        """The stored outputs laid out like the batch (``like``: [batch, seq, hidden]); padding is zeros, which
        the attention mask and the pooling never read."""
        first = self.store[self.rows[0]]
        out = torch.zeros(like.shape, dtype=first.dtype, device=like.device)  # [batch, seq, hidden]
        for row, index in enumerate(self.rows):
            out[row, self.mask[row]] = self.store[index]
        return out

    def keep(self, output: Any) -> None:
        if not isinstance(output, torch.Tensor):  # a layer returning a tuple: nothing to lay out, no cache
            self.budget = 0
            return
        for row, index in enumerate(self.rows):
            if index in self.store:
                continue
            kept = output[row, self.mask[row]].detach().clone()  # [real tokens, hidden]
            size = kept.numel() * kept.element_size()
            if self.bytes + size > self.budget:
                return
            self.store[index], self.bytes = kept, self.bytes + size


class _CachedLayer(nn.Module):
    """One frozen layer: runs as is, or (all of the batch stored) the first returns the stored output and the
    rest pass it through. Attributes the model reads off its layers (``attention_type``…) come from ``layer``."""

    def __init__(self, layer: nn.Module, cache: FrozenOutputs, first: bool, last: bool):
        super().__init__()
        self.layer = layer
        self.owner = [cache]  # a list: not registered as a submodule
        self.first, self.last = first, last

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        cache = self.owner[0]
        if cache.rows is None:
            return self.layer(hidden_states, *args, **kwargs)
        if self.first:
            cache.hit = all(index in cache.store for index in cache.rows)
        if cache.hit:
            return cache.lookup(hidden_states) if self.first else hidden_states
        output = self.layer(hidden_states, *args, **kwargs)
        if self.last:
            cache.keep(output)
        return output


def frozen_outputs(backbone: nn.Module, layers: nn.ModuleList, budget_gb: float) -> FrozenOutputs | None:
    """A :class:`FrozenOutputs` over the leading ``layers`` of ``backbone`` that have nothing to train (what the
    method froze), or None when their output is random (any dropout rate in the model's config, e.g. from
    ``train.dropout``, or a dropout module in those layers) or there is no budget or nothing frozen."""
    frozen = 0
    while frozen < len(layers) and not any(p.requires_grad for p in layers[frozen].parameters()):
        frozen += 1
    config = getattr(backbone, "config", None)
    rates = (
        [v for k, v in vars(config).items() if "dropout" in k and isinstance(v, (int, float))]
        if config
        else []
    )
    random = any(r > 0 for r in rates) or any(
        isinstance(m, nn.Dropout) and m.p > 0 for layer in layers[:frozen] for m in layer.modules()
    )
    if budget_gb <= 0 or frozen == 0 or random:
        return None
    return FrozenOutputs(layers, frozen, int(budget_gb * 2**30))


__all__ = [
    "FastDropout",
    "FrozenOutputs",
    "cast_frozen_linears",
    "for_autocast",
    "frozen_outputs",
    "keep_adapter_inputs",
    "use_fast_dropout",
]

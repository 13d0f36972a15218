"""Make a loaded model train faster without changing what it computes.

Measured on the 2-core CPU (``benchmarks/sft_throughput.py``, docs/benchmarks.md "SFT throughput"): a LoRA step spends more
time in what surrounds the matrix products than in them. Three of those costs are avoidable:

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
* **peft's LoRA update takes three extra passes over the layer's output.** ``B(A(x)) * scaling`` is built as
  its own [tokens, out] tensor, scaled into a second and added to the base output in a third, and the backward
  scales the [tokens, out] gradient once more. :class:`FusedLora` (a peft LoRA variant) adds the update into the
  base output inside the matrix product (``addmm_`` with ``alpha=scaling``). Identical in fp32 (tested); under
  bf16 it rounds once where peft rounds three times. Of the LoRA variants (``methods.variants``) it computes
  rsLoRA (only the scale differs), PiSSA and OLoRA (plain LoRA over a rewritten base) exactly; DoRA's layers
  keep peft's own ``DoraLinearVariant`` (tested equal either way).

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

from glmtune.core import _compat

_LEVELS = 1 << 16  # one draw: 16 random bits


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit random draws (4 per 64-bit word) instead of ``bernoulli_``."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * _LEVELS)  # an element is dropped when its draw (0 … 65535) is below this
        self.p = self.threshold / _LEVELS  # the probability actually used
        self.scale = 1.0 / (1.0 - self.p) if self.p < 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: any shape
        mask = self.mask(x)
        # One multiply by a scaled 0/1 mask: measured faster than masked_fill or where (forward + backward).
        return x if mask is None else x * mask

    def mask(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The scaled keep mask for ``x`` (its shape, in ``dtype``, default ``x``'s: 0 or ``1 / (1 - p)``), None
        when nothing drops."""
        if not self.training or self.threshold == 0:
            return None
        n = x.numel()
        info = torch.iinfo(torch.int64)
        words = torch.randint(info.min, info.max, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        draws = words.view(torch.int16)[:n].view(x.shape)  # [*x.shape], uniform over -32768 … 32767
        kept = draws >= self.threshold - _LEVELS // 2  # P(dropped) = threshold / 65536
        return kept.to(dtype or x.dtype).mul_(self.scale)

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


class _LoraUpdate(torch.autograd.Function):
    """``result += scaling * (x * mask) @ A.T @ B.T``, written into ``result`` (the base layer's fresh output).

    peft's vanilla path builds the update as its own [tokens, out] tensor, scales it in another and adds it in a
    third, and its backward scales the [tokens, out] gradient again: three passes over the layer's widest
    activation per adapted layer that the matrix product's ``alpha`` and in-place accumulation do for free."""

    @staticmethod
    def forward(ctx, result, x, mask, a, b, scaling):
        # result: [..., out] compute dtype; x: [..., in]; mask: [..., in] scaled 0/1 in the compute dtype or None;
        # a: [r, in], b: [out, r] (the adapter's weights, any float dtype)
        dtype = result.dtype
        d = x.reshape(-1, x.shape[-1]).to(dtype)  # [n, in]
        if mask is not None:
            d = d * mask.reshape(d.shape)
        a_c, b_c = a.to(dtype), b.to(dtype)  # [r, in], [out, r]
        h = d @ a_c.t()  # [n, r]
        result.view(-1, result.shape[-1]).addmm_(h, b_c.t(), alpha=scaling)  # [n, out] += scaling * h @ B.T
        ctx.mark_dirty(result)
        ctx.save_for_backward(d, mask, a_c, b_c, h)
        ctx.scaling, ctx.x_shape, ctx.x_dtype, ctx.dtypes = scaling, x.shape, x.dtype, (a.dtype, b.dtype)
        return result

    @staticmethod
    def backward(ctx, grad):  # grad: [..., out]
        d, mask, a_c, b_c, h = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(b_c.dtype)  # [n, out]
        dh = (g @ b_c).mul_(ctx.scaling)  # [n, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            dx = dh @ a_c  # [n, in]
            if mask is not None:
                dx.mul_(mask.reshape(dx.shape))
            grad_x = dx.view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (dh.t() @ d).to(ctx.dtypes[0])  # [r, in]
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ h).mul_(ctx.scaling).to(ctx.dtypes[1])  # [out, r]
        return grad, grad_x, None, grad_a, grad_b, None


class FusedLora:
    """A peft LoRA variant (peft's own extension point, ``LoraLayer.lora_variant``) computing plain LoRA with
    :class:`_LoraUpdate`: the same function as peft's vanilla path, fewer passes over memory. Merging is vanilla
    LoRA's (the weights are plain LoRA weights), so a merged or saved adapter does not know it was trained so."""

    @staticmethod
    def init(module: Any, adapter_name: str, **kwargs: Any) -> None:
        pass

    @staticmethod
    def supports_lora_conversion() -> bool:
        return True

    @staticmethod
    def merge_safe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any):
        dropout = module.lora_dropout[active_adapter]
        mask = dropout.mask(x, result.dtype) if isinstance(dropout, FastDropout) else None
        a, b = module.lora_A[active_adapter].weight, module.lora_B[active_adapter].weight
        return _LoraUpdate.apply(result, x, mask, a, b, module.scaling[active_adapter])


def fuse_lora(model: nn.Module) -> int:
    """Let every plain LoRA layer on an ``nn.Linear`` (no other variant, no LoRA bias, dropout off or
    :class:`FastDropout`) compute its update with :class:`FusedLora`: rsLoRA, PiSSA and OLoRA layers are plain
    LoRA layers, DoRA's are not. Returns how many layers were set."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear) or type(module.get_base_layer()) is not nn.Linear:
            continue
        for name in module.lora_A:
            dropout = module.lora_dropout[name]
            if name in module.lora_variant or module.lora_bias[name]:  # another variant; B has a bias
                continue
            if not isinstance(dropout, (FastDropout, nn.Identity)):
                continue
            _compat.set_lora_variant(module, name, FusedLora())
            fused += 1
    return fused


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

"""NOLA adapters: low-rank weight updates spelled as coefficients of frozen random bases.

DiV-INR (Sec. 3.2) specialises the frozen Wan DiT to one video with NOLA (Koohpayegani et
al., ICLR 2024). A LoRA update ``B A`` is re-parameterised as mixtures of fixed pseudo-random
matrices, so only ``2 b`` scalars per layer train and enter the bitstream::

    W = W0 + scaling * (sum_i beta_i B_i) (sum_i alpha_i A_i)
    A_i in R^{r x n}, B_i in R^{m x r}, i = 1..b,  A_i, B_i ~ N(0, s I)

    x --base--------------------------------------------> + --> y
      \\--(x A^T)--> (.. B^T) --> * scaling -------------/
        A = einsum(alpha, A bank), B = einsum(beta, B bank)   (never the m x n delta)

Reading of the paper's symbols (documented choices):

* ``N(0, s I)`` names a covariance, so ``s = 0.25`` is the *variance* of each basis entry
  (standard deviation 0.5).
* Eq. (3) has no extra factor: ``s`` is the knob that sets the adapters' impact, so
  ``scaling`` defaults to 1.0. It is still a config field because the decoder must rebuild the
  same ``W`` and therefore has to read it from the bitstream.
* ``beta`` starts at zero (``delta W = 0``: the adapted model starts as the backbone) and
  ``alpha`` non-zero, or no gradient would ever reach either. ``alpha_i ~ U(-a, a)`` with
  ``a = 1 / sqrt(n s b)`` gives ``A`` entries of variance ``1 / (3 n)``, the scale of LoRA's
  Kaiming-uniform ``A``, so the learning rates used for LoRA carry over. The draw comes from a
  generator seeded by ``(seed, layer name)`` for reproducible runs; the decoder never needs it
  because trained ``alpha`` is transmitted.

Bases. Drawing separate bases for the 91 adapted layers of Wan2.1 1.3B would take ~92 GB in
float32. Like NOLA's GPT code, all layers whose bases have the same shape share them: one
:class:`BasisBank` holds one ``(b, rows, cols)`` tensor per basis shape (~674M floats, ~1.35 GB
in bf16, for the default targets). Same-shaped layers are then correlated only through the
shared bases; their updates differ through their own ``alpha``/``beta``. Basis ``i`` of shape
``(rows, cols)`` is drawn on the CPU by a ``torch.Generator`` seeded from
``(seed, rows, cols, i)`` (:func:`basis_seed`), so every process and device gets bit-identical
bases (given torch's CPU normal sampler), then copied to the layer's device and dtype. Banks
materialise lazily on the first forward/merge, never on the meta device, and never appear in
a ``state_dict``, a checkpoint or a bitstream: seed and config regenerate them.

Why not peft: peft 0.21 has no NOLA, and ``peft.utils.register_peft_method`` only accepts names
already in its ``PeftType`` enum, so a new method cannot be registered from outside. VeRA and
RandLoRA are relatives but train vectors of the adapted layer's width, not ``2 b`` scalars.
This module is a small injector with peft's shape of API (inject, trainable state dict,
merge, unmerge).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divinr.errors import PresetError

logger = logging.getLogger(__name__)

DEFAULT_WAN_TARGETS: tuple[str, ...] = (
    r"blocks\.\d+\.attn1\.to_out\.0",
    r"blocks\.\d+\.ffn\.net\.0\.proj",
    r"blocks\.\d+\.ffn\.net\.2",
    r"proj_out",
)
"""Self-attention output projections, both feed-forward layers of every block, and the output
head (diffusers' Wan module names, full-match regexes): 30 x 3 + 1 = 91 layers on Wan2.1 1.3B."""

MAX_RANK = 128
MAX_NUM_BASES = 1024
"""Upper bounds of :class:`NOLAConfig`: twice the paper's rank (64) and the ablation's largest
bank (1000 bases). The shared bases grow with ``rank x num_bases``: at both bounds they take
about 5.5 GB in bf16 on Wan2.1 1.3B (the paper's setting: 1.35 GB), where an unbounded rank of
1024 would need over 20 GB before training starts."""

# Bases combined per chunk when the bank's dtype differs from the compute dtype, so a float32
# merge of a bf16 bank never holds a float32 copy of the whole bank.
_COMBINE_CHUNK = 32


@dataclass(frozen=True)
class NOLAConfig:
    """NOLA hyper-parameters; every field is needed to rebuild the adapters at decode time.

    Args:
        rank: rank ``r`` of the update ``B A``, at most :data:`MAX_RANK`.
        num_bases: ``b`` bases for ``A`` and ``b`` for ``B``; ``2 b`` coefficients per layer; at
            most :data:`MAX_NUM_BASES`.
            ``0`` disables NOLA (the paper's PEFT-size ablation): nothing is injected.
        basis_variance: variance ``s`` of each basis entry (the paper's ``N(0, s I)``).
        scaling: factor on the update; 1.0 is the paper's Eq. (3).
        seed: seed of the bases (and of the ``alpha`` initialisation).
        target_modules: regexes full-matched against module names.
    """

    rank: int = 64
    num_bases: int = 500
    basis_variance: float = 0.25
    scaling: float = 1.0
    seed: int = 0
    target_modules: tuple[str, ...] = DEFAULT_WAN_TARGETS

    def __post_init__(self) -> None:
        # Config systems hand over lists; a tuple keeps the dataclass hashable.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not 1 <= self.rank <= MAX_RANK:
            raise PresetError(f"NOLA rank must be in 1..{MAX_RANK}, got {self.rank}; the paper uses 64")
        if not 0 <= self.num_bases <= MAX_NUM_BASES:
            raise PresetError(
                f"NOLA num_bases must be in 0..{MAX_NUM_BASES}, got {self.num_bases}; the paper uses 500, 0 disables NOLA"
            )
        if not self.basis_variance > 0:
            raise PresetError(f"NOLA basis_variance must be > 0, got {self.basis_variance}; the paper uses 0.25")
        if not 0 <= self.seed < 2**63:
            raise PresetError(f"NOLA seed must be in [0, 2**63), got {self.seed}; pick a non-negative seed")
        if not self.target_modules:
            raise PresetError("NOLA target_modules is empty; give at least one module-name regex")
        for pattern in self.target_modules:
            _compile(pattern)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise PresetError(f"invalid NOLA target regex {pattern!r} ({err}); fix the pattern") from None


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple of values, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(["divinr.nola", *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def basis_seed(seed: int, shape: tuple[int, int], index: int) -> int:
    """Generator seed of basis ``index`` of a bank of ``shape``-shaped bases.

    One seed per basis lets a bank be filled one basis at a time, so generation never holds
    more than one float32 basis beyond the bank itself.

    Args:
        seed: the config's seed.
        shape: ``(rows, cols)`` of one basis.
        index: basis index in ``[0, num_bases)``.

    Returns:
        A seed for ``torch.Generator().manual_seed``; the basis is
        ``sqrt(s) * torch.randn(shape, generator=g)`` in float32 on the CPU.
    """
    return _derive_seed("basis", seed, shape[0], shape[1], index)


class BasisBank:
    """Frozen random bases shared by all adapters of one injection, one tensor per shape.

    A bank is a cache, not state: it is rebuilt from ``(num_bases, variance, seed)`` and drops
    its tensors when pickled, so it never lands in checkpoints or bitstreams.

    Args:
        num_bases: bases per shape (``b``).
        variance: variance of each entry (``s``).
        seed: base seed; see :func:`basis_seed`.
    """

    def __init__(self, num_bases: int, variance: float, seed: int) -> None:
        if num_bases < 1:
            raise PresetError(f"a NOLA basis bank needs num_bases >= 1, got {num_bases}")
        self.num_bases = num_bases
        self.variance = variance
        self.seed = seed
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: NOLAConfig) -> BasisBank:
        return cls(config.num_bases, config.basis_variance, config.seed)

    def draw(self, shape: tuple[int, int], index: int) -> torch.Tensor:
        """Basis ``index`` of ``shape`` as a float32 CPU tensor (the reference values)."""
        generator = torch.Generator(device="cpu").manual_seed(basis_seed(self.seed, shape, index))
        return torch.randn(shape, generator=generator, dtype=torch.float32).mul_(math.sqrt(self.variance))

    def get(self, shape: tuple[int, int], *, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        """All ``b`` bases of ``shape`` as one ``(b, rows, cols)`` tensor on ``device``/``dtype``.

        The tensor is cached per shape, so same-shaped layers get the very same object. One
        placement is kept per shape: asking for another device or dtype (the model was moved)
        frees the old copy and regenerates. On the meta device nothing is allocated or cached.
        """
        shape = (int(shape[0]), int(shape[1]))
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # tensors report an index
        full = (self.num_bases, *shape)
        if device.type == "meta":
            return torch.empty(full, device=device, dtype=dtype)
        cached = self._cache.get(shape)
        if cached is not None and cached.device == device and cached.dtype == dtype:
            return cached
        self._cache.pop(shape, None)
        # Built outside inference mode so a bank first made during decoding still works in training.
        with torch.inference_mode(False), torch.no_grad():
            bank = torch.empty(full, device=device, dtype=dtype)
            for index in range(self.num_bases):
                bank[index].copy_(self.draw(shape, index))
        self._cache[shape] = bank
        return bank

    @property
    def nbytes(self) -> int:
        """Bytes held right now by materialised bases."""
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def clear(self) -> None:
        """Free all bases; they regenerate on the next use."""
        self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


def _combine(coeffs: torch.Tensor, bank: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sum_i coeffs_i bank_i`` in ``dtype``."""
    if bank.dtype == dtype:
        return torch.einsum("b,brc->rc", coeffs.to(dtype), bank)
    total = torch.zeros(bank.shape[1:], device=bank.device, dtype=dtype)
    for start in range(0, bank.shape[0], _COMBINE_CHUNK):
        stop = start + _COMBINE_CHUNK
        total = total + torch.einsum("b,brc->rc", coeffs[start:stop].to(dtype), bank[start:stop].to(dtype))
    return total


class NOLALayer(nn.Module):
    """Common part of the NOLA wrappers: coefficients, factor assembly, merge and unmerge.

    The wrapped layer is kept as ``.base`` with frozen parameters; its weight is viewed as an
    ``(m, n)`` matrix. Only ``nola_alpha`` and ``nola_beta`` (float32, shape ``(b,)``) train.
    ``merge()`` folds the update into ``base.weight`` (inference); while ``merged`` the forward
    is the base layer alone.

    Args:
        base: the layer to adapt.
        bank: the shared basis bank.
        rank: rank ``r``.
        scaling: factor on the update.
        matrix_shape: ``(m, n)`` of the adapted weight matrix.
        init_seed: seed of the ``alpha`` draw.
    """

    adapter_layer_names: tuple[str, ...] = ("nola_alpha", "nola_beta")
    """The trained tensors, under the attribute name peft's tuner layers use for theirs, so code that
    collects adapter tensors (:mod:`divinr.models.adapters`) treats NOLA and peft layers alike."""

    def __init__(
        self,
        base: nn.Module,
        bank: BasisBank,
        *,
        rank: int,
        scaling: float,
        matrix_shape: tuple[int, int],
        init_seed: int,
    ) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.bank = bank  # a plain attribute: neither a submodule nor a buffer, never in state_dict
        self.rank = rank
        self.scaling = float(scaling)
        rows, cols = matrix_shape
        self.a_shape = (rank, cols)
        self.b_shape = (rows, rank)
        self.merged = False
        b = bank.num_bases
        bound = 1.0 / math.sqrt(cols * bank.variance * b)
        generator = torch.Generator(device="cpu").manual_seed(init_seed)
        alpha = (torch.rand(b, generator=generator, dtype=torch.float32) * 2 - 1) * bound
        device = base.weight.device
        self.nola_alpha = nn.Parameter(alpha.to(device))
        self.nola_beta = nn.Parameter(torch.zeros(b, device=device))

    def bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared ``(b, r, n)`` A bank and ``(b, m, r)`` B bank at the base weight's placement."""
        weight = self.base.weight
        return (
            self.bank.get(self.a_shape, device=weight.device, dtype=weight.dtype),
            self.bank.get(self.b_shape, device=weight.device, dtype=weight.dtype),
        )

    def factors(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``A = sum alpha_i A_i`` (r x n) and ``B = sum beta_i B_i`` (m x r) in ``dtype``.

        Args:
            dtype: compute dtype; defaults to the base weight's dtype.
        """
        bank_a, bank_b = self.bases()
        dtype = dtype or self.base.weight.dtype
        return _combine(self.nola_alpha, bank_a, dtype), _combine(self.nola_beta, bank_b, dtype)

    def delta_matrix(self) -> torch.Tensor:
        """``scaling * B A`` as an ``(m, n)`` float32 matrix."""
        a, b = self.factors(torch.float32)
        return (b @ a) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update in the shape of ``base.weight``, float32 (what :meth:`merge` adds)."""
        return self.delta_matrix()

    @torch.no_grad()
    def merge(self) -> None:
        """``W0 <- W0 + delta`` (computed in float32, cast to the weight's dtype). No-op if merged."""
        if self.merged:
            return
        weight = self.base.weight
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the same delta again. Exact to ~1e-6 in float32; in bf16 the two roundings
        make it inexact, so keep an unmerged copy when bit-exact weights matter. No-op if unmerged."""
        if not self.merged:
            return
        weight = self.base.weight
        weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
        self.merged = False

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B A x`` through the two factors, for the wrapped layer's input layout."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.low_rank(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, num_bases={self.bank.num_bases}, scaling={self.scaling}, merged={self.merged}"


class NOLALinear(NOLALayer):
    """NOLA around an ``nn.Linear`` of weight ``(out_features, in_features)``.

    Args:
        base: the linear layer.
        bank: the shared basis bank.
        rank: rank ``r``.
        scaling: factor on the update.
        init_seed: seed of the ``alpha`` draw.
    """

    def __init__(self, base: nn.Linear, bank: BasisBank, *, rank: int, scaling: float, init_seed: int = 0) -> None:
        super().__init__(
            base, bank, rank=rank, scaling=scaling,
            matrix_shape=(base.out_features, base.in_features), init_seed=init_seed,
        )

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors()
        return F.linear(F.linear(x, a), b) * self.scaling


class NOLAConv3d(NOLALayer):
    """NOLA around an ``nn.Conv3d`` (e.g. a patch embedding), optionally on some input channels.

    The weight ``(out, in, kt, kh, kw)`` restricted to channels ``[start, end)`` is viewed as
    an ``(out, (end - start) kt kh kw)`` matrix. Channels outside the slice keep ``W0``: this is
    how the zero-initialised conditioning channels of a widened patch embedding are learned
    while the pre-trained latent channels stay untouched. The unmerged forward is the
    low-rank pair ``conv(x[:, start:end], A)`` (r channels, the base's stride/padding) followed
    by a 1x1x1 conv with ``B``.

    Args:
        base: the 3-D convolution (``groups == 1``, zero padding).
        bank: the shared basis bank.
        rank: rank ``r``.
        scaling: factor on the update.
        init_seed: seed of the ``alpha`` draw.
        in_channel_slice: ``(start, end)`` of the adapted input channels; all by default.
    """

    def __init__(
        self,
        base: nn.Conv3d,
        bank: BasisBank,
        *,
        rank: int,
        scaling: float,
        init_seed: int = 0,
        in_channel_slice: tuple[int, int] | None = None,
    ) -> None:
        if base.groups != 1 or base.padding_mode != "zeros":
            raise PresetError(
                f"NOLA adapts Conv3d only with groups=1 and zero padding, got groups={base.groups}, "
                f"padding_mode={base.padding_mode!r}; choose another target"
            )
        start, end = in_channel_slice if in_channel_slice is not None else (0, base.in_channels)
        if not 0 <= start < end <= base.in_channels:
            raise PresetError(
                f"in_channel_slice {(start, end)} is not inside the {base.in_channels} input channels; "
                "give 0 <= start < end <= in_channels"
            )
        self.in_channel_slice = (int(start), int(end))
        kernel = math.prod(base.kernel_size)
        super().__init__(
            base, bank, rank=rank, scaling=scaling,
            matrix_shape=(base.out_channels, (end - start) * kernel), init_seed=init_seed,
        )

    def delta_weight(self) -> torch.Tensor:
        start, end = self.in_channel_slice
        weight = self.base.weight
        delta = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        delta[:, start:end] = self.delta_matrix().view(weight.shape[0], end - start, *weight.shape[2:])
        return delta

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        start, end = self.in_channel_slice
        base = self.base
        a, b = self.factors()
        hidden = F.conv3d(
            x[:, start:end], a.view(self.rank, end - start, *base.kernel_size), None,
            base.stride, base.padding, base.dilation,
        )
        return F.conv3d(hidden, b[:, :, None, None, None]) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_channel_slice={self.in_channel_slice}"


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Order ``blocks.2`` before ``blocks.10``: deterministic and readable."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in name.split("."))


def _wrap(name: str, module: nn.Module, bank: BasisBank, config: NOLAConfig, options: dict[str, Any]) -> NOLALayer:
    init_seed = _derive_seed("alpha", config.seed, name)
    common = {"rank": config.rank, "scaling": config.scaling, "init_seed": init_seed}
    if isinstance(module, nn.Linear):
        if options:
            raise PresetError(f"NOLA options {sorted(options)} do not apply to Linear {name!r}; remove them")
        return NOLALinear(module, bank, **common)
    if isinstance(module, nn.Conv3d):
        unknown = set(options) - {"in_channel_slice"}
        if unknown:
            raise PresetError(
                f"unknown NOLA options {sorted(unknown)} for Conv3d {name!r}; only in_channel_slice exists"
            )
        slice_ = options.get("in_channel_slice")
        return NOLAConv3d(module, bank, **common, in_channel_slice=tuple(slice_) if slice_ is not None else None)
    raise PresetError(f"NOLA cannot adapt {name!r} ({type(module).__name__}); target nn.Linear or nn.Conv3d modules")


def select_targets(
    model: nn.Module, target_modules: tuple[str, ...], extra_targets: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The modules of ``model`` an adapter goes on, with their per-target options, in natural order.

    The one definition of "which layers are adapted": NOLA and the peft adapter families
    (:mod:`divinr.models.adapters`) all take their layers from here, so their sets are the same.

    Args:
        model: the network (e.g. diffusers' ``WanTransformer3DModel``).
        target_modules: full-match regexes on module names (options ``{}``).
        extra_targets: more full-match regexes with per-target options, e.g.
            ``{"patch_embedding": {"in_channel_slice": (16, 36)}}``; options win over
            ``target_modules`` for a module both select.

    Returns:
        Module name -> options, in natural order (``blocks.2`` before ``blocks.10``).

    Raises:
        PresetError: a target matches nothing.
    """
    defaults = [_compile(p) for p in target_modules]
    extras = [(key, _compile(key), dict(options)) for key, options in (extra_targets or {}).items()]
    plan: dict[str, dict[str, Any]] = {}
    extra_hits = {key: 0 for key, _, _ in extras}
    for name, _ in model.named_modules():
        if not name:
            continue
        options: dict[str, Any] | None = {} if any(p.fullmatch(name) for p in defaults) else None
        for key, pattern, extra_options in extras:
            if pattern.fullmatch(name):
                options = extra_options
                extra_hits[key] += 1
        if options is not None:
            plan[name] = options
    missing = [key for key, hits in extra_hits.items() if hits == 0]
    if missing:
        raise PresetError(
            f"adapter extra target(s) {missing} match no module of {type(model).__name__}; fix the names"
        )
    if not plan:
        raise PresetError(
            f"no module of {type(model).__name__} matches adapter target_modules {list(target_modules)}; "
            "check the patterns against model.named_modules()"
        )
    return {name: plan[name] for name in sorted(plan, key=natural_key)}


def inject_nola(
    model: nn.Module, config: NOLAConfig, *, extra_targets: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Replace the targeted layers of ``model`` in place by NOLA wrappers sharing one bank.

    Like peft's ``get_peft_model``, afterwards only NOLA coefficients require grad: every other
    parameter of ``model`` is frozen. With ``config.num_bases == 0`` (the no-adapter ablation)
    the model is frozen, nothing is injected and ``[]`` is returned. Works on meta models.

    Args:
        model: the network (e.g. diffusers' ``WanTransformer3DModel``).
        config: NOLA settings; ``config.target_modules`` are full-match regexes on module names.
        extra_targets: more targets with per-target options (see :func:`select_targets`).

    Returns:
        The adapted module names in natural order (``blocks.2`` before ``blocks.10``).

    Raises:
        PresetError: NOLA is already injected, a target matches nothing, a matched module
            has an unsupported type, or an option is invalid.
    """
    if any(isinstance(m, NOLALayer) for m in model.modules()):
        raise PresetError("model already has NOLA adapters; call inject_nola once per model")
    model.requires_grad_(False)
    if config.num_bases == 0:
        logger.info("NOLA disabled (num_bases=0): no adapters injected")
        return []
    plan = select_targets(model, config.target_modules, extra_targets)
    bank = BasisBank.from_config(config)
    for name, options in plan.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _wrap(name, model.get_submodule(name), bank, config, options))
    return list(plan)


def nola_layers(model: nn.Module) -> dict[str, NOLALayer]:
    """The NOLA wrappers of ``model`` by module name, in natural order."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, NOLALayer)}
    return {name: found[name] for name in sorted(found, key=natural_key)}


def eject_nola(model: nn.Module) -> None:
    """Put every adapted layer's original module back (unmerging first), so the model is as loaded.

    The encoder uses this after training to run the decoder's exact path (fresh injection,
    dequantised coefficients, merge) on the same backbone object.
    """
    for name, layer in sorted(nola_layers(model).items(), key=lambda item: natural_key(item[0])):
        layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)


def nola_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All trainable coefficients (``alpha`` then ``beta`` per layer), in state-dict order."""
    return [p for layer in nola_layers(model).values() for p in (layer.nola_alpha, layer.nola_beta)]


def nola_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The coefficients only, keyed like ``model.state_dict()`` (``<layer>.nola_alpha``/``nola_beta``).

    Returns:
        Detached tensors (sharing storage with the parameters) in natural layer order,
        ``alpha`` before ``beta``.
    """
    state: dict[str, torch.Tensor] = {}
    for name, layer in nola_layers(model).items():
        state[f"{name}.nola_alpha"] = layer.nola_alpha.detach()
        state[f"{name}.nola_beta"] = layer.nola_beta.detach()
    return state


def merge_nola(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference); see :meth:`NOLALayer.merge`."""
    for layer in nola_layers(model).values():
        layer.merge()


def release_nola_bases(model: nn.Module) -> int:
    """Free the basis banks of ``model``'s adapters; they regenerate from the seed on next use.

    Merged adapters never read their bases, so a decoder calls this after :func:`merge_nola`
    to give back their memory (~1.35 GB in bf16 on Wan2.1 1.3B) for sampling.

    Returns:
        The bytes freed.
    """
    banks = {id(layer.bank): layer.bank for layer in nola_layers(model).values()}
    freed = sum(bank.nbytes for bank in banks.values())
    for bank in banks.values():
        bank.clear()
    return freed


def unmerge_nola(model: nn.Module) -> None:
    """Undo :func:`merge_nola`; see :meth:`NOLALayer.unmerge` for the bf16 caveat."""
    for layer in nola_layers(model).values():
        layer.unmerge()


def count_nola_coefficients(model: nn.Module) -> int:
    """Number of trainable NOLA scalars (91,000 for the paper's Wan2.1 1.3B setting)."""
    return sum(p.numel() for p in nola_parameters(model))


def nola_basis_bytes(source: nn.Module | BasisBank, dtype: torch.dtype | None = None) -> int:
    """Memory of NOLA bases.

    Args:
        source: a model with adapters -> the bytes its shared banks need once materialised
            (one ``(b, rows, cols)`` tensor per distinct basis shape; works on meta models);
            a :class:`BasisBank` -> the bytes it holds right now.
        dtype: for a model, count at this dtype instead of each layer's weight dtype.

    Returns:
        A byte count.
    """
    if isinstance(source, BasisBank):
        return source.nbytes
    needed: dict[tuple[int, tuple[int, int]], int] = {}
    for layer in nola_layers(source).values():
        itemsize = (dtype or layer.base.weight.dtype).itemsize
        for shape in (layer.a_shape, layer.b_shape):
            key = (id(layer.bank), shape)
            needed[key] = max(needed.get(key, 0), layer.bank.num_bases * shape[0] * shape[1] * itemsize)
    return sum(needed.values())

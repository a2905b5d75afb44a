"""The battery container's inference export: folded linear maps, and a FLOP counter per stage.

:class:`LinearExport` folds a trained :class:`~pentachora.autoencoders.BatteryContainer` for
inference into as few linear maps as its structure allows (see its docstring for every fold);
:func:`count_flops` runs it and counts FLOPs per named stage (matmul/conv by PyTorch's FLOP
formulas, every other op one FLOP per output element).

Saved formats:

* **checkpoint folder** (what :meth:`LinearExport.save_pretrained` writes, and :meth:`LinearExport.save`
  for any path not ending in ``.safetensors``): ``config.json`` = ``{"model_type":
  "linear_export", "pentachora_version": ..., "config": {"container": {...the container's
  config...}, "merged_inverse": bool}}`` + ``model.safetensors`` (the folded tensors) — loadable by
  ``LinearExport.from_pretrained`` and :func:`pentachora.recipes.load_model` like every model;
* **single file** (what :meth:`LinearExport.save` writes for a path ending in ``.safetensors``, the
  format of earlier versions): ONE safetensors file of the folded tensors whose header holds
  ``format = "pentachora-linear-export"``, ``config`` (the container config as a JSON string) and
  ``merged_inverse`` (``"true"``/``"false"``).

:meth:`LinearExport.load` reads either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pentachora.autoencoders.container import BatteryContainerConfig
from pentachora.io import CheckpointError, atomic_save_tensors, load_tensors, loads_json, read_tensor_metadata
from pentachora.modeling import PentachoraModel, config_from_dict, config_to_dict, register_model
from pentachora.nn import BoundarySmooth, patchify, unpatchify

if TYPE_CHECKING:
    from pentachora.autoencoders.container import BatteryContainer

__all__ = ["EXPORT_FORMAT", "LinearExport", "LinearExportConfig", "count_flops"]

#: ``format`` value in the safetensors header of a single-file linear export (the former format).
EXPORT_FORMAT = "pentachora-linear-export"


@dataclasses.dataclass
class LinearExportConfig:
    """Configuration of a :class:`LinearExport`: the folded container's config and the one fold choice.

    Attributes:
        container: the :class:`~pentachora.autoencoders.BatteryContainerConfig` that was folded.
        merged_inverse: whether μ and the inverse's first linear are merged into one map.
    """

    container: BatteryContainerConfig = dataclasses.field(default_factory=BatteryContainerConfig)
    merged_inverse: bool = False


@register_model
class LinearExport(PentachoraModel):
    """The trained container folded for inference into as few linear maps as its structure allows.

    Folds (all exact up to float rounding):

    * **mode only**: the bottleneck's second map keeps only its μ rows (inference decodes the
      posterior mode; the log σ² rows are dropped);
    * **LayerNorm affine → next linear**: each cross-attention layer's LayerNorm (γ, β) is folded
      into its qkv projection;
    * **μ ∘ inverse**: with no cross-attention layer, the μ map and the inverse's first linear are
      merged into one ``Linear(h → h_inv)`` (with the magnitude as an extra input column) when that
      does not increase FLOPs;
    * **frozen routing + implanted decoder sector**: the inverse gain is folded into the slot
      decoders' input projections, and the anchors (normalised, × scale / v, i.e. the frozen
      routing) become one extra output row of each slot's projection — router and decoder-in are
      one grouped linear map; the routed mixture ``Σ_k r_k (W_k g_k + b_k)`` is one dense linear
      map on ``[r ⊗ g ; r]``.

    What stays non-linear: the patch RMS split and rescale, row sphere-normalisations, GELUs,
    cross-attention's softmax/tanh gate, the routing softmax (top-k), BoundarySmooth's GELU. The
    stage list (:meth:`stages`) names each part, whether it is a linear map, and its FLOPs per patch
    as measured by :func:`count_flops` (matmul/conv FLOPs by PyTorch's FLOP formulas, every other
    op one FLOP per output element — GELU etc. counted low, which favours the non-linear side less
    than its real cost).

    Shapes:
        ``(B, C, H, W) → (B, C, H, W)`` — the same as ``container.reconstruct``.
    """

    model_type: ClassVar[str] = "linear_export"
    config_class: ClassVar[type] = LinearExportConfig
    config: LinearExportConfig

    def __init__(
        self, config: LinearExportConfig | BatteryContainerConfig, merged_inverse: bool | None = None
    ) -> None:
        if isinstance(config, BatteryContainerConfig):  # the former signature (container config, merged)
            config = LinearExportConfig(container=config, merged_inverse=bool(merged_inverse))
        elif merged_inverse is not None and bool(merged_inverse) != config.merged_inverse:
            raise ValueError("merged_inverse contradicts config.merged_inverse")
        super().__init__(config)
        c = config.container
        merged_inverse = config.merged_inverse
        k, h, f, pix, v = c.n_batteries, c.battery_hidden, c.slot_floats, c.channels * c.patch_size**2, c.V
        d, bh, ih = c.latent_dim, c.bottleneck_hidden, c.inverse_hidden
        self.enc_in = nn.Linear(pix, k * h)
        self.enc_out_w = nn.Parameter(torch.empty(k, f, h))
        self.enc_out_b = nn.Parameter(torch.empty(k, f))
        self.b1 = nn.Linear(v * c.D, bh)
        if merged_inverse:
            self.mu_inv = nn.Linear(bh + 1, ih)  # [h ; magnitude] → inverse hidden
        else:
            self.mu = nn.Linear(bh, d)
            self.inv1 = nn.Linear(d + 1, ih)
        self.cross = nn.ModuleList()
        for _ in range(c.n_cross):
            layer = nn.ModuleDict({"qkv": nn.Linear(d, 3 * d), "out": nn.Linear(d, d)})
            layer.register_parameter("alpha", nn.Parameter(torch.zeros(d)))
            self.cross.append(layer)
        self.inv2 = nn.Linear(ih, v * c.D)
        self.route_dec_w = nn.Parameter(torch.empty(k, h + 1, f))  # rows 0..h−1 decoder-in, row h router
        self.route_dec_b = nn.Parameter(torch.empty(k, h + 1))
        self.dec_out = nn.Linear(k * h + k, pix, bias=False)
        self.smooth = BoundarySmooth(c.channels, kernel=c.smooth_kernel, mid=c.resolved_smooth_mid)
        self._flop_counter: _FlopCounter | None = None  # set by count_flops while it runs

    @property
    def container_config(self) -> BatteryContainerConfig:
        """The folded container's config."""
        return self.config.container

    @property
    def merged_inverse(self) -> bool:
        """Whether μ and the inverse's first linear are one merged map."""
        return self.config.merged_inverse

    # ------------------------------------------------------------------ building
    @classmethod
    @torch.no_grad()
    def from_container(cls, model: BatteryContainer, merge_mu_inverse: bool | None = None) -> LinearExport:
        """Fold a (trained) container.

        Args:
            model: the container.
            merge_mu_inverse: merge the μ map with the inverse's first linear (possible only without
                cross-attention). ``None``: merge when it does not increase FLOPs (through a d-dim
                bottleneck a merged h×h_inv map usually costs more than the two thin maps).
        """
        c = model.config
        k, f, v, d = c.n_batteries, c.slot_floats, c.battery_rows, c.latent_dim
        bh, ih = c.bottleneck_hidden, c.inverse_hidden
        if merge_mu_inverse and c.n_cross:
            raise ValueError("μ and the inverse cannot be merged across cross-attention layers (n_cross > 0)")
        merge = c.n_cross == 0 and (
            merge_mu_inverse if merge_mu_inverse is not None else bh * ih <= bh * d + (d + 1) * ih
        )
        ex = cls(LinearExportConfig(container=c, merged_inverse=merge)).to(next(model.parameters()).device)
        ex.enc_in.load_state_dict(model.encoder.in_proj.state_dict())
        ex.enc_out_w.copy_(model.encoder.out_w)
        ex.enc_out_b.copy_(model.encoder.out_b)
        ex.b1.load_state_dict(model.bottleneck[0].state_dict())
        w2, b2 = model.bottleneck[2].weight[:d], model.bottleneck[2].bias[:d]
        i1 = model.inverse[0]
        if merge:
            ex.mu_inv.weight.copy_(torch.cat([i1.weight[:, :d] @ w2, i1.weight[:, d:]], dim=1))
            ex.mu_inv.bias.copy_(i1.weight[:, :d] @ b2 + i1.bias)
        else:
            ex.mu.weight.copy_(w2)
            ex.mu.bias.copy_(b2)
            ex.inv1.load_state_dict(i1.state_dict())
        for layer, src in zip(ex.cross, model.cross_attn, strict=True):
            g, beta = src.norm.weight, src.norm.bias
            layer["qkv"].weight.copy_(src.qkv.weight * g.unsqueeze(0))
            layer["qkv"].bias.copy_(src.qkv.weight @ beta + src.qkv.bias)
            layer["out"].load_state_dict(src.out_proj.state_dict())
            layer.alpha.copy_(src.alpha)
        ex.inv2.load_state_dict(model.inverse[2].state_dict())
        gain = model.inverse_gain.reshape(k, v, 1).expand(k, v, c.D).reshape(k, 1, f)
        anchors = F.normalize(model.anchors.float(), dim=-1).reshape(k, 1, f) * (model.route_scale / v)
        ex.route_dec_w.copy_(torch.cat([model.decoder.in_w * gain, anchors], dim=1))
        ex.route_dec_b.copy_(torch.cat([model.decoder.in_b, torch.zeros(k, 1)], dim=1))
        ex.dec_out.weight.copy_(torch.cat([model.decoder.out_proj.weight, model.decoder.out_b.T], dim=1))
        ex.smooth.load_state_dict(model.smooth.state_dict())
        return ex.eval()

    # ------------------------------------------------------------------ stages
    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        counter = self._flop_counter
        if counter is not None:
            counter.stage = name
        try:
            yield
        finally:
            if counter is not None:
                counter.stage = "other"

    #: Stage name → whether it is a linear map.
    STAGES: ClassVar[dict[str, bool]] = {
        "magnitude (RMS split)": False,
        "E_in: slot encoders in (dense Linear)": True,
        "GELU (encoder)": False,
        "E_out: slot encoders out (grouped Linear)": True,
        "row sphere-norm (M)": False,
        "B1: bottleneck in (Linear)": True,
        "GELU (bottleneck)": False,
        "mu: bottleneck mode (Linear)": True,
        "mu∘inv1: merged (Linear)": True,
        "cross-attn qkv (Linear, LN folded)": True,
        "cross-attn softmax/gate": False,
        "cross-attn out (Linear)": True,
        "inv1: inverse in (Linear)": True,
        "GELU (inverse)": False,
        "inv2: inverse out (Linear)": True,
        "row sphere-norm (M̂)": False,
        "router ⊕ D_in: grouped Linear (gain, anchors folded)": True,
        "routing softmax / top-k": False,
        "GELU (decoder)": False,
        "D_out: routed mixture (dense Linear)": True,
        "magnitude rescale + stitch": False,
        "smooth conv1": True,
        "GELU (smooth)": False,
        "smooth conv2 + residual": True,
    }

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, C, H, W)`` images (the container's ``reconstruct``)."""
        c = self.container_config
        gh, gw = x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size
        k, h, v, d = c.n_batteries, c.battery_hidden, c.V, c.latent_dim
        st = self._stage
        with st("magnitude (RMS split)"):
            patches = patchify(x, c.patch_size)
            rms = (patches.float().square().mean(dim=-1, keepdim=True) + c.magnitude_eps**2).sqrt()
            mag = (rms.log() - c.mag_center) / c.mag_scale
            unit = patches / rms
        with st("E_in: slot encoders in (dense Linear)"):
            a = self.enc_in(unit)
        with st("GELU (encoder)"):
            a = F.gelu(a)
        with st("E_out: slot encoders out (grouped Linear)"):
            t = a.reshape(-1, k, h).transpose(0, 1)
            y = torch.baddbmm(self.enc_out_b.unsqueeze(1), t, self.enc_out_w.transpose(1, 2))
        with st("row sphere-norm (M)"):
            m = F.normalize(y.transpose(0, 1).reshape(*unit.shape[:-1], v, c.D), dim=-1)
        with st("B1: bottleneck in (Linear)"):
            hb = self.b1(m.flatten(-2))
        with st("GELU (bottleneck)"):
            hb = F.gelu(hb)
        if self.merged_inverse:
            with st("mu∘inv1: merged (Linear)"):
                hi = self.mu_inv(torch.cat([hb, mag], dim=-1))
        else:
            with st("mu: bottleneck mode (Linear)"):
                zs = self.mu(hb)
            for layer in self.cross:
                with st("cross-attn qkv (Linear, LN folded)"):
                    qkv = layer["qkv"](F.layer_norm(zs, (d,)))
                with st("cross-attn softmax/gate"):
                    heads = c.resolved_n_heads
                    q, kk, vv = rearrange(qkv, "b n (three h e) -> three b h n e", three=3, h=heads)
                    attn = rearrange(F.scaled_dot_product_attention(q, kk, vv), "b h n e -> b n (h e)")
                with st("cross-attn out (Linear)"):
                    g = layer["out"](attn)
                with st("cross-attn softmax/gate"):
                    zs = zs * (1.0 + layer.alpha * torch.tanh(g))
            with st("inv1: inverse in (Linear)"):
                hi = self.inv1(torch.cat([zs, mag], dim=-1))
        with st("GELU (inverse)"):
            hi = F.gelu(hi)
        with st("inv2: inverse out (Linear)"):
            mh = self.inv2(hi)
        with st("row sphere-norm (M̂)"):
            rows = F.normalize(mh.reshape(*mh.shape[:-1], v, c.D), dim=-1)
        with st("router ⊕ D_in: grouped Linear (gain, anchors folded)"):
            t = rows.reshape(-1, k, c.slot_floats).transpose(0, 1)
            rd = torch.baddbmm(self.route_dec_b.unsqueeze(1), t, self.route_dec_w.transpose(1, 2)).transpose(
                0, 1
            )
        with st("routing softmax / top-k"):
            logits = rd[..., h]
            if c.routing == "soft":
                r = logits.softmax(-1)
            else:
                top = logits.topk(c.top_k, dim=-1)
                r = torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(-1))
        with st("GELU (decoder)"):
            g = F.gelu(rd[..., :h]) * r.unsqueeze(-1)
        with st("D_out: routed mixture (dense Linear)"):
            out = self.dec_out(torch.cat([g.flatten(-2), r], dim=-1))
        with st("magnitude rescale + stitch"):
            log_rms = (c.mag_center + c.mag_scale * mag).clamp(max=c.max_log_rms)
            out = out.reshape(*unit.shape[:-1], -1) * log_rms.exp()
            image = unpatchify(out, c.patch_size, gh * c.patch_size, gw * c.patch_size, c.channels)
        with st("smooth conv1"):
            s1 = self.smooth.conv1(image)
        with st("GELU (smooth)"):
            s1 = F.gelu(s1)
        with st("smooth conv2 + residual"):
            return image + self.smooth.conv2(s1)

    def linear_map_count(self) -> int:
        """Linear maps in the export (a grouped per-slot map counts once): E_in, E_out, B1,
        μ∘inv1 (or μ, inv1 and two per cross-attention layer), inv2, router⊕D_in, D_out, 2 convs."""
        return 4 + 2 + 2 + (1 if self.merged_inverse else 2 + 2 * len(self.cross))

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write the export: a checkpoint folder, or the single-file format for a ``.safetensors`` path.

        See the module docstring for both formats. A path ending in ``.safetensors`` gets ONE
        safetensors file (the format of earlier versions, kept for the CLI's ``-o linear.safetensors``);
        any other path gets the folder :meth:`save_pretrained` writes.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            return self.save_pretrained(path)
        header = {
            "format": EXPORT_FORMAT,
            "config": json.dumps(config_to_dict(self.container_config)),
            "merged_inverse": json.dumps(self.merged_inverse),
        }
        atomic_save_tensors(path, self.state_dict(), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearExport:
        """Load an export in either format (a checkpoint folder, or the single file); in eval mode.

        Raises:
            CheckpointError: anything else, or tensors that do not match the config.
        """
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path).eval()
        meta = read_tensor_metadata(path)
        if meta.get("format") != EXPORT_FORMAT or "config" not in meta:
            raise CheckpointError(f"{path} is not a pentachora linear export (header keys {sorted(meta)})")
        try:
            config = config_from_dict(BatteryContainerConfig, loads_json(meta["config"]))
            merged = bool(loads_json(meta.get("merged_inverse", "false")))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: the export header holds invalid JSON ({exc})") from exc
        ex = cls(LinearExportConfig(container=config, merged_inverse=merged))
        ex.load_state_dict_checked(load_tensors(path), source=str(path))
        return ex.eval()


# ============================================================================================ FLOPs
class _FlopCounter(TorchDispatchMode):
    """Counts FLOPs per stage: matmul/conv by PyTorch's formulas, other ops 1 per output element."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.stage = "other"
        self.flops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in self.registry:
            n = int(self.registry[packet](*args, **kwargs, out_val=out))
        else:
            n = sum(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            if packet in (
                torch.ops.aten.view,
                torch.ops.aten._unsafe_view,
                torch.ops.aten.t,
                torch.ops.aten.transpose,
                torch.ops.aten.permute,
                torch.ops.aten.expand,
                torch.ops.aten.slice,
                torch.ops.aten.select,
                torch.ops.aten.unsqueeze,
                torch.ops.aten.squeeze,
                torch.ops.aten.detach,
                torch.ops.aten.alias,
                torch.ops.aten.reshape,
                torch.ops.aten.split,
                torch.ops.aten.unbind,
                torch.ops.aten.as_strided,
                torch.ops.aten.empty,
                torch.ops.aten.zeros,
                torch.ops.aten.zeros_like,
                torch.ops.aten.empty_like,
                torch.ops.aten._to_copy,
                torch.ops.aten.clone,
                torch.ops.aten.copy_,
                torch.ops.aten.lift_fresh,
            ):
                n = 0  # data movement, not arithmetic
        self.flops[self.stage] = self.flops.get(self.stage, 0) + n
        return out


def count_flops(export: LinearExport, x: torch.Tensor) -> dict[str, Any]:
    """Run the export on ``x`` and count FLOPs per stage.

    Args:
        export: a :class:`LinearExport`.
        x: ``(B, C, H, W)`` input.

    Returns:
        ``{"stages": [{"stage", "linear", "flops", "flops_per_patch"}], "linear_flops",
        "total_flops", "linear_fraction", "patches", "linear_stage_kinds"}`` (stages in pipeline
        order; ``linear_stage_kinds`` counts the distinct linear stages that ran).
    """
    counter = _FlopCounter()
    export._flop_counter = counter
    try:
        with counter:
            export(x)
    finally:
        export._flop_counter = None
    n_patches = (
        x.shape[0]
        * (x.shape[-2] // export.container_config.patch_size)
        * (x.shape[-1] // export.container_config.patch_size)
    )
    rows = []
    for name, flops in counter.flops.items():
        linear = LinearExport.STAGES.get(name, False)
        rows.append({"stage": name, "linear": linear, "flops": flops, "flops_per_patch": flops / n_patches})
    order = list(LinearExport.STAGES)
    rows.sort(key=lambda r: order.index(r["stage"]) if r["stage"] in order else len(order))
    lin = sum(r["flops"] for r in rows if r["linear"])
    tot = sum(r["flops"] for r in rows)
    maps = sum(1 for r in rows if r["linear"])
    return {
        "stages": rows,
        "linear_flops": lin,
        "total_flops": tot,
        "linear_fraction": lin / tot if tot else math.nan,
        "patches": n_patches,
        "linear_stage_kinds": maps,
    }

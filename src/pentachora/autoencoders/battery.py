"""Batteries: K miniature PatchSVAEs, each trained on one narrow regime, as ONE batched module.

A **battery** is a miniature canonical :class:`~pentachora.autoencoders.svae.PatchSVAE` (depth 0,
a few thousand parameters) that sees one ``p×p`` patch at a time, in the *unit-RMS* patch space
the battery container's encoder works in (``x / sqrt(mean(x²) + eps²)``, as GeoVAE's magnitude
split), so an implanted battery sees exactly the inputs it was trained on::

    unit patch x (P = C·p·p)
      → Linear(P→h) → GELU → Linear(h→V·D)              encoder (PatchSVAE ResidualMLP, depth 0)
      → reshape, row sphere-norm               M (V×D), rows on S^(D−1)
      → gram_eigh_svd (fp64 Gram eigh)         U (V×D), S (D), Vᵀ (D×D)
      → n_cross × spectral cross-attention on S "across the patches of the image" — a battery's
        image is one patch, so attention over one token returns its value and the layer is the
        bounded self-gate S′ = S ⊙ (1 + α ⊙ tanh(W_o (W_v LN(S) + b_v) + b_o)): the SVD is in the
        loop (M̂ ≠ M), unlike a battery without cross-attention where U·diag(S)·Vᵀ = M exactly
      → M̂ = U diag(S′) Vᵀ
      → Linear(V·D→h) → GELU → Linear(h→P)              decoder

    loss_k = recon_weight · MSE_k + cv_weight · (cv(M rows) − target_cv(D))²   (differentiable CV)

A battery's image has no seams, so its BoundarySmooth is held at the identity (the bank has none;
:meth:`BatteryBank.battery` returns a PatchSVAE whose smooth is the zero-initialised identity), and
its query/key projections are dead at one token (the bank stores W_v and W_o only; ``battery(k)``
zero-fills W_q, W_k). With the defaults (p=8, V=D=h=8, one gate layer) a battery has 4,536
parameters.

:class:`BatteryBank` holds K batteries as stacked tensors (leading axis K) and runs them with
batched matmuls (``baddbmm``) and one batched fp64 eigendecomposition — one module, not K Python
loops. Its loss is the **sum** of the K battery losses, so every battery's gradient is exactly
its own; with AdamW (element-wise) and no global gradient clipping, training the bank is training
K independent batteries.

Saved formats — one pair, :meth:`BatteryBank.save_pretrained` / :meth:`BatteryBank.from_pretrained`,
for both; the format follows the path (a summarised bank carries the config and the per-battery
metadata — regime, final MSE, CV, effective rank, mean spectrum, ... — in either):

* **checkpoint folder** (any path not ending in ``.safetensors``): ``config.json`` +
  ``model.safetensors`` as every model (also loadable by :func:`pentachora.recipes.load_model`),
  plus ``batteries.json`` = ``{"format": "pentachora-battery-bank", "format_version": "1",
  "batteries": [one record per battery], "run": {...}}`` (``run`` only when given).
  ``from_pretrained`` reads ``batteries.json`` into :attr:`BatteryBank.info` when it is there
  (``load_model`` builds the bank without it: ``info`` stays empty); trainer checkpoints of an
  unsummarised bank have no ``batteries.json``.
* **single file** (a path ending in ``.safetensors``, the format of ``pentachora train batteries
  --out bank.safetensors``): ONE safetensors file of the state dict whose header holds ``format =
  "pentachora-battery-bank"``, ``format_version = "1"``, ``model_type``, ``pentachora_version``,
  ``config`` (JSON string), ``batteries`` (JSON list of the records) and optionally ``run`` (JSON).
  It always carries the records: saving an unsummarised bank to it is a ``ValueError``.

What each battery trains on (its *regime*: a noise type, a curriculum tier or a k-means cluster of
photo patches) is data, not model: :func:`~pentachora.data.regimes.parse_regimes` and
:class:`~pentachora.data.regimes.RegimeSource` live in :mod:`pentachora.data.regimes`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig
from pentachora.geometry import (
    cv_from_volumes,
    cv_loss_term,
    effective_rank,
    gram_eigh_svd,
    pentachoron_volumes,
    target_cv,
)
from pentachora.geometry.cv import volume_scale
from pentachora.io import (
    CheckpointError,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    loads_json,
    read_json,
    read_tensor_metadata,
)
from pentachora.modeling import ModelOutput, PentachoraModel, config_from_dict, config_to_dict, register_model

__all__ = [
    "BANK_FORMAT",
    "BATTERIES_NAME",
    "REQUIRED_BATTERY_KEYS",
    "BatteryBank",
    "BatteryBankOutput",
    "BatteryConfig",
]

logger = logging.getLogger(__name__)

#: ``format`` value in the safetensors header of a bank file.
BANK_FORMAT = "pentachora-battery-bank"
#: Version of the bank file layout.
BANK_FORMAT_VERSION = "1"
#: The per-battery metadata file of a bank checkpoint folder.
BATTERIES_NAME = "batteries.json"
#: Keys every per-battery metadata record must have.
REQUIRED_BATTERY_KEYS: tuple[str, ...] = ("index", "regime", "final_mse", "cv", "erank", "spectrum")

_SVD_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ============================================================================================ config
@dataclasses.dataclass
class BatteryConfig:
    """Configuration of a :class:`BatteryBank` (K batteries of one shape).

    Attributes:
        n_batteries: K, the number of batteries.
        patch_size: square patch side p (the container's patch size).
        channels: channels C.
        V: rows of a battery's frame M (its slot in the container has V rows).
        D: frame dimension (rows on S^(D−1)); the anchors of the container live here too.
        hidden: width h of the battery's encoder and decoder hidden layer.
        n_cross: spectral self-gate layers on S (PatchSVAE cross-attention at one token).
        max_alpha, alpha_init: gate bound and initial logit (as PatchSVAE).
        magnitude_eps: RMS floor of the unit-RMS input space.
        svd_dtype: precision of the Gram eigendecomposition (``"float64"`` as the reference).
        recon_weight, cv_weight: loss weights (per battery).
        cv_patches: frames per battery per step for the differentiable CV term (random subset).
        cv_samples: random pentachora per frame.
    """

    n_batteries: int = 256
    patch_size: int = 8
    channels: int = 3
    V: int = 8
    D: int = 8
    hidden: int = 8
    n_cross: int = 1
    max_alpha: float = 0.2
    alpha_init: float = -2.0
    magnitude_eps: float = 1e-3
    svd_dtype: Literal["float64", "float32"] = "float64"
    recon_weight: float = 1.0
    cv_weight: float = 0.3
    cv_patches: int = 8
    cv_samples: int = 32

    def __post_init__(self) -> None:
        for name in ("n_batteries", "patch_size", "channels", "V", "D", "hidden", "cv_patches", "cv_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.n_cross < 0:
            raise ValueError(f"n_cross must be ≥ 0, got {self.n_cross}")
        if self.V < self.D:
            raise ValueError(f"the SVD readout needs V ≥ D (tall frames); got V={self.V}, D={self.D}")
        if self.D < 4 or self.V < 5:
            raise ValueError(
                f"battery frames need D ≥ 4 and V ≥ 5 for the pentachoron CV; got V={self.V}, D={self.D}"
            )
        if self.svd_dtype not in _SVD_DTYPES:
            raise ValueError(f"svd_dtype must be one of {sorted(_SVD_DTYPES)}, got {self.svd_dtype!r}")
        for name in ("recon_weight", "cv_weight", "magnitude_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")

    @property
    def pixel_floats(self) -> int:
        """``C·p·p`` floats of one patch."""
        return self.channels * self.patch_size**2

    @property
    def params_per_battery(self) -> int:
        """Trainable parameters of one battery (encoder, gate layers, decoder)."""
        p, h, f, d = self.pixel_floats, self.hidden, self.V * self.D, self.D
        gate = 2 * d + (d * d + d) + (d * d + d) + d
        return (p * h + h) + (h * f + f) + self.n_cross * gate + (f * h + h) + (h * p + p)

    def patch_svae_config(self) -> PatchSVAEConfig:
        """The :class:`PatchSVAEConfig` of one battery as a standalone PatchSVAE (depth 0)."""
        return PatchSVAEConfig(
            patch_size=self.patch_size,
            channels=self.channels,
            V=self.V,
            D=self.D,
            hidden=self.hidden,
            depth=0,
            n_cross=self.n_cross,
            n_heads=1,
            max_alpha=self.max_alpha,
            alpha_init=self.alpha_init,
            readout="svd",
            svd_dtype=self.svd_dtype,
            recon_weight=self.recon_weight,
            cv_weight=self.cv_weight,
            cv_mode="loss",
            cv_loss_samples=self.cv_samples,
            cv_loss_max_patches=self.cv_patches,
        )


@dataclasses.dataclass
class BatteryBankOutput(ModelOutput):
    """What :meth:`BatteryBank.forward` returns (0-d fields are logged by the trainer).

    Attributes:
        loss: Σ_k (recon_weight · MSE_k + cv_weight · CV-term_k) — the sum, so battery k's gradient
            is its own.
        recon: ``(K, B, C, p, p)`` reconstructions (unit-RMS space).
        mse: ``(K,)`` per-battery MSE (not logged; see ``recon_loss`` / ``mse_worst``).
        recon_loss: mean of ``mse`` over the batteries.
        mse_worst: largest battery MSE.
        cv_loss: mean CV term over the batteries (with gradient).
        cv: mean CV readout of the frames used in the CV term.
        erank: mean effective rank of S.
        s_delta: mean ``|S′ − S|`` (how much the gates moved the spectrum).
        alpha_mean: mean gate α.
    """

    recon: torch.Tensor | None = None
    mse: torch.Tensor | None = None
    recon_loss: torch.Tensor | None = None
    mse_worst: torch.Tensor | None = None
    cv_loss: torch.Tensor | None = None
    cv: torch.Tensor | None = None
    erank: torch.Tensor | None = None
    s_delta: torch.Tensor | None = None
    alpha_mean: torch.Tensor | None = None


# ============================================================================================ the bank
def _uniform_(t: torch.Tensor, bound: float) -> torch.Tensor:
    return nn.init.uniform_(t, -bound, bound)


@register_model
class BatteryBank(PentachoraModel):
    """K batteries (miniature PatchSVAEs) as stacked tensors, run with batched matmuls.

    Parameters (leading axis K; weights in ``nn.Linear`` layout ``(out, in)``):
    ``enc_in_w (K, h, P)``, ``enc_in_b (K, h)``, ``enc_out_w (K, V·D, h)``, ``enc_out_b``,
    per gate layer l: ``gate{l}_norm_w / _norm_b (K, D)``, ``gate{l}_v_w (K, D, D)``, ``gate{l}_v_b``,
    ``gate{l}_out_w (K, D, D)``, ``gate{l}_out_b``, ``gate{l}_alpha (K, D)``; ``dec_in_w (K, h, V·D)``,
    ``dec_in_b``, ``dec_out_w (K, P, h)``, ``dec_out_b (K, P)``. Buffer ``prototypes (K, V, D)``:
    each battery's mean frame rows on its regime, sphere-normalised (set by :meth:`summarize`; the
    container's anchors start there).

    Args:
        config: a :class:`BatteryConfig`.

    Example:
        >>> bank = BatteryBank(BatteryConfig(n_batteries=4, patch_size=4))
        >>> out = bank(torch.randn(4, 2, 3, 4, 4))
        >>> out.recon.shape, out.mse.shape
        (torch.Size([4, 2, 3, 4, 4]), torch.Size([4]))
    """

    model_type: ClassVar[str] = "battery_bank"
    config_class: ClassVar[type] = BatteryConfig
    config: BatteryConfig

    def __init__(self, config: BatteryConfig) -> None:
        super().__init__(config)
        c = config
        k, p, h, f, d = c.n_batteries, c.pixel_floats, c.hidden, c.V * c.D, c.D
        self.enc_in_w = nn.Parameter(torch.empty(k, h, p))
        self.enc_in_b = nn.Parameter(torch.empty(k, h))
        self.enc_out_w = nn.Parameter(torch.empty(k, f, h))
        self.enc_out_b = nn.Parameter(torch.empty(k, f))
        self.gates = nn.ModuleList()
        for _ in range(c.n_cross):
            gate = nn.ParameterDict(
                {
                    "norm_w": nn.Parameter(torch.ones(k, d)),
                    "norm_b": nn.Parameter(torch.zeros(k, d)),
                    "v_w": nn.Parameter(torch.empty(k, d, d)),
                    "v_b": nn.Parameter(torch.empty(k, d)),
                    "out_w": nn.Parameter(torch.empty(k, d, d)),
                    "out_b": nn.Parameter(torch.empty(k, d)),
                    "alpha": nn.Parameter(torch.full((k, d), float(c.alpha_init))),
                }
            )
            self.gates.append(gate)
        self.dec_in_w = nn.Parameter(torch.empty(k, h, f))
        self.dec_in_b = nn.Parameter(torch.empty(k, h))
        self.dec_out_w = nn.Parameter(torch.empty(k, p, h))
        self.dec_out_b = nn.Parameter(torch.empty(k, p))
        self.register_buffer("prototypes", F.normalize(torch.ones(k, c.V, d), dim=-1))
        self.info: list[dict[str, Any]] = []
        self.run_metadata: dict[str, Any] = {}
        self.reset_parameters()
        self._target: float = target_cv(c.D)

    # ------------------------------------------------------------------ init / accounting
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PatchSVAE's initialisation, per battery: ``nn.Linear`` defaults (U(±1/√fan_in)) and an
        orthogonal encoder out-projection; gate LayerNorm (1, 0), α logits at ``alpha_init``."""
        c = self.config
        p, h, f, d = c.pixel_floats, c.hidden, c.V * c.D, c.D
        for w, b, fan_in in (
            (self.enc_in_w, self.enc_in_b, p),
            (self.enc_out_w, self.enc_out_b, h),
            (self.dec_in_w, self.dec_in_b, f),
            (self.dec_out_w, self.dec_out_b, h),
        ):
            _uniform_(w, 1 / math.sqrt(fan_in))
            _uniform_(b, 1 / math.sqrt(fan_in))
        for k in range(c.n_batteries):
            nn.init.orthogonal_(self.enc_out_w[k])
        for gate in self.gates:
            gate["norm_w"].fill_(1.0)
            gate["norm_b"].zero_()
            for name in ("v", "out"):
                _uniform_(gate[f"{name}_w"], 1 / math.sqrt(d))
                _uniform_(gate[f"{name}_b"], 1 / math.sqrt(d))
            gate["alpha"].fill_(float(c.alpha_init))

    @property
    def n_batteries(self) -> int:
        """K."""
        return self.config.n_batteries

    @property
    def cv_target(self) -> float:
        """``target_cv(D)``: the CV band of a battery's frame rows."""
        return self._target

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups (the models' parameter-groups hook, passed as ``Trainer(param_groups=)``).

        AdamW groups that decay exactly what a standalone PatchSVAE would (its weight matrices): the
        trainer's default decays every tensor with ``ndim ≥ 2`` — here also the stacked biases and
        norms. Stacked matrices have ``ndim == 3``. Every group is at ``lr``.

        Args:
            lr: Peak learning rate of every group.
            weight_decay: Decay of the weight matrices.

        Returns:
            ``[{"params", "lr", "weight_decay"}, ...]``.
        """
        decay = [p for p in self.parameters() if p.ndim >= 3]
        rest = [p for p in self.parameters() if p.ndim < 3]
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": rest, "lr": lr, "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ the batched pipeline
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() == 5:
            if tuple(x.shape[2:]) != (c.channels, c.patch_size, c.patch_size):
                raise ValueError(
                    f"expected (K, B, {c.channels}, {c.patch_size}, {c.patch_size}) patches, got {tuple(x.shape)}"
                )
            x = x.reshape(x.shape[0], x.shape[1], -1)
        if x.dim() != 3 or x.shape[0] != c.n_batteries or x.shape[2] != c.pixel_floats:
            raise ValueError(
                f"expected (K={c.n_batteries}, B, {c.pixel_floats}) or (K, B, C, p, p) patches, got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("battery input contains NaN/inf")
        return x

    def gate(self, layer: int, s: torch.Tensor) -> torch.Tensor:
        """One spectral self-gate (PatchSVAE cross-attention at one token), batched over K.

        Args:
            layer: gate index.
            s: ``(K, B, D)`` spectra.

        Returns:
            ``(K, B, D)`` ``s ⊙ (1 + α ⊙ tanh(W_o (W_v LN(s) + b_v) + b_o))``.
        """
        g = self.gates[layer]
        ln = F.layer_norm(s, (s.shape[-1],)) * g["norm_w"].unsqueeze(1) + g["norm_b"].unsqueeze(1)
        v = torch.baddbmm(g["v_b"].unsqueeze(1), ln, g["v_w"].transpose(1, 2))
        gate = torch.tanh(torch.baddbmm(g["out_b"].unsqueeze(1), v, g["out_w"].transpose(1, 2)))
        alpha = self.config.max_alpha * torch.sigmoid(g["alpha"]).unsqueeze(1)
        return s * (1.0 + alpha * gate)

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder of every battery on its own patches.

        Args:
            x: ``(K, B, P)`` or ``(K, B, C, p, p)`` unit-RMS patches.

        Returns:
            ``(K, B, V·D)`` encoder outputs before the row sphere-normalisation.
        """
        x = self._flat(x)
        h = F.gelu(torch.baddbmm(self.enc_in_b.unsqueeze(1), x, self.enc_in_w.transpose(1, 2)))
        return torch.baddbmm(self.enc_out_b.unsqueeze(1), h, self.enc_out_w.transpose(1, 2))

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The full battery pipeline on ``(K, B, …)`` patches.

        Returns:
            ``M`` ``(K, B, V, D)`` frames, ``S_raw`` / ``S`` ``(K, B, D)`` spectra before / after the
            gates, ``mhat`` ``(K, B, V, D)``, ``recon`` ``(K, B, P)``.
        """
        c = self.config
        k, b = x.shape[:2]
        y = self.encode_frames(x)
        with torch.autocast(device_type=y.device.type, enabled=False):
            m = F.normalize(y.float().reshape(k, b, c.V, c.D), dim=-1)
            u, s, vh = gram_eigh_svd(m, compute_dtype=_SVD_DTYPES[c.svd_dtype])
        raw = s
        for layer in range(c.n_cross):
            s = self.gate(layer, s)
        mhat = (u * s.unsqueeze(-2)) @ vh
        h = F.gelu(
            torch.baddbmm(self.dec_in_b.unsqueeze(1), mhat.reshape(k, b, -1), self.dec_in_w.transpose(1, 2))
        )
        recon = torch.baddbmm(self.dec_out_b.unsqueeze(1), h, self.dec_out_w.transpose(1, 2))
        return {"M": m, "S_raw": raw, "S": s, "mhat": mhat, "recon": recon}

    def forward(self, x: torch.Tensor) -> BatteryBankOutput:
        """Reconstruct every battery's patches and compute the summed loss.

        Args:
            x: ``(K, B, C, p, p)`` (or ``(K, B, P)``) unit-RMS patches; battery k gets ``x[k]``.

        Returns:
            :class:`BatteryBankOutput`.
        """
        c = self.config
        flat = self._flat(x)
        r = self.run(flat)
        mse = (r["recon"].float() - flat.float()).square().mean(dim=(1, 2))  # (K,)
        loss = c.recon_weight * mse.sum()
        cv_loss = cv_value = None
        if c.cv_weight > 0 or not self.training:
            n = min(c.cv_patches, flat.shape[1])
            idx = torch.randperm(flat.shape[1], device=flat.device)[:n]
            pts = r["M"][:, idx].reshape(-1, c.V, c.D)
            cv_loss, cv_value = cv_loss_term(pts, self._target, c.cv_samples)
            # cv_loss_term averages over the K·n frames; Σ_k mean_n = K · mean_{k,n}
            loss = loss + c.cv_weight * c.n_batteries * cv_loss.float()
        with torch.no_grad():
            alpha = (
                torch.stack([c.max_alpha * torch.sigmoid(g["alpha"]) for g in self.gates]).mean()
                if c.n_cross
                else mse.new_zeros(())
            )
            readouts = {
                "erank": effective_rank(r["S"].detach().float()).mean(),
                "s_delta": (r["S"] - r["S_raw"]).detach().abs().mean().float(),
                "alpha_mean": alpha.float(),
                "mse_worst": mse.detach().max(),
            }
        recon = r["recon"].reshape(x.shape) if x.dim() == 5 else r["recon"]
        return BatteryBankOutput(
            loss=loss,
            recon=recon,
            mse=mse,
            recon_loss=mse.mean(),
            cv_loss=cv_loss,
            cv=cv_value,
            **readouts,
        )

    # ------------------------------------------------------------------ batteries as PatchSVAEs
    @torch.no_grad()
    def battery(self, k: int) -> PatchSVAE:
        """Battery ``k`` as a standalone :class:`PatchSVAE` (depth 0) with its weights copied.

        Run on ``(B, C, p, p)`` one-patch images it computes exactly what the bank computes for
        battery k. Its BoundarySmooth keeps the zero-initialised identity and its attention's
        query/key rows are zero (inert at one token).
        """
        if not 0 <= k < self.n_batteries:
            raise IndexError(f"battery index {k} out of range for a bank of {self.n_batteries}")
        c = self.config
        model = PatchSVAE(c.patch_svae_config())
        d = c.D
        model.encoder.in_proj.weight.copy_(self.enc_in_w[k])
        model.encoder.in_proj.bias.copy_(self.enc_in_b[k])
        model.encoder.out_proj.weight.copy_(self.enc_out_w[k])
        model.encoder.out_proj.bias.copy_(self.enc_out_b[k])
        for layer, g in zip(model.cross_attn, self.gates, strict=True):
            layer.norm.weight.copy_(g["norm_w"][k])
            layer.norm.bias.copy_(g["norm_b"][k])
            layer.qkv.weight.zero_()
            layer.qkv.bias.zero_()
            layer.qkv.weight[2 * d :].copy_(g["v_w"][k])
            layer.qkv.bias[2 * d :].copy_(g["v_b"][k])
            layer.out_proj.weight.copy_(g["out_w"][k])
            layer.out_proj.bias.copy_(g["out_b"][k])
            layer.alpha_logits.copy_(g["alpha"][k])
        model.decoder.in_proj.weight.copy_(self.dec_in_w[k])
        model.decoder.in_proj.bias.copy_(self.dec_in_b[k])
        model.decoder.out_proj.weight.copy_(self.dec_out_w[k])
        model.decoder.out_proj.bias.copy_(self.dec_out_b[k])
        model.smooth.requires_grad_(False)  # identity: a one-patch image has no seams
        return model

    @classmethod
    @torch.no_grad()
    def from_batteries(
        cls, batteries: Sequence[PatchSVAE], config: BatteryConfig | None = None
    ) -> BatteryBank:
        """Stack standalone depth-0 PatchSVAEs (e.g. from :meth:`battery`) into a bank.

        Raises:
            ValueError: empty list, a battery of another shape, depth ≠ 0, or a non-identity smooth.
        """
        if not batteries:
            raise ValueError("from_batteries needs at least one PatchSVAE")
        first = batteries[0].config
        config = config or BatteryConfig(
            n_batteries=len(batteries),
            patch_size=first.patch_size,
            channels=first.channels,
            V=first.V,
            D=first.D,
            hidden=first.hidden,
            n_cross=first.n_cross,
            max_alpha=first.max_alpha,
            alpha_init=first.alpha_init,
            svd_dtype=first.svd_dtype,
        )
        expect = config.patch_svae_config()
        for i, model in enumerate(batteries):
            mc = model.config
            shape = (mc.patch_size, mc.channels, mc.V, mc.D, mc.hidden, mc.depth, mc.n_cross, mc.readout)
            want = (
                expect.patch_size,
                expect.channels,
                expect.V,
                expect.D,
                expect.hidden,
                0,
                expect.n_cross,
                "svd",
            )
            if shape != want:
                raise ValueError(f"battery {i} has shape {shape}, the bank needs {want}")
            if any(bool(p.abs().max() > 0) for p in model.smooth.conv2.parameters()):
                raise ValueError(f"battery {i} has a non-identity BoundarySmooth, which a bank cannot hold")
        bank = cls(dataclasses.replace(config, n_batteries=len(batteries)))
        d = config.D
        for k, model in enumerate(batteries):
            bank.enc_in_w[k].copy_(model.encoder.in_proj.weight)
            bank.enc_in_b[k].copy_(model.encoder.in_proj.bias)
            bank.enc_out_w[k].copy_(model.encoder.out_proj.weight)
            bank.enc_out_b[k].copy_(model.encoder.out_proj.bias)
            for layer, g in zip(model.cross_attn, bank.gates, strict=True):
                g["norm_w"][k].copy_(layer.norm.weight)
                g["norm_b"][k].copy_(layer.norm.bias)
                g["v_w"][k].copy_(layer.qkv.weight[2 * d :])
                g["v_b"][k].copy_(layer.qkv.bias[2 * d :])
                g["out_w"][k].copy_(layer.out_proj.weight)
                g["out_b"][k].copy_(layer.out_proj.bias)
                g["alpha"][k].copy_(layer.alpha_logits)
            bank.dec_in_w[k].copy_(model.decoder.in_proj.weight)
            bank.dec_in_b[k].copy_(model.decoder.in_proj.bias)
            bank.dec_out_w[k].copy_(model.decoder.out_proj.weight)
            bank.dec_out_b[k].copy_(model.decoder.out_proj.bias)
        return bank

    # ------------------------------------------------------------------ metadata
    @torch.no_grad()
    def summarize(
        self,
        x: torch.Tensor,
        regimes: Sequence[dict[str, Any]] | None = None,
        cv_samples: int = 200,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """Measure every battery on held-out patches of its regime; set ``prototypes`` and ``info``.

        Args:
            x: ``(K, n, C, p, p)`` evaluation patches (unit-RMS), battery k's in ``x[k]``; n ≥ 1.
            regimes: optional per-battery descriptions (e.g. :meth:`RegimeSource.describe`), merged
                into the records.
            cv_samples: pentachora per frame for the CV readout.
            seed: seed of the CV readout's subsets.

        Returns:
            One record per battery: ``index``, ``regime`` (label), ``final_mse`` (unit-RMS space),
            ``cv`` (mean CV of its frames), ``cv_target``, ``erank`` (mean effective rank of S),
            ``spectrum`` (mean S, D floats), ``prototype_coherence`` (mean norm of the mean frame
            rows: 1 = every patch gives the same frame), ``prototype_cv`` and the regime fields.
        """
        c = self.config
        was = self.training
        self.eval()
        try:
            flat = self._flat(x)
            r = self.run(flat)
            mse = (r["recon"] - flat).square().mean(dim=(1, 2))
            m = r["M"]  # (K, n, V, D)
            gen = torch.Generator().manual_seed(seed)
            vols = pentachoron_volumes(m.reshape(-1, c.V, c.D).double(), n_samples=cv_samples, generator=gen)
            cv, valid = cv_from_volumes(vols, volume_scale(m.reshape(-1, c.V, c.D)))
            cv, valid = cv.reshape(c.n_batteries, -1), valid.reshape(c.n_batteries, -1)
            cv_k = (cv * valid).sum(1) / valid.sum(1).clamp_min(1)
            erank = effective_rank(r["S"].double()).mean(dim=1)
            spectrum = r["S"].double().mean(dim=1)
            mean_rows = m.mean(dim=1)  # (K, V, D)
            coherence = mean_rows.norm(dim=-1).mean(dim=-1)
            protos = F.normalize(mean_rows, dim=-1)
            pv = pentachoron_volumes(protos.double(), n_samples=cv_samples, generator=gen)
            pcv, _ = cv_from_volumes(pv, volume_scale(protos))
            self.prototypes.copy_(protos)
        finally:
            self.train(was)
        records = []
        for k in range(c.n_batteries):
            rec: dict[str, Any] = {
                "index": k,
                "regime": f"battery-{k}",
                "final_mse": float(mse[k]),
                "cv": float(cv_k[k]),
                "cv_target": self._target,
                "erank": float(erank[k]),
                "spectrum": [float(v) for v in spectrum[k]],
                "prototype_coherence": float(coherence[k]),
                "prototype_cv": float(pcv[k]),
            }
            if regimes is not None:
                extra = dict(regimes[k])
                rec["regime"] = str(extra.pop("label", extra.pop("regime", rec["regime"])))
                rec.update({key: v for key, v in extra.items() if key not in rec})
            records.append(rec)
        self.info = records
        return records

    # ------------------------------------------------------------------ save / load
    def save_pretrained(
        self, directory: str | os.PathLike, extra_metadata: dict[str, Any] | None = None
    ) -> Path:
        """Write the bank: a checkpoint folder (``config.json`` + ``model.safetensors`` +
        ``batteries.json``), or ONE safetensors file for a path ending in ``.safetensors``.

        See the module docstring for both formats. In a folder, ``batteries.json`` is written when
        :attr:`info` holds one complete record per battery (after :meth:`summarize` or a load); a
        bank in training (empty ``info``) saves without it. The single file always needs the records.

        Args:
            directory: the folder (created if needed) or the ``.safetensors`` file.
            extra_metadata: optional JSON-able dict stored under ``run``.

        Raises:
            ValueError: :attr:`info` is not one complete record per battery (non-empty, or a single file).
        """
        path = Path(directory)
        if path.suffix == ".safetensors":
            return self._save_file(path, extra_metadata)
        directory = super().save_pretrained(path)
        if self.info:
            _check_records(self.info, self.config, where="bank.info")
            meta: dict[str, Any] = {
                "format": BANK_FORMAT,
                "format_version": BANK_FORMAT_VERSION,
                "batteries": self.info,
            }
            run = extra_metadata if extra_metadata is not None else self.run_metadata
            if run:
                meta["run"] = loads_json(json.dumps(run, default=str))
            atomic_write_json(directory / BATTERIES_NAME, meta)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> BatteryBank:
        """Load a bank strictly from a checkpoint folder (``batteries.json``, when present, fills
        :attr:`info`) or from the single ``.safetensors`` file (which always carries the records).

        Raises:
            CheckpointError: as :meth:`PentachoraModel.from_pretrained`; a ``batteries.json`` that is
                not one complete record per battery; a file that is missing or not safetensors, whose
                header lacks the bank format, the config or the per-battery records (or they are
                invalid), or whose tensors do not have the shapes the config implies.
        """
        if not Path(directory).is_dir():
            return cls._load_file(Path(directory), map_location)
        bank = super().from_pretrained(directory, map_location=map_location)
        path = Path(directory) / BATTERIES_NAME
        if path.is_file():
            meta = read_json(path)
            if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT or "batteries" not in meta:
                raise CheckpointError(
                    f"{path} is not battery-bank metadata (format={BANK_FORMAT!r}, batteries)"
                )
            try:
                _check_records(meta["batteries"], bank.config, where=str(path))
            except ValueError as exc:
                raise CheckpointError(str(exc)) from exc
            bank.info = list(meta["batteries"])
            run = meta.get("run", {})
            bank.run_metadata = run if isinstance(run, dict) else {"raw": run}
        return bank

    def _save_file(self, path: Path, extra_metadata: dict[str, Any] | None) -> Path:
        """The single-file format (see the module docstring); needs the per-battery records."""
        from pentachora import __version__

        _check_records(self.info, self.config, where="bank.info")
        header = {
            "format": BANK_FORMAT,
            "format_version": BANK_FORMAT_VERSION,
            "model_type": self.model_type,
            "pentachora_version": __version__,
            "config": json.dumps(config_to_dict(self.config)),
            "batteries": json.dumps(self.info),
        }
        if extra_metadata:
            header["run"] = json.dumps(extra_metadata, default=str)
        atomic_save_tensors(path, self.state_dict(), metadata=header)
        return path

    @classmethod
    def _load_file(cls, path: Path, map_location: str | torch.device) -> BatteryBank:
        """The single-file format (see the module docstring)."""
        meta = read_tensor_metadata(path)
        if meta.get("format") != BANK_FORMAT:
            raise CheckpointError(
                f"{path} is not a battery bank: its safetensors header has no format={BANK_FORMAT!r} "
                f"(header keys: {sorted(meta)}); write banks with BatteryBank.save_pretrained or "
                "`pentachora train batteries`"
            )
        missing = [k for k in ("config", "batteries") if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: the battery-bank header lacks {missing}")
        try:
            config_dict = loads_json(meta["config"])
            records = loads_json(meta["batteries"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: the bank header holds invalid JSON ({exc})") from exc
        config = config_from_dict(BatteryConfig, config_dict)
        try:
            _check_records(records, config, where=str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
        bank = cls(config)
        state = load_tensors(path, device=map_location)
        bank.load_state_dict_checked(state, source=str(path))
        bank.info = records
        if "run" in meta:
            try:
                bank.run_metadata = loads_json(meta["run"])
            except json.JSONDecodeError:
                bank.run_metadata = {"raw": meta["run"]}
        return bank.to(map_location)


def _check_records(records: Any, config: BatteryConfig, where: str) -> None:
    """Raise ``ValueError`` unless ``records`` is one complete metadata record per battery."""
    k = config.n_batteries
    if not isinstance(records, list) or len(records) != k:
        n = len(records) if isinstance(records, list) else type(records).__name__
        raise ValueError(
            f"{where}: need one metadata record per battery ({k}), got {n}; run BatteryBank.summarize first"
        )
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: battery {i} metadata is {type(rec).__name__}, not an object")
        lacking = [key for key in REQUIRED_BATTERY_KEYS if key not in rec]
        if lacking:
            raise ValueError(
                f"{where}: battery {i} metadata lacks {lacking} (required: {list(REQUIRED_BATTERY_KEYS)})"
            )
        if not isinstance(rec["spectrum"], list) or len(rec["spectrum"]) != config.D:
            raise ValueError(f"{where}: battery {i} spectrum must be a list of D={config.D} floats")

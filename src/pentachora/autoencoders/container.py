"""The CV battery container: a GeoVAE whose frame sectors are K battery slots, with adjudication.

The seed's "CV battery container": a VAE "aligned entirely on the CV spectrum" that "handles
hundreds of miniature SVD-trained batteries that are directly implanted into the substructure as
learning starter points", with "a specifically aligned internalized subsystem meant entirely for
adjudication through a series of embedding arrays". It is a :class:`GeoVAE` in which

* the **encoder-output sector** (the frame M, V×D) is partitioned into K slots of v rows: slot k
  is battery k's encoder ``Linear(P→h) → GELU → Linear(h→v·D)``, so ``V = K·v``;
* the **decoder-input sector** (the inverse frame M̂) is partitioned the same way: slot k's rows
  feed battery k's decoder ``Linear(v·D→h) → GELU → Linear(h→P)``;
* the **adjudication subsystem** holds one learned embedding array per battery, ``anchors[k]``
  (v points on S^(D−1)), each held in the CV band of its dimension by the differentiable
  pentachoron CV towards ``target_cv(D)``, and routes every patch to batteries by geometric
  proximity: the mean row-wise cosine between the slot's inverse frame and its anchors,
  ``score_k = (1/v) Σ_i ⟨M̂_k[i], Â_k[i]⟩``, through a softmax with a learned temperature (soft
  routing, the default) or its top-k;
* the decoder output is the routed mixture of the battery decoders, ``Σ_k r_k · dec_k(M̂_k)``.

Pipeline (per patch; P = C·p·p, d latent dims; the parts shared with GeoVAE are GeoVAE's code)::

    x ─ patchify ─ ÷ RMS ─► unit patch ──► [slot encoders, K × (P→h→v·D)] ─► M (K·v × D), row sphere-norm
                                                                    [CV: target_cv(D)]
        M ─► Linear(V·D→h) ─ GELU ─ Linear(h→2d) ─► μ, log σ² ─► z        (GeoVAE bottleneck)
    decode: [z ; log-RMS] ─► cross-attention ─► Linear ─ GELU ─ Linear ─► M̂, row sphere-norm · gain
        M̂ ─► adjudication: score_k = ⟨M̂_k, anchors_k⟩ / v ─► r = softmax(score · scale) (or top-k)
        M̂ ─► [slot decoders, K × (v·D→h→P)], Σ_k r_k · dec_k ─► unit patch × exp(log-RMS) ─► smooth

There is no SVD or eigendecomposition anywhere (the batteries were trained with one; the container
is not). Routing reads the **decoder-side** frame M̂, a function of the latent alone, so prior draws
route too and the latent accounting stays ``d + 1`` floats per patch.

**Implant** (:meth:`BatteryContainer.implant`): slot k's encoder and decoder weights are copied from
battery k of a :class:`~pentachora.autoencoders.battery.BatteryBank` (trained on unit-RMS patches,
the space this encoder reads), and ``anchors[k]`` from the battery's prototype (its mean frame rows
on its regime). The battery's spectral gate is not implanted (the container has no S).

**Linear export** (:class:`~pentachora.autoencoders.export.LinearExport`, in
:mod:`pentachora.autoencoders.export` with the FLOP counter; `LinearExport.from_container(model)`): folds the trained container for
inference into as few linear maps as its structure allows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pentachora.autoencoders.battery import BatteryBank
from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig, GeoVAEOutput
from pentachora.geometry import cv_loss_term, target_cv
from pentachora.modeling import register_model

__all__ = [
    "BatteryContainer",
    "BatteryContainerConfig",
    "BatteryContainerOutput",
    "SlotDecoder",
    "SlotEncoder",
]


# ============================================================================================ config
@dataclasses.dataclass
class BatteryContainerConfig(GeoVAEConfig):
    """A :class:`GeoVAEConfig` with K battery slots and the adjudication subsystem.

    The GeoVAE frame fields are derived: ``V = n_batteries · battery_rows`` and
    ``enc_hidden = dec_hidden = n_batteries · battery_hidden`` (the concatenated slot widths),
    ``enc_depth = dec_depth = 0``. Leave them at 0 (or give the derived values).

    Attributes:
        n_batteries: K slots.
        battery_rows: v, frame rows per slot (a battery's V).
        battery_hidden: h, hidden width of a slot's encoder and decoder (a battery's hidden).
        routing: ``"soft"`` (softmax over all K) or ``"topk"`` (softmax over the top ``top_k``).
        top_k: batteries per patch for top-k routing.
        route_temperature: initial softmax temperature τ of the scores (cosines in [−1, 1]).
        learn_temperature: learn τ (as a log-scale, clamped to ≤ 100) or keep it fixed.
        cv_anchor_weight: weight of the anchors' CV term (times ``cv_weight``, like every sector).
        balance_weight: weight of the load-balance term ``K · Σ_k f_k · P_k`` (Switch Transformer:
            f_k the share of patches whose top choice is k, P_k the mean routing probability).

    Other fields: see :class:`GeoVAEConfig` (defaults here: 8×8 patches, D = 8, d = 15 — i.e. 16
    latent floats per 8×8×3 patch, 12:1).
    """

    # no named presets: GeoVAE's frame presets do not fit the slot layout
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    preset_family = "BatteryContainer"

    patch_size: int = 8
    V: int = 0
    D: int = 8
    latent_dim: int = 15
    enc_hidden: int = 0
    enc_depth: int = 0
    dec_hidden: int = 0
    dec_depth: int = 0
    bottleneck_hidden: int = 128
    inverse_hidden: int = 128
    n_batteries: int = 256
    battery_rows: int = 8
    battery_hidden: int = 8
    routing: Literal["soft", "topk"] = "soft"
    top_k: int = 8
    route_temperature: float = 0.1
    learn_temperature: bool = True
    cv_anchor_weight: float = 0.1
    balance_weight: float = 0.01

    def __post_init__(self) -> None:
        for name in ("n_batteries", "battery_rows", "battery_hidden", "top_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        derived = {
            "V": self.n_batteries * self.battery_rows,
            "enc_hidden": self.n_batteries * self.battery_hidden,
            "dec_hidden": self.n_batteries * self.battery_hidden,
        }
        for name, value in derived.items():
            given = int(getattr(self, name))
            if given not in (0, value):
                raise ValueError(
                    f"{name}={given} contradicts the slots: it is derived as {value} "
                    f"(n_batteries={self.n_batteries}, battery_rows={self.battery_rows}, "
                    f"battery_hidden={self.battery_hidden}); leave it at 0"
                )
            setattr(self, name, value)
        if self.enc_depth or self.dec_depth:
            raise ValueError("a battery container has no residual blocks: enc_depth and dec_depth must be 0")
        if self.routing not in ("soft", "topk"):
            raise ValueError(f"routing must be 'soft' or 'topk', got {self.routing!r}")
        if self.routing == "topk" and self.top_k > self.n_batteries:
            raise ValueError(f"top_k={self.top_k} exceeds n_batteries={self.n_batteries}")
        if self.battery_rows < 5 or self.D < 4:
            raise ValueError(
                f"anchor arrays need battery_rows ≥ 5 and D ≥ 4 (pentachoron CV); got {self.battery_rows}, {self.D}"
            )
        if not (self.route_temperature > 0 and math.isfinite(self.route_temperature)):
            raise ValueError(f"route_temperature must be > 0, got {self.route_temperature}")
        for name in ("cv_anchor_weight", "balance_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
        super().__post_init__()

    @property
    def slot_floats(self) -> int:
        """``v·D`` frame floats per slot."""
        return self.battery_rows * self.D


@dataclasses.dataclass
class BatteryContainerOutput(GeoVAEOutput):
    """:class:`GeoVAEOutput` plus the adjudication terms (0-d; logged by the trainer).

    Attributes:
        cv_anchor: mean CV of the K anchor arrays (readout).
        cv_anchor_loss: mean ``(cv − target_cv(D))²`` of the anchor arrays (with gradient).
        route_balance: load-balance term (1 at uniform use).
        route_entropy: mean routing entropy divided by log K (1 = uniform, 0 = one battery).
        route_active: share of batteries that are some patch's top choice in this batch.
        route_scale: the softmax scale 1/τ.
    """

    cv_anchor: torch.Tensor | None = None
    cv_anchor_loss: torch.Tensor | None = None
    route_balance: torch.Tensor | None = None
    route_entropy: torch.Tensor | None = None
    route_active: torch.Tensor | None = None
    route_scale: torch.Tensor | None = None


# ============================================================================================ slots
class SlotEncoder(nn.Module):
    """K battery encoders side by side: ``Linear(P→K·h)`` (dense) → GELU → K × ``Linear(h→f)``.

    Slot k's input projection is rows ``[k·h, (k+1)·h)`` of ``in_proj``; its output projection is
    ``out_w[k]`` (f×h, orthogonal at init as a battery's), ``out_b[k]``.

    Shapes:
        ``(..., P) → (..., K·f)``.
    """

    def __init__(self, n_slots: int, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.n_slots, self.hidden, self.out_dim = n_slots, hidden, out_dim
        self.in_proj = nn.Linear(in_dim, n_slots * hidden)
        self.act = nn.GELU()
        self.out_w = nn.Parameter(torch.empty(n_slots, out_dim, hidden))
        self.out_b = nn.Parameter(torch.empty(n_slots, out_dim))
        with torch.no_grad():
            for k in range(n_slots):
                nn.init.orthogonal_(self.out_w[k])
            nn.init.uniform_(self.out_b, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., P) → (..., K·f)``."""
        lead = x.shape[:-1]
        h = self.act(self.in_proj(x)).reshape(-1, self.n_slots, self.hidden).transpose(0, 1)  # (K, T, h)
        y = torch.baddbmm(self.out_b.unsqueeze(1), h, self.out_w.transpose(1, 2))  # (K, T, f)
        return y.transpose(0, 1).reshape(*lead, self.n_slots * self.out_dim)


class SlotDecoder(nn.Module):
    """K battery decoders, mixed by routing weights: ``Σ_k r_k · (W_k GELU(U_k m_k + c_k) + b_k)``.

    Slot k's input projection is ``in_w[k]`` (h×f), ``in_b[k]``; its output projection is columns
    ``[k·h, (k+1)·h)`` of ``out_proj`` (no bias) plus ``out_b[k]`` — so the mixture is one dense
    ``Linear(K·h → P)`` on the routed hidden ``r ⊗ GELU(…)`` plus ``r · out_b``.

    Shapes:
        ``m (..., K·f)``, ``r (..., K)`` → ``(..., P)`` and the pre-activations ``(..., K·h)``.
    """

    def __init__(self, n_slots: int, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.n_slots, self.hidden, self.in_dim = n_slots, hidden, in_dim
        self.in_w = nn.Parameter(torch.empty(n_slots, hidden, in_dim))
        self.in_b = nn.Parameter(torch.empty(n_slots, hidden))
        self.act = nn.GELU()
        self.out_proj = nn.Linear(n_slots * hidden, out_dim, bias=False)
        self.out_b = nn.Parameter(torch.empty(n_slots, out_dim))
        with torch.no_grad():
            # each slot initialised as a fresh battery decoder (nn.Linear defaults per slot)
            for t, fan_in in ((self.in_w, in_dim), (self.in_b, in_dim), (self.out_b, hidden)):
                nn.init.uniform_(t, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
            nn.init.uniform_(self.out_proj.weight, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))

    def pre_activation(self, m: torch.Tensor) -> torch.Tensor:
        """``(..., K·f) → (..., K, h)`` slot pre-activations ``U_k m_k + c_k``."""
        lead = m.shape[:-1]
        x = m.reshape(-1, self.n_slots, self.in_dim).transpose(0, 1)  # (K, T, f)
        pre = torch.baddbmm(self.in_b.unsqueeze(1), x, self.in_w.transpose(1, 2))  # (K, T, h)
        return pre.transpose(0, 1).reshape(*lead, self.n_slots, self.hidden)

    def forward(self, m: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Routed mixture of the slot decoders.

        Args:
            m: ``(..., K·f)`` decoder-side frames (slot-major).
            r: ``(..., K)`` routing weights.

        Returns:
            ``(out (..., P), pre (..., K·h))``.
        """
        pre = self.pre_activation(m)
        hid = self.act(pre) * r.unsqueeze(-1).to(pre.dtype)
        out = self.out_proj(hid.flatten(-2)) + r.to(pre.dtype) @ self.out_b
        return out, pre.flatten(-2)


# ============================================================================================ model
@register_model
class BatteryContainer(GeoVAE):
    """The CV battery container (see the module docstring).

    Submodules: ``encoder`` (:class:`SlotEncoder`), ``bottleneck``, ``cross_attn``, ``inverse``,
    ``inverse_gain`` (as GeoVAE), ``decoder`` (:class:`SlotDecoder`), ``smooth``; adjudication:
    ``anchors`` ``(K, v, D)`` and ``route_logit_scale`` (log 1/τ).

    Args:
        config: a :class:`BatteryContainerConfig`.

    Example:
        >>> cfg = BatteryContainerConfig(n_batteries=4, battery_rows=6, D=4, battery_hidden=4, latent_dim=7)
        >>> model = BatteryContainer(cfg)
        >>> model(torch.randn(2, 3, 16, 16)).recon.shape
        torch.Size([2, 3, 16, 16])
    """

    model_type: ClassVar[str] = "battery_container"
    config_class: ClassVar[type] = BatteryContainerConfig
    config: BatteryContainerConfig
    loss_weight_names: ClassVar[tuple[str, ...]] = (
        *GeoVAE.loss_weight_names,
        "cv_anchor_weight",
        "balance_weight",
    )

    def __init__(self, config: BatteryContainerConfig) -> None:
        # GeoVAE builds every shared sector (bottleneck, cross-attention, inverse, gain, smooth) in
        # its order; the two slot sectors come from the builders below, the adjudication after.
        super().__init__(config)
        c = config
        self.anchors = nn.Parameter(F.normalize(torch.randn(c.n_batteries, c.battery_rows, c.D), dim=-1))
        self.route_logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / c.route_temperature)), requires_grad=c.learn_temperature
        )
        self._anchor_target = target_cv(c.D)
        self._capture: dict[str, torch.Tensor] | None = None

    def _build_encoder(self) -> nn.Module:
        """K slot encoders (:class:`SlotEncoder`) instead of GeoVAE's dense ResidualMLP."""
        c = self.config
        return SlotEncoder(c.n_batteries, self.pixel_floats_per_patch, c.battery_hidden, c.slot_floats)

    def _build_decoder(self) -> nn.Module:
        """K routed slot decoders (:class:`SlotDecoder`) instead of GeoVAE's dense ResidualMLP."""
        c = self.config
        return SlotDecoder(c.n_batteries, c.slot_floats, c.battery_hidden, self.pixel_floats_per_patch)

    # ------------------------------------------------------------------ adjudication
    @property
    def anchor_target(self) -> float:
        """``target_cv(D)``: the CV band the anchor arrays are held in."""
        return self._anchor_target

    @property
    def route_scale(self) -> torch.Tensor:
        """0-d softmax scale 1/τ (clamped to ≤ 100)."""
        return self.route_logit_scale.exp().clamp(max=100.0)

    def route_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Routing logits from sphere-normalised decoder-side frames.

        Args:
            rows: ``(..., V, D)`` row-normalised M̂ (before the gain), slot-major rows.

        Returns:
            ``(..., K)`` ``scale · (1/v) Σ_i ⟨rows_k[i], Â_k[i]⟩``.
        """
        c = self.config
        a = F.normalize(self.anchors.float(), dim=-1).reshape(c.n_batteries, c.slot_floats)
        x = rows.reshape(*rows.shape[:-2], c.n_batteries, c.slot_floats)
        return (x * a).sum(-1) * (self.route_scale / c.battery_rows)

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, probs)``: the routing weights (soft, or top-k renormalised) and the full softmax."""
        probs = logits.softmax(-1)
        if self.config.routing == "soft":
            return probs, probs
        top = logits.topk(self.config.top_k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(-1))
        return weights, probs

    def anchor_cv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, readout)``: mean ``(cv − target_cv(D))²`` of the K anchor arrays and their mean CV."""
        pts = F.normalize(self.anchors.float(), dim=-1)
        return cv_loss_term(pts, self._anchor_target, self.config.cv_samples)

    # ------------------------------------------------------------------ decode (routing inside)
    def _decode_tokens(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, d+1, gh, gw)`` latent → image, with routing over the battery decoders."""
        f = self._latent_to_frames(z)
        mhat = f["mhat"]
        weights, probs = self.route(self.route_logits(f["rows"]))
        unit, dec_pre = self.decoder(rearrange(mhat, "b n v d -> b n (v d)"), weights)
        out = {
            "image": self._unit_patches_to_image(unit, f["mag"], (z.shape[-2], z.shape[-1])),
            "z": f["zs"],
            "mhat": mhat,
            "dec_pre": dec_pre,
            "route": weights,
            "route_probs": probs,
        }
        if self._capture is not None:
            self._capture.update(out)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> BatteryContainerOutput:
        """GeoVAE's loss (reconstruction, KL, sector CVs) plus the anchors' CV and the load balance.

        Args:
            x: ``(B, C, H, W)`` images in model space.

        Returns:
            :class:`BatteryContainerOutput`.
        """
        self._capture = {}
        try:
            out = super().forward(x)
            captured = self._capture
        finally:
            self._capture = None
        c, w = self.config, self.loss_weights
        probs = captured["route_probs"].reshape(-1, c.n_batteries)
        anchor_loss, anchor_cv = self.anchor_cv()
        mean_p = probs.mean(0)
        top1 = F.one_hot(probs.argmax(-1), c.n_batteries).float()
        share = top1.mean(0)
        balance = c.n_batteries * (share.detach() * mean_p).sum()
        loss = out.loss + w["cv_weight"] * w["cv_anchor_weight"] * anchor_loss + w["balance_weight"] * balance
        with torch.no_grad():
            ent = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean() / math.log(max(c.n_batteries, 2))
            active = (top1.sum(0) > 0).float().mean()
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        fields.update(
            loss=loss,
            cv_anchor=anchor_cv,
            cv_anchor_loss=anchor_loss,
            route_balance=balance,
            route_entropy=ent.detach(),
            route_active=active,
            route_scale=self.route_scale.detach(),
        )
        return BatteryContainerOutput(**fields)

    # ------------------------------------------------------------------ implant
    @torch.no_grad()
    def implant(
        self,
        bank: BatteryBank,
        sectors: Sequence[str] = ("encoder", "decoder", "anchors"),
        indices: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Copy trained batteries into the slots ("implanted as learning starter points").

        Slot k receives battery ``indices[k]``: its encoder (``encoder.in_proj`` rows
        ``[k·h, (k+1)·h)``, ``encoder.out_w[k]``, ``encoder.out_b[k]``), its decoder
        (``decoder.in_w[k]``, ``decoder.in_b[k]``, ``decoder.out_proj`` columns ``[k·h, (k+1)·h)``,
        ``decoder.out_b[k]``) and its prototype as ``anchors[k]``.

        Args:
            bank: a trained :class:`BatteryBank` of matching shape.
            sectors: any of ``"encoder"``, ``"decoder"``, ``"anchors"``.
            indices: bank batteries for the K slots (default ``0 … K−1``; needs a bank of K).

        Returns:
            A summary: slots filled, sectors, bank batteries used.

        Raises:
            ValueError: unknown sector, a shape mismatch between bank and container (patch size,
                channels, rows, D, hidden), or indices that do not fit.
        """
        c, bc = self.config, bank.config
        unknown = sorted(set(sectors) - {"encoder", "decoder", "anchors"})
        if unknown:
            raise ValueError(f"unknown sector(s) {unknown}; choose from encoder, decoder, anchors")
        pairs = {
            "patch_size": (bc.patch_size, c.patch_size),
            "channels": (bc.channels, c.channels),
            "rows (bank V vs battery_rows)": (bc.V, c.battery_rows),
            "D": (bc.D, c.D),
            "hidden (bank hidden vs battery_hidden)": (bc.hidden, c.battery_hidden),
        }
        bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
        if bad:
            detail = ", ".join(f"{k}: bank {a} vs container {b}" for k, (a, b) in bad.items())
            raise ValueError(f"the bank does not fit this container's slots ({detail})")
        if indices is None:
            if bank.n_batteries != c.n_batteries:
                raise ValueError(
                    f"the bank holds {bank.n_batteries} batteries for {c.n_batteries} slots; pass indices "
                    "to choose which batteries fill the slots"
                )
            indices = list(range(c.n_batteries))
        indices = [int(i) for i in indices]
        if len(indices) != c.n_batteries or not all(0 <= i < bank.n_batteries for i in indices):
            raise ValueError(f"indices must name {c.n_batteries} batteries in [0, {bank.n_batteries})")
        if not math.isclose(bc.magnitude_eps, c.magnitude_eps):
            raise ValueError(
                f"the bank was trained with magnitude_eps={bc.magnitude_eps}, the container uses "
                f"{c.magnitude_eps}: the unit-RMS input spaces differ"
            )
        idx = torch.tensor(indices)
        h = c.battery_hidden
        if "encoder" in sectors:
            self.encoder.in_proj.weight.copy_(bank.enc_in_w[idx].reshape(c.n_batteries * h, -1))
            self.encoder.in_proj.bias.copy_(bank.enc_in_b[idx].reshape(-1))
            self.encoder.out_w.copy_(bank.enc_out_w[idx])
            self.encoder.out_b.copy_(bank.enc_out_b[idx])
        if "decoder" in sectors:
            self.decoder.in_w.copy_(bank.dec_in_w[idx])
            self.decoder.in_b.copy_(bank.dec_in_b[idx])
            # out_proj.weight (P, K·h): column block k = battery k's (P, h)
            self.decoder.out_proj.weight.copy_(rearrange(bank.dec_out_w[idx], "k p h -> p (k h)"))
            self.decoder.out_b.copy_(bank.dec_out_b[idx])
        if "anchors" in sectors:
            self.anchors.copy_(F.normalize(bank.prototypes[idx].float(), dim=-1))
        return {"slots": c.n_batteries, "sectors": list(sectors), "batteries": indices}

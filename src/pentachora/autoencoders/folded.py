"""The folded battery container: batteries as the initialisation of a plain GeoVAE.

The routed :class:`~pentachora.autoencoders.container.BatteryContainer` keeps every battery as a
slot at run time (K·v frame rows, K routed decoders) and costs 8.3× a plain GeoVAE step: its
transfer does not pay in wall-clock (``benchmarks/results/batteries.md``). The *folded* container
implants the batteries once and is a plain :class:`~pentachora.autoencoders.geovae.GeoVAE` from then
on — same class, same checkpoint format, same cost per step as a GeoVAE of its widths:

* **frame = the batteries side by side.** K batteries of frame ``v × D`` and hidden width h fold into
  a GeoVAE with ``V = K·v`` rows of dimension D and ``enc_hidden = dec_hidden = K·h``. With the
  default 16 batteries of 8 × 8 frames and h = 16 that is ``V·D = 1024`` and hidden 256 — the
  widths (and parameter count, ±64) of the ``tiny-12`` preset.
* **encoder** ``in_proj`` rows ``[k·h, (k+1)·h)`` = battery k's ``Linear(P→h)``; ``out_proj`` is
  block-diagonal, block k = battery k's ``Linear(h→v·D)``. The residual blocks start as the identity
  (their output projection zeroed), so at implant M is exactly the K battery frames, rows on
  S^(D−1) as each battery's.
* **decoder** ``in_proj`` block-diagonal (block k = battery k's ``Linear(v·D→h)``), residual blocks
  the identity, ``out_proj`` = the K batteries' ``Linear(h→P)`` side by side divided by K: the
  decoder starts as the average of the K battery reconstructions of the frame it is given.
* **bottleneck and inverse** (:func:`spectral_bottleneck_init`, optional) start as the principal
  subspace of the implanted frames: an fp64 eigendecomposition of the frames' covariance on
  calibration images gives whitened principal coordinates; the first bottleneck layer projects on
  them, and the two read-out layers (to μ, and from the latent back to the frame) are ridge
  least-squares fits on the same calibration patches — so before the first step the latent is the
  top-d whitened principal coordinates of the frame and the inverse reconstructs the frame from them.

The batteries' spectral gate is not implanted (a GeoVAE has no S) and neither are the routing
anchors (a folded container does not route). Training is then plain GeoVAE training; nothing
battery-specific runs at train or inference time, which is why its step costs what a GeoVAE's does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from pentachora.autoencoders.battery import BatteryBank, BatteryConfig
from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
from pentachora.nn import patchify

__all__ = ["folded_config", "implant_batteries", "spectral_bottleneck_init"]


def folded_config(
    bank_config: BatteryConfig,
    n_slots: int | None = None,
    latent_dim: int = 15,
    depth: int = 2,
    bottleneck_hidden: int = 128,
    inverse_hidden: int = 128,
    **overrides: Any,
) -> GeoVAEConfig:
    """The :class:`GeoVAEConfig` whose frame and hidden widths hold ``n_slots`` batteries side by side.

    Args:
        bank_config: the bank's battery shape (patch size, channels, v = ``V``, D, h = ``hidden``).
        n_slots: K batteries to fold (default: every battery of the bank).
        latent_dim: d stochastic latent dims per patch (+1 magnitude channel).
        depth: residual blocks in the encoder and in the decoder (they start as the identity).
        bottleneck_hidden, inverse_hidden: widths of the bottleneck and inverse MLPs.
        **overrides: any other :class:`GeoVAEConfig` field (``bounded_heads`` defaults to on).

    Returns:
        ``GeoVAEConfig(V=K·v, D=D, enc_hidden=dec_hidden=K·h, ...)``.

    Raises:
        ValueError: ``n_slots < 1`` or an override that contradicts the folded widths.
    """
    k = bank_config.n_batteries if n_slots is None else int(n_slots)
    if k < 1:
        raise ValueError(f"n_slots must be ≥ 1, got {n_slots}")
    derived = dict(
        patch_size=bank_config.patch_size,
        channels=bank_config.channels,
        V=k * bank_config.V,
        D=bank_config.D,
        enc_hidden=k * bank_config.hidden,
        dec_hidden=k * bank_config.hidden,
        magnitude_eps=bank_config.magnitude_eps,
    )
    clash = {n: (overrides[n], v) for n, v in derived.items() if n in overrides and overrides[n] != v}
    if clash:
        detail = ", ".join(f"{n}={a} (the batteries give {b})" for n, (a, b) in clash.items())
        raise ValueError(f"these fields are set by the folded batteries: {detail}")
    fields = dict(
        latent_dim=latent_dim,
        enc_depth=depth,
        dec_depth=depth,
        bottleneck_hidden=bottleneck_hidden,
        inverse_hidden=inverse_hidden,
        bounded_heads=True,
    )
    fields.update(overrides)
    fields.update(derived)
    return GeoVAEConfig(**fields)


def _check_fits(model: GeoVAE, bank: BatteryBank, n_slots: int) -> None:
    c, bc = model.config, bank.config
    want = {
        "patch_size": bc.patch_size,
        "channels": bc.channels,
        "D": bc.D,
        "V": n_slots * bc.V,
        "enc_hidden": n_slots * bc.hidden,
        "dec_hidden": n_slots * bc.hidden,
    }
    bad = {n: (getattr(c, n), v) for n, v in want.items() if getattr(c, n) != v}
    if bad:
        detail = ", ".join(f"{n}: model {a} vs {b} for {n_slots} batteries" for n, (a, b) in bad.items())
        raise ValueError(f"the GeoVAE does not fold these batteries ({detail}); build it with folded_config")
    if not math.isclose(bc.magnitude_eps, c.magnitude_eps):
        raise ValueError(
            f"the bank was trained with magnitude_eps={bc.magnitude_eps}, the GeoVAE uses "
            f"{c.magnitude_eps}: the unit-RMS input spaces differ"
        )


@torch.no_grad()
def implant_batteries(
    model: GeoVAE, bank: BatteryBank, indices: Sequence[int] | None = None
) -> dict[str, Any]:
    """Fold batteries into a GeoVAE's encoder and decoder (see the module docstring), in place.

    Args:
        model: a :class:`GeoVAE` built from :func:`folded_config` (checked).
        bank: a trained :class:`BatteryBank`.
        indices: the bank batteries for the K slots, in slot order (default: all, ``0 … K−1``).

    Returns:
        ``{"slots": K, "batteries": indices}``.

    Raises:
        ValueError: the model's widths do not fold K of the bank's batteries, or bad indices.
    """
    if indices is None:
        indices = list(range(bank.n_batteries))
    indices = [int(i) for i in indices]
    if not indices or not all(0 <= i < bank.n_batteries for i in indices):
        raise ValueError(f"indices must name batteries in [0, {bank.n_batteries}), got {indices}")
    k = len(indices)
    _check_fits(model, bank, k)
    idx = torch.tensor(indices)
    h = bank.config.hidden
    enc, dec = model.encoder, model.decoder
    dtype = enc.in_proj.weight.dtype
    enc.in_proj.weight.copy_(bank.enc_in_w[idx].reshape(k * h, -1))
    enc.in_proj.bias.copy_(bank.enc_in_b[idx].reshape(-1))
    enc.out_proj.weight.copy_(torch.block_diag(*bank.enc_out_w[idx].unbind(0)).to(dtype))
    enc.out_proj.bias.copy_(bank.enc_out_b[idx].reshape(-1))
    dec.in_proj.weight.copy_(torch.block_diag(*bank.dec_in_w[idx].unbind(0)).to(dtype))
    dec.in_proj.bias.copy_(bank.dec_in_b[idx].reshape(-1))
    dec.out_proj.weight.copy_(rearrange(bank.dec_out_w[idx], "k p h -> p (k h)") / k)
    dec.out_proj.bias.copy_(bank.dec_out_b[idx].mean(0))
    for block in (*enc.blocks, *dec.blocks):
        block.fc2.weight.zero_()
        block.fc2.bias.zero_()
    return {"slots": k, "batteries": indices}


def _pass_through(
    layer: torch.nn.Linear, directions: torch.Tensor, offset: torch.Tensor, scale: float
) -> int:
    """Rows ``2j, 2j+1`` of ``layer`` ← ``±scale · (directionsⱼ · x − offsetⱼ)``; returns the pairs set.

    ``GELU(a) − GELU(−a) = a`` exactly, so the pair carries coordinate j linearly through the GELU
    (read it out as ``(h₂ⱼ − h₂ⱼ₊₁) / scale``). Rows beyond the pairs keep their initialisation.
    """
    pairs = min(directions.shape[0], layer.weight.shape[0] // 2)
    w = scale * directions[:pairs].to(layer.weight.dtype)
    b = -scale * offset[:pairs].to(layer.weight.dtype)
    layer.weight[0 : 2 * pairs : 2], layer.weight[1 : 2 * pairs : 2] = w, -w
    layer.bias[0 : 2 * pairs : 2], layer.bias[1 : 2 * pairs : 2] = b, -b
    return pairs


@torch.no_grad()
def spectral_bottleneck_init(model: GeoVAE, images: torch.Tensor, scale: float = 0.5) -> dict[str, float]:
    """Start the bottleneck and inverse at the principal subspace of the model's frames, in place.

    On the calibration ``images`` (model space): frames M (fp64, ``(n, V·D)``), their covariance's
    eigendecomposition (fp64 ``eigh``), whitened principal coordinates ``c_i = u_iᵀ(M − m̄)/√λ_i``.
    Each coordinate crosses a GELU layer exactly through a ± pair of units (``GELU(a) − GELU(−a) = a``):

    * ``bottleneck[0]``: pairs for the top ``bottleneck_hidden // 2`` coordinates (times ``scale``);
    * ``bottleneck[2]``: μ_j = c_j for j < d (then the bounded head's ``mean_bound · tanh``); the
      log σ² rows get zero weights and keep the bias ``logvar_init``;
    * ``inverse[0]``: pairs passing the (cross-attended) latent through on its first 2d units;
    * ``inverse[2]``: the rank-d principal reconstruction ``M ≈ m̄ + Σ_j √λ_j u_j z_j``.

    Units outside the pairs keep their initialisation and get zero read-out weights (they still
    receive gradients). Before the first step the model is then a rank-d PCA of its own frames.

    Args:
        model: a :class:`GeoVAE` (implanted or not).
        images: ``(B, C, H, W)`` finite calibration images in model space, with at least ``V·D`` patches.
        scale: pre-activation scale of the pairs (any finite value > 0 is exact; smaller keeps the
            units near GELU's linear part, where gradients treat both halves of a pair alike).

    Returns:
        ``explained_variance`` (share of the frame variance in the top d directions), ``patches``,
        ``frame_mse`` (the initial inverse's mean squared frame error, before row normalisation).

    Raises:
        ValueError: bad images or scale, fewer patches than ``V·D``, or ``inverse_hidden < 2d``.
    """
    c = model.config
    if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    d = c.latent_dim
    if c.inverse_hidden < 2 * d or c.bottleneck_hidden < 2 * d:
        raise ValueError(
            f"spectral init passes d={d} coordinates through ± unit pairs: bottleneck_hidden and "
            f"inverse_hidden must be ≥ 2d = {2 * d}, got {c.bottleneck_hidden}, {c.inverse_hidden}"
        )
    model.check_input(images)
    was = model.training
    model.eval()
    try:
        patches = patchify(images, c.patch_size)  # (B, N, P)
        rms, mag = model._magnitude(patches)
        unit = patches / rms.to(patches.dtype)
        frames = F.normalize(rearrange(model.encoder(unit), "b n (v d) -> b n v d", v=c.V).float(), dim=-1)
        b, n = frames.shape[:2]
        m = frames.reshape(b * n, -1).double()
        if m.shape[0] < m.shape[1]:
            raise ValueError(
                f"spectral init needs at least V·D = {m.shape[1]} calibration patches, got {m.shape[0]}"
            )
        mean = m.mean(0)
        cov = (m - mean).T @ (m - mean) / (m.shape[0] - 1)
        lam, vecs = torch.linalg.eigh(cov)
        lam, vecs = lam.flip(0).clamp_min(1e-12 * float(lam.max().clamp_min(1e-30))), vecs.flip(1)
        whiten = (vecs / lam.sqrt()).T  # (VD, VD): row i = u_i / √λ_i
        first, last = model.bottleneck[0], model.bottleneck[2]
        _pass_through(first, whiten, whiten @ mean, scale)
        last.weight.zero_()
        last.bias[:d] = 0.0
        eye = torch.eye(d, dtype=last.weight.dtype) / scale
        last.weight[:d, 0 : 2 * d : 2], last.weight[:d, 1 : 2 * d : 2] = eye, -eye
        inv0, inv2 = model.inverse[0], model.inverse[2]
        _pass_through(
            inv0, torch.eye(d, d + 1, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), scale
        )
        basis = (vecs[:, :d] * lam[:d].sqrt()).to(inv2.weight.dtype) / scale  # (VD, d)
        inv2.weight.zero_()
        inv2.weight[:, 0 : 2 * d : 2], inv2.weight[:, 1 : 2 * d : 2] = basis, -basis
        inv2.bias.copy_(mean.to(inv2.bias.dtype))
        # the frame error of the model's own path (bounded μ → cross-attention → inverse)
        mu, _ = model._bound_heads(*model.bottleneck(m.to(first.weight.dtype)).float().chunk(2, dim=-1))
        zs = mu.reshape(b, n, d)
        for layer in model.cross_attn:
            zs = layer(zs)
        inv_in = torch.cat([zs, mag.to(zs.dtype)], dim=-1).reshape(b * n, d + 1)
        frame_mse = float((model.inverse(inv_in).double() - m).square().mean())
    finally:
        model.train(was)
    return {
        "explained_variance": float(lam[:d].sum() / lam.sum()),
        "patches": float(m.shape[0]),
        "frame_mse": frame_mse,
        "frame_var": float(lam.sum() / m.shape[1]),
    }

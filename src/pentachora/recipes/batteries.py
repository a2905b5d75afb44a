"""Battery recipes: train a bank of K miniature SVD batteries, time it against a loop, build an
implanted :class:`~pentachora.autoencoders.BatteryContainer` and check its linear export, or fold
the batteries into a plain GeoVAE (:func:`build_folded_container`, the layout whose transfer pays).

Used by ``pentachora train batteries|container``, ``pentachora export-linear`` and
``benchmarks/batteries.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pentachora.autoencoders.battery import BatteryBank, BatteryConfig
from pentachora.autoencoders.container import BatteryContainer, BatteryContainerConfig
from pentachora.autoencoders.export import LinearExport, count_flops
from pentachora.autoencoders.folded import folded_config, implant_batteries, spectral_bottleneck_init
from pentachora.autoencoders.geovae import GeoVAE
from pentachora.data.regimes import RegimeSource, parse_regimes
from pentachora.errors import CheckpointError, ConfigError
from pentachora.recipes.autoencoders import GEOVAE_ALIGN_WEIGHTS, GEOVAE_HANDOFF_WEIGHTS, geovae_schedule
from pentachora.training import PhaseCallback, TrainConfig, Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "ALIGN_WEIGHTS",
    "FOLDED_ALIGN_FRACTION",
    "HANDOFF_WEIGHTS",
    "battery_config_for",
    "build_container",
    "build_folded_container",
    "container_phases",
    "export_report",
    "load_battery_bank",
    "make_container",
    "regime_source",
    "time_batched_vs_loop",
    "train_battery_bank",
]

#: CV sector weights of the container: GeoVAE's schedule, the same objects (defined once in
#: :mod:`pentachora.recipes.autoencoders`; the anchors are held at ``cv_anchor_weight`` throughout).
ALIGN_WEIGHTS = GEOVAE_ALIGN_WEIGHTS
HANDOFF_WEIGHTS = GEOVAE_HANDOFF_WEIGHTS


def battery_config_for(regimes: str, **shape: Any) -> BatteryConfig:
    """The :class:`BatteryConfig` of one battery per regime of ``regimes`` (K = their count).

    Raises:
        ConfigError: a bad regime spec or a shape the config refuses (the message names the spec).
    """
    try:
        return BatteryConfig(n_batteries=len(parse_regimes(regimes)), **shape)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--regimes {regimes!r}: {exc}") from exc


def regime_source(
    regimes: str,
    config: BatteryConfig,
    batch_size: int,
    seed: int = 0,
    noise_image_size: int = 32,
    heavy_tails: str = "clamp",
    cluster_patches: int = 32768,
) -> RegimeSource:
    """The training patches of every battery of ``regimes``, in ``config``'s patch space (``batch_size``
    patches per battery per step)."""
    if heavy_tails not in ("clamp", "raw"):
        raise ConfigError(f"heavy_tails must be 'clamp' or 'raw', got {heavy_tails!r}")
    return RegimeSource(
        parse_regimes(regimes),
        batch_size,
        patch_size=config.patch_size,
        channels=config.channels,
        seed=seed,
        noise_image_size=noise_image_size,
        heavy_tails=heavy_tails,  # type: ignore[arg-type]
        cluster_patches=cluster_patches,
        magnitude_eps=config.magnitude_eps,
    )


def train_battery_bank(
    regimes: str,
    config: BatteryConfig,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    out_file: str | Path | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
    eval_patches: int = 64,
    noise_image_size: int = 32,
    heavy_tails: str = "clamp",
    cluster_patches: int = 32768,
    source: RegimeSource | None = None,
) -> tuple[BatteryBank, dict[str, Any]]:
    """Train K batteries at once (one batched module, the one Trainer) and summarise them.

    The bank's loss is the sum of the battery losses and gradient clipping is off (a global clip
    would couple the batteries), so this is K independent AdamW trainings in one module.

    Args:
        regimes: a :func:`~pentachora.data.regimes.parse_regimes` spec; K = its length.
        config: battery shape (``n_batteries`` is replaced by K).
        steps, batch_size, lr, weight_decay, seed: training settings (batch_size = patches per battery).
        out_file: write the bank here when given (`.safetensors`: one file, else a checkpoint folder;
            see :class:`~pentachora.autoencoders.BatteryBank`).
        run_dir: trainer run folder (metrics, checkpoints) when given; in memory otherwise.
        progress: tqdm progress bar.
        eval_patches: held-out patches per battery for the metadata.
        noise_image_size, heavy_tails, cluster_patches: :class:`RegimeSource` settings.
        source: a prebuilt source (its regimes must match ``regimes``).

    Returns:
        ``(bank, report)``: the trained bank (``bank.info`` filled) and timings/aggregates.
    """
    parsed = parse_regimes(regimes)
    config = dataclasses.replace(config, n_batteries=len(parsed))
    t0 = time.perf_counter()
    if source is None:
        source = regime_source(
            regimes, config, batch_size, seed, noise_image_size, heavy_tails, cluster_patches
        )
    source_s = time.perf_counter() - t0
    torch.manual_seed(seed)
    bank = BatteryBank(config)
    cfg = TrainConfig(
        steps=steps,
        batch_size=len(parsed),  # the leading axis of a (K, B, C, p, p) batch; B is per battery
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=max(1, steps // 20),
        grad_clip=None,
        seed=seed,
        log_every=max(1, steps // 20),
        out_dir=str(run_dir) if run_dir is not None else None,
        progress=progress,
        tensorboard=False,
    )
    trainer = Trainer(bank, cfg, source, param_groups=bank.param_groups(lr, weight_decay))
    t1 = time.perf_counter()
    result = trainer.fit(resume=run_dir is not None)
    train_s = time.perf_counter() - t1
    bank = trainer.unwrapped_model.to("cpu")
    records = bank.summarize(
        source.eval_batch(eval_patches), [source.describe(k) for k in range(len(parsed))]
    )
    mses = [r["final_mse"] for r in records]
    report = {
        "regimes": regimes,
        "n_batteries": len(parsed),
        "params_per_battery": config.params_per_battery,
        "params_total": bank.num_parameters(),
        "steps": result.steps,
        "batch_size": batch_size,
        "train_wall_s": train_s,
        "source_build_s": source_s,
        "nonfinite_steps": result.nonfinite_steps,
        "final_mse_mean": statistics.mean(mses),
        "final_mse_median": statistics.median(mses),
        "final_mse_worst": max(mses),
        "cv_mean": statistics.mean(r["cv"] for r in records),
        "cv_target": bank.cv_target,
        "erank_mean": statistics.mean(r["erank"] for r in records),
        "prototype_coherence_mean": statistics.mean(r["prototype_coherence"] for r in records),
        "by_kind": _by_kind(records),
        "torch_threads": torch.get_num_threads(),
    }
    if out_file is not None:
        bank.save_pretrained(out_file, extra_metadata={k: v for k, v in report.items() if k != "by_kind"})
        report["out_file"] = str(out_file)
    return bank, report


def _by_kind(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({r.get("kind", "?") for r in records}):
        rs = [r for r in records if r.get("kind", "?") == kind]
        out[kind] = {
            "n": len(rs),
            "final_mse_mean": statistics.mean(r["final_mse"] for r in rs),
            "cv_mean": statistics.mean(r["cv"] for r in rs),
            "erank_mean": statistics.mean(r["erank"] for r in rs),
        }
    return out


def _adamw_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    out = model(x)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def time_batched_vs_loop(
    config: BatteryConfig,
    source: RegimeSource,
    steps: int = 3,
    lr: float = 1e-3,
    seed: int = 0,
    patch_svae_steps: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Time train steps (forward, backward, AdamW) of the batched bank against a loop of batteries.

    Three contenders on the same batches, in this process, interleaved per step (the machine may be
    shared, so only ratios are meaningful):

    * ``batched``: the K-battery :class:`BatteryBank` (one module);
    * ``loop_bank1``: a Python loop over K one-battery banks (identical code at K = 1);
    * ``loop_patchsvae``: a Python loop over the K batteries as standalone :class:`PatchSVAE`
      modules (``bank.battery(k)``; what "K separately run batteries" means; it also computes
      PatchSVAE's per-step readouts), timed for ``patch_svae_steps`` steps.

    Returns:
        Median seconds per step of each and the speed-ups ``loop / batched``.
    """
    from tqdm.auto import tqdm

    k = config.n_batteries
    torch.manual_seed(seed)
    bank = BatteryBank(config)
    singles = [BatteryBank(dataclasses.replace(config, n_batteries=1)) for _ in range(k)]
    with torch.no_grad():
        for i, one in enumerate(singles):
            for (_, p1), (_, pk) in zip(one.named_parameters(), bank.named_parameters(), strict=True):
                p1.copy_(pk[i : i + 1])
    svaes = [bank.battery(i) for i in range(k)] if patch_svae_steps else []
    opt_b = torch.optim.AdamW(bank.param_groups(lr, 0.01))
    opt_1 = [torch.optim.AdamW(one.param_groups(lr, 0.01)) for one in singles]
    opt_s = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr) for m in svaes]
    times: dict[str, list[float]] = {"batched": [], "loop_bank1": [], "loop_patchsvae": []}
    for step in tqdm(range(1, steps + 2), desc="batched vs loop", disable=not progress):
        x = source.batch(step)
        t = time.perf_counter()
        _adamw_step(bank, opt_b, x)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(k):
            _adamw_step(singles[i], opt_1[i], x[i : i + 1])
        tl = time.perf_counter() - t
        if step > 1:  # step 1 warms up allocators and caches
            times["batched"].append(tb)
            times["loop_bank1"].append(tl)
        if svaes and 1 < step <= 1 + patch_svae_steps:
            t = time.perf_counter()
            for i in range(k):
                _adamw_step(svaes[i], opt_s[i], x[i])
            times["loop_patchsvae"].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items() if v}
    out: dict[str, Any] = {
        "n_batteries": k,
        "steps_timed": steps,
        "patch_svae_steps_timed": patch_svae_steps,
        "batch_size": source.batch_size,
        "s_per_step": med,
        "samples": times,
        "speedup_vs_loop_bank1": med["loop_bank1"] / med["batched"],
        "torch_threads": torch.get_num_threads(),
    }
    if "loop_patchsvae" in med:
        out["speedup_vs_loop_patchsvae"] = med["loop_patchsvae"] / med["batched"]
    return out


def container_phases(steps: int, align_fraction: float = 0.1) -> PhaseCallback:
    """The container's CV schedule: GeoVAE's, :func:`~pentachora.recipes.geovae_schedule` (the
    container is a GeoVAE; one definition of the phases and their weights)."""
    return geovae_schedule(steps, align_fraction=align_fraction)


def build_container(
    bank: BatteryBank | None,
    implant: bool = True,
    seed: int = 0,
    sectors: tuple[str, ...] = ("encoder", "decoder", "anchors"),
    **overrides: Any,
) -> BatteryContainer:
    """A container shaped like ``bank`` (or by ``overrides`` alone), implanted or randomly initialised.

    The model is built under ``torch.manual_seed(seed)`` either way, so an implanted and a random
    container of the same seed differ only in the implanted sectors.
    """
    shape: dict[str, Any] = {}
    if bank is not None:
        bc = bank.config
        shape = dict(
            patch_size=bc.patch_size,
            channels=bc.channels,
            n_batteries=bc.n_batteries,
            battery_rows=bc.V,
            D=bc.D,
            battery_hidden=bc.hidden,
            magnitude_eps=bc.magnitude_eps,
        )
    config = BatteryContainerConfig(**{**shape, **overrides})
    torch.manual_seed(seed)
    model = BatteryContainer(config)
    if implant:
        if bank is None:
            raise ValueError("implant=True needs a bank")
        model.implant(bank, sectors=sectors)
    return model


#: Alignment-phase fraction of a folded container with implanted batteries: none. Its frames come
#: from batteries trained under CV discipline and its bottleneck from their principal subspace, so
#: the geometry-first phase has nothing to align and only pulls the implanted weights away
#: (``benchmarks/results/folded_container.md`` measures both schedules).
FOLDED_ALIGN_FRACTION = 0.0


def build_folded_container(
    bank: BatteryBank | None,
    calibration: torch.Tensor | None = None,
    implant: bool = True,
    seed: int = 0,
    indices: list[int] | None = None,
    latent_dim: int = 15,
    depth: int = 2,
    spectral_scale: float = 0.5,
    battery_config: BatteryConfig | None = None,
    **overrides: Any,
) -> tuple[GeoVAE, dict[str, Any]]:
    """The folded battery container: a plain :class:`GeoVAE` that starts from the batteries.

    Built under ``torch.manual_seed(seed)`` with :func:`~pentachora.autoencoders.folded.folded_config`
    (the bank's shape, or ``battery_config`` without a bank), then — when ``implant`` — the batteries
    ``indices`` (default all) folded into its encoder and decoder, and — when ``calibration`` images
    are given — the bottleneck and inverse started at the principal subspace of the frames
    (:func:`~pentachora.autoencoders.folded.spectral_bottleneck_init`).

    Returns:
        ``(model, report)``: report = ``slots``, ``batteries`` (or ``None``), ``spectral`` (the init's
        report or ``None``), ``build_s`` (seconds spent implanting and initialising).

    Raises:
        ValueError: no bank and no ``battery_config``, ``implant`` without a bank, or a shape mismatch.
    """
    if bank is None and battery_config is None:
        raise ValueError("a folded container needs a bank or a battery_config for its shape")
    if implant and bank is None:
        raise ValueError("implant=True needs a bank")
    shape = bank.config if bank is not None else battery_config
    n_slots = len(indices) if indices is not None else None
    config = folded_config(shape, n_slots=n_slots, latent_dim=latent_dim, depth=depth, **overrides)
    torch.manual_seed(seed)
    model = GeoVAE(config)
    t0 = time.perf_counter()
    slots = config.V // shape.V
    report: dict[str, Any] = {"slots": slots, "batteries": None, "spectral": None}
    if implant:
        report.update(implant_batteries(model, bank, indices))
    if calibration is not None:
        report["spectral"] = spectral_bottleneck_init(model, calibration, scale=spectral_scale)
    report["build_s"] = time.perf_counter() - t0
    return model, report


@torch.no_grad()
def export_report(
    model: BatteryContainer, x: torch.Tensor, merge_mu_inverse: bool | None = None
) -> dict[str, Any]:
    """Fold ``model``, compare it with ``model.reconstruct`` on ``x`` and count FLOPs.

    Returns:
        ``max_abs_diff``, ``linear_fraction`` (1 FLOP per element for non-matmul ops),
        ``linear_fraction_elementwise_x10`` (each non-linear element costs 10), stage table,
        linear-map counts before and after folding, and the folded ``module``.
    """
    model.eval()
    export = LinearExport.from_container(model, merge_mu_inverse=merge_mu_inverse)
    ref = model.reconstruct(x)
    got = export(x)
    flops = count_flops(export, x)
    nonlin = flops["total_flops"] - flops["linear_flops"]
    c = model.config
    # unfolded: slot enc in/out, slot dec in/out (K each, or 4 grouped), B1, B2, I1, I2, gain, router,
    # per cross-attention layer LN affine + qkv + out, smooth conv1/conv2
    before_grouped = 4 + 2 + 2 + 1 + 1 + 3 * c.n_cross + 2
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "ref_abs_max": float(ref.abs().max()),
        "linear_fraction": flops["linear_fraction"],
        "linear_fraction_elementwise_x10": flops["linear_flops"] / (flops["linear_flops"] + 10 * nonlin),
        "flops_per_patch": flops["total_flops"] / flops["patches"],
        "linear_flops_per_patch": flops["linear_flops"] / flops["patches"],
        "linear_maps_after": export.linear_map_count(),
        "linear_maps_before_grouped": before_grouped,
        "linear_maps_before_per_battery": before_grouped - 4 + 4 * c.n_batteries,
        "merged_mu_inverse": export.merged_inverse,
        "stages": flops["stages"],
        "module": export,
    }


def make_container(
    layout: str,
    bank: BatteryBank | None,
    implant: bool = True,
    seed: int = 0,
    latent_dim: int = 15,
    n_batteries: int = 64,
    calibration: torch.Tensor | None = None,
    depth: int = 2,
    sectors: tuple[str, ...] = ("encoder", "decoder", "anchors"),
    routing: str = "soft",
    top_k: int = 8,
    **overrides: Any,
) -> tuple[GeoVAE | BatteryContainer, str]:
    """The container ``train container`` trains, and its label.

    ``layout="folded"``: :func:`build_folded_container` (a plain GeoVAE of the batteries' widths;
    ``calibration`` images start its bottleneck at the frames' principal subspace). ``"routed"``:
    :func:`build_container` (the seed's container, every battery a routed slot). Without a bank the
    shape comes from ``n_batteries`` (and ``overrides``).

    Raises:
        ConfigError: an unknown layout, implanting without a bank, or a shape the configs refuse.
    """
    if layout not in ("folded", "routed"):
        raise ConfigError(f"layout must be 'folded' or 'routed', got {layout!r}")
    if implant and bank is None:
        raise ConfigError("implanting needs --batteries BANK.safetensors (or pass --no-implant)")
    init = "implanted" if implant else "random init"
    try:
        if layout == "folded":
            shape = None if bank is not None else BatteryConfig(n_batteries=n_batteries)
            model, report = build_folded_container(
                bank, calibration=calibration, implant=implant, seed=seed, latent_dim=latent_dim, depth=depth,
                battery_config=shape, **overrides,
            )  # fmt: skip
            if report["spectral"] is not None:
                share = report["spectral"]["explained_variance"]
                init += f", spectral bottleneck ({share:.0%} of the frame variance)"
            return model, f"folded BatteryContainer[K={report['slots']}, {init}] (a GeoVAE)"
        overrides.update(latent_dim=latent_dim, routing=routing, top_k=top_k)
        if bank is None:
            overrides.setdefault("n_batteries", n_batteries)
        routed = build_container(bank, implant=implant, seed=seed, sectors=sectors, **overrides)
        return routed, f"BatteryContainer[K={routed.config.n_batteries}, {init}]"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"container config: {exc}") from exc


def load_battery_bank(path: str | Path) -> BatteryBank:
    """A summarised bank written by :func:`train_battery_bank` (its file or folder).

    Raises:
        CheckpointError: a bad file or folder, or a bank without per-battery records (the message
            names the path).
    """
    try:
        bank = BatteryBank.from_pretrained(path)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot use {path}: {exc}") from exc
    if not bank.info:
        raise CheckpointError(
            f"cannot use {path}: it has no batteries.json — a bank checkpoint without per-battery metadata "
            "(summarise it, e.g. with `pentachora train batteries`, and save it again)"
        )
    return bank

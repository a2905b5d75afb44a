"""Autoencoder benchmark: GeoVAE against PatchSVAE, the NoSVD ablation and diffusers' AutoencoderKL.

One process, the same data (random crops of the embedded training photos mixed with the 16 noise
types), the same seed, the same optimizer and the same optimizer-step budget for every contender,
all trained by the one :class:`pentachora.training.Trainer`. Contenders are compared at equal
**true** latent floats per 16×16×3 patch (48:1 → 16 floats, 12:1 → 64 floats):

* ``GeoVAE``       — the SVD-free geometric VAE (``tiny-48`` / ``tiny-12``).
* ``PatchSVAE``    — faithful canonical SVD model; its decoder consumes U, S and Vᵀ, so it is listed
                     with its true floats (an expansion, not a bottleneck) as the reference the
                     timings are divided by. Its "ratio" by the seeds' count of S alone is the row's.
* ``NoSVD``        — the seed's ablation (``PatchSVAE(readout="linear")``, round 1), D floats.
* ``AutoencoderKL``— diffusers' conv VAE from scratch, f8 with 4 (48:1) or 16 (12:1) channels.

Metrics: held-out PSNR / SSIM on the whole held-out photos (centre-cropped to a multiple of 16) in
[0, 1] pixel space; per-noise-type MSE in model space; train-step time and inference throughput as
ratios to PatchSVAE measured in this run (interleaved repeats, median); parameters; peak memory of
one train step (CUDA: ``max_memory_allocated``; CPU: peak-RSS growth in a fresh subprocess);
skipped NaN/inf steps. A speed section times the reference-size pair (GeoVAE ``48:1`` vs PatchSVAE
``fresnel``) for a few steps.

``--mode stability`` instead trains GeoVAE ``tiny-48`` on all 16 noise types with **raw** heavy
tails (fixed grad-clip 1.0) and writes gradient-norm and CV traces (JSON + PNG).

``--mode lr-sweep`` (issue 13, learning-rate robustness): GeoVAE ``tiny-48`` (bounded posterior
heads, the preset default), the same with the old unbounded heads, the NoSVD readout and PatchSVAE,
trained interleaved on the same batches at every ``--lrs`` × ``--seeds``; reports non-finite steps,
held-out PSNR next to predictors that learn nothing (mid-grey, mean colour), max z std and max KL.

``--mode fair`` (issue 13, equal budget): GeoVAE, NoSVD, diffusers' AutoencoderKL and AutoencoderTiny
(f8, 4 / 16 channels, 1.2–1.7M parameters) and PatchSVAE (non-bottleneck reference) at 48:1 and 12:1
get the same budget per seed — ``--budget-kind cpu`` (process CPU seconds, ``time.process_time()``,
barely changed by other processes' load), ``wall`` or ``steps`` — the same augmented crops
(:class:`pentachora.data.images.AugmentedCropSource`: the 7 colour + 6 grayscale training photos at
scales 1, 0.75, 0.5, flips and 90° turns; chelsea / coffee held out), the same seeds, trained
round-robin in chunks of ``--chunk-steps`` steps so that every contender sees the same machine load.
Caveat measured here: with ``--threads 2`` on an oversubscribed machine, process CPU seconds per step
grew several-fold (idle OpenMP workers spin while their partner thread is descheduled, and that spin
is charged), so on a loaded machine use ``--threads 1`` with ``--budget-kind cpu``.
Outputs: held-out PSNR (whole photos) with the spread over seeds, the training-photo minus held-out gap,
learning curves (PNG), and the rate: every latent quantised per channel to ``--bits`` (min/max range),
bits per pixel raw and after zlib / lzma, next to Pillow's JPEG and WebP (one PSNR-vs-bpp PNG).

Usage::

    python benchmarks/autoencoders.py --mode lr-sweep                      # 3 lrs × 2 seeds × 300 steps
    python benchmarks/autoencoders.py --mode fair                          # default, ≈90 min on 2 idle cores (estimate, not run)
    python benchmarks/autoencoders.py --mode fair --quick --threads 1      # 45 CPU s per contender, 1 seed
    python benchmarks/autoencoders.py --mode fair --gpu                    # GPU: 120 wall s, 128² crops, 3 seeds (≈60 min)
    python benchmarks/autoencoders.py --quick                 # CPU-sized, writes results/autoencoders.*
    python benchmarks/autoencoders.py --steps 3000 --batch-size 32 --image-size 64
    python benchmarks/autoencoders.py --mode stability --steps 3000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pentachora.autoencoders.geovae import SECTORS, GeoVAE, GeoVAEConfig
from pentachora.autoencoders.kl_baseline import AutoencoderKLAdapter, AutoencoderKLAdapterConfig
from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig
from pentachora.data import (
    NOISE_TYPES,
    VALIDATION_PHOTOS,
    NoiseSource,
    load_sample_photos,
    noise_eval_sets,
    psnr,
    ssim,
    to_model_space,
    to_pixel_space,
)
from pentachora.modeling import PentachoraModel
from pentachora.recipes import GEOVAE_ALIGN_WEIGHTS, GEOVAE_HANDOFF_WEIGHTS, geovae_schedule
from pentachora.recipes.benchmarking import BudgetRunner, BudgetSettings, MixedSource, train_steps
from pentachora.recipes.benchmarking import train_interleaved as harness_train_interleaved
from pentachora.training import Callback, TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("benchmarks.autoencoders")


# ---------------------------------------------------------------------------------------- data
def heldout_images(multiple: int = 16, split: str = "heldout") -> list[torch.Tensor]:
    """The photos of ``split`` (held-out by default; ``"validation"`` for choosing options) in [0, 1],
    centre-cropped to sides that are multiples of ``multiple``."""
    out = []
    for im in load_sample_photos(split):
        h, w = im.shape[-2:]
        hh, ww = h - h % multiple, w - w % multiple
        top, left = (h - hh) // 2, (w - ww) // 2
        out.append(im[:, top : top + hh, left : left + ww].contiguous())
    return out


# ---------------------------------------------------------------------------------------- contenders
def _parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["logvar_init=-8", "free_bits=0.1"]`` → ``{"logvar_init": -8.0, "free_bits": 0.1}`` (JSON values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def contenders(
    ratio: int, geo_overrides: dict[str, Any] | None = None
) -> dict[str, Callable[[], PentachoraModel]]:
    """Model factories at one ratio (48 or 12), CPU-sized, comparable parameter counts (~1.2–1.8M)."""
    if ratio == 48:
        geo, svae_patch, kl = "tiny-48", 16, "tiny-f8c4"
    elif ratio == 12:
        geo, svae_patch, kl = "tiny-12", 8, "tiny-f8c16"
    else:
        raise ValueError(f"ratio must be 48 or 12, got {ratio}")
    svae_kw = dict(patch_size=svae_patch, V=64, D=16, hidden=256, depth=2)
    return {
        "GeoVAE": lambda: GeoVAE(GeoVAEConfig.preset(geo, **(geo_overrides or {}))),
        "PatchSVAE": lambda: PatchSVAE(PatchSVAEConfig.preset("tiny", **svae_kw)),
        "NoSVD": lambda: PatchSVAE(PatchSVAEConfig.preset("tiny", readout="linear", **svae_kw)),
        "AutoencoderKL": lambda: AutoencoderKLAdapter(AutoencoderKLAdapterConfig.preset(kl)),
    }


def _sector_spec(weights: dict[str, float]) -> str:
    """``{"cv_enc_weight": 1.0, ...}`` → ``"enc=1,..."`` (the CLI form of the recipe's weights)."""
    return ",".join(f"{k.removeprefix('cv_').removesuffix('_weight')}={v:g}" for k, v in weights.items())


ALIGN_WEIGHTS = _sector_spec(GEOVAE_ALIGN_WEIGHTS)  # the recipe's schedule, so the CLI and this agree
HANDOFF_WEIGHTS = _sector_spec(GEOVAE_HANDOFF_WEIGHTS)


def _sector_weights(spec: str) -> dict[str, float]:
    """``"enc=1,inv=1,lat=0.1,dec=0.1"`` → ``{"cv_enc_weight": 1.0, ...}``."""
    out = {}
    for part in filter(None, spec.split(",")):
        key, value = part.split("=")
        if key.strip() not in SECTORS:
            raise ValueError(f"unknown sector {key!r} in {spec!r}; sectors: {SECTORS}")
        out[f"cv_{key.strip()}_weight"] = float(value)
    return out


def callbacks_for(name: str, args: argparse.Namespace) -> list[Callback]:
    """Training recipe per contender (only GeoVAE has a schedule; the others train as built)."""
    if name != "GeoVAE":
        return []
    return [
        geovae_schedule(
            args.steps,
            align=_sector_weights(args.geo_align),
            handoff=_sector_weights(args.geo_handoff),
            align_fraction=args.align_fraction,
        )
    ]


def true_floats_per_16(model: PentachoraModel) -> float:
    """Floats the decoder consumes per 16×16×C patch of pixels."""
    return model.latent_floats_per_patch * (16 / model.patch_size) ** 2


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: PentachoraModel, images01: list[torch.Tensor], noise: dict[str, torch.Tensor]) -> dict:
    """Held-out PSNR / SSIM (whole photos, pixel space) and per-noise-type MSE (model space)."""
    model.eval()
    ps, ss = [], []
    for im in images01:
        rec = to_pixel_space(model.reconstruct(to_model_space(im)[None]).float())
        ps.append(float(psnr(rec, im[None]).mean()))
        ss.append(float(ssim(rec, im[None]).mean()))
    per_type, nonfinite = {}, 0
    for kind, x in noise.items():
        rec = model.reconstruct(x).float()
        nonfinite += int((~torch.isfinite(rec)).any(dim=(1, 2, 3)).sum())
        per_type[kind] = float((rec - x).square().mean())
    finite = [v for v in per_type.values() if math.isfinite(v)]
    return {
        "psnr_heldout": statistics.mean(ps),
        "ssim_heldout": statistics.mean(ss),
        "psnr_per_image": ps,
        "mse_noise": per_type,
        "mse_noise_mean": (statistics.mean(finite) if len(finite) == len(per_type) else math.inf)
        if per_type
        else math.nan,
        "noise_nonfinite_images": nonfinite,
    }


def timed_train_steps(model: PentachoraModel, batch: torch.Tensor, steps: int) -> float:
    """Median seconds of a full train step (forward, backward, clip, AdamW) on ``batch``."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if batch.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def timed_inference(model: PentachoraModel, batch: torch.Tensor, repeats: int) -> float:
    """Images per second of ``reconstruct`` (eval mode), median over repeats."""
    model.eval()
    model.reconstruct(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.reconstruct(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return batch.shape[0] / statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _memory_probe(
    ratio: int, name: str, batch_size: int, image_size: int, geo: dict[str, Any], queue: mp.Queue
) -> None:
    """Child process: peak RSS growth (VmHWM after a reset, minus VmRSS) over two train steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = contenders(ratio, geo)[name]()
    x = torch.randn(batch_size, 3, image_size, image_size).clamp(-1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak-RSS high-water mark (VmHWM)
        base = _status_kib("VmRSS")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    try:
        peak = _status_kib("VmHWM")
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(max(peak - base, 0) * 1024)


def peak_memory_mib(
    ratio: int, name: str, batch_size: int, image_size: int, device: torch.device, geo: dict[str, Any]
) -> float:
    """Peak memory of a train step in MiB (CUDA allocator peak, or CPU RSS growth in a subprocess)."""
    if device.type == "cuda":
        torch.manual_seed(0)
        model = contenders(ratio, geo)[name]().to(device)
        x = torch.randn(batch_size, 3, image_size, image_size, device=device).clamp(-1, 1)
        torch.cuda.reset_peak_memory_stats(device)
        out = model(x)
        out.loss.backward()
        mib = torch.cuda.max_memory_allocated(device) / 2**20
        del model, out
        torch.cuda.empty_cache()
        return mib
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_probe, args=(ratio, name, batch_size, image_size, geo, q))
    p.start()
    p.join()
    return q.get(timeout=5) / 2**20 if p.exitcode == 0 else math.nan


# ---------------------------------------------------------------------------------------- one training
class TraceCallback(Callback):
    """Keeps every step's scalars named in ``keys`` (in memory) for traces and plots."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.trace: dict[str, list[float]] = {k: [] for k in keys}

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        for k in self.keys:
            self.trace[k].append(float(output_scalars.get(k, math.nan)))


def train_one(
    model: PentachoraModel, name: str, args: argparse.Namespace, source: Any, extra: list[Callback]
) -> dict[str, Any]:
    """Train with the shared Trainer; return steps, skipped steps, wall time and the last scalars."""
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 20),
        lr_schedule="cosine",
        grad_clip=1.0,
        seed=args.seed,
        log_every=max(1, args.steps // 10),
        max_nonfinite_in_row=args.max_nonfinite_in_row,
        out_dir=None,
        progress=False,
        tensorboard=False,
    )
    out = train_steps(model, cfg, source, (*callbacks_for(name, args), *extra))
    out.pop("trainer")
    if out["diverged"]:
        out["diverged"] = out["diverged"].splitlines()[0]
    return out


# ---------------------------------------------------------------------------------------- modes
def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = os.getloadavg()
    return info


def run_bench(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    images01 = heldout_images()
    noise = noise_eval_sets(
        NOISE_TYPES, args.noise_eval_n, args.image_size, seed=args.seed + 7, heavy_tails=args.heavy_tails
    )
    results: dict[str, Any] = {"ratios": {}}
    for ratio in args.ratios:
        rows: dict[str, Any] = {}
        factories = contenders(ratio, _parse_overrides(args.geo_set))
        models: dict[str, PentachoraModel] = {}
        for name, factory in factories.items():
            if args.only and name not in args.only:
                continue
            torch.manual_seed(args.seed)
            model = factory().to(device)
            source = MixedSource(
                args.batch_size, args.image_size, args.noise_fraction, args.heavy_tails, args.seed
            )
            logger.info("ratio %d:1 — training %s (%d params)", ratio, name, model.num_parameters())
            row = train_one(model, name, args, source, [])
            row.update(evaluate(model, images01, noise))
            row.update(
                params=model.num_parameters(),
                floats_per_16x16_patch=true_floats_per_16(model),
                true_ratio=3 * 16 * 16 / true_floats_per_16(model),
                patch_size=model.patch_size,
                config=type(model.config).__name__,
            )
            logger.info(
                "%s: PSNR %.2f dB, SSIM %.3f, noise MSE %.4g, nonfinite %d, %.0fs",
                name,
                row["psnr_heldout"],
                row["ssim_heldout"],
                row["mse_noise_mean"],
                row["nonfinite_steps"],
                row["train_wall_s"],
            )
            rows[name] = row
            models[name] = model
            if args.save_models is not None:
                model.save_pretrained(args.save_models / f"{ratio}" / name)
        # timings: interleaved repeats on one fixed batch, ratios to PatchSVAE
        batch = MixedSource(
            args.batch_size, args.image_size, args.noise_fraction, "clamp", args.seed + 99
        ).batch(1)
        batch = batch.to(device)
        step_t: dict[str, list[float]] = {n: [] for n in models}
        thr: dict[str, list[float]] = {n: [] for n in models}
        for _ in range(args.timing_rounds):
            for name, model in models.items():
                step_t[name].append(timed_train_steps(model, batch, args.timing_steps))
                thr[name].append(timed_inference(model, batch, args.timing_steps))
        ref = "PatchSVAE" if "PatchSVAE" in models else next(iter(models))
        for name in models:
            # best of the interleaved rounds: the least-contended estimate on a shared machine
            rows[name]["train_step_s"] = min(step_t[name])
            rows[name]["throughput_img_s"] = max(thr[name])
            rows[name]["train_step_vs_ref"] = rows[name]["train_step_s"] / min(step_t[ref])
            rows[name]["throughput_vs_ref"] = rows[name]["throughput_img_s"] / max(thr[ref])
            rows[name]["peak_mem_mib"] = peak_memory_mib(
                ratio, name, args.batch_size, args.image_size, device, _parse_overrides(args.geo_set)
            )
        results["ratios"][str(ratio)] = rows
        del models
    if args.scale_speed:
        results["scale_speed"] = scale_speed(args, device)
    return results


def scale_speed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train-step time of the reference-size pair: GeoVAE ``48:1`` vs PatchSVAE ``fresnel``."""
    torch.manual_seed(args.seed)
    pair = {
        "GeoVAE 48:1": GeoVAE(GeoVAEConfig.preset("48:1")).to(device),
        "PatchSVAE fresnel": PatchSVAE(PatchSVAEConfig.preset("fresnel")).to(device),
    }
    x = MixedSource(args.scale_batch, 64, args.noise_fraction, "clamp", args.seed + 5).batch(1).to(device)
    times: dict[str, list[float]] = {n: [] for n in pair}
    for _ in range(args.timing_rounds):
        for n, m in pair.items():
            times[n].append(timed_train_steps(m, x, 2))
    ref = min(times["PatchSVAE fresnel"])
    return {
        n: {
            "params": m.num_parameters(),
            "floats_per_16x16_patch": true_floats_per_16(m),
            "train_step_s": min(times[n]),
            "train_step_vs_ref": min(times[n]) / ref,
            "batch": f"{args.scale_batch}×3×64×64",
        }
        for n, m in pair.items()
    }


def run_stability(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """GeoVAE tiny-48 on all 16 noise types with raw heavy tails: nonfinite count, gn and CV traces."""
    torch.manual_seed(args.seed)
    model = GeoVAE(GeoVAEConfig.preset("tiny-48")).to(device)
    source = NoiseSource(NOISE_TYPES, args.batch_size, args.image_size, seed=args.seed, heavy_tails="raw")
    keys = ("grad_norm", "loss", "recon_loss", "recon_loss_norm", "kl", *(f"cv_{s}" for s in SECTORS))
    trace = TraceCallback(keys)
    row = train_one(model, "GeoVAE", args, source, [trace])
    noise = noise_eval_sets(
        NOISE_TYPES, args.noise_eval_n, args.image_size, seed=args.seed + 7, heavy_tails="raw"
    )
    ev = evaluate(model, heldout_images(), noise)
    max_abs = max(float(source.batch(s).abs().max()) for s in (1, 2, 3))
    summary = {}
    for k, v in trace.trace.items():
        t = torch.tensor(v, dtype=torch.float64)
        fin = t[torch.isfinite(t)]
        summary[k] = {
            "min": float(fin.min()) if fin.numel() else math.nan,
            "median": float(fin.median()) if fin.numel() else math.nan,
            "max": float(fin.max()) if fin.numel() else math.nan,
            "last100_median": float(fin[-100:].median()) if fin.numel() else math.nan,
            "nonfinite": int((~torch.isfinite(t)).sum()),
        }
    targets = model.cv_targets
    clipped = sum(1 for g in trace.trace["grad_norm"] if g > 1.0)
    return {
        **row,
        "eval": ev,
        "summary": summary,
        "cv_targets": targets,
        "steps_clipped": clipped,
        "batch_max_abs_value_steps_1_3": max_abs,
        "trace": trace.trace,
    }


def stability_json(res: dict[str, Any]) -> str:
    """The stability result as JSON, with each per-step trace on one line (5 significant digits)."""
    body = {k: v for k, v in res.items() if k != "trace"}
    text = json.dumps(body, indent=1, default=float)
    traces = ",\n".join(
        f'  "{k}": ' + json.dumps([float(f"{x:.5g}") for x in v]) for k, v in res["trace"].items()
    )
    return text[:-2] + ',\n "trace": {\n' + traces + "\n }\n}\n"


def _smooth(values: list[float], window: int = 50) -> list[float]:
    """Trailing moving average (NaN-free input assumed)."""
    t = torch.tensor(values, dtype=torch.float64)
    c = torch.cat([torch.zeros(1, dtype=torch.float64), t.cumsum(0)])
    idx = torch.arange(1, len(values) + 1)
    lo = (idx - window).clamp_min(0)
    return ((c[idx] - c[lo]) / (idx - lo)).tolist()


def plot_stability(res: dict[str, Any], path: Path) -> None:
    """Three panels: pre-clip gradient norm, reconstruction, per-sector CV (faint raw, bold 50-step mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = res["trace"]
    steps = list(range(1, len(tr["grad_norm"]) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    def both(ax: Any, values: list[float], label: str, log: bool = False) -> Any:
        plot = ax.semilogy if log else ax.plot
        line = plot(steps, values, lw=0.4, alpha=0.35)[0]
        plot(steps, _smooth(values), lw=1.4, color=line.get_color(), label=label)
        return line

    both(axes[0], tr["grad_norm"], "50-step mean", log=True)
    axes[0].axhline(1.0, color="k", ls="--", lw=0.8, label="clip 1.0")
    axes[0].set(title="pre-clip gradient norm", xlabel="step")
    axes[0].legend()
    both(axes[1], tr["recon_loss"], "MSE (model space)", log=True)
    both(axes[1], tr["recon_loss_norm"], "scale-normalised MSE (trained)", log=True)
    axes[1].set(title="reconstruction", xlabel="step")
    axes[1].legend()
    for s in SECTORS:
        line = both(axes[2], tr[f"cv_{s}"], f"cv_{s} (target {res['cv_targets'][s]:.3f})")
        axes[2].axhline(res["cv_targets"][s], color=line.get_color(), ls="--", lw=0.8)
    axes[2].set(title="sector CV (dashed: target_cv of the sector's dim)", xlabel="step", ylim=(0, 0.7))
    axes[2].legend(fontsize=8)
    fig.suptitle(
        f"GeoVAE tiny-48, 16 noise types, raw heavy tails (|x| up to {res['batch_max_abs_value_steps_1_3']:.0f}): "
        f"{res['steps']} steps, {res['nonfinite_steps']} non-finite, fixed grad-clip 1.0"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- reports
def _fmt(v: Any, nd: int = 2) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{nd}f}" if abs(v) >= 10 ** (-nd) or v == 0 else f"{v:.2e}"
    return str(v)


def bench_markdown(res: dict[str, Any], command: str) -> str:
    lines = [
        "# Autoencoder benchmark",
        "",
        "GeoVAE (SVD-free geometric VAE) vs PatchSVAE (canonical SVD peer, a non-bottleneck reference), the",
        "NoSVD ablation and diffusers' AutoencoderKL trained from scratch — same data (photo crops + 16 noise",
        "types), same seed, same optimizer and step budget, the one shared Trainer. PSNR/SSIM: whole held-out",
        "photos (chelsea, coffee; centre-cropped to multiples of 16) in [0, 1] pixel space. Noise MSE: model",
        "space, mean over the 16 types. Times are ratios to PatchSVAE in this run (lower step time / higher",
        "throughput is better). Floats: what each decoder really consumes per 16×16×3 patch (768 pixel floats).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {json.dumps(res['machine'])}",
        "",
        f"Settings: {json.dumps(res['settings'])}",
        "",
    ]
    for ratio, rows in res["ratios"].items():
        lines += [
            f"## {ratio}:1",
            "",
            "| model | floats / 16×16 patch | true ratio | params | PSNR dB | SSIM | noise MSE | train step ×PatchSVAE "
            "| throughput ×PatchSVAE | peak mem MiB | NaN/inf steps |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            nf = f"{r['nonfinite_steps']}" + (" (diverged)" if r.get("diverged") else "")
            lines.append(
                f"| {name} | {r['floats_per_16x16_patch']:.0f} | {r['true_ratio']:.2f}:1 | {r['params']:,} "
                f"| {_fmt(r['psnr_heldout'])} | {_fmt(r['ssim_heldout'], 3)} | {_fmt(r['mse_noise_mean'], 4)} "
                f"| {_fmt(r['train_step_vs_ref'])} | {_fmt(r['throughput_vs_ref'])} | {_fmt(r['peak_mem_mib'], 0)} | {nf} |"
            )
        lines += ["", f"Per-noise-type MSE at {ratio}:1 (model space):", ""]
        names = list(rows)
        lines += ["| noise | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for kind in NOISE_TYPES:
            lines.append(
                f"| {kind} | "
                + " | ".join(_fmt(rows[n]["mse_noise"].get(kind, math.nan), 4) for n in names)
                + " |"
            )
        lines.append("")
    if "scale_speed" in res:
        lines += [
            "## Reference-size train step (speed only, no training)",
            "",
            "| model | params | floats / 16×16 patch | batch | train step s | ×PatchSVAE |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for n, r in res["scale_speed"].items():
            lines.append(
                f"| {n} | {r['params']:,} | {r['floats_per_16x16_patch']:.0f} | {r['batch']} | {r['train_step_s']:.3f} "
                f"| {r['train_step_vs_ref']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


# ======================================================================================== budget modes
# ``--mode lr-sweep | fair`` (issue 13). Contenders are trained by one small interleaved loop (AdamW,
# warm-up then cosine on the *fraction of the budget used*, grad-clip, non-finite steps skipped and
# counted) so that they can take turns: round-robin chunks of ``--chunk-steps`` steps, each contender
# charged only the CPU seconds (``time.process_time``) or wall seconds of its own chunks. Evaluation
# is not charged. GeoVAE gets the recipe's CV schedule (alignment weights for the first
# ``--align-fraction`` of its budget, then the hand-off weights).
class TinyAE(torch.nn.Module):
    """diffusers' ``AutoencoderTiny`` (TAESD-shaped, deterministic) behind the small API used here.

    ``f8`` with ``latent_channels`` channels: 48:1 for 4 channels, 12:1 for 16. Trained with the
    plain MSE (TAESD is distilled with adversarial and perceptual terms; none here). Its latent is
    what ``encoder`` returns, read by ``decoder`` (no scaling / uint8 step of diffusers' ``forward``).
    """

    patch_size = 8

    def __init__(self, latent_channels: int, width: int = 48) -> None:
        super().__init__()
        from diffusers import AutoencoderTiny

        self.latent_floats_per_patch = latent_channels
        self.vae = AutoencoderTiny(
            encoder_block_out_channels=(width,) * 4,
            decoder_block_out_channels=(width,) * 4,
            latent_channels=latent_channels,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encoder(x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(z)

    def forward(self, x: torch.Tensor) -> Any:
        from types import SimpleNamespace

        recon = self.decode_latent(self.encode_latent(x))
        mse = (recon.float() - x.float()).square().mean()
        return SimpleNamespace(loss=mse, recon_loss=mse, recon=recon)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self.decode_latent(self.encode_latent(x))
        finally:
            self.train(was)


def budget_contenders(
    ratio: int, args: argparse.Namespace | None = None
) -> dict[str, Callable[[], torch.nn.Module]]:
    """The fair mode's contenders at one ratio (CPU-sized, 1.2–1.7M parameters except PatchSVAE).

    With ``args.with_folded``, also :data:`FOLDED`: GeoVAE of the preset's widths started from folded
    batteries (:func:`folded_factory`)."""
    base = contenders(ratio)
    out = {
        "GeoVAE": base["GeoVAE"],
        "NoSVD": base["NoSVD"],
        "AutoencoderKL": base["AutoencoderKL"],
        "AutoencoderTiny": lambda: TinyAE(4 if ratio == 48 else 16),
        "PatchSVAE": base["PatchSVAE"],
    }
    if args is not None and getattr(args, "with_folded", False):
        out[FOLDED] = folded_factory(ratio, args)
    return out


#: The folded battery container in the fair mode: 16 batteries (v = D = 8, h = 16) of the ratio's
#: patch size fold into a GeoVAE of the ``tiny-48`` / ``tiny-12`` widths (V·D = 1024, hidden 256),
#: with the spectral bottleneck and no alignment phase (the library's recipe). The bank is trained
#: once per ratio before the budget starts; its cost is reported separately (``folded_banks``).
FOLDED = "GeoVAE (folded batteries)"
ALIGN_OF = {FOLDED: 0.0}
FOLDED_BANKS: dict[int, tuple[Any, dict[str, Any]]] = {}


def folded_bank(ratio: int, args: argparse.Namespace) -> Any:
    """The ratio's battery bank (trained on first use, then cached for every seed)."""
    if ratio not in FOLDED_BANKS:
        from pentachora.autoencoders.battery import BatteryConfig
        from pentachora.recipes.batteries import train_battery_bank

        patch = 16 if ratio == 48 else 8
        logger.info("%d:1: training the folded container's bank (16 batteries, patch %d)", ratio, patch)
        bank, report = train_battery_bank(
            "patch-clusters:16",
            BatteryConfig(patch_size=patch, V=8, D=8, hidden=16),
            steps=args.folded_bank_steps,
            batch_size=32,
            lr=3e-3,
            seed=0,
            progress=False,
        )
        FOLDED_BANKS[ratio] = (bank, {k: v for k, v in report.items() if k != "by_kind"})
    return FOLDED_BANKS[ratio][0]


def folded_factory(ratio: int, args: argparse.Namespace) -> Callable[[], torch.nn.Module]:
    """Factory of :data:`FOLDED` (seeded by the caller's ``torch.manual_seed``)."""

    def build() -> torch.nn.Module:
        from pentachora.data.images import AugmentedCropSource
        from pentachora.recipes.batteries import build_folded_container

        bank = folded_bank(ratio, args)
        photos = load_sample_photos("train", include_grayscale=args.grayscale)
        calib = AugmentedCropSource(photos, args.image_size, args.batch_size, seed=10_000, scales=args.scales)
        images = torch.cat([calib.batch(i) for i in range(8)])
        model, _ = build_folded_container(bank, calibration=images, seed=torch.initial_seed())
        return model

    return build


LR_GRID_SWEEP = [1e-3, 3e-3, 1e-2]

SWEEP_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "GeoVAE": lambda: GeoVAE(GeoVAEConfig.preset("tiny-48")),
    "GeoVAE (unbounded heads)": lambda: GeoVAE(GeoVAEConfig.preset("tiny-48", bounded_heads=False)),
    "NoSVD": contenders(48)["NoSVD"],
    "PatchSVAE": contenders(48)["PatchSVAE"],
}


@torch.no_grad()
def photo_psnr(model: torch.nn.Module, images01: list[torch.Tensor], device: torch.device) -> list[float]:
    """PSNR (dB, pixel space) of the model's reconstruction of each whole photo."""
    out = []
    for im in images01:
        rec = model.reconstruct(to_model_space(im)[None].to(device)).float().cpu()
        out.append(float(psnr(to_pixel_space(rec), im[None])))
    return out


@torch.no_grad()
def psnr_latent_zeroed(
    model: torch.nn.Module, images01: list[torch.Tensor], device: torch.device
) -> float | None:
    """GeoVAE only: held-out PSNR with the stochastic latent set to 0 (only the magnitude channel left).

    Close to the model's own PSNR means the decoder ignores z (it reconstructs from per-patch
    brightness alone); ``None`` for models without a magnitude channel.
    """
    if not isinstance(model, GeoVAE):
        return None
    model.eval()
    out = []
    for im in images01:
        z = model.encode(to_model_space(im)[None].to(device)).mode()
        z[:, : model.config.latent_dim] = 0
        out.append(float(psnr(to_pixel_space(model.decode(z).float().cpu()), im[None])))
    return statistics.mean(out)


def baseline_psnr(images01: list[torch.Tensor]) -> dict[str, list[float]]:
    """PSNR of two predictors that learn nothing: mid-grey (model-space zero) and each image's mean colour."""
    grey = [float(psnr(torch.full_like(im, 0.5)[None], im[None])) for im in images01]
    mean = [float(psnr(im.mean(dim=(1, 2), keepdim=True).expand_as(im)[None], im[None])) for im in images01]
    return {"zero": grey, "mean_colour": mean}


def train_interleaved(
    factories: dict[str, Callable[[], torch.nn.Module]],
    lrs: dict[str, float],
    source_fn: Callable[[], Any],
    args: argparse.Namespace,
    device: torch.device,
    seed: int,
    budget: float,
    eval_images: list[torch.Tensor],
) -> dict[str, BudgetRunner]:
    """The harness's :func:`~pentachora.recipes.benchmarking.train_interleaved` with this script's options;
    the curve is the mean PSNR of ``eval_images`` (downscaled to ``--curve-side``)."""
    curve_images = heldout_like(eval_images, args.curve_side) if args.curve_side else eval_images
    settings = BudgetSettings(
        budget=budget, kind=args.budget_kind, warmup_fraction=args.warmup_fraction, schedule=args.schedule,
        grad_clip=args.grad_clip, align_fraction=args.align_fraction, align_of=tuple(ALIGN_OF.items()),
        chunk_steps=args.chunk_steps, curve_points=args.curve_points,
    )  # fmt: skip

    def log(runners: dict[str, BudgetRunner]) -> None:
        logger.info(
            "seed %d: %s",
            seed,
            ", ".join(f"{n} {r.step} steps {r.used:.0f}/{budget:.0f}" for n, r in runners.items()),
        )

    return harness_train_interleaved(
        factories, lrs, source_fn, settings, device, seed,
        curve_metric=lambda m: statistics.mean(photo_psnr(m, curve_images, device)), progress=log,
    )  # fmt: skip


def run_lr_sweep(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """GeoVAE (bounded heads), GeoVAE with the old unbounded heads, NoSVD and PatchSVAE × lrs × seeds."""
    held = heldout_images()
    base = baseline_psnr(held)
    models = {k: v for k, v in SWEEP_MODELS.items() if not args.only or k in args.only}
    runs = []
    for lr in args.lrs:
        for seed in args.seeds:
            runners = train_interleaved(
                models,
                dict.fromkeys(models, lr),
                lambda seed=seed: MixedSource(
                    args.batch_size, args.image_size, args.noise_fraction, "clamp", seed
                ),
                args,
                device,
                seed,
                float(args.steps),
                held,
            )
            for name, r in runners.items():
                ps = photo_psnr(r.model, held, device)
                runs.append(
                    {
                        "model": name,
                        "lr": lr,
                        "seed": seed,
                        "steps": r.step,
                        "nonfinite_steps": r.nonfinite,
                        "psnr_heldout": statistics.mean(ps),
                        "psnr_per_image": ps,
                        "psnr_latent_zeroed": psnr_latent_zeroed(r.model, held, device),
                        "max_z_std": r.max_z_std or None,
                        "max_kl_per_patch": r.max_kl or None,
                        "cpu_s": r.cpu_s,
                    }
                )
                logger.info(
                    "lr %g seed %d %s: %.2f dB, %d non-finite",
                    lr,
                    seed,
                    name,
                    runs[-1]["psnr_heldout"],
                    r.nonfinite,
                )
    return {"runs": runs, "baselines": {k: statistics.mean(v) for k, v in base.items()}}


def run_lr_select(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every fair contender × ``--lrs`` at ``--budget`` on the first seed, scored on the **validation**
    photos (never the held-out ones); the chosen lr per contender and ratio is the best finite one."""
    val = heldout_images(split="validation")
    res: dict[str, Any] = {"ratios": {}, "validation_photos": list(VALIDATION_PHOTOS)}
    seed = args.seeds[0]
    for ratio in args.ratios:
        factories = {
            k: v for k, v in budget_contenders(ratio, args).items() if not args.only or k in args.only
        }
        rows: dict[str, Any] = {k: {"by_lr": {}} for k in factories}
        for lr in args.lrs:
            runners = train_interleaved(
                factories, dict.fromkeys(factories, lr), lambda: fair_source(args, seed), args, device, seed,
                args.budget, val,
            )  # fmt: skip
            for name, r in runners.items():
                ps = photo_psnr(r.model, val, device)
                rows[name]["by_lr"][f"{lr:g}"] = {
                    "lr": lr, "psnr_validation": statistics.mean(ps), "steps": r.step,
                    "nonfinite_steps": r.nonfinite,
                }  # fmt: skip
                logger.info("%d:1 lr %g %s: %.2f dB validation", ratio, lr, name, statistics.mean(ps))
            del runners
        for row in rows.values():
            usable = [
                v
                for v in row["by_lr"].values()
                if v["nonfinite_steps"] == 0 and math.isfinite(v["psnr_validation"])
            ]
            row["chosen_lr"] = max(usable, key=lambda v: v["psnr_validation"])["lr"] if usable else None  # fmt: skip
        res["ratios"][str(ratio)] = rows
    return res


def chosen_lrs(paths: list[Path]) -> dict[str, dict[str, float]]:
    """``{ratio: {contender: lr}}`` from ``--mode lr-select`` results files (later files win)."""
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        res = json.loads(Path(path).read_text())
        if res.get("mode") != "lr-select":
            raise SystemExit(f"--lr-from {path}: not a --mode lr-select results file")
        for ratio, rows in res["ratios"].items():
            for name, row in rows.items():
                if row.get("chosen_lr") is not None:
                    out.setdefault(ratio, {})[name] = float(row["chosen_lr"])
    return out


def select_markdown(res: dict[str, Any], command: str) -> str:
    s = res["settings"]
    lines = [
        "# Learning rates chosen on validation photos (fair-mode contenders)",
        "",
        f"Each fair-mode contender trained at every lr of {s['lrs']} for {s['budget']:g} {s['budget_kind']} "
        f"(seed {s['seeds'][0]}; the fair mode's crops and batch), then scored on the validation photos "
        f"({', '.join(res['validation_photos'])}: bundled grayscale photographs that no split trains on). "
        "The chosen lr is the one with the highest validation PSNR among runs without a non-finite step; "
        "`--mode fair --lr-from` reads it. The held-out photos (chelsea, coffee) play no part here.",
        "",
        f"Command: `{command}`",
        "",
    ]
    for ratio, rows in res["ratios"].items():
        lrs = sorted({float(k) for r in rows.values() for k in r["by_lr"]})
        lines += [
            f"## {ratio}:1",
            "",
            "| model | "
            + " | ".join(f"lr {lr:g}: validation PSNR dB (steps)" for lr in lrs)
            + " | chosen lr |",
            "|---|" + "---:|" * (len(lrs) + 1),
        ]
        for name, r in rows.items():
            cells = []
            for lr in lrs:
                v = r["by_lr"].get(f"{lr:g}")
                cells.append(
                    "—" if v is None else f"{v['psnr_validation']:.2f} ({v['steps']})" + (" non-finite" if v["nonfinite_steps"] else "")
                )  # fmt: skip
            chosen = "—" if r["chosen_lr"] is None else f"{r['chosen_lr']:g}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | **{chosen}** |")
        lines.append("")
    return "\n".join(lines) + "\n"


def codec_curves(images01: list[torch.Tensor], qualities: list[int]) -> dict[str, list[dict[str, float]]]:
    """JPEG and WebP (Pillow) on the whole photos: mean bpp and mean PSNR per quality."""
    import io

    from PIL import Image

    out: dict[str, list[dict[str, float]]] = {"JPEG": [], "WebP": []}
    for codec, fmt in (("JPEG", "JPEG"), ("WebP", "WEBP")):
        for q in qualities:
            bpps, ps = [], []
            for im in images01:
                arr = (im.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format=fmt, quality=q)
                dec = torch.from_numpy(
                    __import__("numpy").array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
                )
                dec = dec.permute(2, 0, 1).float() / 255
                ref = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
                bpps.append(8 * len(buf.getvalue()) / (arr.shape[0] * arr.shape[1]))
                ps.append(float(psnr(dec[None], ref[None])))
            out[codec].append({"quality": q, "bpp": statistics.mean(bpps), "psnr": statistics.mean(ps)})
    return out


def model_rate(
    model: torch.nn.Module, images01: list[torch.Tensor], bits: list[int], device: torch.device
) -> list[dict]:
    """PSNR and bpp (raw, zlib, lzma) of each quantisation depth, averaged over the whole photos."""
    from pentachora.autoencoders.quantize import latent_roundtrip

    rows = []
    for b in bits:
        ps, raw, zl, lz = [], [], [], []
        for im in images01:
            r = latent_roundtrip(model, to_model_space(im)[None].to(device), bits=b)
            ps.append(float(psnr(to_pixel_space(r.recon.float().cpu()), im[None])))
            raw.append(r.bpp())
            zl.append(r.bpp("zlib"))
            lz.append(r.bpp("lzma"))
        rows.append(
            {
                "bits": b,
                "psnr": statistics.mean(ps),
                "bpp_raw": statistics.mean(raw),
                "bpp_zlib": statistics.mean(zl),
                "bpp_lzma": statistics.mean(lz),
            }
        )
    return rows


def fair_source(args: argparse.Namespace, seed: int) -> Any:
    """The fair mode's batches: augmented crops of the training photos (grayscale ones too by default)."""
    from pentachora.data.images import AugmentedCropSource

    photos = load_sample_photos("train", include_grayscale=args.grayscale)
    return AugmentedCropSource(photos, args.image_size, args.batch_size, seed=seed, scales=args.scales)


def run_fair(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Equal budget (CPU s, wall s or steps), same data and seeds, interleaved, at each ratio."""
    held = heldout_images()
    train_eval = load_sample_photos("train")  # the colour ones (grayscale photos are training-only)
    train_eval = heldout_like(train_eval, args.train_eval_side)
    base = baseline_psnr(held)
    res: dict[str, Any] = {"ratios": {}, "baselines": {k: statistics.mean(v) for k, v in base.items()}}
    res["codecs"] = codec_curves(held, args.codec_qualities)

    chosen = chosen_lrs(args.lr_from) if args.lr_from else {}
    res["lr_from"] = [str(p) for p in args.lr_from or []]
    for ratio in args.ratios:
        factories = {
            k: v for k, v in budget_contenders(ratio, args).items() if not args.only or k in args.only
        }
        lrs = {k: args.lr_of.get(k, chosen.get(str(ratio), {}).get(k, args.lr)) for k in factories}
        rows: dict[str, Any] = {k: {"seeds": []} for k in factories}
        for seed in args.seeds:
            runners = train_interleaved(
                factories,
                lrs,
                lambda seed=seed: fair_source(args, seed),
                args,
                device,
                seed,
                args.budget,
                held,
            )
            for name, r in runners.items():
                ps = photo_psnr(r.model, held, device)
                pt = photo_psnr(r.model, train_eval, device)
                entry = {
                    "seed": seed,
                    "steps": r.step,
                    "cpu_s": r.cpu_s,
                    "wall_s": r.wall_s,
                    "nonfinite_steps": r.nonfinite,
                    "psnr_heldout": statistics.mean(ps),
                    "psnr_per_image": ps,
                    "psnr_train_photos": statistics.mean(pt),
                    "curve": r.curve,
                }
                if seed == args.seeds[0]:
                    entry["rate"] = model_rate(r.model, held, args.bits, device)
                rows[name]["seeds"].append(entry)
                rows[name].update(
                    params=sum(p.numel() for p in r.model.parameters()),
                    floats_per_16x16_patch=r.model.latent_floats_per_patch * (16 / r.model.patch_size) ** 2,
                    lr=lrs[name],
                )
                logger.info(
                    "%d:1 seed %d %s: %.2f dB held-out, %.2f dB train photos, %d steps, %d non-finite",
                    ratio, seed, name, entry["psnr_heldout"], entry["psnr_train_photos"], r.step, r.nonfinite,
                )  # fmt: skip
            del runners
        for row in rows.values():
            vals = [s["psnr_heldout"] for s in row["seeds"]]
            row["psnr_mean"] = statistics.mean(vals)
            row["psnr_spread"] = (max(vals) - min(vals)) if len(vals) > 1 else 0.0
            row["gap_train_minus_heldout"] = statistics.mean(
                s["psnr_train_photos"] - s["psnr_heldout"] for s in row["seeds"]
            )
        res["ratios"][str(ratio)] = rows
        if ratio in FOLDED_BANKS:
            res.setdefault("folded_banks", {})[str(ratio)] = FOLDED_BANKS[ratio][1]
    return res


def heldout_like(images01: list[torch.Tensor], side: int) -> list[torch.Tensor]:
    """Training photos for the generalisation gap: whole photos, downscaled so the longer side ≤ ``side``, cropped to multiples of 16."""
    out = []
    for im in images01:
        s = min(1.0, side / max(im.shape[-2:]))
        if s < 1:
            h, w = round(im.shape[-2] * s), round(im.shape[-1] * s)
            im = torch.nn.functional.interpolate(im[None], size=(h, w), mode="bilinear", antialias=True)[
                0
            ].clamp(0, 1)
        h, w = im.shape[-2] - im.shape[-2] % 16, im.shape[-1] - im.shape[-1] % 16
        out.append(im[:, :h, :w].contiguous())
    return out


def sweep_markdown(res: dict[str, Any], command: str) -> str:
    lines = [
        "# Learning-rate sweep (issue 13)",
        "",
        "GeoVAE tiny-48 (bounded posterior heads, the preset default now), the same with the old unbounded",
        "heads, the NoSVD readout and PatchSVAE (tiny, 16×16 patches) trained interleaved on the same batches",
        "(photo crops + noise), AdamW, warm-up then cosine, grad-clip as in Settings. PSNR: whole held-out",
        "photos (chelsea, coffee), pixel space. Predictors that learn nothing score: "
        + ", ".join(f"{k} {v:.2f} dB" for k, v in res["baselines"].items())
        + ".",
        "",
        f"Command: `{command}`",
        "",
        f"Settings: {json.dumps(res['settings'])}",
        "",
        "| model | lr | seeds | PSNR dB (mean, min–max) | PSNR with z = 0 (magnitude only) | non-finite steps "
        "| max z std | max KL / patch (nats) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in res["runs"]:
        groups.setdefault((r["model"], r["lr"]), []).append(r)
    for (model, lr), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        p = [r["psnr_heldout"] for r in rs]
        zero = [r.get("psnr_latent_zeroed") for r in rs if r.get("psnr_latent_zeroed") is not None]
        zcol = f"{statistics.mean(zero):.2f}" if zero else "–"
        z = [r["max_z_std"] for r in rs if r["max_z_std"]]
        k = [r["max_kl_per_patch"] for r in rs if r["max_kl_per_patch"]]
        zs = f"{max(z):.3g}" if z else "–"
        ks = f"{max(k):.3g}" if k else "–"
        lines.append(
            f"| {model} | {lr:g} | {len(rs)} | {statistics.mean(p):.2f} ({min(p):.2f}–{max(p):.2f}) | {zcol} "
            f"| {sum(r['nonfinite_steps'] for r in rs)} | {zs} | {ks} |"
        )
    return "\n".join(lines) + "\n"


def fair_markdown(res: dict[str, Any], command: str) -> str:
    s = res["settings"]
    lines = [
        "# Autoencoders at an equal budget (issue 13, fair mode)",
        "",
        f"Every contender gets the same budget — {s['budget']:g} {s['budget_kind']} "
        + ("(process CPU seconds, `time.process_time()`)" if s["budget_kind"] == "cpu" else "")
        + f" — the same batches (augmented {s['image_size']}² crops of the training photos, scales "
        f"{s['scales']}), the same seeds {s['seeds']}, trained round-robin in chunks of {s['chunk_steps']} "
        "steps so that they see the same machine load. PSNR: whole held-out photos (chelsea, coffee), "
        "pixel space; mean over seeds (spread = max − min). Learning-curve points use the held-out photos "
        f"downscaled to ≤ {s['curve_side']} px (cheaper; the table's numbers are full size). "
        "'train photos': the 7 colour training photos, whole, "
        f"downscaled to ≤ {s['train_eval_side']} px; gap = train − held-out. Predictors that learn nothing: "
        + ", ".join(f"{k} {v:.2f} dB" for k, v in res["baselines"].items())
        + ". Learning rates: "
        + (
            f"each contender's own, chosen on the validation photos by `--mode lr-select` ({', '.join(res['lr_from'])})."
            if res.get("lr_from")
            else "one untuned lr for every contender (no `--lr-from`)."
        ),
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {json.dumps(res['machine'])}",
        "",
    ]
    for ratio, rows in res["ratios"].items():
        lines += [
            f"## {ratio}:1",
            "",
            "| model | floats / 16×16 patch | params | lr | steps in budget | held-out PSNR dB | spread | train-photo gap dB | non-finite |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            steps = "/".join(str(x["steps"]) for x in r["seeds"])
            nf = sum(x["nonfinite_steps"] for x in r["seeds"])
            lines.append(
                f"| {name} | {r['floats_per_16x16_patch']:.0f} | {r['params']:,} | {r['lr']:g} | {steps} "
                f"| {r['psnr_mean']:.2f} | {r['psnr_spread']:.2f} | {r['gap_train_minus_heldout']:+.2f} | {nf} |"
            )
        lines += ["", f"Rate at {ratio}:1 (first seed; latents quantised per channel, min/max range):", ""]
        lines += [
            "| model | bits | PSNR dB | bpp raw | bpp zlib | bpp lzma |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            for q in r["seeds"][0].get("rate", []):
                lines.append(
                    f"| {name} | {q['bits']} | {q['psnr']:.2f} | {q['bpp_raw']:.3f} | {q['bpp_zlib']:.3f} | {q['bpp_lzma']:.3f} |"
                )
        bank = res.get("folded_banks", {}).get(ratio)
        if bank:
            lines += [
                "",
                f"{FOLDED}: its bank ({bank['n_batteries']} batteries, {bank['steps']} steps) was trained once "
                f"before the budget started — k-means {bank['source_build_s']:.0f} s + training "
                f"{bank['train_wall_s']:.0f} s, not counted in the budget (reused by every seed).",
            ]
        lines.append("")
    lines += [
        "## Codecs (Pillow, same photos)",
        "",
        "| codec | quality | bpp | PSNR dB |",
        "|---|---:|---:|---:|",
    ]
    for codec, pts in res["codecs"].items():
        for p in pts:
            lines.append(f"| {codec} | {p['quality']} | {p['bpp']:.3f} | {p['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_fair(res: dict[str, Any], path_curves: Path, path_rate: Path) -> None:
    """Learning curves (held-out PSNR vs charged budget) and PSNR vs bpp for every model and codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = res["settings"]["budget_kind"]
    xkey = {"cpu": "cpu_s", "wall": "wall_s", "steps": "step"}[kind]
    ratios = list(res["ratios"])
    fig, axes = plt.subplots(1, len(ratios), figsize=(6 * len(ratios), 4), squeeze=False)
    for ax, ratio in zip(axes[0], ratios, strict=True):
        for i, (name, r) in enumerate(res["ratios"][ratio].items()):
            for j, sd in enumerate(r["seeds"]):
                xs = [c[xkey] for c in sd["curve"]]
                ax.plot(xs, [c["psnr"] for c in sd["curve"]], marker="o", ms=3, color=f"C{i}", alpha=0.9 if j == 0 else 0.4,
                        label=name if j == 0 else None)  # fmt: skip
        ax.set(
            title=f"{ratio}:1 — held-out PSNR (photos ≤{res['settings']['curve_side']} px) vs {kind} budget",
            xlabel={"cpu": "process CPU s", "wall": "wall s", "steps": "steps"}[kind],
            ylabel="dB",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_curves, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"48": "o", "12": "s"}
    for codec, pts in res["codecs"].items():
        ax.plot(
            [p["bpp"] for p in pts],
            [p["psnr"] for p in pts],
            "k-" if codec == "JPEG" else "k--",
            marker="x",
            label=f"{codec} (Pillow)",
        )
    for ratio, rows in res["ratios"].items():
        for i, (name, r) in enumerate(rows.items()):
            rate = r["seeds"][0].get("rate", [])
            if not rate:
                continue
            ax.plot([q["bpp_lzma"] for q in rate], [q["psnr"] for q in rate], marker=markers.get(ratio, "^"), color=f"C{i}",
                    ls="-" if ratio == "48" else ":", label=f"{name} {ratio}:1 (lzma)")  # fmt: skip
    ax.set_xscale("log")
    ax.set(
        xlabel="bits per pixel (log)",
        ylabel="held-out PSNR dB",
        title="PSNR vs rate: chelsea + coffee, whole photos",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path_rate, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("bench", "stability", "lr-sweep", "lr-select", "fair"), default="bench")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--ratios", type=int, nargs="+", default=[48, 12])
    p.add_argument("--only", nargs="+", default=None, help="Train only these contenders.")
    p.add_argument("--quick", action="store_true", help="CPU-sized run (fewer steps, smaller batches).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise-fraction", type=float, default=0.25)
    p.add_argument("--heavy-tails", choices=("clamp", "raw"), default="clamp")
    p.add_argument("--noise-eval-n", type=int, default=16)
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--timing-steps", type=int, default=3)
    p.add_argument("--max-nonfinite-in-row", type=int, default=50)
    p.add_argument("--no-scale-speed", dest="scale_speed", action="store_false")
    p.add_argument("--scale-batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--geo-align", default=ALIGN_WEIGHTS, help="GeoVAE CV weights in the alignment phase.")
    p.add_argument("--geo-handoff", default=HANDOFF_WEIGHTS, help="GeoVAE CV weights after the hand-off.")
    p.add_argument("--geo-set", nargs="+", default=None, help="GeoVAEConfig overrides, e.g. logvar_init=-8.")
    p.add_argument(
        "--align-fraction", type=float, default=0.1, help="Fraction of steps in the alignment phase."
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--tag", default="", help="Suffix of the budget modes' result files.")
    p.add_argument(
        "--save-models", type=Path, default=None, help="Save each trained model to DIR/<ratio>/<name>."
    )
    g = p.add_argument_group("budget modes (--mode lr-sweep / fair)")
    g.add_argument(
        "--budget", type=float, default=None, help="Per contender, ratio and seed (see --budget-kind)."
    )
    g.add_argument("--budget-kind", choices=("cpu", "wall", "steps"), default=None)
    g.add_argument("--chunk-steps", type=int, default=10, help="Round-robin chunk of steps per contender.")
    g.add_argument("--curve-points", type=int, default=8)
    g.add_argument("--seeds", type=int, nargs="+", default=None)
    g.add_argument("--lrs", type=float, nargs="+", default=LR_GRID_SWEEP)
    g.add_argument("--lr-of", nargs="+", default=None, help="Per-contender lr, e.g. AutoencoderKL=3e-4.")
    g.add_argument(
        "--lr-from",
        type=Path,
        nargs="+",
        default=None,
        help="--mode fair: take each contender's lr from these --mode lr-select results (chosen on validation).",
    )
    g.add_argument("--warmup-fraction", type=float, default=0.05)
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    g.add_argument("--grad-clip", type=float, default=1.0, help="0 disables (the sweep's harsh protocol).")
    g.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    g.add_argument("--no-grayscale", dest="grayscale", action="store_false")
    g.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    g.add_argument(
        "--with-folded",
        action="store_true",
        help=f"Add {FOLDED!r}: GeoVAE started from folded batteries (bank trained first, cost reported).",
    )
    g.add_argument("--folded-bank-steps", type=int, default=6400)
    g.add_argument("--codec-qualities", type=int, nargs="+", default=[5, 10, 20, 30, 50, 70, 90])
    g.add_argument("--train-eval-side", type=int, default=256)
    g.add_argument(
        "--curve-side",
        type=int,
        default=224,
        help="Learning-curve points: held-out photos downscaled to ≤ this (0: whole).",
    )
    g.add_argument(
        "--gpu", action="store_true", help="The GPU configuration of --mode fair (see the docstring)."
    )
    args = p.parse_args(argv)
    args.lr_of = {k: float(v) for k, v in (item.split("=", 1) for item in (args.lr_of or []))}
    if args.mode in ("lr-sweep", "lr-select", "fair"):
        return run_budget_mode(args, p)
    defaults = (
        dict(steps=500, batch_size=16, image_size=32)
        if args.quick
        else dict(steps=3000, batch_size=32, image_size=64)
    )
    if args.mode == "stability":
        defaults = dict(steps=3000, batch_size=16, image_size=32)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pentachora.training").setLevel(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = "python benchmarks/autoencoders.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    settings = {k: _jsonable(v) for k, v in vars(args).items()}
    if args.mode == "stability":
        res = run_stability(args, device)
        res.update(
            machine=machine_info(device),
            settings=settings,
            command=command,
            total_wall_s=time.perf_counter() - t0,
        )
        plot_stability(res, args.out / "geovae_stability.png")
        (args.out / "geovae_stability.json").write_text(stability_json(res))
        logger.info(
            "stability: %d steps, %d non-finite, summary %s",
            res["steps"],
            res["nonfinite_steps"],
            json.dumps(res["summary"]),
        )
        return
    res = run_bench(args, device)
    res.update(
        machine=machine_info(device),
        settings=settings,
        command=command,
        total_wall_s=time.perf_counter() - t0,
    )
    (args.out / "autoencoders.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (args.out / "autoencoders.md").write_text(bench_markdown(res, command) + "\n")
    logger.info("wrote %s (%.0f s)", args.out / "autoencoders.md", res["total_wall_s"])


def _jsonable(v: Any) -> Any:
    """Settings as JSON: paths (also inside lists) as strings."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def run_budget_mode(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """``--mode lr-sweep`` / ``--mode fair`` (defaults per mode and size; see the module docstring)."""
    if args.mode == "lr-sweep":
        defaults = dict(steps=300, batch_size=16, image_size=32, seeds=[0, 1], budget_kind="steps")
    elif args.mode == "lr-select":  # half the fair budget, one seed, three lrs per contender
        defaults = dict(
            budget=75.0, budget_kind="cpu", batch_size=16, image_size=64, seeds=[0], curve_points=0
        )
    elif args.gpu:
        defaults = dict(budget=120.0, budget_kind="wall", batch_size=32, image_size=128, seeds=[0, 1, 2])
    elif args.quick:
        defaults = dict(budget=45.0, budget_kind="cpu", batch_size=8, image_size=64, seeds=[0])
    else:  # ≈ 90 min on 2 idle cores: 2 ratios × 5 contenders × 3 seeds × 150 CPU s (2 threads ≈ 75 s wall)
        defaults = dict(budget=150.0, budget_kind="cpu", batch_size=16, image_size=64, seeds=[0, 1, 2])
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.mode == "lr-sweep":
        args.budget = float(args.steps)
        args.budget_kind = "steps"
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = "python benchmarks/autoencoders.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    settings = {k: _jsonable(v) for k, v in vars(args).items()}
    tag = f"_{args.tag}" if getattr(args, "tag", None) else ""
    if args.mode == "lr-sweep":
        res = run_lr_sweep(args, device)
        res.update(settings=settings, machine=machine_info(device), command=command)
        res["total_wall_s"] = time.perf_counter() - t0
        (args.out / f"autoencoders_lr_sweep{tag}.json").write_text(
            json.dumps(res, indent=1, default=float) + "\n"
        )
        (args.out / f"autoencoders_lr_sweep{tag}.md").write_text(sweep_markdown(res, command))
        return
    if args.mode == "lr-select":
        res = run_lr_select(args, device)
        res.update(mode="lr-select", settings=settings, machine=machine_info(device), command=command)
        res["total_wall_s"] = time.perf_counter() - t0
        (args.out / f"autoencoders_lr_select{tag}.json").write_text(
            json.dumps(res, indent=1, default=float) + "\n"
        )
        (args.out / f"autoencoders_lr_select{tag}.md").write_text(select_markdown(res, command))
        logger.info("wrote %s (%.0f s)", args.out / f"autoencoders_lr_select{tag}.md", res["total_wall_s"])
        return
    res = run_fair(args, device)
    res.update(settings=settings, machine=machine_info(device), command=command)
    res["total_wall_s"] = time.perf_counter() - t0
    (args.out / f"autoencoders_fair{tag}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (args.out / f"autoencoders_fair{tag}.md").write_text(fair_markdown(res, command))
    plot_fair(
        res, args.out / f"autoencoders_fair{tag}_curves.png", args.out / f"autoencoders_fair{tag}_rate.png"
    )
    logger.info("wrote %s (%.0f s)", args.out / f"autoencoders_fair{tag}.md", res["total_wall_s"])


if __name__ == "__main__":
    main()

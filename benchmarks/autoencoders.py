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

Usage::

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
    ImageCropSource,
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
from pentachora.training import Callback, TrainConfig, Trainer, TrainingDiverged

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("benchmarks.autoencoders")


# ---------------------------------------------------------------------------------------- data
class MixedSource:
    """Photo crops and noise in one batch, a pure function of ``(seed, step)``.

    ``batch(step)`` = ``n_photo`` crops of the training photos (model space) followed by
    ``n_noise`` images of the 16 noise types (uniformly mixed), concatenated.
    """

    def __init__(
        self, batch_size: int, image_size: int, noise_fraction: float, heavy_tails: str, seed: int
    ) -> None:
        self.n_noise = round(batch_size * noise_fraction)
        self.n_photo = batch_size - self.n_noise
        self.photos = (
            ImageCropSource(load_sample_photos("train"), image_size, self.n_photo, seed=seed)
            if self.n_photo
            else None
        )
        self.noise = (
            NoiseSource(NOISE_TYPES, self.n_noise, image_size, seed=seed + 1, heavy_tails=heavy_tails)
            if self.n_noise
            else None
        )

    def batch(self, step: int) -> torch.Tensor:
        parts = [s.batch(step) for s in (self.photos, self.noise) if s is not None]
        return torch.cat(parts)


def heldout_images(multiple: int = 16) -> list[torch.Tensor]:
    """The held-out photos in [0, 1], centre-cropped to sides that are multiples of ``multiple``."""
    out = []
    for im in load_sample_photos("heldout"):
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
    trainer = Trainer(model, cfg, source, callbacks=[*callbacks_for(name, args), *extra])
    t0 = time.perf_counter()
    diverged = None
    try:
        result = trainer.fit(resume=False)
        steps, nonfinite = result.steps, result.nonfinite_steps
    except TrainingDiverged as exc:
        diverged = str(exc).splitlines()[0]
        steps, nonfinite = trainer.step, trainer.nonfinite_steps
    return {
        "steps": steps,
        "nonfinite_steps": nonfinite,
        "diverged": diverged,
        "train_wall_s": time.perf_counter() - t0,
        "last": {k: v for k, v in trainer.last_metrics.items() if isinstance(v, float)},
    }


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("bench", "stability"), default="bench")
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
    p.add_argument(
        "--save-models", type=Path, default=None, help="Save each trained model to DIR/<ratio>/<name>."
    )
    args = p.parse_args(argv)
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
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
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


if __name__ == "__main__":
    main()

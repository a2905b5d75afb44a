"""NoSVD ablation stability: does replacing the SVD readout by a Linear break training on heavy tails?

The seeds' ``geolip-svae-nosvd-ablation`` swapped PatchSVAE's SVD for ``ω = Linear(V·D → D)`` and an
inverse ``Linear(D → V·D)`` and broke on raw heavy-tailed noise (round 1: NaN at iteration 899 under
the adaptive clip ``max(recon, 1)``). Its diagnosis: with the SVD, ``‖M̂‖_F = ‖S‖ = √V`` because U and
Vᵀ are orthonormal and the rows of M are unit vectors — the decoder input is bounded by
construction; the learned inverse readout has no such bound and amplifies freely.

This benchmark trains, with the one :class:`pentachora.training.Trainer` and the same seed, data,
optimizer and number of steps — and the same initial weights of the parts they share (encoder,
cross-attention, decoder, boundary smoothing; result files made before this was added say
``shared_init: false``) — the canonical PatchSVAE and the ablation over a grid of learning rates, on raw (Cauchy up to ±63.7) and clamped (±4) noise of all 16
types, and records per step:

* ``recon_loss`` and, for the same batch, the MSE of predicting zero (``mean x²``) — their ratio is the
  **spike**: above 1 the model does worse than outputting nothing;
* ``latent_rms`` — RMS of the matrix M̂ the decoder consumes (canonical: pinned near ``1/√D``);
* the pre-clip gradient norm and the clip threshold (adaptive mode).

After training: per-noise-type MSE on fixed evaluation images of the same tails, relative to the
zero predictor (``rel_mse`` 1.0 = learned nothing, 0 = perfect).

A run **blew up** when it had non-finite steps or its spike exceeded ``--blowup-ratio`` (default 3).

Usage::

    python benchmarks/nosvd_ablation.py                       # CPU grid, fresnel frame (hidden 256, depth 2)
    python benchmarks/nosvd_ablation.py --full --lrs 1e-2 --seeds 0 --tails raw   # full fresnel width
    python benchmarks/nosvd_ablation.py --clip adaptive       # the seed's round-1 clip rule
    python benchmarks/nosvd_ablation.py --models nosvd-r2 nosvd-r3 geovae --tag rounds   # rounds 2–3, successor
    python benchmarks/nosvd_ablation.py --render              # re-render markdown/PNG from the JSON

Writes ``benchmarks/results/nosvd_ablation.{json,md,png}`` (``--tag`` adds a suffix).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: A run whose evaluation MSE is at least this fraction of the zero predictor's learned nothing.
COLLAPSED_REL_MSE = 0.99

#: The contenders: (family, config overrides). PatchSVAE variants start from the ``fresnel`` preset;
#: GeoVAE (the SVD-free successor the seeds ask for) from ``48:1`` — the same frame (16×16 patches,
#: V=256, D=16, same MLP width and depth), trained with its geometry-first CV schedule.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "svae": ("svae", {"readout": "svd"}),
    "nosvd": ("svae", {"readout": "linear"}),
    "nosvd-r2": ("svae", {"readout": "linear", "omega_layernorm": True}),
    "nosvd-r3": ("svae", {"readout": "linear", "omega_layernorm": True, "mhat_sphere_norm": True}),
    "geovae": ("geovae", {}),
}

LABELS = {
    "svae": "PatchSVAE (SVD)",
    "nosvd": "NoSVD round 1",
    "nosvd-r2": "NoSVD round 2 (LN ω)",
    "nosvd-r3": "NoSVD round 3 (LN ω + sphere M̂)",
    "geovae": "GeoVAE 48:1",
}


def build_model(spec: dict[str, Any]):
    """The model of a run and its training callbacks (GeoVAE's CV phase schedule)."""
    import torch

    from pentachora.autoencoders import GeoVAE, GeoVAEConfig, PatchSVAE, PatchSVAEConfig
    from pentachora.recipes import geovae_schedule

    family, overrides = MODELS[spec["model"]]
    if family == "svae":
        size = {} if spec["full"] else {"hidden": spec["hidden"], "depth": spec["depth"]}
        model = PatchSVAE(PatchSVAEConfig.preset("fresnel", **size, **overrides))
        if overrides.get("readout") == "linear":
            # start the parts the ablation shares with the canonical model (encoder, cross-attention,
            # decoder, boundary smoothing) from the canonical model's initial weights for this seed
            torch.manual_seed(spec["seed"])
            reference = PatchSVAE(PatchSVAEConfig.preset("fresnel", **size))
            result = model.load_state_dict(reference.state_dict(), strict=False)
            assert not result.unexpected_keys, result.unexpected_keys
            assert all(
                k.startswith(("readout.", "inverse_readout.", "omega_norm.")) for k in result.missing_keys
            )
        return model, []
    size = {} if spec["full"] else {
        "enc_hidden": spec["hidden"], "enc_depth": spec["depth"], "dec_hidden": spec["hidden"], "dec_depth": spec["depth"],
    }  # fmt: skip
    return GeoVAE(GeoVAEConfig.preset("48:1", **size, **overrides)), [geovae_schedule(spec["steps"])]


class _RecordingSource:
    """Wraps a noise source; remembers each step's zero-predictor MSE (``mean x²``)."""

    def __init__(self, source) -> None:
        self.source = source
        self.zero_mse: dict[int, float] = {}

    def batch(self, step: int):
        x = self.source.batch(step)
        self.zero_mse[step] = float(x.square().mean())
        return x


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (model, tails, lr, seed) cell and evaluate it; a JSON-able result."""
    import torch

    from pentachora.data.noise import NoiseSource, noise_eval_sets
    from pentachora.recipes.benchmarking import train_steps
    from pentachora.training import Callback, TrainConfig

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model, callbacks = build_model(spec)
    source = _RecordingSource(
        NoiseSource(
            batch_size=spec["batch_size"],
            image_size=spec["image_size"],
            seed=spec["seed"],
            heavy_tails=spec["tails"],
        )
    )
    trace: dict[str, list[float]] = {
        k: [] for k in ("step", "recon_loss", "zero_mse", "grad_norm", "latent_rms", "clip_threshold")
    }

    skipped = [0]

    class Record(Callback):
        def on_step_end(self, trainer, step, output_scalars):
            skipped[0] = trainer.nonfinite_steps
            trace["step"].append(step)
            trace["zero_mse"].append(source.zero_mse.pop(step, math.nan))
            for key in ("recon_loss", "grad_norm", "latent_rms", "clip_threshold"):
                trace[key].append(float(output_scalars.get(key, math.nan)))

    clip = {"none": (0.0, "fixed"), "fixed": (1.0, "fixed"), "adaptive": (1.0, "adaptive")}[spec["clip"]]
    cfg = TrainConfig(
        steps=spec["steps"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        weight_decay=0.0,  # the reference trainer is plain Adam
        warmup_steps=0,
        lr_schedule="constant",
        grad_clip=clip[0],
        grad_clip_mode=clip[1],
        seed=spec["seed"],
        log_every=10**9,
        max_nonfinite_in_row=50,
        out_dir=None,
        progress=False,
        tensorboard=False,
    )
    out = train_steps(model, cfg, source, (*callbacks, Record()))
    diverged, wall = out["diverged"], out["train_wall_s"]
    nonfinite = skipped[0] if diverged else out["nonfinite_steps"]  # as logged up to the divergence

    model.eval()
    eval_sets = noise_eval_sets(
        n_per_type=spec["eval_per_type"], image_size=spec["image_size"], heavy_tails=spec["tails"]
    )
    per_type: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for kind, x in eval_sets.items():
            recon = model(x).recon
            mse = float((recon - x).square().mean())
            zero = float(x.square().mean())
            per_type[kind] = {"mse": mse, "zero_mse": zero, "rel_mse": mse / zero if zero > 0 else math.nan}
    # one ratio per step (NaN where the zero predictor's MSE is not positive or unknown)
    ratios = [
        r / z if z > 0 else math.nan for r, z in zip(trace["recon_loss"], trace["zero_mse"], strict=True)
    ]
    finite_ratios = [r for r in ratios if math.isfinite(r)]
    spike = max(finite_ratios) if finite_ratios else math.nan
    over = set(_steps_over({"trace": trace}, spec["blowup_ratio"]))
    blowup_step = next((s for s in trace["step"] if s in over), None)
    rel = [v["rel_mse"] for v in per_type.values()]
    rms = [v for v in trace["latent_rms"] if math.isfinite(v)]
    return {
        **{k: spec[k] for k in ("model", "tails", "lr", "seed", "clip")},
        "parameters": model.num_parameters(),
        "latent_floats_per_patch": model.latent_floats_per_patch,
        "steps": len(trace["step"]),
        "wall_s": wall,
        "nonfinite_steps": int(nonfinite),
        "diverged": diverged,
        "max_spike": spike,
        "max_recon_loss": max((v for v in trace["recon_loss"] if math.isfinite(v)), default=math.nan),
        "blowup_step": blowup_step,
        "blew_up": bool(nonfinite or diverged or (math.isfinite(spike) and spike > spec["blowup_ratio"])),
        "max_grad_norm": max((v for v in trace["grad_norm"] if math.isfinite(v)), default=math.nan),
        "latent_rms_first": rms[0] if rms else math.nan,
        "latent_rms_max": max(rms) if rms else math.nan,
        "latent_rms_final": rms[-1] if rms else math.nan,
        "eval_rel_mse_mean": statistics.fmean(rel),
        "eval_rel_mse_cauchy": per_type["cauchy"]["rel_mse"],
        "eval_per_type": per_type,
        "trace": trace,
    }


# ---------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str = "{:.3g}") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan/inf"
    return spec.format(v)


def _span(values: list[float], spec: str = "{:.3g}") -> str:
    """``"a"`` for one value or equal values, ``"min–max"`` over seeds otherwise."""
    lo, hi = spec.format(min(values)), spec.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _steps_over(r: dict[str, Any], ratio: float) -> list[int]:
    """Steps whose recon MSE exceeded ``ratio`` × the zero predictor's (or were non-finite)."""
    t = r["trace"]
    return [
        s
        for s, a, b in zip(t["step"], t["recon_loss"], t["zero_mse"], strict=True)
        if not math.isfinite(a) or (b > 0 and a / b > ratio)
    ]


def _cell_key(r: dict[str, Any]) -> tuple:
    return (r["model"], r["tails"], r["lr"])


def render_markdown(data: dict[str, Any]) -> str:
    runs = data["runs"]
    meta = data["meta"]
    lines = [
        "# NoSVD ablation stability (canonical PatchSVAE vs the seed's Linear readout)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['workers']} worker(s) × {meta['threads']} thread(s); "
        f"total wall {meta['wall_s']:.0f} s.",
        "",
        f"Setup: fresnel frame V=256, D=16, patch 16 ({meta['size']}); all 16 noise types; "
        f"{meta['batch_size']} images of {meta['image_size']}² per step; {meta['steps']} steps; "
        f"Adam (weight decay 0), constant LR, no warm-up; clip `{meta['clip']}`; same seed per pair"
        + (
            ", the ablation's shared parts start from the canonical model's initial weights. "
            if meta.get("shared_init")
            else " (initial weights of the shared parts not identical: run before shared init). "
        )
        + f"Spike = max over steps of recon MSE / MSE of predicting zero on the same batch; "
        f"blew up = non-finite steps or spike > {meta['blowup_ratio']}. `rel MSE` = evaluation MSE / zero-predictor "
        "MSE on fixed images of the same tails (1 = learned nothing)."
        + (
            " GeoVAE: the 48:1 preset at the same patch, frame, width and depth, with its geometry-first CV "
            "schedule (`recipes.geovae_schedule`); its M̂ is row-sphere-normalised × a learned gain."
            if any(r["model"] == "geovae" for r in runs)
            else ""
        ),
        "",
        "| model | tails | lr | seed | blew up | first step over | max spike | max recon | max grad-norm | M̂ rms first → max → final | eval rel MSE (mean / cauchy) | non-finite | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["tails"], r["lr"], r["model"], r["seed"])):
        lines.append(
            f"| {LABELS.get(r['model'], r['model'])} | {r['tails']} | {r['lr']:g} | {r['seed']} | "
            f"{'**yes**' if r['blew_up'] else 'no'} | {_fmt(r['blowup_step'], '{}')} | {_fmt(r['max_spike'], '{:.2f}')} | "
            f"{_fmt(r['max_recon_loss'], '{:.4g}')} | {_fmt(r['max_grad_norm'], '{:.3g}')} | "
            f"{_fmt(r['latent_rms_first'])} → {_fmt(r['latent_rms_max'])} → {_fmt(r['latent_rms_final'])} | "
            f"{_fmt(r['eval_rel_mse_mean'], '{:.3f}')} / {_fmt(r['eval_rel_mse_cauchy'], '{:.3f}')} | "
            f"{r['nonfinite_steps']} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "## Reading (generated from the numbers above)",
        "",
        "Per model, tails and learning rate over the seeds: runs that blew up; steps whose recon MSE "
        f"exceeded {meta['blowup_ratio']}× the zero predictor's (total, and the last such step); the largest "
        f"spike; runs that ended having learned nothing (eval rel MSE ≥ {COLLAPSED_REL_MSE}); growth of the "
        "RMS of M̂ (max / first). Ranges are min–max over the seeds.",
        "",
    ]
    lines += reading_lines(data)
    return "\n".join(lines) + "\n"


def reading_lines(data: dict[str, Any]) -> list[str]:
    """One line per (model, tails, lr) over the seeds of a result file."""
    runs, meta = data["runs"], data["meta"]
    lines: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_cell_key(r), []).append(r)
    models = sorted({r["model"] for r in runs}, key=list(MODELS).index)
    for tails in sorted({r["tails"] for r in runs}):
        for model in models:
            cells = sorted((k for k in groups if k[0] == model and k[1] == tails), key=lambda k: k[2])
            for k in cells:
                g = groups[k]
                over = [_steps_over(r, meta["blowup_ratio"]) for r in g]
                n_over = sum(len(o) for o in over)
                last = max((o[-1] for o in over if o), default=None)
                growth = [r["latent_rms_max"] / r["latent_rms_first"] for r in g]
                collapsed = sum(r["eval_rel_mse_mean"] >= COLLAPSED_REL_MSE for r in g)
                rel = [r["eval_rel_mse_mean"] for r in g]
                lines.append(
                    f"- {LABELS.get(model, model)}, {tails} tails, lr {k[2]:g}: "
                    f"{sum(r['blew_up'] for r in g)}/{len(g)} blew up; {n_over} step(s) over"
                    + (f" (last at step {last})" if last is not None else "")
                    + f"; max spike {_span([r['max_spike'] for r in g])}×; {collapsed}/{len(g)} learned nothing "
                    f"(eval rel MSE {_span(rel, '{:.3f}')}); M̂ RMS grew ×{_span(growth)}."
                )
    return lines


def render_summary(paths: list[Path]) -> str:
    """All result files read together: each one's setup, command and reading lines."""
    lines = [
        "# NoSVD ablation stability — all runs (generated by `python benchmarks/nosvd_ablation.py --summary`)",
        "",
        "Spike = max over steps of recon MSE / zero-predictor MSE on the same batch; a run blew up with "
        "non-finite steps or a spike over the file's threshold; learned nothing = eval MSE ≥ "
        f"{COLLAPSED_REL_MSE} × the zero predictor's. Per-run tables are in each file.",
        "",
    ]
    for path in paths:
        data = json.loads(path.read_text())
        meta = data["meta"]
        lines += [
            f"## `{path.with_suffix('.md').name}` — {meta['size']}, {meta['steps']} steps, clip `{meta['clip']}`",
            "",
            f"`{meta['command'].strip()}`",
            "",
            *reading_lines(data),
            "",
        ]
    return "\n".join(lines)


def render_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    tails_list = sorted({r["tails"] for r in runs})
    lrs = sorted({r["lr"] for r in runs})
    colors = {
        "svae": "tab:blue", "nosvd": "tab:red", "nosvd-r2": "tab:orange", "nosvd-r3": "tab:purple", "geovae": "tab:green",
    }  # fmt: skip
    fig, axes = plt.subplots(
        2 * len(tails_list), len(lrs), figsize=(4.2 * len(lrs), 3.0 * 2 * len(tails_list)), squeeze=False
    )
    for ti, tails in enumerate(tails_list):
        for li, lr in enumerate(lrs):
            ax_s, ax_m = axes[2 * ti, li], axes[2 * ti + 1, li]
            for r in runs:
                if r["tails"] != tails or r["lr"] != lr:
                    continue
                t = r["trace"]
                ratio = [
                    a / b if b > 0 else math.nan for a, b in zip(t["recon_loss"], t["zero_mse"], strict=True)
                ]
                kw = dict(color=colors.get(r["model"], "k"), lw=0.8, alpha=0.85 if r["seed"] == 0 else 0.45)
                label = LABELS.get(r["model"], r["model"]) if r["seed"] == 0 else None
                ax_s.plot(t["step"], ratio, label=label, **kw)
                ax_m.plot(t["step"], t["latent_rms"], **kw)
            ax_s.set_yscale("log")
            ax_m.set_yscale("log")
            ax_s.axhline(data["meta"]["blowup_ratio"], color="k", ls=":", lw=0.8)
            ax_s.set_title(f"{tails} tails, lr {lr:g}", fontsize=9)
            if li == 0:
                ax_s.set_ylabel("recon MSE / zero-predictor MSE")
                ax_m.set_ylabel("RMS of M̂ (decoder input)")
            ax_m.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        "NoSVD ablation vs canonical PatchSVAE: training spikes and decoder-input magnitude", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["svae", "nosvd"], choices=list(MODELS))
    p.add_argument("--tails", nargs="+", default=["raw", "clamp"], choices=["raw", "clamp"])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument(
        "--clip",
        default="none",
        choices=["none", "fixed", "adaptive"],
        help="none (default), fixed 1.0, or adaptive max(recon, 1) — the seed's round-1 rule",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256, help="MLP width of the CPU frame (ignored with --full)")
    p.add_argument(
        "--depth", type=int, default=2, help="residual blocks of the CPU frame (ignored with --full)"
    )
    p.add_argument(
        "--full", action="store_true", help="full fresnel size (hidden 768, depth 4, 16.9M params)"
    )
    p.add_argument("--eval-per-type", type=int, default=8)
    p.add_argument("--blowup-ratio", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--render", action="store_true", help="only re-render markdown and PNG from the JSON")
    p.add_argument(
        "--summary",
        action="store_true",
        help="write results/nosvd_ablation_summary.md from every result JSON",
    )
    args = p.parse_args(argv)

    if args.summary:
        paths = sorted(RESULTS.glob("nosvd_ablation*.json"))
        out = RESULTS / "nosvd_ablation_summary.md"
        out.write_text(render_summary(paths))
        print(f"wrote {out} from {len(paths)} result file(s)")
        return 0
    stem = "nosvd_ablation" + (f"_{args.tag}" if args.tag else "")
    json_path, md_path, png_path = (RESULTS / f"{stem}.{ext}" for ext in ("json", "md", "png"))
    if args.render:
        data = json.loads(json_path.read_text())
    else:
        import torch

        specs = [
            {
                "model": m,
                "tails": t,
                "lr": lr,
                "seed": s,
                "clip": args.clip,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "hidden": args.hidden,
                "depth": args.depth,
                "full": args.full,
                "eval_per_type": args.eval_per_type,
                "blowup_ratio": args.blowup_ratio,
                "threads": args.threads,
            }
            for t, lr, s, m in itertools.product(args.tails, args.lrs, args.seeds, args.models)
        ]
        t0 = time.perf_counter()
        runs = []
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for i, r in enumerate(pool.imap_unordered(run_one, specs), 1):
                runs.append(r)
                print(
                    f"[{i}/{len(specs)}] {r['model']:9s} {r['tails']:5s} lr {r['lr']:<7g} seed {r['seed']}: "
                    f"blew_up={r['blew_up']} spike={r['max_spike']:.3g} M̂rms max={r['latent_rms_max']:.3g} "
                    f"rel_mse={r['eval_rel_mse_mean']:.3f} ({r['wall_s']:.0f}s)",
                    flush=True,
                )
        size = (
            "full: hidden 768, depth 4"
            if args.full
            else f"CPU frame: hidden {args.hidden}, depth {args.depth}"
        )
        data = {
            "meta": {
                "command": "python benchmarks/nosvd_ablation.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "machine": f"{platform.machine()} {platform.system()}, {mp.cpu_count()} CPUs",
                "torch": torch.__version__,
                "workers": args.workers,
                "threads": args.threads,
                "wall_s": time.perf_counter() - t0,
                "size": size,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "clip": args.clip,
                "blowup_ratio": args.blowup_ratio,
                "shared_init": True,
            },
            "runs": runs,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1, allow_nan=True))
    md_path.write_text(render_markdown(data))
    render_png(data, png_path)
    print(f"wrote {'' if args.render else f'{json_path}, '}{md_path}, {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

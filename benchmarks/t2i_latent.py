"""Which first stage makes the miniature text-to-image model cheapest at equal quality?

The same miniature UNet (the ``cpu`` preset of :class:`~pentachora.t2i.MiniT2I`) denoises either pixels
(folded 2×2, the pixel run you pass with ``--pixel-run``) or the 4×4 latent grid of a frozen first stage
(8×8 pixels per cell), as Stable Diffusion denoises its VAE's latent. Every first stage is trained on the
world's training renders for the same process-CPU budget; its peak learning rate is chosen on
validation scenes (seed 0), then seeds 1 and 2 are trained at that rate. Each is wrapped behind
diffusers' VAE surface (``LatentAutoencoder``: ``encode(x).latent_dist``, ``decode(z).sample``,
per-channel ``latents_mean`` / ``latents_std`` computed from 4,096 training renders).

Measured, per first stage (3 seeds): reconstruction PSNR / SSIM on held-out test scenes and on the
held-out photo tiles; KL per latent cell, per-channel variance spread, pentachoron CV of the latent cells
against ``target_cv(c)``, and interpolation smoothness (decoded straight-line paths between two test
scenes, read by the world's reader). Per latent T2I (seed-0 first stage, every contender the same
optimiser steps): the validation learning curve (object recall of 48 validation captions), classifier-free
guidance chosen on 96 other validation captions, then object recall and binding on 200 held-out test
captions × 3 seeds, with paired bootstrap intervals against GeoVAE. The pixel model is scored by the same
code. Training and sampling costs are measured in this process, on this machine, pixel and latent alike.

Usage::

    pentachora train t2i --preset cpu --out runs/t2i --threads 2     # the pixel model (≈ 70 min)
    python benchmarks/t2i_latent.py --pixel-run runs/t2i             # ≈ 100 min on 2 CPU cores
    python benchmarks/t2i_latent.py --pixel-run runs/t2i --quick     # smoke run (minutes)

Resumable: trained first stages and UNet runs are kept under ``--work`` and reused. Writes
``benchmarks/results/t2i_latent.{json,md}`` and ``t2i_latent_curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pentachora.autoencoders import LatentAutoencoder
from pentachora.data import heldout_tiles, load_sample_photos
from pentachora.data.scenes import SceneWorld
from pentachora.io import atomic_write_json, read_json
from pentachora.recipes.benchmarking import BudgetSettings, choose_on_validation, train_interleaved
from pentachora.recipes.latent_t2i import (
    FIRST_STAGES,
    SceneImageSource,
    describe_first_stage,
    interpolation_smoothness,
    latent_statistics,
    latent_t2i_model,
    reconstruction_reading,
    reconstruction_scores,
    to_signed,
)
from pentachora.recipes.loading import FINAL_DIR
from pentachora.recipes.reporting import run_meta, verdict, write_results
from pentachora.recipes.scene_pictures import ceiling_curve
from pentachora.recipes.t2i import (
    caption_set,
    default_reader,
    encode_prompts,
    evaluate_prompts,
    load_window_encoder,
    scene_pool,
    token_counter,
    train_t2i,
)
from pentachora.t2i.model import MiniT2I, MiniT2IConfig
from pentachora.t2i.scoring import ObjectHits, paired_recall_difference
from pentachora.training import TrainConfig
from pentachora.training.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GUIDANCE = (2.0, 3.0, 5.0)
log = logging.getLogger("t2i_latent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--pixel-run", type=Path, required=True, help="A finished pixel mini-t2i run folder (the peer)."
    )
    p.add_argument(
        "--stages", default=",".join(FIRST_STAGES), help=f"First stages (of {', '.join(FIRST_STAGES)})."
    )
    p.add_argument("--seeds", type=int, default=3, help="First-stage seeds (the UNet uses seed 0's).")
    p.add_argument("--fs-budget", type=float, default=90.0, help="First-stage budget, process CPU seconds.")
    p.add_argument("--unet-steps", type=int, default=2500, help="Optimiser steps of every latent UNet.")
    p.add_argument(
        "--unet-preset", default="cpu", help="MiniT2I preset of the latent UNets (the pixel run's: cpu)."
    )
    p.add_argument("--eval-every", type=int, default=500, help="Validation curve interval (steps).")
    p.add_argument("--test-captions", type=int, default=200, help="Held-out test captions (× 3 seeds).")
    p.add_argument("--pool-size", type=int, default=20_000, help="Training scenes (the pixel model's pool).")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="Cache root for the scene pool (default: ~/.cache/pentachora).",
    )
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "latent-t2i", help="Where runs are kept.")
    p.add_argument("--quick", action="store_true", help="Smoke run: tiny budgets, two stages, few captions.")
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_latent", help="Output stem.")
    args = p.parse_args(argv)
    if args.quick:
        args.stages, args.seeds, args.fs_budget, args.unet_steps = "geovae-12,nosvd-12", 1, 3.0, 20
        args.eval_every, args.test_captions, args.pool_size = 10, 8, min(args.pool_size, 64)
        args.unet_preset = "tiny"
        if args.out == RESULTS / "t2i_latent":
            args.out = args.work / "quick"
    unknown = sorted(set(args.stages.split(",")) - set(FIRST_STAGES))
    if unknown:
        p.error(f"unknown first stages {unknown}; known: {list(FIRST_STAGES)}")
    if not (args.pixel_run / FINAL_DIR).is_dir() or not (args.pixel_run / "metrics.jsonl").is_file():
        p.error(f"{args.pixel_run} is not a finished mini-t2i run (train it with `pentachora train t2i`)")
    return args


# ============================================================================================ first stages
def train_first_stage(name: str, seed: int, lr: float, images: torch.Tensor, val: torch.Tensor,
                      budget: float) -> tuple[LatentAutoencoder, dict[str, Any]]:  # fmt: skip
    """One first stage at one lr and seed; its validation PSNR and its charged CPU time.

    Trained with one torch thread: process CPU time then counts the work, not two threads spin-waiting
    for a core another process holds (in the recorded run, trained with two threads while other jobs ran,
    one contender's seeds got 203 to 769 steps of the same CPU budget)."""
    settings = BudgetSettings(budget=budget, kind="cpu", curve_points=0, chunk_steps=20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runners = train_interleaved(
            {name: FIRST_STAGES[name].build}, {name: lr}, lambda: SceneImageSource(images, 32, seed=seed), settings,
            torch.device("cpu"), seed,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    r = runners[name]
    ae = LatentAutoencoder.wrap(r.model.eval())
    record = {"lr": lr, "seed": seed, "steps": r.step, "cpu_s": r.cpu_s, "wall_s": r.wall_s,
              "nonfinite": r.nonfinite, "val": reconstruction_scores(ae, val)}  # fmt: skip
    return ae, record


def first_stages(args: argparse.Namespace, pool_images: torch.Tensor, val: torch.Tensor) -> dict[str, Any]:
    """Train (or reuse) every first stage: lr on validation at seed 0, then the other seeds."""
    out: dict[str, Any] = {}
    for name in args.stages.split(","):
        folder = args.work / "first-stage" / name
        summary_path = folder / "summary.json"
        if summary_path.is_file():
            out[name] = read_json(summary_path)
            continue
        sweep, models = [], {}
        for lr in FIRST_STAGES[name].lrs:
            log.info("first stage %s lr %.0e seed 0", name, lr)
            ae, rec = train_first_stage(name, 0, lr, pool_images, val, args.fs_budget)
            sweep.append(rec)
            models[lr] = ae
        best = choose_on_validation({r["lr"]: r["val"]["psnr"] for r in sweep})
        if best is None:
            raise SystemExit(f"{name}: no learning rate gave a finite validation PSNR")
        runs = [next(r for r in sweep if r["lr"] == best)]
        keep = {0: models[best]}
        for seed in range(1, args.seeds):
            log.info("first stage %s lr %.0e seed %d", name, best, seed)
            keep[seed], rec = train_first_stage(name, seed, best, pool_images, val, args.fs_budget)
            runs.append(rec)
        for seed, ae in keep.items():
            g = torch.Generator().manual_seed(seed)
            n = min(4096, pool_images.shape[0])
            ae.calibrate([to_signed(pool_images[i : i + 512]) for i in range(0, n, 512)], generator=g)
            ae.save_pretrained(folder / f"seed{seed}")
        out[name] = {"lr": best, "lr_sweep": sweep, "runs": runs, "about": FIRST_STAGES[name].about}
        atomic_write_json(summary_path, out[name])
    return out


def first_stage_scores(
    args: argparse.Namespace, reader: Any, test: torch.Tensor, test_layouts: Any, photos: torch.Tensor
) -> dict[str, Any]:
    """Reconstruction and latent statistics of every trained first stage and seed (held-out data)."""
    half = test.shape[0] // 2
    pairs = min(64, half)
    scores: dict[str, Any] = {}
    for name in args.stages.split(","):
        rows = []
        for seed in range(args.seeds):
            ae = LatentAutoencoder.from_pretrained(args.work / "first-stage" / name / f"seed{seed}")
            rows.append({
                "seed": seed, **describe_first_stage(ae),
                "test_scenes": reconstruction_scores(ae, test), "photos": reconstruction_scores(ae, photos),
                "latent": latent_statistics(ae, test, seed=seed),
                "reading": reconstruction_reading(ae, reader, test, test_layouts),
                "interpolation": interpolation_smoothness(ae, reader, test[:pairs], test[half : half + pairs]),
            })  # fmt: skip
        scores[name] = {"seeds": rows, "mean": _mean_of(rows)}
    return scores


def _mean_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (population sd) of every nested number over seeds."""
    out: dict[str, Any] = {}
    for group in ("test_scenes", "photos", "latent", "interpolation", "reading"):
        out[group] = {}
        for key in rows[0][group]:
            vals = [float(r[group][key]) for r in rows]
            out[group][key] = statistics.fmean(vals)
            out[group][key + "_sd"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return out


# ============================================================================================ T2I
def choose_guidance(
    model: MiniT2I, reader: Any, states: torch.Tensor, layouts: np.ndarray
) -> tuple[float, dict]:
    """Classifier-free guidance scale with the best validation object recall."""
    scores = {g: evaluate_prompts(model, reader, states, layouts, seeds=(0,), guidance_scale=g)["summary"]["object_recall"]
              for g in GUIDANCE}  # fmt: skip
    best = choose_on_validation(scores)
    return float(best if best is not None else model.config.guidance_scale), {
        str(k): v for k, v in scores.items()
    }


def score_t2i(model: MiniT2I, reader: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Guidance on validation, then the held-out test score (summary + hits for paired differences)."""
    guidance, sweep = choose_guidance(model, reader, data["gval_states"], data["gval_layouts"])
    scores = evaluate_prompts(model, reader, data["test_states"], data["test_layouts"], seeds=(0, 1, 2),
                              guidance_scale=guidance)  # fmt: skip
    return {"guidance": guidance, "guidance_val": sweep, "test": scores["summary"], "_hits": scores["hits"],
            "_clusters": scores["clusters"]}  # fmt: skip


def cached_score(stem: Path, compute: Any) -> dict[str, Any]:
    """``compute()`` once: its JSON part and its hits (``.npz``) are kept under ``stem`` and reused."""
    json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if json_path.is_file() and npz_path.is_file():
        out = read_json(json_path)
        arrays = np.load(npz_path, allow_pickle=False)
        out["_hits"] = ObjectHits(**{f.name: arrays[f.name] for f in dataclasses.fields(ObjectHits)})
        out["_clusters"] = arrays["clusters"]
        return out
    log.info("scoring %s", stem.name)
    out = compute()
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz_path, clusters=out["_clusters"], **dataclasses.asdict(out["_hits"]))
    atomic_write_json(json_path, {k: v for k, v in out.items() if not k.startswith("_")})
    return out


def train_latent_unet(args: argparse.Namespace, name: str, reader: Any) -> tuple[MiniT2I, dict[str, Any]]:
    """Train the latent UNet of one first stage (or reuse its finished run: a rerun only re-reports)."""
    run_dir = args.work / "unet" / name
    if (run_dir / FINAL_DIR / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file():
        metrics = read_metrics(run_dir / "metrics.jsonl")
        train = [r for r in metrics if r.get("split") == "train"]
        if train and max(r["step"] for r in train) == args.unet_steps:
            model = MiniT2I.from_pretrained(run_dir / FINAL_DIR).eval()
            return model, {"steps": args.unet_steps, "train_wall_s": max(r["time"] for r in train),
                           "curve": ceiling_curve(metrics), "unet_params": model.describe()["unet_params"]}  # fmt: skip
    ae = LatentAutoencoder.from_pretrained(args.work / "first-stage" / name / "seed0")
    torch.manual_seed(0)
    model = latent_t2i_model(ae, MiniT2IConfig.preset(args.unet_preset))
    pixel = read_json(args.pixel_run / "train_config.json")
    config = TrainConfig(
        steps=args.unet_steps, batch_size=pixel["batch_size"], lr=pixel["lr"], weight_decay=pixel["weight_decay"],
        warmup_steps=min(pixel["warmup_steps"], max(1, args.unet_steps // 10)), lr_schedule=pixel["lr_schedule"],
        min_lr_ratio=pixel["min_lr_ratio"], grad_clip=pixel["grad_clip"], mixed_precision=pixel["mixed_precision"],
        seed=0, log_every=25, eval_every=args.eval_every, save_every=args.eval_every,
        out_dir=str(run_dir), progress=False, tensorboard=False,
    )  # fmt: skip
    run = train_t2i(model, config, pool_size=args.pool_size, reader=reader, cache=args.cache, eval_captions=48 if not args.quick else 4, progress=False,
                    final_eval_captions=0)  # fmt: skip
    return run.model, {"steps": run.result.steps, "train_wall_s": run.result.wall_time_s,
                       "curve": ceiling_curve(run.metrics), "unet_params": model.describe()["unet_params"]}  # fmt: skip


@torch.no_grad()
def costs(models: dict[str, MiniT2I], pool: Any, steps: int = 8, images: int = 32) -> dict[str, Any]:
    """Per-step training cost (batch 32, bf16 autocast as trained) and per-image sampling cost
    (25 DDIM steps, guidance), measured back to back in this process."""
    out = {}
    batch = {
        "pixel_values": pool.images[:32].float() / 255,
        "encoder_hidden_states": pool.states[:32].float(),
    }
    states = pool.states[:images].float()
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-9)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            with torch.enable_grad(), torch.autocast("cpu", torch.bfloat16):
                loss = model(batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        model.eval()
        t0 = time.perf_counter()
        model.generate(states, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
        out[name] = {
            "train_step_s": statistics.median(times[2:]),
            "sample_s_per_image": (time.perf_counter() - t0) / images,
        }
    return out


def t2i_part(
    args: argparse.Namespace, reader: Any, world: SceneWorld, encoder: Any, pool: Any
) -> dict[str, Any]:
    count = token_counter(encoder)
    n_val, n_test = (96, args.test_captions) if not args.quick else (4, args.test_captions)
    gval = caption_set(world, "val", n_val, "prose", count, offset=1000)
    test = caption_set(world, "test", n_test, "prose", count)
    data = {
        "gval_states": encode_prompts(encoder, [c.text for _, c in gval]), "gval_layouts": world.layouts([s for s, _ in gval]),
        "test_states": encode_prompts(encoder, [c.text for _, c in test]), "test_layouts": world.layouts([s for s, _ in test]),
    }  # fmt: skip
    pixel_model = MiniT2I.from_pretrained(args.pixel_run / FINAL_DIR).eval()
    pixel_curve = ceiling_curve(read_metrics(args.pixel_run / "metrics.jsonl"))
    pixel_eval = read_json(args.pixel_run / "eval.json")
    results: dict[str, Any] = {"pixels": {"steps": pixel_eval["train_steps"], "train_wall_s": pixel_eval["train_wall_s"],
                                          "curve": pixel_curve, "unet_params": pixel_model.describe()["unet_params"]}}  # fmt: skip
    models: dict[str, MiniT2I] = {"pixels": pixel_model}
    for name in args.stages.split(","):
        log.info("latent UNet in %s", name)
        models[name], results[name] = train_latent_unet(args, name, reader)
    for name, model in models.items():
        results[name].update(
            cached_score(args.work / "scores" / name, lambda m=model: score_t2i(m, reader, data))
        )
    log.info("measuring costs")
    for name, c in (
        costs(models, pool) if not args.quick else costs(models, pool, steps=1, images=2)
    ).items():
        results[name].update(c)
    return results


def paired_against(results: dict[str, Any], ref: str) -> dict[str, list[float]]:
    out = {}
    for name, r in results.items():
        if name != ref and "_hits" in r:
            out[name] = list(paired_recall_difference(r["_hits"], results[ref]["_hits"], r["_clusters"]))
    return out


# ============================================================================================ report
def reach_seconds(curve: list[dict[str, float]], step_s: float, target: float) -> float | None:
    """UNet training seconds (steps × the same-run step cost) at which a curve first reaches ``target``."""
    for row in curve:
        if row["object_recall"] >= target:
            return row["step"] * step_s
    return None


def save_curves(t2i: dict[str, Any], path: Path) -> None:
    from pentachora.recipes.scene_pictures import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in t2i.items():
        xs = [row["step"] * r["train_step_s"] / 60 for row in r["curve"]]
        ax.plot(xs, [row["object_recall"] for row in r["curve"]], marker="o", ms=3,
                label=name, lw=2.2 if name in ("pixels", "geovae-12") else 1.2)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("UNet training minutes (steps × per-step cost measured in one process)")
    ax.set_ylabel("object recall (48 validation captions)")
    ax.set_title("Latent vs pixel text-to-image on the scene world")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from pentachora.io import atomic_save_figure

    atomic_save_figure(fig, path)
    plt.close(fig)


def report(
    args: argparse.Namespace, argv: list[str] | None, fs: dict, scores: dict, t2i: dict
) -> dict[str, Any]:
    paired = paired_against(t2i, "geovae-12") if "geovae-12" in t2i else {}
    pixel = t2i["pixels"]
    pixel_total_s = pixel["steps"] * pixel["train_step_s"]
    pixel_final_val = pixel["curve"][-1]["object_recall"]
    lines = [
        "## First stages (equal process-CPU budget; lr chosen on validation scenes; 3 seeds, mean ± sd)",
        "",
        "| first stage | floats/cell | lr | steps | test-scene PSNR | SSIM | photo PSNR | photo SSIM | reader on reconstructions | KL/cell (nats) | var spread (log10) | CV / target | interp. excess flips | max jump | ghost frames |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        m, r0 = s["mean"], s["seeds"][0]
        lines.append(
            f"| {name} | {r0['latent_shape'][0]} | {fs[name]['lr']:.0e} | {fs[name]['runs'][0]['steps']} | "
            f"{m['test_scenes']['psnr']:.2f} ± {m['test_scenes']['psnr_sd']:.2f} | {m['test_scenes']['ssim']:.3f} | "
            f"{m['photos']['psnr']:.2f} ± {m['photos']['psnr_sd']:.2f} | {m['photos']['ssim']:.3f} | "
            f"{m['reading']['object_recall']:.3f} | "
            f"{m['latent']['kl_per_cell']:.2f} | {m['latent']['channel_var_spread']:.2f} | "
            f"{m['latent']['cv']:.3f} / {m['latent']['cv_target']:.3f} | {m['interpolation']['excess_flips']:.2f} | "
            f"{m['interpolation']['max_jump']:.2f} | {m['interpolation']['ghost_frames']:.2f} |"
        )
    lines += [
        "",
        "## Text to image (held-out test captions × 3 seeds; guidance chosen on validation)",
        "",
        "| denoises | UNet steps | train step (s) | UNet train (min, same-run cost) | sample (ms/image) | guidance | object recall [95 % CI] | binding | position | false objects/image | vs geovae-12 (paired) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in t2i.items():
        t = r["test"]
        diff = paired.get(name)
        lines.append(
            f"| {name} | {r['steps']} | {r['train_step_s']:.3f} | {r['steps'] * r['train_step_s'] / 60:.1f} | "
            f"{1000 * r['sample_s_per_image']:.0f} | {r['guidance']:g} | {t['object_recall']:.3f} "
            f"[{t['object_recall_lo']:.3f}, {t['object_recall_hi']:.3f}] | {t['binding']:.3f} | "
            f"{t['position_recall']:.3f} | {t['false_objects_per_image']:.3f} | "
            + (f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]" if diff else "—")
            + " |"
        )
    lines += ["", "The last column is the row's test object recall minus GeoVAE-12's on the same captions and seeds.",
              "", "Validation curves: object recall of 48 validation captions (one seed) at each evaluated step, "
              "with the UNet training minutes at this run's per-step cost:", "", "| denoises | curve (recall @ step, minutes) |",
              "|---|---|"]  # fmt: skip
    for name, r in t2i.items():
        lines.append(f"| {name} | " + ", ".join(f"{row['object_recall']:.2f} @ {row['step']} ({row['step'] * r['train_step_s'] / 60:.1f} min)"
                                                  for row in r["curve"]) + " |")  # fmt: skip
    verdicts = []
    geo = t2i.get("geovae-12")
    if geo is not None:
        geo_s = geo["steps"] * geo["train_step_s"]
        reach = reach_seconds(geo["curve"], geo["train_step_s"], pixel_final_val)
        reached_test = geo["test"]["object_recall"] >= pixel["test"]["object_recall"]
        verdicts.append(verdict(
            "GeoVAE's latent reaches the pixel model's held-out object recall within ≤ ¼ of its UNet seconds "
            f"(value: GeoVAE's UNet seconds ÷ pixel's, counted only if its test recall {geo['test']['object_recall']:.3f} "
            f"≥ pixel's {pixel['test']['object_recall']:.3f})",
            geo_s / pixel_total_s if reached_test else float("nan"), "<=", 0.25))  # fmt: skip
        lines += ["", f"GeoVAE-12's validation curve first reaches the pixel model's final validation recall "
                      f"({pixel_final_val:.3f}) at " + (f"{reach / 60:.1f} min" if reach is not None else "no evaluated point")
                      + f"; the pixel model trained {pixel_total_s / 60:.1f} min at this run's step cost."]  # fmt: skip
        if "nosvd-12" in paired:
            d = paired["nosvd-12"]
            verdicts.append(verdict("GeoVAE's latent beats NoSVD's at equal UNet steps (paired recall difference "
                                    "geovae − nosvd, lower 95 % bound > 0)", -d[2], ">", 0.0))  # fmt: skip
    latents = {n: r for n, r in t2i.items() if n != "pixels"}
    if latents:
        best = max(latents, key=lambda n: latents[n]["test"]["object_recall"])
        b = latents[best]
        total_latent = b["steps"] * b["train_step_s"] + fs[best]["runs"][0]["cpu_s"] / 2
        verdicts.append(verdict(
            f"Moonshot: the best latent T2I ({best}) exceeds the pixel model's test recall at no more total CPU "
            f"(recall difference; its total {total_latent / 60:.1f} min vs pixel {pixel_total_s / 60:.1f} min)",
            b["test"]["object_recall"] - pixel["test"]["object_recall"] if total_latent <= pixel_total_s else float("nan"),
            ">", 0.0))  # fmt: skip
    lines += ["", "Notes: first-stage CPU seconds are process CPU time (two threads count twice); the total in the "
              "moonshot halves them to wall-equivalent. Every latent UNet uses seed 0's first stage; the 3 seeds "
              "cover the first stages only. The pixel model is the run given by `--pixel-run` (trained earlier, "
              "its own schedule); its training and sampling costs are re-measured here beside the latent ones.",
              "", "![curves](t2i_latent_curves.png)"]  # fmt: skip
    clean = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in t2i.items()}
    data = {"meta": run_meta("benchmarks/t2i_latent.py", argv), "first_stages": fs, "first_stage_scores": scores,
            "t2i": clean, "paired_vs_geovae12": paired}  # fmt: skip
    save_curves(t2i, args.out.with_name(args.out.name + "_curves.png"))
    write_results(args.out, data, "\n".join(lines), verdicts)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    config = MiniT2IConfig.preset("cpu")
    world = SceneWorld(config.world)
    encoder = load_window_encoder(config.encoder, config.encoder_window)
    reader = default_reader(config.world)
    pool = scene_pool(world, encoder, args.pool_size, cache=args.cache, progress=False)
    count = token_counter(encoder)
    n_eval = 512 if not args.quick else 32
    val_scenes = [s for s, _ in caption_set(world, "val", n_eval, "prose", count, offset=5000)]
    test_scenes = [s for s, _ in caption_set(world, "test", n_eval, "prose", count, offset=5000)]
    val = torch.from_numpy(world.render_batch(val_scenes)) * 2 - 1
    test = torch.from_numpy(world.render_batch(test_scenes)) * 2 - 1
    photos = heldout_tiles(load_sample_photos("heldout"), 32, max_per_image=64) * 2 - 1
    t0 = time.perf_counter()
    fs = first_stages(args, pool.images, val)
    log.info("first stages ready (%.0f s)", time.perf_counter() - t0)
    scores = first_stage_scores(args, reader, test, world.layouts(test_scenes), photos)
    t2i = t2i_part(args, reader, world, encoder, pool)
    out = report(args, argv, fs, scores, t2i)
    log.info("done in %.0f s", time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()

"""Memory shaped by what reads it: the long-prompt memory trained through the frozen UNet, judged by the image.

The memory variants (``pentachora train memory-image``; each a config away) were trained with the
frozen miniature text-to-image model's own denoising loss on train-split scenes described by long
captions. Here every variant and its peers condition the same model on the same held-out long captions
(test split), with the same sampler and seeds, and the world's reader scores every described object
(colour, shape and cell right), grouped by where its sentence sits: the **head** (inside the first 75
tokens) and the **tail** (past token 75).

Peers: truncation (``native``), compel-style concatenation (``concat``, 77·k positions), the
training-free mean shift (``shift:λ``), and the ceiling (the same scenes told tersely in one window).

What is chosen, and on what (never on the test captions):

* sampling (guidance, steps) and the shift's λ: read from ``benchmarks/results/t2i_long.json``, where
  they were tuned on validation scenes (``--settings``);
* the **winner** among the 77-position variants (the goals are about 77 positions): the lowest
  validation denoising loss (each run's ``eval.json``, validation-split scenes) — its extra training
  seeds give the seed spread, its α-blend, seam curve and position analysis are reported.

Also: the α-blend ``(1 − α)·native + α·memory`` (the seed's §3.4), recall of head objects as the prompt
grows from 70 to 90 tokens (no jump at the window boundary), the gradient-loudness meter of every
variant (its ``loudness.json``) and, for a 77-position winner, where its residual sits (per-position
energy) and what removing it from those positions costs in tail recall.

Usage::

    python benchmarks/t2i_memory.py --model runs/t2i \\
        --variant "residual + shift=runs/mi-shift" --variant "residual, no shift=runs/mi-noshift" ...
    python benchmarks/t2i_memory.py --model runs/t2i --variant x=RUN --quick     # smoke run

A variant given several runs (``LABEL=RUN,RUN,RUN``) is one configuration trained with several seeds.
Writes ``benchmarks/results/t2i_memory.{json,md,png}`` and ``t2i_memory_examples.png`` (long prompts through
truncation, concatenation, the winner and the ceiling, the reader's detections marked).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pentachora.data.scenes import SceneWorld
from pentachora.diffusion.mini import MiniT2IPipeline, prompt_conditioning
from pentachora.errors import ConfigError
from pentachora.io import read_json
from pentachora.memory.model import GeometricMemory
from pentachora.recipes.loading import resolve_model_dir
from pentachora.recipes.reporting import fmt_ci, fmt_recall, run_meta, verdict, write_results
from pentachora.recipes.scene_pictures import save_contender_sheet
from pentachora.recipes.t2i import caption_set, default_reader, evaluate_prompts, token_counter
from pentachora.t2i.scoring import (
    long_caption_regions,
    paired_recall_difference,
    score_long_captions,
    summarise_hits,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("t2i_memory")

TRUNC, CONCAT, CEILING = (
    "truncation (native 77)",
    "concat (compel, 77·k)",
    "ceiling (same scenes, terse, one window)",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", type=Path, required=True, help="Trained mini-t2i run folder (the frozen consumer)."
    )
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=RUN[,RUN...]",
                   help="A consumer-trained memory (several runs: training seeds). Repeatable.")  # fmt: skip
    p.add_argument("--settings", type=Path, default=RESULTS / "t2i_long.json",
                   help="Results of benchmarks/t2i_long.py: the validation-chosen guidance, steps and λ.")  # fmt: skip
    p.add_argument("--captions", type=int, default=80, help="Held-out long captions (test split).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Sampling seeds per caption.")
    p.add_argument(
        "--alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="α-blend of the winner."
    )
    p.add_argument("--seam-lengths", type=int, nargs="+", default=[70, 74, 75, 76, 78, 82, 90],
                   help="Prompt lengths (tokens) of the seam curve.")  # fmt: skip
    p.add_argument("--seam-captions", type=int, default=40, help="Captions of the seam curve (1 seed).")
    p.add_argument("--top-positions", type=int, default=8, help="Positions of the residual ablation.")
    p.add_argument(
        "--val-captions", type=int, default=128, help="Validation scenes of the denoising-loss table."
    )
    p.add_argument("--examples", type=int, default=6, help="Long prompts in the example picture.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 6 captions, 1 seed, short grids.")
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_memory", help="Output stem.")
    args = p.parse_args(argv)
    if not args.variant:
        p.error("give at least one --variant LABEL=RUN")
    variants: dict[str, list[str]] = {}
    for item in args.variant:
        label, sep, runs = item.rpartition("=")
        if not sep or not label or not runs:
            p.error(f"--variant expects LABEL=RUN[,RUN...], got {item!r}")
        variants[label] = [r for r in runs.split(",") if r]
    args.variants = variants
    if args.quick:
        args.captions, args.seeds, args.alphas = 6, [0], [0.5]
        args.seam_lengths, args.seam_captions, args.val_captions = [74, 76], 4, 4
    return args


def sampling_settings(path: Path) -> dict[str, Any]:
    """The validation-chosen sampling and shift settings of ``benchmarks/t2i_long.py``."""
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: run benchmarks/t2i_long.py first (it tunes on validation scenes)"
        )
    chosen = json.loads(path.read_text())["tuning"]["chosen"]
    return {"guidance_scale": float(chosen["guidance_scale"]), "num_inference_steps": int(chosen["num_inference_steps"]),
            "shift_lambda": float(chosen["shift_lambda"])}  # fmt: skip


def run_info(run: str) -> dict[str, Any]:
    """What a consumer-trained run says about itself: output kind, validation loss, loudness."""
    folder = Path(run)
    memory = GeometricMemory.from_pretrained(resolve_model_dir(run))
    c = memory.config
    ev = read_json(folder / "eval.json") if (folder / "eval.json").is_file() else {}
    loud = read_json(folder / "loudness.json") if (folder / "loudness.json").is_file() else {}
    return {"run": run, "consumer_output": c.consumer_output, "mean_shift": c.mean_shift,
            "spec": ("chunks:" if c.consumer_output == "chunks" else "memory:") + run,
            "image_val": ev.get("image_val"), "image_val_native": ev.get("image_val_native"),
            "image_val_gain": ev.get("image_val_gain"), "loudness": loud}  # fmt: skip


def validation_losses(model: Any, world: SceneWorld, encoder: Any, infos: dict[str, list[dict[str, Any]]],
                      n: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """The frozen UNet's denoising loss on ``n`` validation scenes conditioned on each variant's output
    (first run), on the native windows, and on the same scenes told tersely in one window (the ceiling),
    all with the same noise; ``gap_closed`` = (native − variant) / (native − ceiling)."""
    from pentachora.recipes.memory import load_encoders
    from pentachora.recipes.memory_image import (
        UNetConsumer,
        image_validation_loss,
        prepare_scene_caption_data,
    )
    from pentachora.recipes.t2i import encode_prompts

    consumer = UNetConsumer(model)
    ceiling = encode_prompts(
        encoder, [cap.text for _, cap in caption_set(world, "val", n, "ceiling", token_counter(encoder))]
    )
    out: dict[str, dict[str, float]] = {}
    data = None
    for label, runs in infos.items():
        memory = GeometricMemory.from_pretrained(resolve_model_dir(runs[0]["run"])).eval()
        if data is None:
            data = prepare_scene_caption_data(world, memory.config, n, "val", encoders=load_encoders(memory.config),
                                              progress=False)  # fmt: skip
        memory.attach_consumer(consumer)
        res = image_validation_loss(memory, consumer, data, references={"ceiling": ceiling})
        span = res["image_val_native"] - res["image_val_ceiling"]
        res["gap_closed"] = res["image_val_gain"] / span if span > 0 else math.nan
        out[label] = res
        logger.info("validation denoising loss, %s: %.4f (native %.4f, ceiling %.4f)", label, res["image_val"],
                    res["image_val_native"], res["image_val_ceiling"])  # fmt: skip
    return out


def attention_probe(
    encoder: Any, texts: list[str], sequences: dict[str, torch.Tensor], window: int
) -> dict[str, float]:
    """R@1 of a sharp attention read (τ = 0.05, :func:`~pentachora.memory.metrics.attention_probe_recall`): can the
    mean-pooled embedding of a caption's *tail* (its text past token ``window``) find its own 77-position
    sequence among all of them? 1/N is chance; the native window holds no tail."""
    from pentachora.memory.metrics import attention_probe_recall

    ids = encoder.tokenize(texts)
    queries = encoder.embed([encoder.tokenizer.decode(t[window:]) for t in ids])
    out = {}
    for label, seq in sequences.items():
        mask = torch.ones(seq.shape[:2], dtype=torch.bool)
        out[label] = float(attention_probe_recall(seq.float(), mask, queries.float(), temperature=0.05))
    out["chance"] = 1.0 / len(texts)
    return out


def cut_captions(encoder: Any, captions: list, length: int) -> list[str]:
    """Each caption cut to its first ``length`` content tokens (decoded back to text)."""
    ids = encoder.tokenize([cap.text for _, cap in captions])
    return [encoder.tokenizer.decode(t[:length]) for t in ids]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    meta = run_meta("benchmarks/t2i_memory.py", argv)
    settings = sampling_settings(args.settings)
    sampling = {k: settings[k] for k in ("guidance_scale", "num_inference_steps")}
    lam = settings["shift_lambda"]
    pipe = MiniT2IPipeline.from_run(args.model)
    model, encoder = pipe.model, pipe.encoder
    world = SceneWorld(model.config.world)
    reader = default_reader(model.config.world)
    count = token_counter(encoder)
    window = world.config.window_tokens
    seeds = args.seeds

    def embeds(spec: str, texts: list[str]) -> Any:
        return prompt_conditioning(spec, model, encoder)(texts)

    def evaluate(
        prompt_embeds: torch.Tensor, negative: torch.Tensor | None, layouts: np.ndarray, s: list[int]
    ) -> dict[str, Any]:
        return evaluate_prompts(
            model, reader, prompt_embeds, layouts, seeds=s, negative_prompt_embeds=negative, **sampling
        )

    test_long = caption_set(world, "test", args.captions, "long", count)
    texts = [cap.text for _, cap in test_long]
    layouts = world.layouts([s for s, _ in test_long])
    regions = long_caption_regions(test_long, len(seeds), window)["region"]

    # ------------------------------------------------------------------ the winner, on validation only
    infos = {label: [run_info(r) for r in runs] for label, runs in args.variants.items()}
    val_loss = {label: float(np.mean([i["image_val"] for i in runs])) for label, runs in infos.items()
                if all(i["image_val"] is not None for i in runs)}  # fmt: skip
    # the goals are about 77 positions: the winner is chosen among the 77-position variants when there are any
    seq = {k: v for k, v in val_loss.items() if infos[k][0]["consumer_output"] == "sequence"}
    pool = seq or val_loss
    winner = min(pool, key=pool.get) if pool else next(iter(infos))
    logger.info("validation denoising loss per variant: %s → winner %r", val_loss, winner)

    # ------------------------------------------------------------------ the UNet's loss on validation scenes
    val_losses = validation_losses(model, world, encoder, infos, args.val_captions)

    # ------------------------------------------------------------------ contenders on the test split
    results: dict[str, Any] = {}
    hits: dict[str, Any] = {}
    examples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    clusters = None

    def contender(label: str, spec: str, prompt_embeds: Any = None) -> dict[str, Any]:
        nonlocal clusters
        t = time.perf_counter()
        e = prompt_embeds if prompt_embeds is not None else embeds(spec, texts)
        scores = evaluate(e.prompt_embeds, e.negative_prompt_embeds, layouts, seeds)
        res = {"spec": spec, "positions": int(e.prompt_embeds.shape[1]),
               **score_long_captions(scores, test_long, len(seeds), window), "seconds": time.perf_counter() - t}  # fmt: skip
        results[label], hits[label], clusters = res, scores["hits"], scores["clusters"]
        rows = np.arange(min(args.examples, len(test_long))) * len(seeds)  # seed 0 of the first captions
        examples[label] = (scores["images"][rows].numpy(), scores["reading"][rows].numpy())
        logger.info("%s: head %.3f, tail %.3f, false objects %.2f (%.0f s)", label, res["head"]["object_recall"],
                    res["tail"].get("object_recall", math.nan), res["false_objects_per_image"]["mean"],
                    res["seconds"])  # fmt: skip
        return res

    contender(TRUNC, "native")
    contender(CONCAT, "concat")
    shift_label = f"mean shift λ={lam:g} (val-chosen)"
    contender(shift_label, f"shift:{lam:g}")
    run_labels: dict[str, list[str]] = {}
    for label, runs in infos.items():
        run_labels[label] = []
        for k, info in enumerate(runs):
            name = label if len(runs) == 1 else f"{label} [seed {k}]"
            contender(name, info["spec"])
            run_labels[label].append(name)
    ceiling_caps = caption_set(world, "test", args.captions, "ceiling", count)
    assert all(a[0] == b[0] for a, b in zip(test_long, ceiling_caps, strict=True)), "ceiling scenes differ"
    ce = embeds("native", [cap.text for _, cap in ceiling_caps])
    c_scores = evaluate(ce.prompt_embeds, ce.negative_prompt_embeds, layouts, seeds)
    rows = np.arange(min(args.examples, len(test_long))) * len(seeds)
    examples["ceiling"] = (c_scores["images"][rows].numpy(), c_scores["reading"][rows].numpy())
    results[CEILING] = {"spec": "native on terse captions", "positions": 77,
                        **score_long_captions(c_scores, test_long, len(seeds), window)}  # fmt: skip

    # ------------------------------------------------------------------ per variant: seed spread
    variants_out: dict[str, Any] = {}
    for label, names in run_labels.items():
        tails = [results[n]["tail"]["object_recall"] for n in names]
        heads = [results[n]["head"]["object_recall"] for n in names]
        falses = [results[n]["false_objects_per_image"]["mean"] for n in names]
        variants_out[label] = {
            "runs": [i["run"] for i in infos[label]], "labels": names, "consumer_output": infos[label][0]["consumer_output"],
            "tail_mean": float(np.mean(tails)), "tail_min": float(min(tails)), "tail_max": float(max(tails)),
            "tail_spread": float(max(tails) - min(tails)), "head_mean": float(np.mean(heads)),
            "false_objects_mean": float(np.mean(falses)), "image_val": val_loss.get(label),
            "image_val_gain": float(np.mean([i["image_val_gain"] for i in infos[label]]))
            if all(i["image_val_gain"] is not None for i in infos[label]) else None,
            "loudness": infos[label][0]["loudness"],
        }  # fmt: skip

    # ------------------------------------------------------------------ paired differences
    w_first = run_labels[winner][0]
    pairs = [(w_first, CONCAT), (w_first, shift_label), (w_first, TRUNC), (shift_label, CONCAT)]
    others = [names[0] for label, names in run_labels.items() if label != winner]
    pairs += [(name, peer) for name in others for peer in (TRUNC, CONCAT)]
    differences = []
    for a, b in pairs:
        for region in ("tail", "head"):
            est, lo, hi = paired_recall_difference(hits[a], hits[b], clusters, regions == region)
            differences.append({"a": a, "b": b, "region": region, "difference": est, "lo": lo, "hi": hi})

    # ------------------------------------------------------------------ α-blend of the winner
    w_info = infos[winner][0]
    alpha_blend = [{"alpha": 0.0, **_region_row(results[TRUNC])}]
    for alpha in args.alphas:
        e = embeds(f"{w_info['spec']}@{alpha:g}", texts)
        s = score_long_captions(evaluate(e.prompt_embeds, e.negative_prompt_embeds, layouts, seeds), test_long,
                                len(seeds), window)  # fmt: skip
        alpha_blend.append({"alpha": alpha, **_region_row(s)})
    alpha_blend.append({"alpha": 1.0, **_region_row(results[w_first])})

    # ------------------------------------------------------------------ the seam: 70 → 90 tokens
    seam_caps = test_long[: args.seam_captions]
    seam_layouts = world.layouts([s for s, _ in seam_caps])
    min_len = min(args.seam_lengths)
    # objects whose sentence ends before the shortest cut: described in every prompt of the curve
    kept = np.concatenate([[cap.spans[j][1] <= min_len for j in sorted(range(len(sc.objects)), key=lambda j: sc.objects[j].cell)]
                           for sc, cap in seam_caps])  # fmt: skip
    seam: dict[str, list[dict[str, Any]]] = {}
    seam_hits: dict[tuple[str, int], Any] = {}
    seam_clusters = None
    for label, spec in ((TRUNC, "native"), (winner, w_info["spec"])):
        seam[label] = []
        for length in args.seam_lengths:
            e = embeds(spec, cut_captions(encoder, seam_caps, length))
            sc = evaluate(e.prompt_embeds, e.negative_prompt_embeds, seam_layouts, [0])
            seam_hits[(label, length)], seam_clusters = sc["hits"], sc["clusters"]
            s = summarise_hits(sc["hits"], sc["clusters"], kept)
            seam[label].append({"length": length, "recall": s["object_recall"], "lo": s["object_recall_lo"],
                                "hi": s["object_recall_hi"], "n": s["n_objects"]})  # fmt: skip
    seam_jump = None
    if 75 in args.seam_lengths and 76 in args.seam_lengths:
        est, lo, hi = paired_recall_difference(
            seam_hits[(winner, 76)], seam_hits[(winner, 75)], seam_clusters, kept
        )
        seam_jump = {"difference": est, "lo": lo, "hi": hi}

    # ------------------------------------------------------------------ the attention probe: can a query find the tail?
    probe_specs = {TRUNC: "native", shift_label: f"shift:{lam:g}"}
    probe_specs.update(
        {label: runs[0]["spec"] for label, runs in infos.items() if runs[0]["consumer_output"] == "sequence"}
    )
    probe = attention_probe(
        encoder, texts, {k: embeds(v, texts).prompt_embeds for k, v in probe_specs.items()}, window
    )

    # ------------------------------------------------------------------ where the residual sits
    positions = None
    if w_info["consumer_output"] == "sequence":
        mem = embeds(w_info["spec"], texts).prompt_embeds
        nat = embeds("native", texts)
        energy = (mem - nat.prompt_embeds).pow(2).sum(-1).mean(0)  # (77,)
        share = energy / energy.sum()
        top = torch.argsort(energy, descending=True)[: args.top_positions]
        keep_top = nat.prompt_embeds.clone()
        keep_top[:, top] = mem[:, top]
        drop_top = mem.clone()
        drop_top[:, top] = nat.prompt_embeds[:, top]
        ablations = {}
        for name, cond in ((f"residual only at its top {len(top)} positions", keep_top),
                           (f"residual removed from its top {len(top)} positions", drop_top)):  # fmt: skip
            s = score_long_captions(
                evaluate(cond, nat.negative_prompt_embeds, layouts, seeds), test_long, len(seeds), window
            )
            ablations[name] = _region_row(s)
        positions = {"energy_share": share.tolist(), "top_positions": top.tolist(),
                     "top_share": float(share[top].sum()), "ablations": ablations}  # fmt: skip

    out = {
        "meta": {
            **meta,
            "wall_s": time.perf_counter() - t0,
            "model": str(args.model),
            "seeds": seeds,
            "n_test_captions": len(test_long),
            "settings": {**settings, "from": str(args.settings)},
            "reader": reader.describe(),
        },
        "selection": {
            "rule": "lowest validation denoising loss (each run's eval.json, val-split scenes) among the "
            "77-position variants",
            "image_val": val_loss,
            "winner": winner,
        },
        "variants": variants_out,
        "validation_losses": val_losses,
        "results": results,
        "paired_differences": differences,
        "alpha_blend": alpha_blend,
        "seam": {
            "lengths": args.seam_lengths,
            "curves": seam,
            "jump_75_76": seam_jump,
            "objects": int(kept.sum()),
        },
        "positions": positions,
        "attention_probe": probe,
    }
    verdicts = _verdicts(out)
    write_results(args.out, out, render_markdown(out), verdicts)
    render_png(out, args.out.with_suffix(".png"))
    n_ex = min(args.examples, len(test_long))
    if n_ex:
        shown = [TRUNC, CONCAT, *run_labels[winner][:1], "ceiling"]
        save_contender_sheet(world, test_long[:n_ex], {k: examples[k][0] for k in shown},
                             {k: examples[k][1] for k in shown}, args.out.parent / f"{args.out.name}_examples.png")  # fmt: skip
    logger.info("wrote %s.{json,md,png} in %.0f s", args.out, out["meta"]["wall_s"])
    return out


def _region_row(s: dict[str, Any]) -> dict[str, float]:
    return {"head": s["head"]["object_recall"], "tail": s["tail"]["object_recall"],
            "tail_lo": s["tail"]["object_recall_lo"], "tail_hi": s["tail"]["object_recall_hi"],
            "false_objects": s["false_objects_per_image"]["mean"]}  # fmt: skip


def _diff(out: dict[str, Any], a: str, b: str, region: str) -> dict[str, Any]:
    return next(d for d in out["paired_differences"] if d["a"] == a and d["b"] == b and d["region"] == region)


def _verdicts(out: dict[str, Any]) -> list:
    r, v = out["results"], out["variants"]
    winner = out["selection"]["winner"]
    w = v[winner]
    first = w["labels"][0]
    shift_label = next(k for k in r if "val-chosen" in k)
    tail_vs_concat = _diff(out, first, CONCAT, "tail")
    res = [
        verdict(f"{winner} puts more tail objects in the picture than concatenation (lower end of the paired 95 % "
                "interval of the tail-recall difference > 0)", tail_vs_concat["lo"], ">", 0.0),
        verdict(f"{winner}: head recall at least concatenation's", r[first]["head"]["object_recall"], ">=",
                r[CONCAT]["head"]["object_recall"]),
        verdict(f"{winner}: false objects per image at most concatenation's", r[first]["false_objects_per_image"]["mean"],
                "<=", r[CONCAT]["false_objects_per_image"]["mean"]),
        verdict(f"{winner}: mean tail recall over its training seeds above the shift's by more than the seed spread "
                f"(margin − spread > 0, {len(w['labels'])} seeds)",
                w["tail_mean"] - r[shift_label]["tail"]["object_recall"] - w["tail_spread"], ">", 0.0),
        verdict(f"moonshot: {winner}'s tail recall within 10 % of the ceiling's (ratio ≥ 0.9)",
                w["tail_mean"] / max(r[CEILING]["tail"]["object_recall"], 1e-9), ">=", 0.9),
    ]  # fmt: skip
    jump = out["seam"]["jump_75_76"]
    if jump is not None:
        res.append(verdict(f"{winner}: no jump at the window boundary (the paired 95 % interval of the head-object "
                           "recall difference between 76- and 75-token prompts contains 0: max(lo, −hi) ≤ 0)",
                           max(jump["lo"], -jump["hi"]), "<=", 0.0))  # fmt: skip
    return res


def render_markdown(out: dict[str, Any]) -> str:
    r, m, v = out["results"], out["meta"], out["variants"]
    winner = out["selection"]["winner"]
    st = m["settings"]
    lines = [
        "# Memory shaped by what reads it: trained through the frozen UNet, judged by the image",
        "",
        f"{m['n_test_captions']} held-out long captions (test split), seeds {m['seeds']}; guidance "
        f"{st['guidance_scale']:g}, {st['num_inference_steps']} steps, shift λ = {st['shift_lambda']:g} (chosen on "
        f"validation scenes by benchmarks/t2i_long.py). The reader scores colour, shape and cell; 95 % bootstrap "
        f"intervals over captions. Wall time {m['wall_s'] / 60:.0f} min.",
        "",
        f"Winner (chosen on validation: lowest validation denoising loss among the 77-position variants): **{winner}**.",
        "",
        "| contender | positions | head recall | tail recall | all | binding | false objects / image |",
        "|---|---:|---|---|---|---|---|",
    ]

    def cell(x: dict[str, Any], region: str) -> str:
        return fmt_recall(x.get(region, {}))

    for label, x in r.items():
        fo = x["false_objects_per_image"]
        lines.append(f"| {label} | {x['positions']} | {cell(x, 'head')} | {cell(x, 'tail')} | {cell(x, 'all')} | "
                     f"{x['all']['binding']:.3f} | {fo['mean']:.2f} [{fo['lo']:.2f}, {fo['hi']:.2f}] |")  # fmt: skip
    lines += ["", "## Variants: training seeds, validation loss and the gradient-loudness meter", "",
              "Validation denoising loss: the frozen UNet's loss on validation scenes conditioned on the variant's "
              "output (its gain: the loss of the native windows it starts from minus it). Loudness: ‖∂L/∂θ_bank‖ of "
              "each objective at weight 1 on one training batch, after training (the image term against the "
              "loudest text term, InfoNCE).", "",
              "| variant | output | seeds | tail recall mean [min, max] | head recall mean | val denoising loss | "
              "val gain | ‖∇ image‖ | ‖∇ InfoNCE‖ | image / InfoNCE |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label, x in v.items():
        unit = (x["loudness"].get("end") or {}).get("unit", {})
        img, nce = unit.get("image_loss", math.nan), unit.get("infonce", math.nan)
        val = f"{x['image_val']:.4f}" if x["image_val"] is not None else "—"
        gain = f"{x['image_val_gain']:+.4f}" if x["image_val_gain"] is not None else "—"
        lines.append(f"| {label} | {x['consumer_output']} | {len(x['labels'])} | {x['tail_mean']:.3f} [{x['tail_min']:.3f}, "
                     f"{x['tail_max']:.3f}] | {x['head_mean']:.3f} | {val} | {gain} | {img:.3g} | {nce:.3g} | "
                     f"{img / nce if nce else math.nan:.2g} |")  # fmt: skip
    lines += ["", "## The UNet's denoising loss on validation scenes (same noise for every row)", "",
              "Gap closed: (native − variant) / (native − ceiling), where the ceiling is the same scenes told tersely "
              "in one window.", "",
              "| variant | its output | native windows | ceiling | gap closed |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, x in out["validation_losses"].items():
        lines.append(f"| {label} | {x['image_val']:.4f} | {x['image_val_native']:.4f} | {x['image_val_ceiling']:.4f} | "
                     f"{x['gap_closed']:.2f} |")  # fmt: skip
    lines += ["", "## Paired differences (same captions, seeds and objects; 95 % paired bootstrap over captions)", "",
              "| a | b | tail recall a − b | head recall a − b |", "|---|---|---|---|"]  # fmt: skip
    by = {(d["a"], d["b"], d["region"]): d for d in out["paired_differences"]}
    for a, b in dict.fromkeys((d["a"], d["b"]) for d in out["paired_differences"]):
        t, h = by[(a, b, "tail")], by[(a, b, "head")]
        lines.append(
            f"| {a} | {b} | {fmt_ci(t['difference'], t['lo'], t['hi'])} | {fmt_ci(h['difference'], h['lo'], h['hi'])} |"
        )
    lines += ["", f"## α-blend of {winner}: (1 − α)·native + α·memory (the seed's §3.4)", "",
              "| α | head recall | tail recall | false objects / image |", "|---:|---:|---|---:|"]  # fmt: skip
    for row in out["alpha_blend"]:
        lines.append(f"| {row['alpha']:g} | {row['head']:.3f} | {fmt_ci(row['tail'], row['tail_lo'], row['tail_hi'])} | "
                     f"{row['false_objects']:.2f} |")  # fmt: skip
    seam = out["seam"]
    lines += ["", f"## The seam: recall of the {seam['objects']} objects described before token "
              f"{min(seam['lengths'])} as the prompt grows (1 seed)", "",
              "| contender | " + " | ".join(f"{n} tok" for n in seam["lengths"]) + " |",
              "|---|" + "---:|" * len(seam["lengths"])]  # fmt: skip
    for label, rows in seam["curves"].items():
        lines.append(f"| {label} | " + " | ".join(f"{row['recall']:.3f}" for row in rows) + " |")
    if seam["jump_75_76"]:
        j = seam["jump_75_76"]
        lines += ["", f"{winner}, 76 − 75 tokens (paired): {fmt_ci(j['difference'], j['lo'], j['hi'])}."]
    pr = out["attention_probe"]
    lines += ["", "## The attention probe: does a query for the tail find its own sequence? (text-level, no image)", "",
              f"R@1 over {m['n_test_captions']} test captions of a sharp read (τ = 0.05) with the mean-pooled embedding of each "
              f"caption's tail as the query; chance {pr['chance']:.3f}.", "",
              "| sequence | probe R@1 |", "|---|---:|"]  # fmt: skip
    for label, value in pr.items():
        if label != "chance":
            lines.append(f"| {label} | {value:.3f} |")
    pos = out["positions"]
    if pos:
        lines += ["", f"## Where {winner}'s residual sits (77 positions)", "",
                  f"Share of the residual's energy ‖memory − native‖² in its top {len(pos['top_positions'])} positions "
                  f"{pos['top_positions']}: {pos['top_share']:.3f} (uniform: {len(pos['top_positions']) / 77:.3f}).", "",
                  "| conditioning | head recall | tail recall |", "|---|---:|---|"]  # fmt: skip
        for name, row in pos["ablations"].items():
            lines.append(
                f"| {name} | {row['head']:.3f} | {fmt_ci(row['tail'], row['tail_lo'], row['tail_hi'])} |"
            )
    return "\n".join(lines) + "\n"


def render_png(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = out["results"]
    labels = list(r)
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    x = np.arange(len(labels))
    for k, (region, colour) in enumerate((("head", "tab:blue"), ("tail", "tab:red"))):
        est = [r[lbl][region].get("object_recall", math.nan) for lbl in labels]
        lo = [r[lbl][region].get("object_recall_lo", math.nan) for lbl in labels]
        hi = [r[lbl][region].get("object_recall_hi", math.nan) for lbl in labels]
        axes[0].bar(x + (k - 0.5) * 0.38, est, 0.38, yerr=np.array([np.subtract(est, lo), np.subtract(hi, est)]),
                    color=colour, label=f"{region} objects", capsize=2)  # fmt: skip
    axes[0].set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    axes[0].set_ylabel("object recall")
    axes[0].set_title("held-out long captions: head vs tail")
    axes[0].legend(fontsize=7)
    ab = out["alpha_blend"]
    axes[1].plot([a["alpha"] for a in ab], [a["tail"] for a in ab], marker="o", color="tab:red", label="tail")
    axes[1].plot(
        [a["alpha"] for a in ab], [a["head"] for a in ab], marker="o", color="tab:blue", label="head"
    )
    axes[1].set_xlabel("α: (1 − α)·native + α·memory")
    axes[1].set_title(f"α-blend of {out['selection']['winner']}")
    axes[1].legend(fontsize=7)
    for label, rows in out["seam"]["curves"].items():
        axes[2].plot(
            [row["length"] for row in rows], [row["recall"] for row in rows], marker="o", label=label
        )
    axes[2].axvline(75.5, color="gray", ls="--", lw=0.8)
    axes[2].set_xlabel("prompt length (content tokens)")
    axes[2].set_ylabel("recall of objects present at every length")
    axes[2].set_title("the seam (window boundary at 75)")
    axes[2].legend(fontsize=7)
    pos = out["positions"]
    if pos:
        share = pos["energy_share"]
        axes[3].bar(np.arange(len(share)), share, color="tab:purple")
        axes[3].axhline(1 / len(share), color="gray", ls=":", label="uniform")
        axes[3].set_xlabel("position of the 77-position sequence")
        axes[3].set_ylabel("share of ‖memory − native‖²")
        axes[3].set_title(f"where {out['selection']['winner']}'s residual sits")
        axes[3].legend(fontsize=7)
    else:
        axes[3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])

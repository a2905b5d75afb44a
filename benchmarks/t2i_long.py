"""The tulip test, offline: long-prompt encoders judged by what appears in the generated image.

Every contender's conditioning goes through the same trained miniature text-to-image model
(:class:`pentachora.t2i.MiniT2I`, trained on captions that fit one 77-token window), the same sampler
and the same seeds; the world's reader turns every image into a layout, and each described object
is scored (colour, shape and cell all right). Objects are grouped by where their sentence sits in
the caption: the **head** (inside the first 75 tokens), the **tail** (starting past token 75: what
the seed's tulips are) and the **seam** (straddling the boundary).

Contenders (all through :func:`pentachora.diffusion.long_prompt_embeds`):

* ``native`` — truncation: the first 77-token window, what SD does with a long prompt;
* ``concat`` — compel-style concatenation: every window encoded alone, 77·k positions;
* ``shift:λ`` — the training-free mean shift (77 positions), λ from a grid (λ chosen on validation);
* ``memory`` — a trained residual memory (``--memory RUN``; ``minilm-tiny-long``), its no-shift control
  (``--memory-noshift RUN``) and its contextual chunks (``chunks``, 77·k positions);
* ``shift-chunks:λ`` — training-free contextual chunks;
* **ceiling** — the same scenes described tersely in one window (native): what the model draws when
  it is told everything inside its window.

Tuning on validation scenes only (the ``val`` split): the guidance scale and the number of sampling
steps (on short prose captions) and λ of the shift (on long captions). The test split's long captions
are never used to choose anything. Intervals: 95 % bootstrap over captions.

Usage::

    python benchmarks/t2i_long.py --model runs/t2i --memory runs/m14 --memory-noshift runs/m14-noshift
    python benchmarks/t2i_long.py --model runs/t2i --quick      # a smoke run (few captions, 1 seed)

Writes ``benchmarks/results/t2i_long.{json,md}``, ``t2i_long.png`` (recall by region and over the
token offset) and ``t2i_long_examples.png`` (long prompts through every contender, detections marked).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pentachora.data.scenes import SceneWorld
from pentachora.diffusion.mini import MiniT2IPipeline, parse_encoder_spec, prompt_conditioning
from pentachora.recipes.reporting import fmt_ci, fmt_recall, run_meta, verdict, write_results
from pentachora.recipes.scene_pictures import save_contender_sheet
from pentachora.recipes.t2i import caption_set, default_reader, evaluate_prompts, token_counter
from pentachora.t2i.scoring import (
    long_caption_regions,
    paired_recall_difference,
    score_long_captions,
    shuffled_tail_chance,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("t2i_long")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="Trained mini-t2i run folder.")
    p.add_argument(
        "--memory", type=Path, default=None, help="Trained residual memory run (minilm-tiny-long)."
    )
    p.add_argument(
        "--memory-noshift", type=Path, default=None, help="The memory trained without the mean shift."
    )
    p.add_argument("--captions", type=int, default=100, help="Held-out long captions (test split).")
    p.add_argument("--heldout-phrasing", type=int, default=50, help="Long captions in held-out phrasings.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Sampling seeds per caption.")
    p.add_argument("--val-captions", type=int, default=48, help="Validation captions for tuning.")
    p.add_argument("--shifts", type=float, nargs="+", default=[0.5, 0.75, 1.0], help="λ grid of the shift.")
    p.add_argument(
        "--guidance", type=float, nargs="+", default=[2.0, 3.0, 5.0], help="Guidance grid (tuned)."
    )
    p.add_argument("--steps", type=int, nargs="+", default=[15, 25], help="Sampling-steps grid (tuned).")
    p.add_argument(
        "--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="α-blend grid."
    )
    p.add_argument("--examples", type=int, default=6, help="Long prompts in the example picture.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 8 captions, 1 seed, no grids.")
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_long", help="Output stem.")
    args = p.parse_args(argv)
    if args.quick:
        args.captions, args.heldout_phrasing, args.seeds, args.val_captions = 8, 4, [0], 8
        args.guidance, args.steps, args.shifts, args.alphas = [3.0], [15], [0.75], [0.0, 1.0]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    meta = run_meta("benchmarks/t2i_long.py", argv)
    pipe = MiniT2IPipeline.from_run(args.model)
    model, encoder = pipe.model, pipe.encoder
    world = SceneWorld(model.config.world)
    reader = default_reader(model.config.world)
    count = token_counter(encoder)
    window = world.config.window_tokens
    n_shapes = len(world.config.shapes)

    def run(spec: str, captions: list, seeds: list[int], **sampling: Any) -> dict[str, Any]:
        build = prompt_conditioning(spec, model, encoder)
        embeds = build([cap.text for _, cap in captions])
        layouts = world.layouts([s for s, _ in captions])
        return evaluate_prompts(model, reader, embeds.prompt_embeds, layouts, seeds=seeds,
                                negative_prompt_embeds=embeds.negative_prompt_embeds, **sampling)  # fmt: skip

    # ------------------------------------------------------------------ tuning on validation scenes
    val_short = caption_set(world, "val", args.val_captions, "prose", count)
    tuning: dict[str, Any] = {"sampling": []}
    for g in args.guidance:
        for steps in args.steps:
            s = run("native", val_short, [0], guidance_scale=g, num_inference_steps=steps)["summary"]
            tuning["sampling"].append({"guidance": g, "steps": steps, "object_recall": s["object_recall"]})
            logger.info(
                "val short captions: guidance %.1f, %d steps → recall %.3f", g, steps, s["object_recall"]
            )
    best = max(tuning["sampling"], key=lambda r: (r["object_recall"], -r["steps"]))
    sampling = {"guidance_scale": best["guidance"], "num_inference_steps": best["steps"]}
    val_long = caption_set(world, "val", args.val_captions, "long", count)
    tuning["shift"] = []
    for lam in args.shifts:
        s = run(f"shift:{lam:g}", val_long, [0], **sampling)["summary"]
        tuning["shift"].append({"lambda": lam, "object_recall": s["object_recall"]})
        logger.info("val long captions: shift λ=%.2f → recall %.3f", lam, s["object_recall"])
    lam_best = max(tuning["shift"], key=lambda r: r["object_recall"])["lambda"]
    tuning["chosen"] = {**sampling, "shift_lambda": lam_best}

    # ------------------------------------------------------------------ contenders on the test split
    test_long = caption_set(world, "test", args.captions, "long", count)
    ceiling_caps = caption_set(world, "test", args.captions, "ceiling", count)
    assert all(a[0] == b[0] for a, b in zip(test_long, ceiling_caps, strict=True)), "ceiling scenes differ"
    contenders: list[tuple[str, str]] = [
        ("truncation (native 77)", "native"),
        ("concat (compel, 77·k)", "concat"),
    ]
    contenders += [(f"mean shift λ={lam:g}" + (" (val-chosen)" if lam == lam_best else ""), f"shift:{lam:g}")
                   for lam in args.shifts]  # fmt: skip
    contenders.append((f"shift chunks λ={lam_best:g} (77·k)", f"shift-chunks:{lam_best:g}"))
    if args.memory is not None:
        contenders += [("memory (minilm-tiny-long)", f"memory:{args.memory}"),
                       ("memory chunks (77·k)", f"chunks:{args.memory}")]  # fmt: skip
    if args.memory_noshift is not None:
        contenders.append(("memory, no shift", f"memory:{args.memory_noshift}"))
    results: dict[str, Any] = {}
    raw_hits: dict[str, Any] = {}  # per contender: ObjectHits of the same objects (paired comparisons)
    examples: dict[str, Any] = {"images": {}, "readings": {}}
    n_ex = min(args.examples, len(test_long))
    layouts = world.layouts([s for s, _ in test_long])
    for label, spec in contenders:
        t = time.perf_counter()
        scores = run(spec, test_long, args.seeds, **sampling)
        results[label] = {"spec": spec, **score_long_captions(scores, test_long, len(args.seeds), window),
                          "positions": int(prompt_conditioning(spec, model, encoder)([test_long[0][1].text]).prompt_embeds.shape[1]),
                          "seconds": time.perf_counter() - t}  # fmt: skip
        raw_hits[label], test_clusters = scores["hits"], scores["clusters"]
        rows = np.arange(n_ex) * len(args.seeds)  # seed 0 of the first captions
        examples["images"][label] = scores["images"][rows].numpy()
        examples["readings"][label] = scores["reading"][rows].numpy()
        if spec == "native":
            results[label]["tail_shuffled_chance"] = shuffled_tail_chance(
                scores, layouts, test_long, len(args.seeds), window, n_shapes
            )
        logger.info("%s: head %.3f, tail %.3f (%.0f s)", label, results[label]["head"]["object_recall"],
                    results[label]["tail"].get("object_recall", math.nan), time.perf_counter() - t)  # fmt: skip
    ceiling = run("native", ceiling_caps, args.seeds, **sampling)
    # ceiling captions are terse lists of the same scenes: every object lies in the first window, so
    # score them with the *long* caption's regions to compare object for object
    results["ceiling (same scenes, terse, one window)"] = {
        "spec": "native on terse captions", **score_long_captions(ceiling, test_long, len(args.seeds), window), "positions": 77,
    }  # fmt: skip
    examples["images"]["ceiling"] = ceiling["images"][np.arange(n_ex) * len(args.seeds)].numpy()
    examples["readings"]["ceiling"] = ceiling["reading"][np.arange(n_ex) * len(args.seeds)].numpy()

    # ------------------------------------------------------------------ paired differences (same objects)
    regions = long_caption_regions(test_long, len(args.seeds), window)["region"]
    base = "truncation (native 77)"
    shift_label = next(lbl for lbl, _ in contenders if "val-chosen" in lbl)
    pairs = [(lbl, base) for lbl, _ in contenders if lbl != base]
    pairs += [(a, b) for a, b in ((shift_label, "concat (compel, 77·k)"),
                                  ("memory (minilm-tiny-long)", shift_label),
                                  ("memory (minilm-tiny-long)", "concat (compel, 77·k)"),
                                  ("memory (minilm-tiny-long)", "memory, no shift")) if a in raw_hits and b in raw_hits]  # fmt: skip
    differences = []
    for a, b in pairs:
        for region in ("tail", "head"):
            est, lo, hi = paired_recall_difference(raw_hits[a], raw_hits[b], test_clusters, regions == region)
            differences.append({"a": a, "b": b, "region": region, "difference": est, "lo": lo, "hi": hi})

    # ------------------------------------------------------------------ held-out phrasings
    phrasing: dict[str, Any] = {}
    if args.heldout_phrasing > 0:
        held = caption_set(
            world, "test", args.heldout_phrasing, "long", count, phrasing="heldout", offset=10_000
        )
        for label, spec in contenders:
            if parse_encoder_spec(spec).kind in ("native", "concat", "memory") or "val-chosen" in label:
                phrasing[label] = score_long_captions(
                    run(spec, held, args.seeds, **sampling), held, len(args.seeds), window
                )

    # ------------------------------------------------------------------ α-blend of the memory (seed §3.4)
    alpha_blend = []
    if args.memory is not None:
        # α = 0 is exactly the native window and α = 1 the memory: those two are the contenders' runs
        reuse = {0.0: results["truncation (native 77)"], 1.0: results.get("memory (minilm-tiny-long)")}
        for alpha in args.alphas:
            s = reuse.get(alpha) or score_long_captions(run(f"memory:{args.memory}@{alpha:g}", test_long, args.seeds, **sampling),
                                          test_long, len(args.seeds), window)  # fmt: skip
            alpha_blend.append({"alpha": alpha, "head": s["head"]["object_recall"], "tail": s["tail"]["object_recall"],
                                "tail_lo": s["tail"]["object_recall_lo"], "tail_hi": s["tail"]["object_recall_hi"]})  # fmt: skip

    chance_uniform = 1.0 / (len(world.config.colours) * n_shapes)
    out = {
        "meta": {
            **meta,
            "wall_s": time.perf_counter() - t0,
            "model": str(args.model),
            "memory": str(args.memory) if args.memory else None,
            "seeds": args.seeds,
            "n_test_captions": len(test_long),
            "reader": reader.describe(),
        },
        "tuning": tuning,
        "results": results,
        "paired_differences": differences,
        "heldout_phrasing": phrasing,
        "alpha_blend": alpha_blend,
        "chance": {"uniform_object": chance_uniform},
    }
    verdicts = _verdicts(out)
    md = render_markdown(out)
    write_results(args.out, out, md, verdicts)
    render_png(out, args.out.with_suffix(".png"))
    ex_labels = ["truncation (native 77)", "concat (compel, 77·k)", *[lbl for lbl, _ in contenders if "val-chosen" in lbl],
                 *[lbl for lbl, _ in contenders if lbl.startswith("memory (")], "ceiling"]  # fmt: skip
    save_contender_sheet(world, test_long[:n_ex], {k: examples["images"][k] for k in ex_labels},
                         {k: examples["readings"][k] for k in ex_labels}, args.out.parent / f"{args.out.name}_examples.png")  # fmt: skip
    logger.info("wrote %s.{json,md,png} in %.0f s", args.out, out["meta"]["wall_s"])
    return out


def _verdicts(out: dict[str, Any]) -> list:
    r = out["results"]
    trunc = r["truncation (native 77)"]
    ceiling = r["ceiling (same scenes, terse, one window)"]
    chance = trunc.get("tail_shuffled_chance", math.nan)
    out_v = [
        verdict("truncation's tail recall at the shuffled-caption chance level (≤ chance + 0.02)",
                trunc["tail"]["object_recall"], "<=", chance + 0.02),
        verdict("ceiling: object recall of the same scenes told in one window (≥ 0.8)",
                ceiling["all"]["object_recall"], ">=", 0.8),
    ]  # fmt: skip
    for d in out.get("paired_differences", []):
        if d["region"] == "tail":
            out_v.append(verdict(f"{d['a']} puts more tail objects in the picture than {d['b']} (lower end of the "
                                 "paired 95 % interval of the tail-recall difference > 0)", d["lo"], ">", 0.0))  # fmt: skip
    return out_v


def render_markdown(out: dict[str, Any]) -> str:
    r = out["results"]
    m = out["meta"]
    lines = [
        "# The tulip test, offline: long prompts judged by the image",
        "",
        f"{m['n_test_captions']} held-out long captions (test split: scenes never trained on, 5–9 objects, "
        f"2–4 windows, ≥ 2 objects described only past token 75), seeds {m['seeds']}; every contender "
        "through the same model, sampler and seeds; the reader scores colour, shape and cell. "
        "95 % bootstrap intervals over captions. Wall time "
        f"{m['wall_s'] / 60:.0f} min.",
        "",
        f"Chosen on validation scenes: guidance {out['tuning']['chosen']['guidance_scale']:g}, "
        f"{out['tuning']['chosen']['num_inference_steps']} steps, shift λ = {out['tuning']['chosen']['shift_lambda']:g}.",
        "",
        "| contender | positions | head recall | tail recall | seam recall | all | binding | false objects / image |",
        "|---|---:|---|---|---|---|---|---|",
    ]

    def cell(v: dict[str, Any], region: str) -> str:
        return fmt_recall(v.get(region, {}))

    for label, v in r.items():
        fo = v["false_objects_per_image"]
        lines.append(
            f"| {label} | {v['positions']} | {cell(v, 'head')} | {cell(v, 'tail')} | {cell(v, 'seam')} | {cell(v, 'all')} | "
            f"{v['all']['binding']:.3f} | {fo['mean']:.2f} [{fo['lo']:.2f}, {fo['hi']:.2f}] |"
        )
    trunc = r["truncation (native 77)"]
    lines += [
        "",
        f"Objects scored: head {int(trunc['head']['n_objects'])}, tail {int(trunc['tail']['n_objects'])}, "
        f"seam {int(trunc['seam'].get('n_objects', 0))} (× seeds). Chance: a uniform colour × shape guess in an "
        f"occupied cell {out['chance']['uniform_object']:.3f}; truncation's images scored against another "
        f"caption's tail (shuffled) {trunc.get('tail_shuffled_chance', math.nan):.3f}.",
        "",
        "## Recall over the token offset of the object's sentence",
        "",
        "| contender | " + " | ".join(f"{c['lo']}–{c['hi']}" for c in trunc["curve"]) + " |",
        "|---|" + "---:|" * len(trunc["curve"]),
    ]
    for label, v in r.items():
        vals = {(c["lo"], c["hi"]): c["recall"] for c in v["curve"]}
        lines.append(
            f"| {label} | "
            + " | ".join(f"{vals.get((c['lo'], c['hi']), math.nan):.3f}" for c in trunc["curve"])
            + " |"
        )
    if out.get("paired_differences"):
        lines += ["", "## Paired differences (same captions, seeds and objects; 95 % paired bootstrap over captions)",
                  "", "| contender a | contender b | tail recall a − b | head recall a − b |", "|---|---|---|---|"]  # fmt: skip
        by = {(d["a"], d["b"], d["region"]): d for d in out["paired_differences"]}
        for a, b in dict.fromkeys((d["a"], d["b"]) for d in out["paired_differences"]):
            t, h = by[(a, b, "tail")], by[(a, b, "head")]
            lines.append(f"| {a} | {b} | {fmt_ci(t['difference'], t['lo'], t['hi'])} | "
                         f"{fmt_ci(h['difference'], h['lo'], h['hi'])} |")  # fmt: skip
    if out["heldout_phrasing"]:
        lines += ["", "## Held-out phrasings (object templates never used in training)", "",
                  "| contender | head recall | tail recall |", "|---|---|---|"]  # fmt: skip
        for label, v in out["heldout_phrasing"].items():
            lines.append(f"| {label} | {fmt_ci(v['head']['object_recall'], v['head']['object_recall_lo'], v['head']['object_recall_hi'])} | "
                         f"{fmt_ci(v['tail']['object_recall'], v['tail']['object_recall_lo'], v['tail']['object_recall_hi'])} |")  # fmt: skip
    if out["alpha_blend"]:
        lines += ["", "## α-blend of the memory, (1 − α)·native + α·memory (the seed's §3.4)", "",
                  "| α | head recall | tail recall |", "|---:|---:|---|"]  # fmt: skip
        for row in out["alpha_blend"]:
            lines.append(
                f"| {row['alpha']:g} | {row['head']:.3f} | {fmt_ci(row['tail'], row['tail_lo'], row['tail_hi'])} |"
            )
    lines += [
        "",
        "## Tuning (validation split only)",
        "",
        "| guidance | steps | val short-caption recall |",
        "|---:|---:|---:|",
    ]
    for row in out["tuning"]["sampling"]:
        lines.append(f"| {row['guidance']:g} | {row['steps']} | {row['object_recall']:.3f} |")
    lines += ["", "| shift λ | val long-caption recall |", "|---:|---:|"]
    for row in out["tuning"]["shift"]:
        lines.append(f"| {row['lambda']:g} | {row['object_recall']:.3f} |")
    return "\n".join(lines) + "\n"


def render_png(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = out["results"]
    labels = list(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    x = np.arange(len(labels))
    for k, (region, colour) in enumerate((("head", "tab:blue"), ("tail", "tab:red"))):
        est = [r[lbl][region].get("object_recall", math.nan) for lbl in labels]
        lo = [r[lbl][region].get("object_recall_lo", math.nan) for lbl in labels]
        hi = [r[lbl][region].get("object_recall_hi", math.nan) for lbl in labels]
        err = np.array([np.subtract(est, lo), np.subtract(hi, est)])
        ax1.bar(x + (k - 0.5) * 0.38, est, 0.38, yerr=err, color=colour, label=f"{region} objects", capsize=2)
    chance = r["truncation (native 77)"].get("tail_shuffled_chance", math.nan)
    ax1.axhline(chance, color="gray", ls=":", label=f"shuffled-caption chance ({chance:.3f})")
    ax1.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax1.set_ylabel("object recall (colour, shape and cell right)")
    ax1.set_title("head (first 75 tokens) vs tail (past token 75)")
    ax1.legend(fontsize=7)
    for lbl in labels:
        curve = r[lbl]["curve"]
        mids = [(c["lo"] + c["hi"]) / 2 for c in curve]
        ax2.plot(mids, [c["recall"] for c in curve], marker="o", label=lbl)
    ax2.axvline(75, color="gray", ls="--", lw=0.8)
    ax2.set_xlabel("token offset of the object's sentence")
    ax2.set_ylabel("object recall")
    ax2.set_title("recall over the prompt (window boundary at 75)")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])

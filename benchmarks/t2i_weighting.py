"""Does a prompt weight change what is drawn? Weighting syntax measured on the scene world.

One object of every held-out caption (the sentence that describes it) is weighted in A1111's syntax
``(sentence:w)`` or compel's ``(sentence)w``; the miniature text-to-image model draws it through
:meth:`pentachora.diffusion.LongPrompt.from_pipeline` with the same seeds as the unweighted caption,
and the world's reader scores every object (colour, shape and cell all right).

* **short captions** (one window, ≥ 2 objects): the weighted object's recall and the other objects'
  recall, for each dialect and weight, against the unweighted caption (paired bootstrap over captions);
* **long captions** (2–4 windows): an object described only past token 75 is weighted ×``--long-weight``
  under truncation (one window: the weighted sentence is cut, so nothing can change), concatenation
  (77·k) and a trained memory (77 positions, reading the weighted windows).

The guidance scale is chosen on validation scenes (unweighted short captions); the weights are a
fixed grid, reported whole (nothing is chosen on the test split).

Usage::

    python benchmarks/t2i_weighting.py --model runs/t2i --memory runs/m14
    python benchmarks/t2i_weighting.py --model runs/t2i --quick          # smoke run

Writes ``benchmarks/results/t2i_weighting.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pentachora.data.scenes import Caption, SceneWorld
from pentachora.diffusion import LongPrompt, MiniT2IPipeline
from pentachora.nn.text_encoder import FrozenTextEncoder
from pentachora.recipes.reporting import fmt_ci, run_meta, verdict, write_results
from pentachora.recipes.t2i import caption_set, default_reader, evaluate_prompts, token_counter
from pentachora.t2i.scoring import paired_recall_difference, summarise_hits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("t2i_weighting")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="Trained mini-t2i run folder.")
    p.add_argument(
        "--memory", type=Path, default=None, help="Trained residual memory run (minilm-tiny-long)."
    )
    p.add_argument("--captions", type=int, default=120, help="Held-out short captions with >= 2 objects.")
    p.add_argument("--long-captions", type=int, default=64, help="Held-out long captions with a tail object.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Sampling seeds per caption.")
    p.add_argument(
        "--weights", type=float, nargs="+", default=[0.5, 1.2, 1.5], help="Weights applied (grid)."
    )
    p.add_argument(
        "--long-weight", type=float, default=1.5, help="Weight of the tail object in long captions."
    )
    p.add_argument("--val-captions", type=int, default=32, help="Validation captions for the guidance.")
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0], help="Guidance grid (tuned).")
    p.add_argument("--steps", type=int, default=15, help="Sampling steps.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 6 captions, 1 seed, no grid.")
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_weighting", help="Output stem.")
    args = p.parse_args(argv)
    if args.quick:
        args.captions, args.long_captions, args.seeds, args.val_captions = 6, 4, [0], 4
        args.guidance, args.weights = [5.0], [1.5]
    return args


def sentence_chars(encoder: FrozenTextEncoder, caption: Caption, obj: int) -> tuple[int, int]:
    """``[start, end)`` characters of object ``obj``'s sentence (from its token span)."""
    offsets = encoder.tokenizer(caption.text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    a, b = caption.spans[obj]
    return int(offsets[a][0]), int(offsets[b - 1][1])


def weighted(text: str, span: tuple[int, int], weight: float, dialect: str) -> str:
    """``text`` with ``text[span]`` weighted in ``dialect``'s syntax (brackets in the text escaped)."""

    def esc(s: str) -> str:
        for ch in "\\()[]":
            s = s.replace(ch, "\\" + ch)
        return s

    a, b = span
    inner = esc(text[a:b])
    mark = f"({inner}:{weight:g})" if dialect == "a1111" else f"({inner}){weight:g}"
    return esc(text[:a]) + mark + esc(text[b:])


def object_mask(hits: Any, layouts: np.ndarray, cells: np.ndarray, n_seeds: int) -> np.ndarray:
    """Per scored object: is it the weighted one (its image's target cell)?"""
    target_cell = np.repeat(cells, n_seeds)[hits.image]
    return hits.cell == target_cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    meta = run_meta("benchmarks/t2i_weighting.py", argv)
    pipe = MiniT2IPipeline.from_run(args.model)
    model, encoder = pipe.model, pipe.encoder
    world = SceneWorld(model.config.world)
    reader = default_reader(model.config.world)
    count = token_counter(encoder)
    window = world.config.window_tokens

    def run(lp: LongPrompt, texts: list[str], layouts: np.ndarray, seeds: list[int], guidance: float):
        embeds = lp(texts, negative_prompt="")
        return evaluate_prompts(model, reader, embeds.prompt_embeds, layouts, seeds=seeds,
                                negative_prompt_embeds=embeds.negative_prompt_embeds,
                                guidance_scale=guidance, num_inference_steps=args.steps)  # fmt: skip

    concat = {d: LongPrompt.from_pipeline(pipe, dialect=d) for d in ("a1111", "compel")}

    # ------------------------------------------------------------------ guidance on validation scenes
    val = [(s, c) for s, c in caption_set(world, "val", 3 * args.val_captions, "prose", count)
           if len(s.objects) >= 2][: args.val_captions]  # fmt: skip
    val_layouts = world.layouts([s for s, _ in val])
    tuning = []
    for g in args.guidance:
        r = run(concat["a1111"], [c.text for _, c in val], val_layouts, [0], g)["summary"]
        tuning.append({"guidance": g, "object_recall": r["object_recall"]})
        logger.info("validation: guidance %.1f → recall %.3f", g, r["object_recall"])
    guidance = max(tuning, key=lambda r: r["object_recall"])["guidance"]

    # ------------------------------------------------------------------ short captions
    short = [(s, c) for s, c in caption_set(world, "test", 4 * args.captions, "prose", count)
             if len(s.objects) >= 2][: args.captions]  # fmt: skip
    layouts = world.layouts([s for s, _ in short])
    targets = [c.order[-1] for _, c in short]  # the object described last
    cells = np.array([s.objects[i].cell for (s, _), i in zip(short, targets, strict=True)])
    spans = [sentence_chars(encoder, c, i) for (_, c), i in zip(short, targets, strict=True)]
    base = run(concat["a1111"], [c.text for _, c in short], layouts, args.seeds, guidance)
    clusters = base["clusters"]
    is_target = object_mask(base["hits"], layouts, cells, len(args.seeds))
    short_rows = [_row("unweighted", base, clusters, is_target)]
    short_diffs = []
    for dialect in ("a1111", "compel"):
        for w in args.weights:
            texts = [weighted(c.text, sp, w, dialect) for (_, c), sp in zip(short, spans, strict=True)]
            t = time.perf_counter()
            res = run(concat[dialect], texts, layouts, args.seeds, guidance)
            label = f"{dialect} ×{w:g}"
            short_rows.append(_row(label, res, clusters, is_target))
            for who, mask in (("weighted object", is_target), ("other objects", ~is_target)):
                est, lo, hi = paired_recall_difference(res["hits"], base["hits"], clusters, mask)
                short_diffs.append({"contender": label, "dialect": dialect, "weight": w, "objects": who,
                                    "difference": est, "lo": lo, "hi": hi})  # fmt: skip
            logger.info("short %s: target %.3f (unweighted %.3f) in %.0f s", label,
                        short_rows[-1]["target_recall"], short_rows[0]["target_recall"], time.perf_counter() - t)  # fmt: skip

    # ------------------------------------------------------------------ long captions: a tail object
    long_all = caption_set(world, "test", 3 * args.long_captions, "long", count)
    long = [(s, c) for s, c in long_all if any(c.object_region(i, window) == "tail" for i in c.order)]
    long = long[: args.long_captions]
    l_targets = [next(i for i in c.order if c.object_region(i, window) == "tail") for _, c in long]
    l_cells = np.array([s.objects[i].cell for (s, _), i in zip(long, l_targets, strict=True)])
    l_spans = [sentence_chars(encoder, c, i) for (_, c), i in zip(long, l_targets, strict=True)]
    l_layouts = world.layouts([s for s, _ in long])
    plain = [c.text for _, c in long]
    heavy = [
        weighted(c.text, sp, args.long_weight, "a1111") for (_, c), sp in zip(long, l_spans, strict=True)
    ]
    encoders: list[tuple[str, LongPrompt]] = [
        ("truncation (77)", LongPrompt.from_pipeline(pipe, chunks=False)),
        ("concatenation (77·k)", concat["a1111"]),
    ]
    if args.memory is not None:
        encoders.append(("memory (77)", LongPrompt.from_pipeline(pipe, memory=args.memory)))
    long_rows, long_diffs = [], []
    for label, lp in encoders:
        t = time.perf_counter()
        r0 = run(lp, plain, l_layouts, args.seeds, guidance)
        r1 = run(lp, heavy, l_layouts, args.seeds, guidance)
        tmask = object_mask(r0["hits"], l_layouts, l_cells, len(args.seeds))
        long_rows.append({**_row(f"{label}, unweighted", r0, r0["clusters"], tmask), "encoder": label})
        long_rows.append(
            {
                **_row(f"{label}, tail object ×{args.long_weight:g}", r1, r1["clusters"], tmask),
                "encoder": label,
            }
        )
        est, lo, hi = paired_recall_difference(r1["hits"], r0["hits"], r0["clusters"], tmask)
        long_diffs.append({"encoder": label, "difference": est, "lo": lo, "hi": hi})
        logger.info("long %s: tail target %.3f → %.3f in %.0f s", label, long_rows[-2]["target_recall"],
                    long_rows[-1]["target_recall"], time.perf_counter() - t)  # fmt: skip

    # ------------------------------------------------------------------ verdicts and report
    verdicts = []
    for d in short_diffs:
        if d["objects"] != "weighted object":
            continue
        if d["weight"] > 1:
            verdicts.append(verdict(f"{d['contender']} raises the weighted object's recall (95 % CI above 0)",
                                    d["lo"], ">", 0.0))  # fmt: skip
        elif d["weight"] < 1:
            verdicts.append(verdict(f"{d['contender']} lowers the weighted object's recall (95 % CI below 0)",
                                    d["hi"], "<", 0.0))  # fmt: skip
    for d in long_diffs:
        if d["encoder"] != "truncation (77)":
            verdicts.append(verdict(f"{d['encoder']}: weighting a tail object raises its recall (95 % CI above 0)",
                                    d["lo"], ">", 0.0))  # fmt: skip
    data = {
        "meta": meta,
        "settings": {
            "guidance_scale": guidance,
            "num_inference_steps": args.steps,
            "seeds": args.seeds,
            "weights": args.weights,
            "long_weight": args.long_weight,
            "split": "boundary",
        },
        "tuning": tuning,
        "short": {"n_captions": len(short), "rows": short_rows, "paired": short_diffs},
        "long": {"n_captions": len(long), "rows": long_rows, "paired": long_diffs},
        "seconds": time.perf_counter() - t0,
    }
    write_results(args.out, data, _markdown(data), verdicts)
    return data


def _row(label: str, res: dict[str, Any], clusters: np.ndarray, is_target: np.ndarray) -> dict[str, Any]:
    hits = res["hits"]
    target, other = summarise_hits(hits, clusters, is_target), summarise_hits(hits, clusters, ~is_target)
    ci = lambda r: [r["object_recall_lo"], r["object_recall_hi"]]  # noqa: E731
    return {"contender": label, "target_recall": target["object_recall"], "target_ci": ci(target),
            "other_recall": other["object_recall"], "other_ci": ci(other),
            "false_objects_per_image": float(hits.false_objects.mean())}  # fmt: skip


def _markdown(d: dict[str, Any]) -> str:
    s = d["settings"]
    lines = [
        "# Prompt weighting measured: does a weight change what is drawn?",
        "",
        f"Miniature text-to-image model on held-out scenes, seeds {s['seeds']}, guidance {s['guidance_scale']:g} "
        f"(chosen on validation scenes), {s['num_inference_steps']} steps; windows split at boundaries. "
        "Recall: colour, shape and cell all right; 95 % bootstrap intervals over captions. "
        f"Wall time {d['seconds'] / 60:.0f} min.",
        "",
        f"## Short captions ({d['short']['n_captions']}, one window, ≥ 2 objects; the last-described object weighted)",
        "",
        "| contender | weighted object recall | other objects recall | false objects / image |",
        "|---|---|---|---:|",
    ]
    for r in d["short"]["rows"]:
        lines.append(f"| {r['contender']} | {fmt_ci(r['target_recall'], *r['target_ci'])} | "
                     f"{fmt_ci(r['other_recall'], *r['other_ci'])} | {r['false_objects_per_image']:.2f} |")  # fmt: skip
    lines += ["", "Paired differences against the unweighted caption (same captions, seeds and objects):", "",
              "| contender | objects | recall difference |", "|---|---|---|"]  # fmt: skip
    for p in d["short"]["paired"]:
        lines.append(f"| {p['contender']} | {p['objects']} | {fmt_ci(p['difference'], p['lo'], p['hi'])} |")
    lines += [
        "",
        f"## Long captions ({d['long']['n_captions']}, 2–4 windows): an object described only past token 75, "
        f"weighted ×{s['long_weight']:g} (A1111)",
        "",
        "| encoder | prompt | tail object recall | other objects recall |",
        "|---|---|---|---|",
    ]
    for r in d["long"]["rows"]:
        lines.append(f"| {r['encoder']} | {r['contender'].split(', ', 1)[1]} | "
                     f"{fmt_ci(r['target_recall'], *r['target_ci'])} | {fmt_ci(r['other_recall'], *r['other_ci'])} |")  # fmt: skip
    lines += ["", "| encoder | tail object recall, weighted − unweighted |", "|---|---|"]
    for p in d["long"]["paired"]:
        lines.append(f"| {p['encoder']} | {fmt_ci(p['difference'], p['lo'], p['hi'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])

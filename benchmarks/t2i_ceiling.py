"""The short-caption ceiling of a trained miniature T2I run: its training curve and held-out score.

Reads a run folder written by ``pentachora train t2i`` (nothing is retrained or resampled):

* the **curve** — every periodic evaluation in ``metrics.jsonl`` (validation prose captions with 1–3
  objects, one seed, read by the world's reader) against training minutes, evaluations excluded;
* the **ceiling** — ``eval.json``'s final score on held-out *test* captions (3 seeds each), with its
  95 % bootstrap interval over captions, judged against the issue's goal (object recall ≥ 0.8,
  moonshot ≥ 0.95).

Usage::

    pentachora train t2i --preset cpu --out runs/t2i --threads 2     # ≈ 60–75 min on 2 CPU cores
    python benchmarks/t2i_ceiling.py --model runs/t2i

Writes ``benchmarks/results/t2i_ceiling.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pentachora.io import read_json
from pentachora.recipes.reporting import fmt_ci, run_meta, verdict, write_results
from pentachora.recipes.scene_pictures import ceiling_curve, save_ceiling_curve

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="A finished mini-t2i run folder.")
    p.add_argument(
        "--note", default="", help="A line about the run written under the title (e.g. the machine's load)."
    )
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_ceiling", help="Output stem.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    run = args.model
    for name in ("metrics.jsonl", "eval.json", "train_config.json"):
        if not (run / name).is_file():
            raise SystemExit(f"{run} is not a finished T2I run: {name} is missing (train it first)")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = ceiling_curve(metrics)
    evaluation = read_json(run / "eval.json")
    test = evaluation.get("test_short_prose")
    if not test:
        raise SystemExit(f"{run}/eval.json has no held-out score (trained with --final-captions 0?)")
    train_config = read_json(run / "train_config.json")
    model_config = (
        read_json(run / "model_config.json")["config"] if (run / "model_config.json").is_file() else {}
    )
    out = {
        "meta": run_meta("benchmarks/t2i_ceiling.py", argv, run=str(run)),
        "note": args.note,
        "train": {
            "steps": evaluation.get("train_steps"),
            "wall_s": evaluation.get("train_wall_s"),
            "torch_threads": evaluation.get("torch_threads"),
            "nonfinite_steps": evaluation.get("nonfinite_steps"),
            "batch_size": train_config.get("batch_size"),
            "lr": train_config.get("lr"),
            "mixed_precision": train_config.get("mixed_precision"),
        },
        "model": {
            k: model_config.get(k)
            for k in (
                "block_out_channels",
                "text_adapter_kernel",
                "pooled_text",
                "coord_frequencies",
                "guidance_scale",
                "sample_steps",
                "sampler",
            )
        },
        "curve": curve,
        "test_short_prose": test,
    }
    verdicts = [
        verdict("short-caption ceiling: held-out object recall ≥ 0.8", test["object_recall"], ">=", 0.8),
        verdict("moonshot: held-out object recall ≥ 0.95", test["object_recall"], ">=", 0.95),
    ]
    t = out["train"]
    lines = [
        "# The short-caption ceiling of the miniature T2I model",
        "",
        *([args.note, ""] if args.note else []),
        f"Run `{run}`: {t['steps']} steps at batch {t['batch_size']}, lr {t['lr']}, precision "
        f"{t['mixed_precision']}, {t['torch_threads']} torch threads, {t['wall_s'] / 60:.1f} min of wall time "
        f"(evaluations included), {t['nonfinite_steps']} non-finite steps.",
        "",
        "Held-out short captions (test split, prose, 1–3 objects, 3 seeds each; 95 % bootstrap over captions):",
        "",
        "| object recall | something in the cell | right colour there | right shape there | binding | false objects / image | objects scored |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {fmt_ci(test['object_recall'], test['object_recall_lo'], test['object_recall_hi'])} | "
        f"{test['position_recall']:.3f} | {test['colour_recall']:.3f} | {test['shape_recall']:.3f} | {test['binding']:.3f} | {test['false_objects_per_image']:.2f} | "
        f"{int(test['n_objects'])} |",
        "",
        "Training curve (validation prose captions, 1 seed; minutes exclude the evaluations):",
        "",
        "| step | training minutes | object recall | something in the cell | binding | false objects / image |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in curve:
        lines.append(
            f"| {r['step']} | {r['train_s'] / 60:.1f} | {r['object_recall']:.3f} | {r.get('position_recall', float('nan')):.3f} | "
            f"{r.get('binding', float('nan')):.3f} | {r.get('false_objects_per_image', float('nan')):.2f} |"
        )
    lines += ["", "![ceiling curve](t2i_ceiling.png)"]
    write_results(args.out, out, "\n".join(lines), verdicts)
    save_ceiling_curve(curve, args.out.with_suffix(".png"))
    return out


if __name__ == "__main__":
    main()

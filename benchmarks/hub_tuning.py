"""How the Conduit hub's defaults were chosen: variants trained on the training articles minus a validation
split, scored on that validation split (never on the held-out articles of ``benchmarks/hub.py``).

Each call trains one variant and appends it to ``benchmarks/results/hub_tuning.json``; the markdown table
is regenerated from every stored variant, next to the benchmark's training-free contenders (whitened
Procrustes, CCA, relative representations) fitted on the same fit rows, their options chosen as in
``benchmarks/hub.py`` (on an inner split of the fit rows). Training R@1 is measured on an equally large subset of the fit split, so the table
shows how much each variant overfits.

Usage::

    python benchmarks/hub_tuning.py --name "lr 1e-3" --lr 1e-3
    python benchmarks/hub_tuning.py --name "gcca init" --lr 1e-3 --config '{"proj_init": "gcca"}'
    python benchmarks/hub_tuning.py --baselines     # (re)compute the training-free rows only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pentachora.recipes.hub_baselines import (
    TEXT_EXPERTS,
    expert_pairs,
    training_free_baselines,
    validation_split,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hub_tuning"
EXPERTS = TEXT_EXPERTS


def _split(args):
    from pentachora.recipes.hub import HubData, prepare_hub_data

    data = prepare_hub_data(EXPERTS, cache_dir=args.cache_dir, max_train_items=args.max_train_items)
    fit, val = validation_split(data.train)
    fit, val = sorted(fit), sorted(val)
    return data, fit, val, HubData


def baselines(args) -> dict[str, Any]:
    """The benchmark's training-free contenders, fitted on the fit split and scored on the validation split.

    Their options are chosen exactly as in ``benchmarks/hub.py``: on an inner split of the fit rows.
    """
    data, fit, val, _ = _split(args)
    tf = training_free_baselines(data.train.subset(fit), data.train.subset(val), args.d_hub, quick=False)
    labels = {"procrustes": "whitened Procrustes", "cca": "CCA", "relrep": "relative representations"}
    return {label: tf[m] for m, label in labels.items()}


def variant(args, argv: list[str] | None = None) -> dict[str, Any]:
    from pentachora.recipes.hub import evaluate_hub, hub_config_for, train_hub
    from pentachora.training import TrainConfig

    data, fit, val, HubData = _split(args)
    train = data.train.compressed(args.chunks)
    hd = HubData(train.subset(fit), train.subset(val), data.info)
    cfg = hub_config_for(hd, d_hub=args.d_hub, **json.loads(args.config))
    tc = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(30, args.steps // 10),
        weight_decay=args.weight_decay,
        seed=args.seed,
        log_every=max(1, args.steps // 5),
        progress=False,
        tensorboard=False,
        out_dir=None,
    )
    t0 = time.perf_counter()
    run = train_hub(hd, cfg, tc, resume=False)
    ev = run.evaluation
    stride = max(1, hd.train.n // hd.heldout.n)
    tr = evaluate_hub(run.model, hd.train.subset(range(0, hd.train.n, stride)))
    return {
        "name": args.name,
        "command": "python benchmarks/hub_tuning.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "config": json.loads(args.config),
        "val_mean_r1": ev["mean_r1"],
        "val_pairs": {k: v["r1"] for k, v in ev["pairs"].items()},
        "train_mean_r1": tr["mean_r1"],
        "cv_hub": ev["cv_hub"],
        "wall_s": time.perf_counter() - t0,
        "fit_items": hd.train.n,
        "val_items": hd.heldout.n,
    }


def render(store: dict[str, Any]) -> str:
    pairs = [f"{a}|{b}" for a, b in expert_pairs(EXPERTS)]
    lines = [
        "# Conduit hub: how the defaults were chosen (validation split of the training articles)",
        "",
        "Each row: `python benchmarks/hub_tuning.py` with the listed options (commands in the JSON); one seed, "
        "trained on the training articles minus 15 % of them, scored on those 15 % (never on the held-out "
        "articles of `benchmarks/hub.py`). R@1 in %, mean of both directions, among all validation items. "
        "Rows marked † were run by this script's predecessor (the same training and scoring code, before the "
        "training-R@1 column existed; shared machine, so wall times vary by ±20 %). Noise between identical "
        "settings is about ±1 point (not measured over seeds here).",
        "",
        "| variant | steps | lr | wd | config | "
        + " | ".join(pairs)
        + " | mean val R@1 | train R@1 | wall s |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in pairs) + " | --- | --- | --- |",
    ]
    for name, b in store.get("baselines", {}).items():
        cells = [f"{100 * b['pairs'][p]['r1']:.1f}" for p in pairs]
        lines.append(
            f"| {name} (options chosen on an inner split of the fit rows) | — | — | — | — | "
            + " | ".join(cells)
            + f" | **{100 * b['mean_r1']:.1f}** | — | — |"
        )
    for v in store.get("variants", []):
        cells = [f"{100 * v['val_pairs'][p]:.1f}" for p in pairs]
        train = "—" if v.get("train_mean_r1") is None else f"{100 * v['train_mean_r1']:.1f}"
        lines.append(
            f"| {v['name']}{' †' if v['command'].endswith('†') else ''} | {v['steps']} | {v['lr']:g} | "
            f"{v['weight_decay']:g} | `{json.dumps(v['config'])}` | "
            + " | ".join(cells)
            + f" | **{100 * v['val_mean_r1']:.1f}** | {train} | {v['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="", help="Label of the variant (default: its options).")
    p.add_argument("--baselines", action="store_true", help="Compute the training-free rows instead.")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--d-hub", type=int, default=256)
    p.add_argument("--config", default="{}", help="ConduitHubConfig overrides as JSON.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--max-train-items", type=int, default=0, help="Smoke runs: the first N training items.")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    json_path = args.out.with_suffix(".json")
    store = json.loads(json_path.read_text()) if json_path.is_file() else {"variants": []}
    if args.baselines:
        store["baselines"] = baselines(args)
    else:
        args.name = args.name or f"lr {args.lr:g} {args.config}"
        row = variant(args, argv)
        store["variants"] = [v for v in store["variants"] if v["name"] != row["name"]] + [row]
        print(json.dumps(row))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(store, indent=1))
    args.out.with_suffix(".md").write_text(render(store))
    return store


if __name__ == "__main__":
    main()

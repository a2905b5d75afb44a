"""Cross-expert retrieval: the Conduit hub against what people use instead, on the same held-out items.

Experts (frozen, offline): all-MiniLM-L6-v2 token states (384-d), LSA = TF-IDF + truncated SVD fitted on
the training split (256-d), Word2Vec trained on the training split (128-d); ``d_hub = 256``, so the
aligners run all three cases (PCA down, direct, zero-pad up). Items: passages of the embedded Wikipedia
excerpt; held out by **whole article** (leakage check in the results). Features are extracted once and
cached as safetensors; every contender reads the same cache, the same splits and the same seeds.

Contenders, per expert pair (A, B):

(a) ``procrustes`` — frozen whitened (shrunk) Procrustes, no training;
(b) ``cca``        — regularised CCA, top-k canonical directions;
(c) ``relrep``     — relative representations / ASIF: similarities to K paired training anchors;
(d) ``heads``      — per-pair linear contrastive heads (CLIP-style), trained with the same Trainer,
                     steps, batch size and learning rate as the hub — *for each pair*;
(e) ``hub``        — the Conduit hub, all pairs at once.

Hyper-parameters of (a)–(c) (shrinkage, k, anchors) and (d)'s learning rate are chosen on a validation
split of the training articles, then refitted on the whole training split; the hub's defaults were chosen
on the same validation split (``benchmarks/hub_tuning.py``, ``results/hub_tuning.md``). Emergent alignment: the hub is trained on
LSA–MiniLM pairs from one half of the training items and MiniLM–W2V pairs from the other half only
(aligners likewise), then evaluated on LSA↔W2V, against composing two Procrustes maps
LSA→MiniLM←W2V fitted on the same halves.

Usage::

    python benchmarks/hub.py            # full run (3 seeds + 2 ablations), ≈ 45 min on 2 idle CPU cores
    python benchmarks/hub.py --quick    # smoke test (few items, few steps)

Writes ``benchmarks/results/hub.json``, ``hub.md`` and ``hub.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pentachora.recipes.hub_baselines import (
    TEXT_EXPERTS,
    expert_pairs,
    shrinkage_grid,
    title_split,
    train_pair_heads,
    training_free_baselines,
    validation_split,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXPERTS = TEXT_EXPERTS
EMERGENT = ("lsa", "minilm", "w2v")  # A, B (pivot), C: train A–B and B–C, evaluate A–C
METHODS = ("procrustes", "cca", "relrep", "heads", "hub")
LABELS = {
    "procrustes": "(a) whitened Procrustes (frozen)",
    "cca": "(b) regularised CCA",
    "relrep": "(c) relative reps / ASIF anchors",
    "heads": "(d) per-pair linear contrastive heads",
    "hub": "(e) Conduit hub",
}

logger = logging.getLogger("bench.hub")


HEADS_LRS = (5e-4, 1e-3, 2e-3, 4e-3)  # (d)'s learning-rate grid (validation split)

ABLATIONS = {  # label -> argument changes, trained on the first seed only
    "seed's identity-token read-out (readout=fusion)": {"readout": "fusion"},
    "InfoNCE only (w_midpoint = w_procrustes = 0)": {"w_midpoint": 0.0, "w_procrustes": 0.0},
}


def _composed_maps(pool: dict[str, torch.Tensor], halves, d_hub: int, shrinkage: float) -> tuple[Any, Any]:
    """A→B and C→B Procrustes maps into B's whitened frame, each fitted on its own half of the rows."""
    from pentachora.hub import ProcrustesAligner

    a, b, c = EMERGENT
    ref = ProcrustesAligner.fit_new(pool[b], None, d_hub=d_hub, shrinkage=shrinkage)
    tgt = ref(pool[b])
    h1, h2 = halves
    al_a = ProcrustesAligner.fit_new(pool[a][h1], tgt[h1], d_hub=d_hub, shrinkage=shrinkage)
    al_c = ProcrustesAligner.fit_new(pool[c][h2], tgt[h2], d_hub=d_hub, shrinkage=shrinkage)
    return al_a, al_c


def _emergent_shrinkage(out: dict[str, Any]) -> str:
    ep = out["results"]["emergent_procrustes"]
    return f"{ep['shrinkage']:g}" if "shrinkage" in ep else "= the hub's (not validated)"


def select_emergent_shrinkage(train, halves, d_hub: int, quick: bool) -> tuple[float, dict[str, float]]:
    """The composed baseline's own shrinkage: fitted on the fit rows (each half kept to its half), scored
    by A↔C R@1 on the validation split; ``(chosen, {shrinkage: validation R@1})``."""
    from pentachora.recipes.hub import pair_retrieval

    a, _, c = EMERGENT
    fit_idx, val_idx = validation_split(train)
    pos = {row: j for j, row in enumerate(fit_idx)}
    fit_halves = tuple([pos[i] for i in half if i in pos] for half in halves)
    pool = {n: train.pooled(n)[fit_idx] for n in EMERGENT}
    scores = {}
    for s in shrinkage_grid(quick):
        al_a, al_c = _composed_maps(pool, fit_halves, d_hub, s)
        scores[f"{s:g}"] = pair_retrieval(al_a(train.pooled(a)[val_idx]), al_c(train.pooled(c)[val_idx]))[
            "r1"
        ]
    best = max(scores, key=scores.get)
    return float(best), scores


def emergent_procrustes(train, heldout, halves, d_hub: int, shrinkage: float) -> dict[str, float]:
    """Compose A→B and C→B Procrustes maps (each fitted on its own half), evaluate A↔C."""
    from pentachora.hub import ProcrustesAligner
    from pentachora.recipes.hub import pair_retrieval

    a, _, c = EMERGENT
    al_a, al_c = _composed_maps({n: train.pooled(n) for n in EMERGENT}, halves, d_hub, shrinkage)
    direct_a, direct_c = (
        ProcrustesAligner.fit_new(train.pooled(a), None, d_hub=d_hub, shrinkage=shrinkage),
        None,
    )
    direct_c = ProcrustesAligner.fit_new(
        train.pooled(c), direct_a(train.pooled(a)), d_hub=d_hub, shrinkage=shrinkage
    )
    return {
        "composed": pair_retrieval(al_a(heldout.pooled(a)), al_c(heldout.pooled(c))),
        "direct_a_c_upper_bound": pair_retrieval(direct_a(heldout.pooled(a)), direct_c(heldout.pooled(c))),
    }


# ----------------------------------------------------------------------------- trained contenders
def make_train_config(args, seed: int):
    from pentachora.training import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(30, args.steps // 10),
        weight_decay=0.05,
        seed=seed,
        log_every=max(1, args.steps // 5),
        progress=False,
        tensorboard=False,
        out_dir=None,
    )


def _with(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    """A copy of the parsed arguments with some values changed."""
    return argparse.Namespace(**{**vars(args), **changes})


def _train_heads(train, heldout, a: str, b: str, args, seed: int):
    return train_pair_heads(train, heldout, a, b, args.d_hub, make_train_config(args, seed))


def select_heads_lr(train, args) -> dict[str, float]:
    """(d)'s learning rate per pair, chosen on the validation split of training articles (seed 0).

    The hub's defaults were chosen on the same validation split, so (d) gets the same chance.
    """
    fit_idx, val_idx = title_split(train.titles, 0.15, seed=0)
    if len(val_idx) < 10:
        return {f"{a}|{b}": args.lr for a, b in expert_pairs(train.experts)}
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    chosen = {}
    for a, b in expert_pairs(train.experts):
        scores = {}
        for lr in sorted({args.lr, *HEADS_LRS}):
            _, _, metrics = _train_heads(fit, val, a, b, _with(args, lr=lr), 0)
            scores[lr] = metrics["r1"]
        chosen[f"{a}|{b}"] = max(scores, key=scores.get)
        logger.info("heads %s|%s: validation R@1 by lr %s -> %g", a, b, scores, chosen[f"{a}|{b}"])
    return chosen


def run_heads(train, heldout, args, seed: int, lrs: dict[str, float] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": {}, "parameters": 0, "train_wall_s": 0.0, "lr": {}}
    for a, b in expert_pairs(train.experts):
        lr = (lrs or {}).get(f"{a}|{b}", args.lr)
        model, res, metrics = _train_heads(train, heldout, a, b, _with(args, lr=lr), seed)
        out["pairs"][f"{a}|{b}"] = metrics
        out["lr"][f"{a}|{b}"] = lr
        out["parameters"] += model.num_parameters(trainable_only=True)
        out["train_wall_s"] += res.wall_time_s
    out["mean_r1"] = statistics.mean(p["r1"] for p in out["pairs"].values())
    return out


def hub_overrides(args) -> dict[str, Any]:
    return {
        "n_tokens": args.n_tokens,
        "fusion_layers": 1,
        "dropout": args.dropout,
        "shrinkage": args.shrinkage,
        "w_midpoint": args.w_midpoint,
        "w_procrustes": args.w_procrustes,
        "readout": args.readout,
    }


def run_hub(data, args, seed: int) -> dict[str, Any]:
    from pentachora.recipes.hub import hub_config_for, train_hub

    cfg = hub_config_for(data, d_hub=args.d_hub, **hub_overrides(args))
    run = train_hub(data, cfg, make_train_config(args, seed), resume=False)
    ev = run.evaluation
    ev["aligners"] = run.aligners
    return ev


def run_hub_emergent(data, args, seed: int, halves) -> dict[str, Any]:
    from pentachora.data.paired import PairedBatchSource
    from pentachora.recipes.hub import AlternatingPairSource, hub_config_for, train_hub

    a, b, c = EMERGENT
    h1, h2 = halves
    cfg = hub_config_for(
        data, d_hub=args.d_hub, reference=b, pairs=(f"{a}|{b}", f"{b}|{c}"), **hub_overrides(args)
    )
    t1, t2 = data.train.subset(h1), data.train.subset(h2)
    source = AlternatingPairSource(
        [
            PairedBatchSource(t1, args.batch_size, seed, experts=[a, b]),
            PairedBatchSource(t2, args.batch_size, seed + 1, experts=[b, c]),
        ]
    )
    fit_items = {a: torch.tensor(h1), c: torch.tensor(h2)}
    run = train_hub(data, cfg, make_train_config(args, seed), fit_items=fit_items, source=source,
                    resume=False)  # fmt: skip
    ev = run.evaluation
    return {
        "emergent_pair": f"{a}|{c}",
        "emergent": ev["pairs"][f"{a}|{c}"],
        "trained_pairs": {k: v for k, v in ev["pairs"].items() if k != f"{a}|{c}"},
        "train_wall_s": ev["train_wall_s"],
    }


# ----------------------------------------------------------------------------- report
def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    seeds = results["seeds"]
    pairs = [f"{a}|{b}" for a, b in expert_pairs(EXPERTS)]
    table: dict[str, Any] = {}
    for m in METHODS:
        if m in ("procrustes", "cca", "relrep"):
            runs = [results["training_free"][m]]
        else:
            runs = [results["per_seed"][str(s)][m] for s in seeds]
        row = {}
        for p in pairs:
            for k in ("r1_ab", "r1_ba", "r5_ab", "r5_ba", "r1", "r1_shuffled"):
                row[f"{p}:{k}"] = _mean_sd([r["pairs"][p][k] for r in runs])
        row["mean_r1"] = _mean_sd([r["mean_r1"] for r in runs])
        row["parameters"] = runs[0].get("trainable_parameters", runs[0].get("parameters", 0))
        if m in ("heads", "hub"):
            row["train_wall_s"] = _mean_sd([r["train_wall_s"] for r in runs])
        table[m] = row
    em = [results["per_seed"][str(s)]["hub_emergent"]["emergent"]["r1"] for s in seeds]
    hub_cv = [results["per_seed"][str(s)]["hub"]["cv_hub"] for s in seeds]
    mid_cv = [results["per_seed"][str(s)]["hub"]["cv_midpoints"] for s in seeds]
    heads_t = statistics.mean(table["heads"]["train_wall_s"][0] for _ in [0])
    return {
        "table": table,
        "emergent_hub_r1": _mean_sd(em),
        "emergent_procrustes_r1": results["emergent_procrustes"]["composed"]["r1"],
        "emergent_direct_upper_bound_r1": results["emergent_procrustes"]["direct_a_c_upper_bound"]["r1"],
        "cv_hub": _mean_sd(hub_cv),
        "cv_midpoints": _mean_sd(mid_cv),
        "cv_target": results["per_seed"][str(seeds[0])]["hub"]["cv_target"],
        "hub_wall_ratio_to_heads": table["hub"]["train_wall_s"][0] / max(heads_t, 1e-9),
    }


def _fmt(ms: tuple[float, float], pct: bool = True) -> str:
    m, s = ms
    if pct:
        return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s else "")
    return f"{m:.4f}" + (f" ± {s:.4f}" if s else "")


def render_markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    meta = data["meta"]
    t = s["table"]
    pairs = [f"{a}|{b}" for a, b in expert_pairs(EXPERTS)]
    lines = [
        "# Conduit hub vs cross-expert retrieval baselines",
        "",
        f"Command: `{meta['command']}` — {meta['machine']}, torch {meta['torch']}, wall {meta['wall_s']:.0f} s.",
        "",
        f"Items: {meta['train_items']} training / {meta['heldout_items']} held-out passages of the embedded "
        f"Wikipedia excerpt; held out by whole article (leakage check: {meta['leakage']}). Experts: "
        "MiniLM-L6 token states (384-d), LSA fitted on the training split (256-d, one token), Word2Vec trained "
        f"on the training split (128-d, word tokens); d_hub = {meta['d_hub']}. Seeds {meta['seeds']} (mean ± sd "
        f"for trained contenders); (d) and (e): {meta['steps']} steps × batch {meta['batch_size']}, lr {meta['lr']} "
        "(each pair of (d) gets that budget on its own; (d)'s learning rate per pair chosen on the validation "
        f"split: {data['results'].get('heads_lr')}).",
        "",
        "Held-out R@1 in %, A→B / B→A, among all held-out items (chance = "
        f"{100 / meta['heldout_items']:.2f} %; the shuffled-pair floor is measured in the JSON):",
        "",
        "| contender | " + " | ".join(pairs) + " | mean R@1 | trainable params | train time / (d) |",
        "| --- | " + " | ".join("---" for _ in pairs) + " | --- | --- | --- |",
    ]
    heads_t = t["heads"]["train_wall_s"][0]
    for m in METHODS:
        row = t[m]
        cells = [f"{_fmt(row[f'{p}:r1_ab'])} / {_fmt(row[f'{p}:r1_ba'])}" for p in pairs]
        wall = f"{row['train_wall_s'][0] / heads_t:.2f}×" if "train_wall_s" in row else "—"
        lines.append(
            f"| {LABELS[m]} | "
            + " | ".join(cells)
            + f" | **{_fmt(row['mean_r1'])}** | {row['parameters']:,} | {wall} |"
        )
    lines += [
        "",
        "R@5 (mean of both directions, %):",
        "",
        "| contender | " + " | ".join(pairs) + " |",
        "| --- | " + " | ".join("---" for _ in pairs) + " |",
    ]
    for m in METHODS:
        row = t[m]
        cells = [_fmt(((row[f"{p}:r5_ab"][0] + row[f"{p}:r5_ba"][0]) / 2, 0.0)) for p in pairs]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    a, b, c = EMERGENT
    lines += [
        "",
        f"**Emergent alignment** ({a}↔{c}, never paired in training; {a}–{b} pairs from one half of the training "
        f"items, {b}–{c} from the other): hub R@1 {_fmt(s['emergent_hub_r1'])} % vs composed Procrustes "
        f"{a}→{b}←{c} {100 * s['emergent_procrustes_r1']:.1f} % (its own shrinkage "
        f"{_emergent_shrinkage(data)}, chosen on the validation split) (direct {a}–{c} Procrustes, which does "
        f"see the pairs: {100 * s['emergent_direct_upper_bound_r1']:.1f} %).",
        "",
        f"**Geometry**: pentachoron CV of the hub space {_fmt(s['cv_hub'], False)}, of the pair midpoints "
        f"{_fmt(s['cv_midpoints'], False)}, target_cv({meta['d_hub']}) = {s['cv_target']:.4f}.",
        "",
        f"Chosen options of (a)–(c) (validation split of training articles): `{json.dumps(data['training_free_chosen'])}`.",
        "",
    ]
    lines += reading(data)
    return "\n".join(lines) + "\n"


def reading(data: dict[str, Any]) -> list[str]:
    """Generated verdicts on the issue's goals, from the measured numbers only."""
    s = data["summary"]
    t = s["table"]
    hub = t["hub"]["mean_r1"]
    others = {m: t[m]["mean_r1"][0] for m in METHODS if m != "hub"}
    best_m = max(others, key=others.get)
    lines = ["**Reading** (generated from the numbers above):", ""]
    margin = 100 * (hub[0] - others[best_m])
    lines.append(
        f"* Mean held-out R@1: the hub {'beats' if margin > 0 else 'does not beat'} the best other contender, "
        f"{LABELS[best_m]} ({100 * others[best_m]:.1f} %), by {margin:+.1f} points"
        + (f" (hub sd over seeds {100 * hub[1]:.1f})." if hub[1] else ".")
    )
    pairs = [f"{a}|{b}" for a, b in expert_pairs(EXPERTS)]
    for p in pairs:
        h = t["hub"][f"{p}:r1"][0]
        best_p = max((m for m in METHODS if m != "hub"), key=lambda m: t[m][f"{p}:r1"][0])
        d = 100 * (h - t[best_p][f"{p}:r1"][0])
        lines.append(f"* {p}: hub {100 * h:.1f} % vs best other {LABELS[best_p]} {d:+.1f} points.")
    em, ep = s["emergent_hub_r1"], s["emergent_procrustes_r1"]
    lines.append(
        f"* Emergent pair: the hub {'beats' if em[0] > ep else 'does not beat'} composed Procrustes "
        f"({100 * em[0]:.1f} % vs {100 * ep:.1f} %, {100 * (em[0] - ep):+.1f} points)."
    )
    ratio = s["cv_hub"][0] / max(s["cv_target"], 1e-12)
    lines.append(
        f"* CV of the hub space {s['cv_hub'][0]:.3f} vs target_cv({data['meta']['d_hub']}) = {s['cv_target']:.3f} "
        f"({ratio:.1f}×): the hub loss constrains the variance of the midpoints' volumes, not the CV to a target"
        + ("; the space is far less regular than a random sphere of its width." if ratio > 2 else ".")
    )
    ab = data["results"].get("ablations", {})
    if ab:
        lines += ["", "Ablations (seed 0, same budget; mean held-out R@1):", ""]
        lines.append(
            f"* hub as configured: {100 * data['results']['per_seed'][str(data['meta']['seeds'][0])]['hub']['mean_r1']:.1f} %"
        )
        for name, r in ab.items():
            lines.append(
                f"* {name}: {100 * r['mean_r1']:.1f} % "
                + json.dumps({k: round(100 * v["r1"], 1) for k, v in r["pairs"].items()})
            )
    return [*lines, ""]


def render_png(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = data["summary"]["table"]
    pairs = [f"{a}|{b}" for a, b in expert_pairs(EXPERTS)]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.16
    for i, m in enumerate(METHODS):
        vals = [100 * t[m][f"{p}:r1"][0] for p in pairs] + [100 * t[m]["mean_r1"][0]]
        errs = [100 * t[m][f"{p}:r1"][1] for p in pairs] + [100 * t[m]["mean_r1"][1]]
        xs = [j + (i - 2) * width for j in range(len(vals))]
        ax.bar(xs, vals, width, yerr=errs, label=LABELS[m])
    s = data["summary"]
    ax.bar(
        len(pairs) + 1 - width / 2,
        100 * s["emergent_procrustes_r1"],
        width,
        color="grey",
        label="composed Procrustes (emergent)",
    )
    ax.bar(
        len(pairs) + 1 + width / 2,
        100 * s["emergent_hub_r1"][0],
        width,
        yerr=100 * s["emergent_hub_r1"][1],
        color="black",
        label="hub (emergent)",
    )
    ax.set_xticks(range(len(pairs) + 2), [*pairs, "mean", f"emergent {EMERGENT[0]}|{EMERGENT[2]}"])
    ax.set_ylabel("held-out R@1 (%, mean of both directions)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))  # below: never over bars
    ax.set_title("Cross-expert retrieval on held-out Wikipedia articles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Smoke test: few items and steps, 1 seed.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Hub (and untuned heads) learning rate.")
    p.add_argument("--d-hub", type=int, default=256)
    p.add_argument("--n-tokens", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--shrinkage", type=float, default=0.2)
    p.add_argument("--w-midpoint", type=float, default=0.1)
    p.add_argument("--w-procrustes", type=float, default=0.1)
    p.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also train the hub with the seed's identity-token read-out and with InfoNCE alone (seed 0).",
    )
    p.add_argument(
        "--tune-heads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"Choose (d)'s learning rate per pair from {HEADS_LRS} on the validation split.",
    )
    p.add_argument("--readout", choices=("anchored", "fusion"), default="anchored", help="Hub read-out.")
    p.add_argument(
        "--chunks", type=int, default=8, help="Hub inputs: items of more tokens become this many chunk means."
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "hub")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.batch_size = [0], min(args.steps, 20), min(args.batch_size, 32)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pentachora.training").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    from pentachora.recipes.hub import prepare_hub_data

    kw = {"max_train_items": 300, "max_heldout_items": 60} if args.quick else {}
    data = prepare_hub_data(EXPERTS, cache_dir=args.cache_dir, **kw)
    logger.info("data: %s", {k: v for k, v in data.info.items() if k != "expert_descriptions"})
    from pentachora.recipes.hub import HubData

    t_c = time.perf_counter()
    hub_data = HubData(data.train.compressed(args.chunks), data.heldout.compressed(args.chunks), data.info)
    logger.info("chunked hub inputs (≤ %d tokens per item) in %.0f s", args.chunks, time.perf_counter() - t_c)
    results: dict[str, Any] = {"seeds": args.seeds, "per_seed": {}}
    tf = training_free_baselines(data.train, data.heldout, args.d_hub, args.quick)
    results["training_free"] = tf
    logger.info("training-free: %s", {m: round(tf[m]["mean_r1"], 4) for m in tf})
    perm = torch.randperm(data.train.n, generator=torch.Generator().manual_seed(0)).tolist()
    halves = (sorted(perm[: data.train.n // 2]), sorted(perm[data.train.n // 2 :]))
    s_em, s_scores = select_emergent_shrinkage(data.train, halves, args.d_hub, args.quick)
    results["emergent_procrustes"] = {
        **emergent_procrustes(data.train, data.heldout, halves, args.d_hub, s_em),
        "shrinkage": s_em,
        "validation_r1_by_shrinkage": s_scores,
    }
    heads_lrs = select_heads_lr(data.train, args) if args.tune_heads else None
    results["heads_lr"] = heads_lrs
    for seed in args.seeds:
        per: dict[str, Any] = {}
        per["heads"] = run_heads(data.train, data.heldout, args, seed, heads_lrs)
        logger.info(
            "seed %d heads: %.4f (%.0f s)", seed, per["heads"]["mean_r1"], per["heads"]["train_wall_s"]
        )
        per["hub"] = run_hub(hub_data, args, seed)
        logger.info("seed %d hub: %.4f (%.0f s)", seed, per["hub"]["mean_r1"], per["hub"]["train_wall_s"])
        per["hub_emergent"] = run_hub_emergent(hub_data, args, seed, halves)
        logger.info("seed %d emergent: %.4f", seed, per["hub_emergent"]["emergent"]["r1"])
        results["per_seed"][str(seed)] = per
    if args.ablations:
        results["ablations"] = {}
        for label, change in ABLATIONS.items():
            ev = run_hub(hub_data, _with(args, **change), args.seeds[0])
            results["ablations"][label] = {"mean_r1": ev["mean_r1"], "pairs": ev["pairs"], "change": change}
            logger.info("ablation %s: %.4f", label, ev["mean_r1"])
    summary = summarise(results)
    cmd = "python benchmarks/hub.py" + (
        ""
        if argv is None and len(sys.argv) <= 1
        else " " + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    meta = {
        "command": cmd,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - t0,
        "train_items": data.train.n,
        "heldout_items": data.heldout.n,
        "leakage": data.info["leakage"],
        "cache_hit": bool(data.info.get("cache_hit")),
        "d_hub": args.d_hub,
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "quick": args.quick,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "experts": data.info.get("expert_descriptions", {}),
    }
    out = {
        "meta": meta,
        "summary": summary,
        "results": results,
        "training_free_chosen": {m: tf[m]["chosen"] for m in ("procrustes", "cca", "relrep")},
    }
    md = render_markdown(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1, default=float))
    args.out.with_suffix(".md").write_text(md)
    render_png(out, args.out.with_suffix(".png"))
    logger.info("wrote %s.{json,md,png} in %.0f s", args.out, meta["wall_s"])
    if not all(math.isfinite(v[0]) for v in (summary["table"]["hub"]["mean_r1"],)):
        raise SystemExit("non-finite hub result")
    return out


if __name__ == "__main__":
    main()

"""The Conduit hub across modalities: scene-world images and captions, every contender on the same inputs.

Experts (all frozen, none trained on captions; :mod:`pentachora.recipes.scene_hub`): image — a GeoVAE's
and a PatchSVAE's per-patch latents (trained on training-scene renders) and pixel-patch PCA; text —
MiniLM token states and LSA fitted on the training captions. Test scenes are the world's held-out
split captioned with held-out phrasing templates.

Contenders, for each training-set size:

* on **item means** (one vector per item and expert): (a) whitened Procrustes, (b) regularised CCA —
  shrinkage and rank chosen on the validation scenes — (c) per-pair linear contrastive heads, and
  (d) the hub given only the means (``pooled_only``): what the baselines get;
* on **token sets**: (e) the hub without its fusion layer and geometric terms (attention pooling +
  a contrastive read-out: a contrastive head over attention-pooled tokens), and (f) the full hub.

The hub's and the heads' learning rates are chosen on the validation scenes at the first size. Reported
on the test scenes: caption→image and image→caption R@1 / R@5 for every image–text pair, the train–test
gap, mutual k-NN alignment (k = 10) of the hub space against the raw experts with a permutation null,
an emergent pair (``patchsvae|lsa`` never paired in training) against composed Procrustes through
MiniLM, and hard negatives: can a caption that differs in one attribute (colour, shape or cell of one
object) be told from the true one (2-way, chance 0.5)?

Usage::

    python benchmarks/hub_scenes.py                       # 5k and 50k training scenes, 3 seeds
    python benchmarks/hub_scenes.py --quick               # smoke run

Writes ``benchmarks/results/hub_scenes.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pentachora.data.scenes import SceneWorld
from pentachora.hub.baselines import cca_pair, procrustes_pair
from pentachora.recipes.hub import (
    HubData,
    embed_split,
    evaluate_hub,
    hub_config_for,
    pair_retrieval,
    train_hub,
)
from pentachora.recipes.hub_baselines import train_pair_heads
from pentachora.recipes.reporting import run_meta, verdict, write_results
from pentachora.recipes.scene_hub import (
    ATTRIBUTES,
    IMAGE_EXPERTS,
    TEXT_EXPERTS,
    hard_negative_texts,
    mutual_knn,
    prepare_scene_hub_data,
)
from pentachora.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("hub_scenes")
EMERGENT = ("patchsvae", "lsa", "minilm")  # the pair never trained, and the pivot of composed Procrustes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="Training scenes (ascending).")
    p.add_argument("--val", type=int, default=1000, help="Validation scenes (tuning only).")
    p.add_argument("--test", type=int, default=1000, help="Test scenes (held-out split and phrasings).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the full hub.")
    p.add_argument("--steps", type=int, default=600, help="Optimiser steps of every trained contender.")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="Learning-rate grid (tuned).")
    p.add_argument("--d-hub", type=int, default=128)
    p.add_argument("--ae-steps", type=int, default=600, help="Training steps of each image autoencoder.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: 200 and 300 scenes, 1 seed, 10 steps.")
    p.add_argument("--cache", type=Path, default=None, help="Feature cache (default: $PENTACHORA_CACHE).")
    p.add_argument("--out", type=Path, default=RESULTS / "hub_scenes", help="Output stem.")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.val, args.test, args.seeds, args.steps = [200, 300], 60, 60, [0], 10
        args.lrs, args.ae_steps, args.batch_size = [1e-3], 10, 32
    if sorted(args.sizes) != args.sizes:
        raise SystemExit("--sizes must be ascending")
    return args


def cross_pairs() -> list[tuple[str, str]]:
    return [(i, t) for i in IMAGE_EXPERTS for t in TEXT_EXPERTS]


def train_config(args: argparse.Namespace, seed: int, lr: float) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, warmup_steps=min(30, args.steps // 10),
                       weight_decay=0.05, seed=seed, log_every=max(1, args.steps // 5), progress=False,
                       tensorboard=False, out_dir=None, eval_every=0)  # fmt: skip


HUB_VARIANTS = {
    "full": {},
    "no fusion, no geometric terms": {"fusion_layers": 0, "w_midpoint": 0.0, "w_procrustes": 0.0},
}


def run_hub(train, evalset, args, seed: int, lr: float, variant: str = "full", pooled: bool = False,
            pairs: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    tr = train.pooled_only() if pooled else train
    ev = evalset.pooled_only() if pooled else evalset
    data = HubData(tr, ev, {})
    cfg = hub_config_for(data, d_hub=args.d_hub, n_tokens=4, pairs=pairs, **HUB_VARIANTS[variant])
    run = train_hub(data, cfg, train_config(args, seed, lr), resume=False)
    return run.model, run.evaluation


def pair_scores(evaluation: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {f"{a}|{b}": evaluation["pairs"][f"{a}|{b}"] for a, b in cross_pairs()}


def mean_r1(pairs: dict[str, dict[str, float]]) -> float:
    return statistics.mean(v["r1"] for v in pairs.values())


def training_free(train, val, test, d_hub: int, quick: bool) -> dict[str, Any]:
    """(a) Procrustes and (b) CCA per cross-modal pair, options chosen on validation R@1."""
    shrinks = (0.05, 0.2, 0.5, 0.8) if not quick else (0.2,)
    ks = (16, 32, 64) if not quick else (16,)
    out: dict[str, Any] = {"procrustes": {"pairs": {}, "chosen": {}}, "cca": {"pairs": {}, "chosen": {}}}
    for a, b in cross_pairs():
        A, B = train.pooled(a), train.pooled(b)
        va, vb, ta, tb = val.pooled(a), val.pooled(b), test.pooled(a), test.pooled(b)
        d = min(d_hub, A.shape[1], B.shape[1])

        def proc(s: float, A=A, B=B, d=d):
            return procrustes_pair(A, B, d, s)

        s_best = max(shrinks, key=lambda s: pair_retrieval(proc(s)[0](va), proc(s)[1](vb))["r1"])
        src, ref = proc(s_best)
        out["procrustes"]["pairs"][f"{a}|{b}"] = pair_retrieval(src(ta), ref(tb))
        out["procrustes"]["chosen"][f"{a}|{b}"] = {"shrinkage": s_best}
        grid = [(s, k) for s in shrinks for k in ks if k <= min(A.shape[1], B.shape[1])] or [(shrinks[0], d)]

        def cca_val(sk, A=A, B=B, va=va, vb=vb):
            ea, eb = cca_pair(A, B, sk[1], sk[0])
            return pair_retrieval(ea(va), eb(vb))["r1"]

        s_c, k_c = max(grid, key=cca_val)
        ea, eb = cca_pair(A, B, k_c, s_c)
        out["cca"]["pairs"][f"{a}|{b}"] = pair_retrieval(ea(ta), eb(tb))
        out["cca"]["chosen"][f"{a}|{b}"] = {"shrinkage": s_c, "k": k_c}
        out.setdefault("_maps", {})[f"{a}|{b}"] = (ea, eb)
    return out


def heads(train, evalset, args, seed: int, lr: float) -> dict[str, dict[str, float]]:
    return {f"{a}|{b}": train_pair_heads(train, evalset, a, b, args.d_hub, train_config(args, seed, lr))[2]
            for a, b in cross_pairs()}  # fmt: skip


def halves(n: int) -> tuple[list[int], list[int]]:
    """Two disjoint halves of the training items: ``a`` is seen only on the first, ``c`` only on the second."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(perm[: n // 2]), sorted(perm[n // 2 :])


def composed_procrustes(train, val, test, d_hub: int, quick: bool) -> dict[str, Any]:
    """Emergent baseline: ``a`` rotated onto the pivot ``b`` on one half, ``c`` on the other half, so ``a``
    and ``c`` are never seen on the same item; the shrinkage is chosen on validation scenes."""
    a, c, b = EMERGENT
    h1, h2 = halves(train.n)
    shrinks = (0.05, 0.2, 0.5, 0.8) if not quick else (0.2,)

    def maps(s: float):
        d = min(d_hub, train.dim(a), train.dim(b), train.dim(c))
        src_a, _ = procrustes_pair(train.pooled(a)[h1], train.pooled(b)[h1], d, s)
        src_c, _ = procrustes_pair(train.pooled(c)[h2], train.pooled(b)[h2], d, s)
        return src_a, src_c

    best = max(
        shrinks, key=lambda s: pair_retrieval(maps(s)[0](val.pooled(a)), maps(s)[1](val.pooled(c)))["r1"]
    )
    src_a, src_c = maps(best)
    return {**pair_retrieval(src_a(test.pooled(a)), src_c(test.pooled(c))), "shrinkage": best}


def emergent_hub(train, test, args, lr: float) -> dict[str, float]:
    """The hub with ``a`` only on one half of the items and ``c`` only on the other (alternating batches,
    aligners fitted per half onto the pivot as reference): ``a|c`` is never seen together."""
    from pentachora.data.paired import PairedBatchSource
    from pentachora.recipes.hub import AlternatingPairSource

    a, c, b = EMERGENT
    h1, h2 = halves(train.n)
    names = train.experts
    pairs = tuple(f"{x}|{y}" for i, x in enumerate(names) for y in names[i + 1 :] if {x, y} != {a, c})
    data = HubData(train, test, {})
    cfg = hub_config_for(data, d_hub=args.d_hub, n_tokens=4, pairs=pairs, reference=b)
    source = AlternatingPairSource([
        PairedBatchSource(train.subset(h1), args.batch_size, 0, experts=[n for n in names if n != c]),
        PairedBatchSource(train.subset(h2), args.batch_size, 1, experts=[n for n in names if n != a]),
    ])  # fmt: skip
    fit_items = {a: torch.tensor(h1), c: torch.tensor(h2)}
    run = train_hub(data, cfg, train_config(args, 0, lr), fit_items=fit_items, source=source, resume=False)
    return run.evaluation["pairs"][f"{a}|{c}"]


@torch.no_grad()
def hard_negatives(model, data, probes: dict[str, Any], cca_maps: dict[str, Any]) -> dict[str, Any]:
    """2-way accuracy, per attribute and direction, for the hub and CCA (mean over cross-modal pairs)."""
    out: dict[str, Any] = {}
    for attr, (rows, pos, neg) in probes.items():
        res: dict[str, Any] = {}
        for label in ("hub", "cca"):
            i2t, t2i = [], []
            for a, b in cross_pairs():
                if label == "hub":
                    img_pos, img_neg = embed_split(model, pos, a), embed_split(model, neg, a)
                    txt_pos, txt_neg = embed_split(model, pos, b), embed_split(model, neg, b)
                else:
                    ea, eb = cca_maps[f"{a}|{b}"]
                    n = torch.nn.functional.normalize
                    img_pos, img_neg = n(ea(pos.pooled(a)), dim=-1), n(ea(neg.pooled(a)), dim=-1)
                    txt_pos, txt_neg = n(eb(pos.pooled(b)), dim=-1), n(eb(neg.pooled(b)), dim=-1)
                cos = lambda x, y: (x * y).sum(-1)  # noqa: E731
                i2t.append(float((cos(img_pos, txt_pos) > cos(img_pos, txt_neg)).float().mean()))
                t2i.append(float((cos(txt_pos, img_pos) > cos(txt_pos, img_neg)).float().mean()))
            res[label] = {"image_to_caption": statistics.mean(i2t), "caption_to_image": statistics.mean(t2i)}
        res["n"] = len(rows)
        out[attr] = res
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    meta = run_meta("benchmarks/hub_scenes.py", argv)
    world = SceneWorld()
    data = prepare_scene_hub_data(world, max(args.sizes), args.val, args.test, ae_steps=args.ae_steps,
                                  cache=args.cache)  # fmt: skip
    logger.info("features ready: %s (cache hit %s)", data.info["dims"], data.info["cache_hit"])
    # hard-negative probes of the test scenes: the true caption and one with one attribute changed
    probes = {}
    for attr in ATTRIBUTES:
        rows, negs, pos_caps, neg_caps = hard_negative_texts(world, data.scenes["test"], attr)
        pos = data.encode([data.scenes["test"][i] for i in rows], pos_caps, f"probe-{attr}")
        neg = data.encode(negs, neg_caps, f"probe-{attr}-neg")
        probes[attr] = (rows, pos, neg)

    chosen: dict[str, float] = {}
    results: dict[str, Any] = {}
    for size in args.sizes:
        logger.info("=== %d training scenes", size)
        train = data.train.subset(range(size))
        if not chosen:  # learning rates on validation scenes, at the first size, one seed
            tuning = {}
            for lr in args.lrs:
                _, ev = run_hub(train, data.val, args, 0, lr)
                tuning[f"hub {lr:g}"] = mean_r1(pair_scores(ev))
                tuning[f"heads {lr:g}"] = mean_r1(heads(train, data.val, args, 0, lr))
            chosen = {"hub": max(args.lrs, key=lambda lr: tuning[f"hub {lr:g}"]),
                      "heads": max(args.lrs, key=lambda lr: tuning[f"heads {lr:g}"])}  # fmt: skip
            results["lr_tuning"] = {"validation_mean_r1": tuning, "chosen": chosen}
            logger.info("chosen on validation: %s (%s)", chosen, tuning)
        row: dict[str, Any] = {}
        tf = training_free(train, data.val, data.test, args.d_hub, args.quick)
        cca_maps = tf.pop("_maps")
        row["(a) whitened Procrustes, means"] = {
            "pairs": tf["procrustes"]["pairs"],
            "chosen": tf["procrustes"]["chosen"],
        }
        row["(b) regularised CCA, means"] = {"pairs": tf["cca"]["pairs"], "chosen": tf["cca"]["chosen"]}
        t = time.perf_counter()
        row["(c) linear contrastive heads, means"] = {"pairs": heads(train, data.test, args, 0, chosen["heads"]),
                                                      "train_s": time.perf_counter() - t}  # fmt: skip
        t = time.perf_counter()
        _, ev = run_hub(train, data.test, args, 0, chosen["hub"], pooled=True)
        row["(d) hub, means only"] = {"pairs": pair_scores(ev), "train_s": time.perf_counter() - t}
        t = time.perf_counter()
        _, ev = run_hub(train, data.test, args, 0, chosen["hub"], variant="no fusion, no geometric terms")
        row["(e) hub, tokens, no fusion / geometric terms"] = {
            "pairs": pair_scores(ev),
            "train_s": time.perf_counter() - t,
        }
        seeds = []
        for seed in args.seeds:
            t = time.perf_counter()
            model, ev = run_hub(train, data.test, args, seed, chosen["hub"])
            train_ev = evaluate_hub(model, train.subset(range(min(args.test, size))))
            seeds.append({"seed": seed, "pairs": pair_scores(ev), "train_pairs": pair_scores(train_ev),
                          "train_s": time.perf_counter() - t})  # fmt: skip
            if seed == args.seeds[0]:
                full_model = model
        row["(f) hub, tokens (full)"] = {"seeds": seeds, "pairs": _mean_pairs([s["pairs"] for s in seeds]),
                                          "train_pairs": _mean_pairs([s["train_pairs"] for s in seeds]),
                                          "sd_mean_r1": statistics.pstdev([mean_r1(s["pairs"]) for s in seeds])}  # fmt: skip
        # mutual k-NN: hub space vs raw expert means, per cross-modal pair (test scenes)
        mknn = {}
        for a, b in cross_pairs():
            hub_a, hub_b = embed_split(full_model, data.test, a), embed_split(full_model, data.test, b)
            mknn[f"{a}|{b}"] = {
                "hub": mutual_knn(hub_a, hub_b),
                "raw": mutual_knn(data.test.pooled(a), data.test.pooled(b)),
            }
        # emergent pair: never seen together, against composed Procrustes through the pivot
        emergent = {"hub": emergent_hub(train, data.test, args, chosen["hub"]),
                    "composed_procrustes": composed_procrustes(train, data.val, data.test, args.d_hub, args.quick)}  # fmt: skip
        results[str(size)] = {"contenders": row, "mutual_knn": mknn, "emergent": emergent,
                              "hard_negatives": hard_negatives(full_model, data, probes, cca_maps)}  # fmt: skip
        logger.info("%d scenes: %s", size, {k: round(mean_r1(v["pairs"]), 3) for k, v in row.items()})

    verdicts = _verdicts(results, args)
    out = {"meta": meta, "settings": vars(args) | {"out": str(args.out), "cache": str(args.cache)},
           "data": {k: v for k, v in data.info.items() if k != "cache"}, "results": results,
           "seconds": time.perf_counter() - t0}  # fmt: skip
    write_results(args.out, out, _markdown(out, args), verdicts)
    return out


def _mean_pairs(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {k: {m: statistics.mean(r[k][m] for r in runs) for m in runs[0][k]} for k in runs[0]}


def _verdicts(results: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    out = []
    for size in args.sizes:
        r = results[str(size)]
        c = r["contenders"]
        hub = mean_r1(c["(f) hub, tokens (full)"]["pairs"])
        sd = c["(f) hub, tokens (full)"]["sd_mean_r1"]
        best_name = max((k for k in c if not k.startswith("(f)")), key=lambda k: mean_r1(c[k]["pairs"]))
        margin = hub - mean_r1(c[best_name]["pairs"])
        out.append(verdict(f"{size} scenes: hub's mean cross-modal R@1 minus the best other contender "
                           f"({best_name}) exceeds the seed spread ({sd:.3f})", margin, ">", sd))  # fmt: skip
        e = r["emergent"]
        out.append(verdict(f"{size} scenes: emergent {'|'.join(EMERGENT[:2])} hub R@1 above composed Procrustes "
                           f"({e['composed_procrustes']['r1']:.3f})", e["hub"]["r1"], ">", e["composed_procrustes"]["r1"]))  # fmt: skip
    last = results[str(args.sizes[-1])]["contenders"]["(f) hub, tokens (full)"]
    gap = mean_r1(last["train_pairs"]) - mean_r1(last["pairs"])
    out.append(verdict(f"train − test mean R@1 gap at {args.sizes[-1]} scenes under 0.10", gap, "<", 0.10))
    return out


def _markdown(d: dict[str, Any], args: argparse.Namespace) -> str:
    pairs = [f"{a}|{b}" for a, b in cross_pairs()]
    lines = [
        "# The Conduit hub across modalities: scene-world images ↔ captions",
        "",
        f"Test: {args.test} held-out scenes captioned with held-out phrasings (chance R@1 {1 / args.test:.4f}); "
        f"validation: {args.val} scenes (every tuned option). Experts: {d['data']['dims']}. "
        f"Leakage check: {d['data']['leakage']}. Trained contenders: {args.steps} steps × batch {args.batch_size}; "
        f"learning rates chosen on validation: {d['results']['lr_tuning']['chosen']}. Full hub: seeds {args.seeds} "
        f"(mean). Wall time {d['seconds'] / 60:.0f} min.",
    ]
    for size in args.sizes:
        r = d["results"][str(size)]
        lines += ["", f"## {size} training scenes: R@1 (mean of caption→image and image→caption)", "",
                  "| contender | " + " | ".join(pairs) + " | mean |", "|---|" + "---:|" * (len(pairs) + 1)]  # fmt: skip
        for name, c in r["contenders"].items():
            cells = " | ".join(f"{c['pairs'][p]['r1']:.3f}" for p in pairs)
            extra = f" ± {c['sd_mean_r1']:.3f}" if "sd_mean_r1" in c else ""
            lines.append(f"| {name} | {cells} | **{mean_r1(c['pairs']):.3f}**{extra} |")
        full = r["contenders"]["(f) hub, tokens (full)"]
        lines.append("| (f) on training scenes (memorisation) | " + " | ".join(
            f"{full['train_pairs'][p]['r1']:.3f}" for p in pairs) + f" | {mean_r1(full['train_pairs']):.3f} |")  # fmt: skip
        lines += ["", "R@5 (mean of both directions):", "", "| contender | " + " | ".join(pairs) + " |",
                  "|---|" + "---:|" * len(pairs)]  # fmt: skip
        for name, c in r["contenders"].items():
            lines.append(f"| {name} | " + " | ".join(f"{c['pairs'][p]['r5']:.3f}" for p in pairs) + " |")
        e = r["emergent"]
        lines += ["", f"Emergent {EMERGENT[0]}|{EMERGENT[1]} (never paired in training): hub R@1 {e['hub']['r1']:.3f}, "
                  f"composed Procrustes through {EMERGENT[2]} {e['composed_procrustes']['r1']:.3f} "
                  f"(shrinkage {e['composed_procrustes']['shrinkage']} chosen on validation).", "",
                  "Mutual 10-NN alignment on the test scenes (overlap of each item's 10 nearest neighbours under the two "
                  "experts), in the hub space and between the raw expert means, with the largest of 20 row-permutation nulls:",
                  "", "| pair | hub | raw | null max |", "|---|---:|---:|---:|"]  # fmt: skip
        for p, m in r["mutual_knn"].items():
            lines.append(
                f"| {p} | {m['hub']['mknn']:.3f} | {m['raw']['mknn']:.3f} | {max(m['hub']['null_max'], m['raw']['null_max']):.3f} |"
            )
        lines += ["", "Hard negatives (2-way accuracy, chance 0.5; mean over the image–text pairs):", "",
                  "| attribute changed | probes | hub image→caption | hub caption→image | CCA image→caption | CCA caption→image |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for attr, h in r["hard_negatives"].items():
            lines.append(f"| {attr} | {h['n']} | {h['hub']['image_to_caption']:.3f} | {h['hub']['caption_to_image']:.3f} | "
                         f"{h['cca']['image_to_caption']:.3f} | {h['cca']['caption_to_image']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])

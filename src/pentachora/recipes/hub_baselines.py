"""The hub's training-free baselines, their options chosen on a validation split of the training articles.

(a) whitened Procrustes, (b) regularised CCA and (c) relative representations (ASIF anchors) for every
pair of experts: each option (shrinkage, CCA rank, anchors / top-k) is chosen by validation R@1 on 15 % of
the *training* articles (:func:`validation_split`), then refitted on all training rows and evaluated on the
held-out ones. Shared by ``benchmarks/hub.py`` and ``benchmarks/hub_tuning.py`` (neither imports the other).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "TEXT_EXPERTS",
    "expert_pairs",
    "shrinkage_grid",
    "title_split",
    "train_pair_heads",
    "training_free_baselines",
    "validation_split",
]


TEXT_EXPERTS: tuple[str, ...] = ("minilm", "lsa", "w2v")
"""The text-only hub benchmark's experts (``benchmarks/hub.py``, ``benchmarks/hub_tuning.py``)."""


def expert_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of expert names, in order."""
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def title_split(titles: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(fit, validation)`` row indices: a seeded ``fraction`` of the distinct titles (whole articles)
    goes to validation, so no article is on both sides."""
    uniq = sorted(set(titles), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    held = set(uniq[: max(1, round(fraction * len(uniq)))])
    fit = [i for i, t in enumerate(titles) if t not in held]
    val = [i for i, t in enumerate(titles) if t in held]
    return fit, val


def _rel(xa, xb, pa, pb, n_anchor: int, top_k: int):
    from pentachora.hub.baselines import relative_representation

    idx = torch.randperm(pa.shape[0], generator=torch.Generator().manual_seed(0))[:n_anchor]
    return (
        relative_representation(xa, pa[idx], pa.mean(0), top_k),
        relative_representation(xb, pb[idx], pb.mean(0), top_k),
    )


def _one_pair_training_free(A, B, HA, HB, fit_idx, val_idx, d_hub: int, grids: dict) -> dict[str, Any]:
    """(a), (b), (c) for one pair: options chosen on validation rows, refitted on all training rows."""
    from pentachora.hub.baselines import cca_pair, procrustes_pair
    from pentachora.recipes.hub import pair_retrieval

    Af, Bf, Av, Bv = A[fit_idx], B[fit_idx], A[val_idx], B[val_idx]

    def val_r1(za, zb):
        return pair_retrieval(za, zb)["r1"]

    def proc_score(s):
        src, ref = procrustes_pair(Af, Bf, d_hub, s)
        return val_r1(src(Av), ref(Bv))

    def cca_score(sk):
        ea, eb = cca_pair(Af, Bf, sk[1], sk[0])
        return val_r1(ea(Av), eb(Bv))

    def rel_score(nt):
        return val_r1(*_rel(Av, Bv, Af, Bf, nt[0], nt[1]))

    out: dict[str, Any] = {}
    s_best = max(grids["shrinks"], key=proc_score)
    src, ref = procrustes_pair(A, B, d_hub, s_best)
    out["procrustes"] = (pair_retrieval(src(HA), ref(HB)), {"shrinkage": s_best})
    grid = [(s, k) for s in grids["shrinks"] for k in grids["ks"] if k <= min(A.shape[1], B.shape[1])]
    s_cca, k_cca = max(grid, key=cca_score)
    ea, eb = cca_pair(A, B, k_cca, s_cca)
    out["cca"] = (pair_retrieval(ea(HA), eb(HB)), {"shrinkage": s_cca, "k": k_cca})
    grid_c = [(n, t) for n in grids["anchors"] for t in grids["topks"] if t < n]
    n_rel, t_rel = max(grid_c, key=rel_score)
    out["relrep"] = (
        pair_retrieval(*_rel(HA, HB, A, B, n_rel, t_rel)),
        {"anchors": min(n_rel, A.shape[0]), "top_k": t_rel},
    )
    return out


def validation_split(train) -> tuple[list[int], list[int]]:
    """``(fit, validation)`` rows of the training items: 15 % of the training *articles* (by title) for
    validation; on tiny (quick) data a random tenth of the items instead."""
    fit_idx, val_idx = title_split(train.titles, 0.15, seed=0)
    if len(val_idx) < 10:
        perm = torch.randperm(train.n, generator=torch.Generator().manual_seed(0)).tolist()
        val_idx, fit_idx = perm[: max(5, train.n // 10)], perm[max(5, train.n // 10) :]
    return fit_idx, val_idx


def shrinkage_grid(quick: bool) -> tuple[float, ...]:
    return (0.05, 0.2, 0.5, 0.8) if not quick else (0.2, 0.5)


def training_free_baselines(train, heldout, d_hub: int, quick: bool) -> dict[str, Any]:
    """(a), (b), (c): choose options on a validation split of training articles, refit, evaluate."""
    fit_idx, val_idx = validation_split(train)
    grids = {
        "shrinks": shrinkage_grid(quick),
        "ks": (64, 128) if not quick else (16,),
        "anchors": (4096,) if not quick else (64,),
        "topks": (0, 128) if not quick else (0,),
    }
    out: dict[str, Any] = {m: {"pairs": {}, "chosen": {}} for m in ("procrustes", "cca", "relrep")}
    for a, b in expert_pairs(train.experts):
        res = _one_pair_training_free(
            train.pooled(a),
            train.pooled(b),
            heldout.pooled(a),
            heldout.pooled(b),
            fit_idx,
            val_idx,
            d_hub,
            grids,
        )
        for m, (metrics, chosen) in res.items():
            out[m]["pairs"][f"{a}|{b}"] = metrics
            out[m]["chosen"][f"{a}|{b}"] = chosen
    for m in ("procrustes", "cca", "relrep"):
        out[m]["mean_r1"] = statistics.mean(p["r1"] for p in out[m]["pairs"].values())
        out[m]["parameters"] = 0
    return out


def train_pair_heads(
    train, heldout, a: str, b: str, d_hub: int, train_config: Any
) -> tuple[Any, Any, dict[str, float]]:
    """(d) per-pair linear contrastive heads for experts ``a`` and ``b``, trained with the one Trainer on
    item means (``train_config``: steps, batch, lr, seed …), then scored on ``heldout``.

    Returns:
        ``(heads, TrainResult, pair_retrieval metrics on heldout)``.
    """
    from pentachora.data.paired import PairedBatchSource
    from pentachora.hub.baselines import LinearPairHeads, PairHeadsConfig
    from pentachora.recipes.hub import pair_retrieval
    from pentachora.training import Trainer

    torch.manual_seed(train_config.seed)
    model = LinearPairHeads(PairHeadsConfig(train.dim(a), train.dim(b), d_hub, a_name=a, b_name=b))
    model.standardise_from(train.pooled(a), train.pooled(b))
    src = PairedBatchSource(train.pooled_only(), train_config.batch_size, train_config.seed, experts=[a, b])
    res = Trainer(model, train_config, src).fit(resume=False)
    model.eval()
    with torch.no_grad():
        za, zb = model.embed_a(heldout.pooled(a)), model.embed_b(heldout.pooled(b))
    return model, res, pair_retrieval(za, zb)

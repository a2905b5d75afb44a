"""Conduit hub recipes: corpus → paired expert features (cached) → aligners → Trainer → held-out retrieval.

The CLI (``pentachora train hub``, ``pentachora eval-hub``, ``pentachora align``) and
``benchmarks/hub.py`` go through these functions.

Run folder written by :func:`train_hub`::

    OUT/train_config.json model_config.json     resolved configuration (by the Trainer)
    OUT/data.json                               experts, corpus, split sizes, leakage check, cache
    OUT/aligners.json                           each aligner's mode and held-out lift over the floor
    OUT/metrics.jsonl  OUT/checkpoints/         training records, resumable checkpoints
    OUT/final/         config.json + model.safetensors (aligner buffers included)
    OUT/eval.json                               held-out R@1/R@5 both directions per pair, floors, CV

Expert specs (:func:`parse_expert_spec`): ``minilm`` (the embedded all-MiniLM-L6-v2), ``lsa[:DIM]``,
``w2v[:DIM]``, ``tiny-bert`` (a tiny random BERT built in code, for tests), ``hf:NAME`` (any Hugging
Face text encoder available offline: the error says how to get one that is not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pentachora.data.paired import PairedBatchSource, PairedFeatures, extract_paired_features, leakage_check
from pentachora.errors import CheckpointError, ConfigError, DataError
from pentachora.geometry import cv_metric, target_cv
from pentachora.hub import ConduitHub, ConduitHubConfig, ProcrustesAligner, retrieval_metrics
from pentachora.hub.aligner import alignment_report, shuffled_floor
from pentachora.hub.text_experts import LSAExpert, MiniLMExpert, TextExpert, Word2VecExpert
from pentachora.io import atomic_write_json
from pentachora.recipes.loading import FINAL_DIR, load_latest
from pentachora.training import Callback, TrainConfig, Trainer, TrainResult

__all__ = [
    "DEFAULT_EXPERTS",
    "AlternatingPairSource",
    "HubData",
    "HubRun",
    "aligner_reports",
    "build_text_experts",
    "embed_split",
    "evaluate_hub",
    "fit_aligner_files",
    "hub_config_for",
    "load_hub",
    "parse_expert_spec",
    "prepare_hub_data",
    "run_heldout_features",
    "train_hub",
]

logger = logging.getLogger(__name__)

DEFAULT_EXPERTS = ("minilm", "lsa", "w2v")
CACHE_VERSION = "hub-features-v1"


# ----------------------------------------------------------------------------- experts
def parse_expert_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"lsa:64"`` → ``("lsa", "lsa", {"dim": 64})``; returns (name, kind, options).

    Raises:
        ConfigError: An unknown kind or a bad width.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind in ("lsa", "w2v"):
        if rest and not rest.isdigit():
            raise ConfigError(f"expert {spec!r}: the width after ':' must be a positive integer")
        return kind, kind, ({"dim": int(rest)} if rest else {})
    if kind == "minilm" and not rest:
        return "minilm", "minilm", {}
    if kind == "tiny-bert" and not rest:
        return "tiny-bert", "text-model", {"model": "tiny-bert"}
    if kind == "hf" and rest:
        return rest.replace("/", "_"), "text-model", {"model": rest}
    raise ConfigError(
        f"unknown expert {spec!r}; use minilm, lsa[:DIM], w2v[:DIM], tiny-bert or hf:NAME (a text encoder)"
    )


def build_text_experts(specs: Sequence[str], seed: int = 0, max_length: int = 160) -> dict[str, TextExpert]:
    """Instantiate (unfitted) text experts from spec strings."""
    out: dict[str, TextExpert] = {}
    for spec in specs:
        name, kind, opts = parse_expert_spec(spec)
        if name in out:
            raise ConfigError(f"expert {name!r} is named twice")
        if kind == "lsa":
            out[name] = LSAExpert(seed=seed, **opts)
        elif kind == "w2v":
            out[name] = Word2VecExpert(seed=seed, max_tokens=max_length, **opts)
        else:
            model = opts.get("model", "minilm")
            try:
                expert = MiniLMExpert(max_length=max_length, model=model)
            except OSError as err:
                raise ConfigError(
                    f"expert {model!r} is not available offline. Get it once with `huggingface-cli download "
                    f"{model}` on a machine with network access (or pass a local folder as hf:PATH)"
                ) from err
            expert.name = name
            out[name] = expert
    if len(out) < 2:
        raise ConfigError(f"a hub needs at least 2 experts, got {list(out)}")
    return out


# ----------------------------------------------------------------------------- data
@dataclass
class HubData:
    """Paired features of the training and held-out splits, with their provenance."""

    train: PairedFeatures
    heldout: PairedFeatures
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def experts(self) -> list[str]:
        return self.train.experts

    @property
    def dims(self) -> dict[str, int]:
        return self.train.dims


def _default_cache_root() -> Path:
    return Path(os.environ.get("PENTACHORA_CACHE", Path.home() / ".cache" / "pentachora")) / "hub-features"


def prepare_hub_data(
    experts: Sequence[str] = DEFAULT_EXPERTS,
    corpus: str = "wiki",
    cache_dir: str | os.PathLike | None = None,
    min_tokens: int = 32,
    max_tokens: int = 128,
    seed: int = 0,
    max_train_items: int = 0,
    max_heldout_items: int = 0,
    use_cache: bool = True,
    chunks: int = 0,
) -> HubData:
    """Corpus → items → every expert's token features for both splits (cached as safetensors).

    With ``chunks``, items of more tokens become that many chunk means (a CPU budget; the cache
    holds the full features).

    Items are the corpus documents; the embedded ``wiki`` corpus is cut into passages of
    ``min_tokens``–``max_tokens`` MiniLM tokens and holds whole articles out. LSA and Word2Vec are
    fitted on the **training split only**. The cache key covers the corpus text, the expert specs and
    the seed, so a change anywhere re-extracts.

    Raises:
        ConfigError: A bad expert spec, an expert not available offline, or ``chunks`` < 0.
        DataError: A corpus without a held-out split.
    """
    from pentachora.data.text import parse_text_spec, wikipedia_corpus

    if chunks < 0:
        raise ConfigError(f"chunks must be >= 0 (0 = every token), got {chunks}")
    if corpus == "wiki":
        text = wikipedia_corpus(min_tokens=min_tokens, max_tokens=max_tokens)
    else:
        text = parse_text_spec(corpus)
    train_docs, held_docs = list(text.train), list(text.heldout)
    train_titles, held_titles = list(text.train_titles), list(text.heldout_titles)
    if max_train_items:
        train_docs, train_titles = train_docs[:max_train_items], train_titles[:max_train_items]
    if max_heldout_items:
        held_docs, held_titles = held_docs[:max_heldout_items], held_titles[:max_heldout_items]
    if len(train_docs) < 8 or len(held_docs) < 2:
        raise DataError(
            f"the corpus gives {len(train_docs)} training and {len(held_docs)} held-out items; need ≥ 8 and ≥ 2"
        )
    for spec in experts:  # validate before any work
        parse_expert_spec(spec)
    key_src = json.dumps(
        {
            "v": CACHE_VERSION,
            "corpus": corpus,
            "fingerprint": hashlib.sha256(
                "\x1e".join([*train_docs, "\x1d", *held_docs]).encode()
            ).hexdigest(),
            "experts": list(experts),
            "seed": seed,
            "max_length": max_tokens + 32,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_root()
    folder = folder / f"{CACHE_VERSION}-{key}"
    info: dict[str, Any] = {
        "corpus": corpus,
        "licence": text.licence,
        "description": text.description,
        "experts": list(experts),
        "cache": str(folder),
        "seed": seed,
    }
    if use_cache and (folder / "train.safetensors").is_file() and (folder / "heldout.safetensors").is_file():
        train = PairedFeatures.load(folder / "train.safetensors")
        heldout = PairedFeatures.load(folder / "heldout.safetensors")
        info.update(train.meta.get("info", {}))
        info["cache_hit"] = True
    else:
        built = build_text_experts(experts, seed=seed, max_length=max_tokens + 32)
        for e in built.values():
            e.fit(train_docs)  # LSA / word2vec see the training split only
        fns = {n: e.token_features for n, e in built.items()}
        desc = {n: e.describe() for n, e in built.items()}
        meta = {"info": {"expert_descriptions": desc}}
        train = extract_paired_features(train_docs, fns, train_titles, meta)
        heldout = extract_paired_features(held_docs, fns, held_titles, meta)
        if use_cache:
            folder.mkdir(parents=True, exist_ok=True)
            train.save(folder / "train.safetensors")
            heldout.save(folder / "heldout.safetensors")
        info["expert_descriptions"] = desc
        info["cache_hit"] = False
    leak = leakage_check(train, heldout)
    if leak["shared_items"] or (leak["shared_titles"] and corpus == "wiki"):
        raise DataError(f"the held-out split leaks into the training split: {leak}")
    info.update({"train_items": train.n, "heldout_items": heldout.n, "leakage": leak, "dims": train.dims})
    if chunks:
        train, heldout = train.compressed(chunks), heldout.compressed(chunks)
        info["chunks"] = chunks
    return HubData(train=train, heldout=heldout, info=info)


def run_heldout_features(
    run: str | os.PathLike, model: ConduitHub, cache_dir: str | os.PathLike | None = None
) -> PairedFeatures:
    """The held-out features a saved hub is evaluated on, rebuilt as its training made them (the
    experts, corpus, seed and chunking of its ``data.json``; the feature cache makes this cheap).

    Raises:
        DataError: the run does not say which experts made its features, or the features' widths
            do not match the hub's experts.
    """
    from pentachora.io import read_json

    info_path = Path(run) / "data.json"
    info = read_json(info_path) if info_path.is_file() else {}
    specs = list(model.config.expert_sources) or list(info.get("experts", []))
    if not specs:
        raise DataError(f"{run} does not say which experts made its features (no data.json)")
    hdata = prepare_hub_data(
        specs, corpus=info.get("corpus", "wiki"), cache_dir=cache_dir, seed=int(info.get("seed", 0))
    )
    heldout = hdata.heldout.compressed(int(info["chunks"])) if info.get("chunks") else hdata.heldout
    expected = dict(zip(model.config.experts, model.config.expert_dims, strict=True))
    if heldout.dims != expected:
        raise DataError(f"the features {heldout.dims} do not match the hub's experts {expected}")
    return heldout


class AlternatingPairSource:
    """Batches that hold only the experts of one pair group at a time (for emergent alignment).

    Step ``s`` uses group ``s mod len(groups)``: a :class:`PairedBatchSource` over that group's items
    and experts. With groups ``[(half₁, [A, B]), (half₂, [B, C])]`` the hub never sees an A–C pair.
    """

    def __init__(self, groups: Sequence[PairedBatchSource]) -> None:
        if not groups:
            raise ConfigError("need at least one group")
        self.groups = list(groups)

    def batch(self, step: int) -> dict:
        src = self.groups[step % len(self.groups)]
        return src.batch(step)


# ----------------------------------------------------------------------------- model
def hub_config_for(data: HubData, d_hub: int = 256, **overrides: Any) -> ConduitHubConfig:
    """A :class:`ConduitHubConfig` for the experts of ``data`` (widths read off the features)."""
    dims = data.dims
    return ConduitHubConfig(experts=tuple(dims), expert_dims=tuple(dims.values()), d_hub=d_hub, **overrides)


@torch.no_grad()
def embed_split(
    model: ConduitHub, feats: PairedFeatures, name: str, batch_size: int = 256, max_tokens: int = 0
) -> torch.Tensor:
    """Hub embeddings ``(N, d_hub)`` of one expert over a whole split (each expert alone)."""
    was = model.training
    model.eval()
    out = []
    for start in range(0, feats.n, batch_size):
        idx = list(range(start, min(start + batch_size, feats.n)))
        f, m = feats.padded(name, idx, max_tokens)
        out.append(model.embed(name, f, m))
    model.train(was)
    return torch.cat(out)


def pair_retrieval(za: torch.Tensor, zb: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """R@1/R@5 both directions of paired embeddings, with the shuffled-pair R@1 floor."""
    ab, ba = retrieval_metrics(za, zb), retrieval_metrics(zb, za)
    _, floor, _ = shuffled_floor(za, zb, seed)
    return {
        "r1_ab": ab["r1"],
        "r5_ab": ab["r5"],
        "r1_ba": ba["r1"],
        "r5_ba": ba["r5"],
        "r1": 0.5 * (ab["r1"] + ba["r1"]),
        "r5": 0.5 * (ab["r5"] + ba["r5"]),
        "r1_shuffled": floor,
        "chance_r1": 1.0 / za.shape[0],
    }


def evaluate_hub(
    model: ConduitHub, heldout: PairedFeatures, pairs: Sequence[tuple[str, str]] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Held-out retrieval for every expert pair (default: all pairs, trained or not) and the geometry.

    Returns:
        ``{"pairs": {"A|B": {...}}, "mean_r1": ..., "cv_hub": ..., "cv_midpoints": ..., "cv_target": ...}``.
    """
    names = list(model.config.experts)
    emb = {n: embed_split(model, heldout, n) for n in names}
    pair_list = (
        list(pairs) if pairs is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    )
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {"pairs": {}}
    mids = []
    for a, b in pair_list:
        out["pairs"][f"{a}|{b}"] = pair_retrieval(emb[a], emb[b], seed)
        m = torch.nn.functional.normalize(emb[a] + emb[b], dim=-1)
        mids.append(cv_metric(m, n_samples=500, generator=g))
    out["mean_r1"] = sum(p["r1"] for p in out["pairs"].values()) / max(len(out["pairs"]), 1)
    out["cv_hub"] = sum(cv_metric(emb[n], n_samples=500, generator=g) for n in names) / len(names)
    out["cv_midpoints"] = sum(mids) / max(len(mids), 1)
    out["cv_target"] = float(target_cv(model.config.d_hub))
    out["trained_pairs"] = ["|".join(p) for p in model.config.pair_list]
    return out


def aligner_reports(model: ConduitHub, heldout: PairedFeatures) -> dict[str, Any]:
    """Each expert's frozen aligner on held-out items: lift over the shuffled floor vs the reference."""
    ref = model.config.reference_expert
    target = model.experts[ref].aligner(heldout.pooled(ref))
    out: dict[str, Any] = {"reference": ref}
    for name in model.config.experts:
        al = model.experts[name].aligner
        entry: dict[str, Any] = {"mode": al.mode, "d_in": al.config.d_in}
        if name != ref:
            entry.update(al.report(heldout.pooled(name), target).as_dict())
        out[name] = entry
    return out


@dataclass
class HubRun:
    """A trained hub and what was measured."""

    model: ConduitHub
    result: TrainResult
    evaluation: dict[str, Any]
    aligners: dict[str, Any]
    out_dir: Path | None


def train_hub(
    data: HubData,
    config: ConduitHubConfig,
    train_config: TrainConfig,
    fit_items: Mapping[str, torch.Tensor] | None = None,
    source: Any = None,
    max_tokens: int = 0,
    eval_items: int = 256,
    resume: bool | str = True,
    fresh: bool = False,
    make_callbacks: Callable[[ConduitHub], Sequence[Callback]] | None = None,
) -> HubRun:
    """Fit the aligners, train the hub with the one Trainer, evaluate on the held-out split.

    Args:
        data: Paired features.
        config: Hub config (experts must match ``data``).
        train_config: How to train (``batch_size`` sets the batch of the default source).
        fit_items: Optional per-expert item subsets for the aligners (emergent runs).
        source: Optional batch source (default: :class:`PairedBatchSource` over all training items).
        max_tokens: Token cap per item in batches (0 = none).
        eval_items: Held-out items in the periodic evaluations (the final one uses all).
        resume, fresh: Passed to :meth:`Trainer.fit` (``resume="force"`` resumes a run whose seed or config
            differs).
        make_callbacks: Builds extra trainer callbacks from the model (e.g. the ``--audit`` auditor).
    """
    if list(config.experts) != data.experts or tuple(config.expert_dims) != tuple(data.dims.values()):
        raise ConfigError(
            f"hub experts {dict(zip(config.experts, config.expert_dims, strict=True))} do not match the "
            f"features {data.dims}"
        )
    torch.manual_seed(train_config.seed)
    model = ConduitHub(config)
    modes = model.fit_aligners({n: data.train.pooled(n) for n in data.experts}, fit_items)
    logger.info("aligners: %s", modes)
    if source is None:
        source = PairedBatchSource(
            data.train, train_config.batch_size, train_config.seed, max_tokens=max_tokens
        )
    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "data.json", {**data.info, "aligner_modes": modes})
    small = data.heldout.subset(range(min(eval_items, data.heldout.n)))

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        ev = evaluate_hub(m, small)  # type: ignore[arg-type]
        flat = {f"r1[{k}]": v["r1"] for k, v in ev["pairs"].items()}
        return {"mean_r1": ev["mean_r1"], "cv_hub": ev["cv_hub"], **flat}

    callbacks = list(make_callbacks(model)) if make_callbacks is not None else []
    trainer = Trainer(model, train_config, source, eval_fn=eval_fn, callbacks=callbacks)
    result = trainer.fit(resume=resume, fresh=fresh)
    trained: ConduitHub = trainer.unwrapped_model.to("cpu")  # type: ignore[assignment]
    evaluation = evaluate_hub(trained, data.heldout)
    evaluation.update(
        {
            "train_wall_s": result.wall_time_s,
            "train_steps": result.steps,
            "nonfinite_steps": result.nonfinite_steps,
            "parameters": trained.num_parameters(),
            "trainable_parameters": trained.num_parameters(trainable_only=True),
        }
    )
    reports = aligner_reports(trained, data.heldout)
    if out_dir is not None:
        trained.save_pretrained(out_dir / FINAL_DIR)
        atomic_write_json(out_dir / "eval.json", evaluation)
        atomic_write_json(out_dir / "aligners.json", reports)
    return HubRun(trained, result, evaluation, reports, out_dir)


def load_hub(path: str | os.PathLike, map_location: str = "cpu") -> ConduitHub:
    """A :class:`ConduitHub` from a checkpoint or run folder (``final/`` or the latest checkpoint)."""
    return load_latest(path, lambda folder: ConduitHub.from_pretrained(folder, map_location=map_location))


# ----------------------------------------------------------------------------- `pentachora align`
def _load_feature_file(path: str | os.PathLike) -> torch.Tensor:
    """A ``(N, D)`` tensor from a safetensors file (its single tensor, or the one named ``features``)."""
    from pentachora.io import load_tensors

    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file not found: {path}")
    try:
        tensors = load_tensors(path)
    except CheckpointError as err:  # already names the file and what is wrong with it
        raise DataError(str(err)) from err
    if "features" in tensors:
        x = tensors["features"]
    elif len(tensors) == 1:
        x = next(iter(tensors.values()))
    else:
        raise DataError(f"{path} holds {sorted(tensors)}; name the tensor 'features' or keep only one")
    if x.dim() != 2:
        raise DataError(f"{path}: features must be a 2-D (N, D) tensor, got shape {tuple(x.shape)}")
    return x.float()


def fit_aligner_files(
    a_path: str | os.PathLike,
    b_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    d_hub: int = 0,
    shrinkage: float = 0.2,
    rank: int = 0,
    whiten: bool = True,
    heldout_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, report and (optionally) save a frozen aligner from A's features onto B's.

    Rows of the two files are paired. A seeded ``heldout_fraction`` of the rows is held out to report
    alignment as lift over the shuffled floor; the saved aligners are then refitted on all rows.
    ``out_dir`` receives ``source/`` (A → hub) and ``target/`` (B → hub) checkpoint folders plus
    ``report.json``. Nothing is written when any check fails.

    Raises:
        DataError: Missing/corrupt files, unequal row counts, NaN/inf, too few rows.
    """
    a, b = _load_feature_file(a_path), _load_feature_file(b_path)
    if a.shape[0] != b.shape[0]:
        raise DataError(
            f"{a_path} has {a.shape[0]} rows but {b_path} has {b.shape[0]}; the rows must be the same items"
        )
    for x, p in ((a, a_path), (b, b_path)):
        if not torch.isfinite(x).all():
            raise DataError(f"{p}: features contain {int((~torch.isfinite(x)).sum())} NaN/inf values")
    n = a.shape[0]
    n_held = max(2, round(heldout_fraction * n))
    if n - n_held < 4:
        raise DataError(f"need at least {n_held + 4} paired rows (got {n})")
    d_hub = d_hub or min(a.shape[1], b.shape[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, fit = perm[:n_held], perm[n_held:]
    opts = {"d_hub": d_hub, "shrinkage": shrinkage, "rank": rank, "whiten": whiten}
    ref = ProcrustesAligner.fit_new(b[fit], None, **opts)
    src = ProcrustesAligner.fit_new(a[fit], ref(b[fit]), **opts)
    held_report = src.report(a[held], ref(b[held]), seed=seed).as_dict()
    fit_report = alignment_report(src(a[fit]), ref(b[fit]), seed=seed).as_dict()
    report = {
        "source": str(a_path),
        "target": str(b_path),
        "rows": n,
        "heldout_rows": n_held,
        "d_source": a.shape[1],
        "d_target": b.shape[1],
        "d_hub": d_hub,
        "mode": src.mode,
        "target_mode": ref.mode,
        "options": opts,
        "heldout": held_report,
        "fit_set": fit_report,
    }
    if out_dir is not None:
        out = Path(out_dir)
        ref_all = ProcrustesAligner.fit_new(b, None, **opts)
        src_all = ProcrustesAligner.fit_new(a, ref_all(b), **opts)
        src_all.save_pretrained(out / "source")
        ref_all.save_pretrained(out / "target")
        atomic_write_json(out / "report.json", report)
    return report


def apply_aligner(aligner_dir: str | os.PathLike, features: torch.Tensor) -> torch.Tensor:
    """Load a saved aligner and apply it (``DataError`` when the width does not match)."""
    al = ProcrustesAligner.from_pretrained(aligner_dir)
    if features.dim() != 2 or features.shape[1] != al.config.d_in:
        raise DataError(
            f"features of shape {tuple(features.shape)} do not match the aligner in {aligner_dir}, fitted on "
            f"{al.config.d_in}-d features"
        )
    return al(features)

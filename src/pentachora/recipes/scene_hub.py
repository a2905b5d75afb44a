"""The Conduit hub across modalities: images and captions of the scene world, seen by frozen experts.

Image experts (none trained on captions):

* ``geovae`` — the per-patch posterior means of a GeoVAE (``tiny-12``: 8×8 patches, 16 floats each)
  trained on renders of the world's *training* scenes: 16 tokens per 32-px image;
* ``patchsvae`` — the per-patch matrix ``M`` (V×D = 32×8, flattened) of a PatchSVAE (``tiny``) trained
  the same way: 16 tokens of 256 floats;
* ``pixpca`` — principal components (32) of 8×8×3 pixel patches, fitted on training images: 16 tokens.

Text experts: ``minilm`` (all-MiniLM-L6-v2 token states, 384-d) and ``lsa`` (TF-IDF + SVD fitted on the
training captions, one token).

:func:`prepare_scene_hub_data` builds the paired features of a training, a validation and a test split:
scenes come from the world's own disjoint splits (the test scenes never appear in training), the test
captions use the held-out phrasing templates, and a leakage check says so. Features are cached as
safetensors under ``$PENTACHORA_CACHE/scene-hub`` so every contender reads the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pentachora.data.images import to_model_space
from pentachora.data.paired import PairedFeatures, extract_paired_features, text_hash
from pentachora.data.scenes import Scene, SceneWorld
from pentachora.data.seeding import step_seed
from pentachora.errors import ConfigError, DataError

__all__ = [
    "ATTRIBUTES",
    "IMAGE_EXPERTS",
    "SCENE_EXPERTS",
    "TEXT_EXPERTS",
    "AutoencoderPatchExpert",
    "PixelPCAExpert",
    "SceneHubData",
    "SceneRenders",
    "attribute_negative",
    "hard_negative_texts",
    "mutual_knn",
    "prepare_scene_hub_data",
    "scene_leakage",
    "train_scene_autoencoder",
]

logger = logging.getLogger(__name__)

IMAGE_EXPERTS = ("geovae", "patchsvae", "pixpca")
TEXT_EXPERTS = ("minilm", "lsa")
SCENE_EXPERTS = (*IMAGE_EXPERTS, *TEXT_EXPERTS)
ATTRIBUTES = ("colour", "shape", "cell")
CACHE_VERSION = "scene-hub-v1"


def _cache_root(cache: str | os.PathLike | None) -> Path:
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get("PENTACHORA_CACHE", Path.home() / ".cache" / "pentachora")) / "scene-hub"


# ============================================================================================ image experts
class SceneRenders:
    """Renders of training-split scenes in model space ``(B, 3, H, W)``: an autoencoder's training data.

    Deterministic in ``(seed, step)``; scenes hold 1 to ``n_cells`` objects.
    """

    def __init__(self, world: SceneWorld, batch_size: int, seed: int = 0) -> None:
        self.world, self.batch_size, self.seed = world, int(batch_size), int(seed)

    def batch(self, step: int) -> torch.Tensor:
        base = step_seed(self.seed, step) * self.batch_size
        scenes = [
            self.world.scene("train", base + i, (1, self.world.config.n_cells), stream=300)
            for i in range(self.batch_size)
        ]
        return to_model_space(torch.from_numpy(self.world.render_batch(scenes)))


def _autoencoder(kind: str) -> torch.nn.Module:
    if kind == "geovae":
        from pentachora.autoencoders import GeoVAE, GeoVAEConfig

        return GeoVAE(GeoVAEConfig.preset("tiny-12"))
    if kind == "patchsvae":
        from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

        return PatchSVAE(PatchSVAEConfig.preset("tiny"))
    raise ConfigError(f"autoencoder kind must be 'geovae' or 'patchsvae', got {kind!r}")


def train_scene_autoencoder(
    kind: str,
    world: SceneWorld,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a ``geovae`` (``tiny-12``) or ``patchsvae`` (``tiny``) on training-split renders with the
    one Trainer, or load the cached result of the same settings.

    Returns:
        ``(model in eval mode, {"steps", "train_s", "cached", "folder"})``.
    """
    from pentachora.training import TrainConfig, Trainer

    key = hashlib.sha256(
        json.dumps(
            [kind, dataclasses.asdict(world.config), steps, batch_size, lr, seed], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    folder = _cache_root(cache) / "autoencoders" / f"{kind}-{key}"
    model = _autoencoder(kind)
    if (folder / "model.safetensors").is_file():
        model = type(model).from_pretrained(folder)
        info = json.loads((folder / "train.json").read_text())
        return model.eval(), {**info, "cached": True, "folder": str(folder)}
    torch.manual_seed(seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20), grad_clip=1.0,
                      seed=seed, eval_every=0, log_every=max(1, steps // 5), out_dir=None, progress=False,
                      tensorboard=False)  # fmt: skip
    result = Trainer(model, cfg, SceneRenders(world, batch_size, seed)).fit(resume=False)
    model = model.cpu().eval()
    model.save_pretrained(folder)
    info = {"kind": kind, "steps": result.steps, "train_s": result.wall_time_s,
            "nonfinite_steps": result.nonfinite_steps}  # fmt: skip
    (folder / "train.json").write_text(json.dumps(info))
    return model, {**info, "cached": False, "folder": str(folder)}


class AutoencoderPatchExpert:
    """A frozen autoencoder's encoder: one token per patch.

    GeoVAE: the posterior mean and the magnitude channel ``(d + 1)``; PatchSVAE: the flattened per-patch
    matrix ``M`` (V·D) its encoder writes before the SVD.
    """

    def __init__(self, name: str, model: torch.nn.Module, batch_size: int = 256) -> None:
        self.name, self.model, self.batch_size = name, model.eval(), int(batch_size)
        with torch.no_grad():
            self.dim = int(self._tokens(torch.zeros(1, 3, 32, 32)).shape[-1])

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        latent = self.model.encode(x)
        if hasattr(latent, "mode"):  # GeoVAE posterior: (B, d+1, gh, gw)
            z = latent.mode()
            return z.flatten(2).transpose(1, 2)
        return latent.M.flatten(2)  # PatchSVAE: (B, N, V, D) → (B, N, V·D)

    @torch.no_grad()
    def token_features(self, images01: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for start in range(0, images01.shape[0], self.batch_size):
            x = to_model_space(images01[start : start + self.batch_size])
            out.extend(self._tokens(x).float())
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "kind": type(self.model).__name__}


class PixelPCAExpert:
    """Principal components of 8×8×3 pixel patches (fitted on training images, float64 SVD)."""

    name = "pixpca"

    def __init__(self, dim: int = 32, patch: int = 8, max_patches: int = 40_000) -> None:
        self.dim, self.patch, self.max_patches = int(dim), int(patch), int(max_patches)
        self.mean: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None

    def _patches(self, images01: torch.Tensor) -> torch.Tensor:
        p = self.patch
        b, c, h, w = images01.shape
        x = images01.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def fit(self, images01: torch.Tensor) -> PixelPCAExpert:
        flat = self._patches(images01).reshape(-1, 3 * self.patch**2).double()
        flat = flat[
            torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(0))[: self.max_patches]
        ]
        self.mean = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = vh[: self.dim].T.contiguous()
        return self

    def token_features(self, images01: torch.Tensor) -> list[torch.Tensor]:
        if self.basis is None or self.mean is None:
            raise ConfigError("PixelPCAExpert.fit must run on training images first")
        z = (self._patches(images01).double() - self.mean) @ self.basis
        return list(z.float())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "kind": "PixelPCAExpert", "patch": self.patch}


# ============================================================================================ data
@dataclass
class SceneHubData:
    """Paired features of the three splits, their scenes and captions, and provenance."""

    train: PairedFeatures
    val: PairedFeatures
    test: PairedFeatures
    scenes: dict[str, list[Scene]]
    captions: dict[str, list[str]]
    info: dict[str, Any]
    experts: dict[str, Any]
    world: SceneWorld

    def encode(self, scenes: list[Scene], texts: list[str], split: str = "probe") -> PairedFeatures:
        """Every expert's features of new items (e.g. hard negatives), prepared like the splits."""
        return encode_items(self.world, scenes, texts, self.experts, split, self.info.get("minilm_tokens", 0))


def _items(
    world: SceneWorld, split: str, n: int, phrasing: str, count: Callable
) -> tuple[list[Scene], list[str]]:
    scenes, texts = [], []
    for i in range(n):
        scene, cap = world.sample(split, i, "prose", count, phrasing)  # type: ignore[arg-type]
        scenes.append(scene)
        texts.append(cap.text)
    return scenes, texts


def _features(
    world: SceneWorld, scenes: list[Scene], texts: list[str], experts: dict[str, Any], split: str
) -> PairedFeatures:
    index = {f"{split}:{i}": i for i in range(len(scenes))}

    def image_fn(expert: Any) -> Callable[[Sequence[str]], list[torch.Tensor]]:
        def fn(keys: Sequence[str]) -> list[torch.Tensor]:
            imgs = torch.from_numpy(world.render_batch([scenes[index[k]] for k in keys]))
            return expert.token_features(imgs)

        return fn

    def text_fn(expert: Any) -> Callable[[Sequence[str]], list[torch.Tensor]]:
        return lambda keys: expert.token_features([texts[index[k]] for k in keys])

    fns = {n: (image_fn(e) if n in IMAGE_EXPERTS else text_fn(e)) for n, e in experts.items()}
    feats = extract_paired_features(list(index), fns, titles=[str(s.layout_key()) for s in scenes],
                                    meta={"split": split}, chunk=1024)  # fmt: skip
    feats.hashes = [text_hash(t) for t in texts]
    return feats


def prepare_scene_hub_data(
    world: SceneWorld,
    n_train: int,
    n_val: int = 1000,
    n_test: int = 1000,
    experts: Sequence[str] = SCENE_EXPERTS,
    ae_steps: int = 600,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    minilm_tokens: int = 8,
) -> SceneHubData:
    """Scenes → images and captions → every expert's token features (cached).

    Training and validation scenes come from the world's ``train`` and ``val`` splits with training
    phrasings; test scenes from its ``test`` split with the *held-out* phrasing templates. LSA, the pixel
    PCA and both autoencoders see training scenes only. MiniLM's token states are compressed to at most
    ``minilm_tokens`` chunk means per caption (the CPU-sized training input of the text hub benchmark).

    Raises:
        ConfigError: an unknown expert.
        DataError: a test scene or caption that also occurs in training (leakage).
    """
    from pentachora.recipes.t2i import load_window_encoder, token_counter

    unknown = [e for e in experts if e not in SCENE_EXPERTS]
    if unknown or len(experts) < 2:
        raise ConfigError(f"experts must be at least two of {SCENE_EXPERTS}, got {list(experts)}")
    key = hashlib.sha256(json.dumps([CACHE_VERSION, dataclasses.asdict(world.config), n_train, n_val, n_test,
                                     list(experts), ae_steps, seed, minilm_tokens], sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    folder = _cache_root(cache) / f"features-{key}"
    count = token_counter(load_window_encoder())
    split_items = {
        "train": _items(world, "train", n_train, "train", count),
        "val": _items(world, "val", n_val, "train", count),
        "test": _items(world, "test", n_test, "heldout", count),
    }
    scenes = {k: v[0] for k, v in split_items.items()}
    captions = {k: v[1] for k, v in split_items.items()}
    info: dict[str, Any] = {"experts": list(experts), "cache": str(folder), "n_train": n_train, "n_val": n_val,
                            "n_test": n_test, "ae_steps": ae_steps, "seed": seed}  # fmt: skip
    paths = {s: folder / f"{s}.safetensors" for s in ("train", "val", "test")}
    built, ae_info = build_scene_experts(
        world, scenes["train"], captions["train"], experts, ae_steps, seed, cache
    )
    info["minilm_tokens"] = minilm_tokens
    if all(p.is_file() for p in paths.values()):
        feats = {s: PairedFeatures.load(p) for s, p in paths.items()}
        info["cache_hit"] = True
    else:
        feats = {s: encode_items(world, scenes[s], captions[s], built, s, minilm_tokens) for s in paths}
        folder.mkdir(parents=True, exist_ok=True)
        for s, p in paths.items():
            feats[s].save(p)
        info["cache_hit"] = False
    info.update({"autoencoders": ae_info, "expert_descriptions": {n: e.describe() for n, e in built.items()}})
    leak = scene_leakage(scenes, captions)
    if leak["test_layouts_in_train"] or leak["test_captions_in_train"]:
        raise DataError(f"the test split leaks into training: {leak}")
    info["leakage"] = leak
    info["dims"] = feats["train"].dims
    return SceneHubData(feats["train"], feats["val"], feats["test"], scenes, captions, info, built, world)


def build_scene_experts(
    world: SceneWorld,
    train_scenes: list[Scene],
    train_captions: list[str],
    experts: Sequence[str],
    ae_steps: int,
    seed: int,
    cache: str | os.PathLike | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The frozen experts, fitted or trained on training scenes only (autoencoders cached)."""
    from pentachora.hub.text_experts import LSAExpert, MiniLMExpert

    built: dict[str, Any] = {}
    ae_info: dict[str, Any] = {}
    for name in experts:
        if name in ("geovae", "patchsvae"):
            model, ae_info[name] = train_scene_autoencoder(
                name, world, steps=ae_steps, seed=seed, cache=cache
            )
            built[name] = AutoencoderPatchExpert(name, model)
        elif name == "pixpca":
            built[name] = PixelPCAExpert().fit(torch.from_numpy(world.render_batch(train_scenes[:2000])))
        elif name == "minilm":
            built[name] = MiniLMExpert(max_length=96)
        else:
            built[name] = LSAExpert(dim=128, seed=seed).fit(train_captions)
    return built, ae_info


def encode_items(
    world: SceneWorld,
    scenes: list[Scene],
    texts: list[str],
    experts: dict[str, Any],
    split: str,
    minilm_tokens: int = 0,
) -> PairedFeatures:
    """Images of ``scenes`` through the image experts, ``texts`` through the text experts."""
    feats = _features(world, scenes, texts, experts, split)
    if minilm_tokens and "minilm" in experts:
        feats = feats.compressed(minilm_tokens, ["minilm"])
    return feats


def scene_leakage(scenes: dict[str, list[Scene]], captions: dict[str, list[str]]) -> dict[str, int]:
    """Counts of test layouts and test captions that also occur in the training split."""
    train_layouts = {s.layout_key() for s in scenes["train"]}
    train_caps = set(captions["train"])
    return {
        "test_layouts_in_train": sum(s.layout_key() in train_layouts for s in scenes["test"]),
        "test_captions_in_train": sum(c in train_caps for c in captions["test"]),
        "val_layouts_in_train": sum(s.layout_key() in train_layouts for s in scenes["val"]),
    }


# ============================================================================================ probes
def attribute_negative(
    world: SceneWorld, scene: Scene, attribute: str, rng: np.random.Generator
) -> Scene | None:
    """``scene`` with one object's ``colour``, ``shape`` or ``cell`` changed (to a free cell), or None
    when no change is possible."""
    if attribute not in ATTRIBUTES:
        raise ConfigError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    objs = list(scene.objects)
    if not objs:
        return None
    k = int(rng.integers(len(objs)))
    o = objs[k]
    c = world.config
    if attribute == "colour":
        choices = [x for x in c.colours if x != o.colour]
        new = dataclasses.replace(o, colour=str(rng.choice(choices)))
    elif attribute == "shape":
        choices = [x for x in c.shapes if x != o.shape]
        new = dataclasses.replace(o, shape=str(rng.choice(choices)))
    else:
        free = [i for i in range(c.n_cells) if i not in {x.cell for x in objs}]
        if not free:
            return None
        new = dataclasses.replace(o, cell=int(rng.choice(free)))
    objs[k] = new
    return Scene(objects=tuple(objs), background=scene.background)


def mutual_knn(
    a: torch.Tensor, b: torch.Tensor, k: int = 10, n_perm: int = 20, seed: int = 0
) -> dict[str, float]:
    """Mutual k-NN alignment of two representations of the same items (the Platonic-representation
    score: mean overlap of each item's k nearest neighbours in ``a`` and in ``b``) with a permutation
    null (``b``'s rows shuffled)."""

    def knn(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x.float(), dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    def overlap(ia: torch.Tensor, ib: torch.Tensor) -> float:
        hits = (ia.unsqueeze(2) == ib.unsqueeze(1)).any(2).float().sum(1)
        return float((hits / k).mean())

    ka = knn(a)
    score = overlap(ka, knn(b))
    g = torch.Generator().manual_seed(seed)
    # the null: the same neighbourhoods under a random pairing of the rows
    null = [overlap(ka, knn(b[torch.randperm(b.shape[0], generator=g)])) for _ in range(n_perm)]
    return {"mknn": score, "null_mean": float(np.mean(null)), "null_max": float(np.max(null)), "k": k}


def _caption_of(world: SceneWorld, scene: Scene, phrasing: str, seed: int, count: Callable) -> str:
    rng = np.random.default_rng(seed)
    return world.caption(scene, "prose", rng, count, phrasing).text  # type: ignore[arg-type]


def hard_negative_texts(
    world: SceneWorld, scenes: list[Scene], attribute: str, phrasing: str = "heldout", seed: int = 0
) -> tuple[list[int], list[Scene], list[str], list[str]]:
    """For each scene with a possible change: ``(rows, negative scenes, captions of the true scenes,
    captions of the negatives)``, both captions written with the same random phrasing choices."""
    from pentachora.recipes.t2i import load_window_encoder, token_counter

    count = token_counter(load_window_encoder())
    rng = np.random.default_rng(seed)
    rows, negs, pos_caps, neg_caps = [], [], [], []
    for i, s in enumerate(scenes):
        neg = attribute_negative(world, s, attribute, rng)
        if neg is None:
            continue
        rows.append(i)
        negs.append(neg)
        pos_caps.append(_caption_of(world, s, phrasing, seed + i, count))
        neg_caps.append(_caption_of(world, neg, phrasing, seed + i, count))
    return rows, negs, pos_caps, neg_caps

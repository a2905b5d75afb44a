"""The scene world's text-to-image loop: the reader, the miniature T2I model, and how both are judged.

* :func:`scene_pool` — a fixed set of captioned training scenes with the frozen window encoder's
  states, cached on disk (``$PENTACHORA_CACHE/scene-pools``; building 20,000 takes ≈ 5 minutes on two
  CPU cores, loading it a second).
* :func:`train_reader` / :func:`default_reader` — the instrument; ``default_reader`` trains it once per
  world and caches it (``$PENTACHORA_CACHE/scene-readers``), deterministic in the world and seed.
* :func:`evaluate_reader` — cell accuracy against ground truth on clean and degraded renders.
* :func:`train_t2i` — the one Trainer on the pool; every ``eval_every`` steps it samples validation
  captions and reads them (the training curve of the short-caption ceiling).
* :func:`evaluate_prompts` — generate images for captions through any conditioning and score them.

Needs the ``memory`` and ``diffusion`` extras (transformers for the frozen encoder, diffusers for
the UNet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pentachora.data.scenes import (
    WORLD_FORMAT,
    Caption,
    Scene,
    ScenePool,
    ScenePoolSource,
    SceneRenderSource,
    SceneWorld,
    SceneWorldConfig,
    degrade,
)
from pentachora.data.seeding import step_generator
from pentachora.errors import CheckpointError, ConfigError
from pentachora.io import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from pentachora.nn.text_encoder import FrozenTextEncoder
from pentachora.recipes.loading import FINAL_DIR
from pentachora.resources import check_fits_in_memory
from pentachora.t2i.model import MiniT2I
from pentachora.t2i.reader import SceneReader, SceneReaderConfig
from pentachora.t2i.scoring import object_hits, summarise_hits
from pentachora.training import Callback, TrainConfig, Trainer, TrainResult, default_param_groups
from pentachora.training.logging import read_metrics
from pentachora.training.state import is_main_process, run_folder_lock

__all__ = [
    "POOL_FORMAT",
    "PromptImages",
    "ReaderRun",
    "T2IRun",
    "cached_reader",
    "caption_set",
    "default_reader",
    "encode_prompts",
    "evaluate_prompts",
    "evaluate_reader",
    "generate_from_prompt",
    "load_scene_reader",
    "load_t2i_run",
    "load_window_encoder",
    "scene_pool",
    "train_reader",
    "train_t2i",
]

logger = logging.getLogger(__name__)

POOL_FORMAT = "pentachora-scene-pool-v1"
READER_FORMAT = "pentachora-scene-reader-v1"


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PENTACHORA_CACHE``, else ``~/.cache/pentachora``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("PENTACHORA_CACHE") or Path.home() / ".cache" / "pentachora")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


# ============================================================================================ encoder
def load_window_encoder(name: str = "minilm", window: int = 77) -> FrozenTextEncoder:
    """The frozen window encoder the T2I model is conditioned on (offline)."""
    return FrozenTextEncoder.from_pretrained(name, window=window)


def token_counter(encoder: FrozenTextEncoder) -> Callable[[Sequence[str]], list[int]]:
    """``texts -> content tokens`` under the encoder's tokenizer (the world's window accounting)."""

    def count(texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in encoder.tokenize(list(texts))]

    return count


def encode_prompts(
    encoder: FrozenTextEncoder, texts: Sequence[str], batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """``(N, W, H)`` float32: each text's first window through the frozen encoder, as SD encodes a prompt
    (truncated at W tokens with specials, padded to W)."""
    out = []
    starts = range(0, len(texts), batch_size)
    for start in _progress(starts, len(starts), "encoding captions", progress):
        out.append(encoder.native_sequence(list(texts[start : start + batch_size]))[0])
    if not out:
        return torch.zeros(0, encoder.window, encoder.hidden_size)
    return torch.cat(out)


# ============================================================================================ data
def caption_set(
    world: SceneWorld,
    split: str,
    n: int,
    kind: str,
    count_tokens: Callable[[Sequence[str]], list[int]],
    phrasing: str = "train",
    offset: int = 0,
) -> list[tuple[Scene, Caption]]:
    """Scenes ``offset .. offset + n − 1`` of a split with captions of ``kind`` (deterministic)."""
    return [world.sample(split, offset + i, kind, count_tokens, phrasing) for i in range(n)]  # type: ignore[arg-type]


def scene_pool(
    world: SceneWorld,
    encoder: FrozenTextEncoder,
    n: int,
    split: str = "train",
    kind: str = "short",
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> ScenePool:
    """``n`` captioned scenes of ``split`` with the encoder's states of their captions, cached on disk.

    The cache key covers the world config, the encoder's fingerprint and window, the split, the kind
    and ``n``; a cache file that does not match its key or cannot be read is rebuilt.

    Raises:
        ConfigError: ``n < 1``, or a pool larger than the machine's memory (checked before it is built).
    """
    if n < 1:
        raise ConfigError(f"a scene pool needs n >= 1, got {n}")
    side = world.config.image_size
    per_scene = 3 * side * side + encoder.window * encoder.hidden_size * 2  # uint8 image + fp16 states
    check_fits_in_memory(n * per_scene, f"a pool of {n:,} scenes", "--pool-size")
    key = _key(
        POOL_FORMAT, WORLD_FORMAT, dataclasses.asdict(world.config), encoder.describe(), split, kind, n
    )
    folder = cache_root(cache) / "scene-pools"
    tensors_path, meta_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if use_cache and tensors_path.is_file() and meta_path.is_file():
        try:
            meta = read_json(meta_path)
            t = load_tensors(tensors_path)
            if meta.get("key") == key and len(meta.get("captions", [])) == n:
                return ScenePool(t["images"], t["states"], t["layouts"], list(meta["captions"]))
            logger.warning("scene pool cache %s does not match its key; rebuilding", tensors_path)
        except (CheckpointError, KeyError, ValueError) as exc:
            logger.warning("scene pool cache %s is unreadable (%s); rebuilding", tensors_path, exc)
    count = token_counter(encoder)
    pairs = caption_set(world, split, n, kind, count)
    scenes, captions = [p[0] for p in pairs], [p[1].text for p in pairs]
    images = torch.from_numpy(np.round(world.render_batch(scenes) * 255).astype(np.uint8))
    states = encode_prompts(encoder, captions, progress=progress).half()
    layouts = torch.from_numpy(world.layouts(scenes))
    pool = ScenePool(images, states, layouts, captions)
    if use_cache:
        atomic_save_tensors(tensors_path, {"images": images, "states": states, "layouts": layouts})
        atomic_write_json(meta_path, {"key": key, "format": POOL_FORMAT, "split": split, "kind": kind,
                                      "encoder": encoder.describe(), "captions": captions})  # fmt: skip
    return pool


# ============================================================================================ reader
@dataclass
class ReaderRun:
    """The outcome of :func:`train_reader`."""

    model: SceneReader
    result: TrainResult
    evaluation: dict[str, float]
    out_dir: Path | None


def _reader_eval_set(world: SceneWorld, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed clean renders of validation scenes (0..g² objects) with their labels."""
    source = SceneRenderSource(world, n, seed=seed, augment=False, split="val")
    return source.batch(-1)


def evaluate_reader(
    reader: SceneReader,
    n: int = 1000,
    noise_levels: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2),
    blur: bool = True,
    split: str = "test",
    seed: int = 1,
) -> dict[str, Any]:
    """Cell accuracy of the reader against ground truth on ``n`` renders of ``split`` scenes.

    Returns:
        ``{"clean": {...}, "noise": {σ: accuracy}, "blur": accuracy, "chance": ...}``: cell accuracy,
        object accuracy (occupied cells read exactly), empty-cell accuracy and size accuracy, each on
        clean renders; cell accuracy under Gaussian noise of each σ, and under a full 3×3 blur plus
        σ = 0.05; and the chance levels (the majority class, a uniform guess).
    """
    world = SceneWorld(reader.config.world)
    source = SceneRenderSource(world, n, seed=seed, augment=False, split=split)
    batch = source.batch(-7)
    images, labels, sizes = batch["pixel_values"], batch["labels"], batch["sizes"]
    reading = reader.read(images)
    occupied = labels > 0
    out: dict[str, Any] = {
        "n_images": n,
        "n_cells": int(labels.numel()),
        "clean": {
            "cell_accuracy": float((reading.labels == labels).float().mean()),
            "object_accuracy": float((reading.labels == labels)[occupied].float().mean()),
            "empty_accuracy": float((reading.labels == labels)[~occupied].float().mean()),
            "size_accuracy": float((reading.sizes == sizes)[occupied].float().mean()),
        },
        "noise": {},
        "chance": {
            "uniform_cell": 1.0 / world.n_classes,
            "majority_cell": float(max(occupied.float().mean(), 1 - occupied.float().mean())),
            "uniform_object": 1.0 / (world.n_classes - 1),
        },
    }
    gen = torch.Generator().manual_seed(seed)
    for sigma in noise_levels:
        noisy = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        out["noise"][f"{sigma:g}"] = float((reader.read(noisy).labels == labels).float().mean())
    if blur:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = torch.nn.functional.conv2d(
            torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), k2, groups=3
        )
        blurred = (blurred + 0.05 * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        out["blur"] = float((reader.read(blurred).labels == labels).float().mean())
    return out


def train_reader(
    config: SceneReaderConfig,
    train_config: TrainConfig,
    resume: bool | str | os.PathLike = True,
    fresh: bool = False,
    evaluate: bool = True,
) -> ReaderRun:
    """Train the scene reader on degraded renders of training scenes with the one Trainer."""
    torch.manual_seed(train_config.seed)
    model = SceneReader(config)
    world = SceneWorld(config.world)
    source = SceneRenderSource(world, train_config.batch_size, seed=train_config.seed)
    held = _reader_eval_set(world, 256, seed=train_config.seed)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        reading = m.read(held["pixel_values"])  # type: ignore[operator]
        return {"cell_accuracy": float((reading.labels == held["labels"]).float().mean())}

    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    run_data = {"world": dataclasses.asdict(config.world), "task": "scene-reader"}
    trainer = Trainer(model, train_config, source, eval_fn=eval_fn, run_data=run_data)
    lock = run_folder_lock(out_dir, enabled=is_main_process()) if out_dir is not None else nullcontext()
    with lock:
        result = trainer.fit(resume=resume, fresh=fresh)
        trained: SceneReader = trainer.unwrapped_model.to("cpu").eval()  # type: ignore[assignment]
        evaluation = evaluate_reader(trained) if evaluate else {}
        if out_dir is not None:
            trained.save_pretrained(out_dir / FINAL_DIR)
            atomic_write_json(out_dir / "eval.json", evaluation)
    return ReaderRun(model=trained, result=result, evaluation=evaluation, out_dir=out_dir)


#: Steps and batch of the reader :func:`default_reader` trains (≈ 2 minutes on two CPU cores).
DEFAULT_READER_STEPS = 3000
DEFAULT_READER_BATCH = 64


def _reader_folder(world: SceneWorldConfig, cache: str | os.PathLike | None) -> Path:
    key = _key(READER_FORMAT, dataclasses.asdict(world), DEFAULT_READER_STEPS, DEFAULT_READER_BATCH)
    return cache_root(cache) / "scene-readers" / key


def cached_reader(world: SceneWorldConfig, cache: str | os.PathLike | None = None) -> SceneReader | None:
    """The world's cached reader, or ``None`` when none was trained yet (or it cannot be read)."""
    folder = _reader_folder(world, cache)
    if (folder / "config.json").is_file():
        try:
            return SceneReader.from_pretrained(folder).eval()
        except CheckpointError as exc:
            logger.warning("cached scene reader %s is unreadable (%s)", folder, exc)
    return None


def default_reader(
    world: SceneWorldConfig, cache: str | os.PathLike | None = None, progress: bool = True
) -> SceneReader:
    """The world's reader: loaded from the cache, or trained once (seed 0) and cached.

    The cache folder is keyed by the world config; a reader that fails to load is retrained.
    """
    folder = _reader_folder(world, cache)
    reader = cached_reader(world, cache)
    if reader is not None:
        return reader
    logger.warning("training the scene reader for this world once (cached in %s)", folder)
    config = SceneReaderConfig(world=world)
    tc = TrainConfig(
        steps=DEFAULT_READER_STEPS, batch_size=DEFAULT_READER_BATCH, lr=2e-3, warmup_steps=100,
        out_dir=None, progress=progress, eval_every=0, tensorboard=False,
    )  # fmt: skip
    run = train_reader(config, tc, evaluate=False)
    run.model.save_pretrained(folder)
    return run.model


# ============================================================================================ T2I
class EMAUpdate(Callback):
    """After every applied optimiser step, move the model's averaged weights (``update_ema``)."""

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if not trainer.last_step_skipped:
            trainer.unwrapped_model.update_ema()  # type: ignore[operator]


@dataclass
class T2IRun:
    """The outcome of :func:`train_t2i`."""

    model: MiniT2I
    result: TrainResult
    evaluation: dict[str, Any]
    out_dir: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def generate_images(
    model: MiniT2I,
    prompt_embeds: torch.Tensor,
    seeds: Sequence[int],
    negative_prompt_embeds: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 48,
) -> torch.Tensor:
    """``(N · len(seeds), 3, H, W)``: every prompt with every seed (prompt-major order).

    Seed ``s`` of prompt ``i`` draws its initial noise from ``torch.Generator().manual_seed(s)``, so an
    image depends on its prompt and seed only — not on the batch it was generated in.
    """
    model.eval()
    rows = [(i, s) for i in range(prompt_embeds.shape[0]) for s in seeds]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        idx = torch.tensor([i for i, _ in chunk])
        gens = [torch.Generator().manual_seed(int(s)) for _, s in chunk]
        neg = negative_prompt_embeds[idx] if negative_prompt_embeds is not None else None
        out.append(
            model.generate(prompt_embeds[idx], neg, guidance_scale, num_inference_steps, gens, sampler)
        )
    return (
        torch.cat(out)
        if out
        else torch.zeros(0, 3, model.config.world.image_size, model.config.world.image_size)
    )


def evaluate_prompts(
    model: MiniT2I,
    reader: SceneReader,
    prompt_embeds: torch.Tensor,
    layouts: torch.Tensor | np.ndarray,
    seeds: Sequence[int] = (0,),
    negative_prompt_embeds: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    sampler: str | None = None,
) -> dict[str, Any]:
    """Generate every prompt with every seed, read the images and score them against ``layouts``.

    Returns:
        ``{"summary": summarise_hits(...), "false_objects_per_image", "reading": (N·S, g²) labels,
        "hits": ObjectHits, "images": (N·S, 3, H, W)}`` (rows prompt-major).
    """
    images = generate_images(
        model, prompt_embeds, seeds, negative_prompt_embeds, guidance_scale, num_inference_steps, sampler
    )
    reading = reader.read(images).labels
    truth = np.repeat(np.asarray(layouts), len(seeds), axis=0)
    hits = object_hits(reading, truth, len(model.config.world.shapes))
    clusters = np.repeat(np.arange(len(layouts)), len(seeds))
    summary = summarise_hits(hits, clusters)
    summary["false_objects_per_image"] = float(hits.false_objects.mean())
    return {"summary": summary, "reading": reading, "hits": hits, "images": images, "clusters": clusters}


def train_t2i(
    model: MiniT2I,
    train_config: TrainConfig,
    pool_size: int = 20_000,
    reader: SceneReader | None = None,
    eval_captions: int = 48,
    cache: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = True,
    fresh: bool = False,
    progress: bool = True,
    final_eval_captions: int = 200,
) -> T2IRun:
    """Train the miniature T2I model on short captions of the world's training split.

    Every ``train_config.eval_every`` steps (and at the end) ``eval_captions`` validation prose
    captions (1–3 objects) are sampled with the model's default sampler and read by ``reader``: the
    logged ``object_recall`` against training time is the curve of the short-caption ceiling. At the
    end ``final_eval_captions`` held-out *test* captions are scored with 3 seeds (``eval.json``).

    Args:
        model: A fresh (or resumed) :class:`MiniT2I`; its null embedding is set from its encoder.
        train_config: Trainer settings.
        pool_size: Training scenes in the cached pool.
        reader: The instrument (default: :func:`default_reader` of the model's world).
        eval_captions: Validation captions per periodic evaluation (0: no periodic evaluation).
        cache: Cache root for the pool and the reader.
        resume, fresh: As :meth:`Trainer.fit`.
        progress: Progress bars.
        final_eval_captions: Test captions of the final evaluation (0 skips it).
    """
    c = model.config
    world = SceneWorld(c.world)
    encoder = load_window_encoder(c.encoder, c.encoder_window)
    if encoder.hidden_size != c.cross_attention_dim:
        raise ConfigError(
            f"the encoder {c.encoder!r} has width {encoder.hidden_size}, the model's cross_attention_dim is "
            f"{c.cross_attention_dim}"
        )
    model.set_null_embedding(encoder.native_sequence([""])[0][0])
    reader = reader if reader is not None else default_reader(c.world, cache, progress)
    pool = scene_pool(world, encoder, pool_size, cache=cache, progress=progress)
    source = ScenePoolSource(pool, train_config.batch_size, seed=train_config.seed)
    count = token_counter(encoder)
    val = caption_set(world, "val", eval_captions, "prose", count)
    val_states = encode_prompts(encoder, [cap.text for _, cap in val]) if val else None
    val_layouts = world.layouts([s for s, _ in val])

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        if val_states is None:
            return {}
        t0 = time.perf_counter()
        scores = evaluate_prompts(m, reader, val_states, val_layouts, seeds=(0,))  # type: ignore[arg-type]
        s = scores["summary"]
        return {
            "object_recall": s["object_recall"], "position_recall": s["position_recall"],
            "binding": s["binding"], "false_objects_per_image": s["false_objects_per_image"],
            "eval_s": time.perf_counter() - t0,
        }  # fmt: skip

    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    run_data = {
        "world": dataclasses.asdict(c.world), "pool_size": pool_size, "encoder": encoder.describe()["fingerprint"],
        "eval_captions": eval_captions,
    }  # fmt: skip
    groups = default_param_groups(model.unet, train_config.weight_decay)  # the EMA copy is not optimised
    trainer = Trainer(
        model,
        train_config,
        source,
        eval_fn=eval_fn,
        callbacks=[EMAUpdate()],
        param_groups=groups,
        run_data=run_data,
    )
    lock = run_folder_lock(out_dir, enabled=is_main_process()) if out_dir is not None else nullcontext()
    with lock:
        result = trainer.fit(resume=resume, fresh=fresh)
        trained: MiniT2I = trainer.unwrapped_model.to("cpu").eval()  # type: ignore[assignment]
        evaluation: dict[str, Any] = {"train_steps": result.steps, "train_wall_s": result.wall_time_s,
                                      "nonfinite_steps": result.nonfinite_steps,
                                      "torch_threads": torch.get_num_threads()}  # fmt: skip
        if final_eval_captions > 0:
            test = caption_set(world, "test", final_eval_captions, "prose", count)
            states = encode_prompts(encoder, [cap.text for _, cap in test])
            scores = evaluate_prompts(
                trained, reader, states, world.layouts([s for s, _ in test]), seeds=(0, 1, 2)
            )
            evaluation["test_short_prose"] = scores["summary"]
        metrics: list[dict[str, Any]] = []
        if out_dir is not None:
            trained.save_pretrained(out_dir / FINAL_DIR)
            atomic_write_json(out_dir / "eval.json", evaluation)
            metrics = read_metrics(out_dir / "metrics.jsonl")
    return T2IRun(model=trained, result=result, evaluation=evaluation, out_dir=out_dir, metrics=metrics)


def reader_degraded_accuracy(reader: SceneReader, n: int = 512, seed: int = 3) -> float:
    """Cell accuracy on renders degraded like the reader's training data (a sanity figure)."""
    world = SceneWorld(reader.config.world)
    batch = SceneRenderSource(world, n, seed=seed, augment=False, split="test").batch(-3)
    noisy = degrade(batch["pixel_values"], step_generator(seed, 0))
    return float((reader.read(noisy).labels == batch["labels"]).float().mean())


# ----------------------------------------------------------------------------- the commands' work
def load_scene_reader(path: str | os.PathLike) -> SceneReader:
    """A trained reader run (``pentachora train reader``); any other run is a ``ConfigError``."""
    from pentachora.recipes.loading import load_run_model

    loaded = load_run_model(path)
    if not isinstance(loaded, SceneReader):
        raise ConfigError(f"--reader {path} holds a {type(loaded).__name__}, not a scene reader")
    return loaded


def load_t2i_run(path: str | os.PathLike) -> MiniT2I:
    """A trained miniature T2I run; any other run is a ``ConfigError``."""
    from pentachora.recipes.loading import load_run_model

    loaded = load_run_model(path)
    if not isinstance(loaded, MiniT2I):
        raise ConfigError(f"--model {path} holds a {type(loaded).__name__}, not a mini-t2i model")
    return loaded


@dataclass
class PromptImages:
    """What :func:`generate_from_prompt` made: the images and how the prompt reached the UNet."""

    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    positions: int  # conditioning positions the UNet read (77, or 77·k for chunked encoders)
    n_tokens: int | None  # the prompt's tokens, when the encoder counts them
    layouts: (
        list[list[str]] | None
    )  # per image, "colour shape @ cell" the reader sees; None: no reader cached


def generate_from_prompt(
    run: str | os.PathLike,
    prompt: str,
    encoder: str = "native",
    weighting: str = "none",
    n: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    read: bool = True,
) -> PromptImages:
    """``pentachora generate``: ``n`` images of ``prompt`` (seeds ``seed … seed+n−1``) from a trained
    run, conditioned as ``encoder`` says (:func:`pentachora.diffusion.mini.prompt_conditioning`), and —
    with ``read`` and a cached reader of the world — the layout the reader sees in each.

    Raises:
        ConfigError: an empty prompt, ``n`` < 1, an unknown encoder or weighting.
        CheckpointError: ``run`` is not a mini-t2i run.
    """
    from pentachora.diffusion.mini import MiniT2IPipeline, parse_encoder_spec, prompt_conditioning
    from pentachora.diffusion.weighting import DIALECTS

    if not prompt.strip():
        raise ConfigError("the prompt is empty; describe a scene, e.g. 'a small red circle in the centre.'")
    if n < 1:
        raise ConfigError(f"n must be >= 1 (images to generate), got {n}")
    spec = parse_encoder_spec(encoder)  # a malformed --encoder or --weighting is refused before loading
    if weighting not in DIALECTS:
        raise ConfigError(f"--weighting must be one of {DIALECTS}, got {weighting!r}")
    pipe = MiniT2IPipeline.from_run(run)
    embeds = prompt_conditioning(spec, pipe.model, pipe.encoder, weighting=weighting)([prompt])
    kwargs = {k: v.repeat_interleave(n, 0) for k, v in embeds.pipeline_kwargs().items()}
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    images = pipe(**kwargs, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                  sampler=sampler, output_type="pt").images  # fmt: skip
    layouts = None
    reader = cached_reader(pipe.model.config.world) if read else None
    if reader is not None:
        world = SceneWorld(pipe.model.config.world)
        labels = reader.read(images).labels.tolist()
        layouts = [[f"{world.class_name(int(lab))} @ {world.cell_name(cell)}" for cell, lab in enumerate(row) if lab]
                   for row in labels]  # fmt: skip
    n_tokens = int(embeds.n_tokens[0]) if embeds.n_tokens is not None else None
    return PromptImages(images, kwargs["prompt_embeds"].shape[1], n_tokens, layouts)

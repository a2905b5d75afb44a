"""Train the long-prompt memory through the frozen miniature text-to-image model (the consumer in the loop).

The seed's rule (§6.3, §6.5): a memory's output format is shaped by the loudest gradient, so a memory
meant to condition a UNet should be trained *by* the UNet. Here the loss is the frozen
:class:`~pentachora.t2i.MiniT2I`'s own denoising loss (same noise schedule, uniform timesteps, its
averaged sampling weights) on a scene's image, conditioned on the memory's output for that scene's
*long* caption; the UNet, its scheduler and the window encoder are frozen and only the memory trains.
The text objectives of :class:`~pentachora.memory.GeometricMemory` may stay on beside it (their
weights are config fields; the image term is ``image_weight``).

Data: scenes of the world's ``train`` split with long captions in the training phrasings (nothing from
the validation or test splits, nothing in held-out phrasings). The captions' features are cached once
(:func:`~pentachora.data.text_features.build_feature_cache`), with every window's native encoding run alone
at full width — what a pipeline feeds the UNet, padding positions included.

Run folder (as :func:`~pentachora.recipes.memory.train_memory`'s, plus)::

    OUT/loudness.json   the gradient-loudness meter at the bank, at the start and at the end
    OUT/final/          a GeometricMemory (a ``memory:RUN`` encoder spec for the pipeline)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pentachora.data.scenes import SceneWorld
from pentachora.data.segmenter import Segmenter
from pentachora.data.text_features import FeatureCache, build_feature_cache
from pentachora.errors import ConfigError
from pentachora.io import CheckpointError, atomic_save_tensors, atomic_write_json, load_tensors
from pentachora.memory.model import LOSS_WEIGHTS, GeometricMemory, MemoryConfig, native_window_sequences
from pentachora.nn.text_encoder import FrozenTextEncoder
from pentachora.recipes.loading import FINAL_DIR
from pentachora.recipes.memory import load_encoders, loss_gradient_norms
from pentachora.recipes.t2i import caption_set, token_counter
from pentachora.t2i.model import MiniT2I
from pentachora.training import TrainConfig, Trainer, TrainResult, read_metrics
from pentachora.training.state import is_main_process, run_folder_lock

__all__ = [
    "ImageMemoryRun",
    "SceneCaptionData",
    "SceneCaptionSource",
    "UNetConsumer",
    "gradient_loudness",
    "image_validation_loss",
    "memory_for_consumer",
    "memory_from_run",
    "prepare_scene_caption_data",
    "scene_caption_splits",
    "train_memory_through_unet",
]

logger = logging.getLogger(__name__)

NATIVE_FILE = "native-windows.safetensors"


# ============================================================================================ consumer
class UNetConsumer:
    """The frozen MiniT2I as a consumer of a memory's output (:meth:`GeometricMemory.attach_consumer`).

    ``consumer(conditioning (B, L, H), mask (B, L) | None, batch)`` returns the UNet's denoising loss on
    ``batch["pixel_values"]`` conditioned on ``conditioning``; positions outside ``mask`` (absent windows
    of shorter prompts in a 77·k batch) are replaced by the empty prompt's encoding, as the pipeline pads.
    Gradients reach the conditioning only: the UNet is frozen and in eval mode.

    Args:
        model: A trained :class:`MiniT2I` (its stored empty-prompt embedding is used for padding).
        ema: Denoise with the averaged weights (what sampling uses; the default).
    """

    def __init__(self, model: MiniT2I, ema: bool = True) -> None:
        self.model = model.eval().requires_grad_(False)
        self.ema = ema

    def __call__(
        self, conditioning: torch.Tensor, mask: torch.Tensor | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        model = self.model
        if model.null_embedding.device != conditioning.device:
            model.to(conditioning.device)
        states = conditioning
        if mask is not None:
            w = model.config.encoder_window
            k = states.shape[1] // w
            pad = model.null_embedding.to(states.dtype).repeat(k, 1).unsqueeze(0)
            states = torch.where(mask.bool().unsqueeze(-1), states, pad)
        x0 = model.to_latent(batch["pixel_values"].to(conditioning.device))
        loss, _ = model.denoising_loss(x0, states, ema=self.ema)
        return loss


# ============================================================================================ data
@dataclass
class SceneCaptionData:
    """Long captions of world scenes with their images and cached encoder features.

    Attributes:
        cache: Feature cache of the captions (states, masks, teacher, first-window target).
        native: ``(n_segments, W, H)`` float16, every window encoded alone at full width.
        images: ``(N, 3, S, S)`` uint8 renders of the scenes.
        captions: The caption texts.
        split: World split the scenes come from.
    """

    cache: FeatureCache
    native: torch.Tensor
    images: torch.Tensor
    captions: list[str]
    split: str

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, idx: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """The memory's training batch for documents ``idx`` plus ``native (B, S, W, H)`` and
        ``pixel_values (B, 3, S, S)`` in [0, 1]."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        out = self.cache.batch(idx)
        b, s = out["segment_mask"].shape
        w, h = self.native.shape[1:]
        native = torch.zeros(b, s, w, h)
        for r, i in enumerate(idx.tolist()):
            a, e = int(self.cache.seg_offsets[i]), int(self.cache.seg_offsets[i + 1])
            native[r, : e - a] = self.native[a:e].float()
        out["native"] = native
        out["pixel_values"] = self.images[idx].float() / 255.0
        return out

    def describe(self) -> dict[str, Any]:
        return {"split": self.split, "captions": len(self.captions), "segments": int(self.native.shape[0]),
                "cache_key": self.cache.key}  # fmt: skip


def _native_windows(cache: FeatureCache, texts: Sequence[str], encoder: FrozenTextEncoder,
                    segmenter: Segmenter, progress: bool = True) -> torch.Tensor:  # fmt: skip
    """Every window of every text encoded alone, ``(n_segments, W, H)`` float16, cached beside ``cache``."""
    path = cache.path / NATIVE_FILE
    if path.is_file():
        try:
            t = load_tensors(path)
            if t["native"].shape[0] == int(cache.seg_offsets[-1]) and torch.equal(
                t["seg_counts"], cache.tensors["seg_counts"].long()
            ):
                return t["native"]
        except (CheckpointError, KeyError) as exc:
            logger.warning("ignoring unreadable %s (%s)", path, exc)
    from tqdm.auto import tqdm

    parts = []
    starts = range(0, len(texts), 64)
    for start in tqdm(starts, desc="native windows", unit="batch", disable=not progress):
        part = segmenter(list(texts[start : start + 64]))
        seqs = native_window_sequences(encoder, part)  # (b, S, W, H)
        for row in range(seqs.shape[0]):
            parts.append(seqs[row, : int(part.n_segments[row])].half())
    native = torch.cat(parts)
    if native.shape[0] != int(cache.seg_offsets[-1]):
        raise CheckpointError(
            f"{cache.path}: {native.shape[0]} native windows for {int(cache.seg_offsets[-1])} cached"
        )
    atomic_save_tensors(path, {"native": native, "seg_counts": cache.tensors["seg_counts"].long()})
    return native


def prepare_scene_caption_data(
    world: SceneWorld,
    config: MemoryConfig,
    n: int,
    split: str = "train",
    encoders: tuple[FrozenTextEncoder, FrozenTextEncoder] | None = None,
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> SceneCaptionData:
    """``n`` scenes of ``split`` with long captions (training phrasings), their renders and features.

    Raises:
        ConfigError: ``n < 2`` or an unknown split.
    """
    if n < 2:
        raise ConfigError(f"need at least 2 captioned scenes, got {n}")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    encoder, teacher = encoders or load_encoders(config)
    pairs = caption_set(world, split, n, "long", token_counter(encoder))
    scenes, texts = [p[0] for p in pairs], [p[1].text for p in pairs]
    segmenter = Segmenter(encoder, config.max_tokens, config.overlap)
    cache = build_feature_cache(texts, encoder, teacher, segmenter, root=cache_root, split=f"scenes-{split}",
                                teacher_max_length=config.teacher_max_length, progress=progress)  # fmt: skip
    native = _native_windows(cache, texts, encoder, segmenter, progress)
    images = torch.from_numpy(np.round(world.render_batch(scenes) * 255).astype(np.uint8))
    return SceneCaptionData(cache=cache, native=native, images=images, captions=texts, split=split)


class SceneCaptionSource:
    """Training batches from :class:`SceneCaptionData`: a pure function of (seed, step), epoch by epoch
    without replacement (as :class:`~pentachora.data.text_features.CachedDocumentSource`)."""

    def __init__(self, data: SceneCaptionData, batch_size: int, seed: int = 0) -> None:
        from pentachora.data.text_features import CachedDocumentSource

        self.data = data
        self.docs = CachedDocumentSource(data.cache, batch_size, seed=seed)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return self.data.batch(self.docs.indices(step))


# ============================================================================================ models
def memory_from_run(
    path: str | os.PathLike | None,
    overrides: dict[str, Any],
    preset: str = "minilm-tiny-image",
    reinit: Sequence[str] = (),
    seed: int = 0,
) -> GeometricMemory:
    """A memory to train: a trained run's weights under its config with ``overrides`` (``path``), or a
    fresh ``preset``; parameters under the ``reinit`` prefixes are re-initialised (seeded).

    Raises:
        ConfigError: Overrides that change a parameter's shape, or an unknown ``reinit`` prefix.
    """
    from pentachora.recipes.memory import load_memory_model

    torch.manual_seed(seed)
    if path is None:
        return GeometricMemory(MemoryConfig.preset(preset, **overrides))
    trained = load_memory_model(path)
    config = dataclasses.replace(trained.config, **overrides)
    model = GeometricMemory(config)
    try:
        missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise ConfigError(f"overrides {sorted(overrides)} change the model's parameters: {exc}") from None
    if unexpected or missing:
        raise ConfigError(f"overrides {sorted(overrides)} change the model's parameters: missing {missing}, "
                          f"unexpected {unexpected}")  # fmt: skip
    if reinit:
        torch.manual_seed(seed + 1)
        fresh = GeometricMemory(config).state_dict()
        names = [k for k in fresh if k.startswith(tuple(reinit))]
        if not names:
            raise ConfigError(f"no parameters under {list(reinit)}")
        model.load_state_dict({k: fresh[k] for k in names}, strict=False)
    return model


@torch.no_grad()
def memory_for_consumer(
    path: str | os.PathLike | None,
    overrides: dict[str, Any],
    preset: str = "minilm-tiny-image",
    reinit: Sequence[str] = (),
    seed: int = 0,
    text_losses: bool = True,
) -> GeometricMemory:
    """:func:`memory_from_run` for consumer-in-the-loop training: the UNet's loss weighs 1 unless
    ``overrides`` say otherwise, and without ``text_losses`` every text objective weighs 0.

    Raises:
        ConfigError: an invalid config, or ``image_weight`` ≤ 0 (the UNet's loss would not count).
    """
    if not text_losses:
        overrides = {**{k: 0.0 for k in LOSS_WEIGHTS if k != "image_weight"}, **overrides}
    overrides = {"image_weight": 1.0, **overrides}
    try:
        memory = memory_from_run(path, overrides, preset=preset, reinit=reinit, seed=seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"MemoryConfig: {exc}") from exc
    if memory.config.image_weight <= 0:
        raise ConfigError("consumer-in-the-loop training needs image_weight > 0 (it weighs the UNet's loss)")
    return memory


def scene_caption_splits(
    t2i: MiniT2I, config: MemoryConfig, captions: int, val_captions: int
) -> tuple[SceneCaptionData, SceneCaptionData, tuple[FrozenTextEncoder, FrozenTextEncoder]]:
    """The training and validation scenes of ``t2i``'s world with their long captions encoded for a
    memory of ``config``, and the frozen (student, teacher) encoders that encoded them."""
    world = SceneWorld(t2i.config.world)
    encoders = load_encoders(config)
    train_data = prepare_scene_caption_data(world, config, captions, "train", encoders=encoders)
    val_data = prepare_scene_caption_data(world, config, val_captions, "val", encoders=encoders)
    return train_data, val_data, encoders


def image_validation_loss(
    model: GeometricMemory,
    consumer: UNetConsumer,
    data: SceneCaptionData,
    repeats: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    references: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """The consumer's denoising loss on ``data`` for the memory's output (``image_val``) and for the
    native windows it starts from (``image_val_native``: the first window for a sequence consumer,
    every window concatenated for a chunk consumer), with the same noise and timesteps (``seed``), and
    the gain ``native − memory`` (> 0: the memory's conditioning explains the images better).

    Args:
        references: Other conditionings ``name → (N, L, H)`` aligned with ``data`` (e.g. the same scenes
            told tersely in one window), scored with the same noise as ``image_val_<name>``.

    The global torch RNG is restored afterwards.
    """
    was = model.training
    model.eval()
    chunks = model.config.consumer_output == "chunks"
    references = references or {}
    for name, ref in references.items():
        if ref.shape[0] != len(data):
            raise ValueError(f"reference {name!r} has {ref.shape[0]} rows for {len(data)} scenes")
    sums = {"image_val": 0.0, "image_val_native": 0.0, **{f"image_val_{k}": 0.0 for k in references}}
    count = 0
    rng = torch.get_rng_state()
    try:
        for rep in range(repeats):
            for start in range(0, len(data), batch_size):
                batch = data.batch(torch.arange(start, min(len(data), start + batch_size)))
                inputs = {k: batch[k] for k in ("states", "attention_mask", "segment_mask", "native")}
                out = model(inputs)
                b, s, w, h = batch["native"].shape
                if chunks:
                    mask = out.chunk_mask
                    pairs = ((out.chunks, mask), (batch["native"].reshape(b, s * w, h), mask))
                else:
                    pairs = ((out.sequence, None), (batch["native"][:, 0], None))
                rows = slice(start, start + b)
                pairs = (*pairs, *((ref[rows].float(), None) for ref in references.values()))
                for name, (cond, mask) in zip(sums, pairs, strict=True):
                    torch.manual_seed(seed + 1000 * rep + start)  # same noise and timesteps for both
                    sums[name] += float(consumer(cond, mask, batch)) * b
                count += b
    finally:
        torch.set_rng_state(rng)
        model.train(was)
    res = {k: v / count for k, v in sums.items()}
    res["image_val_gain"] = res["image_val_native"] - res["image_val"]
    return res


def gradient_loudness(
    model: GeometricMemory, batch: dict[str, torch.Tensor], seed: int = 0
) -> dict[str, dict[str, float]]:
    """The gradient-loudness meter at the bank (:func:`~pentachora.recipes.memory.loss_gradient_norms`)
    on one batch: ``weighted`` (each term as trained, terms at weight 0 left out) and ``unit`` (every
    term at weight 1, image included: how loud each objective is by itself). Seeded (noise, timesteps)."""
    from pentachora.memory.model import LOSS_WEIGHTS

    weights = dict(model.loss_weights)
    torch.manual_seed(seed)
    weighted = loss_gradient_norms(model, batch)
    try:
        model.set_loss_weights(**{k: 1.0 for k in LOSS_WEIGHTS})
        torch.manual_seed(seed)
        unit = loss_gradient_norms(model, batch)
    finally:
        model.set_loss_weights(**weights)
    return {"weighted": weighted, "unit": unit}


@dataclass
class ImageMemoryRun:
    """Outcome of :func:`train_memory_through_unet`."""

    model: GeometricMemory
    result: TrainResult
    evaluation: dict[str, float]
    loudness: dict[str, dict[str, float]]
    out_dir: Path | None
    metrics: list[dict[str, Any]]


def train_memory_through_unet(
    model: GeometricMemory,
    t2i: MiniT2I,
    train: SceneCaptionData,
    val: SceneCaptionData,
    train_config: TrainConfig,
    encoder: FrozenTextEncoder | None = None,
    run_data: dict[str, Any] | None = None,
    resume: bool | str | os.PathLike = True,
    fresh: bool = False,
) -> ImageMemoryRun:
    """Train ``model`` with the frozen ``t2i``'s denoising loss in the loop (see the module docstring).

    Every ``eval_every`` steps and at the end: the validation denoising loss of the memory against its
    truncation baseline (:func:`image_validation_loss`). The gradient-loudness meter
    (:func:`~pentachora.recipes.memory.loss_gradient_norms`, image term included) is read on one
    training batch before and after training and written to ``OUT/loudness.json``.

    Raises:
        ConfigError: ``image_weight`` is 0, or the memory and the T2I model disagree on the encoder.
    """
    c = model.config
    if c.image_weight <= 0:
        raise ConfigError("consumer-in-the-loop training needs image_weight > 0 (--set image_weight=1)")
    if t2i.config.cross_attention_dim != c.hidden_size or t2i.config.encoder_window != c.window:
        raise ConfigError(
            f"the T2I model reads ({t2i.config.encoder_window}, {t2i.config.cross_attention_dim}) states; the "
            f"memory writes ({c.window}, {c.hidden_size})"
        )
    if not t2i.has_null_embedding:
        raise ConfigError("the T2I model has no stored empty-prompt embedding (is it a trained run?)")
    if encoder is not None:
        model.attach_encoder(encoder)
    consumer = UNetConsumer(t2i)
    model.attach_consumer(consumer)
    source = SceneCaptionSource(train, train_config.batch_size, seed=train_config.seed)
    probe = train.batch(torch.arange(min(len(train), train_config.batch_size)))
    loud_start = gradient_loudness(model, probe, train_config.seed)

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        return image_validation_loss(m, consumer, val)  # type: ignore[arg-type]

    out_dir = Path(train_config.out_dir) if train_config.out_dir else None
    data = {**(run_data or {}), "train": train.describe(), "val": val.describe()}
    groups = model.param_groups(train_config.lr, train_config.weight_decay)
    trainer = Trainer(model, train_config, source, eval_fn=eval_fn, param_groups=groups, run_data=data)
    lock = run_folder_lock(out_dir, enabled=is_main_process()) if out_dir is not None else nullcontext()
    with lock:
        result = trainer.fit(resume=resume, fresh=fresh)
        trained: GeometricMemory = trainer.unwrapped_model.to("cpu")  # type: ignore[assignment]
        for p in trained.parameters():
            p.requires_grad_(True)
        loud_end = gradient_loudness(trained, probe, train_config.seed)
        evaluation = image_validation_loss(trained, consumer, val)
        evaluation.update(train_steps=float(result.steps), train_wall_s=float(result.wall_time_s),
                          nonfinite_steps=float(result.nonfinite_steps))  # fmt: skip
        loudness = {"start": loud_start, "end": loud_end}
        metrics: list[dict[str, Any]] = []
        if out_dir is not None:
            trained.attach_consumer(None)
            trained.save_pretrained(out_dir / FINAL_DIR)
            atomic_write_json(out_dir / "eval.json", evaluation)
            atomic_write_json(out_dir / "loudness.json", loudness)
            metrics = read_metrics(out_dir / "metrics.jsonl")
    logger.info("validation denoising loss %.4f (truncation %.4f); loudness at the bank: %s",
                evaluation["image_val"], evaluation["image_val_native"],
                {k: round(v, 4) for k, v in loud_end["weighted"].items() if math.isfinite(v)})  # fmt: skip
    return ImageMemoryRun(model=trained, result=result, evaluation=evaluation, loudness=loudness,
                          out_dir=out_dir, metrics=metrics)  # fmt: skip

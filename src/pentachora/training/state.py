"""Trainer checkpoints: atomic folders of safetensors + JSON (never pickle, never ``torch.save``).

Layout of a run folder written by :class:`~pentachora.training.Trainer`::

    OUT/train_config.json                 resolved TrainConfig (+ run facts), written at start
    OUT/model_config.json                 {"model_type", "pentachora_version", "config"} of the model
    OUT/metrics.jsonl                     one JSON record per logged step / evaluation
    OUT/tensorboard/                      TensorBoard event files (when tensorboard is installed)
    OUT/checkpoints/latest                text file: the name of the newest complete checkpoint
    OUT/checkpoints/step-0000500/
        config.json                       model config (``PentachoraModel.save_pretrained``)
        model.safetensors                 model weights
        optimizer.safetensors             optimizer + LR-scheduler state: tensors by path, and the
                                          JSON structure in the safetensors metadata ("structure")
        trainer_state.json                step, counters, callback states, seeding scheme, config

A checkpoint folder is first written under a temporary name (``.tmp-step-…``) and moved into place
with :func:`os.replace`, so a crash leaves either no folder or a complete one. Loading reads every
file into memory *before* anything is applied to a model; a folder that is incomplete or corrupt is
skipped with a warning and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pentachora.io import (
    CheckpointError,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    read_json,
    read_tensor_metadata,
)
from pentachora.modeling import CONFIG_NAME, WEIGHTS_NAME, PentachoraModel, config_to_dict

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
LATEST_NAME = "latest"
OPTIMIZER_FORMAT = "pentachora-optimizer-v1"
CHECKPOINT_FILES: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME, TRAINER_STATE_NAME)
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------------------- flatten / unflatten
def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into tensors + JSON.

    Every tensor is replaced by ``{"__tensor__": name}`` where ``name`` is its path (``/``-joined);
    dicts become ``{"__dict__": [[key, value], ...]}`` so integer keys (optimizer state ids) survive;
    tuples become ``{"__tuple__": [...]}``; non-finite floats become ``{"__float__": "nan"|"inf"|"-inf"}``.

    Args:
        obj: The nested state, e.g. ``optimizer.state_dict()``.
        prefix: Path prefix of the tensor names.

    Returns:
        ``(tensors, structure)``: a flat ``name -> tensor`` dict and a JSON-serialisable structure.

    Raises:
        TypeError: a value of another type (e.g. a function) that cannot be stored without pickle.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return {"__tensor__": path}
        if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, Mapping):
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"state key {k!r} at {path or '/'} is not a str or int")
                items.append([k, enc(v, f"{path}/{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(value, (list, tuple)):
            seq = [enc(v, f"{path}/{i}" if path else str(i)) for i, v in enumerate(value)]
            return {"__tuple__": seq} if isinstance(value, tuple) else seq
        raise TypeError(
            f"cannot store {type(value).__name__} at {path or '/'} without pickle "
            "(only tensors, numbers, strings, None, lists, tuples and dicts)"
        )

    structure = enc(obj, prefix)
    return tensors, structure


def unflatten_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Invert :func:`flatten_state`.

    Raises:
        CheckpointError: the structure names a tensor that is missing or has an unknown marker.
    """

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if isinstance(value, dict):
            if "__tensor__" in value:
                name = value["__tensor__"]
                if name not in tensors:
                    raise CheckpointError(f"optimizer state names tensor {name!r}, which is missing")
                return tensors[name]
            if "__dict__" in value:
                return {k: dec(v) for k, v in value["__dict__"]}
            if "__tuple__" in value:
                return tuple(dec(v) for v in value["__tuple__"])
            if "__float__" in value:
                return float(value["__float__"])
            raise CheckpointError(f"unknown marker in optimizer state structure: {sorted(value)}")
        return value

    return dec(structure)


def save_optimizer_state(
    path: str | os.PathLike, optimizer_state: Mapping[str, Any], scheduler_state: Mapping[str, Any] | None
) -> None:
    """Write optimizer (and LR-scheduler) state dicts to one safetensors file, atomically.

    Tensors are stored under their paths (``optimizer/state/0/exp_avg``); everything else goes into
    the metadata entry ``"structure"`` as JSON.
    """
    tensors, structure = flatten_state({"optimizer": optimizer_state, "scheduler": scheduler_state})
    atomic_save_tensors(
        path, tensors, metadata={"format": OPTIMIZER_FORMAT, "structure": json.dumps(structure)}
    )


def load_optimizer_state(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read a file written by :func:`save_optimizer_state`.

    Returns:
        ``(optimizer_state_dict, scheduler_state_dict_or_None)``.

    Raises:
        CheckpointError: missing/corrupt file, or not a pentachora optimizer file.
    """
    meta = read_tensor_metadata(path)
    if meta.get("format") != OPTIMIZER_FORMAT or "structure" not in meta:
        raise CheckpointError(
            f"{path} is not a pentachora optimizer-state file (format {meta.get('format')!r})"
        )
    try:
        structure = json.loads(meta["structure"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: optimizer state structure is not valid JSON ({exc})") from exc
    state = unflatten_state(structure, load_tensors(path, device=device))
    if not isinstance(state, dict) or "optimizer" not in state:
        raise CheckpointError(f"{path}: optimizer state structure lacks the 'optimizer' entry")
    return state["optimizer"], state.get("scheduler")


# ----------------------------------------------------------------------------- checkpoint folders
def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` steps: ``step-0000500``."""
    return f"step-{int(step):07d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step encoded in a checkpoint folder name, or ``None`` if it is not one."""
    match = _STEP_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def write_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    model: PentachoraModel,
    trainer_state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any],
    scheduler_state: Mapping[str, Any] | None,
) -> Path:
    """Write ``checkpoints_dir/step-XXXXXXX`` atomically and point ``latest`` at it.

    Args:
        checkpoints_dir: The ``OUT/checkpoints`` folder (created if needed).
        step: Steps completed.
        model: The (unwrapped) model; saved with its ``save_pretrained``.
        trainer_state: JSON-able trainer state (written as ``trainer_state.json``; ``step`` added).
        optimizer_state: ``optimizer.state_dict()``.
        scheduler_state: ``scheduler.state_dict()`` or ``None``.

    Returns:
        The final checkpoint folder.
    """
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=checkpoints_dir))
    try:
        model.save_pretrained(tmp)
        save_optimizer_state(tmp / OPTIMIZER_NAME, optimizer_state, scheduler_state)
        # trainer_state.json last: its presence (with the right step) marks the folder complete.
        atomic_write_json(tmp / TRAINER_STATE_NAME, {**trainer_state, "step": int(step)})
        if final.exists():  # e.g. the same step saved again after a resume: swap, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-{final.name}-", dir=checkpoints_dir))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(checkpoints_dir)
    atomic_write_text(checkpoints_dir / LATEST_NAME, final.name + "\n")
    return final


def _fsync_dir(path: Path) -> None:
    """Best-effort fsync of a directory entry (POSIX) so a rename survives a power cut."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_folders(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``step-*`` folders under ``out_dir/checkpoints`` (complete or not), oldest first."""
    ckdir = Path(out_dir) / CHECKPOINTS_DIR
    if not ckdir.is_dir():
        return []
    found = []
    for child in ckdir.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir():
            found.append((step, child))
    return sorted(found)


def stale_temp_folders(out_dir: str | os.PathLike) -> list[Path]:
    """Leftover ``.tmp-*`` folders under ``out_dir/checkpoints`` (from an interrupted save)."""
    ckdir = Path(out_dir) / CHECKPOINTS_DIR
    if not ckdir.is_dir():
        return []
    return sorted(p for p in ckdir.iterdir() if p.name.startswith(_TMP_PREFIX) and p.is_dir())


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap check: every file present and ``trainer_state.json`` names the folder's step."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        state = read_json(path / TRAINER_STATE_NAME)
    except CheckpointError:
        return False
    return isinstance(state, dict) and state.get("step") == step


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run (``None`` if there is none).

    The highest complete ``step-*`` folder wins; the ``latest`` pointer file is only a convenience
    for people and tools (it can lag behind by one save after a crash).
    """
    for _, path in reversed(checkpoint_folders(out_dir)):
        if is_complete_checkpoint(path):
            return path
    return None


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoint folders (``keep=0`` keeps all).

    Returns:
        The deleted folders.
    """
    if keep <= 0:
        return []
    complete = [p for _, p in checkpoint_folders(out_dir) if is_complete_checkpoint(p)]
    doomed = complete[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


@dataclasses.dataclass
class LoadedCheckpoint:
    """Everything in one checkpoint folder, read into memory (nothing applied yet).

    Attributes:
        path: The folder.
        step: Steps completed when it was written.
        model_meta: The parsed ``config.json`` (``model_type``, ``config``, version).
        model_state: The model's state dict.
        trainer_state: The parsed ``trainer_state.json``.
        optimizer_state: The optimizer's state dict.
        scheduler_state: The LR scheduler's state dict (or ``None``).
    """

    path: Path
    step: int
    model_meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint folder completely into memory (CPU tensors).

    Raises:
        CheckpointError: a missing file, unreadable JSON/safetensors, or inconsistent contents.
    """
    path = Path(path)
    step = checkpoint_step(path)
    if step is None:
        raise CheckpointError(f"{path} is not a checkpoint folder (expected a name like step-0000100)")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    trainer_state = read_json(path / TRAINER_STATE_NAME)
    if not isinstance(trainer_state, dict) or trainer_state.get("step") != step:
        raise CheckpointError(f"{path / TRAINER_STATE_NAME} does not describe step {step}")
    meta = read_json(path / CONFIG_NAME)
    if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
        raise CheckpointError(f"{path / CONFIG_NAME} is not a pentachora model config")
    model_state = load_tensors(path / WEIGHTS_NAME)
    optimizer_state, scheduler_state = load_optimizer_state(path / OPTIMIZER_NAME)
    return LoadedCheckpoint(path, step, meta, model_state, trainer_state, optimizer_state, scheduler_state)


def find_resumable_checkpoint(out_dir: str | os.PathLike, warn: bool = True) -> LoadedCheckpoint | None:
    """Read the newest checkpoint of ``out_dir`` that loads completely, warning about the others.

    Stale temporary folders and incomplete or corrupt ``step-*`` folders are skipped with a warning
    (never half-loaded). Returns ``None`` when there is no usable checkpoint.

    Args:
        out_dir: The run folder.
        warn: Log the skipped folders (the trainer passes ``False`` on non-main processes).
    """
    log = logger.warning if warn else logger.debug
    for tmp in stale_temp_folders(out_dir):
        log("ignoring stale temporary checkpoint folder %s (an interrupted save)", tmp)
    for _, path in reversed(checkpoint_folders(out_dir)):
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            log("skipping unusable checkpoint %s: %s", path, exc)
    return None


def _json_normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def check_model_matches(checkpoint: LoadedCheckpoint, model: PentachoraModel) -> None:
    """Refuse a checkpoint of another model type or another model config.

    Raises:
        CheckpointError: naming the checkpoint and the differing config keys.
    """
    meta = checkpoint.model_meta
    if meta["model_type"] != model.model_type:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds a {meta['model_type']!r} model, but the trainer was given "
            f"{model.model_type!r} ({type(model).__name__}); use another out_dir or resume=False"
        )
    ours = _json_normalise(config_to_dict(model.config))
    theirs = _json_normalise(meta["config"])
    if ours != theirs:
        keys = sorted(set(ours) | set(theirs))
        diff = [
            f"{k}: checkpoint {theirs.get(k, '<absent>')!r} vs model {ours.get(k, '<absent>')!r}"
            for k in keys
            if ours.get(k, "<absent>") != theirs.get(k, "<absent>")
        ]
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was written for a different {model.model_type!r} config "
            f"({'; '.join(diff[:6])}); use another out_dir or resume=False"
        )

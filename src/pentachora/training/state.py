"""Trainer checkpoints: atomic folders of safetensors + JSON (never pickle, never ``torch.save``).

Layout of a run folder written by :class:`~pentachora.training.Trainer`::

    OUT/.lock                             exclusive lock of the running training (holds its pid)
    OUT/train_config.json                 resolved TrainConfig, written once the run is accepted
    OUT/model_config.json                 {"model_type", "pentachora_version", "config"} of the model
    OUT/data.json                         what the run trains on (``Trainer(run_data=...)``), if given
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
skipped with a warning and the next older one is tried. When the trainer resumes from an older one,
the unreadable folders are renamed ``unreadable-step-…`` so that nothing overwrites or prunes them.

A running training holds ``OUT/.lock`` (:func:`run_folder_lock`); a second one on the same folder
fails at once with :class:`~pentachora.errors.RunFolderError`.
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from pentachora.errors import RunFolderError
from pentachora.io import (
    CheckpointError,
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    file_mode,
    load_tensors,
    loads_json,
    make_temp_dir,
    read_json,
    read_tensor_metadata,
)
from pentachora.modeling import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PentachoraModel,
    config_to_dict,
    nonfinite_tensor,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINTS_DIR = "checkpoints"
#: The folder inside a run folder that holds the trained model.
FINAL_DIR = "final"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
LATEST_NAME = "latest"
OPTIMIZER_FORMAT = "pentachora-optimizer-v1"
CHECKPOINT_FILES: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME, TRAINER_STATE_NAME)
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
UNREADABLE_PREFIX = "unreadable-"
LOCK_NAME = ".lock"
#: What a run writes into its folder; any of these means the folder holds an earlier run.
RUN_ARTIFACTS: tuple[str, ...] = (
    "train_config.json",
    "model_config.json",
    "data.json",
    "metrics.jsonl",
    "eval.json",
    "final",
    CHECKPOINTS_DIR,
    "tensorboard",
)
#: What recipes and commands derive from a run's results into its folder (pictures, reports): moved
#: aside with the run by ``--fresh`` (a new run must not show the old run's pictures), never written
#: through a link, but not themselves a run to resume.
RUN_OUTPUTS: tuple[str, ...] = (
    "curves.png",
    "reconstructions.png",
    "aligners.json",
    "caches.json",
    "loudness.json",
    "convergence.json",
    "diagnostics_convergence.json",
    "audit",
)
#: Artifacts that are finished or resumable work (a rerun must not silently replace them).
FINISHED_ARTIFACTS: tuple[str, ...] = ("final", "eval.json")
#: Temporary files of :mod:`pentachora.io` atomic writes: ``.NAME.XXXXXXXX.tmp``.
_TMP_FILE_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


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
        structure = loads_json(meta["structure"])
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
    tmp = make_temp_dir(f"{_TMP_PREFIX}{final.name}-", checkpoints_dir)
    try:
        model.save_pretrained(tmp)
        save_optimizer_state(tmp / OPTIMIZER_NAME, optimizer_state, scheduler_state)
        # trainer_state.json last: its presence (with the right step) marks the folder complete.
        atomic_write_json(tmp / TRAINER_STATE_NAME, {**trainer_state, "step": int(step)})
        if final.exists():  # e.g. the same step saved again after a resume: swap, then delete the old one
            old = make_temp_dir(f"{_TMP_PREFIX}old-{final.name}-", checkpoints_dir)
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
    check_trainer_state(trainer_state, path / TRAINER_STATE_NAME)
    meta = read_json(path / CONFIG_NAME)
    if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
        raise CheckpointError(f"{path / CONFIG_NAME} is not a pentachora model config")
    if not isinstance(meta["model_type"], str) or not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path / CONFIG_NAME}: 'model_type' must be a string and 'config' an object")
    model_state = load_tensors(path / WEIGHTS_NAME)
    bad = nonfinite_tensor(model_state)
    if bad is not None:
        raise CheckpointError(f"{path / WEIGHTS_NAME}: tensor {bad!r} holds NaN or infinite values")
    optimizer_state, scheduler_state = load_optimizer_state(path / OPTIMIZER_NAME)
    _check_optimizer_state(optimizer_state, path / OPTIMIZER_NAME)
    world = trainer_state.get("seeding", {}).get("world_size")
    _check_scheduler_state(scheduler_state, step, world, path / OPTIMIZER_NAME)
    return LoadedCheckpoint(path, step, meta, model_state, trainer_state, optimizer_state, scheduler_state)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_state(state: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse a ``trainer_state.json`` that parses but is not what the trainer wrote.

    Raises:
        CheckpointError: a counter that is not a non-negative integer, a non-numeric ``elapsed_s``,
            ``callbacks`` / ``metrics`` / ``eval_metrics`` / ``train_config`` / ``seeding`` that are
            not objects, or a non-integer seed.
    """
    problems = []
    if state.get("last_eval_step") is not None and not (
        _is_int(state["last_eval_step"]) and state["last_eval_step"] >= 0
    ):
        problems.append(
            f"last_eval_step must be a non-negative integer or null, got {state['last_eval_step']!r}"
        )
    for key in ("step", "nonfinite_steps", "nonfinite_in_row"):
        if key in state and not (_is_int(state[key]) and state[key] >= 0):
            problems.append(f"{key} must be a non-negative integer, got {state[key]!r}")
    elapsed = state.get("elapsed_s", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed):
        problems.append(f"elapsed_s must be a finite number, got {elapsed!r}")
    for key in ("callbacks", "metrics", "eval_metrics", "train_config", "seeding"):
        if key in state and not isinstance(state[key], dict):
            problems.append(f"{key} must be an object, got {type(state[key]).__name__}")
    callbacks = state.get("callbacks", {})
    if isinstance(callbacks, dict):
        for key, value in callbacks.items():
            if not isinstance(value, dict):
                problems.append(f"callbacks[{key!r}] must be an object, got {type(value).__name__}")
    for key in ("metrics", "eval_metrics"):
        values = state.get(key, {})
        if isinstance(values, dict):
            for name, v in values.items():
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, str))):
                    problems.append(f"{key}[{name!r}] must be a number, got {type(v).__name__}")
    seeding = state.get("seeding", {})
    if isinstance(seeding, dict):
        if "seed" in seeding and not _is_int(seeding["seed"]):
            problems.append(f"seeding.seed must be an integer, got {seeding['seed']!r}")
        if "world_size" in seeding and not (_is_int(seeding["world_size"]) and seeding["world_size"] >= 1):
            problems.append(f"seeding.world_size must be a positive integer, got {seeding['world_size']!r}")
    if "run_data" in state and not isinstance(state["run_data"], (dict, type(None))):
        problems.append(f"run_data must be an object, got {type(state['run_data']).__name__}")
    if isinstance(callbacks, dict):
        bad = _nonfinite_number(callbacks, "callbacks")
        if bad is not None:  # an EMA or a loss weight the trainer would carry on with
            problems.append(f"{bad} is not a finite number")
    if problems:
        raise CheckpointError(f"{source} is not a valid trainer state: " + "; ".join(problems[:4]))


def _nonfinite_number(obj: Any, path: str) -> str | None:
    """The path of the first NaN or infinite number inside a JSON value (``None`` if there is none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _nonfinite_number(value, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def _finite_at_least(value: Any, low: float, strict: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > low if strict else value >= low


def _check_param_group(group: Mapping[str, Any], index: int, source: Path) -> None:
    """Hyperparameters of one optimizer param group: what the trainer wrote is always in range."""
    problems = []
    for key in ("lr", "initial_lr", "weight_decay", "momentum", "dampening"):
        if key in group and group[key] is not None and not _finite_at_least(group[key], 0.0):
            problems.append(f"{key} must be a finite number >= 0, got {group[key]!r}")
    if "eps" in group and group["eps"] is not None and not _finite_at_least(group["eps"], 0.0, strict=True):
        problems.append(f"eps must be a finite number > 0, got {group['eps']!r}")
    betas = group.get("betas")
    if betas is not None and not (
        isinstance(betas, (list, tuple)) and all(_finite_at_least(b, 0.0) and b < 1 for b in betas)
    ):
        problems.append(f"betas must be numbers in [0, 1), got {betas!r}")
    if problems:
        raise CheckpointError(f"{source}: optimizer param group {index}: " + "; ".join(problems))


def _check_scheduler_state(state: Any, step: int, world_size: Any, source: Path) -> None:
    """The LR scheduler's position must be the checkpoint's step (the trainer steps it once per step)
    and its base rates finite, else a resumed run silently trains on another schedule."""
    if state is None:
        return
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: the scheduler state is not an object")
    last = state.get("last_epoch", step)
    if not (_is_int(last) and last >= 0):
        raise CheckpointError(f"{source}: scheduler last_epoch must be a non-negative integer, got {last!r}")
    if world_size in (None, 1) and last != step:
        raise CheckpointError(f"{source}: the scheduler is at step {last}, the checkpoint at step {step}")
    for key in ("base_lrs", "_last_lr"):
        values = state.get(key, [])
        if not isinstance(values, list) or not all(_finite_at_least(v, 0.0) for v in values):
            raise CheckpointError(f"{source}: scheduler {key} must be finite rates >= 0, got {values!r}")


def _check_optimizer_state(state: Any, source: Path) -> None:
    """Structure of an optimizer state dict (``state`` object, ``param_groups`` list) and finite
    moment tensors (the trainer never steps on a non-finite gradient, so they always are)."""
    if not isinstance(state, dict) or not isinstance(state.get("state", {}), dict):
        raise CheckpointError(f"{source}: the optimizer state is not a state dict")
    groups = state.get("param_groups", [])
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params", []), list) for g in groups
    ):
        raise CheckpointError(f"{source}: the optimizer's param_groups are malformed")
    for index, group in enumerate(groups):
        _check_param_group(group, index, source)
    for pid, entry in state["state"].items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{source}: optimizer state of parameter {pid} is not an object")
        bad = nonfinite_tensor({str(k): v for k, v in entry.items()})
        if bad is not None:
            raise CheckpointError(
                f"{source}: optimizer state {bad!r} of parameter {pid} holds NaN or infinite values"
            )


def find_resumable_checkpoint(
    out_dir: str | os.PathLike, warn: bool = True, unreadable: list[tuple[Path, str]] | None = None
) -> LoadedCheckpoint | None:
    """Read the newest checkpoint of ``out_dir`` that loads completely, warning about the others.

    Stale temporary folders and incomplete or corrupt ``step-*`` folders are skipped with a warning
    (never half-loaded). Returns ``None`` when there is no usable checkpoint.

    Args:
        out_dir: The run folder.
        warn: Log the skipped folders (the trainer passes ``False`` on non-main processes).
        unreadable: If given, ``(folder, reason)`` of every newer folder that failed is appended.
    """
    log = logger.warning if warn else logger.debug
    for tmp in stale_temp_folders(out_dir):
        log("ignoring stale temporary checkpoint folder %s (an interrupted save)", tmp)
    for _, path in reversed(checkpoint_folders(out_dir)):
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            log("skipping unusable checkpoint %s: %s", path, exc)
            if unreadable is not None:
                unreadable.append((path, str(exc)))
    return None


def set_aside_unreadable(path: str | os.PathLike) -> Path:
    """Rename an unreadable ``step-*`` folder to ``unreadable-step-*`` (kept for inspection).

    The new name is no checkpoint name, so a resumed run never overwrites, prunes or loads it.
    """
    path = Path(path)
    target = path.with_name(UNREADABLE_PREFIX + path.name)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{UNREADABLE_PREFIX}{path.name}.{n}")
    os.replace(path, target)
    return target


def previous_run_artifacts(out_dir: str | os.PathLike) -> list[str]:
    """The names of :data:`RUN_ARTIFACTS` present in ``out_dir`` (an empty checkpoints/ folder is
    not counted)."""
    out_dir = Path(out_dir)
    found = []
    for name in RUN_ARTIFACTS:
        path = out_dir / name
        if name == CHECKPOINTS_DIR:
            if path.is_dir() and any(
                checkpoint_step(p) is not None or p.name.startswith(UNREADABLE_PREFIX) for p in path.iterdir()
            ):
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def move_run_aside(out_dir: str | os.PathLike) -> Path | None:
    """Move every earlier-run artifact of ``out_dir`` (:data:`RUN_ARTIFACTS`) and what was derived from
    it (:data:`RUN_OUTPUTS`: pictures, reports) into a new sibling ``OUT.old-YYYYmmdd-HHMMSS`` (``-2``,
    ``-3`` ... when taken); the folder itself and its lock stay. ``None`` if nothing to move.
    """
    import time

    out_dir = Path(out_dir)
    names = previous_run_artifacts(out_dir)
    ckdir = out_dir / CHECKPOINTS_DIR
    outputs = [name for name in RUN_OUTPUTS if (out_dir / name).exists() or (out_dir / name).is_symlink()]
    if not names and not ckdir.exists() and not outputs:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir.with_name(f"{out_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = out_dir.with_name(f"{out_dir.name}.old-{stamp}-{n}")
    target.mkdir(parents=True)
    for name in (*RUN_ARTIFACTS, *RUN_OUTPUTS):
        if (out_dir / name).exists() or (out_dir / name).is_symlink():
            os.replace(out_dir / name, target / name)
    _fsync_dir(out_dir)
    return target


def clean_stale_temp_files(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what interrupted writes left behind: ``.tmp-*`` folders under ``checkpoints/`` and
    ``.NAME.XXXXXXXX.tmp`` files of atomic writes in ``out_dir`` and its direct subfolders (e.g.
    ``final/``). Call it only while holding the run folder's lock (no writer is active).

    Returns:
        What was deleted.
    """
    out_dir = Path(out_dir)
    removed: list[Path] = []
    for tmp in stale_temp_folders(out_dir):
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    if not out_dir.is_dir():
        return removed
    folders = [out_dir, *(p for p in out_dir.iterdir() if p.is_dir() and not p.is_symlink())]
    for folder in folders:
        with contextlib.suppress(OSError):
            for child in folder.iterdir():
                if _TMP_FILE_RE.match(child.name) and child.is_file():
                    with contextlib.suppress(OSError):
                        child.unlink()
                        removed.append(child)
    return removed


# ----------------------------------------------------------------------------- run folder lock
_HELD_LOCKS: dict[str, list[int]] = {}  # real path -> [fd, depth]


class RunFolderExistsError(RunFolderError, FileExistsError):
    """``resume=False`` on a run folder that already holds a run (also a ``FileExistsError``)."""


def is_main_process() -> bool:
    """Whether this process writes run folders: rank 0 under ``accelerate launch`` / ``torchrun``
    (they set ``RANK``), always true in a plain process. For code that runs before a Trainer exists."""
    return os.environ.get("RANK", "0") == "0"


def check_no_links(out_dir: str | os.PathLike) -> None:
    """Refuse a run folder whose own entries (:data:`RUN_ARTIFACTS`, :data:`RUN_OUTPUTS`, the checkpoints under
    ``checkpoints/``) include a symbolic link: a run writes only inside its folder, never through a
    link to somewhere else (``tensorboard -> /elsewhere`` would fill /elsewhere).

    Raises:
        RunFolderError: naming the links.
    """
    out_dir = Path(out_dir)
    links = [out_dir / name for name in (*RUN_ARTIFACTS, *RUN_OUTPUTS) if (out_dir / name).is_symlink()]
    ckpts = out_dir / CHECKPOINTS_DIR
    if ckpts.is_dir() and not ckpts.is_symlink():
        links += [p for p in ckpts.iterdir() if p.is_symlink()]
    if links:
        shown = ", ".join(f"{p} -> {os.readlink(p)}" for p in links[:3])
        raise RunFolderError(
            f"{out_dir} holds symbolic links ({shown}); a run writes only inside its own folder — "
            "replace them with plain folders or choose another out_dir"
        )


@contextlib.contextmanager
def run_folder_lock(out_dir: str | os.PathLike, enabled: bool = True) -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``out_dir/.lock`` (``fcntl.flock``) for the block.

    Re-entrant within one process (a recipe holds it around :meth:`Trainer.fit`, which takes it
    again). The lock file holds the owner's pid; the lock dies with the process, so a killed run
    never leaves the folder locked. Without ``fcntl`` (Windows) it does nothing.

    Args:
        out_dir: The run folder (created if needed).
        enabled: ``False`` makes it a no-op (non-main processes of a distributed run).

    Raises:
        RunFolderError: another process holds the lock, or the folder's own entries include a
            symbolic link (:func:`check_no_links`).
    """
    out_dir = Path(out_dir)
    if not enabled:
        yield out_dir
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield out_dir
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out_dir)
    held = _HELD_LOCKS.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield out_dir
        finally:
            held[1] -= 1
        return
    lock_path = out_dir / LOCK_NAME
    if lock_path.is_symlink() or (lock_path.exists() and not lock_path.is_file()):
        kind = "a symbolic link" if lock_path.is_symlink() else "not a regular file"
        raise RunFolderError(
            f"{lock_path} is {kind}; a run folder's lock must be a plain file (it is truncated and "
            "rewritten) — remove it and run again"
        )
    try:  # O_NOFOLLOW: a link swapped in after the check is refused too, never written through
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), file_mode())
    except OSError as exc:
        raise RunFolderError(f"cannot open the lock file {lock_path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RunFolderError(
            f"{out_dir} is in use by another training (pid {pid}); wait for it to finish or choose "
            "another out_dir"
        ) from exc
    try:
        check_no_links(out_dir)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD_LOCKS[key] = [fd, 1]
        yield out_dir
    finally:
        _HELD_LOCKS.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _json_normalise(obj: Any) -> Any:
    return loads_json(json.dumps(obj))


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


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder behind ``path``: itself, its ``final/`` or its latest checkpoint.

    Raises:
        CheckpointError: ``path`` is none of a checkpoint folder or a run folder with a model.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / FINAL_DIR / CONFIG_NAME).is_file():
        return path / FINAL_DIR
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is not None:
        return Path(ckpt)
    raise CheckpointError(
        f"{path} is neither a checkpoint folder (config.json + model.safetensors) nor a run folder "
        f"with {FINAL_DIR}/ or checkpoints/"
    )


def load_latest(path: str | os.PathLike, load: Callable[[Path], T], attempts: int = 3) -> T:
    """``load(resolve_model_dir(path))``, safe against a live training in ``path``.

    A run that is training saves new checkpoints and prunes old ones: the checkpoint resolved a moment
    ago can be gone when it is read. When loading fails and ``path`` now resolves to another folder, it
    is resolved and loaded again (up to ``attempts`` times); a failure that is not such a race (the
    same folder still resolves) is raised as it is.

    Raises:
        CheckpointError: no model in ``path``, or one that cannot be loaded.
    """
    for attempt in range(attempts):
        folder = resolve_model_dir(path)
        try:
            return load(folder)
        except (CheckpointError, OSError):
            if attempt + 1 == attempts or not _moved_on(path, folder):
                raise
            logger.info(
                "%s was pruned while it was being read; loading the newest checkpoint instead", folder
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _moved_on(path: str | os.PathLike, folder: Path) -> bool:
    """Whether ``path`` resolves to a folder other than ``folder`` now (a newer checkpoint or final/)."""
    try:
        return resolve_model_dir(path) != folder
    except CheckpointError:
        return False

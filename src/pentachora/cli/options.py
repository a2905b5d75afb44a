"""Options shared by several commands, declared once, and the checks every command makes on its input.

Option groups
    :func:`train_options` adds the shared training options (``--steps --batch-size --lr --warmup
    --grad-clip --grad-clip-mode --weight-decay --seed --eval-every --save-every --bf16 --out``) to a
    command and hands them to its body as one :class:`TrainOptions`, whose
    :meth:`TrainOptions.train_config` turns them into a :class:`pentachora.training.TrainConfig`
    (each option names the ``TrainConfig`` field it sets, see :data:`TRAIN_OPTIONS`).
    :func:`image_data_options` does the same for ``--data --image-size --noise-per-type
    --eval-tiles`` (:class:`ImageDataOptions`). A command keeps its own defaults and help where they
    differ: ``@train_options(steps={"default": 400, "min": 1}, exclude=("bf16",))``.

Input checks (each raises a :mod:`pentachora.errors` type with a one-line message)
    :func:`parse_overrides` / :func:`build_config` for ``--set KEY=VALUE``; :func:`check_output_file`
    for ``-o`` paths (run before any compute); :func:`resolve_checkpoint` /
    :func:`load_autoencoder` for run folders.

Nothing here imports torch at import time (``pentachora --help`` must stay fast).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import tempfile
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import typer

from pentachora.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "DATA_HELP",
    "GRAD_CLIP_MODE_CHOICES",
    "IMAGE_DATA_OPTIONS",
    "MAX_SEED",
    "TRAIN_OPTIONS",
    "GradClipMode",
    "ImageDataOptions",
    "OptionSpec",
    "TrainOptions",
    "build_config",
    "build_model",
    "check_output_file",
    "check_run_folder",
    "image_data_options",
    "load_autoencoder",
    "option_group",
    "parse_data",
    "parse_overrides",
    "resolve_checkpoint",
    "train_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Seeds are bounded to what torch's generators accept (a signed 64-bit integer).
MAX_SEED = 2**63 - 1

#: ``TrainConfig.grad_clip_mode`` values, spelled out here so the CLI starts without importing torch
#: (a test checks they equal ``pentachora.training.GRAD_CLIP_MODES``).
GradClipMode = Literal["fixed", "adaptive"]
GRAD_CLIP_MODE_CHOICES: tuple[str, ...] = get_args(GradClipMode)

DATA_HELP = (
    "Training data: 'images' (embedded scikit-image photos, whole-image held-out split), 'noise' "
    "(16 noise types, heavy tails clamped to ±4), 'noise:raw' (raw heavy tails), 'noise:tier2', "
    "'noise:gaussian,pink', 'folder:PATH', 'hf:NAME[:SPLIT[:COLUMN]]'."
)


# ============================================================================== declaring options once
@dataclass(frozen=True)
class OptionSpec:
    """One CLI option: its default, type, help and bounds, and the ``TrainConfig`` field it sets.

    Attributes:
        default: the default value (``...`` makes the option required).
        type: the Python type typer parses (``int``, ``float``, ``bool``, ``Path``, a ``Literal``).
        help: the ``--help`` text.
        flags: explicit flag names (default: ``--name-with-dashes``; booleans get ``--x/--no-x``).
        min, max: bounds typer enforces while parsing (a usage error, exit code 2).
        field: the :class:`~pentachora.training.TrainConfig` field the option sets (None: not one).
    """

    default: Any
    type: Any
    help: str
    flags: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    field: str | None = None

    def option(self, panel: str | None) -> Any:
        """The ``typer.Option(...)`` default of the command parameter."""
        return typer.Option(
            self.default, *self.flags, help=self.help, min=self.min, max=self.max, rich_help_panel=panel
        )


def option_group(specs: Mapping[str, OptionSpec], target: type, param: str, panel: str):
    """A decorator factory adding ``specs`` as options to a command and passing them as ``target``."""

    def factory(
        *, include: Iterable[str] | None = None, exclude: Iterable[str] = (), **changes: Mapping[str, Any]
    ) -> Callable[[F], F]:
        chosen = {
            name: spec
            for name, spec in specs.items()
            if (include is None or name in include) and name not in set(exclude)
        }
        for name, change in changes.items():
            if name not in chosen:
                raise TypeError(f"option {name!r} is not one of {sorted(chosen)}")
            chosen[name] = dataclasses.replace(chosen[name], **change)

        def decorator(func: F) -> F:
            sig = inspect.signature(func)
            hints = typing.get_type_hints(func)
            clash = sorted(set(chosen) & set(sig.parameters))
            if clash or param not in sig.parameters:
                raise TypeError(f"{func.__name__}: needs a '{param}' parameter and none named {clash}")
            own = [
                p.replace(annotation=hints.get(p.name, p.annotation))
                for p in sig.parameters.values()
                if p.name != param
            ]
            added = [
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=spec.option(panel), annotation=spec.type
                )
                for name, spec in chosen.items()
            ]

            @functools.wraps(func)
            def wrapper(**kwargs: Any) -> Any:
                values = {name: kwargs.pop(name) for name in chosen}
                return func(**kwargs, **{param: target(**values)})

            params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
            wrapper.__signature__ = sig.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
            wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
            del wrapper.__wrapped__  # typer must read the new signature, not the body's
            return wrapper  # type: ignore[return-value]

        return decorator

    return factory


# ----------------------------------------------------------------------------- training options
#: The shared training options: parameter name → spec (with the ``TrainConfig`` field each sets).
TRAIN_OPTIONS: dict[str, OptionSpec] = {
    "steps": OptionSpec(
        500, int, "Optimizer steps (0 = build and describe the model only).", min=0, field="steps"
    ),
    "batch_size": OptionSpec(16, int, "Images per batch.", min=1, field="batch_size"),
    "lr": OptionSpec(1e-3, float, "Peak learning rate (AdamW, cosine schedule).", field="lr"),
    "warmup": OptionSpec(50, int, "Linear warm-up steps.", min=0, field="warmup_steps"),
    "grad_clip": OptionSpec(1.0, float, "Fixed gradient-norm clip (0 = off).", min=0.0, field="grad_clip"),
    "grad_clip_mode": OptionSpec(
        "fixed",
        GradClipMode,
        "'fixed' (clip at --grad-clip) or 'adaptive' (clip at max(recon loss, --grad-clip), the reference "
        "F-class trainer's rule; its threshold rises with a blowing-up loss, so it protects less).",
        field="grad_clip_mode",
    ),
    "weight_decay": OptionSpec(
        0.01,
        float,
        "AdamW weight decay on matrices (0 = plain Adam, as the reference trainer).",
        min=0.0,
        field="weight_decay",
    ),
    "seed": OptionSpec(0, int, "Seed (data, init, per-step randomness).", min=0, max=MAX_SEED, field="seed"),
    "eval_every": OptionSpec(
        100, int, "Evaluate on held-out data every N steps (0 = end only).", min=0, field="eval_every"
    ),
    "save_every": OptionSpec(250, int, "Checkpoint every N steps (0 = end only).", min=0, field="save_every"),
    "bf16": OptionSpec(False, bool, "bf16 autocast (geometry stays fp32/fp64).", field="mixed_precision"),
    "out": OptionSpec(
        None, Path, "Run folder (rerun the same command to resume).", flags=("--out", "-o"), field="out_dir"
    ),
    "fresh": OptionSpec(
        False,
        bool,
        "Start over: move an earlier run in --out aside (to OUT.old-<time>) instead of resuming it.",
    ),
    "audit": OptionSpec(
        None,
        str,
        "Attach the CV precision auditor to these modules (comma-separated, e.g. 'encoder,bottleneck'; "
        "'name:field' picks a field of a tuple/dataclass output, 'name@D' a feature width). Logged to "
        "metrics.jsonl and TensorBoard; `pentachora audit OUT` writes the report.",
    ),
    "audit_every": OptionSpec(100, int, "Audit every N steps (with --audit).", min=1),
    "force_resume": OptionSpec(
        False,
        bool,
        "Resume even though the seed or model config differs from the saved run (the model type and the "
        "data must still match).",
    ),
    "threads": OptionSpec(
        0, int, "torch CPU threads (0 = torch's default; 1 is fastest on a busy 2-core machine).", min=0
    ),
}


@dataclass
class TrainOptions:
    """The shared training options of one command (see :data:`TRAIN_OPTIONS`).

    Options a command does not declare keep these defaults (the ``TrainConfig`` defaults where one
    exists), so every command builds its :class:`~pentachora.training.TrainConfig` the same way.
    """

    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 0
    grad_clip: float = 1.0
    grad_clip_mode: str = "fixed"
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 0
    save_every: int = 0
    bf16: bool = False
    out: Path | None = None
    fresh: bool = False
    force_resume: bool = False
    audit: str | None = None
    audit_every: int = 100
    threads: int = 0

    def apply_threads(self) -> None:
        """``torch.set_num_threads(--threads)`` when it is given (0 keeps torch's default)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def diagnostics_callbacks(self, model: Any) -> list[Any]:
        """The trainer callbacks ``--audit`` asks for (none without it): the CV precision auditor on
        the named modules and a convergence-order monitor over the evaluations.

        Raises:
            ConfigError: a module name the model does not have (close matches are listed).
        """
        if not self.audit:
            return []
        from pentachora.recipes.diagnostics import audit_callbacks

        return audit_callbacks(model, self.audit, every=self.audit_every, convergence=True)

    def fit_kwargs(self, recipe: Callable[..., Any]) -> dict[str, Any]:
        """Keyword arguments of a training recipe that come from these options (``fresh=``,
        ``resume="force"``).

        Raises:
            ConfigError: ``--fresh`` / ``--force-resume`` was given but ``recipe`` does not support it,
                or both were given.
        """
        params = inspect.signature(recipe).parameters
        if self.fresh and self.force_resume:
            raise ConfigError("--fresh starts over and --force-resume continues: give one of them")
        out: dict[str, Any] = {}
        if self.fresh:
            if "fresh" not in params:
                raise ConfigError(f"--fresh is not supported by {recipe.__name__} in this version")
            out["fresh"] = True
        if self.force_resume:
            if "resume" not in params:
                raise ConfigError(f"--force-resume is not supported by {recipe.__name__} in this version")
            out["resume"] = "force"
        return out

    def train_config(self, out: str | os.PathLike | None = None, progress: bool = True, **changes: Any):
        """The :class:`~pentachora.training.TrainConfig` these options describe.

        Args:
            out: the run folder (default: ``self.out``; None trains in memory).
            progress: show a progress bar.
            **changes: any other ``TrainConfig`` field.

        Raises:
            ConfigError: the settings are invalid (the message says which and why).
        """
        from pentachora.training import TrainConfig

        values = {
            spec.field: getattr(self, name)
            for name, spec in TRAIN_OPTIONS.items()
            if spec.field is not None and name not in ("bf16", "out")
        }
        target = out if out is not None else self.out
        values.update(
            mixed_precision="bf16" if self.bf16 else "no",
            out_dir=None if target is None else str(target),
            log_every=max(1, min(25, self.steps // 40 or 1)),
            progress=progress,
        )
        values.update(changes)
        flags = {spec.field: name.replace("_", "-") for name, spec in TRAIN_OPTIONS.items() if spec.field}
        for name, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{flags.get(name, name)} must be a finite number, got {value}")
        try:
            return TrainConfig(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc


train_options = option_group(TRAIN_OPTIONS, TrainOptions, "train", "Training")
"""``@train_options(include=..., exclude=..., NAME={"default": ..., "help": ...})`` on a command
with a ``train: TrainOptions`` parameter adds the shared training options to it."""


# ----------------------------------------------------------------------------- image data options
IMAGE_DATA_OPTIONS: dict[str, OptionSpec] = {
    "data": OptionSpec("images", str, DATA_HELP),
    "image_size": OptionSpec(
        64, int, "Crop / noise image side in pixels (multiple of the patch).", min=1, max=4096
    ),
    "noise_per_type": OptionSpec(16, int, "Evaluation images per noise type.", min=1, max=10_000),
    "eval_tiles": OptionSpec(0, int, "Cap on evaluation tiles per held-out image (0 = all).", min=0),
}


@dataclass
class ImageDataOptions:
    """What an image autoencoder trains and is evaluated on (see :data:`IMAGE_DATA_OPTIONS`).

    ``--data`` is parsed once, when the options are built: :attr:`spec` is the parsed
    :class:`pentachora.data.spec.DataSpec` (a bad spec is a ``ConfigError`` naming the flag).
    """

    data: str = "images"
    image_size: int = 64
    noise_per_type: int = 16
    eval_tiles: int = 0
    spec: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec = parse_data(self.data)

    def check_patch(self, patch: int) -> None:
        """Refuse an image size that is not a multiple of the model's patch."""
        if self.image_size % patch:
            raise ConfigError(
                f"--image-size {self.image_size} is not a multiple of the model's patch size {patch}; "
                f"use e.g. {max(patch, self.image_size - self.image_size % patch)}"
            )

    def eval_kwargs(self) -> dict[str, Any]:
        """The evaluation settings, as keyword arguments of ``recipes.build_eval_data``."""
        return {"n_noise_per_type": self.noise_per_type, "max_tiles_per_image": self.eval_tiles or None}


image_data_options = option_group(IMAGE_DATA_OPTIONS, ImageDataOptions, "images", "Data")
"""``@image_data_options(...)`` on a command with an ``images: ImageDataOptions`` parameter."""


def describe_eval_data(eval_data) -> str:
    """``"58 held-out tiles of 32², 16 noise types × 2"`` — what an evaluation ran on."""
    parts = []
    if eval_data.tiles01 is not None:
        parts.append(f"{eval_data.tiles01.shape[0]} held-out tiles of {eval_data.tiles01.shape[-1]}²")
    if eval_data.noise:
        n = next(iter(eval_data.noise.values())).shape[0]
        parts.append(f"{len(eval_data.noise)} noise types × {n}")
    return ", ".join(parts) or "nothing"


# ============================================================================== checks on the input
def parse_data(data: str):
    """Parse ``--data``; a bad spec is a :class:`ConfigError` naming the flag."""
    from pentachora.data.spec import parse_data_spec

    try:
        return parse_data_spec(data)
    except ValueError as exc:
        raise ConfigError(f"--data: {exc}") from exc


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["V=64", "readout=linear", "cv_target=0.3"]`` → typed dict (JSON literals, else strings).

    Raises:
        ConfigError: a pair is not ``KEY=VALUE`` or a number is not finite.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            parsed = lazy_loads_json(value)
        except json.JSONDecodeError:
            parsed = value
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"--set {key.strip()}={value}: the value must be a finite number")
        out[key.strip()] = parsed
    return out


def merge_flag_overrides(overrides: Mapping[str, Any], **flags: Any) -> dict[str, Any]:
    """Model-config flags (``--readout linear``) and ``--set`` as one mechanism.

    A flag the user did not give is ``None`` and changes nothing, so ``--set readout=linear`` is not
    undone by the flag's default; a flag and a ``--set`` of the same field must agree.

    Raises:
        ConfigError: ``--set KEY=A`` together with a flag that sets KEY to B.
    """
    out = dict(overrides)
    for key, value in flags.items():
        if value is None:
            continue
        if key in out and out[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"--set {key}={out[key]!r} conflicts with {flag} {value!r}; give one of them")
        out[key] = value
    return out


def _check_override_types(config_class: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a value of the wrong type for a config field (a float for an int, text for a number)."""
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # pragma: no cover - a config with unresolvable hints: let the config check
        return dict(overrides)
    checked = dict(overrides)
    for key, value in overrides.items():
        hint = hints.get(key)
        if hint is None:
            continue
        union = typing.get_origin(hint) in (typing.Union, _union_type())
        allowed = set(get_args(hint)) if union else {hint}
        if value is None and type(None) in allowed:
            continue
        if str in allowed:
            continue
        if int in allowed and float not in allowed:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"--set {key}={value!r}: {key} must be an integer")
        elif float in allowed:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"--set {key}={value!r}: {key} must be a number")
            checked[key] = float(value)
    return checked


def _union_type() -> Any:
    import types

    return types.UnionType


def build_config(config_class: type, preset: str, overrides: Mapping[str, Any]):
    """``config_class.preset(preset, **overrides)`` with one-line :class:`ConfigError` s.

    Overrides are type-checked against the config dataclass first (``--set V=32.5`` for an integer
    field is refused); unknown fields, unknown presets and out-of-range values come back as
    ``ConfigError`` too.
    """
    checked = _check_override_types(config_class, overrides)
    try:
        return config_class.preset(preset, **checked)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config_class.__name__}: {exc}") from exc


def build_model(model_class: type, config: Any):
    """``model_class(config)``; a config the model refuses (``dropout=2``) is a :class:`ConfigError`."""
    try:
        return model_class(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {type(config).__name__}: {exc}") from exc


#: Output kinds of :func:`check_output_file`.
OutputKind = Literal["image", "safetensors", "json"]


def _image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    writable = {fmt.upper() for fmt in Image.SAVE}
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt.upper() in writable}


def check_output_file(
    path: Path | None,
    kind: OutputKind,
    option: str = "--output",
    inputs: Iterable[Path] = (),
) -> Path | None:
    """Refuse an output path that cannot be written, BEFORE any compute.

    Refused: an existing directory, a name without extension or with one that does not fit ``kind``
    (an image format Pillow writes, ``.safetensors``, ``.json``), a path equal to one of ``inputs``
    (never overwrite the input), a parent that is a file, and a folder where no file can be created
    (probed by creating and removing a temporary file there).

    Returns:
        ``path`` (None passes through).

    Raises:
        ConfigError: the path cannot be used; the message says why and what to give instead.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file name such as {path / _example(kind)}")
    suffix = path.suffix.lower()
    if kind == "image":
        known = _image_suffixes()
        if not suffix:
            raise ConfigError(f"{option} {path} has no extension; give an image file name such as {path}.png")
        if suffix not in known:
            raise ConfigError(
                f"{option} {path}: unknown image extension {suffix!r}; use .png, .jpg, .webp, .bmp or .tif"
            )
    elif suffix != f".{kind}":
        raise ConfigError(f"{option} {path} must end in .{kind} (e.g. {path.with_suffix('.' + kind).name})")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise ConfigError(
                f"{option} {path} is the input file; refusing to overwrite it — choose another name"
            )
    owner = _run_file_owner(path)
    if owner is not None:
        raise ConfigError(
            f"{option} {path} is {owner}; writing there would break it — choose a file outside the run"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path} is read-only; choose another file or change its permissions")
    _check_writable_dir(path, option, start=path.parent)
    return path


#: Files a checkpoint folder (``final/``, ``checkpoints/step-*``) is made of, and a run folder's records.
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json")
_RUN_RECORDS = ("train_config.json", "model_config.json", "data.json", "metrics.jsonl", "eval.json")


def _run_file_owner(path: Path) -> str | None:
    """What ``path`` belongs to when it is one of a checkpoint's or a run folder's own files, else ``None``."""
    parent = path.resolve().parent
    if (
        path.name in _CHECKPOINT_FILES
        and (parent / "config.json").is_file()
        and (parent / "model.safetensors").is_file()
    ):
        return f"a file of the checkpoint {parent}"
    if path.name in _RUN_RECORDS and (parent / "train_config.json").is_file():
        return f"a record of the run folder {parent}"
    return None


def _nearest_existing_dir(path: Path, option: str, start: Path) -> Path:
    """The closest existing folder at or above ``start``; a ``ConfigError`` (naming ``path``) if it is a file."""
    existing = start
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is not a directory")
    return existing


def _check_writable_dir(path: Path, option: str, start: Path) -> None:
    """Refuse ``path`` when the nearest existing folder at or above ``start`` does not accept new files."""
    existing = _nearest_existing_dir(path, option, start)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".pentachora-write-test-")
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: cannot create files in {existing} ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def _example(kind: str) -> str:
    return {"image": "out.png", "safetensors": "out.safetensors", "json": "out.json"}[kind]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_run_folder(path: Path | None, option: str = "--out") -> Path | None:
    """Refuse a run folder that is a file or cannot be created, BEFORE any compute (one-line ``ConfigError``)."""
    if path is None:
        return None
    path = Path(path)
    if str(path) in ("", ".") or path.resolve() == Path.cwd().resolve():
        raise ConfigError(
            f"{option} is empty or the current directory; give the run its own folder, e.g. {option} runs/NAME"
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a run folder; give a folder name")
    _check_writable_dir(path, option, start=path)
    return path


def check_input_file(path: Path, what: str = "file") -> Path:
    """Refuse a missing input, a folder, or an empty file (one-line :class:`DataError`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if path.is_dir():
        raise DataError(f"{what} {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty")
    return path


def resolve_checkpoint(run: Path) -> tuple[Path, str]:
    """The checkpoint folder behind ``run`` and the ``model_type`` its ``config.json`` names.

    Raises:
        CheckpointError: ``run`` holds no model, or its ``config.json`` cannot be read.
    """
    from pentachora.recipes.loading import resolve_model_dir

    try:
        folder = resolve_model_dir(run)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load {run}: {exc}") from exc
    try:
        model_type = lazy_loads_json((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    return folder, str(model_type)


#: What to use instead when a command is given a run of another family.
_OTHER_COMMANDS = {
    "geometric_memory": "it is a long-prompt memory model: use `pentachora eval-memory` or `pentachora encode`",
    "battery_bank": "it is a battery bank: use it with `pentachora train container --batteries`",
    "conduit_hub": "it is a Conduit hub: use `pentachora eval-hub`",
    "procrustes_aligner": "it is a Procrustes aligner (from `pentachora align`): load it with "
    "pentachora.hub.ProcrustesAligner.from_pretrained",
    "mini-t2i": "it is a miniature text-to-image model: use `pentachora generate`",
    "scene-reader": "it is the scene world's reader, the instrument of the text-to-image benchmarks",
    "latent-autoencoder": "it is a first stage behind diffusers' VAE surface: evaluate the autoencoder it "
    "wraps, or load it with pentachora.autoencoders.LatentAutoencoder.from_pretrained",
}


def load_autoencoder(run: Path):
    """Load an image autoencoder from a run or checkpoint folder, refusing other model families.

    Args:
        run: a run folder (its ``final/`` or latest checkpoint) or a checkpoint folder. A checkpoint
            pruned by a live training while it is read is replaced by the newest one.

    Raises:
        CheckpointError: no model there, or one that cannot be loaded.
        ConfigError: the folder holds a model of another family (the message names it); checked on
            ``config.json`` before anything is built.
    """
    from pentachora.recipes.loading import load_latest

    try:
        resolve_checkpoint(run)  # "cannot load RUN: ..." when there is no model at all
        return load_latest(run, lambda folder: _load_image_autoencoder(run, folder))
    except CheckpointError as exc:
        if str(exc).startswith(f"cannot load {run}"):
            raise
        raise CheckpointError(f"cannot load {run}: {exc}") from exc


def _load_image_autoencoder(run: Path, folder: Path):
    """The autoencoder in checkpoint ``folder`` (of ``run``); another family is a ``ConfigError``."""
    try:
        model_type = str(
            lazy_loads_json((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        )
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    if model_type in _OTHER_COMMANDS:
        raise ConfigError(
            f"{run} holds a {model_type!r} model, not an image autoencoder; {_OTHER_COMMANDS[model_type]}"
        )
    import pentachora.autoencoders  # noqa: F401  (registers every image autoencoder family)
    from pentachora.autoencoders.base import PatchAutoencoder
    from pentachora.modeling import MODEL_REGISTRY
    from pentachora.recipes import load_model

    images = sorted(k for k, c in MODEL_REGISTRY.items() if issubclass(c, PatchAutoencoder))
    if model_type not in images:  # refused before anything is built
        known = "unknown model_type" if model_type not in MODEL_REGISTRY else "model type"
        raise ConfigError(f"{run} holds a {known} {model_type!r}, not an image autoencoder (one of {images})")
    return load_model(folder)


def lazy_loads_json(text: str) -> Any:
    """``pentachora.io.loads_json`` imported on use: the CLI's modules must not import torch at
    ``--help`` time (``io`` does)."""
    from pentachora.io import loads_json

    return loads_json(text)

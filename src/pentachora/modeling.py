"""The contract every pentachora model keeps: config dataclass, dataclass outputs, safe checkpoints.

A model is an :class:`nn.Module` subclass of :class:`PentachoraModel` that

* is built from one typed config dataclass (``config_class``), stored as ``self.config``;
* computes its own loss and returns a :class:`ModelOutput` subclass with ``.loss`` and its named
  parts, so the one trainer never needs to know which model it trains;
* saves to a folder with ``config.json`` + ``model.safetensors`` and loads back strictly.

Checkpoint folder layout::

    DIR/config.json        {"model_type": ..., "pentachora_version": ..., "config": {...}}
    DIR/model.safetensors  the state dict (safetensors; never pickle)

Loading checks the ``model_type`` against the class (or dispatches on it via :func:`pentachora.recipes.load_model`),
rejects unknown config keys and loads the weights with ``strict=True``; every failure is a
:class:`~pentachora.io.CheckpointError` with a message that says what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from pentachora.errors import ConfigError, PentachoraError
from pentachora.io import (
    CheckpointError,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
    read_tensor_header,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

MODEL_REGISTRY: dict[str, type[PentachoraModel]] = {}

M = TypeVar("M", bound="PentachoraModel")
C = TypeVar("C")


def register_model(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` loadable by :func:`pentachora.recipes.load_model` under ``cls.model_type``."""
    name = getattr(cls, "model_type", None)
    if not name:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute `model_type`")
    if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
        raise TypeError(f"model_type {name!r} is already registered by {MODEL_REGISTRY[name].__name__}")
    MODEL_REGISTRY[name] = cls
    return cls


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass; tuples become lists."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return dataclasses.asdict(config)


def config_from_dict(
    config_class: type[C], data: dict[str, Any], error: type[PentachoraError] = CheckpointError
) -> C:
    """Rebuild ``config_class`` from a dict, refusing unknown keys and restoring tuples/nested dataclasses.

    The result is checked with :func:`validate_config` (types, finiteness, obvious ranges).

    Args:
        config_class: The config dataclass.
        data: The dict (e.g. parsed JSON).
        error: The error type raised (``CheckpointError`` for files, ``ConfigError`` for overrides).

    Raises:
        error: not a dict, unknown keys, or an invalid value (the message names the field).
    """
    if not isinstance(data, dict):
        raise error(f"config for {config_class.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise error(f"unknown keys for {config_class.__name__}: {unknown}")
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    problems: list[str] = []
    for name, value in data.items():
        # types first: a config's own __post_init__ may compare or divide a value of the wrong type
        kwargs[name] = _check_value(name, hints.get(name), _coerce(hints.get(name), value), problems)
    if problems:
        raise error(f"invalid {config_class.__name__}: " + "; ".join(problems))
    try:
        config = config_class(**kwargs)
        validate_config(config)
    except (TypeError, ValueError) as exc:
        raise error(f"invalid {config_class.__name__}: {exc}") from exc
    return config


def _coerce(hint: Any, value: Any) -> Any:
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except Exception:  # pragma: no cover - try the next member of the union
                continue
    return value


# ----------------------------------------------------------------------------- config validation
#: Integer fields that are sizes (must be >= 1 when set); names ending in ``_hidden`` / ``_channels`` too.
SIZE_FIELDS = frozenset(
    {
        "patch_size", "channels", "V", "D", "hidden", "dim", "latent_dim", "hidden_size", "teacher_dim",
        "n_heads", "n_batteries", "battery_rows", "n_memory_tokens", "n_anchors", "ffn_mult", "seq_len",
        "window", "max_tokens", "max_segments", "teacher_max_length", "top_k", "smooth_kernel", "smooth_mid",
        "steps", "batch_size", "log_every",
    }
)  # fmt: skip
_SEED_LIMIT = 2**63
#: Integer fields named like counts (``n_*`` or these endings) must be >= 0.
_COUNT_SUFFIXES = (
    "depth", "_steps", "_every", "_samples", "_patches", "_points", "_size", "_len", "_tokens", "_dim",
    "_layers", "overlap", "_checkpoints", "_in_row", "_mult", "_k",
)  # fmt: skip


def _field_range_problem(name: str, value: float | int) -> str | None:
    """The range rule a field's name implies, or ``None`` when the value keeps it."""
    low = name.lower()
    if isinstance(value, float):
        if "dropout" in low and not 0.0 <= value < 1.0:
            return f"{name} must be in [0, 1), got {value!r}"
        if (
            "fraction" in low or low.endswith(("_prob", "probability")) or low == "min_lr_ratio"
        ) and not 0.0 <= value <= 1.0:
            return f"{name} must be in [0, 1], got {value!r}"
        if (low.endswith("_weight") or low in ("weight_decay", "max_alpha", "free_bits")) and value < 0:
            return f"{name} must be >= 0, got {value!r}"
        if ("temperature" in low or low in ("eps", "lr", "magnitude_eps")) and not value > 0:
            return f"{name} must be > 0, got {value!r}"
        if low == "cv_target" and not 0.0 < value <= 1.0:
            return f"{name} must be in (0, 1], got {value!r}"
        return None
    if name in SIZE_FIELDS or low.endswith(("_hidden", "_channels")):
        return None if value >= 1 else f"{name} must be >= 1, got {value!r}"
    if low == "seed" or low.endswith("_seed"):
        return None if 0 <= value < _SEED_LIMIT else f"{name} must be in [0, 2**63), got {value!r}"
    if low.startswith("n_") or low.endswith(_COUNT_SUFFIXES):
        return None if value >= 0 else f"{name} must be >= 0, got {value!r}"
    return None  # other integers may be negative (layer indices ...)


def _check_value(name: str, hint: Any, value: Any, problems: list[str]) -> Any:
    """Type-check (and lightly coerce) one value against its type hint; append problems."""
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            problems.append(f"{name} must not be None")
            return value
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _check_value(name, members[0], value, problems)
        for member in members:  # first member that accepts the value without problems
            trial: list[str] = []
            out = _check_value(name, member, value, trial)
            if not trial:
                return out
        problems.append(
            f"{name} must be one of {[getattr(a, '__name__', str(a)) for a in members]}, got {value!r}"
        )
        return value
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            problems.append(f"{name} must be a sequence, got {type(value).__name__}")
            return value
        if len(args) == 2 and args[1] is Ellipsis:
            elems = [_check_value(f"{name}[{i}]", args[0], v, problems) for i, v in enumerate(value)]
        elif args:
            if len(value) != len(args):
                problems.append(f"{name} must have {len(args)} entries, got {len(value)}")
                return value
            elems = [
                _check_value(f"{name}[{i}]", a, v, problems)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
        else:
            elems = list(value)
        return tuple(elems)
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} must be a number, got {value!r}")
            return value
        value = float(value)
        if not math.isfinite(value):
            problems.append(f"{name} must be a finite number, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{name} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and dataclasses.is_dataclass(value):
        validate_config(value)
    return value


def validate_config(config: Any) -> None:
    """Check every field of a config dataclass against its type hint and the obvious ranges.

    Floats must be finite (ints are accepted and converted to float in place); ints must be ints
    (``V=32.5`` is refused, as are booleans); booleans, strings and ``Literal`` choices must be of
    their type. Ranges follow the field names: ``*dropout*`` in [0, 1), ``*fraction*`` / ``*_prob`` /
    ``min_lr_ratio`` in [0, 1], ``*_weight`` / ``weight_decay`` / ``max_alpha`` / ``free_bits`` >= 0,
    temperatures, ``eps``, ``magnitude_eps`` and ``lr`` > 0, ``cv_target`` in (0, 1], sizes
    (:data:`SIZE_FIELDS`, ``*_hidden``, ``*_channels``) >= 1, seeds in [0, 2**63), counts (``n_*``,
    ``*depth``, ``*_steps``, ``*_samples`` ...) >= 0; other integers (layer indices) and the entries of
    tuples are only type-checked.

    Raises:
        ConfigError: naming every field that is wrong.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")
    hints = typing.get_type_hints(type(config))
    problems: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        before = len(problems)
        checked = _check_value(f.name, hints.get(f.name), value, problems)
        if len(problems) == before and checked is not value:
            object.__setattr__(config, f.name, checked)
        if (
            len(problems) == before
            and isinstance(checked, (int, float))
            and not isinstance(checked, bool)
            and hints.get(f.name) is not None
        ):
            problem = _field_range_problem(f.name, checked)
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError(f"invalid {type(config).__name__}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- input dtypes
def _cast_like(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _cast_like(v, dtype) for k, v in value.items()}
    return value


def _cast_floating_inputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook of every :class:`PentachoraModel`: floating input tensors (also inside a dict
    batch) of another precision — float16, bfloat16, float64 — are cast to the model's parameter
    dtype instead of failing deep inside with a dtype mismatch. Integer tensors are left alone."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return None
    return tuple(_cast_like(a, dtype) for a in args), {k: _cast_like(v, dtype) for k, v in kwargs.items()}


# ----------------------------------------------------------------------------- safe loading helpers
class _TooManyTensors(Exception):
    pass


@contextlib.contextmanager
def _registration_cap(limit: int) -> Iterator[None]:
    """Abort module construction (``_TooManyTensors``) once more than ``limit`` parameters and
    buffers were registered, so a config with ``depth=10**6`` stops after a few hundred modules."""
    from torch.nn.modules import module as _module

    count = 0

    def hook(module: nn.Module, name: str, tensor: Any) -> None:
        nonlocal count
        if tensor is not None:
            count += 1
            if count > limit:
                raise _TooManyTensors(count)

    handles = [
        _module.register_module_parameter_registration_hook(hook),
        _module.register_module_buffer_registration_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build_without_storage(target: type[M], config: Any, n_file_tensors: int, source: str) -> M | None:
    """Build ``target(config)`` with its parameters on the ``meta`` device (no storage).

    Returns ``None`` (after a debug log) when the model cannot be built that way; the caller then
    relies on the strict load alone.

    Raises:
        CheckpointError: the model would register far more tensors than the file holds, or asks
            for more memory than can be allocated.
    """
    from accelerate import init_empty_weights

    limit = 2 * n_file_tensors + 256
    try:
        with _registration_cap(limit), init_empty_weights(include_buffers=False):
            return target(config)
    except _TooManyTensors as exc:
        raise CheckpointError(
            f"{source}: the config describes a {target.__name__} with more than {limit} tensors, but the "
            f"file holds {n_file_tensors}; the config does not belong to these weights"
        ) from exc
    except MemoryError as exc:
        raise CheckpointError(f"{source}: the config asks for more memory than is available ({exc})") from exc
    except (TypeError, ValueError, PentachoraError) as exc:  # a config the model itself refuses
        raise CheckpointError(
            f"{source}: the config describes a {target.__name__} that cannot be built ({exc})"
        ) from exc
    except RuntimeError as exc:
        if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
            raise CheckpointError(
                f"{source}: the config asks for more memory than is available ({str(exc).splitlines()[0]})"
            ) from exc
        logger.debug("cannot build %s without storage: %s", target.__name__, exc)
        return None


def _is_floating(dtype: torch.dtype | str) -> bool:
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return dtype.upper().startswith(("F", "BF"))


def _raise_on_mismatch(
    own: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    theirs: Mapping[str, tuple[tuple[int, ...], torch.dtype | str]],
    model_name: str,
    source: str,
) -> None:
    """Refuse missing, unexpected, misshapen or wrongly typed tensors (CheckpointError)."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    common = set(own) & set(theirs)
    misshapen = sorted(k for k in common if tuple(own[k][0]) != tuple(theirs[k][0]))
    mistyped = sorted(
        k for k in common if k not in misshapen and _is_floating(own[k][1]) and not _is_floating(theirs[k][1])
    )
    if not (missing or unexpected or misshapen or mistyped):
        return
    parts = []
    if missing:
        parts.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    if misshapen:
        k = misshapen[0]
        parts.append(f"shape mismatch e.g. {k}: file {tuple(theirs[k][0])} vs model {tuple(own[k][0])}")
    if mistyped:
        k = mistyped[0]
        parts.append(f"dtype mismatch e.g. {k}: file {theirs[k][1]} where the model holds floating point")
    raise CheckpointError(f"{source} does not match {model_name}: " + "; ".join(parts))


def nonfinite_tensor(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or infinity, or ``None``."""
    for name, tensor in tensors.items():
        floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel()
        if floating and not bool(torch.isfinite(tensor).all()):
            return name
    return None


@dataclasses.dataclass
class ModelOutput:
    """Base for model outputs: ``loss`` plus named parts.

    Subclasses add fields. :meth:`scalars` collects every 0-d tensor or float field (the loss and
    its parts, geometry readouts) for logging, so the trainer logs whatever a model reports.
    """

    loss: torch.Tensor | None = None

    def scalars(self) -> dict[str, float]:
        """Every scalar field as a Python float (detached); non-scalar fields are skipped."""
        out: dict[str, float] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                out[f.name] = float(value.detach().float().item())
            elif isinstance(value, (float, int)) and not isinstance(value, bool):
                out[f.name] = float(value)
        return out


class PentachoraModel(nn.Module):
    """Base class: config handling and safetensors checkpoints.

    Subclasses set ``model_type`` (a stable string written into ``config.json``) and
    ``config_class`` (their config dataclass), and call ``super().__init__(config)``.
    """

    model_type: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}"
            )
        validate_config(config)
        self.config = config
        self.register_forward_pre_hook(_cast_floating_inputs, with_kwargs=True)

    # ------------------------------------------------------------------ parameters
    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Both files are written atomically. Tied or shared tensors are stored as copies.
        """
        from pentachora import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state_dict().items()}
        atomic_save_tensors(directory / WEIGHTS_NAME, state, metadata={"model_type": self.model_type})
        atomic_write_json(
            directory / CONFIG_NAME,
            {
                "model_type": self.model_type,
                "pentachora_version": __version__,
                "config": config_to_dict(self.config),
            },
        )
        return directory

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> M:
        """Rebuild the model from ``directory`` and load its weights strictly.

        Nothing large is allocated before the weights file is known to fit: the config is
        validated, the model is first built without storage (parameters on the ``meta`` device,
        with a cap on how many tensors it may register) and its tensor names, shapes and dtypes are
        compared with the safetensors header; only then is it built for real and loaded. Loaded
        weights must be finite.

        Raises:
            CheckpointError: missing files, invalid JSON, a checkpoint of another model type,
                unknown or invalid config values, a corrupt weights file, missing/unexpected/
                misshapen/wrongly typed tensors, or non-finite weights.
        """
        directory = Path(directory)
        meta = read_json(directory / CONFIG_NAME)
        if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
            raise CheckpointError(
                f"{directory / CONFIG_NAME} is not a pentachora checkpoint config "
                "(expected keys 'model_type' and 'config')"
            )
        if cls.model_type and meta["model_type"] != cls.model_type:
            raise CheckpointError(
                f"{directory} holds a {meta['model_type']!r} checkpoint, not {cls.model_type!r} ({cls.__name__})"
            )
        target = cls if cls.model_type else MODEL_REGISTRY.get(meta["model_type"])
        if target is None:
            raise CheckpointError(
                f"unknown model_type {meta['model_type']!r}; known: {sorted(MODEL_REGISTRY)}"
            )
        try:
            config = config_from_dict(target.config_class, meta["config"])
        except CheckpointError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
        weights = directory / WEIGHTS_NAME
        header = read_tensor_header(weights)
        source = str(weights)
        skeleton = _build_without_storage(target, config, n_file_tensors=len(header), source=source)
        if skeleton is not None:
            _raise_on_mismatch(
                {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()},
                header,
                type(skeleton).__name__,
                source,
            )
            del skeleton
        try:
            model = target(config)
        except (MemoryError, RuntimeError, TypeError, ValueError, PentachoraError) as exc:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: cannot build the model it describes ({exc})"
            ) from exc
        state = load_tensors(weights, device=map_location)
        model.load_state_dict_checked(state, source=source)
        return model.to(map_location)

    def load_state_dict_checked(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """``load_state_dict(strict=True)`` with a readable error for missing, unexpected, misshapen or
        wrongly typed keys (an integer tensor for a floating parameter), and for non-finite weights."""
        own = self.state_dict()
        _raise_on_mismatch(
            {k: (tuple(v.shape), v.dtype) for k, v in own.items()},
            {k: (tuple(v.shape), v.dtype) for k, v in state.items()},
            type(self).__name__,
            source,
        )
        bad = nonfinite_tensor(state)
        if bad is not None:
            raise CheckpointError(
                f"{source}: tensor {bad!r} holds NaN or infinite values; use an earlier checkpoint"
            )
        self.load_state_dict(state, strict=True)


# ============================================================================================ presets


class UnknownConfigFieldError(ConfigError, TypeError):
    """An override names a field the config dataclass does not have (a :class:`ConfigError`).

    Also a ``TypeError``, the error a dataclass raises for an unexpected keyword, so ``except
    TypeError`` code written against the former per-family ``preset()`` methods keeps working.
    """


class Presets:
    """Named presets for a config dataclass — the one preset mechanism of every model family.

    A config dataclass inherits from this mixin and sets two plain class attributes (not
    dataclass fields — leave them unannotated)::

        @dataclasses.dataclass
        class GeoVAEConfig(Presets):
            presets = GEOVAE_PRESETS      # {name: {field: value}}
            preset_family = "GeoVAE"      # how error messages name the family
            patch_size: int = 16
            ...

    :meth:`preset` then builds ``cls(**{**presets[name], **overrides})`` after checking the name and
    every override field, and :meth:`preset_names` lists the names. A subclass that must not inherit
    its parent's presets sets ``presets = {}``. :func:`list_presets` lists every registered family.

    Layered configuration (code defaults → preset → overrides) is exactly this call.
    """

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    preset_family: ClassVar[str] = ""

    @classmethod
    def preset_names(cls) -> list[str]:
        """The names :meth:`preset` accepts, sorted."""
        return sorted(cls.presets)

    @classmethod
    def config_field_names(cls) -> list[str]:
        """The fields an override may set (the dataclass's ``init`` fields), sorted."""
        return sorted(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]

    @classmethod
    def preset(cls: type[P], name: str, **overrides: Any) -> P:
        """The config of preset ``name`` with ``overrides`` applied on top.

        Args:
            name: One of :meth:`preset_names`.
            **overrides: Config fields to set instead of the preset's (or the default) values.

        Returns:
            A validated config instance (its ``__post_init__`` ran).

        Raises:
            ConfigError: an unknown preset name (the message lists the known ones).
            UnknownConfigFieldError: an override that is not a field (the message lists the valid
                fields); a ``ConfigError`` and a ``TypeError``.
        """
        family = cls.preset_family or cls.__name__
        if name not in cls.presets:
            raise ConfigError(f"unknown {family} preset {name!r}; known: {sorted(cls.presets)}")
        fields = cls.config_field_names()  # type: ignore[attr-defined]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise UnknownConfigFieldError(
                f"unknown {cls.__name__} field(s) {unknown} for preset {name!r}; valid fields: {fields}"
            )
        return cls(**{**cls.presets[name], **overrides})


P = TypeVar("P", bound=Presets)


def list_presets(registry: Mapping[str, type[PentachoraModel]] | None = None) -> dict[str, list[str]]:
    """Every registered model family and its preset names: ``{model_type: [names]}``.

    Families whose config has no presets map to ``[]`` (they are built from their config defaults).
    Only families whose module was imported are registered — ``modeling`` imports no model family;
    ``import pentachora.autoencoders`` (and ``pentachora.memory``) first, as ``pentachora models`` does.

    Args:
        registry: The registry to list (default :data:`MODEL_REGISTRY`).

    Returns:
        ``{model_type: sorted preset names}``, sorted by model type.
    """
    registry = MODEL_REGISTRY if registry is None else registry
    out: dict[str, list[str]] = {}
    for model_type in sorted(registry):
        config_class = registry[model_type].config_class
        names = (
            config_class.preset_names()
            if isinstance(config_class, type) and issubclass(config_class, Presets)
            else []
        )
        out[model_type] = list(names)
    return out


def describe_preset(model_type: str, name: str | None = None, count_params: bool = True) -> dict[str, Any]:
    """One row of the preset table: what preset ``name`` of family ``model_type`` builds.

    The model is built on the ``meta`` device (no memory, no initialisation cost) to count its
    parameters; a family that cannot be built there reports ``params = None``.

    Args:
        model_type: A registered model type (see :func:`list_presets`).
        name: A preset name, or ``None`` for the config's defaults.
        count_params: Build the model (on ``meta``) to count parameters.

    Returns:
        ``{"model_type", "model", "preset", "params", "latent_floats_per_patch", "patch"}`` —
        the last two for patch autoencoders (``patch`` = ``"p×p×C"``), else ``None``.

    Raises:
        ConfigError: an unknown model type or preset.
    """
    if model_type not in MODEL_REGISTRY:
        raise ConfigError(f"unknown model type {model_type!r}; registered: {sorted(MODEL_REGISTRY)}")
    cls = MODEL_REGISTRY[model_type]
    config_class = cls.config_class
    if name is None:
        config = config_class()
    elif isinstance(config_class, type) and issubclass(config_class, Presets):
        config = config_class.preset(name)
    else:
        raise ConfigError(f"{model_type} has no presets; build it from {config_class.__name__}(...)")
    row: dict[str, Any] = {
        "model_type": model_type,
        "model": cls.__name__,
        "preset": name,
        "params": None,
        "latent_floats_per_patch": None,
        "patch": None,
    }
    patch, channels = getattr(config, "patch_size", None), getattr(config, "channels", None)
    model = None
    if count_params:
        try:
            with torch.device("meta"), torch.no_grad():
                model = cls(config)
            row["params"] = model.num_parameters()
        except Exception:  # a family whose construction needs real tensors: no count
            model = None
    floats = getattr(model, "latent_floats_per_patch", None) if model is not None else None
    if floats is None:
        floats = getattr(config, "latent_floats_per_patch", None)
    if floats is not None and patch is not None and channels is not None:
        row["latent_floats_per_patch"] = int(floats)
        row["patch"] = f"{patch}×{patch}×{channels}"
    return row

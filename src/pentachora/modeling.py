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

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from pentachora.io import CheckpointError, atomic_save_tensors, atomic_write_json, load_tensors, read_json

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


def config_from_dict(config_class: type[C], data: dict[str, Any]) -> C:
    """Rebuild ``config_class`` from a dict, refusing unknown keys and restoring tuples/nested dataclasses."""
    if not isinstance(data, dict):
        raise CheckpointError(
            f"config for {config_class.__name__} must be a JSON object, got {type(data).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"unknown keys for {config_class.__name__}: {unknown}")
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name), value)
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid {config_class.__name__}: {exc}") from exc


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
        self.config = config

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

        Raises:
            CheckpointError: missing files, invalid JSON, a checkpoint of another model type,
                unknown config keys, a corrupt weights file, or missing/unexpected/misshapen tensors.
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
        config = config_from_dict(target.config_class, meta["config"])
        model = target(config)
        state = load_tensors(directory / WEIGHTS_NAME, device=map_location)
        model.load_state_dict_checked(state, source=str(directory / WEIGHTS_NAME))
        return model.to(map_location)

    def load_state_dict_checked(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """``load_state_dict(strict=True)`` with a readable error for missing, unexpected or misshapen keys."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or misshapen:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
            if misshapen:
                k = misshapen[0]
                parts.append(
                    f"shape mismatch e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                )
            raise CheckpointError(f"{source} does not match {type(self).__name__}: " + "; ".join(parts))
        self.load_state_dict(state, strict=True)


# ============================================================================================ presets
# (this section is appended to the module; its imports stay with it)
from collections.abc import Mapping  # noqa: E402

from pentachora.errors import ConfigError  # noqa: E402


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

"""The ``--data`` spec: what an image autoencoder trains and is evaluated on (:func:`parse_data_spec`).

``--data`` spec strings (:func:`parse_data_spec`)::

    noise                     all 16 noise types, heavy tails clamped to ±4 (the reference)
    noise:raw                 all 16 types, heavy tails raw (Cauchy up to ≈63.7)
    noise:tier2               the curriculum's types up to tier 2 (tiers 0, 1 and 2)
    noise:gaussian,pink       an explicit list of types
    noise:tier3:raw           modifiers combine (one type selector, one of raw/clamp)
    images                    the embedded scikit-image photographs (held-out split built in)
    folder:PATH               every png/jpg/jpeg/bmp/webp image in PATH (held-out: every 10th)
    hf:NAME[:SPLIT[:COLUMN]]  a Hugging Face dataset (default split "train", column "image")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from pentachora.data.images import ImageCropSource
    from pentachora.data.noise import NoiseSource

DataKind = Literal["noise", "images", "folder", "hf"]

VALID_SPEC_FORMS: tuple[str, ...] = (
    "noise",
    "noise:raw",
    "noise:tierK (K in 0..4)",
    "noise:TYPE[,TYPE...]",
    "noise:tierK:raw / noise:TYPE,TYPE:raw",
    "images",
    "folder:PATH",
    "hf:NAME[:SPLIT[:COLUMN]]",
)


def _spec_error(spec: str, why: str) -> ValueError:
    forms = "\n  ".join(VALID_SPEC_FORMS)
    return ValueError(f"invalid data spec {spec!r}: {why}. Valid forms:\n  {forms}")


@dataclass
class DataSpec:
    """A parsed ``--data`` string: what to train on and what to evaluate on.

    Attributes:
        kind: ``"noise"``, ``"images"``, ``"folder"`` or ``"hf"``.
        spec: The original string (for run folders and logs).
        noise_types: Noise types mixed in training (noise only).
        heavy_tails: ``"clamp"`` or ``"raw"`` (noise only).
        path: Folder path (folder only).
        hf_name: Dataset name (hf only).
        hf_split: Dataset split (hf only).
        hf_column: Image column (hf only).
        max_images: Cap on images loaded from a folder or a Hugging Face dataset.
    """

    kind: DataKind
    spec: str
    noise_types: tuple[str, ...] = ()
    heavy_tails: Literal["clamp", "raw"] = "clamp"
    path: str | None = None
    hf_name: str | None = None
    hf_split: str = "train"
    hf_column: str = "image"
    max_images: int | None = None
    _cache: dict[str, list[torch.Tensor]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_noise(self) -> bool:
        """Whether this spec trains on generated noise."""
        return self.kind == "noise"

    def _split_images(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(train, held-out) image lists in [0, 1], loaded once and cached."""
        from pentachora.data import images as im

        if "train" not in self._cache:
            if self.kind == "images":
                train, held = im.load_sample_photos("train"), im.load_sample_photos("heldout")
            elif self.kind == "folder":
                assert self.path is not None
                train, held = im.split_heldout(im.load_image_folder(self.path, max_images=self.max_images))
            elif self.kind == "hf":
                assert self.hf_name is not None
                loaded = im.load_hf_images(
                    self.hf_name,
                    split=self.hf_split,
                    column=self.hf_column,
                    max_images=self.max_images or im.DEFAULT_HF_MAX_IMAGES,
                )
                train, held = im.split_heldout(loaded)
            else:
                raise ValueError(f"data spec {self.spec!r} has no images")
            self._cache["train"], self._cache["heldout"] = train, held
        return self._cache["train"], self._cache["heldout"]

    def train_source(
        self, batch_size: int, image_size: int, seed: int = 0, channels: int = 3
    ) -> NoiseSource | ImageCropSource:
        """Build the training batch source.

        Args:
            batch_size: Images per batch.
            image_size: Crop / noise height and width in pixels.
            seed: Base seed of the source.
            channels: Channels (noise only; images are always RGB).

        Returns:
            A :class:`BatchSource`: noise values as generated, images in model space [−1, 1].
        """
        if self.kind == "noise":
            from pentachora.data.noise import NoiseSource

            return NoiseSource(
                types=self.noise_types,
                batch_size=batch_size,
                image_size=image_size,
                channels=channels,
                seed=seed,
                heavy_tails=self.heavy_tails,
            )
        from pentachora.data.images import ImageCropSource

        train, _ = self._split_images()
        return ImageCropSource(train, crop_size=image_size, batch_size=batch_size, seed=seed)

    def eval_images(self) -> list[torch.Tensor] | None:
        """Held-out whole images for evaluation: list of (3, H, W) in [0, 1], or None for noise."""
        if self.kind == "noise":
            return None
        return self._split_images()[1]

    def eval_noise(
        self, n_per_type: int = 64, image_size: int = 64, seed: int = 0, channels: int = 3
    ) -> dict[str, torch.Tensor] | None:
        """Fixed per-type noise evaluation batches for this spec's types, or None for image specs.

        Returns:
            ``{type: (n_per_type, C, S, S)}`` (see :func:`pentachora.data.noise.noise_eval_sets`).
        """
        if self.kind != "noise":
            return None
        from pentachora.data.noise import noise_eval_sets

        return noise_eval_sets(self.noise_types, n_per_type, image_size, seed, self.heavy_tails, channels)


def _parse_noise(spec: str, mods: list[str]) -> DataSpec:
    from pentachora.data.noise import NOISE_TYPES, tier_types, validate_types

    heavy: Literal["clamp", "raw"] = "clamp"
    types: tuple[str, ...] | None = None
    seen_tails = False
    for mod in mods:
        m = mod.strip().lower()
        if m in ("raw", "clamp"):
            if seen_tails:
                raise _spec_error(spec, "give at most one of 'raw' / 'clamp'")
            heavy, seen_tails = ("raw" if m == "raw" else "clamp"), True
            continue
        if types is not None:
            raise _spec_error(spec, "give at most one type selector (tierK or a type list)")
        if m.startswith("tier"):
            try:
                tier = int(m[4:])
                types = tier_types(tier)
            except ValueError:
                raise _spec_error(spec, f"bad tier {mod!r}, expected tier0 .. tier4") from None
            continue
        names = [t.strip() for t in m.split(",") if t.strip()]
        try:
            types = validate_types(names)
        except ValueError as err:
            raise _spec_error(spec, str(err)) from None
    return DataSpec(kind="noise", spec=spec, noise_types=types or NOISE_TYPES, heavy_tails=heavy)


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a ``--data`` string into a :class:`DataSpec`.

    Args:
        spec: See the module docstring for the accepted forms.

    Returns:
        The parsed spec (nothing is loaded yet).

    Raises:
        ValueError: On anything else, with the list of valid forms.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(str(spec), "empty spec")
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    head = head.lower()
    if head == "noise":
        mods = rest.split(":") if sep else []
        if any(not m.strip() for m in mods):
            raise _spec_error(spec, "empty modifier")
        return _parse_noise(spec, mods)
    if head == "images":
        if sep:
            raise _spec_error(spec, "'images' takes no arguments")
        return DataSpec(kind="images", spec=spec)
    if head == "folder":
        if not rest:
            raise _spec_error(spec, "folder needs a path")
        return DataSpec(kind="folder", spec=spec, path=rest)
    if head == "hf":
        parts = rest.split(":") if sep else []
        if not parts or not parts[0] or len(parts) > 3 or any(not p for p in parts):
            raise _spec_error(spec, "hf needs NAME, optionally :SPLIT and :COLUMN")
        name = parts[0]
        split = parts[1] if len(parts) > 1 else "train"
        column = parts[2] if len(parts) > 2 else "image"
        return DataSpec(kind="hf", spec=spec, hf_name=name, hf_split=split, hf_column=column)
    raise _spec_error(spec, f"unknown data kind {head!r}")

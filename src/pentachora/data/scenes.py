"""The scene world: seeded procedural still lifes, their layouts, and captions written like long prompts.

A *scene* is a dark canvas with up to ``grid²`` objects, each a colour × shape × size sitting in one
cell of a ``grid × grid`` lattice (with a small jitter). Its *layout* — per cell: empty, or
``colour · n_shapes + shape`` — is the ground truth every image-level number is scored against.

Captions come in two styles:

* **prose** — one sentence per object, in random order, each from one of many paraphrase templates,
  with filler sentences about light, mood and style between them: how people write long prompts.
* **terse** — one comma-separated clause per object (``"small red circle top left, ..."``): up to
  ``grid²`` objects in one window.

and in three lengths used by the text-to-image benchmark:

* **short** (training distribution): everything that fits one window of the frozen encoder (75
  content tokens): prose with 1–3 objects, or terse lists of 1–9 objects. The terse lists are there so
  that the model has seen crowded images whose full description fits its window (SD's UNet saw
  crowded photographs with short captions); without them a model trained on 1–3 objects could not
  draw the 5–9 of a long caption whatever the conditioning, and no long-prompt method could be told
  from another.
* **long** (test): prose with 5–9 objects spanning 2–4 windows; the first objects are written inside
  the first window, filler pushes the rest past token 75, so at least ``min_tail_objects`` objects
  are described *only* past the first window.
* **ceiling**: the same objects as a long caption, as a terse list that fits one window.

Splits are by scene: a scene belongs to ``train``, ``val`` or ``test`` by a hash of its layout (so a
layout of one split never appears in another). Phrasings are split too: ``phrasing="heldout"``
captions use object templates never used for ``"train"`` phrasings.

Everything is deterministic in ``(world seed, split, stream, index)``: :meth:`SceneWorld.scene` is
random access (no pool to keep), and :meth:`SceneWorld.caption` takes a ``count_tokens`` callable
(the frozen encoder's tokenizer) for the window accounting — every caption records the content-token
span of every object sentence.

Pixels are float32 in ``[0, 1]``, ``(3, H, W)``; models see ``2x − 1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from pentachora.data.seeding import step_generator, step_seed
from pentachora.errors import ConfigError, DataError

__all__ = [
    "CAPTION_KINDS",
    "COLOURS",
    "FILLERS",
    "HELDOUT_TEMPLATES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "TRAIN_TEMPLATES",
    "WORLD_FORMAT",
    "Caption",
    "Scene",
    "SceneObject",
    "ScenePool",
    "ScenePoolSource",
    "SceneRenderSource",
    "SceneWorld",
    "SceneWorldConfig",
    "TokenCounter",
    "degrade",
]

WORLD_FORMAT = "scene-world-v2"
"""Version of how scenes are drawn, rendered and captioned: part of every cache key built from them
(v2: 3×3 cells are named only the way people name them — no "second row, third column")."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
CAPTION_KINDS: tuple[str, ...] = ("short", "prose", "terse", "long", "ceiling")

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.94, 0.88, 0.16),
    "green": (0.16, 0.70, 0.24),
    "blue": (0.16, 0.35, 0.92),
    "purple": (0.60, 0.24, 0.80),
    "white": (0.94, 0.94, 0.94),
    "cyan": (0.10, 0.80, 0.85),
}
"""Every colour the world knows (a preset picks a subset), as RGB in [0, 1]."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
SIZES: tuple[str, ...] = ("small", "large")

_SIZE_RADIUS = {"small": 0.27, "large": 0.41}  # radius as a fraction of the cell
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "block"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "{Obj} sits in {cell}.",
    "In {cell} there is {obj}.",
    "{Cell} holds {obj}.",
    "There is {obj} in {cell}.",
    "You can see {obj} in {cell}.",
    "Place {obj} in {cell}.",
    "{Obj} rests in {cell}.",
    "At {cell}, {obj}.",
    "{Cell} is taken by {obj}.",
    "Look at {cell}: {obj}.",
    "{Obj} can be found in {cell}.",
    "In {cell} we find {obj}.",
    "Someone has put {obj} in {cell}.",
    "{Obj} is drawn in {cell}.",
    "{Cell} contains {obj}.",
    "Occupying {cell} is {obj}.",
    "There, in {cell}, is {obj}.",
    "The {shape} in {cell} is {size} and {colour}.",
    "{Obj} has been placed in {cell}.",
    "And in {cell}, {obj}.",
    "{Obj} appears in {cell}.",
    "The painter added {obj} in {cell}.",
)
"""Object-sentence templates of the training phrasings."""

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "Over in {cell} lies {obj}.",
    "{Cell} shows {obj}, clearly visible.",
    "A {shape}, {size} and {colour}, waits in {cell}.",
    "Notice {obj} positioned in {cell}.",
    "{Obj} is what fills {cell}.",
    "We also have {obj} located in {cell}.",
)
"""Object-sentence templates used only for ``phrasing="heldout"`` (never in training)."""

FILLERS: tuple[str, ...] = (
    "The light is soft and warm.",
    "Everything rests on a dark velvet cloth.",
    "The mood is calm and quiet.",
    "Highly detailed, sharp focus, studio lighting.",
    "Painted in the style of an old Dutch master.",
    "A gentle shadow falls across the table.",
    "The colours are rich and saturated.",
    "It feels like a late afternoon in autumn.",
    "The background is deep and almost black.",
    "Cinematic composition, award winning, trending on the art sites.",
    "The air is still and nothing moves.",
    "A faint glow comes from somewhere off the frame.",
    "Matte finish, no reflections, clean edges.",
    "The scene is lit from the upper left.",
    "There is a sense of order and balance.",
    "Minimalist, geometric, modern art.",
    "The whole picture is crisp and flat.",
    "Somewhere a clock is ticking.",
    "It is a simple arrangement, carefully made.",
    "Soft ambient occlusion, global illumination, octane render.",
    "The canvas is square and evenly divided.",
    "Nothing else is on the table.",
    "The atmosphere is dreamy but precise.",
    "Shot on a medium format camera.",
    "The shapes look like paper cut-outs.",
    "A quiet still life, nothing more.",
    "The darkness around the objects is velvety.",
    "Every edge is clean and every colour pure.",
    "Inspired by the Bauhaus and by children's toys.",
    "The lighting is even, with no harsh highlights.",
    "Masterpiece, best quality, ultra detailed, eight k.",
    "The mood is playful and bright.",
    "One could look at it for hours.",
    "Symmetry is not the point here.",
    "A cool breeze seems to pass through the room.",
    "The objects do not touch each other.",
)
"""Sentences about light, mood and style placed between the object sentences (never rendered)."""

_TERSE_PREFIXES = ("", "A still life: ", "Objects: ", "A dark canvas with ", "Scene: ")

TokenCounter = Callable[[Sequence[str]], list[int]]
"""``count(texts) -> [content tokens of each text]`` (no special tokens), e.g. the frozen encoder's."""


# ============================================================================================ config
@dataclass
class SceneWorldConfig:
    """What the world looks like and how its captions are written.

    Attributes:
        image_size: Canvas side in pixels (square, RGB).
        grid: Cells per side; objects sit in ``grid × grid`` cells.
        colours: Colour names (keys of :data:`COLOURS`).
        shapes: Shape names (from :data:`SHAPES`).
        sizes: Size names (from :data:`SIZES`).
        jitter: Uniform jitter of an object's centre, as a fraction of the cell (each axis).
        supersample: Anti-aliasing factor of the renderer.
        seed: World seed: every scene and caption is a function of it.
        window_tokens: Content tokens of one window of the frozen encoder (75 for 77-token windows).
        short_objects: Objects of a short prose caption (inclusive range).
        terse_objects: Objects of a terse (training) caption (inclusive range; at most ``grid²``).
        long_objects: Objects of a long caption (inclusive range).
        long_windows: Windows a long caption spans (inclusive range).
        min_tail_objects: Objects a long caption describes only past the first window.
        max_fillers_short: Filler sentences of a short prose caption (0..this many).
        val_fraction: Fraction of layouts in the validation split.
        test_fraction: Fraction of layouts in the test split.
    """

    presets: ClassVar[dict[str, dict]] = {}
    image_size: int = 32
    grid: int = 3
    colours: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    sizes: tuple[str, ...] = ("small", "large")
    jitter: float = 0.06
    supersample: int = 4
    seed: int = 0
    window_tokens: int = 75
    short_objects: tuple[int, int] = (1, 3)
    terse_objects: tuple[int, int] = (1, 9)
    long_objects: tuple[int, int] = (5, 9)
    long_windows: tuple[int, int] = (2, 4)
    min_tail_objects: int = 2
    max_fillers_short: int = 2
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("colours", "shapes", "sizes", "short_objects", "terse_objects", "long_objects",
                     "long_windows"):  # fmt: skip
            setattr(self, name, tuple(getattr(self, name)))
        problems = []
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or len(set(self.colours)) != len(self.colours) or not self.colours:
            problems.append(
                f"colours must be distinct names from {sorted(COLOURS)}, got {list(self.colours)}"
            )
        if (
            not self.shapes
            or any(s not in SHAPES for s in self.shapes)
            or len(set(self.shapes)) != len(self.shapes)
        ):
            problems.append(f"shapes must be distinct names from {list(SHAPES)}, got {list(self.shapes)}")
        if (
            not self.sizes
            or any(s not in SIZES for s in self.sizes)
            or len(set(self.sizes)) != len(self.sizes)
        ):
            problems.append(f"sizes must be distinct names from {list(SIZES)}, got {list(self.sizes)}")
        if self.grid < 2:
            problems.append(f"grid must be >= 2, got {self.grid}")
        if self.image_size < 4 * self.grid:
            problems.append(f"image_size must be >= 4·grid = {4 * self.grid}, got {self.image_size}")
        if not 0.0 <= self.jitter <= 0.1:
            problems.append(f"jitter must be in [0, 0.1] (a fraction of the cell), got {self.jitter}")
        if self.supersample < 1:
            problems.append(f"supersample must be >= 1, got {self.supersample}")
        cells = self.grid * self.grid
        for name in ("short_objects", "terse_objects", "long_objects"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= cells:
                problems.append(f"{name} must satisfy 1 <= lo <= hi <= grid² = {cells}, got {(lo, hi)}")
        lo, hi = self.long_windows
        if not 2 <= lo <= hi:
            problems.append(f"long_windows must satisfy 2 <= lo <= hi, got {(lo, hi)}")
        if not 1 <= self.min_tail_objects <= self.long_objects[0] - 1:
            problems.append(
                f"min_tail_objects must be in [1, long_objects[0] - 1], got {self.min_tail_objects}"
            )
        if self.window_tokens < 16:
            problems.append(f"window_tokens must be >= 16, got {self.window_tokens}")
        if not (
            self.val_fraction > 0 and self.test_fraction > 0 and self.val_fraction + self.test_fraction < 1
        ):
            problems.append("val_fraction and test_fraction must be > 0 and sum to < 1")
        if problems:
            raise ConfigError("invalid SceneWorldConfig: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str, **overrides: object) -> SceneWorldConfig:
        """``"cpu"`` (32 px, 3×3 cells, 6 colours × 4 shapes) or ``"gpu"`` (64 px, 4×4, 8 × 5)."""
        if name not in WORLD_PRESETS:
            raise ConfigError(f"unknown scene world preset {name!r}; known: {sorted(WORLD_PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown SceneWorldConfig field(s) {unknown}; valid: {sorted(fields)}")
        return cls(**{**WORLD_PRESETS[name], **overrides})

    @property
    def n_cells(self) -> int:
        return self.grid * self.grid

    @property
    def n_classes(self) -> int:
        """Classes per cell of a layout read as one label: empty + colours × shapes."""
        return 1 + len(self.colours) * len(self.shapes)


WORLD_PRESETS: dict[str, dict] = {
    "cpu": {},
    "gpu": {
        "image_size": 64,
        "grid": 4,
        "colours": ("red", "orange", "yellow", "green", "blue", "purple", "white", "cyan"),
        "shapes": ("circle", "square", "triangle", "cross", "diamond"),
        "terse_objects": (1, 10),
        "long_objects": (6, 12),
        "long_windows": (2, 4),
    },
}


# ============================================================================================ scenes
@dataclass(frozen=True)
class SceneObject:
    """One object: names from the world's vocabulary, its cell (row-major) and centre jitter."""

    colour: str
    shape: str
    size: str
    cell: int
    offset: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Scene:
    """A still life: objects (in no particular order) on a background colour."""

    objects: tuple[SceneObject, ...]
    background: tuple[float, float, float]

    def layout_key(self) -> tuple[tuple[int, str, str, str], ...]:
        """The scored content, canonical: ``((cell, colour, shape, size), ...)`` sorted by cell."""
        return tuple(sorted((o.cell, o.colour, o.shape, o.size) for o in self.objects))


@dataclass(frozen=True)
class Caption:
    """A caption of a scene with its window accounting.

    Attributes:
        text: The caption.
        kind: ``"prose"``, ``"terse"`` or ``"long"`` (long is prose spanning several windows).
        phrasing: ``"train"`` or ``"heldout"`` (object templates never used in training).
        order: Scene-object index of each described object, in the order the caption mentions them.
        spans: Per scene object (indexed like ``scene.objects``), the ``[start, end)`` content-token
            span of its sentence or clause under the counter the caption was made with.
        n_tokens: Content tokens of the whole caption.
    """

    text: str
    kind: str
    phrasing: str
    order: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    n_tokens: int

    def window_of(self, obj: int, window_tokens: int = 75) -> int:
        """0-based window holding the *start* of object ``obj``'s sentence."""
        return self.spans[obj][0] // window_tokens

    def object_region(self, obj: int, window_tokens: int = 75) -> str:
        """``"head"`` (sentence inside the first window), ``"tail"`` (starts past it) or ``"seam"``."""
        start, end = self.spans[obj]
        if end <= window_tokens:
            return "head"
        return "tail" if start >= window_tokens else "seam"


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


class SceneWorld:
    """Random access to the world's scenes, renders, layouts and captions.

    Args:
        config: The world (default: the ``cpu`` preset's values).
    """

    def __init__(self, config: SceneWorldConfig | None = None) -> None:
        self.config = config or SceneWorldConfig()
        c = self.config
        self.colour_index = {name: i for i, name in enumerate(c.colours)}
        self.shape_index = {name: i for i, name in enumerate(c.shapes)}
        self.cell_size = c.image_size / c.grid
        self._palette = np.array([COLOURS[n] for n in c.colours], dtype=np.float32)
        ss = c.image_size * c.supersample
        coords = (np.arange(ss, dtype=np.float32) + 0.5) / c.supersample
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")

    # ------------------------------------------------------------------ vocabulary
    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    def class_name(self, label: int) -> str:
        """``"empty"`` or ``"red circle"`` for a layout class ``label`` (0 = empty)."""
        if label == 0:
            return "empty"
        colour, shape = divmod(label - 1, len(self.config.shapes))
        return f"{self.config.colours[colour]} {self.config.shapes[shape]}"

    def cell_name(self, cell: int) -> str:
        """A short name of a cell: ``"top left"`` (3×3) or ``"row 2 column 3"``."""
        return self._cell_terse(cell, None)

    # ------------------------------------------------------------------ scenes
    def _rng(self, split: str, stream: int, index: int, part: int) -> np.random.Generator:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
        return np.random.default_rng([self.config.seed, SPLITS.index(split), int(stream), int(index), part])

    def split_of(self, scene: Scene) -> str:
        """The split a scene's layout belongs to (a seeded hash of :meth:`Scene.layout_key`)."""
        h = hashlib.blake2b(repr((self.config.seed, scene.layout_key())).encode(), digest_size=8)
        u = int.from_bytes(h.digest(), "little") / 2**64
        if u < self.config.val_fraction:
            return "val"
        if u < self.config.val_fraction + self.config.test_fraction:
            return "test"
        return "train"

    def random_scene(self, rng: np.random.Generator, n_objects: int) -> Scene:
        """A scene with ``n_objects`` objects in distinct cells (any split)."""
        c = self.config
        if not 0 <= n_objects <= c.n_cells:
            raise DataError(f"n_objects must be in [0, {c.n_cells}], got {n_objects}")
        cells = rng.choice(c.n_cells, size=n_objects, replace=False)
        objects = []
        for cell in cells:
            objects.append(
                SceneObject(
                    colour=c.colours[int(rng.integers(len(c.colours)))],
                    shape=c.shapes[int(rng.integers(len(c.shapes)))],
                    size=c.sizes[int(rng.integers(len(c.sizes)))],
                    cell=int(cell),
                    offset=(float(rng.uniform(-c.jitter, c.jitter)), float(rng.uniform(-c.jitter, c.jitter))),
                )
            )
        tint = rng.uniform(0.04, 0.22, size=3)
        return Scene(objects=tuple(objects), background=tuple(float(v) for v in tint))

    def scene(self, split: str, index: int, n_objects: tuple[int, int] | int, stream: int = 0) -> Scene:
        """Scene ``index`` of ``(split, stream)``: deterministic, and its layout is in ``split``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            index: Any integer; different indices give independent scenes.
            n_objects: A count, or an inclusive ``(lo, hi)`` range drawn uniformly.
            stream: Independent streams of one split (e.g. short vs long scenes).
        """
        rng = self._rng(split, stream, index, 0)
        lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
        for _ in range(10_000):
            scene = self.random_scene(rng, int(rng.integers(lo, hi + 1)))
            if self.split_of(scene) == split:
                return scene
        raise DataError(
            f"no {split} scene with {n_objects} objects found in 10,000 draws"
        )  # pragma: no cover

    # ------------------------------------------------------------------ layouts
    def layout(self, scene: Scene) -> np.ndarray:
        """``(grid²,)`` int64 labels: 0 empty, else ``1 + colour · n_shapes + shape``."""
        out = np.zeros(self.config.n_cells, dtype=np.int64)
        n_shapes = len(self.config.shapes)
        for o in scene.objects:
            out[o.cell] = 1 + self.colour_index[o.colour] * n_shapes + self.shape_index[o.shape]
        return out

    def size_layout(self, scene: Scene) -> np.ndarray:
        """``(grid²,)`` int64 size index per cell (−1 where the cell is empty)."""
        out = np.full(self.config.n_cells, -1, dtype=np.int64)
        for o in scene.objects:
            out[o.cell] = self.config.sizes.index(o.size)
        return out

    def size_layouts(self, scenes: Sequence[Scene]) -> np.ndarray:
        """``(N, grid²)`` size indices of many scenes."""
        if not scenes:
            return np.zeros((0, self.config.n_cells), np.int64)
        return np.stack([self.size_layout(s) for s in scenes])

    def layouts(self, scenes: Sequence[Scene]) -> np.ndarray:
        """``(N, grid²)`` labels of many scenes."""
        return (
            np.stack([self.layout(s) for s in scenes])
            if scenes
            else np.zeros((0, self.config.n_cells), np.int64)
        )

    # ------------------------------------------------------------------ rendering
    def _shape_mask(self, obj: SceneObject) -> np.ndarray:
        c = self.config
        row, col = divmod(obj.cell, c.grid)
        cx = (col + 0.5 + obj.offset[0]) * self.cell_size
        cy = (row + 0.5 + obj.offset[1]) * self.cell_size
        r = _SIZE_RADIUS[obj.size] * self.cell_size
        u, v = (self._xx - cx) / r, (self._yy - cy) / r
        if obj.shape == "circle":
            return u * u + v * v <= 1.0
        if obj.shape == "square":
            return np.maximum(np.abs(u), np.abs(v)) <= 0.82
        if obj.shape == "triangle":
            return (v <= 0.75) & (np.abs(u) <= 0.98 * (v + 1.0) / 1.75)
        if obj.shape == "cross":
            return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
        if obj.shape == "diamond":
            return np.abs(u) + np.abs(v) <= 1.05
        raise DataError(f"unknown shape {obj.shape!r}")  # pragma: no cover

    def render(self, scene: Scene) -> np.ndarray:
        """``(3, H, W)`` float32 in ``[0, 1]``: the scene, anti-aliased by supersampling."""
        c = self.config
        ss = c.image_size * c.supersample
        canvas = np.empty((ss, ss, 3), dtype=np.float32)
        canvas[:] = np.asarray(scene.background, dtype=np.float32)
        for o in scene.objects:
            canvas[self._shape_mask(o)] = COLOURS[o.colour]
        s = c.supersample
        img = canvas.reshape(c.image_size, s, c.image_size, s, 3).mean(axis=(1, 3))
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def render_batch(self, scenes: Sequence[Scene]) -> np.ndarray:
        """``(N, 3, H, W)`` float32 renders."""
        c = self.config
        if not scenes:
            return np.zeros((0, 3, c.image_size, c.image_size), np.float32)
        return np.stack([self.render(s) for s in scenes])

    # ------------------------------------------------------------------ captions
    def _cell_phrases(self, cell: int) -> list[str]:
        """Noun phrases (with article) naming a cell, e.g. ``"the top left corner"``."""
        g = self.config.grid
        r, c = divmod(cell, g)
        ordinals = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
        # 3×3 cells have names people use ("the top left corner"); larger grids are counted
        phrases = [f"the {ordinals[r]} row, {ordinals[c]} column"] if 3 < g <= 8 else []
        if g == 3:
            rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
            if r != 1 and c != 1:
                phrases += [f"the {rows[r]} {cols[c]} corner", f"the {rows[r]} {cols[c]}",
                            f"the {('upper', '', 'lower')[r]} {cols[c]} corner"]  # fmt: skip
            elif r == 1 and c == 1:
                phrases += ["the centre", "the very middle", "the middle of the canvas"]
            elif r == 1:
                phrases += [
                    f"the centre {cols[c]}",
                    f"the middle of the {cols[c]} side",
                    f"the {cols[c]} edge",
                ]
            else:
                phrases += [
                    f"the {rows[r]} centre",
                    f"the middle of the {rows[r]} row",
                    f"the {rows[r]} edge",
                ]
        else:
            row = {0: "top row", g - 1: "bottom row"}.get(r, f"{ordinals[r]} row from the top")
            col = {0: "far left", g - 1: "far right"}.get(c, f"{ordinals[c]} column from the left")
            phrases += [f"the {row}, {col}"]
            if r in (0, g - 1) and c in (0, g - 1):
                phrases += [f"the {('top', 'bottom')[r > 0]} {('left', 'right')[c > 0]} corner"]
        return phrases

    def _cell_terse(self, cell: int, rng: np.random.Generator | None) -> str:
        g = self.config.grid
        r, c = divmod(cell, g)
        if g == 3:
            rows, cols = ("top", "centre", "bottom"), ("left", "centre", "right")
            return "centre" if (r, c) == (1, 1) else f"{rows[r]} {cols[c]}"
        return f"row {r + 1} column {c + 1}"

    def _object_words(self, obj: SceneObject, rng: np.random.Generator) -> dict[str, str]:
        size = str(rng.choice(_SIZE_WORDS[obj.size]))
        shape = str(rng.choice(_SHAPE_WORDS[obj.shape]))
        bare = f"{size} {obj.colour} {shape}"
        return {"size": size, "colour": obj.colour, "shape": shape, "obj": f"{_article(bare)} {bare}"}

    def object_sentence(self, obj: SceneObject, rng: np.random.Generator, phrasing: str = "train") -> str:
        """One prose sentence describing ``obj`` from a template of ``phrasing``."""
        templates = TRAIN_TEMPLATES if phrasing == "train" else HELDOUT_TEMPLATES
        template = str(rng.choice(templates))
        words = self._object_words(obj, rng)
        cell = str(rng.choice(self._cell_phrases(obj.cell)))
        text = template.format(
            obj=words["obj"], Obj=_cap(words["obj"]), cell=cell, Cell=_cap(cell),
            size=words["size"], colour=words["colour"], shape=words["shape"],
        )  # fmt: skip
        return text

    def _terse_clause(self, obj: SceneObject, rng: np.random.Generator) -> str:
        words = self._object_words(obj, rng)
        return f"{words['size']} {obj.colour} {words['shape']} {self._cell_terse(obj.cell, rng)}"

    def caption(
        self,
        scene: Scene,
        kind: Literal["short", "prose", "terse", "long", "ceiling"],
        rng: np.random.Generator,
        count_tokens: TokenCounter,
        phrasing: Literal["train", "heldout"] = "train",
    ) -> Caption:
        """A caption of ``scene`` (see the module docstring for the kinds).

        Args:
            scene: The scene (its object count must suit the kind).
            kind: ``"prose"`` (fits one window), ``"terse"`` / ``"ceiling"`` (a terse list that fits
                one window), ``"short"`` (prose if the scene has at most ``short_objects[1]`` objects,
                else terse) or ``"long"`` (prose over 2+ windows with objects past the first).
            rng: Randomness of the wording.
            count_tokens: The frozen encoder's content-token counter.
            phrasing: Object templates: ``"train"`` or ``"heldout"`` (terse clauses have one phrasing).

        Raises:
            DataError: The scene cannot be captioned that way (e.g. too many objects for prose in
                one window, too few for a long caption).
        """
        if kind not in CAPTION_KINDS:
            raise DataError(f"unknown caption kind {kind!r}; use one of {CAPTION_KINDS}")
        if phrasing not in ("train", "heldout"):
            raise DataError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
        if kind == "short":
            kind = "prose" if len(scene.objects) <= self.config.short_objects[1] else "terse"
        if kind in ("terse", "ceiling"):
            return self._terse_caption(scene, rng, count_tokens)
        if kind == "prose":
            return self._prose_caption(scene, rng, count_tokens, phrasing)
        return self._long_caption(scene, rng, count_tokens, phrasing)

    def _spans(
        self, parts: list[str], owners: list[int], n_objects: int, count_tokens: TokenCounter, sep: str = " "
    ) -> tuple[str, tuple[tuple[int, int], ...], int]:
        """Join parts; the content-token span of each object's part (prefix counting)."""
        text = sep.join(parts)
        prefixes = [sep.join(parts[: i + 1]) for i in range(len(parts))]
        ends = count_tokens(prefixes)
        spans: list[tuple[int, int]] = [(0, 0)] * n_objects
        start = 0
        for owner, end in zip(owners, ends, strict=True):
            if owner >= 0:
                spans[owner] = (start, end)
            start = end
        return text, tuple(spans), ends[-1] if ends else 0

    @staticmethod
    def _filler_stream(rng: np.random.Generator) -> list[str]:
        """Filler sentences in a random order, none repeated within one caption."""
        return [FILLERS[int(i)] for i in rng.permutation(len(FILLERS))]

    def _prose_caption(
        self, scene: Scene, rng: np.random.Generator, count_tokens: TokenCounter, phrasing: str
    ) -> Caption:
        n = len(scene.objects)
        if n == 0:
            raise DataError("a prose caption needs at least one object")
        limit = self.config.window_tokens
        for n_fill in range(int(rng.integers(0, self.config.max_fillers_short + 1)), -1, -1):
            order = [int(i) for i in rng.permutation(n)]
            parts = [self.object_sentence(scene.objects[i], rng, phrasing) for i in order]
            owners = list(order)
            fillers = self._filler_stream(rng)
            for _ in range(n_fill):
                at = int(rng.integers(0, len(parts) + 1))
                parts.insert(at, fillers.pop())
                owners.insert(at, -1)
            text, spans, n_tokens = self._spans(parts, owners, n, count_tokens)
            if n_tokens <= limit:
                return Caption(text, "prose", phrasing, tuple(order), spans, n_tokens)
        raise DataError(f"{n} object sentences do not fit one window of {limit} tokens; use a terse caption")

    def _terse_caption(self, scene: Scene, rng: np.random.Generator, count_tokens: TokenCounter) -> Caption:
        n = len(scene.objects)
        if n == 0:
            raise DataError("a terse caption needs at least one object")
        limit = self.config.window_tokens
        for attempt in range(8):
            order = [int(i) for i in rng.permutation(n)]
            prefix = "" if attempt >= 4 else str(rng.choice(_TERSE_PREFIXES))
            clauses = [self._terse_clause(scene.objects[i], rng) for i in order]
            parts = [prefix + clauses[0], *clauses[1:]]
            parts[-1] = parts[-1] + "."
            text, spans, n_tokens = self._spans(parts, list(order), n, count_tokens, sep=", ")
            if n_tokens <= limit:
                return Caption(text, "terse", "train", tuple(order), spans, n_tokens)
        raise DataError(f"a terse list of {n} objects does not fit one window of {limit} tokens")

    def _long_caption(
        self, scene: Scene, rng: np.random.Generator, count_tokens: TokenCounter, phrasing: str
    ) -> Caption:
        c = self.config
        n, w = len(scene.objects), c.window_tokens
        if n < c.min_tail_objects + 1:
            raise DataError(f"a long caption needs at least {c.min_tail_objects + 1} objects, got {n}")
        for _ in range(200):
            target = int(rng.integers(c.long_windows[0], c.long_windows[1] + 1))
            order = [int(i) for i in rng.permutation(n)]
            # at least min_tail_objects past the first window, at most 5 and at least 1 inside it
            n_tail = int(rng.integers(max(c.min_tail_objects, n - 5), max(c.min_tail_objects, n - 2) + 1))
            n_tail = min(n_tail, n - 1)
            head, tail = order[: n - n_tail], order[n - n_tail :]
            parts = [self.object_sentence(scene.objects[i], rng, phrasing) for i in head]
            owners = list(head)
            fillers = self._filler_stream(rng)
            for _ in range(int(rng.integers(0, 2))):  # a filler or none among the head objects
                at = int(rng.integers(0, len(parts) + 1))
                parts.insert(at, fillers.pop())
                owners.insert(at, -1)
            if count_tokens([" ".join(parts)])[0] > w:
                continue  # the head objects must sit inside the first window
            while count_tokens([" ".join(parts)])[0] < w and fillers:  # filler carries the text past token w
                parts.append(fillers.pop())
                owners.append(-1)
            first_tail = len(parts)
            for i in tail:
                parts.append(self.object_sentence(scene.objects[i], rng, phrasing))
                owners.append(i)
            total = count_tokens([" ".join(parts)])[0]
            while total <= w * (target - 1) and fillers:  # more filler among the tail until `target` windows
                at = int(rng.integers(first_tail, len(parts) + 1))
                parts.insert(at, fillers.pop())
                owners.insert(at, -1)
                total = count_tokens([" ".join(parts)])[0]
            if total > w * c.long_windows[1]:
                continue
            text, spans, n_tokens = self._spans(parts, owners, n, count_tokens)
            described = [i for i in owners if i >= 0]
            regions = [spans[i][0] >= w for i in tail]
            if all(regions) and all(spans[i][1] <= w for i in head):
                return Caption(text, "long", phrasing, tuple(described), spans, n_tokens)
        raise DataError(f"could not write a long caption for a scene of {n} objects")  # pragma: no cover

    # ------------------------------------------------------------------ convenience
    def sample(
        self,
        split: str,
        index: int,
        kind: Literal["short", "prose", "terse", "long", "ceiling"],
        count_tokens: TokenCounter,
        phrasing: Literal["train", "heldout"] = "train",
        n_objects: tuple[int, int] | int | None = None,
        stream: int | None = None,
    ) -> tuple[Scene, Caption]:
        """Scene ``index`` of a split with a caption of ``kind`` (deterministic).

        ``kind="short"`` is the training mixture: a coin picks a prose caption of ``short_objects``
        objects or a terse one of ``terse_objects``. The object count defaults to the kind's range
        (``long``/``ceiling``: ``long_objects``). Each kind has its own stream so short and long
        scenes are independent; ``"ceiling"`` shares the ``"long"`` stream, so ceiling ``index`` is
        long scene ``index`` captioned tersely.
        """
        c = self.config
        kinds = {"short": 0, "prose": 1, "terse": 2, "long": 3, "ceiling": 3}
        if kind not in kinds:
            raise DataError(f"unknown caption kind {kind!r}; use one of {CAPTION_KINDS}")
        stream = kinds[kind] if stream is None else stream
        rng = self._rng(split, stream, index, 1)
        if kind == "short":  # the training mixture: half prose (1–3 objects), half terse (1–9)
            kind = "prose" if rng.random() < 0.5 else "terse"
            if n_objects is None:
                n_objects = c.short_objects if kind == "prose" else c.terse_objects
        if n_objects is None:
            if kind == "prose":
                n_objects = c.short_objects
            elif kind == "terse":
                n_objects = c.terse_objects
            else:
                n_objects = c.long_objects
        scene = self.scene(split, index, n_objects, stream=stream)
        return scene, self.caption(scene, kind, rng, count_tokens, phrasing)


# ============================================================================================ batches
def degrade(
    images: torch.Tensor,
    generator: torch.Generator,
    noise: tuple[float, float] = (0.0, 0.12),
    blur_prob: float = 0.3,
    colour_jitter: float = 0.06,
) -> torch.Tensor:
    """The imperfections of generated images, applied to renders (the reader's augmentation).

    Per image: Gaussian pixel noise of a standard deviation drawn from ``noise``; with probability
    ``blur_prob`` a partial 3×3 binomial blur; a contrast, brightness and per-channel colour shift of
    up to ``colour_jitter``. Deterministic in ``generator``.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        generator: The randomness.
        noise: Range of the noise standard deviation (pixel units).
        blur_prob: Probability of a blur.
        colour_jitter: Largest brightness / per-channel shift (contrast moves by 2.5× this).

    Returns:
        ``(B, 3, H, W)`` clamped to [0, 1].
    """
    b = images.shape[0]

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    x = images
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3
    )
    amount = uniform(b, 1, 1, 1) * (uniform(b, 1, 1, 1) < blur_prob)
    x = x + amount * (blurred - x)
    contrast = uniform(b, 1, 1, 1, lo=1 - 2.5 * colour_jitter, hi=1 + 2.5 * colour_jitter)
    shift = uniform(b, 1, 1, 1, lo=-colour_jitter, hi=colour_jitter) + uniform(
        b, 3, 1, 1, lo=-colour_jitter / 2, hi=colour_jitter / 2
    )
    x = (x - 0.5) * contrast + 0.5 + shift
    sigma = uniform(b, 1, 1, 1, lo=noise[0], hi=noise[1])
    x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(0.0, 1.0)


class SceneRenderSource:
    """Renders of random training-split scenes with their layouts: the reader's training data.

    ``batch(step)`` → ``{"pixel_values" (B, 3, H, W) in [0, 1], "labels" (B, g²), "sizes" (B, g²)}``
    (sizes −1 on empty cells), degraded by :func:`degrade` unless ``augment=False``. Object counts are
    uniform in ``n_objects``. Deterministic in ``(seed, step)``.
    """

    def __init__(
        self,
        world: SceneWorld,
        batch_size: int,
        seed: int = 0,
        n_objects: tuple[int, int] | None = None,
        augment: bool = True,
        split: str = "train",
    ) -> None:
        self.world, self.batch_size, self.seed, self.augment, self.split = (
            world,
            batch_size,
            seed,
            augment,
            split,
        )
        self.n_objects = n_objects or (0, world.config.n_cells)

    def scenes(self, step: int) -> list[Scene]:
        """The scenes of batch ``step``."""
        base = step_seed(self.seed, step) * self.batch_size  # non-negative, also for negative eval steps
        stream = 100
        return [
            self.world.scene(self.split, base + i, self.n_objects, stream=stream)
            for i in range(self.batch_size)
        ]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        scenes = self.scenes(step)
        images = torch.from_numpy(self.world.render_batch(scenes))
        if self.augment:
            images = degrade(images, step_generator(self.seed, step))
        return {
            "pixel_values": images,
            "labels": torch.from_numpy(self.world.layouts(scenes)),
            "sizes": torch.from_numpy(self.world.size_layouts(scenes)),
        }


@dataclass
class ScenePool:
    """A fixed set of captioned scenes with the frozen encoder's states: the T2I training data.

    Attributes:
        images: ``(N, 3, H, W)`` uint8 renders.
        states: ``(N, W, H_enc)`` float16 encoder states of the captions (the UNet's conditioning).
        layouts: ``(N, g²)`` int64 layout labels.
        captions: The N captions.
    """

    images: torch.Tensor
    states: torch.Tensor
    layouts: torch.Tensor
    captions: list[str]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if not (self.states.shape[0] == self.layouts.shape[0] == len(self.captions) == n):
            raise DataError(
                f"a scene pool needs as many images ({n}), states ({self.states.shape[0]}), layouts "
                f"({self.layouts.shape[0]}) and captions ({len(self.captions)})"
            )
        if n == 0:
            raise DataError("a scene pool needs at least one scene")

    def __len__(self) -> int:
        return self.images.shape[0]


class ScenePoolSource:
    """``batch(step)`` → ``{"pixel_values" (B, 3, H, W) in [0, 1], "encoder_hidden_states" (B, W, H)}``.

    Uniform draws from a :class:`ScenePool`, deterministic in ``(seed, step)``.
    """

    def __init__(self, pool: ScenePool, batch_size: int, seed: int = 0) -> None:
        self.pool, self.batch_size, self.seed = pool, batch_size, seed

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.pool), (self.batch_size,), generator=step_generator(self.seed, step))
        return {
            "pixel_values": self.pool.images[idx].float() / 255.0,
            "encoder_hidden_states": self.pool.states[idx].float(),
        }

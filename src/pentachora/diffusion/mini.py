"""The miniature text-to-image model as a diffusers-style pipeline, and the long-prompt encoders it is judged with.

:class:`MiniT2IPipeline` joins a trained :class:`~pentachora.t2i.MiniT2I` with its frozen window
encoder and is called like a diffusers pipeline::

    pipe = MiniT2IPipeline.from_run("runs/t2i")
    image = pipe("a small red circle in the top left corner.").images[0]          # native: 77 tokens
    embeds = long_prompt_embeds(memory, [long_prompt], negative_prompts=[""])    # the one call
    image = pipe(**embeds.pipeline_kwargs()).images[0]

A prompt given as text is encoded the way SD encodes one (its first 77-token window; the rest is
cut). Long prompts reach it through ``prompt_embeds``; :func:`prompt_conditioning` builds them for
every contender of the image-level benchmark from one spec string (:data:`ENCODER_SPECS`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pentachora.diffusion.conditioning import LongPromptEmbeds, long_prompt_embeds
from pentachora.errors import ConfigError, DataError
from pentachora.memory.model import GeometricMemory, MemoryConfig
from pentachora.nn.text_encoder import FrozenTextEncoder
from pentachora.t2i.model import MiniT2I
from pentachora.training.state import load_latest

__all__ = [
    "ENCODER_SPECS",
    "EncoderSpec",
    "MiniT2IPipeline",
    "MiniT2IPipelineOutput",
    "check_prompts",
    "parse_encoder_spec",
    "prompt_conditioning",
    "training_free_memory",
]

ENCODER_SPECS: dict[str, str] = {
    "native": "the pipeline's own encoding: the first 77-token window (the tail is cut, as in SD)",
    "concat": "compel-style concatenation: every 77-token window encoded alone, (B, 77·k, H)",
    "shift:λ": "training-free mean shift: native + λ·(mean of all windows' states − mean of the first), 77 positions",
    "shift-chunks:λ": "concatenated windows, each shifted toward the whole prompt by λ (training-free), 77·k positions",
    "memory:RUN": "a trained residual memory model (77 positions); memory:RUN@α blends (1−α)·native + α·memory",
    "chunks:RUN": "a trained memory model's contextual chunks, (B, 77·k, H)",
}
"""The ``--encoder`` values of ``pentachora generate`` and the benchmark's contenders."""


@dataclass
class MiniT2IPipelineOutput:
    """What :meth:`MiniT2IPipeline.__call__` returns (diffusers' ``ImagePipelineOutput`` shape).

    Attributes:
        images: PIL images, or a ``(B, 3, H, W)`` tensor in [0, 1] for ``output_type="pt"``, or
            ``(B, H, W, 3)`` numpy for ``"np"``.
    """

    images: Any


class MiniT2IPipeline:
    """A trained :class:`MiniT2I` with its frozen encoder, called like a diffusers pipeline.

    Args:
        model: The trained model.
        encoder: Its frozen window encoder (default: loaded from ``model.config.encoder``, offline).
    """

    def __init__(self, model: MiniT2I, encoder: FrozenTextEncoder | None = None) -> None:
        self.model = model.eval()
        c = model.config
        self.encoder = encoder or FrozenTextEncoder.from_pretrained(c.encoder, window=c.encoder_window)
        if self.encoder.hidden_size != c.cross_attention_dim or self.encoder.window != c.encoder_window:
            raise ConfigError(
                f"encoder {self.encoder.name!r} (width {self.encoder.hidden_size}, window {self.encoder.window}) "
                f"does not fit the model (width {c.cross_attention_dim}, window {c.encoder_window})"
            )

    @classmethod
    def from_run(cls, path: str | os.PathLike) -> MiniT2IPipeline:
        """Load from a run folder (``final/`` or the latest checkpoint) or a checkpoint folder.

        Raises:
            CheckpointError: not a ``mini-t2i`` checkpoint (a run of another family says which).
        """
        return cls(load_latest(path, MiniT2I.from_pretrained))

    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """``(B, 77, H)``: each prompt's first window (SD's truncation)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.encoder.native_sequence(prompts)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        sampler: str | None = None,
        **unused: Any,
    ) -> MiniT2IPipelineOutput:
        """Generate images from prompts or from ``prompt_embeds`` (as diffusers pipelines take them).

        Raises:
            DataError: Neither or both of ``prompt`` / ``prompt_embeds``, or an unknown ``output_type``.
        """
        if unused:
            extra = sorted(k for k, v in unused.items() if v is not None)
            if extra:
                raise DataError(
                    f"MiniT2IPipeline does not take {extra} (it has one text tower, no pooled vector)"
                )
        if (prompt is None) == (prompt_embeds is None):
            raise DataError("give exactly one of prompt and prompt_embeds")
        if prompt is not None:
            prompt_embeds = self.encode_prompt(check_prompts([prompt] if isinstance(prompt, str) else prompt))
        assert prompt_embeds is not None
        if negative_prompt is not None:
            if negative_prompt_embeds is not None:
                raise DataError("give at most one of negative_prompt and negative_prompt_embeds")
            negs = (
                [negative_prompt] * prompt_embeds.shape[0]
                if isinstance(negative_prompt, str)
                else list(negative_prompt)
            )
            negative_prompt_embeds = self.encode_prompt(negs)
        if num_images_per_prompt > 1:
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)
        images = self.model.generate(
            prompt_embeds, negative_prompt_embeds, guidance_scale, num_inference_steps, generator, sampler
        )
        if output_type == "pt":
            return MiniT2IPipelineOutput(images)
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return MiniT2IPipelineOutput(array)
        if output_type == "pil":
            from PIL import Image

            return MiniT2IPipelineOutput([Image.fromarray((a * 255).round().astype("uint8")) for a in array])
        raise DataError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")


# ============================================================================================ contenders
@dataclass(frozen=True)
class EncoderSpec:
    """A parsed ``--encoder`` value: ``kind`` in ``native, concat, shift, shift-chunks, memory, chunks``."""

    kind: str
    value: float | None = None
    run: str | None = None
    alpha: float = 1.0

    @property
    def label(self) -> str:
        if self.kind in ("native", "concat"):
            return self.kind
        if self.kind in ("shift", "shift-chunks"):
            return f"{self.kind}:{self.value:g}"
        alpha = f"@{self.alpha:g}" if self.alpha != 1.0 else ""
        return f"{self.kind}:{self.run}{alpha}"


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """Parse an ``--encoder`` value (see :data:`ENCODER_SPECS`).

    Raises:
        ConfigError: an unknown kind or a malformed value (the message lists the valid forms).
    """
    forms = ", ".join(ENCODER_SPECS)
    text = spec.strip()
    if text in ("native", "truncate"):
        return EncoderSpec("native")
    if text == "concat":
        return EncoderSpec("concat")
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(f"unknown encoder {spec!r}; use one of: {forms}")
    if kind in ("shift", "shift-chunks"):
        try:
            value = float(rest)
        except ValueError:
            raise ConfigError(f"{kind}:λ needs a number λ, got {rest!r}") from None
        if not 0.0 <= value <= 4.0:
            raise ConfigError(f"{kind}:λ needs 0 <= λ <= 4, got {value}")
        return EncoderSpec(kind, value=value)
    if kind in ("memory", "chunks"):
        run, at, alpha_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
        alpha = 1.0
        if at:
            try:
                alpha = float(alpha_text)
            except ValueError:
                raise ConfigError(f"{kind}:RUN@α needs a number α, got {alpha_text!r}") from None
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(f"α must be in [0, 1], got {alpha}")
        return EncoderSpec(kind, run=run, alpha=alpha)
    raise ConfigError(f"unknown encoder {spec!r}; use one of: {forms}")


def training_free_memory(
    encoder: FrozenTextEncoder, shift: float, chunks: bool = False, seed: int = 0
) -> GeometricMemory:
    """An untrained residual memory with ``mean_shift=shift`` over ``encoder``: native + λ·(m_all − m_i).

    Its residual layers start at zero, so its output is exactly the training-free mean shift of every
    window (``chunks=True``: every window of a contextual-chunk model). For all-MiniLM-L6-v2 it is
    the ``minilm-tiny-long`` preset; for another encoder the same preset at that encoder's widths.
    """
    overrides: dict[str, Any] = {"mean_shift": float(shift), "contextual_chunks": chunks}
    name = encoder.name
    if name != "minilm":
        h = encoder.hidden_size
        overrides.update(
            encoder=name, teacher=name, extraction_layers=(encoder.num_layers,), hidden_size=h,
            teacher_dim=encoder.pooled_dim, dim=h, n_heads=4 if h % 4 == 0 else 1, n_anchors=16,
        )  # fmt: skip
    config = MemoryConfig.preset("minilm-tiny-long", **overrides)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        memory = GeometricMemory(config).eval()
    finally:
        torch.random.set_rng_state(state)
    return memory


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Refuse prompts the model cannot draw from: empty ones, and ones of weighting syntax only.

    Raises:
        DataError: naming the first bad prompt.
    """
    out = list(prompts)
    if not out:
        raise DataError("no prompts given")
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise DataError(
                f"prompt {i} is empty; describe a scene, e.g. 'a small red circle in the centre.'"
            )
        if not re.search(r"[^\W\d_]", _WEIGHT_SYNTAX.sub(" ", p)):
            raise DataError(
                f"prompt {i} ({p[:40]!r}) holds only weighting syntax and no words; weighting such as "
                "'(word:1.2)' is read as plain text here, so write the words themselves"
            )
    return out


_WEIGHT_SYNTAX = re.compile(r"[()\[\]{}:+\-\d.,\s]+")


def _check_memory(memory: GeometricMemory, model: MiniT2I, where: str) -> None:
    c = memory.config
    if (
        c.encoder != model.config.encoder
        or c.target_layer != "last"
        or c.window != model.config.encoder_window
    ):
        raise ConfigError(
            f"{where} reads {c.encoder!r} (window {c.window}, {c.target_layer} layer), but the T2I model is "
            f"conditioned on {model.config.encoder!r} (window {model.config.encoder_window}, last layer)"
        )


def prompt_conditioning(
    spec: str | EncoderSpec,
    model: MiniT2I,
    encoder: FrozenTextEncoder | None = None,
    weighting: str = "none",
) -> Callable[[Sequence[str]], LongPromptEmbeds]:
    """A function ``prompts -> LongPromptEmbeds`` (positives and empty-prompt negatives) for a contender.

    With ``weighting="none"`` (default) every contender goes through
    :func:`pentachora.diffusion.long_prompt_embeds` with the frozen encoder (``native``, ``concat``),
    an untrained shift model (``shift``, ``shift-chunks``) or a trained memory (``memory``, ``chunks``):
    plain text, windows cut every 75 tokens. With ``weighting="a1111"`` or ``"compel"`` the same
    contender goes through :class:`~pentachora.diffusion.LongPrompt` instead: weighting syntax and
    ``BREAK`` are parsed and windows end at word or punctuation boundaries.

    Raises:
        ConfigError: a malformed spec or dialect, or a memory over another encoder than the model's.
        CheckpointError: a memory run that cannot be loaded.
    """
    from pentachora.diffusion.long_prompt import LongPrompt
    from pentachora.diffusion.weighting import DIALECTS

    if weighting not in DIALECTS:
        raise ConfigError(f"weighting must be one of {DIALECTS}, got {weighting!r}")
    parsed = parse_encoder_spec(spec) if isinstance(spec, str) else spec
    c = model.config
    enc = encoder or FrozenTextEncoder.from_pretrained(c.encoder, window=c.encoder_window)
    memory: GeometricMemory | None = None
    chunks = parsed.kind in ("concat", "shift-chunks", "chunks")
    if parsed.kind in ("shift", "shift-chunks"):
        memory = training_free_memory(enc, float(parsed.value or 0.0), chunks=chunks)
    elif parsed.kind in ("memory", "chunks"):
        assert parsed.run is not None
        memory = load_latest(parsed.run, GeometricMemory.from_pretrained).eval()
    if memory is not None:
        _check_memory(memory, model, parsed.label)
    alpha = parsed.alpha

    if weighting != "none":
        if memory is not None:
            lp = LongPrompt([enc], memory, dialect=weighting, chunks=chunks, alpha=alpha)
        else:
            lp = LongPrompt([enc], dialect=weighting, chunks=None if chunks else False)

        def weighted(prompts: Sequence[str]) -> LongPromptEmbeds:
            prompts = list(prompts)
            if not prompts:
                raise DataError("no prompts given")
            return lp(prompts, negative_prompt="")

        return weighted

    def build(prompts: Sequence[str]) -> LongPromptEmbeds:
        prompts = check_prompts(prompts)
        source = memory if memory is not None else enc
        return long_prompt_embeds(source, prompts, [""] * len(prompts), alpha=alpha, chunks=chunks)  # type: ignore[arg-type]

    return build


def describe_spec(spec: str | EncoderSpec) -> dict[str, Any]:
    """JSON-able description of a contender spec."""
    parsed = parse_encoder_spec(spec) if isinstance(spec, str) else spec
    return {**dataclasses.asdict(parsed), "label": parsed.label}

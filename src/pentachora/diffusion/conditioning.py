"""Long-prompt ``prompt_embeds`` for diffusers' Stable Diffusion 1.5 and SDXL pipelines.

A trained :class:`~pentachora.memory.GeometricMemory` over SD's own CLIP text tower reads up to
``max_tokens`` (576) tokens and speaks that tower's 77-position format, so its sequence is a drop-in
``prompt_embeds``::

    from diffusers import StableDiffusionPipeline
    from pentachora.diffusion import long_prompt_embeds
    from pentachora.recipes.memory import load_memory_model

    memory = load_memory_model("runs/memory-clip-l")          # trained with the clip-l preset
    embeds = long_prompt_embeds(memory, [long_prompt], negative_prompts=[""], alpha=1.0)
    image = pipe(**embeds.pipeline_kwargs(), num_inference_steps=30).images[0]

``alpha`` blends with the native (truncated) encoder output, ``(1 − α)·native + α·memory`` — the
seed's blend experiment; ``alpha=0`` is exactly what the pipeline does on its own. Negative prompts
are usually short and are encoded natively (the seed found the reconstructor weak on near-empty
memories). For SDXL, :func:`sdxl_long_prompt_embeds` concatenates the two towers' sequences
(``(B, 77, 768 + 1280)``); either tower may be a memory model or the native encoder. SDXL's pooled
vector (``add_text_embeds``) stays the native bigG pooled output of the first window — exactly what
SDXL pipelines do today — unless a memory model whose pooled output lives in that space is given.

Nothing is downloaded: the memory model names its frozen encoder, which loads offline by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pentachora.memory.encoders import FrozenTextEncoder
from pentachora.memory.model import GeometricMemory

__all__ = ["LongPromptEmbeds", "long_prompt_embeds", "sdxl_long_prompt_embeds"]


@dataclass
class LongPromptEmbeds:
    """Embeddings ready for a diffusers pipeline.

    Attributes:
        prompt_embeds: ``(B, 77, H)`` (SDXL: ``(B, 77, H_l + H_g)``).
        negative_prompt_embeds: Same shape, or None.
        pooled_prompt_embeds: SDXL ``(B, P)`` pooled vector, or None for SD 1.5.
        negative_pooled_prompt_embeds: SDXL negative pooled vector, or None.
        n_tokens: ``(B,)`` prompt tokens read (after truncation at ``max_tokens``).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LongPromptEmbeds:
        """A copy on ``device`` / in ``dtype`` (e.g. the pipeline's fp16)."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return LongPromptEmbeds(
            mv(self.prompt_embeds),
            mv(self.negative_prompt_embeds),
            mv(self.pooled_prompt_embeds),
            mv(self.negative_pooled_prompt_embeds),
            self.n_tokens,
        )

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``pipe(...)`` (only the tensors that are set)."""
        keys = (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def _sequence(
    source: GeometricMemory | FrozenTextEncoder, prompts: Sequence[str], alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 77, H)`` from a memory model (blended with native by ``alpha``) or a native encoder."""
    if isinstance(source, FrozenTextEncoder):
        seq, _ = source.native_sequence(prompts)
        return seq, torch.tensor([min(len(t), source.content_window) for t in source.tokenize(prompts)])
    encoder = source.load_encoder()
    enc = source.encode(list(prompts), encoder=encoder)
    seq = enc.sequence
    if alpha != 1.0:
        native, _ = encoder.native_sequence(prompts)
        if native.shape != seq.shape:
            raise ValueError(f"cannot blend: native {tuple(native.shape)} vs memory {tuple(seq.shape)}")
        seq = (1.0 - alpha) * native + alpha * seq
    return seq, enc.n_tokens


def _native_encoder(source: GeometricMemory | FrozenTextEncoder) -> FrozenTextEncoder:
    return source if isinstance(source, FrozenTextEncoder) else source.load_encoder()


@torch.no_grad()
def long_prompt_embeds(
    memory: GeometricMemory,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    alpha: float = 1.0,
) -> LongPromptEmbeds:
    """SD 1.5 (or any single-CLIP pipeline) ``prompt_embeds`` for long prompts.

    Args:
        memory: A memory model trained over the pipeline's text encoder (``target_layer="last"`` for
            SD 1.5).
        prompts: Prompt(s), each up to the model's ``max_tokens``.
        negative_prompts: Optional negative prompt(s), encoded natively (77-token window).
        alpha: Blend ``(1 − α)·native + α·memory``.

    Returns:
        :class:`LongPromptEmbeds` with ``prompt_embeds (B, 77, H)`` (and negatives).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seq, n_tokens = _sequence(memory, prompts, alpha)
    neg = None
    if negative_prompts is not None:
        negatives = (
            [negative_prompts] * len(prompts) if isinstance(negative_prompts, str) else list(negative_prompts)
        )
        neg, _ = _native_encoder(memory).native_sequence(negatives)
    return LongPromptEmbeds(prompt_embeds=seq, negative_prompt_embeds=neg, n_tokens=n_tokens)


@torch.no_grad()
def sdxl_long_prompt_embeds(
    tower_l: GeometricMemory | FrozenTextEncoder,
    tower_g: GeometricMemory | FrozenTextEncoder,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    alpha: float = 1.0,
) -> LongPromptEmbeds:
    """SDXL ``prompt_embeds (B, 77, H_l + H_g)`` + ``pooled_prompt_embeds`` for long prompts.

    Args:
        tower_l: CLIP-L side: a memory model over SDXL's ``text_encoder`` (penultimate layer) or the
            native :class:`FrozenTextEncoder` (``target_layer="penultimate"``).
        tower_g: bigG side: a memory model over ``text_encoder_2`` or the native encoder
            (``CLIPTextModelWithProjection``, ``target_layer="penultimate"``, pooling ``projection``).
        prompts: Prompt(s).
        negative_prompts: Optional negatives (native on both towers).
        alpha: Blend of every memory tower with its native output.

    Returns:
        :class:`LongPromptEmbeds` with all four SDXL tensors (negatives when given).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seq_l, n_tokens = _sequence(tower_l, prompts, alpha)
    seq_g, _ = _sequence(tower_g, prompts, alpha)
    native_g = _native_encoder(tower_g)
    pooled = _native_pooled(native_g, prompts)
    neg = neg_pooled = None
    if negative_prompts is not None:
        negatives = (
            [negative_prompts] * len(prompts) if isinstance(negative_prompts, str) else list(negative_prompts)
        )
        nl, _ = _native_encoder(tower_l).native_sequence(negatives)
        ng, _ = native_g.native_sequence(negatives)
        neg = torch.cat([nl, ng], dim=-1)
        neg_pooled = _native_pooled(native_g, negatives)
    return LongPromptEmbeds(
        prompt_embeds=torch.cat([seq_l, seq_g], dim=-1),
        negative_prompt_embeds=neg,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=neg_pooled,
        n_tokens=n_tokens,
    )


def _native_pooled(encoder: FrozenTextEncoder, prompts: Sequence[str]) -> torch.Tensor:
    """The pooled output of the first window, as SDXL pipelines compute it."""
    content = [t[: encoder.content_window] for t in encoder.tokenize(prompts)]
    ids, mask = encoder.pad_windows([encoder.with_specials(c) for c in content])
    return encoder.encode_windows(ids, mask).pooled.cpu()

"""Long-prompt ``prompt_embeds`` for diffusers' Stable Diffusion 1.5 and SDXL pipelines.

A trained :class:`~pentachora.memory.GeometricMemory` over SD's own CLIP text tower reads up to
``max_tokens`` (576) tokens and speaks that tower's format. **The one call a user makes**::

    from pentachora.diffusion import long_prompt_embeds, sdxl_long_prompt_embeds
    from pentachora.recipes.memory import load_memory_model

    memory = load_memory_model("runs/memory-clip-l")          # trained over SD 1.5's text encoder
    embeds = long_prompt_embeds(memory, [long_prompt], negative_prompts=[""])
    image = pipe(**embeds.pipeline_kwargs(), num_inference_steps=30).images[0]

    # SDXL: one memory model per tower, the pooled vector from the whole prompt
    embeds = sdxl_long_prompt_embeds(memory_l, memory_g, [long_prompt], negative_prompts=[""])
    image = sdxl_pipe(**embeds.pipeline_kwargs()).images[0]

Two output shapes:

* ``chunks=False`` (default) — one ``(B, 77, H)`` sequence, the shape every pipeline expects. With a
  ``sequence_mode="residual"`` model a prompt that fits one window comes out as the pipeline's own
  native sequence (exact by construction); longer prompts add the memory's residual.
* ``chunks=True`` — *contextual chunks* (models trained with ``contextual_chunks=True``):
  ``(B, 77·k, H)`` like compel / the lpw pipelines, but every 77-position chunk carries a residual
  read from the memory of the whole prompt, so the chunks see each other. Texts of a batch with fewer
  windows, and the negative prompts, are padded with the native encoding of the empty prompt (what
  compel does), so positive and negative embeddings have the same length.

``alpha`` blends with the native output, ``(1 − α)·native + α·memory`` (the seed's blend
experiment); ``alpha=0`` is exactly what the pipeline does on its own. Negative prompts are encoded
natively. For SDXL the two towers' sequences are concatenated (``(B, ·, 768 + 1280)``); either tower
may be a memory model or the native :class:`FrozenTextEncoder`. SDXL's pooled vector
(``add_text_embeds``) is drawn from the whole prompt: ``pooled="window_mean"`` (default) averages the
bigG tower's native pooled vector over every window and rescales it to their mean norm (for a
one-window prompt this *is* the pipeline's pooled vector); ``"memory"`` uses the bigG memory model's
pooled output when its teacher space is that pooled space; ``"first_window"`` is what SDXL pipelines
do today. Negative prompts keep the native first-window pooled vector.

**Prompt weighting is not read here**: these functions take plain text (brackets and numbers become
tokens; a warning says so when a prompt looks weighted). :class:`~pentachora.diffusion.LongPrompt`
parses A1111 / compel weighting and ``BREAK`` and builds itself from a pipeline.

Nothing is downloaded: the memory model names its frozen encoder, which loads offline by default.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pentachora.data.segmenter import Segmenter
from pentachora.errors import ConfigError
from pentachora.memory.model import GeometricMemory, native_window_sequences
from pentachora.memory.modes import check_pooled_mode
from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = ["LongPromptEmbeds", "long_prompt_embeds", "sdxl_long_prompt_embeds"]

logger = logging.getLogger(__name__)

_WEIGHTING = re.compile(r"\([^()]*:\s*-?[0-9.]+\s*\)|\w[+-]{2,}|\(\(|\[\[")
DEFAULT_MAX_TOKENS = 576


@dataclass
class LongPromptEmbeds:
    """Embeddings ready for a diffusers pipeline.

    Attributes:
        prompt_embeds: ``(B, 77, H)`` or, with chunks, ``(B, 77·k, H)`` (SDXL: ``H_l + H_g`` wide).
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


# ----------------------------------------------------------------------------- helpers
def _as_list(prompts: str | Sequence[str]) -> list[str]:
    return [prompts] if isinstance(prompts, str) else list(prompts)


def _negatives(negative_prompts: str | Sequence[str] | None, n: int) -> list[str] | None:
    if negative_prompts is None:
        return None
    negatives = [negative_prompts] * n if isinstance(negative_prompts, str) else list(negative_prompts)
    if len(negatives) != n:
        raise ConfigError(
            f"{len(negatives)} negative prompts for {n} prompts; give one per prompt or one string"
        )
    return negatives


def _warn_weighting(prompts: Sequence[str]) -> None:
    if any(_WEIGHTING.search(p) for p in prompts):
        logger.warning(
            "prompt weighting syntax such as '(word:1.3)', 'word++' or '((word))' is read as plain text by "
            "this function; use pentachora.diffusion.LongPrompt, which parses it"
        )


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}")  # NaN fails the range test
    return float(alpha)


def _native_encoder(source: GeometricMemory | FrozenTextEncoder) -> FrozenTextEncoder:
    return source if isinstance(source, FrozenTextEncoder) else source.load_encoder()


def _max_tokens(*sources: GeometricMemory | FrozenTextEncoder) -> int:
    for s in sources:
        if isinstance(s, GeometricMemory):
            return int(s.config.max_tokens)
    return DEFAULT_MAX_TOKENS


def _native_windows(
    encoder: FrozenTextEncoder, prompts: Sequence[str], max_tokens: int, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every window of every prompt encoded alone: ``(B, S, W, H)``, the window mask ``(B, S)`` and the
    per-window pooled vectors ``(B, S, P)`` (compel's chunks). ``check=False`` (negative prompts)
    accepts empty prompts (one window of the empty prompt) and truncates silently."""
    seg = Segmenter(encoder, max_tokens)
    if check:
        part = seg(list(prompts))
    else:
        part = seg.from_ids([t[:max_tokens] for t in encoder.tokenize(list(prompts))])
    seqs = native_window_sequences(encoder, part)
    ids, mask, index = part.flat_windows()
    pooled = torch.zeros(*part.segment_mask.shape, encoder.pooled_dim)
    windows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    for start in range(0, len(windows), 32):
        sel = slice(start, start + 32)
        input_ids, pad_mask = encoder.pad_windows(windows[sel])
        pooled[index[sel, 0], index[sel, 1]] = encoder.encode_windows(input_ids, pad_mask).pooled.cpu()
    return seqs, part.segment_mask, pooled


def _empty_window(encoder: FrozenTextEncoder) -> torch.Tensor:
    """``(W, H)``: the native encoding of the empty prompt (what compel pads chunk lists with)."""
    return encoder.native_sequence([""])[0][0]


def _fill_windows(
    windows: torch.Tensor, segment_mask: torch.Tensor, empty: torch.Tensor, n_windows: int
) -> torch.Tensor:
    """``(B, S, W, H)`` → ``(B, n_windows·W, H)`` with absent windows replaced by ``empty``."""
    b, s, w, h = windows.shape
    out = empty.to(windows.dtype).expand(b, n_windows, w, h).clone()
    keep = segment_mask[:, :, None, None]
    out[:, :s] = torch.where(keep, windows, out[:, :s])
    return out.reshape(b, n_windows * w, h)


def _sequence(
    source: GeometricMemory | FrozenTextEncoder, prompts: Sequence[str], alpha: float, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 77, H)`` from a memory model (blended with native by ``alpha``) or a native encoder."""
    if isinstance(source, FrozenTextEncoder):
        seq, _ = source.native_sequence(prompts)
        return seq, torch.tensor([min(len(t), max_tokens) for t in source.tokenize(prompts)])
    encoder = source.load_encoder()
    enc = source.encode(list(prompts), encoder=encoder)
    seq = enc.sequence
    if alpha != 1.0:
        native, _ = encoder.native_sequence(prompts)
        if native.shape != seq.shape:
            raise ConfigError(f"cannot blend: native {tuple(native.shape)} vs memory {tuple(seq.shape)}")
        seq = (1.0 - alpha) * native + alpha * seq
    return seq, enc.n_tokens


def _chunk_windows(
    source: GeometricMemory | FrozenTextEncoder, prompts: Sequence[str], alpha: float, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, S, W, H)`` chunks, their window mask and the tokens read, from a chunk model or natively."""
    encoder = _native_encoder(source)
    native, segs, _ = _native_windows(encoder, prompts, max_tokens)
    n_tokens = torch.tensor([min(len(t), max_tokens) for t in encoder.tokenize(prompts)])
    if isinstance(source, FrozenTextEncoder):
        return native, segs, n_tokens
    source.config.output_mode.require_chunks()
    enc = source.encode(list(prompts), encoder=encoder)
    b, s = segs.shape
    chunks = enc.chunks.view(b, -1, encoder.window, enc.chunks.shape[-1])[:, :s]
    if alpha != 1.0:
        chunks = (1.0 - alpha) * native + alpha * chunks
    return chunks, segs, enc.n_tokens


# ----------------------------------------------------------------------------- SD 1.5
@torch.no_grad()
def long_prompt_embeds(
    memory: GeometricMemory,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    alpha: float = 1.0,
    chunks: bool = False,
) -> LongPromptEmbeds:
    """SD 1.5 (or any single-CLIP pipeline) ``prompt_embeds`` for long prompts.

    Args:
        memory: A memory model trained over the pipeline's text encoder (``target_layer="last"`` for
            SD 1.5).
        prompts: Prompt(s), each up to the model's ``max_tokens`` (longer ones are truncated with a
            warning that says how many tokens were dropped; empty ones are an error).
        negative_prompts: Optional negative prompt(s), encoded natively.
        alpha: Blend ``(1 − α)·native + α·memory``.
        chunks: Contextual chunks ``(B, 77·k, H)`` instead of one 77-position sequence.

    Returns:
        :class:`LongPromptEmbeds` with ``prompt_embeds`` (and negatives).
    """
    alpha = _check_alpha(alpha)
    prompts = _as_list(prompts)
    negatives = _negatives(negative_prompts, len(prompts))
    _warn_weighting(prompts)
    encoder = _native_encoder(memory)
    max_tokens = _max_tokens(memory)
    if not chunks:
        seq, n_tokens = _sequence(memory, prompts, alpha, max_tokens)
        neg = encoder.native_sequence(negatives)[0] if negatives is not None else None
        return LongPromptEmbeds(prompt_embeds=seq, negative_prompt_embeds=neg, n_tokens=n_tokens)
    windows, segs, n_tokens = _chunk_windows(memory, prompts, alpha, max_tokens)
    k = windows.shape[1]
    neg = None
    if negatives is not None:
        nwin, nsegs, _ = _native_windows(encoder, negatives, max_tokens, check=False)
        k = max(k, nwin.shape[1])
    empty = _empty_window(encoder)
    seq = _fill_windows(windows, segs, empty, k)
    if negatives is not None:
        neg = _fill_windows(nwin, nsegs, empty, k)
    return LongPromptEmbeds(prompt_embeds=seq, negative_prompt_embeds=neg, n_tokens=n_tokens)


# ----------------------------------------------------------------------------- SDXL
def _pooled(
    tower_g: GeometricMemory | FrozenTextEncoder, prompts: Sequence[str], mode: str, max_tokens: int
) -> torch.Tensor:
    """SDXL's pooled vector ``(B, P)`` of the bigG tower (see the module docstring for the modes)."""
    native_g = _native_encoder(tower_g)
    if mode == "memory":
        if not isinstance(tower_g, GeometricMemory) or tower_g.config.teacher_dim != native_g.pooled_dim:
            raise ConfigError(
                "pooled='memory' needs a bigG memory model whose teacher space is the tower's pooled space "
                f"({native_g.pooled_dim} dims); use pooled='window_mean'"
            )
        return tower_g.encode(list(prompts), encoder=native_g).pooled
    if mode == "first_window":
        content = [t[: native_g.content_window] for t in native_g.tokenize(prompts)]
        ids, mask = native_g.pad_windows([native_g.with_specials(c) for c in content])
        return native_g.encode_windows(ids, mask).pooled.cpu()
    _, segs, pooled = _native_windows(native_g, prompts, max_tokens)
    m = segs.unsqueeze(-1).to(pooled.dtype)
    mean = (pooled * m).sum(1) / m.sum(1).clamp_min(1.0)
    norm = (pooled.norm(dim=-1) * segs).sum(1, keepdim=True) / m.sum(1).clamp_min(1.0)
    return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm


@torch.no_grad()
def sdxl_long_prompt_embeds(
    tower_l: GeometricMemory | FrozenTextEncoder,
    tower_g: GeometricMemory | FrozenTextEncoder,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    alpha: float = 1.0,
    pooled: str = "window_mean",
    chunks: bool = False,
) -> LongPromptEmbeds:
    """SDXL ``prompt_embeds (B, 77 or 77·k, H_l + H_g)`` + ``pooled_prompt_embeds`` for long prompts.

    Args:
        tower_l: CLIP-L side: a memory model over SDXL's ``text_encoder`` (penultimate layer) or the
            native :class:`FrozenTextEncoder` (``target_layer="penultimate"``).
        tower_g: bigG side: a memory model over ``text_encoder_2`` or the native encoder
            (``CLIPTextModelWithProjection``, ``target_layer="penultimate"``, pooling ``projection``).
        prompts: Prompt(s).
        negative_prompts: Optional negatives (native on both towers).
        alpha: Blend of every memory tower with its native output.
        pooled: ``window_mean`` (whole prompt, default), ``memory`` or ``first_window`` (today's SDXL).
        chunks: Contextual chunks on both towers (``(B, 77·k, ·)``).

    Returns:
        :class:`LongPromptEmbeds` with all four SDXL tensors (negatives when given).

    Raises:
        ConfigError: An unknown ``pooled`` mode, or towers that do not fit it.
    """
    check_pooled_mode(pooled)
    alpha = _check_alpha(alpha)
    prompts = _as_list(prompts)
    negatives = _negatives(negative_prompts, len(prompts))
    _warn_weighting(prompts)
    max_tokens = _max_tokens(tower_l, tower_g)
    native_l, native_g = _native_encoder(tower_l), _native_encoder(tower_g)
    neg = neg_pooled = None
    if not chunks:
        seq_l, n_tokens = _sequence(tower_l, prompts, alpha, max_tokens)
        seq_g, _ = _sequence(tower_g, prompts, alpha, max_tokens)
        seq = torch.cat([seq_l, seq_g], dim=-1)
        if negatives is not None:
            neg = torch.cat(
                [native_l.native_sequence(negatives)[0], native_g.native_sequence(negatives)[0]], -1
            )
    else:
        wl, segs_l, n_tokens = _chunk_windows(tower_l, prompts, alpha, max_tokens)
        wg, segs_g, _ = _chunk_windows(tower_g, prompts, alpha, max_tokens)
        if not torch.equal(segs_l, segs_g):
            raise ConfigError("the two towers cut the prompts into different windows (different tokenizers?)")
        k = wl.shape[1]
        if negatives is not None:
            nl, nsegs, _ = _native_windows(native_l, negatives, max_tokens, check=False)
            ng, _, _ = _native_windows(native_g, negatives, max_tokens, check=False)
            k = max(k, nl.shape[1])
        el, eg = _empty_window(native_l), _empty_window(native_g)
        seq = torch.cat([_fill_windows(wl, segs_l, el, k), _fill_windows(wg, segs_g, eg, k)], dim=-1)
        if negatives is not None:
            neg = torch.cat([_fill_windows(nl, nsegs, el, k), _fill_windows(ng, nsegs, eg, k)], dim=-1)
    pooled_vec = _pooled(tower_g, prompts, pooled, max_tokens)
    if negatives is not None:
        neg_pooled = _pooled(native_g, negatives, "first_window", max_tokens)  # negatives stay native
    return LongPromptEmbeds(
        prompt_embeds=seq,
        negative_prompt_embeds=neg,
        pooled_prompt_embeds=pooled_vec,
        negative_pooled_prompt_embeds=neg_pooled,
        n_tokens=n_tokens,
    )

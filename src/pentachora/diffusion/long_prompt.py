"""Long, weighted prompts for a diffusers pipeline, built from the pipeline's own text towers.

:class:`LongPrompt` is what compel's ``Compel`` / ``CompelForSDXL`` are to their users, with a
geometric memory as an option::

    from pentachora.diffusion import LongPrompt

    lp = LongPrompt.from_pipeline(pipe)                           # SD 1.5, SDXL or MiniT2IPipeline
    embeds = lp("a (red:1.3) cube on a table, BREAK a long description ...", negative_prompt="blurry")
    image = pipe(**embeds.pipeline_kwargs()).images[0]

    lp = LongPrompt.from_pipeline(pipe, memory="runs/memory-clip-l")   # + a trained memory

It reads the pipeline's tokenizer(s) and text encoder(s) in place (no second copy of the weights) and
gives:

* **without a memory** — concatenation: every window (split at word and punctuation boundaries, see
  :mod:`pentachora.diffusion.windows`) encoded alone by the tower, ``(B, 77·k, H)``; a prompt that fits
  one window is exactly the pipeline's own ``prompt_embeds``. ``chunks=False`` keeps only the first
  window (the pipeline's truncation, weights applied).
* **with a memory** — the memory's 77-position sequence (``chunks=True``: its contextual chunks),
  reading the *weighted* native windows (weights change what the memory reads and what its residual is
  added to).

**Weighting** (``dialect``, grammar in :mod:`pentachora.diffusion.weighting`), applied to each
window's encoder states after the forward pass, as each dialect's users expect:

* ``"a1111"`` — every token state × its weight, then the window rescaled so its mean is the
  unweighted mean (A1111's "emphasis"; A1111 takes that mean over the whole batch, here it is per
  window so a prompt's embedding does not depend on its batch).
* ``"compel"`` — ``empty + (z − empty)·w`` per token (``empty``: the empty prompt's states); a
  fragment with ``w < 1`` is also blended toward the prompt encoded *without* it, at weight
  ``tan((1 − w)·π/2)`` (compel's down-weighting; ``w = 0`` removes it).
* ``"none"`` — plain text (brackets are tokens), what the pipeline does.

Weights never touch the SDXL pooled vector unless ``weight_pooled=True`` (compel dialect: the
pooled vector gets the same down-weight blend). Negative prompts are weighted too and padded to the
positives' length with the empty prompt's windows (compel's padding); SDXL pipelines that zero an
absent negative (``force_zeros_for_empty_prompt``) get zeros of the same length.

SDXL: ``prompt_2`` / ``negative_prompt_2`` feed the second tower (default: the first prompt), each tower
reads the layer the UNet was trained on (``hidden_states[-2]``, shifted by ``clip_skip`` exactly as
diffusers does) and the pooled vector is the whole prompt's (``pooled="window_mean"``, default) or the
first window's (``"first_window"``, what pipelines do) or the bigG memory's (``"memory"``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pentachora.data.segmenter import Segmenter
from pentachora.diffusion.conditioning import LongPromptEmbeds, _check_alpha
from pentachora.diffusion.weighting import DIALECTS, Fragment, parse_negative, parse_prompt
from pentachora.diffusion.windows import SPLIT_LOOKBACK, SPLIT_POLICIES, PromptWindows, prompt_windows
from pentachora.errors import ConfigError
from pentachora.memory.model import GeometricMemory
from pentachora.memory.modes import check_pooled_mode
from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = ["DEFAULT_MAX_WINDOWS", "LongPrompt"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_WINDOWS = 16
"""Windows read per prompt without a memory (1,200 CLIP tokens); a memory reads its own maximum."""

MemoryLike = GeometricMemory | str | os.PathLike


@dataclass
class _Encoded:
    """One tower's encoding of a batch: per prompt ``(S_i, W, H)`` windows and ``(S_i, P)`` pooled."""

    windows: list[torch.Tensor]
    pooled: list[torch.Tensor]
    token_windows: list[PromptWindows]


class LongPrompt:
    """Prompt → :class:`~pentachora.diffusion.LongPromptEmbeds` for a pipeline's text tower(s).

    Build it with :meth:`from_pipeline`; the constructor takes the towers directly.

    Args:
        encoders: One :class:`FrozenTextEncoder` (SD 1.5, the miniature model) or two (SDXL: CLIP-L,
            then bigG with its projection).
        memory: ``None``, one memory (run folder or model) per tower, or a sequence with ``None`` for
            towers without one.
        dialect: ``"a1111"`` (default), ``"compel"`` or ``"none"``.
        chunks: ``None`` — concatenation without a memory, the memory's 77-position sequence with one;
            ``True`` — 77·k positions (the memory's contextual chunks); ``False`` — one window.
        pooled: SDXL pooled vector: ``"window_mean"``, ``"first_window"`` or ``"memory"``.
        max_windows: Windows read per prompt (default: the memory's maximum, else 16).
        split: ``"boundary"`` (windows end at punctuation or a word end, default) or ``"fixed"``
            (every 75 tokens: compel's cut and the one memory models are trained on).
        split_lookback: Tokens searched back for punctuation at a window edge.
        alpha: Blend of a memory's output with the native windows, ``(1 − α)·native + α·memory``.
        zero_negative: An absent negative prompt gives zeros (SDXL's ``force_zeros_for_empty_prompt``)
            instead of the empty prompt's encoding.
        weight_pooled: Apply compel's down-weight blend to the pooled vector too.

    Raises:
        ConfigError: A bad option, or a memory that does not fit its tower.
    """

    def __init__(
        self,
        encoders: Sequence[FrozenTextEncoder],
        memory: MemoryLike | Sequence[MemoryLike | None] | None = None,
        *,
        dialect: str = "a1111",
        chunks: bool | None = None,
        pooled: str = "window_mean",
        max_windows: int | None = None,
        split: str = "boundary",
        split_lookback: int = SPLIT_LOOKBACK,
        alpha: float = 1.0,
        zero_negative: bool = False,
        weight_pooled: bool = False,
    ) -> None:
        self.encoders = list(encoders)
        if not 1 <= len(self.encoders) <= 2:
            raise ConfigError(f"one or two text towers, got {len(self.encoders)}")
        if dialect not in DIALECTS:
            raise ConfigError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
        check_pooled_mode(pooled)
        alpha = _check_alpha(alpha)
        if weight_pooled and dialect != "compel":
            raise ConfigError("weight_pooled needs dialect='compel' (A1111 never weights the pooled vector)")
        if split not in SPLIT_POLICIES:
            raise ConfigError(f"split must be one of {SPLIT_POLICIES}, got {split!r}")
        self.split = split
        if split_lookback < 0:
            raise ConfigError(f"split_lookback must be >= 0, got {split_lookback}")
        self.memories = self._memories(memory)
        self.dialect, self.chunks, self.pooled_mode = dialect, chunks, pooled
        self.alpha, self.zero_negative, self.weight_pooled = float(alpha), zero_negative, weight_pooled
        self.split_lookback = int(split_lookback)
        if chunks:
            for m in self.memories:
                if m is not None:
                    m.config.output_mode.require_chunks()
        if pooled == "memory" and (len(self.encoders) < 2 or self.memories[-1] is None):
            raise ConfigError("pooled='memory' needs an SDXL pipeline with a memory on the bigG tower")
        limits = [m.config.max_segments for m in self.memories if m is not None]
        default = min(limits) if limits else DEFAULT_MAX_WINDOWS
        self.max_windows = int(max_windows) if max_windows is not None else default
        if not 1 <= self.max_windows <= (min(limits) if limits else 64):
            raise ConfigError(
                f"max_windows must be in [1, {min(limits) if limits else 64}], got {max_windows}"
            )
        self._empty: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        memory: MemoryLike | Sequence[MemoryLike | None] | None = None,
        *,
        clip_skip: int | None = None,
        **options: Any,
    ) -> LongPrompt:
        """Build from a diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` or a
        :class:`~pentachora.diffusion.MiniT2IPipeline`, reading its tokenizers and text encoders in place.

        Args:
            pipe: The pipeline.
            memory: ``None``, a memory (run folder or model) for an SD 1.5 / miniature pipeline, or
                ``(memory_l, memory_g)`` for SDXL (either may be ``None``).
            clip_skip: diffusers' ``clip_skip`` (SD 1.5: ``final_layer_norm(hidden_states[-(k+1)])``;
                SDXL: ``hidden_states[-(k+2)]``). A memory must have been trained on the layer the
                pipeline reads, so ``clip_skip`` with a memory is refused.
            **options: Any option of the class (``dialect``, ``chunks``, ``pooled``, ...).

        Raises:
            ConfigError: An unsupported pipeline, a bad ``clip_skip``, or a memory that does not fit.
        """
        skip = 0 if clip_skip is None else int(clip_skip)
        mems = list(memory) if isinstance(memory, list | tuple) else [memory]
        loaded = [_load_memory(m) for m in mems]
        if skip and any(m is not None for m in loaded):
            raise ConfigError(
                f"clip_skip={skip} reads another layer than the memory was trained on; train a memory with "
                "that target layer or leave clip_skip unset"
            )

        def tower(
            model: Any, tokenizer: Any, target: str, mem: GeometricMemory | None, window: int | None = None
        ) -> FrozenTextEncoder:
            layers = mem.config.extraction_layers if mem is not None else None
            if mem is not None and mem.config.target_layer != target:
                raise ConfigError(
                    f"the memory was trained on the {mem.config.target_layer!r} layer but this pipeline's "
                    f"UNet reads the {target!r} layer (train it with --set target_layer={target})"
                )
            if window is None:  # the tokenizer's own length (77 for CLIP)
                window = int(getattr(tokenizer, "model_max_length", 77) or 77)
                window = 77 if window > 4096 else window
            try:
                return FrozenTextEncoder(
                    model, tokenizer, window=window, layers=layers, target_layer=target, clip_skip=skip
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

        if hasattr(pipe, "model") and isinstance(getattr(pipe, "encoder", None), FrozenTextEncoder):
            enc = pipe.encoder  # MiniT2IPipeline: its frozen window encoder
            if len(loaded) != 1:
                raise ConfigError("the miniature model has one text tower: give one memory")
            if loaded[0] is not None or skip:
                enc = tower(enc.model, enc.tokenizer, enc.target_layer, loaded[0], window=enc.window)
            return cls([enc], loaded, **options)
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
            if getattr(pipe, "text_encoder", None) is None:
                raise ConfigError(
                    "an SDXL pipeline without its first text encoder (the refiner) is not supported"
                )
            if len(loaded) == 1:
                loaded = [loaded[0], None] if loaded[0] is not None else [None, None]
            if len(loaded) != 2:
                raise ConfigError(f"SDXL has two text towers: give (memory_l, memory_g), got {len(loaded)}")
            encs = [
                tower(pipe.text_encoder, pipe.tokenizer, "penultimate", loaded[0]),
                tower(pipe.text_encoder_2, pipe.tokenizer_2, "penultimate", loaded[1]),
            ]
            options.setdefault(
                "zero_negative", bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
            )
            return cls(encs, loaded, **options)
        if getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None:
            if len(loaded) != 1:
                raise ConfigError("this pipeline has one text tower: give one memory")
            return cls([tower(pipe.text_encoder, pipe.tokenizer, "last", loaded[0])], loaded, **options)
        raise ConfigError(
            f"cannot read text towers from {type(pipe).__name__}: expected a StableDiffusionPipeline, a "
            "StableDiffusionXLPipeline or a MiniT2IPipeline"
        )

    def _memories(self, memory: Any) -> list[GeometricMemory | None]:
        mems = list(memory) if isinstance(memory, list | tuple) else [memory]
        if len(mems) == 1 and len(self.encoders) == 2:
            mems = [mems[0], None]
        if len(mems) != len(self.encoders):
            raise ConfigError(f"{len(mems)} memories for {len(self.encoders)} text towers")
        out = []
        for m, enc in zip(mems, self.encoders, strict=True):
            m = _load_memory(m)
            if m is not None:
                try:
                    m.attach_encoder(enc)  # the pipeline's own tower: no second copy of the weights
                except ValueError as exc:
                    raise ConfigError(f"the memory does not fit the pipeline's text tower: {exc}") from exc
                m.eval()
            out.append(m)
        return out

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
    ) -> LongPromptEmbeds:
        """Encode prompts (and negatives) for ``pipe(**embeds.pipeline_kwargs())``.

        Args:
            prompt: One prompt or a batch.
            negative_prompt: One for all, one per prompt, or ``None`` (the empty prompt; zeros for
                SDXL pipelines that zero an absent negative).
            prompt_2, negative_prompt_2: SDXL's second tower (default: the first ones).

        Returns:
            :class:`LongPromptEmbeds` with the negatives always set (same length as the positives).

        Raises:
            ConfigError: A prompt with no words, malformed weighting, or mismatched batch sizes.
        """
        prompts = _as_list(prompt, None, "prompt")
        n = len(prompts)
        negatives = _as_list(negative_prompt, n, "negative_prompt") if negative_prompt is not None else None
        towers_prompts = [prompts]
        towers_negatives = [negatives]
        if len(self.encoders) == 2:
            towers_prompts.append(_as_list(prompt_2, n, "prompt_2") if prompt_2 is not None else prompts)
            neg2 = (
                _as_list(negative_prompt_2, n, "negative_prompt_2") if negative_prompt_2 is not None else None
            )
            towers_negatives.append(neg2 if neg2 is not None else negatives)
        elif prompt_2 is not None or negative_prompt_2 is not None:
            raise ConfigError("prompt_2 / negative_prompt_2 are for SDXL's second text tower")

        pos_parsed = [[parse_prompt(p, self.dialect) for p in ps] for ps in towers_prompts]
        neg_parsed = [
            [parse_negative(p, self.dialect) for p in ns] if ns is not None else None
            for ns in towers_negatives
        ]
        seqs, negs, pooled, neg_pooled, n_tokens = [], [], None, None, None
        for t in range(len(self.encoders)):
            pos = self._encode(t, pos_parsed[t])
            neg = self._encode(t, neg_parsed[t], weight=True) if neg_parsed[t] is not None else None
            seqs.append(self._positive(t, pos))
            negs.append(self._native(neg) if neg is not None else None)
            if t == 0:
                n_tokens = torch.tensor([w.n_tokens for w in pos.token_windows])
            if t == len(self.encoders) - 1 and len(self.encoders) == 2:
                pooled = self._pooled(t, pos)
                if neg is not None:
                    neg_pooled = torch.stack([p[0] for p in neg.pooled])
        length = max(x.shape[0] for rows in seqs + [n for n in negs if n is not None] for x in rows)
        prompt_embeds = torch.cat([self._pad(t, s, length) for t, s in enumerate(seqs)], -1)
        if all(n is None for n in negs) and self.zero_negative:
            negative = torch.zeros_like(prompt_embeds)
            neg_pooled = torch.zeros_like(pooled) if pooled is not None else None
        else:
            parts = []
            for t, nseq in enumerate(negs):
                if nseq is None:  # the empty prompt, as the pipeline encodes an absent negative
                    nseq = self._native(self._encode(t, [[[Fragment("")]]] * n, weight=False))
                parts.append(self._pad(t, nseq, length))
            negative = torch.cat(parts, -1)
            if pooled is not None and neg_pooled is None:
                neg_pooled = self._empty_window(len(self.encoders) - 1)[1].expand(n, -1).clone()
        return LongPromptEmbeds(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=neg_pooled,
            n_tokens=n_tokens,
        )

    # ------------------------------------------------------------------ per tower
    def _encode(self, t: int, parsed: list[list[list[Fragment]]], weight: bool = True) -> _Encoded:
        """Tokenise, split, encode every window alone and apply the weights."""
        enc = self.encoders[t]
        tw = [prompt_windows(enc, p, self.max_windows, self.split_lookback, self.split) for p in parsed]
        windows, pooled = self._run(enc, tw)
        if weight and self.dialect != "none":
            windows = [self._weigh(t, w, p) for w, p in zip(windows, tw, strict=True)]
            if self.dialect == "compel":
                windows, pooled = self._compel_downweight(t, parsed, windows, pooled)
        return _Encoded(windows=windows, pooled=pooled, token_windows=tw)

    def _run(
        self, enc: FrozenTextEncoder, tw: list[PromptWindows]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        flat = [enc.with_specials(ids) for p in tw for ids in p.ids]
        target = torch.empty(len(flat), enc.window, enc.hidden_size)
        pooled = torch.empty(len(flat), enc.pooled_dim)
        for start in range(0, len(flat), 32):
            ids, mask = enc.pad_windows(flat[start : start + 32])
            out = enc.encode_windows(ids, mask)
            target[start : start + 32] = out.target.cpu()
            pooled[start : start + 32] = out.pooled.cpu()
        sizes = [len(p.ids) for p in tw]
        return list(target.split(sizes)), list(pooled.split(sizes))

    def _empty_window(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``((W, H), (P,))``: the tower's encoding of the empty prompt."""
        if t not in self._empty:
            enc = self.encoders[t]
            ids, mask = enc.pad_windows([enc.with_specials([])])
            out = enc.encode_windows(ids, mask)
            self._empty[t] = (out.target[0].cpu(), out.pooled[0].cpu())
        return self._empty[t]

    def _token_weights(self, t: int, pw: PromptWindows) -> torch.Tensor:
        """``(S, W)`` weight of every position (special tokens and padding: 1)."""
        enc = self.encoders[t]
        out = torch.ones(len(pw.ids), enc.window)
        lead = len(enc.prefix_ids)
        for k, ws in enumerate(pw.weights):
            out[k, lead : lead + len(ws)] = torch.tensor(ws)
        return out

    def _weigh(self, t: int, z: torch.Tensor, pw: PromptWindows) -> torch.Tensor:
        if not pw.weighted:
            return z
        w = self._token_weights(t, pw).unsqueeze(-1)
        if self.dialect == "compel":
            empty = self._empty_window(t)[0]
            return empty + (z - empty) * w
        before = z.mean(dim=(1, 2), keepdim=True)
        scaled = z * w
        after = scaled.mean(dim=(1, 2), keepdim=True)
        ok = after.abs() > 1e-12
        return torch.where(ok, scaled * (before / torch.where(ok, after, torch.ones_like(after))), scaled)

    def _compel_downweight(
        self,
        t: int,
        parsed: list[list[list[Fragment]]],
        windows: list[torch.Tensor],
        pooled: list[torch.Tensor],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """compel's rule for ``w < 1``: lerp toward the prompt without the fragment, weight tan((1−w)π/2)."""
        out_w, out_p = [], []
        for prompt, z, pool in zip(parsed, windows, pooled, strict=True):
            total, acc, acc_p = 1.0, z.clone(), pool.clone()
            for s, span in enumerate(prompt):
                for j, frag in enumerate(span):
                    if frag.weight >= 1.0 or not frag.text.strip():
                        continue
                    without = [list(x) for x in prompt]
                    del without[s][j]
                    enc = self.encoders[t]
                    pw = prompt_windows(enc, without, self.max_windows, self.split_lookback, self.split)
                    (z2,), (p2,) = self._run(enc, [pw])
                    z2 = self._weigh(t, z2, pw)
                    z2, p2 = self._fit_windows(t, z2, z.shape[0]), self._fit_pooled(p2, pool.shape[0])
                    lerp = math.tan((1.0 - max(frag.weight, 1e-5)) * math.pi / 2)
                    acc, total = acc + lerp * z2, total + lerp
                    acc_p = acc_p + lerp * p2
            out_w.append(acc / total)
            out_p.append(acc_p / total if self.weight_pooled else pool)
        return out_w, out_p

    def _fit_windows(self, t: int, z: torch.Tensor, s: int) -> torch.Tensor:
        if z.shape[0] >= s:
            return z[:s]
        empty = self._empty_window(t)[0].expand(s - z.shape[0], -1, -1)
        return torch.cat([z, empty])

    @staticmethod
    def _fit_pooled(p: torch.Tensor, s: int) -> torch.Tensor:
        if p.shape[0] >= s:
            return p[:s]
        return torch.cat([p, p.mean(0, keepdim=True).expand(s - p.shape[0], -1)])

    @property
    def one_window(self) -> bool:
        """Whether the output is 77 positions: ``chunks=False``, or a memory's sequence (``chunks=None``
        with a memory on any tower — the other tower and the negatives then give their first window)."""
        return self.chunks is False or (self.chunks is None and any(m is not None for m in self.memories))

    def _native(self, e: _Encoded) -> list[torch.Tensor]:
        """Native output per prompt: its windows concatenated ``(k_i·W, H)``, or the first window."""
        if self.one_window:
            return [w[0] for w in e.windows]
        return [w.reshape(-1, w.shape[-1]) for w in e.windows]

    def _positive(self, t: int, e: _Encoded) -> list[torch.Tensor]:
        memory = self.memories[t]
        if memory is None:
            return self._native(e)
        enc = self.encoders[t]
        seg = Segmenter(enc, max_tokens=max(1, enc.content_window * self.max_windows))
        part = seg.from_windows(
            [[enc.with_specials(ids) for ids in p.ids] for p in e.token_windows],
            n_tokens=[p.n_tokens for p in e.token_windows],
        )
        b, s, w = part.input_ids.shape
        native = torch.zeros(b, s, w, enc.hidden_size)
        for i, z in enumerate(e.windows):
            native[i, : z.shape[0]] = z
        out = memory.encode_segments(part, enc, native=native.to(next(memory.parameters()).device))
        if self.chunks:
            chunks = out.chunks.float().cpu().view(b, s, w, -1)
            a = self.alpha
            return [
                ((1.0 - a) * native[i, :k] + a * chunks[i, :k]).reshape(k * w, -1)
                for i, k in enumerate(part.n_segments.tolist())
            ]
        seq = out.sequence.float().cpu()
        if self.alpha != 1.0:
            seq = (1.0 - self.alpha) * native[:, 0] + self.alpha * seq
        return list(seq)

    def _pooled(self, t: int, e: _Encoded) -> torch.Tensor:
        if self.pooled_mode == "first_window":
            return torch.stack([p[0] for p in e.pooled])
        if self.pooled_mode == "memory":
            memory = self.memories[t]
            assert memory is not None
            enc = self.encoders[t]
            if memory.config.teacher_dim != enc.pooled_dim:
                raise ConfigError(
                    "pooled='memory' needs a bigG memory whose teacher space is the tower's pooled space "
                    f"({enc.pooled_dim} dims); use pooled='window_mean'"
                )
            seg = Segmenter(enc, max_tokens=max(1, enc.content_window * self.max_windows))
            part = seg.from_windows([[enc.with_specials(ids) for ids in p.ids] for p in e.token_windows])
            return memory.encode_segments(part, enc).pooled.float().cpu()
        out = []
        for p in e.pooled:  # the mean direction of every window, at their mean norm
            mean = p.mean(0)
            out.append(mean / mean.norm().clamp_min(1e-12) * p.norm(dim=-1).mean())
        return torch.stack(out)

    def _pad(self, t: int, seqs: list[torch.Tensor], length: int) -> torch.Tensor:
        """Per prompt ``(L_i, H)`` → ``(B, length, H)``, filled with the tower's empty-prompt window
        (compel's padding; ``length`` and every ``L_i`` are multiples of the window)."""
        empty = self._empty_window(t)[0]
        w = empty.shape[0]
        rows = []
        for seq in seqs:
            missing = length - seq.shape[0]
            if missing % w or missing < 0:
                raise ConfigError(f"cannot pad a {seq.shape[0]}-position sequence to {length} positions")
            rows.append(torch.cat([seq, empty.repeat(missing // w, 1)]) if missing else seq)
        return torch.stack(rows)

    # ------------------------------------------------------------------ convenience
    def describe(self) -> dict[str, Any]:
        """JSON-able settings (recorded by benchmarks)."""
        return {
            "towers": [e.name for e in self.encoders],
            "memory": [m is not None for m in self.memories],
            "dialect": self.dialect,
            "chunks": self.chunks,
            "pooled": self.pooled_mode if len(self.encoders) == 2 else None,
            "max_windows": self.max_windows,
            "split": self.split,
            "split_lookback": self.split_lookback,
            "alpha": self.alpha,
            "clip_skip": [e.clip_skip for e in self.encoders],
        }


def _load_memory(memory: Any) -> GeometricMemory | None:
    if memory is None or isinstance(memory, GeometricMemory):
        return memory
    if isinstance(memory, str | os.PathLike):
        from pentachora.training.state import load_latest

        return load_latest(memory, GeometricMemory.from_pretrained).eval()
    raise ConfigError(f"a memory is a run folder or a GeometricMemory, got {type(memory).__name__}")


def _as_list(value: str | Sequence[str] | None, n: int | None, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] * (n or 1)
    if value is None or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a string or a list of strings")
    out = list(value)
    if not out:
        raise ConfigError(f"{name} is an empty list")
    if n is not None and len(out) != n:
        raise ConfigError(f"{len(out)} {name}s for {n} prompts; give one per prompt or one string")
    return out

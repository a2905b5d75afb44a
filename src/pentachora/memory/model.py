"""The long-prompt geometric memory model: config, presets, losses and the text → (pooled, sequence) API.

:class:`GeometricMemory` holds only the *trainable* memory system (fusion, bank, pooled projector,
sequence reconstructor, temperature); the frozen student encoder and the teacher are named in the
config and loaded on demand (offline by default), so a checkpoint is small and never contains
someone else's weights.

The pooled output is ``MLP(LN([mean of the memory tokens ; mean of the per-segment bank entries]))``
projected to the teacher's dimension; the sequence comes from the
:class:`~pentachora.memory.reconstructor.SequenceReconstructor`.

Training batches (built from the feature cache, see :mod:`pentachora.data.text_features`) are dicts::

    states          (B, S, n_layers, W, H)  frozen encoder states of the extraction layers, per segment
    attention_mask  (B, S, W)               real tokens (specials included)
    segment_mask    (B, S)                  real segments
    teacher         (B, P)                  teacher embedding of the whole text        [training]
    seq_target      (B, L, H)               the encoder's own output on the first window [training]
    seq_mask        (B, L)                  positions of seq_target that count          [training]

The loss is ``w_nce·InfoNCE(pooled, teacher) + w_pc·(1 − cos(pooled, teacher))
+ w_seq·[MSE(n(pred), n(target)) + (1 − cos)]
+ w_norm·norm-match + w_cv·(CV(anchors) − target_cv(d))² + w_proc·Procrustes(pooled, teacher)``:

* symmetric InfoNCE with a learned temperature clamped to ``[temperature_min, temperature_max]``;
* a direct cosine term to the teacher (not in the seed: InfoNCE and the centred Procrustes term are
  blind to a direction shared by all embeddings, which the cosine to the teacher measures; set
  ``pooled_cos_weight=0`` for the seed's loss);
* the seed's sequence loss against the frozen encoder's ``target_layer`` output on the first window;
* a norm-matching term ``((‖pred‖ − ‖target‖)/‖target‖)²`` (not in the seed: the seed's loss is
  scale-free, but a UNet reads absolute values; set ``seq_norm_weight=0`` for the seed's loss);
* optionally (``seq_pool_weight > 0``, off by default, not in the seed) InfoNCE + (1 − cos) between
  the *mean of the output sequence* and the teacher, asking the sequence itself to carry the whole
  text (the seed's sequence target is the first window only, which a reconstructor can meet by
  copying that window); it needs the student's mean-pooled space to be the teacher's
  (``hidden_size == teacher_dim``, e.g. MiniLM teaching MiniLM);
* the differentiable pentachoron CV loss on the bank anchors, aimed at ``target_cv(d)`` of the
  anchors' dimension (never a hard-coded 0.2 — docs/findings.md);
* the Procrustes residual of the batch (pooled vs teacher), see
  :func:`~pentachora.geometry.procrustes_alignment_loss`;
* with ``contextual_chunks``: ``w_chunk·[MSE + (1 − cos)]`` of every window's chunk to its native
  window (the format), and ``w_chunk_ctx·[InfoNCE + (1 − cos)]`` between each window's chunk mean
  and the teacher embedding of the *whole* text (what makes a chunk carry the other windows).

* with a *consumer* attached (:meth:`GeometricMemory.attach_consumer`) and batches that carry
  ``pixel_values``: ``w_img·L_consumer`` — e.g. a frozen text-to-image UNet's denoising loss on the
  image the text describes, conditioned on the output sequence (or the chunks, ``consumer_output``).
  The seed's cure for "memory format is shaped by the loudest gradient" (§6.3, §6.5): train the
  per-position consumer's reader *through* the consumer (:mod:`pentachora.recipes.memory_image`).

Two sequence modes (``sequence_mode``):

* ``reconstruct`` (the seed): the reconstructor's queries write the 77 positions from the memory.
* ``residual``: ``native first window + ramp · reconstructor(memory)``, the reconstructor's output
  layer starting at zero and ``ramp`` = 0 for single-window prompts (see
  :mod:`pentachora.memory.chunks`): short prompts come out as the encoder's native sequence by
  construction, and the memory can only *add* the rest of the text to the first window.
  ``mean_shift = λ > 0`` adds a learned shift toward the whole prompt's token mean
  (:class:`~pentachora.memory.chunks.MeanShift`; the chunks get it too). It is not ramped: being a
  token-weighted mean it is 0 for one window and grows with the tail by itself. At init the output
  *is* the training-free mean-shift contender, so the learned memory starts on that frontier instead
  of at truncation.

``contextual_chunks=True`` adds ``chunks (B, S·W, H)`` — one native-format sequence per window, each
with a residual read from the memory of the whole prompt — a drop-in for compel's concatenated
``prompt_embeds`` whose chunks see each other. Both need the native window sequences: ``batch["native"]
(B, S, W, H)`` (what :meth:`GeometricMemory.encode` passes), or, from the feature cache, the
extraction layer ``native_state_index`` when it *is* the target layer (MiniLM: ``hidden_states[6]`` is
``last_hidden_state``, index ``-1`` of ``(2, 4, 6)``; the ``minilm*`` presets set it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.errors import ConfigError
from pentachora.geometry import cv_loss, cv_metric, procrustes_alignment_loss, target_cv
from pentachora.memory.bank import BankState, DepthProfileFusion, MemoryBank
from pentachora.memory.chunks import ContextualChunks, MeanShift, tail_ramp, window_mean_shift
from pentachora.memory.metrics import masked_sequence_cosine
from pentachora.memory.modes import OutputMode
from pentachora.memory.reconstructor import SequenceReconstructor
from pentachora.modeling import ModelOutput, PentachoraModel, Presets, register_model

if TYPE_CHECKING:
    from pentachora.data.segmenter import SegmentBatch, Segmenter
    from pentachora.nn.text_encoder import FrozenTextEncoder

__all__ = [
    "CONSUMER_OUTPUTS",
    "LOSS_WEIGHTS",
    "PRESETS",
    "GeometricMemory",
    "MemoryConfig",
    "MemoryEncoding",
    "MemoryOutput",
    "native_window_sequences",
]

LOSS_WEIGHTS = (
    "infonce_weight",
    "pooled_cos_weight",
    "seq_weight",
    "seq_pool_weight",
    "seq_norm_weight",
    "cv_weight",
    "procrustes_weight",
    "chunk_weight",
    "chunk_ctx_weight",
    "image_weight",
)

CONSUMER_OUTPUTS = ("sequence", "chunks")


@dataclass
class MemoryConfig(Presets):
    """Configuration of :class:`GeometricMemory` (what is trained, and which frozen models it reads).

    Attributes:
        encoder: Frozen student encoder: ``"minilm"`` (embedded all-MiniLM-L6-v2), a folder or a Hub id.
        encoder_subfolder: Subfolder of ``encoder`` (e.g. ``"text_encoder_2"`` of an SDXL repo).
        encoder_class: transformers class name (``None``: AutoModel; CLIP configs → CLIPTextModel).
        window: Tokens per window W including specials (77).
        extraction_layers: Indices into the encoder's ``hidden_states`` (0 = embeddings).
        target_layer: ``"last"`` (SD 1.5) or ``"penultimate"`` (SDXL) — the sequence target.
        max_tokens: Content tokens read per text (longer text is truncated with a warning).
        overlap: Content tokens shared by consecutive segments.
        max_segments: Segments the model accepts (size of the segment embedding); 0 = derive from
            ``window``, ``max_tokens`` and ``overlap`` assuming 2 special tokens per window.
        hidden_size: Encoder width H (the output sequence's width).
        teacher: Long-context teacher (same forms as ``encoder``).
        teacher_subfolder, teacher_class: As for the encoder.
        teacher_max_length: Teacher context in tokens (512 for MiniLM / BERT).
        teacher_pooling: Teacher pooling (``mean`` as sentence-transformers, ``cls``, ``eos``, ``auto``).
        teacher_dim: Teacher embedding width P (the pooled output's width).
        dim: Memory width d (= H in the seed; smaller for CPU presets).
        n_memory_tokens: Memory tokens (8).
        n_anchors: Bank anchors (64).
        n_heads: Attention heads (d must be divisible by it).
        ffn_mult: FFN expansion in the reconstructor.
        seq_len: Output positions L of the reconstructor (77).
        recon_cross_layers: Reconstructor cross-attention layers (2).
        recon_self_layers: Reconstructor self-attention layers (2).
        dropout: Attention/FFN dropout.
        temperature_init: Initial InfoNCE temperature.
        temperature_min: Lower clamp of the learned temperature.
        temperature_max: Upper clamp.
        infonce_weight: Weight of the symmetric InfoNCE loss.
        pooled_cos_weight: Weight of the direct ``1 − cos(pooled, teacher)`` term.
        seq_weight: Weight of the sequence loss.
        seq_norm_weight: Weight of the per-position norm-matching term.
        seq_pool_weight: Weight of the sequence-mean ↔ teacher term (0 = the seed's loss).
        cv_weight: Weight of the anchors' CV loss.
        procrustes_weight: Weight of the Procrustes alignment term.
        cv_target: CV target of the anchors; ``None`` = ``target_cv(dim)``.
        cv_samples: Random pentachora per CV-loss evaluation.
        sequence_mode: ``"reconstruct"`` (the seed) or ``"residual"`` (native first window + ramped
            memory residual; exact native output for single-window prompts).
        contextual_chunks: Also output one native-format sequence per window with a residual read from
            the whole prompt's memory (``chunks``).
        native_state_index: Index into ``extraction_layers`` of the layer that equals the target layer,
            to read native window sequences off cached states (``None``: the batch must carry
            ``native``).
        chunk_layers: Cross-attention layers of the contextual-chunk residual.
        chunk_weight: Weight of the chunks' per-window format loss.
        chunk_ctx_weight: Weight of the chunk-mean ↔ whole-text teacher term.
        mean_shift: Initial gate λ of the learned shift toward the whole prompt's token mean, added to
            the residual sequence and the chunks (0 = no shift path; needs ``residual`` mode or
            contextual chunks).
        image_weight: Weight of the consumer's loss (e.g. a frozen text-to-image UNet's denoising loss
            on the scene a caption describes; see :meth:`GeometricMemory.attach_consumer`). Counted only
            for batches that carry ``pixel_values`` and with a consumer attached.
        consumer_output: What the consumer reads: ``"sequence"`` (the 77 positions) or ``"chunks"``
            (the contextual chunks, 77·k positions; needs ``contextual_chunks``).
    """

    preset_family = "memory"  # presets: PRESETS below, `MemoryConfig.preset("minilm-tiny", max_segments=16)`

    encoder: str = "minilm"
    encoder_subfolder: str | None = None
    encoder_class: str | None = None
    window: int = 77
    extraction_layers: tuple[int, ...] = (2, 4, 6)
    target_layer: str = "last"
    max_tokens: int = 576
    overlap: int = 0
    max_segments: int = 0
    hidden_size: int = 384
    teacher: str = "minilm"
    teacher_subfolder: str | None = None
    teacher_class: str | None = None
    teacher_max_length: int = 512
    teacher_pooling: str = "mean"
    teacher_dim: int = 384
    dim: int = 384
    n_memory_tokens: int = 8
    n_anchors: int = 64
    n_heads: int = 6
    ffn_mult: int = 4
    seq_len: int = 77
    recon_cross_layers: int = 2
    recon_self_layers: int = 2
    dropout: float = 0.0
    temperature_init: float = 0.07
    temperature_min: float = 0.01
    temperature_max: float = 0.5
    infonce_weight: float = 1.0
    pooled_cos_weight: float = 1.0
    seq_weight: float = 1.0
    seq_norm_weight: float = 0.1
    seq_pool_weight: float = 0.0
    cv_weight: float = 1.0
    procrustes_weight: float = 0.1
    cv_target: float | None = None
    cv_samples: int = 64
    sequence_mode: str = "reconstruct"
    contextual_chunks: bool = False
    native_state_index: int | None = None
    chunk_layers: int = 1
    chunk_weight: float = 1.0
    chunk_ctx_weight: float = 1.0
    mean_shift: float = 0.0
    image_weight: float = 0.0
    consumer_output: str = "sequence"

    def __post_init__(self) -> None:
        self.extraction_layers = tuple(int(i) for i in self.extraction_layers)
        if self.max_segments <= 0:
            content = self.window - 2
            stride = content - self.overlap
            self.max_segments = 1 + max(0, math.ceil((self.max_tokens - content) / stride))
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.target_layer not in ("last", "penultimate"):
            problems.append(f"target_layer must be 'last' or 'penultimate', got {self.target_layer!r}")
        if self.n_anchors < 5:
            problems.append(f"n_anchors must be >= 5 (pentachora need 5 points), got {self.n_anchors}")
        if self.dim < 4:
            problems.append(f"dim must be >= 4, got {self.dim}")
        if not 0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            problems.append("need 0 < temperature_min <= temperature_init <= temperature_max")
        if not self.extraction_layers:
            problems.append("need at least one extraction layer")
        if self.seq_pool_weight > 0 and self.hidden_size != self.teacher_dim:
            problems.append("seq_pool_weight > 0 needs hidden_size == teacher_dim (a shared space)")
        problems += self.output_mode.problems(seq_len=self.seq_len, window=self.window)
        if self.contextual_chunks and self.chunk_ctx_weight > 0 and self.hidden_size != self.teacher_dim:
            problems.append("chunk_ctx_weight > 0 needs hidden_size == teacher_dim (a shared space)")
        if self.native_state_index is not None and not (
            -len(self.extraction_layers) <= self.native_state_index < len(self.extraction_layers)
        ):
            problems.append(f"native_state_index {self.native_state_index} is not an extraction-layer index")
        if self.consumer_output not in CONSUMER_OUTPUTS:
            problems.append(
                f"consumer_output must be one of {CONSUMER_OUTPUTS}, got {self.consumer_output!r}"
            )
        elif self.consumer_output == "chunks" and not self.contextual_chunks:
            problems.append("consumer_output='chunks' needs contextual_chunks=True")
        if not (math.isfinite(self.image_weight) and self.image_weight >= 0):
            problems.append(f"image_weight must be a finite number >= 0, got {self.image_weight}")
        if problems:
            raise ConfigError("invalid MemoryConfig: " + "; ".join(problems))

    @property
    def output_mode(self) -> OutputMode:
        """The long-prompt output fields (``sequence_mode``, ``contextual_chunks``, ``mean_shift``) and
        their rules (:mod:`pentachora.memory.modes`)."""
        return OutputMode(self.sequence_mode, bool(self.contextual_chunks), float(self.mean_shift))

    @property
    def needs_native(self) -> bool:
        """Whether the model reads the native window sequences (residual mode or contextual chunks)."""
        return self.output_mode.needs_native

    @property
    def anchor_cv_target(self) -> float:
        """The anchors' CV target: ``cv_target`` or ``target_cv(dim)``."""
        return float(self.cv_target) if self.cv_target is not None else float(target_cv(self.dim))


PRESETS: dict[str, dict[str, Any]] = {
    # CPU: MiniLM student (77-token window) + MiniLM teacher (512 tokens), a narrow memory system
    # (native_state_index=-1: MiniLM's hidden_states[6] is its last_hidden_state, the target layer)
    "minilm-tiny": {"dim": 192, "n_heads": 4, "ffn_mult": 2, "native_state_index": -1},
    # the same for diffusion prompts: native-exact short prompts, the learned mean shift (tail R@1 0.93 at
    # s_cos 0.95 in 77 positions, benchmarks/results/memory_long.md) and contextual chunks
    "minilm-tiny-long": {
        "dim": 192,
        "n_heads": 4,
        "ffn_mult": 2,
        "native_state_index": -1,
        "sequence_mode": "residual",
        "contextual_chunks": True,
        "seq_pool_weight": 1.0,
        "mean_shift": 0.75,
    },
    # minilm-tiny-long trained through the frozen miniature T2I UNet on the UNet's denoising loss alone
    # (the text objectives at 0) — the configuration that won on validation in
    # benchmarks/results/t2i_memory.md; measured as: the bank of a minilm-tiny-long run, the sequence head
    # re-initialised (pentachora train memory-image --init RUN --no-text-losses --reinit reconstructor.)
    "minilm-tiny-image": {},  # filled below from minilm-tiny-long
    # MiniLM at full width (d = H = 384), the seed's shape at MiniLM scale
    "minilm": {"dim": 384, "n_heads": 6, "ffn_mult": 4, "native_state_index": -1},
    # SD 1.5: CLIP-L text tower (half of its 12 layers), ModernBERT-large teacher, d = H = 768
    "clip-l": {
        "encoder": "openai/clip-vit-large-patch14",
        "extraction_layers": (2, 4, 6, 8, 10, 12),
        "hidden_size": 768,
        "teacher": "answerdotai/ModernBERT-large",
        "teacher_max_length": 8192,
        "teacher_dim": 1024,
        "dim": 768,
        "n_heads": 12,
    },
    # SDXL's OpenCLIP-bigG text tower (penultimate layer, 12 of 32 layers), ModernBERT-large teacher
    "sdxl-bigg": {
        "encoder": "stabilityai/stable-diffusion-xl-base-1.0",
        "encoder_subfolder": "text_encoder_2",
        "encoder_class": "CLIPTextModelWithProjection",
        "extraction_layers": (3, 6, 8, 11, 13, 16, 19, 21, 24, 27, 29, 32),
        "target_layer": "penultimate",
        "hidden_size": 1280,
        "teacher": "answerdotai/ModernBERT-large",
        "teacher_max_length": 8192,
        "teacher_dim": 1024,
        "dim": 1280,
        "n_heads": 16,
    },
}
PRESETS["minilm-tiny-image"] = {
    **{k: v for k, v in PRESETS["minilm-tiny-long"].items() if k not in LOSS_WEIGHTS},
    **{k: 0.0 for k in LOSS_WEIGHTS},
    "image_weight": 1.0,
}
MemoryConfig.presets = PRESETS


@dataclass
class MemoryOutput(ModelOutput):
    """What :meth:`GeometricMemory.forward` returns.

    Tensor fields: ``pooled (B, P)``, ``sequence (B, L, H)``, with contextual chunks ``chunks
    (B, S·W, H)`` and ``chunk_mask (B, S·W)`` (positions of real windows). Scalar fields (logged by the trainer):
    the loss parts, ``m_acc`` (in-batch pooled → teacher accuracy), ``s_cos``, ``pooled_cos``, ``cv``
    (anchors, readout) and ``temperature``.
    """

    pooled: torch.Tensor | None = None
    sequence: torch.Tensor | None = None
    infonce: torch.Tensor | None = None
    pooled_cos_loss: torch.Tensor | None = None
    seq_loss: torch.Tensor | None = None
    seq_norm: torch.Tensor | None = None
    seq_pool: torch.Tensor | None = None
    cv_loss: torch.Tensor | None = None
    procrustes: torch.Tensor | None = None
    chunks: torch.Tensor | None = None
    chunk_mask: torch.Tensor | None = None
    chunk_loss: torch.Tensor | None = None
    chunk_ctx: torch.Tensor | None = None
    chunk_s_cos: float | None = None
    image_loss: torch.Tensor | None = None
    image_mse: float | None = None
    m_acc: float | None = None
    s_cos: float | None = None
    pooled_cos: float | None = None
    cv: float | None = None
    temperature: float | None = None


@dataclass
class MemoryEncoding:
    """Output of :meth:`GeometricMemory.encode`.

    Attributes:
        pooled: ``(B, P)`` pooled embedding in the teacher's space.
        sequence: ``(B, L, H)`` sequence in the frozen encoder's space (e.g. SD's ``prompt_embeds``).
        n_segments: ``(B,)`` segments read per text.
        n_tokens: ``(B,)`` content tokens read per text.
        truncated: ``(B,)`` True where the text was cut at ``max_tokens``.
        chunks: ``(B, S·W, H)`` contextual chunks (models with ``contextual_chunks``), else None;
            ``S`` is the longest text's window count, absent windows are zeros.
        chunk_mask: ``(B, S·W)`` True on the positions of each text's real windows.
    """

    pooled: torch.Tensor
    sequence: torch.Tensor
    n_segments: torch.Tensor
    n_tokens: torch.Tensor
    truncated: torch.Tensor
    chunks: torch.Tensor | None = None
    chunk_mask: torch.Tensor | None = None


@register_model
class GeometricMemory(PentachoraModel):
    """Extend a frozen W-token text encoder to long texts with a geometric memory.

    Args:
        config: A :class:`MemoryConfig`.
    """

    model_type: ClassVar[str] = "geometric_memory"
    config_class: ClassVar[type] = MemoryConfig

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__(config)
        c = config
        self.fusion = DepthProfileFusion(len(c.extraction_layers), c.hidden_size, c.dim)
        self.bank = MemoryBank(
            c.dim,
            c.n_memory_tokens,
            c.n_anchors,
            c.n_heads,
            c.max_segments,
            window=c.window,
            dropout=c.dropout,
        )
        self.pool_norm = nn.LayerNorm(2 * c.dim)
        self.projector = nn.Sequential(
            nn.Linear(2 * c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, c.teacher_dim)
        )
        self.reconstructor = SequenceReconstructor(
            c.dim,
            c.hidden_size,
            seq_len=c.seq_len,
            n_heads=c.n_heads,
            cross_layers=c.recon_cross_layers,
            self_layers=c.recon_self_layers,
            ffn_mult=c.ffn_mult,
            dropout=c.dropout,
        )
        if c.sequence_mode == "residual":
            nn.init.zeros_(self.reconstructor.out.weight)  # starts as the native first window
            nn.init.zeros_(self.reconstructor.out.bias)
        if c.contextual_chunks:
            self.chunker = ContextualChunks(
                c.dim,
                c.hidden_size,
                c.max_segments,
                window=c.window,
                n_heads=c.n_heads,
                layers=c.chunk_layers,
                ffn_mult=c.ffn_mult,
                dropout=c.dropout,
            )
        if c.mean_shift > 0:
            self.shift = MeanShift(c.hidden_size, c.mean_shift)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(c.temperature_init)))
        self.residual_scale = 1.0  # inference knob of the residual mode (1 = as trained; 0 = native)
        self.loss_weights: dict[str, float] = {k: float(getattr(c, k)) for k in LOSS_WEIGHTS}
        self._cv_target = c.anchor_cv_target
        self._frozen: dict[str, Any] = {}

    # ------------------------------------------------------------------ parameter groups
    BANK_PREFIXES: ClassVar[tuple[str, ...]] = (
        "fusion.",
        "bank.",
        "pool_norm.",
        "projector.",
        "log_temperature",
    )
    # the sequence side: every parameter that is not the bank side (the two-phase modes freeze by these)
    RECONSTRUCTOR_PREFIXES: ClassVar[tuple[str, ...]] = ("reconstructor.", "chunker.", "shift.")

    def param_groups(
        self, lr: float, weight_decay: float = 0.01, *, bank_lr_scale: float = 1.0
    ) -> list[dict]:
        """Optimizer groups (the models' parameter-groups hook, passed as ``Trainer(param_groups=)``).

        AdamW groups: bank side (fusion, bank, projector, temperature) at ``lr·bank_lr_scale``, the
        reconstructor at ``lr``; weight decay only on matrices. Each group carries ``"bank": bool``.

        Args:
            lr: Peak learning rate.
            weight_decay: Decay of the matrices.
            bank_lr_scale: Multiplier of the bank side's learning rate.
        """
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            bank = name.startswith(self.BANK_PREFIXES)
            groups.setdefault((bank, p.ndim >= 2), []).append(p)
        out = []
        for (bank, decay), params in sorted(groups.items()):
            out.append(
                {
                    "params": params,
                    "lr": lr * (bank_lr_scale if bank else 1.0),
                    "weight_decay": weight_decay if decay else 0.0,
                    "bank": bank,
                }
            )
        return out

    # ------------------------------------------------------------------ loss weights
    def set_loss_weights(self, **weights: float) -> None:
        """Set loss weights (names in :data:`LOSS_WEIGHTS`) for the following steps.

        Raises:
            KeyError: An unknown weight name.
        """
        unknown = sorted(set(weights) - set(LOSS_WEIGHTS))
        if unknown:
            raise KeyError(f"unknown loss weights {unknown}; known: {list(LOSS_WEIGHTS)}")
        self.loss_weights.update({k: float(v) for k, v in weights.items()})

    @property
    def cv_target(self) -> float:
        """CV target of the anchors (``target_cv(dim)`` unless configured)."""
        return self._cv_target

    @property
    def temperature(self) -> torch.Tensor:
        """The clamped InfoNCE temperature (0-d)."""
        c = self.config
        return self.log_temperature.exp().clamp(c.temperature_min, c.temperature_max)

    # ------------------------------------------------------------------ forward
    def read(
        self, states: torch.Tensor, attention_mask: torch.Tensor, segment_mask: torch.Tensor
    ) -> tuple[BankState, torch.Tensor]:
        """Run fusion and the memory bank.

        Args:
            states: ``(B, S, n_layers, W, H)``.
            attention_mask: ``(B, S, W)``.
            segment_mask: ``(B, S)``.

        Returns:
            ``(bank_state, pooled (B, P))``.
        """
        token_mask = attention_mask.bool() & segment_mask.bool().unsqueeze(-1)
        content = self.fusion(states.float(), token_mask)
        state = self.bank(content, token_mask, segment_mask.bool())
        seg = state.entry_mask.unsqueeze(-1).to(state.entries.dtype)
        bank_mean = (state.entries * seg).sum(1) / seg.sum(1).clamp_min(1.0)
        pooled = self.projector(self.pool_norm(torch.cat([state.memory.mean(dim=1), bank_mean], dim=-1)))
        return state, pooled

    @staticmethod
    def context(state: BankState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, T, d), mask (B, T))``: memory tokens, bank entries, anchors and content tokens."""
        b = state.memory.shape[0]
        anchors = state.anchors.unsqueeze(0).expand(b, -1, -1)
        context = torch.cat([state.memory, state.entries, anchors, state.content], dim=1)
        ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=context.device)  # noqa: E731
        mask = torch.cat(
            [ones(state.memory.shape[1]), state.entry_mask, ones(anchors.shape[1]), state.content_mask], dim=1
        )
        return context, mask

    def reconstruct(
        self,
        state: BankState,
        native: torch.Tensor | None = None,
        ramp: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, L, H)`` sequence from the bank state.

        Args:
            state: The bank state.
            native: ``(B, S, W, H)`` native window sequences (``residual`` mode only).
            ramp: ``(B,)`` residual scale (``residual`` mode only; :func:`tail_ramp`).
            shift: ``(B, H)`` optional shift added to every position of the residual (``residual``
                mode only; the first window's row of :meth:`window_shifts`).
        """
        context, mask = self.context(state)
        out = self.reconstructor(context, mask)
        if self.config.sequence_mode != "residual":
            return out
        if native is None or ramp is None:
            raise ConfigError("sequence_mode='residual' needs the native window sequences and the ramp")
        scale = ramp.to(out.dtype) * float(self.residual_scale)
        out = scale.view(-1, 1, 1) * out
        if shift is not None:  # continuous in the prompt length by itself (token-weighted): no ramp
            out = out + float(self.residual_scale) * shift.to(out.dtype).unsqueeze(1)
        return native[:, 0].to(out.dtype) + out

    def native_inputs(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(native (B, S, W, H), ramp (B,), shifts (B, S, H) | None)`` of a batch, or three ``None``
        when the model reads no native windows (the seed's ``reconstruct`` mode without chunks)."""
        if not self.config.needs_native:
            return None, None, None
        native = self.native_windows(batch)
        ramp = tail_ramp(batch["attention_mask"], batch["segment_mask"], self.config.window)
        return native, ramp, self.window_shifts(native, batch["attention_mask"], batch["segment_mask"])

    def output_sequence(
        self,
        state: BankState,
        native: torch.Tensor | None,
        ramp: torch.Tensor | None,
        shifts: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(B, L, H)``: the 77-position output for :meth:`native_inputs` (the first window's shift)."""
        first = shifts[:, 0] if shifts is not None and self.config.sequence_mode == "residual" else None
        return self.reconstruct(state, native, ramp, first)

    def window_shifts(
        self, native: torch.Tensor, attention_mask: torch.Tensor, segment_mask: torch.Tensor
    ) -> torch.Tensor | None:
        """``(B, S, H)`` learned per-window shifts toward the whole prompt (``None`` without ``mean_shift``)."""
        if not hasattr(self, "shift"):
            return None
        return self.shift(window_mean_shift(native.float(), attention_mask, segment_mask))

    def native_windows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, S, W, H)`` native window sequences: ``batch["native"]`` or the cached target-layer states.

        Raises:
            ConfigError: Neither is available.
        """
        if "native" in batch:
            return batch["native"].float()
        idx = self.config.native_state_index
        if idx is None:
            raise ConfigError(
                "this model reads native window sequences: pass batch['native'] (B, S, W, H), or set "
                "native_state_index to the extraction layer that is the target layer"
            )
        return batch["states"][:, :, idx].float()

    def chunk_outputs(
        self,
        state: BankState,
        native: torch.Tensor,
        ramp: torch.Tensor,
        attention_mask: torch.Tensor,
        shifts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Contextual chunks ``(B, S, W, H)``, their token mask ``(B, S, W)`` and window mask ``(B, S)``."""
        context, mask = self.context(state)
        chunks = self.chunker(native, context, mask, ramp, state.entry_mask, shifts)
        tokens = attention_mask.bool() & state.entry_mask.unsqueeze(-1)
        return chunks, tokens, state.entry_mask

    def forward(self, batch: dict[str, torch.Tensor]) -> MemoryOutput:
        """Read a batch of segmented texts; compute the losses when targets are present.

        Args:
            batch: See the module docstring (``teacher``, ``seq_target``, ``seq_mask`` optional).

        Returns:
            A :class:`MemoryOutput` (``loss`` is None without targets).
        """
        c = self.config
        state, pooled = self.read(batch["states"], batch["attention_mask"], batch["segment_mask"])
        native, ramp, shifts = self.native_inputs(batch)
        sequence = self.output_sequence(state, native, ramp, shifts)
        out = MemoryOutput(pooled=pooled, sequence=sequence)
        chunk_tokens = None
        if c.contextual_chunks:
            chunks, chunk_tokens, windows = self.chunk_outputs(
                state, native, ramp, batch["attention_mask"], shifts
            )
            b, s, win, h = chunks.shape
            out.chunks = chunks.reshape(b, s * win, h)
            out.chunk_mask = windows.unsqueeze(-1).expand(b, s, win).reshape(b, s * win)
        teacher, target = batch.get("teacher"), batch.get("seq_target")
        consumer = "pixel_values" in batch and self.loss_weights["image_weight"] > 0
        if teacher is None and target is None and not consumer:
            return out
        w = self.loss_weights
        device = pooled.device
        loss = torch.zeros((), device=device)
        if teacher is not None:
            teacher = teacher.to(pooled.dtype)
            if pooled.shape[0] >= 2:
                t = self.temperature
                logits = F.normalize(pooled, dim=-1) @ F.normalize(teacher, dim=-1).T / t
                labels = torch.arange(logits.shape[0], device=device)
                out.infonce = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
                out.procrustes = procrustes_alignment_loss(pooled, teacher)
                loss = loss + w["infonce_weight"] * out.infonce + w["procrustes_weight"] * out.procrustes
                with torch.no_grad():
                    out.m_acc = float((logits.argmax(1) == labels).float().mean())
                    out.temperature = float(t)
            cos = F.cosine_similarity(pooled, teacher, dim=-1)
            out.pooled_cos_loss = (1.0 - cos).mean()
            loss = loss + w["pooled_cos_weight"] * out.pooled_cos_loss
            out.pooled_cos = float(cos.detach().mean())
        if target is not None:
            mask = batch.get("seq_mask")
            if mask is None:
                mask = torch.ones(target.shape[:2], device=device)
            m = mask.to(sequence.dtype)
            target = target.to(sequence.dtype)
            mse = ((F.normalize(sequence, dim=-1) - F.normalize(target, dim=-1)) ** 2).mean(-1)
            cos = F.cosine_similarity(sequence, target, dim=-1, eps=1e-8)
            per_pos = mse + (1.0 - cos)
            denom = m.sum().clamp_min(1.0)
            out.seq_loss = (per_pos * m).sum() / denom
            tn = target.norm(dim=-1).clamp_min(1e-6)
            out.seq_norm = ((((sequence.norm(dim=-1) - tn) / tn) ** 2) * m).sum() / denom
            loss = loss + w["seq_weight"] * out.seq_loss + w["seq_norm_weight"] * out.seq_norm
            with torch.no_grad():
                out.s_cos = float(masked_sequence_cosine(sequence, target, mask))
        if teacher is not None and w["seq_pool_weight"] > 0 and sequence.shape[0] >= 2:
            seq_mean = sequence.mean(dim=1)
            logits = F.normalize(seq_mean, dim=-1) @ F.normalize(teacher, dim=-1).T / self.temperature
            labels = torch.arange(logits.shape[0], device=device)
            nce = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            out.seq_pool = nce + (1.0 - F.cosine_similarity(seq_mean, teacher, dim=-1)).mean()
            loss = loss + w["seq_pool_weight"] * out.seq_pool
        if c.contextual_chunks and target is not None:
            m = chunk_tokens.to(chunks.dtype)
            ref = native.to(chunks.dtype)
            mse = ((F.normalize(chunks, dim=-1) - F.normalize(ref, dim=-1)) ** 2).mean(-1)
            cos = F.cosine_similarity(chunks, ref, dim=-1, eps=1e-8)
            denom = m.sum().clamp_min(1.0)
            out.chunk_loss = ((mse + 1.0 - cos) * m).sum() / denom
            loss = loss + w["chunk_weight"] * out.chunk_loss
            with torch.no_grad():
                out.chunk_s_cos = float((cos * m).sum() / denom)
        if c.contextual_chunks and teacher is not None and w["chunk_ctx_weight"] > 0 and pooled.shape[0] >= 2:
            m = chunk_tokens.to(chunks.dtype).unsqueeze(-1)
            means = (chunks * m).sum(2) / m.sum(2).clamp_min(1.0)  # (B, S, H)
            rows, cols = torch.nonzero(state.entry_mask, as_tuple=True)
            q = means[rows, cols]  # every real window
            logits = F.normalize(q, dim=-1) @ F.normalize(teacher, dim=-1).T / self.temperature
            nce = F.cross_entropy(logits, rows)
            out.chunk_ctx = nce + (1.0 - F.cosine_similarity(q, teacher[rows], dim=-1)).mean()
            loss = loss + w["chunk_ctx_weight"] * out.chunk_ctx
        if consumer:
            out.image_loss = self.consumer_loss(out, batch)
            loss = loss + w["image_weight"] * out.image_loss
            out.image_mse = float(out.image_loss.detach())
        anchors = self.bank.anchor_directions()
        if w["cv_weight"] > 0:
            out.cv_loss = cv_loss(anchors, self._cv_target, n_samples=self.config.cv_samples)
            loss = loss + w["cv_weight"] * out.cv_loss
        out.cv = cv_metric(anchors.detach(), n_samples=200)
        out.loss = loss
        return out

    # ------------------------------------------------------------------ text API
    def load_encoder(self, local_files_only: bool = True) -> FrozenTextEncoder:
        """The frozen student encoder named in the config (loaded once, offline by default)."""
        if "encoder" not in self._frozen:
            from pentachora.nn.text_encoder import FrozenTextEncoder

            c = self.config
            self._frozen["encoder"] = FrozenTextEncoder.from_pretrained(
                c.encoder,
                window=c.window,
                layers=c.extraction_layers,
                target_layer=c.target_layer,
                subfolder=c.encoder_subfolder,
                model_class=c.encoder_class,
                local_files_only=local_files_only,
            )
        return self._frozen["encoder"]

    def attach_encoder(self, encoder: FrozenTextEncoder) -> None:
        """Use this already-loaded frozen encoder for :meth:`encode` (it is not a submodule)."""
        self.check_encoder(encoder)
        self._frozen["encoder"] = encoder

    def attach_consumer(self, consumer: Any) -> None:
        """Train against a frozen consumer of the output: ``consumer(conditioning, mask, batch) -> loss``.

        ``conditioning`` is ``(B, L, H)`` (the sequence, or the contextual chunks with
        ``consumer_output="chunks"``), ``mask`` ``(B, L)`` marks positions of real windows (``None`` for
        the sequence) and ``batch`` is the training batch (``pixel_values`` ...). The loss, weighted by
        ``image_weight``, joins the others for batches that carry ``pixel_values``. The consumer is held
        outside the module tree (never saved, never trained by this model's optimiser); ``None``
        detaches it. See :mod:`pentachora.recipes.memory_image` for the frozen text-to-image UNet.
        """
        if consumer is None:
            self._frozen.pop("consumer", None)
            return
        if not callable(consumer):
            raise TypeError(f"a consumer must be callable, got {type(consumer).__name__}")
        self._frozen["consumer"] = consumer

    def consumer_loss(self, out: MemoryOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attached consumer's loss on ``out`` (see :meth:`attach_consumer`).

        Raises:
            ConfigError: No consumer is attached.
        """
        consumer = self._frozen.get("consumer")
        if consumer is None:
            raise ConfigError(
                "this batch carries pixel_values and image_weight > 0, but no consumer is attached "
                "(GeometricMemory.attach_consumer; pentachora.recipes.memory_image.UNetConsumer)"
            )
        if self.config.consumer_output == "chunks":
            return consumer(out.chunks, out.chunk_mask, batch)
        return consumer(out.sequence, None, batch)

    def check_encoder(self, encoder: FrozenTextEncoder) -> None:
        """Raise ``ValueError`` if ``encoder`` does not fit this model (width, window, layers)."""
        c = self.config
        problems = []
        if encoder.hidden_size != c.hidden_size:
            problems.append(f"hidden size {encoder.hidden_size} != {c.hidden_size}")
        if encoder.window != c.window:
            problems.append(f"window {encoder.window} != {c.window}")
        if len(encoder.layers) != len(c.extraction_layers):
            problems.append(f"{len(encoder.layers)} extraction layers != {len(c.extraction_layers)}")
        if encoder.target_layer != c.target_layer:
            problems.append(f"target layer {encoder.target_layer!r} != {c.target_layer!r}")
        if problems:
            raise ValueError("encoder does not match the memory model: " + "; ".join(problems))

    def segmenter(self, encoder: FrozenTextEncoder | None = None, on_overflow: str = "truncate") -> Segmenter:
        """A :class:`~pentachora.data.segmenter.Segmenter` with this model's window settings."""
        from pentachora.data.segmenter import Segmenter

        encoder = encoder or self.load_encoder()
        return Segmenter(encoder, self.config.max_tokens, self.config.overlap, on_overflow=on_overflow)

    @torch.no_grad()
    def encode_segments(
        self, part: SegmentBatch, encoder: FrozenTextEncoder, native: torch.Tensor | None = None
    ) -> MemoryOutput:
        """Read windows that are already cut (:class:`~pentachora.data.segmenter.SegmentBatch`).

        Args:
            part: The windows ``(B, S, W)`` of a batch of texts.
            encoder: The frozen student (checked against the config).
            native: ``(B, S, W, H)`` native window sequences to read instead of encoding ``part``
                again — e.g. prompt-weighted ones (:mod:`pentachora.diffusion.long_prompt`). Only
                models that read native windows (``needs_native``) use it.

        Returns:
            The :class:`MemoryOutput` (no losses), on the model's device.
        """
        from pentachora.data.text_features import segment_features

        self.check_encoder(encoder)
        device = next(self.parameters()).device
        feats = segment_features(encoder, part)
        batch = {
            "states": feats["states"].to(device),
            "attention_mask": part.attention_mask.to(device),
            "segment_mask": part.segment_mask.to(device),
        }
        if self.config.needs_native:
            # every window run alone at full width: for masked encoders too the padded positions
            # then hold the encoder's own states (what a pipeline reads), not the cache's zeros
            if native is None:
                native = native_window_sequences(encoder, part)
            if native.shape[:3] != part.input_ids.shape or native.shape[-1] != encoder.hidden_size:
                raise ValueError(
                    f"native windows {tuple(native.shape)} do not match the windows "
                    f"{tuple(part.input_ids.shape)} × {encoder.hidden_size}"
                )
            batch["native"] = native.to(device)
        return self(batch)

    @torch.no_grad()
    def encode(
        self,
        texts: str | Sequence[str],
        encoder: FrozenTextEncoder | None = None,
        batch_size: int = 16,
        on_overflow: str = "truncate",
    ) -> MemoryEncoding:
        """Long texts → pooled embeddings and ``(L, H)`` sequences.

        Args:
            texts: One text or a list (each up to ``max_tokens`` tokens; longer ones are truncated
                with a warning, or refused with ``on_overflow="error"``).
            encoder: The frozen student encoder (default: :meth:`load_encoder`, offline).
            batch_size: Texts per forward pass.
            on_overflow: ``"truncate"`` or ``"error"``.

        Returns:
            A :class:`MemoryEncoding` on CPU.

        Raises:
            ValueError: An empty text, or an over-long one with ``on_overflow="error"``.
        """
        encoder = encoder or self.load_encoder()
        self.check_encoder(encoder)
        texts = [texts] if isinstance(texts, str) else list(texts)
        seg = self.segmenter(encoder, on_overflow=on_overflow)
        ids, truncated = seg.prepare_ids(texts)  # validates every text before any work
        was_training = self.training
        self.eval()
        pooled, seqs, n_seg, chunks, chunk_masks = [], [], [], [], []
        s_all = max(seg.segments_for(len(t)) for t in ids)  # chunks of every text share one length
        try:
            for start in range(0, len(texts), batch_size):
                part = seg.from_ids(
                    ids[start : start + batch_size], truncated[start : start + batch_size], n_segments=s_all
                )
                out = self.encode_segments(part, encoder)
                pooled.append(out.pooled.float().cpu())
                seqs.append(out.sequence.float().cpu())
                n_seg.append(part.n_segments)
                if out.chunks is not None:
                    chunks.append(out.chunks.float().cpu())
                    chunk_masks.append(out.chunk_mask.cpu())
        finally:
            self.train(was_training)
        return MemoryEncoding(
            pooled=torch.cat(pooled),
            sequence=torch.cat(seqs),
            n_segments=torch.cat(n_seg),
            n_tokens=torch.tensor([len(t) for t in ids]),
            truncated=torch.tensor(truncated),
            chunks=torch.cat(chunks) if chunks else None,
            chunk_mask=torch.cat(chunk_masks) if chunk_masks else None,
        )


@torch.no_grad()
def native_window_sequences(
    encoder: FrozenTextEncoder, part: SegmentBatch, target: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, S, W, H)``: every real window encoded alone, as compel / the lpw pipelines encode a chunk.

    For CLIP towers (every position is read, padding included) each window is padded to W with the
    tokenizer's padding and run alone — exactly the pipeline's own first-window output for a short
    prompt. For masked encoders the real positions of ``target`` (from
    :func:`~pentachora.data.text_features.segment_features`) are already exact and are used as they are.

    Args:
        encoder: The frozen student.
        part: A :class:`~pentachora.data.segmenter.SegmentBatch`.
        target: Its ``segment_features(...)["target"]`` (reused for masked encoders).
    """
    b, s, w = part.input_ids.shape
    if not encoder.is_clip and target is not None:
        return target
    ids, mask, index = part.flat_windows()
    out = torch.zeros(b, s, encoder.window, encoder.hidden_size)
    windows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    for start in range(0, len(windows), 32):
        sel = slice(start, start + 32)
        input_ids, pad_mask = encoder.pad_windows(windows[sel])
        tgt = encoder.encode_windows(input_ids, pad_mask).target.cpu()
        out[index[sel, 0], index[sel, 1]] = tgt
    return out[:, :, :w]

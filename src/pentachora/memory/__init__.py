"""pentachora.memory: extend a frozen fixed-window text encoder to long texts with a geometric memory.

A frozen encoder with a W-token window (77 for CLIP) reads a long text segment by segment; a memory
bank (memory tokens + bank anchors on the sphere, GRU-gated updates, a LayerNorm firebreak between
segments) accumulates it; a pooled output is aligned to a long-context teacher; a
:class:`SequenceReconstructor` turns the memory into a ``(B, 77, H)`` sequence in the frozen
encoder's own distribution (what a diffusion UNet reads).

Quick start (CPU, offline, the embedded MiniLM and Wikipedia corpus)::

    from pentachora.memory import GeometricMemory, MemoryConfig
    from pentachora.recipes.memory import prepare_memory_data, resolve_config, train_memory
    from pentachora.training import TrainConfig

    config, student, teacher = resolve_config(MemoryConfig.preset("minilm-tiny"))
    data = prepare_memory_data(config, "wiki", encoders=(student, teacher))   # caches features once
    run = train_memory(GeometricMemory(config), data, TrainConfig(steps=600, batch_size=32, lr=1e-3))
    enc = run.model.encode(["a long prompt ..."])        # enc.pooled (1, 384), enc.sequence (1, 77, 384)

Modules: :mod:`~pentachora.memory.bank`, :mod:`~pentachora.memory.reconstructor`,
:mod:`~pentachora.memory.model`, :mod:`~pentachora.memory.metrics`. What the memory reads lives below
it: the frozen encoder in :mod:`~pentachora.nn.text_encoder`, the segmenter and the long-text feature
store in :mod:`~pentachora.data.segmenter` and :mod:`~pentachora.data.text_features`; training glue
lives in :mod:`pentachora.recipes.memory` (it imports the trainer).
"""

from pentachora.data.segmenter import SegmentBatch, Segmenter
from pentachora.memory.bank import BankState, DepthProfileFusion, MemoryBank
from pentachora.memory.model import PRESETS, GeometricMemory, MemoryConfig, MemoryEncoding, MemoryOutput
from pentachora.memory.reconstructor import SequenceReconstructor
from pentachora.nn.text_encoder import (
    DEFAULT_ENCODER,
    TINY_ENCODERS,
    EncoderWindowOutput,
    FrozenTextEncoder,
    minilm_path,
    tiny_encoder,
)

__all__ = [
    "DEFAULT_ENCODER",
    "PRESETS",
    "TINY_ENCODERS",
    "BankState",
    "DepthProfileFusion",
    "EncoderWindowOutput",
    "FrozenTextEncoder",
    "GeometricMemory",
    "MemoryBank",
    "MemoryConfig",
    "MemoryEncoding",
    "MemoryOutput",
    "SegmentBatch",
    "Segmenter",
    "SequenceReconstructor",
    "minilm_path",
    "tiny_encoder",
]

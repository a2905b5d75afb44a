"""Long-prompt modes, in one home: what a memory model emits for a long prompt, how it is trained,
and where an SDXL pooled embedding comes from. Each registry is defined here once and validated
here once; the memory model, its recipes, the CLI and :mod:`pentachora.diffusion` read it.

* :data:`SEQUENCE_MODES` (``MemoryConfig.sequence_mode``): ``reconstruct`` (the seed: the
  reconstructor writes the 77 positions from the memory) or ``residual`` (the native first window
  plus a ramped residual read from the memory; short prompts come out native by construction).
* ``contextual_chunks`` (a switch): the model also emits one native-format chunk per window, each
  with a residual read from the whole prompt (compel-shaped ``prompt_embeds`` whose chunks see each
  other).
* ``mean_shift = λ ≥ 0`` (a switch): a learned shift toward the whole prompt's token mean; it needs
  the native windows (``residual`` or contextual chunks).
* :data:`TRAINING_MODES` (``train_memory(mode=...)``): ``joint``, ``two-phase``, ``pooled``.
* :data:`POOLED_MODES` (SDXL's pooled embedding): ``window_mean``, ``memory``, ``first_window``.

:class:`OutputMode` bundles the three output fields of a :class:`~pentachora.memory.MemoryConfig`
(``config.output_mode``) with their rules (:meth:`OutputMode.problems`) and the questions callers
ask of them (:attr:`OutputMode.needs_native`, :meth:`OutputMode.require_chunks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pentachora.errors import ConfigError

__all__ = [
    "POOLED_MODES",
    "SEQUENCE_MODES",
    "TRAINING_MODES",
    "OutputMode",
    "check_pooled_mode",
    "check_training_mode",
]

SEQUENCE_MODES = ("reconstruct", "residual")
TRAINING_MODES = ("joint", "two-phase", "pooled")
POOLED_MODES = ("window_mean", "memory", "first_window")

_CHUNKS_HINT = "pentachora train memory --set contextual_chunks=true"


@dataclass(frozen=True)
class OutputMode:
    """What a memory model emits for a long prompt (the output fields of its config)."""

    sequence_mode: str = "reconstruct"
    contextual_chunks: bool = False
    mean_shift: float = 0.0

    @property
    def needs_native(self) -> bool:
        """Whether the model reads the native window sequences (residual mode or contextual chunks)."""
        return self.sequence_mode == "residual" or self.contextual_chunks

    def problems(self, seq_len: int, window: int) -> list[str]:
        """What is wrong with this mode for a model of ``seq_len`` output positions over a
        ``window``-token encoder (empty when it is valid)."""
        out = []
        if self.sequence_mode not in SEQUENCE_MODES:
            out.append(f"sequence_mode must be one of {SEQUENCE_MODES}, got {self.sequence_mode!r}")
        elif self.sequence_mode == "residual" and seq_len != window:
            out.append(f"sequence_mode='residual' needs seq_len == window ({seq_len} != {window})")
        if not (math.isfinite(self.mean_shift) and self.mean_shift >= 0):
            out.append(f"mean_shift must be a finite number >= 0, got {self.mean_shift}")
        elif self.mean_shift > 0 and not self.needs_native:
            out.append("mean_shift > 0 needs sequence_mode='residual' or contextual_chunks=True")
        return out

    def require_chunks(self, what: str = "chunks=True") -> None:
        """Refuse ``what`` unless the model emits contextual chunks.

        Raises:
            ConfigError: the model was trained without ``contextual_chunks`` (the message says how
                to train one with them).
        """
        if not self.contextual_chunks:
            raise ConfigError(
                f"{what} needs a memory model trained with contextual_chunks=True ({_CHUNKS_HINT})"
            )


def check_pooled_mode(pooled: str) -> str:
    """``pooled`` when it is one of :data:`POOLED_MODES`; a ``ConfigError`` otherwise."""
    if pooled not in POOLED_MODES:
        raise ConfigError(f"pooled must be one of {POOLED_MODES}, got {pooled!r}")
    return pooled


def check_training_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`TRAINING_MODES`; a ``ConfigError`` otherwise."""
    if mode not in TRAINING_MODES:
        raise ConfigError(f"mode must be one of {TRAINING_MODES}, got {mode!r}")
    return mode

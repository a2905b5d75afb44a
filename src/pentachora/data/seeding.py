"""The one seeding scheme and batch-source contract (data and trainer).

A *batch source* (:class:`BatchSource`) is anything with ``batch(step)`` whose result is a pure
function of the source's seed and the step: the source builds a fresh ``torch.Generator`` from
:func:`step_generator` inside every ``batch`` call and keeps no RNG state between calls. Resuming a
run at step ``k`` therefore sees exactly the batches an uninterrupted run would have seen.

**One definition.** :func:`step_seed` and :class:`BatchSource` are defined here, in the data layer,
and nowhere else: the trainer (:mod:`pentachora.training`) imports them from here and re-exports the
same objects (the data layer defines sources; the trainer consumes them, and ``pentachora.data``
imports nothing of training or of any model family, so the dependency points one way).

:func:`step_seed` has two streams, selected by ``salt``:

* **data stream** (``salt=None``, what every source's generator uses):
  ``(seed * 1_000_003 + step) mod 2**64``. Distinct steps of one seed never share a generator
  seed; training uses ``step >= 0`` and fixed evaluation sets use negative steps, so the two never
  collide either.
* **model stream** (``salt=TRAIN_SALT`` before each training step, ``salt=EVAL_SALT`` before each
  evaluation; the trainer seeds torch's global generator with it):
  ``splitmix64(((seed * 1_000_003 + step) mod 2**64) XOR splitmix64(salt + rank)) >> 1``. The hash
  keeps the low 32 bits (all that torch's CPU Mersenne Twister uses) well mixed, so the model's
  noise never replays a data source's generator of the same ``(seed, step)``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

SEED_STRIDE: int = 1_000_003
"""Multiplier in :func:`step_seed` (a prime larger than any realistic step count)."""
TRAIN_SALT: int = 0x7E3A_1C55
"""``salt`` of the model stream the trainer seeds before every training step."""
EVAL_SALT: int = 0x3E7A_1C55
"""``salt`` of the model stream the trainer seeds before every evaluation."""
_MASK64 = (1 << 64) - 1


@runtime_checkable
class BatchSource(Protocol):
    """Training data: ``batch(step)`` is a deterministic function of (the source's seed, step).

    The batch may be a tensor — ``(B, C, H, W)`` float32 for the image and noise sources — or any
    nesting of tensors that ``model(batch)`` accepts; the trainer moves it to the training device.
    Steps are 1-based on a single process (see :mod:`pentachora.training.loop` for the index each
    process draws under ``accelerate launch``); negative steps are free for fixed evaluation sets.
    """

    def batch(self, step: int) -> Any:
        """The batch for ``step``; identical on every call with the same step."""
        ...


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int, rank: int = 0, *, salt: int | None = None) -> int:
    """The seed for ``(seed, step)``: the data stream, or with ``salt`` the trainer's model stream.

    * ``salt=None``: ``(seed * 1_000_003 + step) mod 2**64`` — a batch source's generator seed.
    * ``salt`` given: ``splitmix64(((seed * 1_000_003 + step) mod 2**64) XOR splitmix64(salt + rank)) >> 1``
      — the global torch seed the trainer sets before step ``step`` on process ``rank``
      (:data:`TRAIN_SALT`) or before an evaluation (:data:`EVAL_SALT`).

    Args:
        seed: Base seed (of the source, or ``TrainConfig.seed``).
        step: Training step, or a negative number for fixed evaluation sets.
        rank: Process index (model stream only; data sources are rank-free, the trainer gives each
            process its own step index instead).
        salt: Stream selector; ``None`` for the data stream.

    Returns:
        A seed in ``[0, 2**64)`` (data stream) or ``[0, 2**63)`` (model stream), accepted by
        ``torch.manual_seed`` and ``torch.Generator.manual_seed``.

    Raises:
        ValueError: a non-zero ``rank`` on the data stream.
    """
    base = (int(seed) * SEED_STRIDE + int(step)) & _MASK64
    if salt is None:
        if rank:
            raise ValueError(f"rank={rank} needs a salt: the data stream does not depend on the process")
        return base
    return _splitmix64(base ^ _splitmix64(int(salt) + int(rank))) >> 1


def step_generator(seed: int, step: int, device: torch.device | str | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with the data stream :func:`step_seed` ``(seed, step)``.

    Args:
        seed: Base seed of the source.
        step: Training step (or a negative id for evaluation sets).
        device: Device of the generator (default CPU).

    Returns:
        The seeded generator.
    """
    g = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    g.manual_seed(step_seed(seed, step))
    return g

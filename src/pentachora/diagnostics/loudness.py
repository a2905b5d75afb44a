"""The gradient-loudness meter: how hard each loss term alone pulls on each named parameter group.

The second seed (§6.3) found that a shared representation is shaped by the *loudest* gradient: the
pooled InfoNCE term reached the memory bank through one mean-pool, the sequence term through a long
chain that attenuated it, and the bank served the pooled consumer. The meter measures that directly:
for a model whose output exposes several loss terms, it takes one forward pass on a fixed batch and,
for each term, one ``torch.autograd.grad`` call — the gradient that term *alone* sends — and
reports its L2 norm inside each parameter group::

    meter = LoudnessMeter(model, terms=["infonce", "seq_loss"], groups={"bank": ["bank."], "all": [""]})
    table = meter.measure(batch, step=100)
    table.norms["infonce"]["bank"], table.ratio("infonce", "seq_loss", "bank")

``groups`` maps a group name to parameter-name prefixes (``""`` is every parameter). Norms are of the
raw terms; pass ``weights`` (e.g. the model's loss weights) to also get the weighted norms
``weight × norm`` — what the optimiser actually receives. :class:`LoudnessCallback` runs it every K
steps in a training run and logs ``loudness`` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pentachora.errors import ConfigError
from pentachora.training.callbacks import Callback

if TYPE_CHECKING:
    from pentachora.training.loop import Trainer

__all__ = ["LoudnessCallback", "LoudnessMeter", "LoudnessTable"]


@dataclasses.dataclass
class LoudnessTable:
    """One measurement.

    Attributes:
        step: Training step (``None`` outside a run).
        norms: ``{term: {group: ‖∂term/∂θ_group‖₂}}``.
        values: ``{term: value of the term}``.
        weights: ``{term: weight}`` used for :attr:`weighted` (1.0 when not given).
    """

    step: int | None
    norms: dict[str, dict[str, float]]
    values: dict[str, float]
    weights: dict[str, float]

    @property
    def weighted(self) -> dict[str, dict[str, float]]:
        """``weight × norm`` per term and group."""
        return {t: {g: self.weights[t] * v for g, v in gs.items()} for t, gs in self.norms.items()}

    def ratio(self, term: str, reference: str, group: str, weighted: bool = False) -> float:
        """``norm(term) / norm(reference)`` in ``group`` (``inf`` when the reference sends nothing)."""
        table = self.weighted if weighted else self.norms
        num, den = table[term][group], table[reference][group]
        if den == 0.0:
            return math.inf if num > 0 else math.nan
        return num / den

    def scalars(self) -> dict[str, float]:
        """Flat metrics: ``<term>/<group>`` norms, ``<term>/value`` and ``ratio/<term>:<ref>/<group>``
        (every term against the first one, weighted when weights were given)."""
        out: dict[str, float] = {}
        terms = list(self.norms)
        weighted = any(w != 1.0 for w in self.weights.values())
        for t in terms:
            out[f"{t}/value"] = self.values[t]
            for g, v in self.norms[t].items():
                out[f"{t}/{g}"] = v
                if weighted:
                    out[f"{t}/{g}/weighted"] = self.weights[t] * v
        for t in terms[1:]:
            for g in self.norms[t]:
                out[f"ratio/{t}:{terms[0]}/{g}"] = self.ratio(t, terms[0], g, weighted=weighted)
        return out


class LoudnessMeter:
    """Per-term gradient norms into parameter groups (see the module docstring).

    Args:
        model: The model; ``forward(model, batch)`` must return an object whose attributes (or keys)
            ``terms`` are 0-d tensors attached to the graph.
        terms: Loss-term names (the first is the reference of the logged ratios).
        groups: ``{group: [parameter-name prefixes]}``; default ``{"all": [""]}``.
        weights: ``{term: weight}`` for weighted norms, or a callable ``weights(model) -> mapping``
            (e.g. ``lambda m: {"infonce": m.loss_weights["infonce_weight"], ...}``).
        forward: ``forward(model, batch)`` (default ``model(batch)``).
    """

    def __init__(
        self,
        model: nn.Module,
        terms: Sequence[str],
        groups: Mapping[str, str | Sequence[str]] | None = None,
        weights: Mapping[str, float] | Callable[[nn.Module], Mapping[str, float]] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        terms = [terms] if isinstance(terms, str) else list(terms)
        if not terms:
            raise ConfigError(
                "LoudnessMeter needs at least one loss term, e.g. terms=['infonce', 'seq_loss']"
            )
        self.model = model
        self.terms = terms
        raw = groups or {"all": [""]}
        self.groups = {g: ([p] if isinstance(p, str) else list(p)) for g, p in raw.items()}
        named = list(model.named_parameters())
        self._params: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for g, prefixes in self.groups.items():
            members = [(n, p) for n, p in named if any(n.startswith(pre) for pre in prefixes)]
            if not members:
                raise ConfigError(
                    f"loudness group {g!r}: the prefixes {prefixes} match no parameter of "
                    f"{type(model).__name__} (e.g. {[n for n, _ in named[:5]]})"
                )
            self._params[g] = members
        self.weights = weights
        self.forward = forward or (lambda m, b: m(b))
        self.history: list[dict[str, Any]] = []

    def _weights(self) -> dict[str, float]:
        w = self.weights(self.model) if callable(self.weights) else (self.weights or {})
        return {t: float(w.get(t, 1.0)) for t in self.terms}

    def measure(
        self, batch: Any, step: int | None = None, context: contextlib.AbstractContextManager | None = None
    ) -> LoudnessTable:
        """One forward pass on ``batch`` and one ``autograd.grad`` per term.

        Args:
            batch: What ``forward(model, batch)`` takes.
            step: Recorded with the table.
            context: Optional context for the forward pass (e.g. the run's autocast).

        Returns:
            A :class:`LoudnessTable` (also appended to :attr:`history` as a dict).
        """
        union: list[nn.Parameter] = []
        seen: set[int] = set()
        for members in self._params.values():
            for _, p in members:
                if id(p) not in seen and p.requires_grad:
                    seen.add(id(p))
                    union.append(p)
        index = {id(p): i for i, p in enumerate(union)}
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), context or contextlib.nullcontext():
            out = self.forward(self.model, batch)
        norms: dict[str, dict[str, float]] = {}
        values: dict[str, float] = {}
        for i, term in enumerate(self.terms):
            t = out.get(term) if isinstance(out, Mapping) else getattr(out, term, None)
            if not isinstance(t, torch.Tensor) or t.ndim != 0:
                raise ConfigError(
                    f"loudness term {term!r}: the model output ({type(out).__name__}) has no 0-d tensor of that "
                    "name (is the term switched on for this batch?)"
                )
            values[term] = float(t.detach())
            if t.requires_grad and union:
                grads = torch.autograd.grad(t, union, retain_graph=i < len(self.terms) - 1, allow_unused=True)
            else:
                grads = (None,) * len(union)
            norms[term] = {}
            for g, members in self._params.items():
                sq = 0.0
                for _, p in members:
                    j = index.get(id(p))
                    gr = grads[j] if j is not None else None
                    if gr is not None:
                        sq += float(gr.detach().to(torch.float64).pow(2).sum())
                norms[term][g] = math.sqrt(sq)
        table = LoudnessTable(step=step, norms=norms, values=values, weights=self._weights())
        self.history.append(dataclasses.asdict(table))
        return table

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state.get("history", []))


class LoudnessCallback(Callback):
    """:class:`LoudnessMeter` as a Trainer callback: every ``every`` steps on one fixed batch.

    The batch is ``batch`` or the training source's batch ``batch_index``; the forward pass runs
    under the trainer's autocast. Tables are logged with :meth:`Trainer.log_metrics` as
    ``{"split": "loudness", ...}`` records (see :meth:`LoudnessTable.scalars`) and checkpointed.

    Args:
        terms, groups, weights: As for :class:`LoudnessMeter` (``weights="model"`` reads
            ``model.loss_weights[f"{term}_weight"]`` where present).
        every: Period in steps.
        batch: A fixed batch (default: the source's batch ``batch_index``).
        batch_index: Source index of the default batch.
    """

    state_key = "LoudnessCallback"

    def __init__(
        self,
        terms: Sequence[str],
        groups: Mapping[str, str | Sequence[str]] | None = None,
        every: int = 100,
        weights: Mapping[str, float] | str | None = None,
        batch: Any = None,
        batch_index: int = 1,
    ) -> None:
        if int(every) < 1:
            raise ConfigError(f"loudness every must be >= 1 step, got {every}")
        self.terms = [terms] if isinstance(terms, str) else list(terms)
        self.groups = groups
        self.every = int(every)
        self.weights = weights
        self.batch = batch
        self.batch_index = int(batch_index)
        self.meter: LoudnessMeter | None = None
        self._batch: Any = None
        self._pending: dict[str, Any] | None = None

    def _weights_fn(self) -> Mapping[str, float] | Callable[[nn.Module], Mapping[str, float]] | None:
        if self.weights != "model":
            return self.weights  # type: ignore[return-value]
        terms = self.terms

        def from_model(m: nn.Module) -> dict[str, float]:
            lw = getattr(m, "loss_weights", {}) or {}
            out = {}
            for t in terms:
                for key in (f"{t}_weight", f"{t.removesuffix('_loss')}_weight"):
                    if key in lw:
                        out[t] = float(lw[key])
                        break
            return out

        return from_model

    def on_train_start(self, trainer: Trainer) -> None:
        from accelerate.utils import send_to_device

        self.meter = LoudnessMeter(
            trainer.unwrapped_model, self.terms, self.groups, weights=self._weights_fn()
        )
        if self._pending is not None:
            self.meter.load_state_dict(self._pending)
            self._pending = None
        batch = self.batch if self.batch is not None else trainer.train_source.batch(self.batch_index)
        self._batch = send_to_device(batch, trainer.accelerator.device)

    def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
        if step % self.every or self.meter is None:
            return
        table = self.meter.measure(self._batch, step=step, context=trainer.accelerator.autocast())
        trainer.log_metrics(step, table.scalars(), split="loudness")

    @property
    def history(self) -> list[dict[str, Any]]:
        if self.meter is not None:
            return self.meter.history
        return list((self._pending or {}).get("history", []))

    def state_dict(self) -> dict[str, Any]:
        return self.meter.state_dict() if self.meter is not None else dict(self._pending or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)
        if self.meter is not None:
            self.meter.load_state_dict(state)
            self._pending = None

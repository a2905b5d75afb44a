"""ConduitHub: several frozen experts aligned into one geometric space (the seed's GEOLIP-Conduit).

::

    expert A features → ProcrustesAligner (frozen) → ExpertModule ─┐
    expert B features → ProcrustesAligner (frozen) → ExpertModule ─┤→ FusionLayer → read-outs → loss
    expert C features → ProcrustesAligner (frozen) → ExpertModule ─┘

The checkpoint holds the trainable parts and the aligners' buffers (means, PCA bases, whiteners,
rotations), never the frozen encoders' weights: the config names the experts and their widths.

Aligners are fitted once, before training, by :meth:`ConduitHub.fit_aligners` on pooled training
features: the **reference** expert (``config.reference``, default the first whose width equals
``d_hub``, else the first) is centred, reduced and whitened into the hub space; every other expert is
fitted onto the reference's aligned rows by orthogonal Procrustes.

Batches are dicts ``{expert name: {"features": (B, T, d_e), "mask": (B, T)}}`` (missing experts are
skipped; a pair is trained when both of its experts are present). ``forward`` returns a
:class:`HubOutput` with ``loss`` and every term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pentachora.errors import ConfigError, DataError
from pentachora.geometry import generalized_cca, target_cv
from pentachora.hub.expert import ExpertModule, FrozenExpert
from pentachora.hub.fusion import FusionLayer
from pentachora.hub.loss import GeometricHubLoss, parse_pairs
from pentachora.modeling import ModelOutput, PentachoraModel, register_model

__all__ = ["READOUTS", "ConduitHub", "ConduitHubConfig", "HubOutput"]

READOUTS = ("anchored", "fusion")
PROJ_INITS = ("gcca", "identity")


@dataclass
class ConduitHubConfig:
    """Configuration of a :class:`ConduitHub`.

    Attributes:
        experts: Expert names (order fixes the fusion order).
        expert_dims: Width of each expert's token features.
        d_hub: Hub width.
        reference: The expert the others are Procrustes-aligned onto ("" = first with width d_hub,
            else the first).
        pairs: Trained pairs ``"A|B"`` (empty = every pair). Train ``A|B`` and ``B|C`` only to measure
            emergent ``A↔C`` alignment.
        n_tokens: Pooled tokens per expert.
        n_heads: Attention heads (pooling and fusion).
        fusion_layers: Transformer layers of the FusionLayer.
        ff_mult: Feed-forward width multiple.
        dropout: Dropout of pooling and fusion.
        token_dropout: Training-time drop probability of each expert input token (augmentation).
        whiten, shrinkage, rank: Aligner options (see :class:`~pentachora.hub.aligner.AlignerConfig`).
        w_nce, w_midpoint, w_procrustes: Loss weights.
        tau_init, tau_min, tau_max: Learned temperature.
        midpoint_samples: 5-point subsets per batch for the midpoint term.
        readout: ``"anchored"`` (default): an expert's read-out is its anchor (the masked mean of its
            aligned tokens — at initialisation exactly the frozen aligner's output) plus a learned
            per-expert gate times the FusionLayer's identity-token output, so training starts from the
            aligner and the fusion adds what it learns. ``"fusion"``: the seed's plain identity-token
            read-out (starts from a random projection of the aligned tokens).
        gate_init: Initial gate of the anchored read-out (0 = the hub starts exactly at the aligners).
        proj_init: How :meth:`ConduitHub.fit_aligners` initialises each expert's learned projection:
            ``"gcca"`` — generalised CCA (:func:`pentachora.geometry.generalized_cca`) of the aligned
            experts, so every expert starts in one shared space weighted towards the directions the
            experts agree on (needs every expert on the same items; otherwise it falls back to
            ``"identity"`` and says so in the returned modes); ``"identity"`` — start at the frozen
            Procrustes alignment onto the reference.
        gcca_power: Exponent of the generalised-CCA direction weights ``(λ − 1)^power``.
        expert_sources: Optional description of each expert (e.g. a HF id), for the record only.
    """

    experts: tuple[str, ...] = ("minilm", "lsa", "w2v")
    expert_dims: tuple[int, ...] = (384, 256, 128)
    d_hub: int = 256
    reference: str = ""
    pairs: tuple[str, ...] = ()
    n_tokens: int = 4
    n_heads: int = 4
    fusion_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    token_dropout: float = 0.0
    whiten: bool = True
    shrinkage: float = 0.2
    rank: int = 0
    w_nce: float = 1.0
    w_midpoint: float = 0.1
    w_procrustes: float = 0.1
    tau_init: float = 0.07
    tau_min: float = 0.01
    tau_max: float = 1.0
    midpoint_samples: int = 64
    readout: str = "anchored"
    gate_init: float = 0.0
    proj_init: str = "identity"
    gcca_power: float = 1.0
    expert_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.experts = tuple(self.experts)
        self.expert_dims = tuple(int(d) for d in self.expert_dims)
        self.pairs = tuple(self.pairs)
        self.expert_sources = tuple(self.expert_sources)
        if len(self.experts) < 2:
            raise ConfigError(f"a hub needs at least 2 experts, got {list(self.experts)}")
        if len(set(self.experts)) != len(self.experts) or any(("|" in e or not e) for e in self.experts):
            raise ConfigError(
                f"expert names must be distinct, non-empty and without '|': {list(self.experts)}"
            )
        if len(self.expert_dims) != len(self.experts):
            raise ConfigError(
                f"expert_dims has {len(self.expert_dims)} entries for {len(self.experts)} experts"
            )
        if any(d < 1 for d in self.expert_dims) or self.d_hub < 4:
            raise ConfigError(f"widths must be >= 1 and d_hub >= 4, got {self.expert_dims}, {self.d_hub}")
        if self.reference and self.reference not in self.experts:
            raise ConfigError(f"reference {self.reference!r} is not one of the experts {list(self.experts)}")
        for name in ("dropout", "token_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.proj_init not in PROJ_INITS:
            raise ConfigError(f"proj_init must be one of {list(PROJ_INITS)}, got {self.proj_init!r}")
        if not (0.0 <= self.gcca_power <= 4.0):
            raise ConfigError(f"gcca_power must be in [0, 4], got {self.gcca_power}")
        if self.readout not in READOUTS:
            raise ConfigError(f"readout must be one of {list(READOUTS)}, got {self.readout!r}")
        parse_pairs(self.pairs, self.experts)  # validates

    @property
    def reference_expert(self) -> str:
        if self.reference:
            return self.reference
        for name, d in zip(self.experts, self.expert_dims, strict=True):
            if d == self.d_hub:
                return name
        return self.experts[0]

    @property
    def pair_list(self) -> list[tuple[str, str]]:
        return parse_pairs(self.pairs, self.experts)


@dataclass
class HubOutput(ModelOutput):
    """Output of :meth:`ConduitHub.forward`.

    Attributes:
        loss: The weighted total.
        nce, midpoint, procrustes: The three terms (mean over trained pairs).
        midpoint_cv: Pentachoron CV of the midpoints (detached), compare with ``cv_target``.
        cv_target: ``target_cv(d_hub)``.
        temperature: The learned temperature.
        embeddings: ``{expert: (B, d_hub)}`` unit read-outs.
        parts: Per-pair terms.
    """

    nce: torch.Tensor | None = None
    midpoint: torch.Tensor | None = None
    procrustes: torch.Tensor | None = None
    midpoint_cv: torch.Tensor | None = None
    cv_target: float = 0.0
    temperature: torch.Tensor | None = None
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@register_model
class ConduitHub(PentachoraModel):
    """Experts → aligners → ExpertModules → FusionLayer → a shared unit-sphere space of width ``d_hub``."""

    model_type: ClassVar[str] = "conduit_hub"
    config_class: ClassVar[type] = ConduitHubConfig

    def __init__(self, config: ConduitHubConfig) -> None:
        super().__init__(config)
        c = config
        aligner = {"whiten": c.whiten, "shrinkage": c.shrinkage, "rank": c.rank}
        self.experts = nn.ModuleDict(
            {
                name: ExpertModule(
                    name, d, c.d_hub, c.n_tokens, c.n_heads, c.dropout, aligner, token_dropout=c.token_dropout
                )
                for name, d in zip(c.experts, c.expert_dims, strict=True)
            }
        )
        self.fusion = FusionLayer(c.d_hub, c.n_heads, c.fusion_layers, c.ff_mult, c.dropout)
        if c.readout == "anchored":  # one gate per expert, in config.experts order
            self.readout_gate = nn.Parameter(torch.full((len(c.experts),), float(c.gate_init)))
        self.hub_loss = GeometricHubLoss(
            c.w_nce, c.w_midpoint, c.w_procrustes, c.tau_init, c.tau_min, c.tau_max, c.midpoint_samples
        )
        self._cv_target: float | None = None

    # ------------------------------------------------------------------ aligners
    @property
    def aligners_fitted(self) -> bool:
        return all(m.aligner.is_fitted for m in self.experts.values())

    @torch.no_grad()
    def fit_aligners(
        self, pooled: Mapping[str, torch.Tensor], items: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, str]:
        """Fit every expert's frozen aligner on paired pooled training features ``{name: (N, d_e)}``.

        Args:
            pooled: Row i of every expert is the same item.
            items: Optional ``{name: indices}``: the items whose (expert, reference) pairs may be used
                to fit that expert's aligner (the emergent-alignment run fits A onto the reference B on
                the A–B half and C on the B–C half). The reference's own reduction uses all its rows.

        Returns:
            ``{name: mode}`` (``direct`` / ``pca`` / ``pad``; the reference is marked) and
            ``{"proj_init": how the projections were initialised}``.

        Raises:
            DataError: A missing expert, unequal row counts, NaN/inf, a wrong width.
        """
        missing = [n for n in self.config.experts if n not in pooled]
        if missing:
            raise DataError(f"pooled features are missing for experts {missing}")
        counts = {n: int(pooled[n].shape[0]) for n in self.config.experts}
        if len(set(counts.values())) != 1:
            raise DataError(f"experts must be paired on the same items, but the row counts differ: {counts}")
        items = dict(items or {})
        ref = self.config.reference_expert

        def fit(name: str, src: torch.Tensor, tgt: torch.Tensor | None):
            try:
                return self.experts[name].aligner.fit(src, tgt)
            except DataError as exc:
                raise DataError(f"expert {name!r}: {exc}") from exc

        ref_aligner = fit(ref, pooled[ref], None)
        target = ref_aligner(pooled[ref])
        modes = {ref: f"reference ({ref_aligner.mode})"}
        for name in self.config.experts:
            if name == ref:
                continue
            idx = items.get(name)
            src, tgt = (pooled[name], target) if idx is None else (pooled[name][idx], target[idx])
            modes[name] = fit(name, src, tgt).mode
        modes["proj_init"] = self._init_projections(pooled, paired_on_all_items=not items)
        return modes

    @torch.no_grad()
    def _init_projections(self, pooled: Mapping[str, torch.Tensor], paired_on_all_items: bool) -> str:
        """Start every expert's ``proj`` at the generalised-CCA map of its aligned features (see config)."""
        if self.config.proj_init == "identity":
            return "identity"
        if not paired_on_all_items:
            return "identity (gcca needs every expert on the same items)"
        names = list(self.config.experts)
        aligned = [self.experts[n].aligner(pooled[n]).to(torch.float64) for n in names]
        shared = generalized_cca(aligned, k=self.config.d_hub, power=self.config.gcca_power)
        for name, z, m in zip(names, aligned, shared.maps, strict=True):
            # keep the anchor's scale: the rms norm of the shared coordinates equals the aligned rows'
            scale = (z.pow(2).sum(1).mean() / (z @ m).pow(2).sum(1).mean().clamp_min(1e-300)).sqrt()
            proj = self.experts[name].proj
            proj.weight.copy_((m * scale).T.to(proj.weight.dtype))
            proj.bias.zero_()
        return f"gcca (power {self.config.gcca_power:g}, top agreement {float(shared.agreement[0]):.3f})"

    # ------------------------------------------------------------------ embedding
    @property
    def cv_target(self) -> float:
        if self._cv_target is None:
            self._cv_target = float(target_cv(self.config.d_hub))
        return self._cv_target

    def attach(self, encoders: Mapping[str, FrozenExpert]) -> ConduitHub:
        """Attach frozen encoders by expert name (for :meth:`encode` on raw inputs)."""
        for name, enc in encoders.items():
            if name not in self.experts:
                raise ConfigError(f"no expert {name!r} in this hub; experts are {list(self.experts)}")
            self.experts[name].attach(enc)
        return self

    def _check_ready(self) -> None:
        if not self.aligners_fitted:
            raise DataError("the hub's aligners are not fitted; call fit_aligners(pooled_train) first")

    def embed_many(
        self, batch: Mapping[str, Mapping[str, torch.Tensor]], cross_expert: bool = False
    ) -> dict[str, torch.Tensor]:
        """Unit read-outs ``{name: (B, d_hub)}`` for every expert present in ``batch``."""
        self._check_ready()
        names = [n for n in self.config.experts if n in batch]
        unknown = sorted(set(batch) - set(self.config.experts) - {"index"})
        if unknown:
            raise DataError(
                f"batch holds unknown experts {unknown}; this hub has {list(self.config.experts)}"
            )
        if not names:
            raise DataError(f"the batch holds none of the hub's experts {list(self.config.experts)}")
        encoded = [
            self.experts[n].tokens_and_anchor(batch[n]["features"], batch[n].get("mask")) for n in names
        ]
        fused = self.fusion([tokens for tokens, _ in encoded], cross_expert=cross_expert)
        out = {}
        for name, (_, anchor), f in zip(names, encoded, fused, strict=True):
            if self.config.readout == "anchored":  # see ConduitHubConfig.readout
                f = anchor + self.readout_gate[self.config.experts.index(name)] * f
            out[name] = F.normalize(f, dim=-1)
        return out

    def embed(self, name: str, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit hub embedding ``(B, d_hub)`` of one expert's token features ``(B, T, d_e)``."""
        if name not in self.experts:
            raise ConfigError(f"no expert {name!r} in this hub; experts are {list(self.experts)}")
        return self.embed_many({name: {"features": features, "mask": mask}})[name]

    def encode(self, name: str, inputs: Any) -> torch.Tensor:
        """Hub embedding of raw inputs through the attached frozen encoder of ``name``."""
        self._check_ready()
        if name not in self.experts:
            raise ConfigError(f"no expert {name!r} in this hub; experts are {list(self.experts)}")
        features, mask = self.experts[name].frozen_features(inputs)  # no gradient into the frozen encoder
        return self.embed(name, features, mask)

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Any]) -> HubOutput:
        emb = self.embed_many({k: v for k, v in batch.items() if k != "index"})
        pairs = [(a, b) for a, b in self.config.pair_list if a in emb and b in emb]
        if not pairs:
            raise DataError(
                f"the batch holds experts {sorted(emb)} but no trained pair {self.config.pair_list} of them"
            )
        out = self.hub_loss(emb, pairs)
        return HubOutput(
            loss=out.loss,
            nce=out.nce,
            midpoint=out.midpoint,
            procrustes=out.procrustes,
            midpoint_cv=out.midpoint_cv,
            cv_target=self.cv_target,
            temperature=out.temperature,
            embeddings=emb,
            parts=out.parts,
        )

    def trainable_parts(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters grouped by part (for tests and reports)."""
        parts: dict[str, list[nn.Parameter]] = {}
        for name, module in self.experts.items():
            parts[f"expert[{name}]"] = [p for p in module.parameters() if p.requires_grad]
        parts["fusion"] = list(self.fusion.parameters())
        if self.config.readout == "anchored":
            parts["readout_gate"] = [self.readout_gate]
        parts["loss"] = list(self.hub_loss.parameters())
        return parts

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "model": self.model_type,
            "experts": {
                n: {"dim": d, "mode": self.experts[n].aligner.mode}
                for n, d in zip(c.experts, c.expert_dims, strict=True)
            },
            "reference": c.reference_expert,
            "pairs": ["|".join(p) for p in c.pair_list],
            "d_hub": c.d_hub,
            "parameters": self.num_parameters(),
            "trainable_parameters": self.num_parameters(trainable_only=True),
            "cv_target": self.cv_target,
            "config": dataclasses.asdict(c),
        }

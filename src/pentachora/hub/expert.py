"""Experts of the Conduit hub: frozen encoders that yield token features, and the learned wrapper.

Two halves:

* **Frozen encoders** give ``(features (B, T, D), mask (B, T))`` for a batch of inputs and are never
  trained: :class:`HFExpert` (any Hugging Face model by name or instance — DINOv2 / CLIP vision on
  pixels, Whisper's encoder on log-mel features, ModernBERT / BERT on text) and
  :class:`CallableExpert` (any function returning token features and a mask). The embedded text
  experts (MiniLM, LSA, word vectors) live in :mod:`pentachora.hub.text_experts`.
* :class:`ExpertModule` — the seed's standard wrapper: frozen :class:`ProcrustesAligner` → learned
  projection → attention pooling from variable length to ``n_tokens`` fixed tokens → a learned expert
  identity token (the read-out point of the :class:`~pentachora.hub.fusion.FusionLayer`).

The frozen encoder is held by the module but is **not** part of its ``state_dict`` (a hub checkpoint
never contains someone else's weights); training usually runs on cached features and calls
:meth:`ExpertModule.forward` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pentachora.errors import ConfigError, DataError
from pentachora.hub.aligner import AlignerConfig, ProcrustesAligner

__all__ = ["CallableExpert", "ExpertModule", "FrozenExpert", "HFExpert", "check_token_features"]

logger = logging.getLogger(__name__)

TokenFeatures = tuple[torch.Tensor, torch.Tensor]


def check_token_features(features: torch.Tensor, mask: torch.Tensor, dim: int, name: str = "expert") -> None:
    """Raise :class:`DataError` unless ``features`` is finite ``(B, T, dim)`` and ``mask`` is ``(B, T)``."""
    if features.dim() != 3 or features.shape[-1] != dim:
        raise DataError(
            f"{name}: token features must be (B, T, {dim}), got {tuple(features.shape)}; "
            "a different width means a different expert (or fit a new aligner)"
        )
    if mask.shape != features.shape[:2]:
        raise DataError(f"{name}: mask must be {tuple(features.shape[:2])}, got {tuple(mask.shape)}")
    if not bool(mask.any(1).all()):
        raise DataError(f"{name}: every item needs at least one real token (a row of the mask is empty)")
    if not torch.isfinite(features[mask.bool()]).all():
        raise DataError(f"{name}: token features contain NaN/inf; clean or drop those items first")


class FrozenExpert(nn.Module):
    """Base of frozen encoders: ``forward(inputs) -> (features (B, T, dim), mask (B, T) bool)``."""

    name: str = "expert"
    dim: int = 0

    def freeze(self) -> FrozenExpert:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenExpert:  # frozen experts stay in eval mode
        return super().train(False)


class CallableExpert(FrozenExpert):
    """Any callable ``fn(inputs) -> (features (B, T, dim), mask (B, T))`` as a frozen expert.

    Args:
        fn: The encoder (its parameters, if it is a module, are frozen).
        dim: Feature width.
        name: Identifier.
    """

    def __init__(self, fn: Callable[[Any], TokenFeatures], dim: int, name: str = "callable") -> None:
        super().__init__()
        if isinstance(fn, nn.Module):
            self.fn = fn
        else:
            self._fn = fn
        self.dim = int(dim)
        self.name = name
        self.freeze()

    @torch.no_grad()
    def forward(self, inputs: Any) -> TokenFeatures:
        fn = self.fn if "fn" in self._modules else self._fn
        out = fn(inputs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise DataError(f"expert {self.name!r} must return (features, mask), got {type(out).__name__}")
        features, mask = out
        mask = mask.bool()
        check_token_features(features, mask, self.dim, self.name)
        return features.float(), mask


def _offline_hint(name: str) -> str:
    return (
        f"expert {name!r} is not available offline (not a local folder and not in the Hugging Face cache). "
        f'Get it once with `huggingface-cli download {name}` (or `python -c "from huggingface_hub import '
        f"snapshot_download; snapshot_download('{name}')\"`) on a machine with network access, or pass "
        "a local folder, or allow downloads (local_files_only=False / --online)"
    )


class HFExpert(FrozenExpert):
    """A frozen Hugging Face model as an expert: its last hidden states are the token features.

    Works with any model whose forward returns ``last_hidden_state``: ``Dinov2Model`` /
    ``CLIPVisionModel`` (``pixel_values``), Whisper (its encoder, ``input_features``), ``ModernBertModel``
    / ``BertModel`` (``input_ids`` + ``attention_mask``). Encoder–decoder models (Whisper) use their
    encoder. The mask is the model's ``attention_mask`` when the inputs have one, else all tokens.

    Args:
        model: The transformers model (frozen here).
        processor: Optional tokenizer / image processor / feature extractor, used when the inputs are
            raw (texts, images, waveforms) rather than a dict of tensors.
        name: Identifier (default: the model's ``name_or_path``).
    """

    def __init__(self, model: nn.Module, processor: Any = None, name: str | None = None) -> None:
        super().__init__()
        if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model
        self.processor = processor
        cfg = model.config
        dim = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if not dim:
            raise ConfigError(
                f"cannot read the hidden width of {type(model).__name__} (no hidden_size/d_model)"
            )
        self.dim = int(dim)
        self.name = name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, local_files_only: bool = True, tower: str = "auto", **kwargs: Any
    ) -> HFExpert:
        """Load a model (and its processor, when it has one) offline by default.

        Args:
            name_or_path: A Hub id (``facebook/dinov2-small``, ``openai/whisper-tiny``,
                ``openai/clip-vit-base-patch32``, ``answerdotai/ModernBERT-base``) or a local folder.
            local_files_only: Never download (default).
            tower: For CLIP checkpoints: ``"vision"`` (default under ``"auto"``) or ``"text"``.

        Raises:
            ConfigError: The model is not available offline (the message says how to get it).
        """
        import transformers
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ConfigError(_offline_hint(name_or_path)) from err
        klass: Any = AutoModel
        if config.model_type == "clip":
            klass = transformers.CLIPTextModel if tower == "text" else transformers.CLIPVisionModel
        try:
            model = klass.from_pretrained(name_or_path, local_files_only=local_files_only, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(_offline_hint(name_or_path)) from err
        processor = None
        try:
            processor = transformers.AutoProcessor.from_pretrained(
                name_or_path, local_files_only=local_files_only
            )
        except (OSError, ValueError, KeyError, TypeError):  # a model without a processor: tensors only
            logger.info("no processor found for %s; pass tensors to the expert", name_or_path)
        return cls(model, processor, name=name_or_path)

    @torch.no_grad()
    def forward(self, inputs: Any) -> TokenFeatures:
        """Inputs: a dict of tensors for the model, or raw data for the processor."""
        if not isinstance(inputs, Mapping):
            if self.processor is None:
                raise DataError(f"expert {self.name!r} has no processor; pass a dict of model input tensors")
            inputs = dict(self.processor(inputs, return_tensors="pt"))
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = self.model(**inputs)
        features = out.last_hidden_state
        mask = inputs.get("attention_mask")
        if mask is None or mask.shape != features.shape[:2]:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features.float(), mask.bool()


class ExpertModule(nn.Module):
    """Aligner → projection → attention pooling to ``n_tokens`` → identity token.

    Args:
        name: The expert's name.
        d_in: Width of its token features.
        d_hub: Hub width.
        n_tokens: Fixed number of pooled tokens K.
        n_heads: Attention heads of the pooling.
        dropout: Dropout on the pooled tokens.
        token_dropout: In training, drop each real input token with this probability (every item
            keeps at least one), an augmentation for multi-token experts; the anchor is the mean of the
            kept tokens.
        aligner: ``AlignerConfig`` options (``whiten``, ``shrinkage``, ``rank``).
        encoder: Optional frozen encoder (:class:`FrozenExpert`) used by :meth:`encode`; not saved.

    Shapes:
        ``forward(features (B, T, d_in), mask (B, T)) -> (B, K + 1, d_hub)``; position 0 is the identity
        token, positions 1..K the pooled tokens.
    """

    def __init__(
        self,
        name: str,
        d_in: int,
        d_hub: int,
        n_tokens: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        aligner: Mapping[str, Any] | None = None,
        encoder: FrozenExpert | None = None,
        token_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_hub % n_heads:
            raise ConfigError(f"d_hub ({d_hub}) must be divisible by n_heads ({n_heads})")
        if n_tokens < 1:
            raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}")
        self.name = name
        self.d_in, self.d_hub, self.n_tokens = int(d_in), int(d_hub), int(n_tokens)
        self.aligner = ProcrustesAligner(AlignerConfig(d_in=d_in, d_hub=d_hub, **dict(aligner or {})))
        self.proj = nn.Linear(d_hub, d_hub)
        with torch.no_grad():  # start at the frozen Procrustes alignment
            self.proj.weight.copy_(torch.eye(d_hub))
            self.proj.bias.zero_()
        self.norm = nn.LayerNorm(d_hub)
        self.queries = nn.Parameter(torch.randn(n_tokens, d_hub) * d_hub**-0.5)
        self.pool = nn.MultiheadAttention(d_hub, n_heads, batch_first=True)
        self.identity = nn.Parameter(torch.randn(1, d_hub) * d_hub**-0.5)
        self.drop = nn.Dropout(dropout)
        if not 0.0 <= token_dropout < 1.0:
            raise ConfigError(f"token_dropout must be in [0, 1), got {token_dropout}")
        self.token_dropout = float(token_dropout)
        self.__dict__["_encoder"] = encoder  # frozen, never registered: not in state_dict / parameters

    @property
    def encoder(self) -> FrozenExpert | None:
        return self.__dict__.get("_encoder")

    def attach(self, encoder: FrozenExpert) -> ExpertModule:
        """Attach a frozen encoder for :meth:`encode` (its width must be ``d_in``)."""
        if int(encoder.dim) != self.d_in:
            raise ConfigError(
                f"encoder {encoder.name!r} yields {encoder.dim}-d features but expert {self.name!r} expects "
                f"{self.d_in}-d"
            )
        self.__dict__["_encoder"] = encoder
        return self

    def aligned(self, features: torch.Tensor) -> torch.Tensor:
        """Frozen aligner + learned projection: ``(B, T, d_in) -> (B, T, d_hub)``."""
        return self.proj(self.aligner(features).to(self.proj.weight.dtype))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.tokens_and_anchor(features, mask)[0]

    def tokens_and_anchor(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion tokens ``(B, K + 1, d_hub)`` and the anchor ``(B, d_hub)``.

        The anchor is the masked mean of the aligned tokens: at initialisation (``proj`` = I) exactly
        the frozen aligner's output for the item's pooled features, the start of the hub's read-out.
        """
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        mask = mask.bool()
        check_token_features(features, mask, self.d_in, self.name)
        if self.training and self.token_dropout > 0 and features.shape[1] > 1:
            keep = mask & (torch.rand(mask.shape, device=mask.device) >= self.token_dropout)
            mask = torch.where(keep.any(1, keepdim=True), keep, mask)  # never drop every token
        y = self.aligned(features)  # (B, T, d)
        # the masked mean of the aligned tokens: at initialisation exactly the frozen Procrustes alignment
        mean = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        x = self.norm(y)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        pooled, _ = self.pool(q, x, x, key_padding_mask=~mask, need_weights=False)  # (B, K, d)
        pooled = self.drop(pooled + mean[:, None, :])  # every pooled token starts from the aligned content
        ident = self.identity.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([ident, pooled], dim=1), mean

    def frozen_features(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The attached frozen encoder's ``(features (B, T, d_in), mask (B, T))`` for raw inputs."""
        if self.encoder is None:
            raise ConfigError(f"expert {self.name!r} has no frozen encoder attached; call attach(encoder)")
        with torch.no_grad():
            return self.encoder(inputs)

    def encode(self, inputs: Any) -> torch.Tensor:
        """Run the attached frozen encoder on raw inputs, then :meth:`forward`."""
        features, mask = self.frozen_features(inputs)
        return self(features, mask)

"""pentachora.hub — the Conduit hub: frozen experts of different widths aligned into one geometric space.

* :class:`ProcrustesAligner` — frozen bridge (centre → PCA down / direct / zero-pad up → shrunk
  whitening → orthogonal Procrustes), buffers in safetensors, held-out lift over a shuffled floor.
* :class:`ExpertModule` — aligner → projection → attention pooling → identity token; frozen encoders
  :class:`HFExpert` (a Hugging Face model by name) and :class:`CallableExpert`.
* :class:`FusionLayer` — transformer layer(s) over the concatenated expert tokens.
* :class:`GeometricHubLoss` — symmetric InfoNCE (learned temperature) + midpoint pentachoron
  variance + running Procrustes, per expert pair.
* :class:`ConduitHub` / :class:`ConduitHubConfig` — the model (``save_pretrained`` /
  ``from_pretrained``), trained by the one Trainer through :mod:`pentachora.recipes.hub`.
"""

from pentachora.hub.aligner import (
    AlignerConfig,
    AlignmentReport,
    ProcrustesAligner,
    alignment_report,
    retrieval_metrics,
)
from pentachora.hub.expert import CallableExpert, ExpertModule, FrozenExpert, HFExpert
from pentachora.hub.fusion import FusionLayer
from pentachora.hub.loss import GeometricHubLoss, HubLossOutput
from pentachora.hub.model import ConduitHub, ConduitHubConfig, HubOutput

__all__ = [
    "AlignerConfig",
    "AlignmentReport",
    "CallableExpert",
    "ConduitHub",
    "ConduitHubConfig",
    "ExpertModule",
    "FrozenExpert",
    "FusionLayer",
    "GeometricHubLoss",
    "HFExpert",
    "HubLossOutput",
    "HubOutput",
    "ProcrustesAligner",
    "alignment_report",
    "retrieval_metrics",
]

"""pentachora.autoencoders — patch autoencoders with honest latent accounting.

* :class:`PatchAutoencoder`, :class:`AutoencoderOutput` — the shared API.
* :class:`PatchSVAE`, :class:`PatchSVAEConfig`, :class:`SpectralLatent` — the canonical patch
  spectral autoencoder (the SVD peer) and its NoSVD ablation (``readout="linear"``).
"""

from pentachora.autoencoders.base import AutoencoderOutput, PatchAutoencoder
from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig, SpectralLatent

__all__ = [
    "AutoencoderOutput",
    "PatchAutoencoder",
    "PatchSVAE",
    "PatchSVAEConfig",
    "SpectralLatent",
]

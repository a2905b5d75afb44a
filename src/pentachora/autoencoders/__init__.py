"""pentachora.autoencoders — patch autoencoders with honest latent accounting.

* :class:`PatchAutoencoder`, :class:`AutoencoderOutput` — the shared API.
"""

from pentachora.autoencoders.base import AutoencoderOutput, PatchAutoencoder

__all__ = ["AutoencoderOutput", "PatchAutoencoder"]

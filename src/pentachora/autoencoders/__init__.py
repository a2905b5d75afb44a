"""pentachora.autoencoders — patch autoencoders with honest latent accounting.

* :class:`PatchAutoencoder`, :class:`AutoencoderOutput` — the shared API.
* :class:`PatchSVAE`, :class:`PatchSVAEConfig`, :class:`SpectralLatent` — the canonical patch
  spectral autoencoder (the SVD peer) and its NoSVD ablation (``readout="linear"``).
* :class:`GeoVAE`, :class:`GeoVAEConfig` — the SVD-free geometric VAE; :class:`DiagonalGaussian`
  is its posterior.
* :class:`AutoencoderKLAdapter`, :class:`AutoencoderTinyAdapter` — diffusers' ``AutoencoderKL`` and
  ``AutoencoderTiny`` (TAESD) behind the same API (baselines).
* :class:`LatentAutoencoder` — any of them with an image-like latent behind diffusers' VAE surface
  (``encode(x).latent_dist``, ``decode(z).sample``, ``config.scaling_factor``), the first stage of a
  latent-diffusion model.
* :class:`BatteryBank`, :class:`BatteryContainer` — K miniature SVD-trained batteries trained as
  one batched module, and the GeoVAE variant they are implanted into; :class:`LinearExport` (in
  :mod:`~pentachora.autoencoders.export`) folds a trained container for inference. The battery
  regimes (what each battery trains on) are data: :mod:`pentachora.data.regimes`.
* :func:`folded_config`, :func:`implant_batteries`, :func:`spectral_bottleneck_init` — the folded
  container (:mod:`~pentachora.autoencoders.folded`): batteries as the initialisation of a plain
  GeoVAE, trained and run at a GeoVAE's cost.

Importing this package registers every model type with :func:`pentachora.recipes.load_model`.
"""

from pentachora.autoencoders.base import AutoencoderOutput, PatchAutoencoder
from pentachora.autoencoders.battery import BatteryBank, BatteryConfig
from pentachora.autoencoders.container import BatteryContainer, BatteryContainerConfig
from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.autoencoders.export import LinearExport, count_flops
from pentachora.autoencoders.folded import folded_config, implant_batteries, spectral_bottleneck_init
from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
from pentachora.autoencoders.kl_baseline import AutoencoderKLAdapter, AutoencoderKLAdapterConfig
from pentachora.autoencoders.latent import LatentAutoencoder, LatentAutoencoderConfig
from pentachora.autoencoders.quantize import (
    QuantizedTensor,
    RateResult,
    dequantize,
    latent_roundtrip,
    quantize,
)
from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig, SpectralLatent
from pentachora.autoencoders.tiny_baseline import AutoencoderTinyAdapter, AutoencoderTinyAdapterConfig

__all__ = [
    "AutoencoderKLAdapter",
    "AutoencoderKLAdapterConfig",
    "AutoencoderOutput",
    "AutoencoderTinyAdapter",
    "AutoencoderTinyAdapterConfig",
    "BatteryBank",
    "BatteryConfig",
    "BatteryContainer",
    "BatteryContainerConfig",
    "DiagonalGaussian",
    "GeoVAE",
    "GeoVAEConfig",
    "LatentAutoencoder",
    "LatentAutoencoderConfig",
    "LinearExport",
    "PatchAutoencoder",
    "PatchSVAE",
    "PatchSVAEConfig",
    "QuantizedTensor",
    "RateResult",
    "SpectralLatent",
    "count_flops",
    "dequantize",
    "folded_config",
    "implant_batteries",
    "latent_roundtrip",
    "quantize",
    "spectral_bottleneck_init",
]

"""pentachora: geometric autoencoding and geometric memory in PyTorch.

Subpackages (import what you need; only :mod:`pentachora.geometry` is pure math on torch):

* :mod:`pentachora.geometry` — Cayley–Menger volumes, pentachoron CV, effective rank, fp64 spectral
  decomposition, Procrustes alignment, whitening.
* :mod:`pentachora.nn` — shared layers (patchify, residual MLPs, spectral cross-attention, smoothing).
* :mod:`pentachora.autoencoders` — PatchSVAE (SVD peer), its NoSVD ablation, GeoVAE.
* :mod:`pentachora.data` — noise generators, image crops, text corpora.
* :mod:`pentachora.training` — the one trainer every model uses.
"""

__version__ = "0.1.0"

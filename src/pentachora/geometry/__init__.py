"""The geometric core: pure math on torch, importing nothing else of pentachora.

Public names (stable; other code and checks rely on them):

* volumes — :func:`cayley_menger_vol2`, :func:`gram_vol2`, :func:`pentachoron_volumes`
* CV — :func:`cv_metric`, :func:`cv_loss`, :func:`cv_loss_term` (a model's training term; NaN
  policy in :mod:`pentachora.geometry.cv`), :func:`target_cv`, :func:`cv_proximity`,
  :func:`soft_hand_weights`, :func:`volume_scale`
* spectra — :func:`effective_rank`, :func:`rankme`, :func:`gram_eigh_svd`
* alignment — :func:`orthogonal_procrustes` (→ :class:`ProcrustesMap`), :func:`generalized_cca`
  (→ :class:`GeneralizedCCA`, one shared space for several whitened views)
* whitening — :func:`inv_sqrt_psd`, :func:`newton_schulz_inv_sqrt`
"""

from pentachora.geometry.cca import GeneralizedCCA, generalized_cca
from pentachora.geometry.cv import (
    cv_from_volumes,
    cv_loss,
    cv_loss_term,
    cv_metric,
    cv_proximity,
    soft_hand_weights,
    target_cv,
    target_cv_stats,
    volume_scale,
)
from pentachora.geometry.procrustes import ProcrustesMap, orthogonal_procrustes, procrustes_alignment_loss
from pentachora.geometry.simplex import cayley_menger_vol2, gram_vol2, pentachoron_volumes, random_subsets
from pentachora.geometry.spectral import effective_rank, gram_eigh_svd, rankme
from pentachora.geometry.whiten import inv_sqrt_psd, newton_schulz_inv_sqrt

__all__ = [
    "GeneralizedCCA",
    "ProcrustesMap",
    "cayley_menger_vol2",
    "cv_from_volumes",
    "cv_loss",
    "cv_loss_term",
    "cv_metric",
    "cv_proximity",
    "effective_rank",
    "generalized_cca",
    "gram_eigh_svd",
    "gram_vol2",
    "inv_sqrt_psd",
    "newton_schulz_inv_sqrt",
    "orthogonal_procrustes",
    "pentachoron_volumes",
    "procrustes_alignment_loss",
    "random_subsets",
    "rankme",
    "soft_hand_weights",
    "target_cv",
    "target_cv_stats",
    "volume_scale",
]

"""pentachora.data: seeded batch sources (16 noise types, real-image crops) and evaluation data.

Every training source implements :class:`BatchSource` — ``batch(step)`` is a pure function of the
source's seed and the step (see :func:`step_generator`), so resumed runs see the same batches.
:class:`BatchSource` and :func:`step_seed` are defined once, in :mod:`pentachora.data.seeding`; the
trainer imports them from there. Battery regimes (:func:`parse_regimes`, :class:`RegimeSource`) live
in :mod:`pentachora.data.regimes`.
Pixel convention: images load as [0, 1]; models see ``2x − 1``; PSNR is in [0, 1] pixel space.
"""

from pentachora.data.images import (
    GRAYSCALE_PHOTOS,
    HELDOUT_PHOTOS,
    SAMPLE_PHOTOS,
    VALIDATION_PHOTOS,
    ImageCropSource,
    heldout_tiles,
    load_hf_images,
    load_image_file,
    load_image_folder,
    load_sample_photos,
    psnr,
    split_heldout,
    ssim,
    to_model_space,
    to_pixel_space,
)
from pentachora.data.noise import (
    CLAMP_BOUND,
    CURRICULUM_TIERS,
    NOISE_TYPES,
    RAW_CAUCHY_MAX,
    NoiseSource,
    generate_noise,
    noise_eval_sets,
    tier_types,
)
from pentachora.data.regimes import REGIME_FORMS, Regime, RegimeSource, parse_regimes, unit_rms
from pentachora.data.seeding import EVAL_SALT, SEED_STRIDE, TRAIN_SALT, BatchSource, step_generator, step_seed
from pentachora.data.spec import DataSpec, parse_data_spec

__all__ = [
    "CLAMP_BOUND",
    "CURRICULUM_TIERS",
    "EVAL_SALT",
    "GRAYSCALE_PHOTOS",
    "HELDOUT_PHOTOS",
    "NOISE_TYPES",
    "RAW_CAUCHY_MAX",
    "REGIME_FORMS",
    "SAMPLE_PHOTOS",
    "SEED_STRIDE",
    "TRAIN_SALT",
    "VALIDATION_PHOTOS",
    "BatchSource",
    "DataSpec",
    "ImageCropSource",
    "NoiseSource",
    "Regime",
    "RegimeSource",
    "generate_noise",
    "heldout_tiles",
    "load_hf_images",
    "load_image_file",
    "load_image_folder",
    "load_sample_photos",
    "noise_eval_sets",
    "parse_data_spec",
    "parse_regimes",
    "psnr",
    "split_heldout",
    "ssim",
    "step_generator",
    "step_seed",
    "tier_types",
    "to_model_space",
    "to_pixel_space",
    "unit_rms",
]

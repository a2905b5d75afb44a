"""Contract tests for pentachora.data.noise and the batch-source contract / spec parser."""

from __future__ import annotations

import math

import pytest
import torch

from pentachora.data import (
    CLAMP_BOUND,
    CURRICULUM_TIERS,
    NOISE_TYPES,
    RAW_CAUCHY_MAX,
    BatchSource,
    NoiseSource,
    generate_noise,
    noise_eval_sets,
    parse_data_spec,
    step_generator,
    step_seed,
    tier_types,
)

SYMMETRIC = [t for t in NOISE_TYPES if t not in ("poisson", "exponential")]


def _gen(kind: str, n: int = 64, size: int = 32, seed: int = 0, step: int = 0, mode: str = "clamp"):
    return generate_noise(kind, n, size, generator=step_generator(seed, step), heavy_tails=mode)


@pytest.fixture(scope="module")
def big() -> dict[tuple[str, str], torch.Tensor]:
    """One (128, 3, 32, 32) batch per type and mode (~390k values each), generated once."""
    return {(k, m): _gen(k, n=128, mode=m) for k in NOISE_TYPES for m in ("clamp", "raw")}


# ---- the type list and the curriculum ---------------------------------------------------------


def test_sixteen_types_in_reference_order():
    assert len(NOISE_TYPES) == 16
    assert NOISE_TYPES[0] == "gaussian" and NOISE_TYPES[13] == "cauchy" and NOISE_TYPES[15] == "laplace"


def test_tiers_cover_every_type_exactly_once():
    flat = [t for k in sorted(CURRICULUM_TIERS) for t in CURRICULUM_TIERS[k]]
    assert sorted(CURRICULUM_TIERS) == [0, 1, 2, 3, 4]
    assert len(flat) == 16 and set(flat) == set(NOISE_TYPES)
    assert CURRICULUM_TIERS[0] == ("gaussian",)
    assert set(CURRICULUM_TIERS[4]) == {"cauchy", "salt_pepper", "structural"}


def test_tier_types_is_cumulative():
    assert tier_types(0) == ("gaussian",)
    assert set(tier_types(1)) == {"gaussian", "pink", "brown", "block", "gradient"}
    assert tier_types(4) == NOISE_TYPES
    with pytest.raises(ValueError):
        tier_types(5)


# ---- shapes, dtypes, determinism --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["clamp", "raw"])
@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_shape_dtype_finite(kind: str, mode: str):
    x = generate_noise(kind, 5, 16, channels=3, generator=step_generator(1, 2), heavy_tails=mode)
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # odd sizes and other channel counts work too
    y = generate_noise(kind, 2, 17, channels=1, generator=step_generator(1, 2), heavy_tails=mode)
    assert y.shape == (2, 1, 17, 17) and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_generate_is_deterministic_and_varies(kind: str):
    a = _gen(kind, n=4, size=16, seed=3, step=7)
    b = _gen(kind, n=4, size=16, seed=3, step=7)
    c = _gen(kind, n=4, size=16, seed=3, step=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # samples in a batch differ


def test_step_seed_formula():
    assert step_seed(0, 5) == 5
    assert step_seed(2, 3) == 2 * 1_000_003 + 3
    assert 0 <= step_seed(0, -1) < 2**64
    with pytest.raises(ValueError, match="salt"):
        step_seed(0, 5, 1)  # the data stream has no rank


def test_one_step_seed_and_batch_source_for_data_and_trainer():
    import pentachora.training as training
    import pentachora.training.loop as loop
    from pentachora.data import EVAL_SALT, TRAIN_SALT

    # one definition, re-exported (not copied) by the trainer
    assert training.step_seed is step_seed and loop.step_seed is step_seed
    assert training.BatchSource is BatchSource and loop.BatchSource is BatchSource
    # the model stream reproduces the trainer's previous formula bit for bit (values recorded from
    # the former pentachora.training.loop.step_seed), so resumed runs and the demo are unchanged
    assert step_seed(0, 1, salt=TRAIN_SALT) == 1927683675655158493
    assert step_seed(7, 123, 1, salt=TRAIN_SALT) == 2880631180702593514
    assert step_seed(2**40, 5, 3, salt=TRAIN_SALT) == 8051836980205790805
    assert step_seed(3, 4, 0, salt=EVAL_SALT) == 2205212670846485853
    assert step_seed(0, 1, salt=TRAIN_SALT) != step_seed(0, 1)  # the two streams differ


def test_noise_source_pure_function_of_seed_and_step():
    src = NoiseSource(batch_size=16, image_size=16, seed=11)
    assert isinstance(src, BatchSource)
    first = src.batch(3)
    src.batch(0), src.batch(99)  # other calls leave no state behind
    assert torch.equal(src.batch(3), first)
    fresh = NoiseSource(batch_size=16, image_size=16, seed=11)  # a "resumed" run
    assert torch.equal(fresh.batch(3), first)
    assert not torch.equal(src.batch(4), first)
    assert not torch.equal(NoiseSource(batch_size=16, image_size=16, seed=12).batch(3), first)


def test_noise_source_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    NoiseSource(batch_size=8, image_size=16).batch(0)
    generate_noise("gaussian", 2, 8)
    assert torch.equal(torch.get_rng_state(), state)


def test_noise_source_mixes_types():
    src = NoiseSource(batch_size=128, image_size=16, seed=0)
    x, kinds = src.batch_with_types(0)
    assert x.shape == (128, 3, 16, 16)
    assert len(set(kinds.tolist())) >= 12  # 128 uniform draws over 16 types
    sub = NoiseSource(types=("cauchy", "block"), batch_size=64, image_size=16, heavy_tails="raw")
    _, k2 = sub.batch_with_types(5)
    assert set(k2.tolist()) == {NOISE_TYPES.index("cauchy"), NOISE_TYPES.index("block")}


def test_noise_source_samples_match_their_type():
    x, kinds = NoiseSource(types=("salt_pepper", "sparse"), batch_size=32, image_size=16).batch_with_types(1)
    for img, k in zip(x, kinds.tolist(), strict=True):
        if NOISE_TYPES[k] == "salt_pepper":
            assert (img.abs() > 1.5).all()
        else:
            assert (img == 0).float().mean() > 0.7


def test_eval_sets_fixed_and_independent_of_selection():
    a = noise_eval_sets(NOISE_TYPES, n_per_type=4, image_size=16, seed=0)
    assert list(a) == list(NOISE_TYPES)
    assert all(v.shape == (4, 3, 16, 16) for v in a.values())
    b = noise_eval_sets(("laplace", "gaussian"), n_per_type=4, image_size=16, seed=0)
    assert list(b) == ["laplace", "gaussian"]
    assert torch.equal(a["laplace"], b["laplace"]) and torch.equal(a["gaussian"], b["gaussian"])
    assert not torch.equal(a["gaussian"], _gen("gaussian", n=4, size=16, seed=0, step=0))
    raw = noise_eval_sets(("cauchy",), n_per_type=4, image_size=32, heavy_tails="raw")
    assert raw["cauchy"].abs().max() > CLAMP_BOUND


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown noise type"):
        generate_noise("perlin", 2)
    with pytest.raises(ValueError, match="heavy_tails"):
        generate_noise("gaussian", 2, heavy_tails="soft")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NoiseSource(types=())
    with pytest.raises(ValueError, match="unknown noise type"):
        NoiseSource(types=("gaussian", "nope"))


# ---- statistics -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SYMMETRIC)
def test_sign_balance_of_symmetric_types(big, kind: str):
    x = big[(kind, "clamp")]
    pos, neg = (x > 0).float().mean().item(), (x < 0).float().mean().item()
    assert pos > 0.01 and neg > 0.01
    assert abs(pos - neg) / (pos + neg) < 0.05, (pos, neg)
    assert abs(x.mean().item()) < 0.05 * x.std().item() + 0.01


@pytest.mark.parametrize("kind", ["poisson", "exponential"])
def test_skewed_types_are_centred_with_right_skew(big, kind: str):
    x = big[(kind, "raw")]
    assert abs(x.mean().item()) < 0.02
    assert x.min().item() >= -1.0 - 1e-6  # k/λ − 1 ≥ −1 and −log(u) − 1 ≥ −1
    assert (x > 0).float().mean() < 0.5  # median below the mean
    assert x.max().item() > 4


def test_unit_scale_contracts(big):
    g = big[("gaussian", "raw")]
    assert abs(g.std().item() - 1) < 0.01
    for kind in ("pink", "brown"):
        x = big[(kind, "raw")]
        per_image_std = x.std(dim=(1, 2, 3))
        per_image_mean = x.mean(dim=(2, 3))
        assert torch.allclose(per_image_std, torch.ones_like(per_image_std), atol=1e-3)
        assert per_image_mean.abs().max() < 1e-4  # DC removed per channel
    e = big[("exponential", "raw")]
    assert abs(e.std().item() - 1) < 0.02
    lap = big[("laplace", "raw")]
    assert abs(lap.std().item() - math.sqrt(2)) < 0.03
    u = big[("uniform", "raw")]
    assert u.min() >= -1 and u.max() <= 1 and abs(u.std().item() - 1 / math.sqrt(3)) < 0.01


def test_pink_and_brown_are_spatially_correlated(big):
    def lag1_corr(x: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1].item()

    white = lag1_corr(big[("gaussian", "raw")])
    pink = lag1_corr(big[("pink", "raw")])
    brown = lag1_corr(big[("brown", "raw")])
    assert abs(white) < 0.02 and 0.3 < pink < brown


def test_structured_types_have_structure(big):
    blk = big[("block", "raw")]
    assert (blk[..., 1:] == blk[..., :-1]).float().mean() > 0.5  # piecewise constant
    sp = big[("sparse", "raw")]
    assert 0.87 < (sp == 0).float().mean() < 0.93
    salt = big[("salt_pepper", "raw")]
    assert ((salt.abs() - 2).abs() < 0.6).all()
    board = big[("checkerboard", "raw")]
    assert 0.3 < (board[:, :, :2, :2].mean(dim=(1, 2, 3)) > 0).float().mean() < 0.7  # random sign per image
    grad = big[("gradient", "raw")]
    ramp = grad.mean(dim=1)  # the ramp is shared by the channels, the jitter is not
    assert (grad - ramp.unsqueeze(1)).std() < 0.5 < ramp.std()


def test_clamp_mode_respects_bounds(big):
    for kind in NOISE_TYPES:
        assert big[(kind, "clamp")].abs().max() <= CLAMP_BOUND, kind
    assert big[("cauchy", "clamp")].abs().max() <= 3.0  # the reference's inner Cauchy clamp


def test_raw_mode_has_heavy_tails(big):
    c = big[("cauchy", "raw")]
    assert c.abs().max() > 30  # P(|x| > 30) ≈ 2% per value
    assert c.abs().max() <= RAW_CAUCHY_MAX * (1 + 1e-5)
    assert abs(RAW_CAUCHY_MAX - 63.66) < 0.01
    assert 0.49 < (c.abs() < 1).float().mean() < 0.51  # still a unit-scale Cauchy: P(|x| < 1) = ½
    assert big[("exponential", "raw")].max() > 10
    assert big[("laplace", "raw")].abs().max() > 8


# ---- spec parsing (noise) ---------------------------------------------------------------------


def test_parse_noise_specs():
    s = parse_data_spec("noise")
    assert s.kind == "noise" and s.noise_types == NOISE_TYPES and s.heavy_tails == "clamp"
    assert parse_data_spec("noise:raw").heavy_tails == "raw"
    t2 = parse_data_spec("noise:tier2")
    assert t2.noise_types == tier_types(2) and t2.heavy_tails == "clamp"
    lst = parse_data_spec("noise:gaussian,pink")
    assert lst.noise_types == ("gaussian", "pink")
    both = parse_data_spec("noise:tier4:raw")
    assert both.noise_types == NOISE_TYPES and both.heavy_tails == "raw"
    assert parse_data_spec("noise:raw:cauchy").noise_types == ("cauchy",)


def test_noise_spec_builds_source_and_eval():
    spec = parse_data_spec("noise:cauchy,gaussian:raw")
    src = spec.train_source(batch_size=4, image_size=16, seed=1)
    assert isinstance(src, NoiseSource) and src.heavy_tails == "raw"
    assert src.batch(0).shape == (4, 3, 16, 16)
    assert spec.eval_images() is None
    ev = spec.eval_noise(n_per_type=2, image_size=16)
    assert ev is not None and list(ev) == ["cauchy", "gaussian"]


@pytest.mark.parametrize(
    "bad",
    ["", "nois", "noise:", "noise:tier9", "noise:perlin", "noise:raw:clamp", "noise:tier1:gaussian", "video"],
)
def test_parse_rejects_bad_specs_listing_valid_forms(bad: str):
    with pytest.raises(ValueError, match="Valid forms") as err:
        parse_data_spec(bad)
    assert "folder:PATH" in str(err.value) and "hf:NAME" in str(err.value)

"""Contract tests for GeoVAE (the SVD-free geometric VAE), its posterior and the AutoencoderKL adapter."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pentachora.autoencoders.base import AutoencoderOutput
from pentachora.autoencoders.distributions import DiagonalGaussian
from pentachora.autoencoders.geovae import GEOVAE_PRESETS, SECTORS, GeoVAE, GeoVAEConfig, GeoVAEOutput
from pentachora.geometry import target_cv
from pentachora.recipes import load_model

# A small config of the tiny family so the whole file runs in seconds on 2 cores.
SMALL = dict(
    V=16,
    D=8,
    enc_hidden=64,
    dec_hidden=64,
    enc_depth=1,
    dec_depth=1,
    bottleneck_hidden=32,
    inverse_hidden=32,
    cv_patches=4,
    cv_points=16,
    cv_samples=8,
)

FORBIDDEN_OPS = (
    "linalg_eigh",
    "_linalg_eigh",
    "linalg_eig",
    "_linalg_eig",
    "linalg_eigvals",
    "linalg_eigvalsh",
    "linalg_svd",
    "_linalg_svd",
    "linalg_svdvals",
    "svd",
    "symeig",
    "eig",
    "lobpcg",
    "_linalg_eigvals",
)


def make(preset: str = "tiny-48", seed: int = 0, **overrides) -> GeoVAE:
    torch.manual_seed(seed)
    return GeoVAE(GeoVAEConfig.preset(preset, **{**SMALL, **overrides}))


def images(b: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def raw_cauchy(b: int = 2, size: int = 32, seed: int = 2) -> torch.Tensor:
    u = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.99 + 0.005
    x = torch.tan(math.pi * (u - 0.5))
    x[0, 0, 0, 0] = math.tan(0.495 * math.pi)  # ≈ 63.7
    return x


# ----------------------------------------------------------------------------- shapes, accounting
@pytest.mark.parametrize("preset", ["tiny-48", "tiny-12"])
def test_shapes_tiny_presets(preset):
    model = GeoVAE(GeoVAEConfig.preset(preset, cv_samples=8))
    x = images(2, 32)
    out = model(x)
    assert isinstance(out, GeoVAEOutput) and isinstance(out, AutoencoderOutput)
    assert out.recon.shape == x.shape
    assert out.loss.shape == () and torch.isfinite(out.loss)
    q = model.encode(x)
    d, g = model.config.latent_dim, 32 // model.patch_size
    assert q.mean.shape == (2, d, g, g) and q.fixed.shape == (2, 1, g, g)
    assert q.sample().shape == q.mode().shape == (2, d + 1, g, g)
    assert model.decode(q.mode()).shape == x.shape
    assert model.decode(q).shape == x.shape


@pytest.mark.parametrize(
    ("preset", "floats", "ratio"),
    [("48:1", 16, 48.0), ("12:1", 64, 12.0), ("tiny-48", 16, 48.0), ("tiny-12", 16, 12.0)],
)
def test_latent_floats_and_ratio(preset, floats, ratio):
    cfg = GeoVAEConfig.preset(preset)
    assert cfg.latent_floats_per_patch == floats
    assert 3 * cfg.patch_size**2 / floats == pytest.approx(ratio)
    # per 16×16×3 patch: 16 floats at 48:1, 64 at 12:1 whatever the patch size
    assert floats * (16 / cfg.patch_size) ** 2 == pytest.approx(768 / ratio)
    if preset.startswith("tiny"):
        model = GeoVAE(cfg)
        assert model.latent_floats_per_patch == floats
        assert model.compression_ratio == pytest.approx(ratio)


def test_presets_are_known():
    assert set(GEOVAE_PRESETS) == {"48:1", "12:1", "tiny-48", "tiny-12"}
    with pytest.raises(ValueError, match="unknown GeoVAE preset"):
        GeoVAEConfig.preset("nope")
    with pytest.raises(TypeError, match="unknown GeoVAEConfig field"):
        GeoVAEConfig.preset("tiny-48", not_a_field=1)


def test_cv_targets_come_from_dimensions():
    model = make()
    c = model.config
    t = model.cv_targets
    assert t["enc"] == t["inv"] == pytest.approx(target_cv(c.D))
    assert t["lat"] == pytest.approx(target_cv(c.latent_dim))
    assert t["dec"] == pytest.approx(target_cv(c.dec_hidden))


# ----------------------------------------------------------------------------- checkpoints, determinism
def test_save_load_equality(tmp_path):
    model = make()
    model.eval()
    x = images()
    before = model.reconstruct(x)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert isinstance(loaded, GeoVAE) and loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(loaded.reconstruct(x), before)
    assert torch.equal(GeoVAE.from_pretrained(tmp_path / "ckpt").reconstruct(x), before)


def test_determinism_seeded():
    x = images()
    outs = []
    for _ in range(2):
        model = make(seed=3)
        torch.manual_seed(11)
        out = model(x)
        out.loss.backward()
        outs.append((out.loss.detach(), out.recon.detach(), model.encoder.in_proj.weight.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][2], outs[1][2])


def test_eval_forward_uses_mode():
    model = make().eval()
    x = images()
    a, b = model(x).recon, model(x).recon
    assert torch.equal(a, b)
    assert torch.allclose(a, model.reconstruct(x))


# ----------------------------------------------------------------------------- posterior
def test_kl_nonnegative_and_zero_at_prior():
    g = torch.Generator().manual_seed(0)
    q = DiagonalGaussian(torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g))
    assert (q.kl() >= 0).all() and (q.kl() > 0).all()
    prior = DiagonalGaussian(torch.zeros(3, 5, 2, 2), torch.zeros(3, 5, 2, 2), fixed=torch.randn(3, 1, 2, 2))
    assert torch.equal(prior.kl(), torch.zeros(3))
    assert torch.equal(prior.kl_per_channel(), torch.zeros(5))
    assert torch.allclose(q.kl(q), torch.zeros(3), atol=1e-6)
    # KL to a non-standard Gaussian, against torch.distributions
    p = DiagonalGaussian(torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, q.std), torch.distributions.Normal(p.mean, p.std)
    )
    assert torch.allclose(q.kl(p), ref.flatten(1).sum(1), atol=1e-5)


def test_posterior_sample_and_mode():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    fixed = torch.randn(2, 1, 3, 3, generator=g)
    q = DiagonalGaussian(mean, logvar, fixed=fixed)
    a = q.sample(generator=torch.Generator().manual_seed(5))
    b = q.sample(generator=torch.Generator().manual_seed(5))
    c = q.sample(generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 4:], fixed) and torch.equal(q.mode(), torch.cat([mean, fixed], 1))
    assert q.latent_channels == 5
    assert torch.isfinite(q.nll(a)).all()
    # diffusers layout and clamping
    q2 = DiagonalGaussian.from_parameters(torch.cat([mean, torch.full_like(logvar, 100.0)], 1))
    assert float(q2.logvar.max()) == 20.0
    with pytest.raises(ValueError, match="differ in shape"):
        DiagonalGaussian(mean, logvar[:, :3])


def test_model_sample_prior_seeded():
    model = make()
    a = model.sample_prior(2, 32, 32, generator=torch.Generator().manual_seed(0))
    b = model.sample_prior(2, 32, 32, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="multiples"):
        model.sample_prior(1, 30, 32)


def test_free_bits_floor():
    model = make(free_bits=5.0)
    out = model(images())
    d, p = model.config.latent_dim, model.pixel_floats_per_patch
    assert float(out.kl_loss.detach()) >= d * 5.0 / p - 1e-6


# ----------------------------------------------------------------------------- gradients per sector
SECTOR_PARAMS = {
    "enc": ["encoder."],
    "lat": ["bottleneck."],
    "inv": ["inverse."],
    "dec": ["inverse.", "decoder.in_proj"],
}


@pytest.mark.parametrize("sector", SECTORS)
def test_each_cv_term_reaches_its_sector(sector):
    weights = dict(recon_weight=0.0, kl_weight=0.0, cv_weight=1.0)
    weights.update({f"cv_{s}_weight": float(s == sector) for s in SECTORS})
    model = make(seed=1)
    model.set_loss_weights(**weights)
    torch.manual_seed(0)
    out = model(images(4, 32))
    assert getattr(out, f"cv_{sector}_loss") is not None
    assert float(out.loss.detach()) > 0
    out.loss.backward()
    for prefix in SECTOR_PARAMS[sector]:
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        total = sum(float(g.norm()) for g in grads)
        assert math.isfinite(total) and total > 0, (sector, prefix)
    # nothing downstream of the sector gets a gradient from its CV term
    if sector in ("enc", "lat", "inv"):
        assert all(
            p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.decoder.out_proj.parameters()
        )


def test_loss_weights_api():
    model = make()
    model.set_loss_weights(cv_enc_weight=20.0, kl_weight=0.0)
    assert model.loss_weights["cv_enc_weight"] == 20.0
    with pytest.raises(ValueError, match="no loss weight"):
        model.set_loss_weights(cv_band_weight=1.0)
    out = model(images())
    assert out.kl_weight == 0.0 and out.cv == out.cv_enc


# ----------------------------------------------------------------------------- no SVD / eigh
class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__)  # e.g. "addmm.default"
        self.names.add(func.overloadpacket.__name__)  # e.g. "addmm"
        return func(*args, **(kwargs or {}))


def _forbidden(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in FORBIDDEN_OPS}


def test_no_svd_or_eigh_in_train_step_and_inference():
    model = make()
    x = images(2, 32)
    with _OpRecorder() as rec:
        out = model(x)
        out.loss.backward()
        model.reconstruct(x)
        model.sample_prior(1, 32, 32)
    assert "addmm" in rec.names
    assert "linalg_det" in rec.names or "_linalg_det" in rec.names
    assert not _forbidden(rec.names), _forbidden(rec.names)


def test_op_recorder_sees_eigh_in_patchsvae():
    """Positive control: the recorder does catch the SVD peer's Gram eigendecomposition."""
    import pentachora.autoencoders.svae as svae  # our own module: missing means broken, never a skip

    torch.manual_seed(0)
    model = svae.PatchSVAE(svae.PatchSVAEConfig.preset("tiny"))
    with _OpRecorder() as rec:
        model(images(1, 16)).loss.backward()
    assert _forbidden(rec.names)


# ----------------------------------------------------------------------------- stability, bad input
def test_raw_cauchy_finite_loss_and_grads():
    model = make()
    x = raw_cauchy()
    assert float(x.abs().max()) > 60
    out = model(x)
    assert torch.isfinite(out.loss) and torch.isfinite(out.recon).all()
    out.loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    # the magnitude channel carries the scale: the encoder's input is unit-RMS
    assert float(out.log_rms_mean) > 1.0


def test_bad_input_errors():
    model = make()
    with pytest.raises(ValueError, match="channel"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.zeros(1, 3, 40, 32))
    bad = torch.zeros(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(bad)
    with pytest.raises(ValueError, match="expected a latent"):
        model.decode(torch.zeros(1, 5, 2, 2))


def test_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        GeoVAEConfig(latent_dim=15, n_heads=4)
    with pytest.raises(ValueError, match="cv_points"):
        GeoVAEConfig(cv_points=3)


# ----------------------------------------------------------------------------- AutoencoderKL adapter
def test_autoencoder_kl_adapter_forward(tmp_path):
    pytest.importorskip("diffusers")
    from pentachora.autoencoders.kl_baseline import AutoencoderKLAdapter, AutoencoderKLAdapterConfig

    torch.manual_seed(0)
    cfg = AutoencoderKLAdapterConfig(block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4)
    model = AutoencoderKLAdapter(cfg)
    assert model.latent_floats_per_patch == 4 and model.patch_size == 8
    assert model.compression_ratio == pytest.approx(48.0)
    x = images(2, 32)
    out = model(x)
    assert out.recon.shape == x.shape and torch.isfinite(out.loss) and float(out.kl) >= 0
    out.loss.backward()
    q = model.encode(x)
    assert q.mode().shape == (2, 4, 4, 4)
    model.save_pretrained(tmp_path / "kl")
    loaded = load_model(tmp_path / "kl")
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.zeros(1, 3, 36, 32))
    c16 = AutoencoderKLAdapterConfig(block_out_channels=(8, 8, 8, 8), latent_channels=16, norm_num_groups=4)
    assert AutoencoderKLAdapter(c16).compression_ratio == pytest.approx(12.0)


# ---------------------------------------------------------------------------------------- bounded heads
def test_presets_turn_bounded_heads_on_but_plain_configs_keep_the_old_heads():
    assert all(GeoVAEConfig.preset(name).bounded_heads for name in GEOVAE_PRESETS)
    assert GeoVAEConfig().bounded_heads is False  # a config.json saved before the field existed
    old = GeoVAEConfig(patch_size=8, **SMALL)
    torch.manual_seed(0)
    model = GeoVAE(old)
    raw = model.bottleneck(torch.randn(3, old.V * old.D) * 50)
    mean, logvar = model._bound_heads(*raw.chunk(2, dim=-1))
    assert torch.equal(mean, raw[:, : old.latent_dim]) and torch.equal(logvar, raw[:, old.latent_dim :])


def test_bounded_heads_stay_in_their_box_and_are_identity_near_the_start():
    cfg = GeoVAEConfig(
        patch_size=8, bounded_heads=True, mean_bound=3.0, logvar_min=-10.0, logvar_max=2.0, **SMALL
    )
    torch.manual_seed(0)
    model = GeoVAE(cfg)
    big = torch.randn(64, 2 * cfg.latent_dim, dtype=torch.float64) * 1e4
    mean, logvar = model._bound_heads(*big.chunk(2, dim=-1))
    assert mean.abs().max() <= 3.0 and logvar.min() >= -10.0 and logvar.max() <= 2.0
    small = torch.tensor([[1e-3] * cfg.latent_dim + [-4.0 + 1e-3] * cfg.latent_dim], dtype=torch.float64)
    m2, lv2 = model._bound_heads(*small.chunk(2, dim=-1))
    torch.testing.assert_close(m2, small[:, : cfg.latent_dim], rtol=1e-5, atol=0)
    torch.testing.assert_close(lv2, small[:, cfg.latent_dim :], rtol=1e-5, atol=0)
    # gradient of the squash is exact
    raw = torch.randn(4, 2 * cfg.latent_dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: torch.cat(model._bound_heads(*r.chunk(2, dim=-1)), -1), (raw,))


def test_bounded_heads_keep_the_posterior_bounded_under_exploded_weights():
    cfg = GeoVAEConfig(patch_size=8, bounded_heads=True, **SMALL)
    torch.manual_seed(0)
    model = GeoVAE(cfg)
    with torch.no_grad():
        for p in model.bottleneck.parameters():
            p.mul_(1e3)  # what a few lr-1e-2 Adam steps do to an unbounded head
    out = model.train()(torch.randn(2, 3, 16, 16).clamp(-1, 1))
    q = out.latent
    assert q.mean.abs().max() <= cfg.mean_bound and q.logvar.max() <= cfg.logvar_max
    assert torch.isfinite(out.loss) and out.kl / cfg.latent_dim < 0.5 * (
        cfg.mean_bound**2 + math.exp(cfg.logvar_max)
    )


def test_bounded_heads_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="bounded heads"):
        GeoVAEConfig(bounded_heads=True, logvar_min=1.0, logvar_max=0.0)
    cfg = GeoVAEConfig(patch_size=8, bounded_heads=True, mean_bound=2.5, **SMALL)
    torch.manual_seed(0)
    model = GeoVAE(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config.bounded_heads and loaded.config.mean_bound == 2.5
    x = torch.randn(1, 3, 16, 16).clamp(-1, 1)
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))

"""Contract tests for PatchSVAE (canonical SVD readout) and its NoSVD ablation, on the tiny preset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pentachora.autoencoders import AutoencoderOutput, PatchSVAE, PatchSVAEConfig, SpectralLatent
from pentachora.geometry import target_cv
from pentachora.io import CheckpointError
from pentachora.recipes import load_model

NOSVD_ROUNDS = {
    "round1": dict(readout="linear"),
    "round2": dict(readout="linear", omega_layernorm=True),
    "round3": dict(readout="linear", omega_layernorm=True, mhat_sphere_norm=True),
}


def make_model(seed: int = 0, **overrides) -> PatchSVAE:
    torch.manual_seed(seed)
    return PatchSVAE(PatchSVAEConfig.preset("tiny", **overrides))


def images(b: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def raw_cauchy(b: int = 4, size: int = 32, seed: int = 2) -> torch.Tensor:
    """Raw (unclamped) Cauchy noise, |x| up to tan(0.495π) ≈ 63.7 (tan(0.49π) is only ≈ 31.8)."""
    u = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.99 + 0.005
    x = torch.tan(math.pi * (u - 0.5))
    x[0, 0, 0, 0] = math.tan(0.495 * math.pi)
    return x


def grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.norm()) ** 2 for p in module.parameters() if p.grad is not None) ** 0.5


# ----------------------------------------------------------------------------- shapes, accounting
def test_output_and_latent_shapes():
    model = make_model()
    out = model(images())
    assert isinstance(out, AutoencoderOutput)
    assert out.recon.shape == (2, 3, 32, 32)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    lat = out.latent
    assert isinstance(lat, SpectralLatent) and lat.grid == (4, 4)
    assert lat.U.shape == (2, 16, 32, 8) and lat.S.shape == (2, 16, 8) and lat.Vh.shape == (2, 16, 8, 8)
    assert lat.M.shape == (2, 16, 32, 8) and lat.omega is None
    # rows of M are on the unit sphere; singular values descending and non-negative
    assert torch.allclose(lat.M.norm(dim=-1), torch.ones(2, 16, 32), atol=1e-5)
    assert torch.all(lat.raw[..., :-1] >= lat.raw[..., 1:]) and torch.all(lat.raw >= 0)
    scalars = out.scalars()
    for key in ("loss", "recon_loss", "cv_loss", "cv", "erank", "s_delta", "alpha_mean", "latent_rms"):
        assert key in scalars and math.isfinite(scalars[key]), key
    assert 1.0 <= scalars["erank"] <= 8.0
    assert model.decode(lat).shape == (2, 3, 32, 32)


def test_non_square_images():
    out = make_model()(images(size=32)[:, :, :, :24])
    assert out.recon.shape == (2, 3, 32, 24) and out.latent.grid == (4, 3)


def test_latent_floats_per_patch_is_honest():
    model = make_model()
    c = model.config
    assert model.latent_floats_per_patch == c.V * c.D + c.D + c.D**2 == 328
    assert model.pixel_floats_per_patch == 3 * 8 * 8
    assert model.compression_ratio == pytest.approx(192 / 328)
    with torch.device("meta"):
        fresnel = PatchSVAE(PatchSVAEConfig.preset("fresnel"))
    assert fresnel.latent_floats_per_patch == 4368 and fresnel.pixel_floats_per_patch == 768


@pytest.mark.parametrize(("name", "expected"), [("fresnel", 16_942_419), ("freckles", 2_557_539)])
def test_reference_parameter_counts(name, expected):
    # the reference model.py reports 16,942,419 for Fresnel; its presets call Freckles "2.55M"
    with torch.device("meta"):
        model = PatchSVAE(PatchSVAEConfig.preset(name))
    assert model.num_parameters() == expected


def test_spectral_reconstruction_equals_m_when_cross_attention_is_identity():
    model = make_model()
    x = images()
    lat = model.encode(x)
    # at init the gates are small: S changes by at most α ≈ 0.024 of itself
    assert torch.all((lat.S - lat.raw).abs() <= 0.0241 * lat.raw + 1e-6)
    with torch.no_grad():
        for layer in model.cross_attn:
            layer.alpha_logits.fill_(-1e4)  # α = 0 → identity
    out = model(x)
    assert float(out.s_delta) == 0.0
    mhat = model.matrix_from_latent(out.latent)
    assert torch.allclose(mhat, out.latent.M, atol=1e-5)


# ----------------------------------------------------------------------------- checkpoints
def test_save_load_roundtrip(tmp_path):
    model = make_model().eval()
    x = images()
    ref = model(x)
    model.save_pretrained(tmp_path / "ckpt")
    for loaded in (PatchSVAE.from_pretrained(tmp_path / "ckpt"), load_model(tmp_path / "ckpt")):
        assert isinstance(loaded, PatchSVAE) and loaded.config == model.config
        out = loaded.eval()(x)
        assert torch.equal(out.recon, ref.recon)
        assert torch.equal(out.loss, ref.loss) and torch.equal(out.cv, ref.cv)


def test_save_load_nosvd(tmp_path):
    model = make_model(**NOSVD_ROUNDS["round3"]).eval()
    x = images()
    model.save_pretrained(tmp_path)
    assert torch.equal(PatchSVAE.from_pretrained(tmp_path).eval().reconstruct(x), model.reconstruct(x))


def test_corrupt_or_foreign_checkpoint_raises(tmp_path):
    make_model().save_pretrained(tmp_path / "good")
    cfg = json.loads((tmp_path / "good" / "config.json").read_text())

    corrupt = tmp_path / "corrupt"
    make_model().save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError):
        PatchSVAE.from_pretrained(corrupt)

    foreign = tmp_path / "foreign"
    make_model().save_pretrained(foreign)
    (foreign / "config.json").write_text(json.dumps({**cfg, "model_type": "geovae"}))
    with pytest.raises(CheckpointError, match="geovae"):
        PatchSVAE.from_pretrained(foreign)

    mismatched = tmp_path / "mismatched"
    make_model().save_pretrained(mismatched)
    (mismatched / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "V": 48}}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        PatchSVAE.from_pretrained(mismatched)

    unknown_key = tmp_path / "unknown_key"
    make_model().save_pretrained(unknown_key)
    (unknown_key / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "bogus": 1}}))
    with pytest.raises(CheckpointError, match="bogus"):
        PatchSVAE.from_pretrained(unknown_key)

    with pytest.raises(CheckpointError):
        PatchSVAE.from_pretrained(tmp_path / "missing")


# ----------------------------------------------------------------------------- determinism, gradients
def test_determinism():
    x = images()
    a, b = make_model(seed=3)(x), make_model(seed=3)(x)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.loss, b.loss)
    assert torch.equal(a.cv, b.cv) and torch.equal(a.erank, b.erank)
    # the CV readout draws from a private generator: global RNG state is left untouched
    model = make_model(seed=3)
    torch.manual_seed(5)
    model(x)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("variant", ["svd", "round1", "round3"])
def test_gradients_reach_every_parameter_group(variant):
    overrides = {} if variant == "svd" else NOSVD_ROUNDS[variant]
    model = make_model(**overrides).train()
    model(images()).loss.backward()
    groups = ["encoder", "decoder", "cross_attn", "smooth"]
    if variant != "svd":
        groups += ["readout", "inverse_readout"]
    for name in groups:
        module = getattr(model, name)
        norm = grad_norm(module)
        assert math.isfinite(norm) and norm > 0, name
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every cross-attention layer, not just the last, receives gradient
    for layer in model.cross_attn:
        assert grad_norm(layer) > 0


def test_cv_loss_mode_has_gradient_readout_mode_does_not():
    x = images()
    readout = make_model(cv_mode="readout")
    out = readout(x)
    assert not out.cv_loss.requires_grad
    # the faithful constant: (cv − target)² of the readout
    assert float(out.cv_loss) == pytest.approx((float(out.cv) - target_cv(8)) ** 2, rel=1e-5)

    loss_mode = make_model(cv_mode="loss")
    out = loss_mode(x)
    assert out.cv_loss.requires_grad
    grads = torch.autograd.grad(out.cv_loss, list(loss_mode.encoder.parameters()), allow_unused=True)
    total = sum(float(g.norm()) for g in grads if g is not None)
    assert math.isfinite(total) and total > 0
    # only the CV term: recon weight 0 → the encoder still learns (loss mode) / does not (readout mode)
    for model, expect in ((loss_mode, True), (readout, False)):
        model.zero_grad()
        model.set_loss_weights(recon_weight=0.0, cv_weight=1.0)
        model(x).loss.backward()
        assert (grad_norm(model.encoder) > 0) is expect


def test_cv_target_follows_dimension_not_a_constant():
    assert make_model().cv_target == pytest.approx(target_cv(8))
    assert make_model(cv_target=0.5).cv_target == 0.5


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("variant", ["svd", "round1", "round3"])
def test_raw_cauchy_forward_is_finite(variant):
    overrides = {} if variant == "svd" else NOSVD_ROUNDS[variant]
    model = make_model(**overrides)
    x = raw_cauchy()
    assert x.abs().max() > 60
    out = model(x)
    assert torch.isfinite(out.recon).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_keeps_the_svd_path_in_full_precision():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images())
    assert out.latent.M.dtype == torch.float32 and out.latent.U.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert grad_norm(model.encoder) > 0


def test_small_d_skips_cv_gracefully():
    torch.manual_seed(0)
    model = PatchSVAE(PatchSVAEConfig(patch_size=4, V=8, D=2, hidden=32, depth=1))
    out = model(torch.randn(2, 3, 8, 8))
    assert out.cv is None and out.cv_loss is None and model.cv_target is None
    assert torch.isfinite(out.loss)
    assert "cv" not in out.scalars()
    with pytest.raises(ValueError, match="D ≥ 4"):
        PatchSVAEConfig(patch_size=4, V=8, D=2, cv_mode="loss")


# ----------------------------------------------------------------------------- NoSVD ablation
@pytest.mark.parametrize("round_name", sorted(NOSVD_ROUNDS))
def test_nosvd_variant_shapes_and_accounting(round_name):
    model = make_model(**NOSVD_ROUNDS[round_name])
    out = model(images())
    assert out.recon.shape == (2, 3, 32, 32)
    lat = out.latent
    assert lat.omega.shape == (2, 16, 8) and lat.U is None and lat.S is None and lat.Vh is None
    assert model.latent_floats_per_patch == model.config.D == 8
    assert model.compression_ratio == pytest.approx(192 / 8)
    mhat = model.matrix_from_latent(lat)
    assert mhat.shape == (2, 16, 32, 8)
    if model.config.mhat_sphere_norm:
        assert torch.allclose(mhat.norm(dim=-1), torch.ones(2, 16, 32), atol=1e-5)
    assert (model.omega_norm is not None) == model.config.omega_layernorm


def test_svd_bounds_the_decoder_input_and_the_linear_readout_does_not():
    """The seed's load-bearing property #1: ‖M̂‖_F = ‖S′‖ ≤ (1 + max_alpha)^n_cross · √V, whatever the
    input or the weights; the NoSVD inverse readout scales M̂ with its weights (no bound)."""
    svd = make_model()
    c = svd.config
    bound = (1 + c.max_alpha) ** c.n_cross * math.sqrt(c.V)
    with torch.no_grad():
        for p in svd.encoder.parameters():  # a wildly trained encoder cannot break the bound
            p.mul_(50.0)
        for x in (raw_cauchy(), 1e4 * images()):
            norms = svd.matrix_from_latent(svd.encode(x)).norm(dim=(-2, -1))
            assert norms.max() <= bound * (1 + 1e-5)
            assert norms.min() >= (1 - c.max_alpha) ** c.n_cross * math.sqrt(c.V) * (1 - 1e-5)
    lin = make_model(**NOSVD_ROUNDS["round1"])
    with torch.no_grad():
        x = raw_cauchy()
        before = float(lin.matrix_from_latent(lin.encode(x)).norm(dim=(-2, -1)).max())
        lin.inverse_readout.weight.mul_(100.0)
        lin.inverse_readout.bias.mul_(100.0)
        after = float(lin.matrix_from_latent(lin.encode(x)).norm(dim=(-2, -1)).max())
    assert after == pytest.approx(100 * before, rel=1e-4) and after > 10 * bound


def test_nosvd_round2_uses_orthogonal_gain_half():
    model = make_model(**NOSVD_ROUNDS["round2"])
    w = model.readout.weight  # (D, V·D): orthonormal rows scaled by 0.5
    assert torch.allclose(w @ w.T, 0.25 * torch.eye(8), atol=1e-5)


# ----------------------------------------------------------------------------- API and config
def test_loss_weights_and_errors():
    model = make_model()
    x = images()
    base = model(x)
    model.set_loss_weights(recon_weight=2.0, cv_weight=0.0)
    out = model(x)
    assert float(out.loss.detach()) == pytest.approx(2.0 * float(base.recon_loss.detach()), rel=1e-5)
    assert out.scalars()["recon_weight"] == 2.0 and model.loss_weights == {
        "recon_weight": 2.0,
        "cv_weight": 0.0,
    }
    with pytest.raises(ValueError, match="kl_weight"):
        model.set_loss_weights(kl_weight=1.0)
    with pytest.raises(ValueError, match="finite"):
        model.set_loss_weights(cv_weight=float("nan"))


def test_input_validation_and_reconstruct():
    model = make_model().train()
    with pytest.raises(ValueError, match="channel"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="nearest valid"):
        model(torch.zeros(1, 3, 30, 32))
    x = images()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        model.reconstruct(x)
    assert model.training
    x = images()
    rec = model.reconstruct(x)
    assert model.training and not rec.requires_grad
    assert torch.equal(rec, model.eval()(x).recon)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="unknown PatchSVAE preset"):
        PatchSVAEConfig.preset("huge")
    with pytest.raises(TypeError, match="bogus"):
        PatchSVAEConfig.preset("tiny", bogus=1)
    with pytest.raises(ValueError, match="readout"):
        PatchSVAEConfig(readout="qr")
    with pytest.raises(ValueError, match="NoSVD options"):
        PatchSVAEConfig(omega_layernorm=True)
    with pytest.raises(ValueError, match="V ≥ D"):
        PatchSVAEConfig(V=8, D=16)
    freckles = PatchSVAEConfig.preset("freckles")
    assert freckles.resolved_n_heads == 2 and freckles.resolved_smooth_mid == 8
    fresnel = PatchSVAEConfig.preset("fresnel")
    assert fresnel.resolved_n_heads == 4 and fresnel.resolved_smooth_mid == 16

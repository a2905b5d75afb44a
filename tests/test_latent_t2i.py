"""Latent text-to-image: the diffusers-shaped first stage, the latent MiniT2I and what measures a latent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pentachora.errors import CheckpointError, ConfigError, DataError

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread", "offline")

from pentachora.autoencoders import (  # noqa: E402
    AutoencoderKLAdapter,
    AutoencoderKLAdapterConfig,
    AutoencoderTinyAdapter,
    AutoencoderTinyAdapterConfig,
    DiagonalGaussian,
    GeoVAE,
    GeoVAEConfig,
    LatentAutoencoder,
    LatentAutoencoderConfig,
    PatchSVAE,
    PatchSVAEConfig,
)
from pentachora.t2i import MiniT2I, MiniT2IConfig, SceneReader, SceneReaderConfig  # noqa: E402

SMALL_GEOVAE = dict(V=16, D=8, latent_dim=7, enc_hidden=32, enc_depth=1, dec_hidden=32, dec_depth=1,
                    bottleneck_hidden=16, inverse_hidden=16)  # fmt: skip


def first_stages() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "geovae": GeoVAE(GeoVAEConfig.preset("tiny-12", **SMALL_GEOVAE)),
        "nosvd": PatchSVAE(PatchSVAEConfig.preset("tiny", readout="linear", V=16, hidden=32, depth=1)),
        "kl": AutoencoderKLAdapter(AutoencoderKLAdapterConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                                                              latent_channels=4)),
        "tiny": AutoencoderTinyAdapter(AutoencoderTinyAdapterConfig(block_out_channels=(8, 8, 8, 8), latent_channels=4)),
    }  # fmt: skip


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ============================================================================================ posteriors
def test_point_mass_is_a_posterior_with_nothing_inferred():
    z = torch.randn(2, 5, 3, 3)
    q = DiagonalGaussian.point_mass(z)
    assert q.latent_channels == 5
    assert torch.equal(q.sample(), z) and torch.equal(q.mode(), z)
    assert torch.equal(q.kl(), torch.zeros(2)) and q.kl_per_channel().numel() == 0


# ============================================================================================ diffusers surface
@pytest.mark.parametrize("name", ["geovae", "nosvd", "kl", "tiny"])
def test_latent_autoencoder_speaks_the_diffusers_vae_surface(name, tmp_path):
    stage = first_stages()[name]
    ae = LatentAutoencoder.wrap(stage)
    x = images()
    enc = ae.encode(x)
    q = enc.latent_dist  # attribute access, as pipelines use it
    assert enc[0] is q  # and index access (diffusers' BaseOutput)
    c, s = ae.latent_channels, ae.downsample
    assert c == stage.latent_floats_per_patch and s == 8
    z = q.sample(torch.Generator().manual_seed(0))
    assert z.shape == (4, c, 32 // s, 32 // s) and q.mode().shape == z.shape
    out = ae.decode(z)
    assert out.sample.shape == x.shape and ae.decode(z, return_dict=False)[0].shape == x.shape
    assert ae.encode(x, return_dict=False)[0].mode().shape == z.shape
    # the round trip is the wrapped model's own reconstruction
    stage.eval()
    torch.testing.assert_close(ae(x), stage.decode_image_latent(stage.image_posterior(x).mode()))
    # deterministic encoders are point masses; the variational ones are not
    assert (q.kl().abs().sum() == 0) == (name in ("nosvd", "tiny"))
    # the frozen first stage stays frozen and in eval mode
    ae.train()
    assert not ae.first_stage.training and not any(p.requires_grad for p in ae.parameters())
    # strict safetensors round trip, statistics included
    ae.calibrate([x])
    ae.save_pretrained(tmp_path / "ae")
    back = LatentAutoencoder.from_pretrained(tmp_path / "ae")
    assert back.config.latents_std == ae.config.latents_std
    torch.testing.assert_close(back(x), ae(x))


def test_calibration_whitens_each_channel_and_sets_diffusers_scalars():
    ae = LatentAutoencoder.wrap(first_stages()["geovae"])
    x = images(16)
    g = torch.Generator().manual_seed(3)
    stats = ae.calibrate([x[:8], x[8:]], generator=torch.Generator().manual_seed(3))
    assert stats["images"] == 16 and ae.config.calibration_images == 16
    z = ae.encode(x).latent_dist.sample(g)  # the same draws as the calibration
    n = ae.normalize(z).transpose(0, 1).reshape(ae.latent_channels, -1)
    torch.testing.assert_close(n.mean(dim=1), torch.zeros(ae.latent_channels), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        n.std(dim=1, unbiased=False), torch.ones(ae.latent_channels), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(ae.denormalize(ae.normalize(z)), z)
    all_std = z.double().std(unbiased=False)
    assert ae.config.scaling_factor == pytest.approx(1 / float(all_std), rel=1e-4)
    assert ae.config.shift_factor == pytest.approx(float(z.double().mean()), abs=1e-5)


def test_a_loop_written_for_diffusers_autoencoderkl_runs_on_ours():
    """The few lines latent-diffusion code runs on its VAE, unchanged for diffusers' model and ours."""
    from diffusers import AutoencoderKL

    def roundtrip(vae, x):  # as diffusers' pipelines treat an optional shift_factor
        shift = vae.config.shift_factor or 0.0
        z = (vae.encode(x).latent_dist.sample() - shift) * vae.config.scaling_factor
        return vae.decode(z / vae.config.scaling_factor + shift).sample

    theirs = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).eval()
    ours = LatentAutoencoder.wrap(first_stages()["kl"])
    ours.calibrate([images()])
    x = images(2)
    assert roundtrip(theirs, x).shape == roundtrip(ours, x).shape == x.shape


def test_latent_autoencoder_refuses_what_it_cannot_be():
    with pytest.raises(ConfigError, match="not a registered patch autoencoder"):
        LatentAutoencoder(LatentAutoencoderConfig(first_stage_type="mini-t2i"))
    with pytest.raises(ConfigError, match="no image-like latent"):
        LatentAutoencoder.wrap(PatchSVAE(PatchSVAEConfig.preset("tiny", V=16, hidden=32, depth=1)))
    with pytest.raises(ValueError, match="one entry per latent channel"):
        LatentAutoencoderConfig(latents_mean=(0.0,), latents_std=())
    with pytest.raises(ValueError, match="> 0"):
        LatentAutoencoderConfig(latents_mean=(0.0,), latents_std=(0.0,))
    ae = LatentAutoencoder.wrap(first_stages()["tiny"])
    bad = LatentAutoencoderConfig(first_stage_type=ae.config.first_stage_type, first_stage=ae.config.first_stage,
                                  latents_mean=(0.0,) * 3, latents_std=(1.0,) * 3)  # fmt: skip
    with pytest.raises(ConfigError, match="3 entries for 4 latent channels"):
        LatentAutoencoder(bad)
    with pytest.raises(DataError, match="at least one image"):
        ae.calibrate([])
    with pytest.raises(DataError, match=r"expected a latent \(B, 4"):
        ae.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):  # the first stage's own input check
        ae.encode(torch.full((1, 3, 32, 32), float("nan")))


def test_a_foreign_first_stage_config_is_refused_on_load(tmp_path):
    ae = LatentAutoencoder.wrap(first_stages()["tiny"])
    ae.save_pretrained(tmp_path / "ae")
    meta = json.loads((tmp_path / "ae" / "config.json").read_text())
    meta["config"]["first_stage"]["latent_channels"] = 5  # the weights hold 4
    (tmp_path / "ae" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        LatentAutoencoder.from_pretrained(tmp_path / "ae")


# ============================================================================================ latent T2I
def latent_t2i(name: str = "geovae") -> tuple[MiniT2I, LatentAutoencoder]:
    ae = LatentAutoencoder.wrap(first_stages()[name])
    ae.calibrate([images(8)])
    torch.manual_seed(0)
    model = MiniT2I(MiniT2IConfig.preset("tiny").with_first_stage(ae))
    model.first_stage.load_state_dict(ae.state_dict())
    model.set_null_embedding(torch.randn(77, 384, generator=torch.Generator().manual_seed(9)))
    return model, ae


def test_latent_t2i_denoises_the_normalised_latent_and_trains_only_its_unet(tmp_path):
    model, ae = latent_t2i()
    c = model.config
    assert (c.latent_channels, c.latent_size) == (ae.latent_channels, 4)
    pixels = (images(4) + 1) / 2
    model.eval()
    z = model.to_latent(pixels)
    torch.testing.assert_close(z, ae.normalize(ae.encode(pixels * 2 - 1).latent_dist.mode()))
    torch.testing.assert_close(model.from_latent(z), ((ae(pixels * 2 - 1) + 1) / 2).clamp(0, 1))
    model.train()
    assert not model.first_stage.training
    torch.manual_seed(1)
    drawn = model.to_latent(pixels)
    assert not torch.allclose(drawn, z)  # training draws from the posterior, as SD's training does
    out = model({"pixel_values": pixels, "encoder_hidden_states": torch.randn(4, 77, 384)})
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in model.first_stage.parameters())
    assert all(p.grad is not None for p in model.unet.parameters() if p.requires_grad)
    images_out = model.generate(
        torch.randn(2, 77, 384), num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert (
        images_out.shape == (2, 3, 32, 32) and float(images_out.min()) >= 0 and float(images_out.max()) <= 1
    )
    # one checkpoint holds UNet and first stage; it loads strictly
    model.save_pretrained(tmp_path / "m")
    back = MiniT2I.from_pretrained(tmp_path / "m")
    for a, b in zip(back.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert back.describe()["first_stage"] == "latent-autoencoder"


def test_latent_t2i_config_errors():
    model, ae = latent_t2i("tiny")
    good = model.config
    import dataclasses

    with pytest.raises(ConfigError, match="first stage 'latent-autoencoder' has 4 latent channels"):
        MiniT2I(dataclasses.replace(good, first_stage_width=5))
    with pytest.raises(ConfigError, match="not a registered model"):
        MiniT2I(dataclasses.replace(good, first_stage={"model_type": "nope", "config": {}}))
    with pytest.raises(ConfigError, match="first_stage must be"):
        dataclasses.replace(good, first_stage={"config": {}})
    coarse = LatentAutoencoder.wrap(
        GeoVAE(GeoVAEConfig.preset("tiny-12", **{**SMALL_GEOVAE, "patch_size": 16}))
    )
    with pytest.raises(ConfigError, match="latent side 2 must be divisible by 2\\^\\(levels−1\\) = 4"):
        MiniT2IConfig.preset("cpu").with_first_stage(coarse)  # a 2×2 latent cannot go down two levels
    with pytest.raises(ConfigError, match="lacks normalize"):
        MiniT2I(dataclasses.replace(good, first_stage={"model_type": "autoencoder_tiny",
                                                       "config": ae.config.first_stage}))  # fmt: skip


# ============================================================================================ measures
def test_latent_measures_on_small_models():
    from pentachora.recipes.latent_t2i import (
        SceneImageSource,
        interpolation_smoothness,
        latent_statistics,
        reconstruction_scores,
        ssim,
    )

    x = images(8)
    same = (x + 1) / 2
    assert torch.allclose(ssim(same, same), torch.ones(8, dtype=torch.float64), atol=1e-6)
    for name, stage in first_stages().items():
        ae = LatentAutoencoder.wrap(stage)
        ae.calibrate([x])
        rec = reconstruction_scores(ae, x)
        assert rec["psnr"] > 0 and -1 <= rec["ssim"] <= 1
        stats = latent_statistics(ae, x)
        assert (stats["kl_per_cell"] == 0) == (name in ("nosvd", "tiny"))
        if name in ("nosvd", "tiny"):  # calibrated on these images: the modes are the whole variance
            assert stats["normalized_rms"] == pytest.approx(1.0, abs=1e-3)
        else:  # part of the calibrated variance is the posterior's noise
            assert 0 < stats["normalized_rms"] < 1.05
        assert stats["channel_var_spread"] >= 0
        assert stats["cv"] > 0 and stats["cv_target"] > 0
    reader = SceneReader(SceneReaderConfig(width=16)).eval()
    smooth = interpolation_smoothness(ae, reader, x[:4], x[4:], points=5)
    assert smooth["pairs"] == 4 and 0 <= smooth["max_jump"] <= 1 and 0 <= smooth["ghost_frames"] <= 1
    # a path from a scene to itself never changes its reading
    still = interpolation_smoothness(ae, reader, x[:2], x[:2], points=5)
    assert still["max_jump"] == 0 and still["ghost_frames"] == 0
    # batches are a pure function of (seed, step), in [-1, 1]
    pool = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a, b = SceneImageSource(pool, 4, seed=1), SceneImageSource(pool, 4, seed=1)
    assert torch.equal(a.batch(5), b.batch(5)) and not torch.equal(a.batch(5), a.batch(6))
    assert float(a.batch(0).min()) >= -1 and float(a.batch(0).max()) <= 1
    with pytest.raises(ValueError, match="uint8"):
        SceneImageSource(pool.float(), 4)


@pytest.mark.slow
def test_latent_benchmark_smoke(tmp_path, monkeypatch):
    """``benchmarks/t2i_latent.py --quick`` on a 2-step pixel run (an untrained reader stands in)."""
    import importlib.util

    from pentachora.recipes.latent_t2i import FirstStage
    from pentachora.recipes.t2i import train_t2i
    from pentachora.training import TrainConfig

    reader = SceneReader(SceneReaderConfig(width=16))
    torch.manual_seed(0)
    pixel = MiniT2I(MiniT2IConfig.preset("tiny"))
    tc = TrainConfig(steps=2, batch_size=4, out_dir=str(tmp_path / "pixel"), progress=False, tensorboard=False,
                     eval_every=1)  # fmt: skip
    train_t2i(pixel, tc, pool_size=16, reader=reader, eval_captions=2, cache=tmp_path / "cache", progress=False,
              final_eval_captions=2)  # fmt: skip
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "t2i_latent.py"
    spec = importlib.util.spec_from_file_location("bench_t2i_latent", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "default_reader", lambda world: reader)
    monkeypatch.setitem(
        bench.FIRST_STAGES, "nosvd-12", FirstStage(lambda: first_stages()["nosvd"], (1e-3,), "small")
    )
    monkeypatch.setitem(
        bench.FIRST_STAGES, "geovae-12", FirstStage(lambda: first_stages()["geovae"], (1e-3, 3e-3), "small")
    )
    out = bench.main(["--pixel-run", str(tmp_path / "pixel"), "--quick", "--pool-size", "16", "--fs-budget", "1",
                      "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r")])  # fmt: skip
    assert set(out["t2i"]) == {"pixels", "geovae-12", "nosvd-12"}
    assert (
        out["first_stages"]["geovae-12"]["lr"] in (1e-3, 3e-3)
        and len(out["first_stages"]["geovae-12"]["lr_sweep"]) == 2
    )
    for r in out["t2i"].values():
        assert 0 <= r["test"]["object_recall"] <= 1 and r["train_step_s"] > 0 and r["sample_s_per_image"] > 0
    assert out["first_stage_scores"]["nosvd-12"]["mean"]["latent"]["kl_per_cell"] == 0
    md = (tmp_path / "r.md").read_text()
    assert "Made by `python benchmarks/t2i_latent.py" in md and "### Goals" in md
    assert (tmp_path / "r_curves.png").is_file()


def test_reconstruction_reading_scores_the_round_trip_against_the_truth():
    from pentachora.data.scenes import SceneWorld
    from pentachora.recipes.latent_t2i import reconstruction_reading

    world = SceneWorld(MiniT2IConfig.preset("tiny").world)
    scenes = [world.scene("test", i, (1, 3)) for i in range(6)]
    images = torch.from_numpy(world.render_batch(scenes)) * 2 - 1
    reader = SceneReader(SceneReaderConfig(width=16)).eval()
    ae = LatentAutoencoder.wrap(first_stages()["tiny"])
    out = reconstruction_reading(ae, reader, images, world.layouts(scenes))
    assert set(out) == {"object_recall", "shape_recall", "colour_recall", "object_recall_originals"}
    assert all(0 <= v <= 1 for v in out.values())
    # the reader on the originals does not depend on the first stage
    other = reconstruction_reading(
        LatentAutoencoder.wrap(first_stages()["nosvd"]), reader, images, world.layouts(scenes)
    )
    assert other["object_recall_originals"] == out["object_recall_originals"]

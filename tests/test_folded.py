"""Contract tests of the folded battery container (batteries as the initialisation of a plain GeoVAE)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from pentachora.autoencoders.folded import folded_config, implant_batteries, spectral_bottleneck_init
from pentachora.autoencoders.geovae import GeoVAE
from pentachora.data.regimes import unit_rms
from pentachora.nn import patchify
from test_batteries import images, tiny_bank

SMALL = dict(
    latent_dim=5, depth=1, bottleneck_hidden=16, inverse_hidden=16, cv_patches=4, cv_points=16, cv_samples=8
)


def folded(bank, seed: int = 0, **overrides) -> GeoVAE:
    torch.manual_seed(seed)
    return GeoVAE(folded_config(bank.config, **{**SMALL, **overrides}))


def test_folded_config_holds_the_batteries_side_by_side():
    bank = tiny_bank(3)  # p=4, v=6, D=4, h=5
    c = folded_config(bank.config, latent_dim=7)
    assert (c.patch_size, c.V, c.D, c.enc_hidden, c.dec_hidden) == (4, 18, 4, 15, 15)
    assert c.bounded_heads and c.latent_dim == 7
    assert folded_config(bank.config, n_slots=2).V == 12
    with pytest.raises(ValueError, match="set by the folded batteries"):
        folded_config(bank.config, V=64)
    with pytest.raises(ValueError, match="n_slots"):
        folded_config(bank.config, n_slots=0)


def test_implanted_encoder_gives_each_batterys_frame():
    bank = tiny_bank(3)
    model = folded(bank)
    implant_batteries(model, bank)
    x = images(2, 8)
    unit = unit_rms(patchify(x, 4), eps=model.config.magnitude_eps)  # (B, N, P)
    got = rearrange(model.encoder(unit), "b n (k f) -> k (b n) f", k=3)
    flat = unit.reshape(1, -1, unit.shape[-1]).expand(3, -1, -1)
    want = bank.encode_frames(flat)  # (K, B·N, v·D): battery k on every patch
    assert torch.allclose(got, want, atol=1e-5)


def test_implanted_decoder_is_the_average_of_the_battery_decoders():
    bank = tiny_bank(3)
    model = folded(bank)
    implant_batteries(model, bank)
    frames = F.normalize(torch.randn(10, 3, 6, 4), dim=-1)  # (T, K, v, D)
    got = model.decoder(frames.flatten(1))
    want = torch.stack([bank.battery(k).decoder(frames[:, k].flatten(1)) for k in range(3)]).mean(
        0
    )  # each battery's own decoder, as a standalone PatchSVAE
    assert torch.allclose(got, want, atol=1e-5)


def test_implant_chooses_batteries_and_refuses_what_does_not_fit():
    bank = tiny_bank(4)
    model = folded(bank, n_slots=2)
    out = implant_batteries(model, bank, indices=[3, 1])
    assert out == {"slots": 2, "batteries": [3, 1]}
    assert torch.equal(model.encoder.in_proj.weight[:5], bank.enc_in_w[3])
    with pytest.raises(ValueError, match="does not fold"):
        implant_batteries(model, bank)  # 4 batteries into a 2-slot model
    with pytest.raises(ValueError, match="indices"):
        implant_batteries(model, bank, indices=[0, 9])
    other = tiny_bank(2, hidden=3)
    with pytest.raises(ValueError, match="enc_hidden"):
        implant_batteries(model, other)


def test_spectral_init_makes_the_latent_the_whitened_principal_coordinates():
    bank = tiny_bank(3)
    model = folded(bank)
    implant_batteries(model, bank)
    calib = images(16, 16, seed=5)  # 16 × 16 patches = 256 ≥ V·D = 72
    report = spectral_bottleneck_init(model, calib)
    assert 0 < report["explained_variance"] <= 1 and report["patches"] == 256
    unit = unit_rms(patchify(calib, 4), eps=model.config.magnitude_eps).reshape(-1, 48)
    frames = F.normalize(model.encoder(unit).reshape(-1, 18, 4), dim=-1).flatten(1).double()
    raw = model.bottleneck(frames.float())[:, :5].double()  # μ before the bounded head
    # μ is the top-5 whitened principal coordinates: unit variance, decorrelated, and it spans the
    # top-5 principal subspace (SVD of the centred frames here, eigh of the covariance there)
    cov = torch.cov(raw.T)
    assert torch.allclose(cov, torch.eye(5, dtype=cov.dtype), atol=1e-3)
    centred = frames - frames.mean(0)
    top = torch.linalg.svd(centred, full_matrices=False).Vh[:5]  # (5, V·D)
    coords = centred @ top.T
    fit = coords @ torch.linalg.lstsq(coords, raw - raw.mean(0)).solution
    assert torch.allclose(fit, raw - raw.mean(0), atol=1e-4)
    # the inverse is the rank-d principal reconstruction: its error is the truncated variance
    truncated = (1 - report["explained_variance"]) * report["frame_var"]
    assert report["frame_mse"] < report["frame_var"]
    assert report["frame_mse"] == pytest.approx(truncated, rel=0.2)
    # ... and it does not depend on the pair scale (the ± pairs are exact through GELU)
    twin = folded(bank)
    implant_batteries(twin, bank)
    assert spectral_bottleneck_init(twin, calib, scale=0.05)["frame_mse"] == pytest.approx(
        report["frame_mse"], rel=0.05
    )


def test_spectral_init_refuses_too_few_patches_and_bad_images():
    bank = tiny_bank(3)
    model = folded(bank)
    with pytest.raises(ValueError, match="calibration patches"):
        spectral_bottleneck_init(model, images(1, 8))
    bad = images(16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        spectral_bottleneck_init(model, bad)
    with pytest.raises(ValueError, match="scale"):
        spectral_bottleneck_init(model, images(16, 16), scale=0)


def test_a_folded_container_trains_and_round_trips_as_a_plain_geovae(tmp_path):
    from pentachora.recipes import load_model

    bank = tiny_bank(3)
    model = folded(bank)
    implant_batteries(model, bank)
    spectral_bottleneck_init(model, images(16, 16, seed=5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        out = model(images(4, 16))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.save_pretrained(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert type(back) is GeoVAE
    model.eval()
    back.eval()
    x = images(2, 16, seed=8)
    assert torch.allclose(back.reconstruct(x), model.reconstruct(x), atol=1e-6)


def test_folded_container_benchmark_quick(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "folded_container.py"
    spec = importlib.util.spec_from_file_location("bench_folded_container", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "folded_container_quick.json").read_text())
    alt = bench.ALT_BANK.format(steps=res["args"]["alt_bank_steps"])
    assert list(res["summary"]) == [*bench.CONTENDERS, alt]  # the bank size is a validation choice too
    assert res["alt_bank"]["steps"] == res["args"]["alt_bank_steps"] < res["bank"]["steps"]
    (seed,) = res["seeds"]
    # every run is scored on the validation photos as well as the held-out ones
    assert all("psnr_val" in run["final"] for run in seed["runs"].values())
    assert seed["target_psnr_val"] == seed["runs"][bench.REFERENCE]["final"]["psnr_val"]
    ref = seed["runs"][bench.REFERENCE]
    # the reference reaches its own final PSNR by its last evaluation, within its own time
    assert ref["to_target"]["steps"] is not None and 0 < ref["to_target"]["fraction"] <= 1
    assert seed["target_psnr"] == ref["final"]["psnr"]
    for name, run in seed["runs"].items():
        assert run["nonfinite_steps"] == 0, name
        assert run["curve"][-1]["step"] == res["args"]["steps"]
    assert seed["runs"]["folded, implanted + spectral"]["build_s"] > 0
    assert res["bank_s"] > 0 and res["bank"]["n_batteries"] == 4
    md = (tmp_path / "folded_container_quick.md").read_text()
    assert "goal" in md and "folded_container_quick.png" in md and "Chosen on the validation photos" in md
    assert (tmp_path / "folded_container_quick.png").stat().st_size > 1000

"""Contract tests of the battery bank, the battery container, its linear export and their CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pentachora.autoencoders.battery import BANK_FORMAT, BatteryBank, BatteryConfig
from pentachora.autoencoders.container import BatteryContainer, BatteryContainerConfig
from pentachora.autoencoders.export import LinearExport, count_flops
from pentachora.cli import app
from pentachora.cli import batteries as _batteries  # noqa: F401  (registers the commands)
from pentachora.data.regimes import RegimeSource, parse_regimes, unit_rms
from pentachora.io import CheckpointError, atomic_save_tensors, read_tensor_metadata
from pentachora.recipes import load_model
from pentachora.recipes.batteries import load_battery_bank
from test_geovae import _forbidden, _OpRecorder  # the no-eigh/no-SVD dispatch recorder of GeoVAE's tests

TINY = dict(patch_size=4, V=6, D=4, hidden=5, cv_samples=8, cv_patches=3)


def tiny_bank(k: int = 3, seed: int = 0, **overrides) -> BatteryBank:
    torch.manual_seed(seed)
    return BatteryBank(BatteryConfig(n_batteries=k, **{**TINY, **overrides}))


def patches(k: int, b: int, seed: int = 1, p: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return unit_rms(torch.randn(k, b, 3 * p * p, generator=g)).reshape(k, b, 3, p, p)


def summarized(bank: BatteryBank) -> BatteryBank:
    regimes = [{"label": f"test:{i}", "kind": "test"} for i in range(bank.n_batteries)]
    bank.summarize(patches(bank.n_batteries, 6, seed=9), regimes, cv_samples=16)
    return bank


def container_for(bank: BatteryBank, seed: int = 0, **overrides) -> BatteryContainer:
    c = bank.config
    torch.manual_seed(seed)
    cfg = dict(
        patch_size=c.patch_size,
        n_batteries=c.n_batteries,
        battery_rows=c.V,
        D=c.D,
        battery_hidden=c.hidden,
        latent_dim=7,
        bottleneck_hidden=16,
        inverse_hidden=16,
        cv_patches=4,
        cv_points=16,
        cv_samples=8,
    )
    return BatteryContainer(BatteryContainerConfig(**{**cfg, **overrides}))


def images(b: int = 2, size: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# ----------------------------------------------------------------------------- the batched bank
def test_bank_equals_separately_run_batteries():
    bank = tiny_bank(4).eval()
    x = patches(4, 5)
    run = bank.run(x)
    assert run["recon"].shape == (4, 5, 48) and run["S"].shape == (4, 5, 4)
    for k in range(4):
        model = bank.battery(k).eval()
        latent = model.encode(x[k])  # a battery's image is one patch
        rec = model.decode(latent)
        torch.testing.assert_close(rec.reshape(5, -1), run["recon"][k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(latent.S.squeeze(1), run["S"][k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(latent.raw.squeeze(1), run["S_raw"][k], atol=1e-5, rtol=1e-5)


def test_bank_gradients_are_each_batterys_own():
    bank = tiny_bank(3, cv_weight=0.0)
    x = patches(3, 4)
    bank(x).loss.backward()
    for k in range(3):
        model = bank.battery(k)
        model.set_loss_weights(cv_weight=0.0)
        model(x[k]).loss.backward()
        pairs = [
            (bank.enc_in_w.grad[k], model.encoder.in_proj.weight.grad),
            (bank.enc_out_b.grad[k], model.encoder.out_proj.bias.grad),
            (bank.gates[0]["v_w"].grad[k], model.cross_attn[0].qkv.weight.grad[8:]),
            (bank.gates[0]["alpha"].grad[k], model.cross_attn[0].alpha_logits.grad),
            (bank.dec_out_w.grad[k], model.decoder.out_proj.weight.grad),
        ]
        for got, want in pairs:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_from_batteries_round_trip_and_checks():
    bank = tiny_bank(3)
    again = BatteryBank.from_batteries([bank.battery(k) for k in range(3)])
    for (name, a), (_, b) in zip(bank.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    odd = bank.battery(0)
    with torch.no_grad():
        odd.smooth.conv2.weight.fill_(0.1)
    with pytest.raises(ValueError, match="BoundarySmooth"):
        BatteryBank.from_batteries([odd])


def test_bank_forward_loss_is_sum_and_finite():
    bank = tiny_bank(3)
    out = bank(patches(3, 4))
    assert out.recon.shape == (3, 4, 3, 4, 4) and out.mse.shape == (3,)
    assert torch.isfinite(out.loss)
    assert (
        float(out.loss.detach()) >= float(out.mse.detach().sum()) - 1e-6
    )  # recon part plus a non-negative CV part
    assert {"recon_loss", "cv", "erank", "mse_worst"} <= set(out.scalars())
    with pytest.raises(ValueError, match="K=3"):
        bank(patches(2, 4))


# ----------------------------------------------------------------------------- one-file save / load
def test_bank_save_load_round_trip(tmp_path):
    bank = summarized(tiny_bank(3))
    path = bank.save_pretrained(tmp_path / "bank.safetensors", extra_metadata={"steps": 7})
    meta = read_tensor_metadata(path)
    assert meta["format"] == BANK_FORMAT and {"config", "batteries"} <= set(meta)
    loaded = BatteryBank.from_pretrained(path)
    assert loaded.config == bank.config and loaded.info == bank.info and loaded.run_metadata == {"steps": 7}
    for (name, a), (_, b) in zip(bank.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    rec = loaded.info[1]
    assert rec["regime"] == "test:1" and len(rec["spectrum"]) == 4
    assert {"final_mse", "cv", "erank", "prototype_coherence"} <= set(rec)
    assert torch.allclose(loaded.prototypes.norm(dim=-1), torch.ones(3, 6))


def test_bank_save_needs_metadata(tmp_path):
    with pytest.raises(ValueError, match="summarize"):
        tiny_bank(2).save_pretrained(tmp_path / "x.safetensors")


def _write(path, state, header):
    atomic_save_tensors(path, state, metadata=header)
    return path


def test_bad_bank_files_give_clear_errors(tmp_path):
    bank = summarized(tiny_bank(3))
    good = bank.save_pretrained(tmp_path / "good.safetensors")
    meta = read_tensor_metadata(good)
    state = bank.state_dict()
    with pytest.raises(CheckpointError, match="not found"):
        BatteryBank.from_pretrained(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        BatteryBank.from_pretrained(tmp_path / "junk.safetensors")
    # no metadata at all (e.g. a plain state-dict dump)
    with pytest.raises(CheckpointError, match="not a battery bank"):
        BatteryBank.from_pretrained(_write(tmp_path / "nometa.safetensors", state, None))
    # per-battery metadata missing
    no_batt = {k: v for k, v in meta.items() if k != "batteries"}
    with pytest.raises(CheckpointError, match=r"lacks \['batteries'\]"):
        BatteryBank.from_pretrained(_write(tmp_path / "nobatt.safetensors", state, no_batt))
    # a record without final_mse
    records = json.loads(meta["batteries"])
    del records[2]["final_mse"]
    with pytest.raises(CheckpointError, match=r"battery 2 metadata lacks \['final_mse'\]"):
        BatteryBank.from_pretrained(
            _write(tmp_path / "rec.safetensors", state, {**meta, "batteries": json.dumps(records)})
        )
    # too few records
    with pytest.raises(CheckpointError, match="one metadata record per battery"):
        BatteryBank.from_pretrained(
            _write(tmp_path / "few.safetensors", state, {**meta, "batteries": json.dumps(records[:1])})
        )
    # wrong dims: the header says hidden=6, the tensors are hidden=5
    cfg = json.loads(meta["config"])
    cfg["hidden"] = 6
    with pytest.raises(CheckpointError, match="shape mismatch"):
        BatteryBank.from_pretrained(
            _write(tmp_path / "dims.safetensors", state, {**meta, "config": json.dumps(cfg)})
        )
    # an unknown config key
    cfg = {**json.loads(meta["config"]), "wings": 2}
    with pytest.raises(CheckpointError, match="unknown keys"):
        BatteryBank.from_pretrained(
            _write(tmp_path / "key.safetensors", state, {**meta, "config": json.dumps(cfg)})
        )


# ----------------------------------------------------------------------------- checkpoint folders
def test_bank_checkpoint_folder_round_trip(tmp_path):
    bank = summarized(tiny_bank(3))
    folder = bank.save_pretrained(tmp_path / "bank", extra_metadata={"steps": 7})  # no .safetensors: a folder
    assert sorted(p.name for p in folder.iterdir()) == ["batteries.json", "config.json", "model.safetensors"]
    for loaded in (BatteryBank.from_pretrained(folder), load_battery_bank(folder)):
        assert (
            loaded.config == bank.config and loaded.info == bank.info and loaded.run_metadata == {"steps": 7}
        )
        for (name, a), (_, b) in zip(bank.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    generic = load_model(folder)  # the generic loader: same weights, no per-battery metadata
    assert isinstance(generic, BatteryBank) and torch.equal(generic.prototypes, bank.prototypes)
    # a bank in training (trainer checkpoints) saves without batteries.json; load() wants the records
    plain = tiny_bank(2).save_pretrained(tmp_path / "plain")
    assert not (plain / "batteries.json").exists() and BatteryBank.from_pretrained(plain).info == []
    with pytest.raises(CheckpointError, match=r"has no batteries\.json"):
        load_battery_bank(plain)
    (folder / "batteries.json").write_text(
        json.dumps({"format": "pentachora-battery-bank", "batteries": [{}]})
    )
    with pytest.raises(CheckpointError, match="one metadata record per battery"):
        BatteryBank.from_pretrained(folder)


def test_bank_single_file_and_folder_hold_the_same_bank(tmp_path):
    bank = summarized(tiny_bank(3))
    a = BatteryBank.from_pretrained(bank.save_pretrained(tmp_path / "bank.safetensors"))
    b = BatteryBank.from_pretrained(bank.save_pretrained(tmp_path / "bank"))
    assert a.config == b.config and a.info == b.info
    x = patches(3, 4)
    assert torch.equal(a.eval()(x).recon, b.eval()(x).recon)


# ----------------------------------------------------------------------------- regimes
def test_parse_regimes():
    r = parse_regimes("noise-types:20+tiers:6+patch-clusters:5")
    assert len(r) == 31
    assert r[0].label == "noise-type:gaussian/r0" and r[16].label == "noise-type:gaussian/r1"
    assert r[20].kind == "tier" and r[20].noise_types == ("gaussian",) and r[25].label == "tier:0/r1"
    assert r[26].kind == "patch-cluster" and r[30].cluster == 4
    assert len(parse_regimes("noise-types")) == 256
    for bad in ("", "clusters:4", "tiers:x", "noise-types:0", "patch-clusters:2+patch-clusters:3"):
        with pytest.raises(ValueError, match="invalid regimes spec"):
            parse_regimes(bad)


def test_regime_source_batches():
    src = RegimeSource(parse_regimes("noise-types:3+tiers:2"), batch_size=5, patch_size=4, noise_image_size=8)
    x = src.batch(3)
    assert x.shape == (5, 5, 3, 4, 4)
    assert torch.equal(x, src.batch(3)) and not torch.equal(x, src.batch(4))
    rms = x.reshape(5, 5, -1).square().mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    assert src.eval_batch(2).shape == (5, 2, 3, 4, 4)
    assert src.describe(3)["kind"] == "tier"


def test_regime_source_patch_clusters():
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(3, 24, 24, generator=g), torch.rand(3, 20, 28, generator=g)]
    src = RegimeSource(
        parse_regimes("patch-clusters:4+noise-types:1"),
        batch_size=3,
        patch_size=4,
        noise_image_size=8,
        photos=photos,
        cluster_patches=400,
    )
    assert src.batch(1).shape == (5, 3, 3, 4, 4) and src.eval_batch(2).shape == (5, 2, 3, 4, 4)
    assert sum(src.cluster_sizes) == 400 and src.describe(0)["cluster_size"] == src.cluster_sizes[0]


# ----------------------------------------------------------------------------- the container
def test_container_config_derives_frame_fields():
    c = BatteryContainerConfig(n_batteries=5, battery_rows=6, D=4, battery_hidden=3, latent_dim=7)
    assert (c.V, c.enc_hidden, c.dec_hidden, c.enc_depth) == (30, 15, 15, 0)
    assert c.latent_floats_per_patch == 8
    with pytest.raises(ValueError, match="derived"):
        BatteryContainerConfig(n_batteries=5, battery_rows=6, D=4, V=31)
    with pytest.raises(ValueError, match="top_k"):
        BatteryContainerConfig(n_batteries=4, routing="topk", top_k=5)


@pytest.mark.parametrize("routing", ["soft", "topk"])
def test_container_forward_and_gradients(routing):
    model = container_for(tiny_bank(4), routing=routing, top_k=2)
    out = model(images())
    assert out.recon.shape == (2, 3, 16, 16) and torch.isfinite(out.loss)
    scalars = out.scalars()
    assert {"cv_anchor", "cv_anchor_loss", "route_entropy", "route_balance", "cv_enc", "kl"} <= set(scalars)
    out.loss.backward()
    assert model.anchors.grad is not None and model.anchors.grad.abs().sum() > 0
    assert model.route_logit_scale.grad is not None
    assert model.decoder.in_w.grad.abs().sum() > 0 and model.encoder.out_w.grad.abs().sum() > 0
    assert model.latent_floats_per_patch == 8
    if routing == "topk":
        weights = model._decode_tokens(model.encode(images()).mode())["route"]
        assert int((weights > 0).sum(-1).max()) == 2
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_implant_copies_the_right_weights_into_the_right_slots():
    bank = summarized(tiny_bank(5, seed=4))
    model = container_for(tiny_bank(3), seed=1)
    order = [4, 0, 2]
    model.implant(bank, indices=order)
    h = bank.config.hidden
    for slot, k in enumerate(order):
        rows = slice(slot * h, (slot + 1) * h)
        assert torch.equal(model.encoder.in_proj.weight[rows], bank.enc_in_w[k])
        assert torch.equal(model.encoder.in_proj.bias[rows], bank.enc_in_b[k])
        assert torch.equal(model.encoder.out_w[slot], bank.enc_out_w[k])
        assert torch.equal(model.decoder.in_w[slot], bank.dec_in_w[k])
        assert torch.equal(model.decoder.out_proj.weight[:, rows], bank.dec_out_w[k])
        assert torch.equal(model.decoder.out_b[slot], bank.dec_out_b[k])
        assert torch.allclose(model.anchors[slot], bank.prototypes[k])
    # functionally: slot k of the container's encoder is battery k's encoder on unit-RMS patches
    x = patches(1, 6, seed=5)[0]  # (6, 3, 4, 4)
    frames = model.encoder(x.reshape(6, -1)).reshape(6, 3, -1)
    ref = bank.encode_frames(x.reshape(1, 6, -1).expand(5, 6, -1))
    for slot, k in enumerate(order):
        torch.testing.assert_close(frames[:, slot], ref[k], atol=1e-5, rtol=1e-5)
    # ... and the slot decoder with one-hot routing is battery k's decoder on the same frames
    m = torch.randn(6, 3 * 24)
    pre = model.decoder.pre_activation(m)
    for slot, k in enumerate(order):
        want = m[:, slot * 24 : (slot + 1) * 24] @ bank.dec_in_w[k].T + bank.dec_in_b[k]
        torch.testing.assert_close(pre[:, slot], want, atol=1e-5, rtol=1e-5)
        onehot = F.one_hot(torch.full((6,), slot), 3).float()
        out, _ = model.decoder(m, onehot)
        want_out = F.gelu(want) @ bank.dec_out_w[k].T + bank.dec_out_b[k]
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)


def test_implant_refuses_mismatched_banks():
    model = container_for(tiny_bank(3))
    with pytest.raises(ValueError, match="hidden"):
        model.implant(summarized(tiny_bank(3, hidden=4)))
    with pytest.raises(ValueError, match="pass indices"):
        model.implant(summarized(tiny_bank(4)))
    with pytest.raises(ValueError, match="unknown sector"):
        model.implant(summarized(tiny_bank(3)), sectors=("wings",))


def test_container_save_load(tmp_path):
    model = container_for(tiny_bank(3)).eval()
    x = images()
    model.save_pretrained(tmp_path / "c")
    loaded = load_model(tmp_path / "c")
    assert isinstance(loaded, BatteryContainer) and loaded.config == model.config
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))


def test_no_svd_or_eigh_in_the_container():
    model = container_for(summarized(tiny_bank(3)))
    model.implant(summarized(tiny_bank(3)))
    x = images()
    with _OpRecorder() as rec:
        out = model(x)
        out.loss.backward()
        model.reconstruct(x)
        model.sample_prior(1, 16, 16)
        LinearExport.from_container(model)(x)
    assert "addmm" in rec.names and ("linalg_det" in rec.names or "_linalg_det" in rec.names)
    assert not _forbidden(rec.names), _forbidden(rec.names)
    # positive control: the batteries themselves are SVD-trained
    with _OpRecorder() as rec:
        tiny_bank(2)(patches(2, 3)).loss.backward()
    assert _forbidden(rec.names)


# ----------------------------------------------------------------------------- the linear export
@pytest.mark.parametrize(
    ("routing", "n_cross", "merge"), [("soft", 2, None), ("topk", 0, None), ("soft", 0, True)]
)
def test_linear_export_matches_the_model(tmp_path, routing, n_cross, merge):
    model = container_for(tiny_bank(4), routing=routing, top_k=2, n_cross=n_cross)
    with torch.no_grad():  # move every parameter off its init (gain, LN affine, scale, biases)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    x = images(3)
    export = LinearExport.from_container(model, merge_mu_inverse=merge)
    assert export.merged_inverse == bool(merge)
    ref = model.reconstruct(x)
    got = export(x)
    assert float((ref - got).abs().max()) < 1e-5
    flops = count_flops(export, x)
    assert 0.5 < flops["linear_fraction"] <= 1.0 and flops["patches"] == 3 * 16
    names = {r["stage"] for r in flops["stages"]}
    assert "router ⊕ D_in: grouped Linear (gain, anchors folded)" in names
    path = export.save(tmp_path / "lin.safetensors")  # the single-file format
    assert torch.equal(LinearExport.load(path)(x), got)
    folder = export.save(tmp_path / "lin")  # a checkpoint folder like every model's
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    for again in (LinearExport.load(folder), LinearExport.from_pretrained(folder), load_model(folder)):
        assert isinstance(again, LinearExport) and again.merged_inverse == export.merged_inverse
        assert torch.equal(again.eval()(x), got)
    with pytest.raises(CheckpointError, match="not a pentachora linear export"):
        LinearExport.load(_write(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, None))
    if n_cross:
        with pytest.raises(ValueError, match="cannot be merged"):
            LinearExport.from_container(model, merge_mu_inverse=True)


# ----------------------------------------------------------------------------- CLI
def test_cli_batteries_container_export(tmp_path):
    runner = CliRunner()
    bank_file = tmp_path / "bank.safetensors"
    r = runner.invoke(
        app,
        ["train", "batteries", "--regimes", "noise-types:2+tiers:1", "--out", str(bank_file), "--steps", "3",
         "--batch-size", "4", "--patch-size", "4", "--rows", "5", "--dim", "4", "--hidden", "3",
         "--compare-loop", "1", "--threads", "1"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "3 batteries" in r.output and "batched" in r.output
    bank = BatteryBank.from_pretrained(bank_file)
    assert bank.n_batteries == 3 and bank.info[0]["regime"] == "noise-type:gaussian/r0"
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "container", "--layout", "routed", "--batteries", str(bank_file), "--data", "noise",
         "--steps", "2", "--batch-size", "2", "--image-size", "16", "--latent-dim", "7", "--out", str(run),
         "--set", "bottleneck_hidden=16", "--set", "inverse_hidden=16", "--noise-per-type", "1",
         "--eval-every", "0"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "implanted" in r.output and (run / "final" / "config.json").is_file()
    report = tmp_path / "export.json"
    r = runner.invoke(
        app,
        ["export-linear", str(run), "-o", str(tmp_path / "lin.safetensors"), "--image-size", "16",
         "--tiles", "2", "--json", str(report)],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert rep["max_abs_diff"] < 1e-4 and 0.5 < rep["linear_fraction"] <= 1
    assert math.isfinite(rep["flops_per_patch"])
    bad = runner.invoke(app, ["train", "container", "--batteries", str(tmp_path / "nope.safetensors")])
    assert bad.exit_code == 2 and "not found" in bad.output
    # the default layout: the batteries fold into a plain GeoVAE (spectral bottleneck on 8 batches)
    folded = tmp_path / "folded"
    r = runner.invoke(
        app,
        ["train", "container", "--batteries", str(bank_file), "--data", "noise", "--steps", "2",
         "--batch-size", "2", "--image-size", "16", "--latent-dim", "7", "--out", str(folded),
         "--set", "bottleneck_hidden=16", "--set", "inverse_hidden=16", "--noise-per-type", "1",
         "--eval-every", "0"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "folded BatteryContainer[K=3, implanted, spectral bottleneck" in r.output
    model = load_model(folded / "final")
    assert model.model_type == "geovae" and (model.config.V, model.config.enc_hidden) == (15, 9)
    r = runner.invoke(app, ["export-linear", str(folded), "--image-size", "16"])
    assert r.exit_code == 2 and "plain GeoVAE" in r.output
    r = runner.invoke(app, ["train", "container", "--batteries", str(bank_file), "--layout", "sideways"])
    assert r.exit_code == 2 and "sideways" in r.output


# ----------------------------------------------------------------------------- one definition per concept
def test_container_builds_through_geovae(monkeypatch):
    from pentachora.autoencoders.geovae import GeoVAE

    calls = []
    real = GeoVAE.__init__

    def spy(self, config):
        calls.append(type(self).__name__)
        real(self, config)

    monkeypatch.setattr(GeoVAE, "__init__", spy)
    model = container_for(tiny_bank(3))
    assert calls == ["BatteryContainer"]
    # the state-dict keys saved checkpoints hold (unchanged by the refactor)
    assert list(model.state_dict())[:6] == [
        "inverse_gain",
        "anchors",
        "route_logit_scale",
        "encoder.out_w",
        "encoder.out_b",
        "encoder.in_proj.weight",
    ]
    assert {k.split(".")[0] for k in model.state_dict()} == {
        "inverse_gain", "anchors", "route_logit_scale", "encoder", "bottleneck", "cross_attn", "inverse",
        "decoder", "smooth",
    }  # fmt: skip


def test_one_param_groups_hook_and_one_schedule():
    import inspect

    from pentachora.memory.model import GeometricMemory
    from pentachora.recipes import GEOVAE_ALIGN_WEIGHTS, geovae_schedule
    from pentachora.recipes.batteries import ALIGN_WEIGHTS, container_phases

    for cls in (BatteryBank, GeometricMemory):
        assert list(inspect.signature(cls.param_groups).parameters)[1:3] == ["lr", "weight_decay"]
    groups = tiny_bank(2).param_groups(1e-3, 0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.05), (1e-3, 0.0)]
    assert ALIGN_WEIGHTS is GEOVAE_ALIGN_WEIGHTS
    assert container_phases(200).phases == geovae_schedule(200).phases
    assert container_phases(200, 0.3).phases == geovae_schedule(200, align_fraction=0.3).phases


def test_moved_names_live_only_in_their_new_homes():
    """Version 0.1.0 has no users of the old paths: the forwarding shims are gone."""
    import pentachora.autoencoders.battery as battery
    import pentachora.autoencoders.container as container
    from pentachora.autoencoders import export
    from pentachora.data import regimes

    for name in ("REGIME_FORMS", "Regime", "RegimeKind", "RegimeSource", "parse_regimes", "unit_rms"):
        assert hasattr(regimes, name) and not hasattr(battery, name)
    for name in ("EXPORT_FORMAT", "LinearExport", "count_flops"):
        assert hasattr(export, name) and not hasattr(container, name)

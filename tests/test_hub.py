"""Contract tests of pentachora.hub: aligner, loss, experts, fusion, hub, paired features."""

from __future__ import annotations

import pytest
import torch

from pentachora.errors import ConfigError, DataError
from pentachora.geometry import orthogonal_procrustes, procrustes_alignment_loss
from pentachora.hub import (
    AlignerConfig,
    CallableExpert,
    ConduitHub,
    ConduitHubConfig,
    ExpertModule,
    FusionLayer,
    GeometricHubLoss,
    ProcrustesAligner,
    alignment_report,
)
from pentachora.hub.loss import midpoint_variance


def _orth(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _anisotropic(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 3.0


# ----------------------------------------------------------------------------- aligner
@pytest.mark.parametrize("whiten", [False, True])
def test_aligner_recovers_a_known_rotation_direct_case(whiten):
    a = _anisotropic(300, 12, 0)
    q = _orth(12, 1)
    b = a @ q + 5.0
    ref = ProcrustesAligner.fit_new(b, None, d_hub=12, whiten=whiten, shrinkage=0.0)
    src = ProcrustesAligner.fit_new(a, ref(b), d_hub=12, whiten=whiten, shrinkage=0.0)
    assert src.mode == "direct" and ref.mode == "direct"
    held_a = _anisotropic(50, 12, 7)
    torch.testing.assert_close(src(held_a), ref(held_a @ q + 5.0), atol=1e-4, rtol=1e-4)
    if not whiten:  # the rotation itself is recovered
        torch.testing.assert_close(src.rotation.double(), q, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("whiten", [False, True])
def test_aligner_recovers_a_known_embedding_zero_pad_up(whiten):
    # a 6-d expert isometrically embedded in a 10-d hub: B = A E with E (6 × 10) orthonormal rows
    a = _anisotropic(300, 6, 2)
    e = _orth(10, 3)[:6]
    b = a @ e
    ref = ProcrustesAligner.fit_new(b, None, d_hub=10, whiten=whiten, shrinkage=0.0)
    src = ProcrustesAligner.fit_new(a, ref(b), d_hub=10, whiten=whiten, shrinkage=0.0)
    assert src.mode == "pad" and src.rotation.shape == (6, 10)
    held = _anisotropic(40, 6, 9)
    # (float32 buffers; whitening B's rank-6 covariance in 10 dims amplifies round-off a little)
    torch.testing.assert_close(src(held), ref(held @ e), atol=2e-3 if whiten else 1e-4, rtol=1e-3)
    rot = src.rotation.double()
    torch.testing.assert_close(rot @ rot.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("whiten", [False, True])
def test_aligner_recovers_a_known_embedding_pca_down(whiten):
    # a 16-d expert whose content lives in 8 dims (A = Z E), the hub is 8-d: B = Z Q
    z = _anisotropic(400, 8, 4)
    e = _orth(16, 5)[:8]
    q = _orth(8, 6)
    a, b = z @ e, z @ q
    ref = ProcrustesAligner.fit_new(b, None, d_hub=8, whiten=whiten, shrinkage=0.0)
    src = ProcrustesAligner.fit_new(a, ref(b), d_hub=8, whiten=whiten, shrinkage=0.0)
    assert src.mode == "pca" and src.basis.shape == (16, 8)
    held = _anisotropic(40, 8, 10)
    torch.testing.assert_close(src(held @ e), ref(held @ q), atol=1e-4, rtol=1e-4)


def test_procrustes_small_n_path_equals_full_path():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 64, generator=g, dtype=torch.float64)
    b = torch.randn(20, 48, generator=g, dtype=torch.float64)
    full = orthogonal_procrustes(a, b, method="full")
    small = orthogonal_procrustes(a, b, method="small_n")
    torch.testing.assert_close(full.apply(a), small.apply(a), atol=1e-9, rtol=1e-9)
    # the loss's QR (N < D) path equals the SVD of the full cross-covariance, values and gradients
    x = torch.randn(10, 32, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, 24, generator=g, dtype=torch.float64)
    small_loss = procrustes_alignment_loss(x, y)
    (gs,) = torch.autograd.grad(small_loss, x)
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    xn, yn = xn - xn.mean(0), yn - yn.mean(0)
    full_loss = 1 - torch.linalg.svdvals(xn.T @ yn).sum() / (xn.norm() * yn.norm())
    (gf,) = torch.autograd.grad(full_loss, x)
    torch.testing.assert_close(small_loss, full_loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gs, gf, atol=1e-8, rtol=1e-6)


def test_shrinkage_keeps_unrelated_random_data_near_the_floor_on_heldout():
    # DESIGN.md §4: random 128-d vs 96-d data at N=256 — plain whitening overfits the fit set
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 128, generator=g), torch.randn(512, 96, generator=g)
    fit, held = slice(0, 256), slice(256, 512)
    reports = {}
    for lam in (0.0, 0.5):
        ref = ProcrustesAligner.fit_new(b[fit], None, d_hub=96, shrinkage=lam)
        src = ProcrustesAligner.fit_new(a[fit], ref(b[fit]), d_hub=96, shrinkage=lam)
        reports[lam] = (
            alignment_report(src(a[fit]), ref(b[fit])),
            src.report(a[held], ref(b[held])),
        )
    fit0, held0 = reports[0.0]
    fit5, held5 = reports[0.5]
    assert fit0.lift > 0.5  # whitened Procrustes = CCA: a strong spurious fit-set alignment
    assert fit5.lift < fit0.lift  # shrinkage damps it
    for rep in (held0, held5):  # held out: at the floor
        assert abs(rep.lift) < 0.05
        assert rep.r1 <= 5 / 256 and rep.chance_r1 == 1 / 256


def test_aligner_save_load_is_exact(tmp_path):
    a = _anisotropic(100, 20, 0).float()
    b = _anisotropic(100, 12, 1).float()
    ref = ProcrustesAligner.fit_new(b, None, d_hub=12, shrinkage=0.3)
    src = ProcrustesAligner.fit_new(a, ref(b), d_hub=12, shrinkage=0.3, rank=8)
    src.save_pretrained(tmp_path / "al")
    back = ProcrustesAligner.from_pretrained(tmp_path / "al")
    assert back.config == src.config and back.is_fitted
    for k, v in src.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert torch.equal(src(a), back(a))
    assert int((back.basis.abs().sum(0) > 0).sum()) == 8  # rank truncation kept 8 directions


def test_aligner_bad_input_is_a_clear_error():
    a = torch.randn(50, 8)
    with pytest.raises(DataError, match="same items"):
        ProcrustesAligner.fit_new(a, torch.randn(49, 8))
    bad = a.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        ProcrustesAligner.fit_new(bad)
    al = ProcrustesAligner.fit_new(a)
    with pytest.raises(DataError, match="fitted on 8-d"):
        al(torch.randn(4, 9))
    with pytest.raises(DataError, match="not fitted"):
        ProcrustesAligner(AlignerConfig(d_in=8, d_hub=8))(a)
    with pytest.raises(ConfigError):
        AlignerConfig(d_in=8, d_hub=4, rank=5)


# ----------------------------------------------------------------------------- loss
def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_loss_is_symmetric_under_swapping_the_pair():
    loss = GeometricHubLoss(w_midpoint=0.5, w_procrustes=0.5)
    za, zb = _unit(16, 8, 0), _unit(16, 8, 1)
    one = loss({"a": za, "b": zb}, [("a", "b")], generator=torch.Generator().manual_seed(0))
    two = loss({"a": za, "b": zb}, [("b", "a")], generator=torch.Generator().manual_seed(0))
    for k in ("loss", "nce", "midpoint", "procrustes"):
        torch.testing.assert_close(getattr(one, k), getattr(two, k))
    assert one.nce > 0 and one.midpoint > 0 and one.procrustes > 0


def test_loss_terms_have_the_right_gradients():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: procrustes_alignment_loss(x, b), (a,))

    def mid(x):
        return midpoint_variance(x, b, 16, torch.Generator().manual_seed(1))[0]

    assert torch.autograd.gradcheck(mid, (a,))


def test_loss_learned_temperature_moves_and_is_clamped():
    loss = GeometricHubLoss(tau_init=0.07, tau_min=0.05)
    za, zb = _unit(16, 8, 0), _unit(16, 8, 1)
    out = loss({"a": za, "b": zb}, [("a", "b")])
    out.loss.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)
    assert loss.temperature == pytest.approx(0.05)


# ----------------------------------------------------------------------------- hub
def _toy_pooled(n=120, seed=0, dims=(24, 16, 8)):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    return {
        name: z @ torch.randn(6, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)
        for name, d in zip(("a", "b", "c"), dims, strict=True)
    }


def _toy_batch(pooled, b=16, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in pooled.items():
        f = v[:b, None, :].repeat(1, t, 1) + 0.1 * torch.randn(b, t, v.shape[1], generator=g)
        m = torch.ones(b, t, dtype=torch.bool)
        m[::2, -1] = False  # variable lengths
        out[k] = {"features": f, "mask": m}
    return out


def _toy_hub(**kw):
    torch.manual_seed(0)
    cfg = ConduitHubConfig(experts=("a", "b", "c"), expert_dims=(24, 16, 8), d_hub=16, n_heads=2, **kw)
    hub = ConduitHub(cfg)
    pooled = _toy_pooled()
    modes = hub.fit_aligners(pooled)
    return hub, pooled, modes


def test_hub_fits_all_three_aligner_cases_and_reports_every_term():
    hub, pooled, modes = _toy_hub()
    assert modes == {"b": "reference (direct)", "a": "pca", "c": "pad", "proj_init": "identity"}
    out = hub(_toy_batch(pooled))
    s = out.scalars()
    for k in ("loss", "nce", "midpoint", "procrustes", "midpoint_cv", "temperature", "cv_target"):
        assert k in s and s[k] == s[k]
    assert set(out.parts) == {
        f"{t}[{p}]" for t in ("nce", "midpoint", "procrustes") for p in ("a|b", "a|c", "b|c")
    }
    assert out.embeddings["a"].shape == (16, 16)
    torch.testing.assert_close(out.embeddings["a"].norm(dim=-1), torch.ones(16))


@pytest.mark.parametrize("readout", ["anchored", "fusion"])
def test_gradients_reach_every_trainable_part_and_frozen_parts_get_none(readout):
    # a non-zero gate: at gate 0 the fusion's gradient is exactly zero (tested below)
    hub, pooled, _ = _toy_hub(dropout=0.0, readout=readout, gate_init=0.5)
    frozen = torch.nn.Linear(5, 24)  # a frozen "encoder" in front of expert a
    enc = CallableExpert(lambda x: (frozen(x), torch.ones(x.shape[:2], dtype=torch.bool)), 24, "lin")
    hub.attach({"a": enc})
    batch = _toy_batch(pooled)
    za = hub.encode("a", torch.randn(16, 3, 5))
    out = hub(batch)
    (out.loss + za.sum()).backward()
    for part, params in hub.trainable_parts().items():
        assert params, part
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, part
    assert all(p.grad is None for p in frozen.parameters())
    for name, buf in hub.named_buffers():
        assert not buf.requires_grad, name
    assert not any("_encoder" in k or k.startswith("experts.a.fn") for k in hub.state_dict())


def test_anchored_readout_starts_exactly_at_the_frozen_aligners():
    hub, pooled, _ = _toy_hub(dropout=0.0)  # readout="anchored", gate_init=0
    batch = _toy_batch(pooled)
    out = hub(batch)
    for name, entry in batch.items():
        m = entry["mask"].float()[..., None]
        mean = (entry["features"] * m).sum(1) / m.sum(1)
        want = torch.nn.functional.normalize(hub.experts[name].aligner(mean), dim=-1)
        torch.testing.assert_close(out.embeddings[name], want, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert hub.readout_gate.grad is not None and hub.readout_gate.grad.abs().min() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in hub.fusion.parameters())
    with pytest.raises(ConfigError, match="readout"):
        ConduitHubConfig(readout="sum")


def test_gcca_projection_init_starts_every_expert_in_one_shared_space():
    from pentachora.geometry import generalized_cca

    hub, pooled, modes = _toy_hub(dropout=0.0, proj_init="gcca")
    assert modes["proj_init"].startswith("gcca")
    aligned = [hub.experts[n].aligner(pooled[n]).double() for n in ("a", "b", "c")]
    maps = generalized_cca(aligned, k=16).maps
    batch = _toy_batch(pooled)
    out = hub(batch)
    for name, m in zip(("a", "b", "c"), maps, strict=True):
        mask = batch[name]["mask"].float()[..., None]
        mean = (batch[name]["features"] * mask).sum(1) / mask.sum(1)
        want = torch.nn.functional.normalize(hub.experts[name].aligner(mean).double() @ m, dim=-1)
        torch.testing.assert_close(out.embeddings[name].double(), want, atol=1e-4, rtol=1e-4)
    # experts paired on different items (the emergent run) cannot share one GCCA: identity, and said so
    hub2 = ConduitHub(hub.config)
    items = {"a": torch.arange(0, 40), "c": torch.arange(40, 80)}
    assert hub2.fit_aligners(pooled, items)["proj_init"].startswith("identity (gcca needs")


def test_fusion_block_mask_keeps_each_readout_to_its_own_expert():
    hub, pooled, _ = _toy_hub(dropout=0.0, gate_init=1.0)  # gate 0 would hide the fusion entirely
    hub.eval()
    batch = _toy_batch(pooled)
    together = hub.embed_many(batch)
    for name in ("a", "b", "c"):
        alone = hub.embed(name, batch[name]["features"], batch[name]["mask"])
        torch.testing.assert_close(together[name], alone, atol=1e-5, rtol=1e-5)
    fused = hub.embed_many(batch, cross_expert=True)
    assert not torch.allclose(fused["a"], together["a"], atol=1e-3)


def test_fusion_layer_reads_identity_positions():
    layer = FusionLayer(8, n_heads=2)
    toks = [torch.randn(3, 2, 8), torch.randn(3, 4, 8)]
    outs = layer(toks)
    assert [o.shape for o in outs] == [(3, 8), (3, 8)]


def test_hub_save_load_is_exact(tmp_path):
    hub, pooled, _ = _toy_hub()
    hub.eval()
    batch = _toy_batch(pooled)
    before = hub.embed_many(batch)
    hub.save_pretrained(tmp_path / "hub")
    back = ConduitHub.from_pretrained(tmp_path / "hub").eval()
    assert back.aligners_fitted
    after = back.embed_many(batch)
    for k in before:
        assert torch.equal(before[k], after[k])
    from pentachora.recipes import load_model

    assert isinstance(load_model(tmp_path / "hub"), ConduitHub)


def test_hub_bad_input_is_a_clear_error():
    hub, pooled, _ = _toy_hub()
    with pytest.raises(DataError, match="row counts differ"):
        ConduitHub(hub.config).fit_aligners({**pooled, "c": pooled["c"][:-1]})
    bad = {k: v.clone() for k, v in pooled.items()}
    bad["b"][0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN/inf"):
        ConduitHub(hub.config).fit_aligners(bad)
    with pytest.raises(DataError, match="not fitted"):
        ConduitHub(hub.config)(_toy_batch(pooled))
    batch = _toy_batch(pooled)
    with pytest.raises(DataError, match=r"\(B, T, 24\)"):
        hub.embed("a", torch.randn(2, 3, 23))
    batch["a"]["features"][0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        hub(batch)
    with pytest.raises(ConfigError, match="unknown expert"):
        ConduitHubConfig(experts=("a", "b"), expert_dims=(4, 4), pairs=("a|z",))


def test_emergent_pairs_train_only_what_is_asked():
    hub, pooled, _ = _toy_hub(pairs=("a|b", "b|c"), reference="b")
    out = hub(_toy_batch(pooled))
    assert not any("a|c" in k for k in out.parts)
    half = _toy_batch({k: pooled[k] for k in ("a", "b")})
    assert set(hub(half).parts) == {"nce[a|b]", "midpoint[a|b]", "procrustes[a|b]"}


# ----------------------------------------------------------------------------- Hugging Face experts
def _tiny_hf_models():
    import transformers as tf

    torch.manual_seed(0)
    return {
        "dinov2": (
            tf.Dinov2Model(tf.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)),
            {"pixel_values": torch.randn(2, 3, 28, 28)},
        ),
        "clip-vision": (
            tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)),
            {"pixel_values": torch.randn(2, 3, 28, 28)},
        ),
        "whisper": (
            tf.WhisperModel(tf.WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=20, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
            {"input_features": torch.randn(2, 16, 40)},
        ),
        "modernbert": (
            tf.ModernBertModel(tf.ModernBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100, pad_token_id=0)),
            {"input_ids": torch.randint(1, 100, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])},
        ),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["dinov2", "clip-vision", "whisper", "modernbert"])
def test_hf_experts_plug_into_the_hub_through_the_same_expert_module(kind):
    from pentachora.hub import HFExpert

    model, inputs = _tiny_hf_models()[kind]
    expert = HFExpert(model, name=kind)
    assert expert.dim == 32
    feats, mask = expert(inputs)
    assert feats.shape[0] == 2 and feats.shape[-1] == 32 and mask.dtype == torch.bool
    if kind == "modernbert":
        assert mask[1].sum() == 4
    module = ExpertModule(kind, 32, 16, n_tokens=3, n_heads=2)
    module.aligner.fit(torch.randn(40, 32))
    module.attach(expert)
    tokens = module.encode(inputs)
    assert tokens.shape == (2, 4, 16)
    tokens.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in expert.parameters())
    assert module.queries.grad is not None
    assert not any(k.startswith("_encoder") for k in module.state_dict())


def test_hf_expert_not_available_offline_says_how_to_get_it(tmp_path, monkeypatch):
    from pentachora.hub import HFExpert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="huggingface-cli download facebook/dinov2-small"):
        HFExpert.from_pretrained("facebook/dinov2-small")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_expert_module_width_mismatch_with_encoder_is_a_config_error():
    module = ExpertModule("x", 8, 8, n_heads=2)
    enc = CallableExpert(lambda x: (x, torch.ones(x.shape[:2], dtype=torch.bool)), 9, "nine")
    with pytest.raises(ConfigError, match="9-d"):
        module.attach(enc)


# ----------------------------------------------------------------------------- paired features
def _paired(n=30, seed=0):
    from pentachora.data.paired import PairedFeatures

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5, (n,), generator=g)
    offs = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    return PairedFeatures(
        {"a": torch.randn(int(lens.sum()), 6, generator=g), "b": torch.randn(n, 4, generator=g)},
        {"a": offs, "b": torch.arange(n + 1)},
        [f"doc{i // 3}" for i in range(n)],
        [f"h{i}" for i in range(n)],
    )


def test_paired_features_round_trip_batches_and_checks(tmp_path):
    from pentachora.data.paired import PairedBatchSource, PairedFeatures, leakage_check

    pf = _paired()
    pf.save(tmp_path / "f.safetensors")
    back = PairedFeatures.load(tmp_path / "f.safetensors")
    assert back.titles == pf.titles and back.n == 30
    torch.testing.assert_close(back.pooled("a"), pf.pooled("a"), atol=1e-2, rtol=1e-2)  # float16 on disk
    src = PairedBatchSource(back, 8, seed=3)
    b1, b2 = src.batch(5), src.batch(5)
    assert torch.equal(b1["index"], b2["index"]) and not torch.equal(b1["index"], src.batch(6)["index"])
    assert b1["a"]["features"].shape[:1] == (8,) and b1["a"]["mask"].any(1).all()
    i = int(b1["index"][0])
    n_tok = int(pf.offsets["a"][i + 1] - pf.offsets["a"][i])
    assert int(b1["a"]["mask"][0].sum()) == n_tok
    assert leakage_check(pf.subset(range(0, 15)), pf.subset(range(15, 30)))["shared_titles"] == 0
    assert leakage_check(pf.subset(range(0, 16)), pf.subset(range(15, 30)))["shared_items"] == 1


def test_paired_features_bad_input():
    from pentachora.data.paired import PairedFeatures, extract_paired_features

    pf = _paired()
    with pytest.raises(DataError, match="item counts differ"):
        PairedFeatures(
            {"a": pf.tokens["a"], "b": pf.tokens["b"][:-1]}, {"a": pf.offsets["a"], "b": torch.arange(30)}
        )
    bad = pf.tokens["b"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        PairedFeatures({"b": bad}, {"b": pf.offsets["b"]})

    def nan_expert(texts):
        return [torch.full((2, 3), float("nan")) for _ in texts]

    with pytest.raises(DataError, match="NaN/inf"):
        extract_paired_features(["x", "y"], {"bad": nan_expert})
    with pytest.raises(DataError, match="returned 1 items"):
        extract_paired_features(["x", "y"], {"short": lambda t: [torch.zeros(1, 3)]})


def test_token_dropout_keeps_a_token_per_item_and_is_off_in_eval():
    hub, pooled, _ = _toy_hub(dropout=0.0, token_dropout=0.9, gate_init=1.0)
    batch = _toy_batch(pooled, t=4)
    batch["a"]["mask"][:, 1:] = False  # items with one real token must keep it
    hub.train()
    torch.manual_seed(0)
    out = hub(batch)
    assert torch.isfinite(out.loss)
    hub.eval()
    first, second = hub.embed_many(batch), hub.embed_many(batch)
    for name in first:
        torch.testing.assert_close(first[name], second[name])
    with pytest.raises(ConfigError, match="token_dropout"):
        _toy_hub(token_dropout=1.0)


def test_lsa_with_fewer_documents_than_its_width_is_a_clear_error():
    from pentachora.hub.text_experts import LSAExpert

    docs = [f"document {i} about topic {i % 3} and words" for i in range(10)]
    with pytest.raises(ConfigError, match="needs more than 16 training documents"):
        LSAExpert(dim=16).fit(docs)


# ----------------------------------------------------------------------------- the hub learns
def _related_paired(n: int, seed: int, dims=(24, 16, 8)):
    """Three experts that see one shared 6-d latent through different maps and noise; one token each
    plus a noisy second token for the first expert (variable lengths)."""
    from pentachora.data.paired import PairedFeatures

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed + 100))
    maps = [torch.randn(6, d, generator=torch.Generator().manual_seed(7 + i)) for i, d in enumerate(dims)]
    feats, offs = {}, {}
    for (name, d), m in zip(zip(("a", "b", "c"), dims, strict=True), maps, strict=True):
        pooled = torch.tanh(z @ m) + 0.3 * torch.randn(n, d, generator=g)
        if name == "a":
            second = pooled + 0.3 * torch.randn(n, d, generator=g)
            feats[name] = torch.stack([pooled, second], 1).reshape(2 * n, d)
            offs[name] = torch.arange(0, 2 * n + 1, 2)
        else:
            feats[name], offs[name] = pooled, torch.arange(n + 1)
    return PairedFeatures(
        feats, offs, [f"doc{seed}-{i}" for i in range(n)], [f"h{seed}-{i}" for i in range(n)]
    )


def test_the_hub_learns_held_out_pairs_far_above_chance():
    from pentachora.data.paired import PairedBatchSource
    from pentachora.recipes.hub import evaluate_hub
    from pentachora.training import TrainConfig, Trainer

    train, held = _related_paired(256, seed=0), _related_paired(128, seed=1)
    torch.manual_seed(0)
    hub = ConduitHub(ConduitHubConfig(experts=("a", "b", "c"), expert_dims=(24, 16, 8), d_hub=16, n_heads=2))
    hub.fit_aligners({n: train.pooled(n) for n in ("a", "b", "c")})
    before = evaluate_hub(hub, held)["mean_r1"]
    cfg = TrainConfig(steps=60, batch_size=64, lr=3e-3, progress=False, tensorboard=False, seed=0)
    Trainer(hub, cfg, PairedBatchSource(train, 64, seed=0)).fit()
    after = evaluate_hub(hub.eval(), held)
    chance = 1 / 128
    # learned, not just aligned: well above chance and the shuffled floor, and better than the aligners alone
    assert after["mean_r1"] > 20 * chance, after["mean_r1"]
    assert all(p["r1"] > 5 * p["r1_shuffled"] + 0.05 for p in after["pairs"].values()), after["pairs"]
    assert after["mean_r1"] > before + 0.05, (before, after["mean_r1"])

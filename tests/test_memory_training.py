"""Training the memory through the shared Trainer (joint and two-phase), the CLI, on tiny encoders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pentachora.cli import app
from pentachora.memory import GeometricMemory, MemoryConfig
from pentachora.recipes.memory import (
    baseline_outputs,
    evaluate_memory,
    mode_callbacks,
    prepare_memory_data,
    resolve_config,
    train_memory,
)
from pentachora.training import Callback, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread", "offline")

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(30):
        n_words = 20 + 12 * (i % 9)
        words = [
            "".join(LETTERS[int(k)] for k in torch.randint(0, 26, (4,), generator=g)) for _ in range(n_words)
        ]
        docs.append(" ".join(words) + ".")
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(docs))
    return path


def tiny(**kw) -> MemoryConfig:
    base = dict(
        encoder="tiny-bert",
        teacher="tiny-bert",
        extraction_layers=(1, 2),
        dim=32,
        n_heads=4,
        n_anchors=16,
        ffn_mult=2,
        cv_samples=16,
        max_tokens=300,
    )
    base.update(kw)
    config, _, _ = resolve_config(MemoryConfig(**base))
    return config


class Snapshots(Callback):
    def __init__(self):
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.bank_lr: dict[int, float] = {}
        self.recon_lr: dict[int, float] = {}

    def on_step_end(self, trainer, step, output_scalars):
        m = trainer.unwrapped_model
        self.params[step] = {k: v.detach().clone() for k, v in m.named_parameters()}
        for g in trainer.optimizer.param_groups:
            (self.bank_lr if g["bank"] else self.recon_lr)[step] = g["lr"]


def _changed(a, b, prefix):
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_two_phase_freezes_and_differential_lrs(tmp_path, corpus_file):
    config = tiny()
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    model = GeometricMemory(config)
    snaps = Snapshots()
    cfg = TrainConfig(
        steps=10, batch_size=4, lr=1e-3, lr_schedule="constant", out_dir=str(tmp_path / "run"),
        eval_every=5, progress=False, tensorboard=False,
    )  # fmt: skip
    run = train_memory(model, data, cfg, mode="two-phase", bank_lr_scale=0.1, callbacks=[snaps])
    p = snaps.params
    # stage A (steps 1-4): bank trains, the reconstructor is frozen
    assert _changed(p[1], p[4], "bank.") and not _changed(p[1], p[4], "reconstructor.")
    # stage B (5-7): the bank is frozen, the reconstructor trains
    assert not _changed(p[4], p[7], "bank.") and not _changed(p[4], p[7], "fusion.")
    assert _changed(p[4], p[7], "reconstructor.")
    # stage C (8-10): everything trains, the bank at a tenth of the LR
    assert _changed(p[7], p[10], "bank.") and _changed(p[7], p[10], "reconstructor.")
    assert snaps.bank_lr[9] == pytest.approx(1e-4) and snaps.recon_lr[9] == pytest.approx(1e-3)
    assert snaps.bank_lr[3] == pytest.approx(1e-3)
    for key in ("m_acc", "s_cos", "pooled_cos", "cv", "tail_r1", "seq_tail_r1", "teacher_r1"):
        assert key in run.evaluation
    conv = json.loads((tmp_path / "run" / "convergence.json").read_text())
    assert conv["evaluations"] == 2 and "order" in conv
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_joint_training_learns_and_baselines_are_consistent(tmp_path, corpus_file):
    config = tiny(seq_norm_weight=0.0)
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    model = GeometricMemory(config)
    before = evaluate_memory(model, data.train)
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=5, progress=False, tensorboard=False)
    run = train_memory(model, data, cfg, mode="joint")
    after = evaluate_memory(run.model, data.train)
    assert after["s_cos"] > before["s_cos"] + 0.05
    assert after["teacher_r1"] > before["teacher_r1"] + 0.1
    assert after["pooled_cos"] > before["pooled_cos"] + 0.1
    base = baseline_outputs(data.heldout)
    n = data.heldout.n_docs
    assert base["truncate"]["pooled"].shape == (n, 32) and base["window_mean"]["seq_mean"] is None
    # one-segment documents: all three baselines coincide
    one = data.heldout.tensors["seg_counts"] == 1
    if one.any():
        torch.testing.assert_close(base["truncate"]["pooled"][one], base["window_mean"]["pooled"][one])
    with pytest.raises(ValueError):
        mode_callbacks("sideways", 10)
    phase, lr = mode_callbacks("two-phase", 10, pretrained_bank=True)  # a trained bank: B then C
    assert [start for start, _ in phase.phases] == [1, 6] and lr.phases == [(0, 1.0), (6, 0.1)]
    assert mode_callbacks("joint", 10) == [] and len(mode_callbacks("pooled", 10)) == 1
    # freeze lists name only the parts a model has (a model without contextual chunks has no chunker)
    (pooled,) = mode_callbacks("pooled", 10, parameter_names=["bank.x", "reconstructor.y"])
    assert pooled.phases[0][1]["freeze"] == ["reconstructor."]
    (pooled,) = mode_callbacks("pooled", 10, parameter_names=["bank.x", "reconstructor.y", "chunker.z"])
    assert pooled.phases[0][1]["freeze"] == ["reconstructor.", "chunker."]


def test_bf16_autocast_steps_stay_finite(tmp_path, corpus_file):
    config = tiny()
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=3, batch_size=4, mixed_precision="bf16", progress=False, tensorboard=False)
    model = GeometricMemory(config)
    seen: list[torch.dtype] = []  # the dtype the fusion projection computes in, per training forward
    model.fusion.proj.register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype) if model.training else None
    )
    run = train_memory(model, data, cfg, periodic_eval_docs=4)
    assert run.result.nonfinite_steps == 0 and run.model.fusion.proj.weight.dtype == torch.float32
    assert seen.count(torch.bfloat16) >= 3  # autocast was on in every training step, not silently off


def test_cli_train_encode_eval(tmp_path, corpus_file):
    runner = CliRunner()
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    common = ["--set", "encoder=tiny-bert", "--set", "teacher=tiny-bert", "--set", "extraction_layers=[1,2]"]
    common += ["--set", "dim=32", "--set", "n_heads=4", "--set", "n_anchors=16", "--set", "cv_samples=16"]
    res = runner.invoke(app, ["train", "memory", "--steps", "0", *common], catch_exceptions=False)
    assert res.exit_code == 0 and "trainable parameters" in res.output
    args = ["train", "memory", "--data", f"text:{corpus_file}", "--steps", "4", "--batch-size", "4"]
    args += ["--eval-every", "2", "--out", str(out), "--cache-dir", str(cache), *common]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "tail R@1" in res.output and "convergence order" in res.output
    target = tmp_path / "prompt.safetensors"
    long_prompt = " ".join(["abcd efgh ijkl"] * 40)
    res = runner.invoke(app, ["encode", long_prompt, "short one", "--model", str(out), "-o", str(target)])
    assert res.exit_code == 0, res.output
    tensors = load_file(str(target))
    assert tensors["pooled"].shape == (2, 32) and tensors["sequence"].shape == (2, 77, 32)
    assert tensors["n_segments"].tolist()[1] == 1 and tensors["n_segments"].tolist()[0] > 1
    res = runner.invoke(app, ["encode", "", "--model", str(out), "-o", str(target)])
    assert res.exit_code == 2 and "empty" in res.output
    js = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "eval-memory",
            str(out),
            "--data",
            f"text:{corpus_file}",
            "--cache-dir",
            str(cache),
            "--json",
            str(js),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(js.read_text())
    assert set(metrics) == {"truncate", "window_mean", "concat", "memory"}
    assert metrics["truncate"]["s_cos"] == 1.0


def test_residual_chunk_model_trains_and_its_metrics(tmp_path, corpus_file):
    from pentachora.recipes.memory import concat_chunk_metrics, evaluate_chunks, loss_gradient_norms

    config = tiny(
        sequence_mode="residual", contextual_chunks=True, native_state_index=-1, seq_pool_weight=1.0
    )
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    torch.manual_seed(0)
    model = GeometricMemory(config)
    before = evaluate_chunks(model, data.heldout)
    concat = concat_chunk_metrics(data.heldout)
    # an untrained chunk model is plain concatenation (zero-initialised residual)
    assert before["window_s_cos"] == pytest.approx(1.0, abs=1e-4)
    assert before["cross_window_r1"] == pytest.approx(concat["cross_window_r1"], abs=1e-6)
    assert evaluate_memory(model, data.heldout)["s_cos"] == pytest.approx(1.0, abs=1e-4)
    batch = data.train.batch(torch.arange(8))
    norms = loss_gradient_norms(model, batch)
    assert {"infonce", "seq_pool", "chunk_ctx", "cv_loss"} <= set(norms)
    assert all(math.isfinite(v) and v >= 0 for v in norms.values())
    cfg = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, progress=False, tensorboard=False)
    run = train_memory(model, data, cfg, mode="joint")
    after = evaluate_chunks(run.model, data.heldout)
    # trained, and trained toward its claim: the chunks now know the other windows (concatenation's
    # zero-initialised start knows none) while each chunk stays close to its native window
    assert after["cross_window_r1"] > before["cross_window_r1"], (before, after)
    assert 0.95 < after["window_s_cos"] < 1.0
    assert 0.0 <= after["whole_r1"] <= 1.0 and "first_window_tail_r1" in after


def test_long_prompt_suite_helpers_on_a_tiny_cache(tmp_path, corpus_file):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("bench_memory_long", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = tiny(sequence_mode="residual", native_state_index=-1)
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    curve = bench.mean_shift_curve(data.heldout, scales=(0.0, 1.0))
    assert curve[0]["s_cos"] == pytest.approx(1.0, abs=1e-4)  # λ = 0 is truncation
    assert curve[1]["s_cos"] < 1.0
    torch.manual_seed(0)
    model = GeometricMemory(config)
    model.attach_encoder(data.encoder)
    rows = bench.short_prompt_buckets(model, data.encoder, data.corpus.heldout, n_docs=4)
    assert [r["bucket"] for r in rows][:3] == ["8-20", "21-50", "51-75"]
    assert all(r["s_cos"] == pytest.approx(1.0, abs=1e-4) for r in rows)  # untrained residual = native


def test_evaluation_reads_the_sequence_the_model_outputs_and_the_probe_helpers(tmp_path, corpus_file):
    """memory_outputs (every benchmark number) must see the same 77 positions as forward — mean shift
    included — and the suite's probe helpers run on a real cache."""
    import importlib.util
    from pathlib import Path

    from pentachora.recipes.memory import memory_outputs

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("bench_memory_probe", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = tiny(sequence_mode="residual", native_state_index=-1, mean_shift=0.75)
    data = prepare_memory_data(config, f"text:{corpus_file}", cache_root=tmp_path / "cache", progress=False)
    held = data.heldout
    torch.manual_seed(0)
    model = GeometricMemory(config).eval()
    outs = memory_outputs(model, held, keep_sequences=True)
    with torch.no_grad():
        ref = model(held.batch(torch.arange(held.n_docs), with_targets=False)).sequence
    torch.testing.assert_close(outs["sequence"], ref, atol=1e-5, rtol=1e-5)
    assert outs["sequence_mean"].shape == (held.n_docs, config.hidden_size)
    point = bench.sequence_point(model, held, scale=0.0)
    assert point["s_cos"] == pytest.approx(1.0, abs=1e-4) and model.residual_scale == 1.0  # restored
    seqs, mask = bench.concat_sequences(held, -1)
    counts = (held.seg_offsets[1:] - held.seg_offsets[:-1]).tolist()
    assert seqs.shape[1] == 77 * max(counts) and mask.sum(1).tolist() == [
        int(held.tensors["attention_mask"][int(a) : int(b)].sum())
        for a, b in zip(held.seg_offsets[:-1], held.seg_offsets[1:], strict=True)
    ]
    r1 = bench.probe_tail_r1(held, seqs, mask)
    assert math.isnan(r1) or 0.0 <= r1 <= 1.0

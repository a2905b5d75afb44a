"""The miniature text-to-image model, its reader and pipeline: contracts on tiny configs.

Slow trainings (the reader to ≥ 99 %, the ceiling run) are behind the ``slow`` marker in
``tests/test_slow.py``; these run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pentachora.data.scenes import ScenePool, ScenePoolSource, SceneRenderSource, SceneWorld
from pentachora.errors import CheckpointError, ConfigError, DataError

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread", "offline")

from pentachora.t2i import MiniT2I, MiniT2IConfig, SceneReader, SceneReaderConfig  # noqa: E402
from pentachora.training import TrainConfig, Trainer  # noqa: E402


def tiny_t2i(seed: int = 0, **overrides) -> MiniT2I:
    torch.manual_seed(seed)
    model = MiniT2I(MiniT2IConfig.preset("tiny", **overrides))
    model.set_null_embedding(
        torch.randn(77, model.config.cross_attention_dim, generator=torch.Generator().manual_seed(9))
    )
    return model


def random_pool(n: int = 8, width: int = 384) -> ScenePool:
    g = torch.Generator().manual_seed(0)
    return ScenePool(
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randn(n, 77, width, generator=g).half(),
        torch.zeros(n, 9, dtype=torch.long),
        [f"caption {i}" for i in range(n)],
    )


# ============================================================================================ model
def test_forward_backward_and_loss_is_the_denoising_mse():
    model = tiny_t2i()
    batch = ScenePoolSource(random_pool(), 4).batch(1)
    torch.manual_seed(3)
    out = model(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and 0 <= out.dropped_fraction <= 1
    out.loss.backward()
    grads = [p.grad for p in model.unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert model.null_embedding.grad is None  # the empty prompt is a buffer, not trained


def test_cross_attention_reads_the_conditioning():
    model = tiny_t2i()
    x = torch.randn(2, 12, 16, 16)
    t = torch.tensor([500, 500])
    a = model.denoise(x, t, torch.randn(2, 77, 384))
    b = model.denoise(x, t, torch.randn(2, 77, 384))
    assert not torch.allclose(a, b)


def test_text_adapter_starts_as_identity_and_stays_inside_its_window():
    from pentachora.t2i.model import TokenConvAdapter

    torch.manual_seed(0)
    adapter = TokenConvAdapter(dim=16, width=8, kernel=9, window=77)
    x = torch.randn(2, 154, 16)
    assert torch.equal(adapter(x), x)  # zero-initialised output: the identity
    torch.nn.init.normal_(adapter.out.weight)
    y = adapter(x)
    assert not torch.allclose(y, x)
    x2 = x.clone()
    x2[:, 80:] += 1.0  # change only the second window
    torch.testing.assert_close(adapter(x2)[:, :77], y[:, :77])  # the first window does not see it
    torch.testing.assert_close(adapter(x[:, :77]), y[:, :77])  # a window reads alike alone or concatenated


def test_pooled_text_pools_each_window_so_tiling_changes_nothing():
    model = tiny_t2i()
    emb = model.unet.add_embedding
    states = torch.randn(2, 77, 384)
    one = emb(states)
    torch.testing.assert_close(emb(states.repeat(1, 3, 1)), one, rtol=1e-5, atol=1e-5)
    other = torch.randn(2, 77, 384)
    both = emb(torch.cat([states, other], dim=1))
    torch.testing.assert_close(both, (one + emb(other)) / 2, rtol=1e-5, atol=1e-5)
    # the presets use it (diffusers builds the embedding from addition_embed_type="text")
    assert model.config.pooled_text and model.unet.config.addition_embed_type == "text"


def test_save_load_roundtrip_keeps_the_null_embedding(tmp_path):
    model = tiny_t2i()
    model.save_pretrained(tmp_path / "m")
    loaded = MiniT2I.from_pretrained(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.has_null_embedding
    emb = torch.randn(1, 77, 384)
    a = model.generate(emb, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    b = loaded.generate(emb, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    reader = SceneReader(SceneReaderConfig())
    reader.save_pretrained(tmp_path / "r")
    with pytest.raises(CheckpointError, match="scene-reader"):
        MiniT2I.from_pretrained(tmp_path / "r")


def test_generate_is_deterministic_and_takes_any_length():
    model = tiny_t2i()
    emb = torch.randn(2, 77, 384)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    a = model.generate(emb, num_inference_steps=3, generator=gens())
    b = model.generate(emb, num_inference_steps=3, generator=gens())
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    single = model.generate(emb[1:], num_inference_steps=3, generator=[torch.Generator().manual_seed(5)])
    torch.testing.assert_close(single[0], a[1], rtol=1e-5, atol=1e-5)  # an image does not depend on its batch
    for sampler in ("euler", "ddpm"):
        assert torch.isfinite(model.generate(emb, num_inference_steps=2, sampler=sampler)).all()
    long = model.generate(torch.randn(1, 231, 384), num_inference_steps=2)  # 77·3 positions, 77 negatives
    assert long.shape == (1, 3, 32, 32)
    # a 77·k concatenation whose windows all repeat one window reads like that window (softmax is
    # invariant to duplicated keys): compel's padding of negatives with copies of the empty prompt is exact
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    one = model.generate(emb[:1], num_inference_steps=2, generator=gen(), guidance_scale=1.0)
    tiled = model.generate(
        emb[:1].repeat(1, 3, 1), num_inference_steps=2, generator=gen(), guidance_scale=1.0
    )
    torch.testing.assert_close(one, tiled, rtol=1e-4, atol=1e-4)


def test_generate_refuses_bad_embeddings():
    model = tiny_t2i()
    with pytest.raises(DataError, match="prompt_embeds"):
        model.generate(torch.randn(1, 77, 100))
    with pytest.raises(DataError, match="NaN"):
        model.generate(torch.full((1, 77, 384), float("nan")))
    with pytest.raises(DataError, match="rows"):
        model.generate(torch.randn(2, 77, 384), negative_prompt_embeds=torch.randn(1, 77, 384))
    bare = MiniT2I(MiniT2IConfig.preset("tiny"))
    with pytest.raises(DataError, match="empty-prompt"):
        bare.generate(torch.randn(1, 77, 384), num_inference_steps=1)
    assert bare.generate(torch.randn(1, 77, 384), num_inference_steps=1, guidance_scale=1.0).shape == (
        1,
        3,
        32,
        32,
    )
    with pytest.raises(DataError, match="images"):
        model(dict(pixel_values=torch.rand(2, 3, 30, 30), encoder_hidden_states=torch.randn(2, 77, 384)))


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        MiniT2IConfig(fold=3)
    with pytest.raises(ConfigError, match="cross-attention"):
        MiniT2IConfig(cross_attention_levels=(False, False, False))
    with pytest.raises(ConfigError, match="sampler"):
        MiniT2IConfig(sampler="plms")


def test_trainer_resume_is_exact_including_the_ema(tmp_path):
    from pentachora.recipes.t2i import EMAUpdate
    from pentachora.training import default_param_groups

    pool = random_pool()
    kw = dict(batch_size=4, lr=1e-3, lr_schedule="constant", progress=False, tensorboard=False, save_every=2)

    def fit(model, steps, out):
        groups = default_param_groups(model.unet, 0.01)
        cfg = TrainConfig(steps=steps, out_dir=str(out), **kw)
        return Trainer(
            model, cfg, ScenePoolSource(pool, 4), callbacks=[EMAUpdate()], param_groups=groups
        ).fit()

    a = tiny_t2i()
    fit(a, 4, tmp_path / "a")
    fit(tiny_t2i(), 2, tmp_path / "b")
    b = tiny_t2i(seed=7)  # initialised differently: everything must come from the checkpoint
    assert fit(b, 4, tmp_path / "b").resumed_from == 2
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    assert int(a.ema_updates) == 4


def test_ema_follows_the_trained_weights_with_warmup():
    model = tiny_t2i()
    ema0 = [p.clone() for p in model.ema_unet.parameters()]
    for p in model.unet.parameters():
        p.data.add_(1.0)
    model.update_ema()  # first update: decay min(0.999, 1/10) = 0.1 → 90 % of the way
    for e0, e, p in zip(ema0, model.ema_unet.parameters(), model.unet.parameters(), strict=True):
        torch.testing.assert_close(e, 0.1 * e0 + 0.9 * p)
    assert not any(p.requires_grad for p in model.ema_unet.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.unet.parameters()}
    off = MiniT2I(MiniT2IConfig.preset("tiny", ema_decay=0.0))
    assert not hasattr(off, "ema_unet") and off.num_parameters() * 2 == model.num_parameters()


# ============================================================================================ reader
def test_reader_shapes_loss_and_bad_input():
    world = SceneWorld()
    reader = SceneReader(SceneReaderConfig())
    batch = SceneRenderSource(world, 6, seed=0).batch(1)
    out = reader(batch)
    assert torch.isfinite(out.loss) and out.label_logits.shape == (6, 9, world.n_classes)
    reading = reader.read(batch["pixel_values"])
    assert reading.labels.shape == (6, 9) and ((reading.sizes == -1) == (reading.labels == 0)).all()
    with pytest.raises(DataError, match="reads"):
        reader.read(torch.rand(1, 3, 30, 30))
    with pytest.raises(DataError, match="NaN"):
        reader.read(torch.full((1, 3, 32, 32), float("nan")))


def test_reader_learns_well_above_chance_in_a_few_hundred_steps():
    """The instrument can be learned (the ≥ 99 % run is the slow test); chance is 1/25 per cell."""
    from pentachora.recipes.t2i import evaluate_reader, train_reader

    tc = TrainConfig(steps=200, batch_size=32, lr=3e-3, warmup_steps=20, progress=False, tensorboard=False)
    run = train_reader(SceneReaderConfig(), tc, evaluate=False)
    ev = evaluate_reader(run.model, n=100, noise_levels=(0.0,), blur=False)
    assert ev["clean"]["cell_accuracy"] > 0.9 > 20 * ev["chance"]["uniform_cell"]
    assert ev["clean"]["empty_accuracy"] > 0.95


# ============================================================================================ scoring
def test_object_hits_and_bootstrap():
    from pentachora.t2i.scoring import bootstrap_ratio, object_hits, summarise_hits

    truth = np.array([[1, 0, 6, 0], [0, 0, 0, 2]])
    pred = np.array([[1, 3, 5, 0], [0, 0, 0, 0]])  # object 1 exact, object 6→5 same colour (n_shapes 4)
    hits = object_hits(pred, truth, n_shapes=4)
    assert hits.object.tolist() == [True, False, False]
    assert hits.position.tolist() == [True, True, False]
    assert hits.colour.tolist() == [True, True, False] and hits.shape.tolist() == [True, False, False]
    assert hits.false_objects.tolist() == [1, 0]
    s = summarise_hits(hits, np.array([0, 1]))
    assert s["object_recall"] == pytest.approx(1 / 3) and s["binding"] == pytest.approx(1 / 2)
    est, lo, hi = bootstrap_ratio([1, 2, 3], [2, 2, 4])
    assert est == pytest.approx(6 / 8) and lo <= est <= hi
    with pytest.raises(DataError):
        object_hits(pred, truth[:1], 4)


def test_paired_recall_difference_is_paired_and_checks_its_objects():
    from pentachora.t2i.scoring import object_hits, paired_recall_difference

    rng = np.random.default_rng(0)
    truth = rng.integers(1, 25, size=(60, 9)) * (rng.random((60, 9)) < 0.5)
    noisy = np.where(rng.random(truth.shape) < 0.3, 0, truth)  # b loses 30 % of the objects
    better = np.where(rng.random(truth.shape) < 0.1, 0, truth)  # a loses 10 %
    clusters = np.repeat(np.arange(20), 3)  # 20 captions × 3 seeds
    a, b = object_hits(better, truth, 4), object_hits(noisy, truth, 4)
    est, lo, hi = paired_recall_difference(a, b, clusters)
    assert est == pytest.approx(a.object.mean() - b.object.mean()) and 0 < lo <= est <= hi
    assert paired_recall_difference(a, a, clusters) == (0.0, 0.0, 0.0)  # a contender against itself
    mask = a.cell < 3
    est_m, _, _ = paired_recall_difference(a, b, clusters, mask)
    assert est_m == pytest.approx(a.object[mask].mean() - b.object[mask].mean())
    with pytest.raises(DataError, match="same objects"):
        paired_recall_difference(a, object_hits(noisy[:30], truth[:30], 4), clusters)


# ============================================================================================ recipe + pipeline
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step tiny T2I run on the real MiniLM window encoder, with an untrained tiny reader."""
    from pentachora.recipes.t2i import train_t2i

    root = tmp_path_factory.mktemp("t2i")
    reader = SceneReader(SceneReaderConfig(width=16))
    model = tiny_t2i()
    tc = TrainConfig(steps=2, batch_size=4, out_dir=str(root / "run"), progress=False, tensorboard=False,
                     eval_every=0)  # fmt: skip
    run = train_t2i(model, tc, pool_size=16, reader=reader, eval_captions=2, cache=root / "cache",
                    progress=False, final_eval_captions=2)  # fmt: skip
    return run, root


def test_train_t2i_writes_a_run_and_scores_it(trained_run):
    run, root = trained_run
    assert (run.out_dir / "final" / "model.safetensors").is_file()
    ev = json.loads((run.out_dir / "eval.json").read_text())
    assert ev["train_steps"] == 2 and 0 <= ev["test_short_prose"]["object_recall"] <= 1
    assert any(r.get("split") == "eval" and "object_recall" in r for r in run.metrics)
    assert list((root / "cache" / "scene-pools").glob("*.safetensors"))
    # the null embedding is the encoder's empty prompt
    from pentachora.recipes.t2i import load_window_encoder

    enc = load_window_encoder()
    torch.testing.assert_close(run.model.null_embedding, enc.native_sequence([""])[0][0])


def test_pipeline_prompt_and_prompt_embeds_agree(trained_run):
    from pentachora.diffusion import MiniT2IPipeline, long_prompt_embeds

    run, _ = trained_run
    pipe = MiniT2IPipeline.from_run(run.out_dir)
    prompt = "A big blue square sits in the centre."
    a = pipe(
        prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    embeds = long_prompt_embeds(pipe.encoder, [prompt], negative_prompts=[""])
    b = pipe(**embeds.pipeline_kwargs(), num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="pt").images  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    pil = pipe(prompt, num_inference_steps=1).images
    assert pil[0].size == (32, 32)
    with pytest.raises(DataError, match="exactly one"):
        pipe(num_inference_steps=1)
    with pytest.raises(DataError, match="pooled"):
        pipe(prompt, pooled_prompt_embeds=torch.zeros(1, 8))


def test_short_prompt_is_exact_through_the_memory_and_the_shift(trained_run):
    """The exactness contract: a prompt that fits one window gives the same image through
    ``long_prompt_embeds`` (residual memory, training-free shift) as through the native path."""
    from pentachora.diffusion.mini import MiniT2IPipeline, prompt_conditioning

    run, _ = trained_run
    pipe = MiniT2IPipeline.from_run(run.out_dir)
    prompt = "In the top left corner there is a small red circle. The light is soft and warm."
    images = {}
    for spec in ("native", "shift:0.75", "concat"):
        embeds = prompt_conditioning(spec, pipe.model, pipe.encoder)([prompt])
        images[spec] = pipe(**embeds.pipeline_kwargs(), num_inference_steps=2,
                            generator=torch.Generator().manual_seed(3), output_type="pt").images  # fmt: skip
    torch.testing.assert_close(images["shift:0.75"], images["native"], rtol=0, atol=0)
    torch.testing.assert_close(images["concat"], images["native"], rtol=0, atol=0)
    long = prompt + " " + " ".join(["A large green cross rests in the bottom right corner."] * 8)
    shifted = prompt_conditioning("shift:0.75", pipe.model, pipe.encoder)([long]).prompt_embeds
    native = prompt_conditioning("native", pipe.model, pipe.encoder)([long]).prompt_embeds
    concat = prompt_conditioning("concat", pipe.model, pipe.encoder)([long]).prompt_embeds
    assert shifted.shape == native.shape == (1, 77, 384) and not torch.equal(shifted, native)
    assert concat.shape[1] == 77 * 2


def test_encoder_specs_and_bad_prompts(trained_run):
    from pentachora.diffusion.mini import check_prompts, parse_encoder_spec, prompt_conditioning

    assert parse_encoder_spec("memory:runs/m@0.5").alpha == 0.5
    assert parse_encoder_spec("shift:0.75").value == 0.75 and parse_encoder_spec("truncate").kind == "native"
    for bad in ("cliptext", "shift:x", "shift:9", "memory:", "memory:r@2"):
        with pytest.raises(ConfigError):
            parse_encoder_spec(bad)
    with pytest.raises(DataError, match="empty"):
        check_prompts(["  "])
    with pytest.raises(DataError, match="weighting"):
        check_prompts(["((:1.2)) [[ ]] ++"])
    run, root = trained_run
    with pytest.raises(CheckpointError):
        prompt_conditioning(f"memory:{root / 'nothing-here'}", run.model)


def test_cli_generate_and_its_errors(trained_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pentachora.cli import app

    monkeypatch.setenv("PENTACHORA_CACHE", str(tmp_path / "cache"))  # no cached reader: no reading
    run, _ = trained_run
    runner = CliRunner()
    out = tmp_path / "x.png"
    res = runner.invoke(app, ["generate", "a small red circle in the centre.", "--model", str(run.out_dir),
                              "-o", str(out), "--steps", "1", "-n", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.is_file() and "2 image(s)" in res.output
    res = runner.invoke(app, ["generate", "a small (red:1.3) circle BREAK in the centre.", "--model",
                              str(run.out_dir), "-o", str(out), "--steps", "1", "--weighting", "a1111",
                              "--encoder", "concat"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "weighting a1111, positions 154" in res.output
    cases = {
        "empty": (["generate", "   ", "--model", str(run.out_dir), "-o", str(out)], "empty"),
        "weights": (["generate", "((:1.3))", "--model", str(run.out_dir), "-o", str(out)], "weighting"),
        "encoder": (["generate", "a red circle.", "--model", str(run.out_dir), "--encoder", "clip", "-o", str(out)],
                    "unknown encoder"),
        "dialect": (["generate", "a red circle.", "--model", str(run.out_dir), "--weighting", "webui", "-o", str(out)],
                    "weighting must be one of"),
        "unbalanced": (["generate", "a (red circle.", "--model", str(run.out_dir), "--weighting", "a1111", "-o",
                        str(out)], "unbalanced '('"),
        "nan": (["generate", "a (red:nan) circle.", "--model", str(run.out_dir), "--weighting", "a1111", "-o",
                 str(out)], "not finite"),
    }  # fmt: skip
    reader_dir = tmp_path / "reader"
    SceneReader(SceneReaderConfig(width=16)).save_pretrained(reader_dir)
    cases["family"] = (
        ["generate", "a red circle.", "--model", str(reader_dir), "-o", str(out)],
        "scene-reader",
    )
    for name, (args, message) in cases.items():
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (name, res.output)
        assert message in res.output and "Traceback" not in res.output, (name, res.output)


def test_cli_scenes_sheet(tmp_path):
    from typer.testing import CliRunner

    from pentachora.cli import app

    out = tmp_path / "sheet.png"
    res = CliRunner().invoke(app, ["scenes", "-n", "2", "--kind", "long", "-o", str(out), "--print"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "tail" in res.output
    assert Path(out).stat().st_size > 10_000


def test_long_prompt_benchmark_smoke(trained_run, tmp_path, monkeypatch):
    """``benchmarks/t2i_long.py --quick`` on the tiny run (an untrained reader stands in for the cached one)."""
    import importlib.util

    run, _ = trained_run
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "t2i_long.py"
    spec = importlib.util.spec_from_file_location("bench_t2i_long", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        bench, "default_reader", lambda world: SceneReader(SceneReaderConfig(world=world, width=16))
    )
    out = bench.main(
        ["--model", str(run.out_dir), "--quick", "--examples", "2", "--out", str(tmp_path / "t2i")]
    )
    results = out["results"]
    assert {
        "truncation (native 77)",
        "concat (compel, 77·k)",
        "ceiling (same scenes, terse, one window)",
    } <= set(results)
    assert (
        results["concat (compel, 77·k)"]["positions"] > 77 == results["truncation (native 77)"]["positions"]
    )
    for v in results.values():
        assert 0 <= v["all"]["object_recall"] <= 1 and v["tail"]["n_objects"] > 0
    diffs = {(d["a"], d["region"]): d for d in out["paired_differences"]}
    d = diffs[("concat (compel, 77·k)", "tail")]
    assert d["b"] == "truncation (native 77)" and d["lo"] <= d["difference"] <= d["hi"]
    md = (tmp_path / "t2i.md").read_text()
    assert "Made by `python benchmarks/t2i_long.py" in md and "Goals (computed" in md
    assert "## Paired differences" in md
    assert (tmp_path / "t2i.png").is_file() and (tmp_path / "t2i_examples.png").is_file()


def test_ceiling_benchmark_reads_a_finished_run(trained_run, tmp_path):
    import importlib.util

    run, _ = trained_run
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "t2i_ceiling.py"
    spec = importlib.util.spec_from_file_location("bench_t2i_ceiling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", str(run.out_dir), "--out", str(tmp_path / "c")])
    assert out["test_short_prose"] == json.loads((run.out_dir / "eval.json").read_text())["test_short_prose"]
    md = (tmp_path / "c.md").read_text()
    assert "short-caption ceiling: held-out object recall ≥ 0.8" in md and (tmp_path / "c.png").is_file()
    with pytest.raises(SystemExit, match="not a finished T2I run"):
        bench.main(["--model", str(tmp_path), "--out", str(tmp_path / "d")])


def test_long_prompt_from_the_miniature_pipeline_is_its_own_encoding(trained_run):
    """``LongPrompt.from_pipeline`` on the miniature model: a short unweighted prompt is exactly the
    pipeline's ``encode_prompt`` (and the same image); weights and BREAK change the conditioning."""
    from pentachora.diffusion import LongPrompt, MiniT2IPipeline

    run, _ = trained_run
    pipe = MiniT2IPipeline.from_run(run.out_dir)
    lp = LongPrompt.from_pipeline(pipe)
    assert lp.encoders[0] is pipe.encoder  # the pipeline's own encoder object
    prompt = "A big blue square sits in the centre."
    embeds = lp(prompt)
    torch.testing.assert_close(embeds.prompt_embeds, pipe.encode_prompt([prompt]), rtol=0, atol=0)
    torch.testing.assert_close(embeds.negative_prompt_embeds, pipe.encode_prompt([""]), rtol=0, atol=0)
    a = pipe(prompt, negative_prompt="", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="pt").images  # fmt: skip
    b = pipe(**embeds.pipeline_kwargs(), num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="pt").images  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    weighted = lp("A big (blue:1.4) square sits in the centre.").prompt_embeds
    assert weighted.shape == (1, 77, 384) and not torch.equal(weighted, embeds.prompt_embeds)
    assert lp("A big blue square BREAK sits in the centre.").prompt_embeds.shape == (1, 154, 384)


def test_weighting_benchmark_smoke(trained_run, tmp_path, monkeypatch):
    """``benchmarks/t2i_weighting.py --quick`` on the tiny run (an untrained reader stands in)."""
    import importlib.util

    run, _ = trained_run
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "t2i_weighting.py"
    spec = importlib.util.spec_from_file_location("bench_t2i_weighting", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        bench, "default_reader", lambda world: SceneReader(SceneReaderConfig(world=world, width=16))
    )
    assert bench.weighted("a (b) c. d", (0, 8), 1.5, "a1111") == r"(a \(b\) c.:1.5) d"
    assert bench.weighted("a b. c", (0, 4), 0.5, "compel") == "(a b.)0.5 c"
    out = bench.main(["--model", str(run.out_dir), "--quick", "--out", str(tmp_path / "w")])
    labels = [r["contender"] for r in out["short"]["rows"]]
    assert labels == ["unweighted", "a1111 ×1.5", "compel ×1.5"]
    for r in out["short"]["rows"] + out["long"]["rows"]:
        assert 0 <= r["target_recall"] <= 1 and 0 <= r["other_recall"] <= 1
    assert {d["encoder"] for d in out["long"]["paired"]} == {"truncation (77)", "concatenation (77·k)"}
    md = (tmp_path / "w.md").read_text()
    assert "Made by `python benchmarks/t2i_weighting.py" in md and "## Long captions" in md

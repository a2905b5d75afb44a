"""The memory trained through the frozen miniature T2I UNet (the consumer in the loop): contracts on tiny models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pentachora.errors import ConfigError

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread", "offline")

from pentachora.memory import GeometricMemory, MemoryConfig  # noqa: E402
from pentachora.t2i import MiniT2I, MiniT2IConfig, SceneReader, SceneReaderConfig  # noqa: E402
from pentachora.training import TrainConfig  # noqa: E402


def tiny_t2i(**overrides) -> MiniT2I:
    torch.manual_seed(0)
    model = MiniT2I(MiniT2IConfig.preset("tiny", **overrides))
    model.set_null_embedding(torch.randn(77, 384, generator=torch.Generator().manual_seed(9)))
    return model


def tiny_memory(**overrides) -> GeometricMemory:
    torch.manual_seed(0)
    return GeometricMemory(MemoryConfig.preset("minilm-tiny-image", **overrides))


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory):
    """Long captions of 6 training and 4 validation scenes with their features (real MiniLM)."""
    from pentachora.data.scenes import SceneWorld
    from pentachora.recipes.memory import load_encoders
    from pentachora.recipes.memory_image import prepare_scene_caption_data

    root = tmp_path_factory.mktemp("mi")
    config = MemoryConfig.preset("minilm-tiny-image")
    encoders = load_encoders(config)
    world = SceneWorld(MiniT2IConfig.preset("tiny").world)
    train = prepare_scene_caption_data(world, config, 6, "train", encoders, cache_root=root, progress=False)
    val = prepare_scene_caption_data(world, config, 4, "val", encoders, cache_root=root, progress=False)
    return train, val, encoders, root


def test_denoising_loss_is_the_training_loss_without_dropout():
    model = tiny_t2i(cond_dropout_prob=0.0)
    pix = torch.rand(3, 3, 32, 32)
    states = torch.randn(3, 77, 384)
    torch.manual_seed(5)
    out = model({"pixel_values": pix, "encoder_hidden_states": states})
    torch.manual_seed(5)
    torch.rand(3)  # the dropout draw forward makes first
    loss, mse = model.denoising_loss(model.to_latent(pix), states)
    torch.testing.assert_close(loss, out.loss, rtol=0, atol=0)
    assert float(mse) == pytest.approx(float(out.mse))


def test_batches_carry_full_width_native_windows_and_images(scene_data):
    train, _, (encoder, _), _ = scene_data
    batch = train.batch([0, 1, 2])
    b, s = batch["segment_mask"].shape
    assert batch["native"].shape == (b, s, 77, 384) and batch["pixel_values"].shape == (b, 3, 32, 32)
    assert float(batch["pixel_values"].min()) >= 0 and float(batch["pixel_values"].max()) <= 1
    assert bool(batch["segment_mask"][:, 1].all())  # long captions span ≥ 2 windows
    # every window encoded alone at full width, as the pipeline feeds the UNet (padding positions included)
    from pentachora.data.segmenter import Segmenter

    part = Segmenter(encoder, 576)([train.captions[0]])
    ids, mask, _ = part.flat_windows()
    last = int(part.n_segments[0]) - 1
    window = ids[last][mask[last].bool()].tolist()
    input_ids, pad = encoder.pad_windows([window])
    expected = encoder.encode_windows(input_ids, pad).target[0]
    torch.testing.assert_close(batch["native"][0, last], expected.half().float())
    assert float(batch["native"][0, last, -1].abs().sum()) > 0  # a padding position is not zero


def test_gradients_reach_the_memory_and_never_the_unet(scene_data):
    from pentachora.recipes.memory_image import UNetConsumer

    train, *_ = scene_data
    t2i = tiny_t2i()
    memory = tiny_memory()
    memory.attach_consumer(UNetConsumer(t2i))
    out = memory(train.batch([0, 1]))
    assert out.image_loss is not None and out.image_loss.requires_grad and out.image_mse > 0
    out.image_loss.backward()
    assert all(p.grad is None for p in t2i.parameters())
    grads = {n: p.grad for n, p in memory.named_parameters()}
    assert float(grads["reconstructor.out.weight"].abs().sum()) > 0  # the residual head learns from the UNet
    assert float(grads["shift.gate"].abs().sum()) > 0
    # the residual head starts at zero, so the bank behind it hears the UNet from the second step on
    assert float(grads["bank.anchors"].abs().sum()) == 0
    torch.optim.SGD(memory.parameters(), lr=1e-2).step()
    memory.zero_grad()
    memory(train.batch([0, 1])).image_loss.backward()
    assert float(memory.bank.anchors.grad.abs().sum()) > 0


def test_image_loss_needs_a_consumer_and_a_valid_config(scene_data):
    train, *_ = scene_data
    memory = tiny_memory()
    with pytest.raises(ConfigError, match="no consumer is attached"):
        memory(train.batch([0, 1]))
    batch = {k: v for k, v in train.batch([0, 1]).items() if k != "pixel_values"}
    assert memory(batch).image_loss is None  # text batches train as before
    with pytest.raises(ConfigError, match="consumer_output"):
        MemoryConfig.preset("minilm-tiny-image", consumer_output="pixels")
    with pytest.raises(ConfigError, match="needs contextual_chunks"):
        MemoryConfig.preset("minilm-tiny-image", consumer_output="chunks", contextual_chunks=False)
    with pytest.raises(ConfigError, match="image_weight"):
        MemoryConfig.preset("minilm-tiny-image", image_weight=-1.0)
    with pytest.raises(TypeError, match="callable"):
        memory.attach_consumer(3)


def test_the_memory_learns_to_lower_the_unets_loss_on_a_fixed_batch(scene_data):
    """The claim of the whole method in miniature: gradients through the frozen UNet move the memory's
    output so that the UNet denoises the described images better (fixed noise and timesteps)."""
    from pentachora.recipes.memory_image import UNetConsumer

    train, *_ = scene_data
    consumer = UNetConsumer(tiny_t2i())
    for output in ("sequence", "chunks"):
        memory = tiny_memory(consumer_output=output)
        memory.set_loss_weights(**{k: 0.0 for k in memory.loss_weights if k != "image_weight"})
        memory.attach_consumer(consumer)
        batch = train.batch([0, 1, 2, 3])
        opt = torch.optim.Adam(memory.parameters(), lr=3e-3)

        def loss(memory: GeometricMemory = memory, batch: dict = batch) -> torch.Tensor:
            torch.manual_seed(11)
            return memory(batch).image_loss

        with torch.no_grad():
            before = float(loss())
        for _ in range(12):
            opt.zero_grad()
            loss().backward()
            opt.step()
        with torch.no_grad():
            after = float(loss())
        assert after < 0.95 * before, (output, before, after)  # unconnected: exactly equal


@pytest.fixture(scope="module")
def trained_memory(scene_data, tmp_path_factory):
    from pentachora.recipes.memory_image import train_memory_through_unet

    train, val, encoders, _ = scene_data
    out = tmp_path_factory.mktemp("mirun") / "run"
    tc = TrainConfig(steps=3, batch_size=4, lr=1e-3, out_dir=str(out), progress=False, tensorboard=False,
                     eval_every=2, save_every=2)  # fmt: skip
    t2i = tiny_t2i()
    t2i_dir = out.parent / "t2i"
    t2i.save_pretrained(t2i_dir / "final")
    memory = tiny_memory(infonce_weight=1.0, seq_weight=1.0)  # the image loss mixed with two text terms
    run = train_memory_through_unet(memory, t2i, train, val, tc, encoder=encoders[0])
    return run, t2i_dir


def test_recipe_writes_a_memory_run_with_loudness_and_validation(trained_memory):
    run, _ = trained_memory
    loud = json.loads((run.out_dir / "loudness.json").read_text())
    assert set(loud) == {"start", "end"} and loud["end"]["unit"]["image_loss"] > 0
    assert set(loud["end"]["weighted"]) == {"infonce", "seq_loss", "image_loss"}  # the terms trained on
    ev = json.loads((run.out_dir / "eval.json").read_text())
    assert ev["train_steps"] == 3
    assert ev["image_val_gain"] == pytest.approx(ev["image_val_native"] - ev["image_val"])
    assert any(r.get("split") == "eval" and "image_val" in r for r in run.metrics)
    loaded = GeometricMemory.from_pretrained(run.out_dir / "final")
    assert loaded.config.image_weight == 1.0 and "consumer" not in loaded._frozen


def test_short_prompts_stay_exact_after_consumer_training(trained_memory):
    """The residual's pass-through holds by construction: a one-window prompt comes out native."""
    from pentachora.diffusion import long_prompt_embeds

    run, _ = trained_memory
    memory = GeometricMemory.from_pretrained(run.out_dir / "final").eval()
    # training moved the residual head off zero, so exactness below is the construction, not an untrained head
    assert float(memory.reconstructor.out.weight.detach().abs().sum()) > 0
    encoder = memory.load_encoder()
    short = "In the top left corner there is a small red circle. The light is soft and warm."
    native = encoder.native_sequence([short])[0]
    torch.testing.assert_close(long_prompt_embeds(memory, [short]).prompt_embeds, native, rtol=0, atol=0)
    long = short + " " + " ".join(["A large green cross rests in the bottom right corner."] * 8)
    assert not torch.equal(
        long_prompt_embeds(memory, [long]).prompt_embeds, encoder.native_sequence([long])[0]
    )


def test_memory_from_run_overrides_and_reinit(trained_memory):
    from pentachora.recipes.memory_image import memory_from_run

    run, _ = trained_memory
    base = GeometricMemory.from_pretrained(run.out_dir / "final").state_dict()
    same = memory_from_run(run.out_dir, {"image_weight": 2.0, "infonce_weight": 0.0})
    assert same.config.image_weight == 2.0 and same.config.infonce_weight == 0.0
    assert all(torch.equal(v, base[k]) for k, v in same.state_dict().items())
    fresh = memory_from_run(run.out_dir, {}, reinit=["reconstructor."])
    state = fresh.state_dict()
    assert torch.equal(state["bank.anchors"], base["bank.anchors"])
    assert float(state["reconstructor.out.weight"].abs().sum()) == 0  # residual head back at zero
    assert not torch.equal(state["reconstructor.queries"], base["reconstructor.queries"])
    with pytest.raises(ConfigError, match="change the model's parameters"):
        memory_from_run(run.out_dir, {"dim": 96, "n_heads": 4})
    with pytest.raises(ConfigError, match="no parameters under"):
        memory_from_run(run.out_dir, {}, reinit=["nothing."])


def test_memory_benchmark_smoke(trained_memory, tmp_path, monkeypatch):
    """``benchmarks/t2i_memory.py --quick`` on the tiny runs (an untrained reader stands in)."""
    import importlib.util

    run, t2i_dir = trained_memory
    monkeypatch.setenv("PENTACHORA_CACHE", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "t2i_memory.py"
    spec = importlib.util.spec_from_file_location("bench_t2i_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        bench, "default_reader", lambda world: SceneReader(SceneReaderConfig(world=world, width=16))
    )
    settings = tmp_path / "t2i_long.json"
    settings.write_text(json.dumps({"tuning": {"chosen": {"guidance_scale": 2.0, "num_inference_steps": 2,
                                                          "shift_lambda": 0.75}}}))  # fmt: skip
    out = bench.main(["--model", str(t2i_dir), "--variant", f"tiny={run.out_dir}", "--settings", str(settings),
                      "--quick", "--out", str(tmp_path / "tm")])  # fmt: skip
    assert out["selection"]["winner"] == "tiny"
    r = out["results"]
    assert {"truncation (native 77)", "concat (compel, 77·k)", "tiny"} <= set(r) and r["tiny"][
        "positions"
    ] == 77
    assert [a["alpha"] for a in out["alpha_blend"]] == [0.0, 0.5, 1.0]
    assert out["positions"] is not None and len(out["positions"]["energy_share"]) == 77
    assert set(out["attention_probe"]) >= {"truncation (native 77)", "tiny", "chance"}
    assert out["positions"]["energy_share"] and abs(sum(out["positions"]["energy_share"]) - 1) < 1e-4
    val = out["validation_losses"]["tiny"]
    assert {"image_val", "image_val_native", "image_val_ceiling", "gap_closed"} <= set(val)
    md = (tmp_path / "tm.md").read_text()
    assert "Made by `python benchmarks/t2i_memory.py" in md and "Goals (computed" in md
    assert (tmp_path / "tm.png").is_file() and (tmp_path / "tm_examples.png").is_file()
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "x"])  # no variant


def test_cli_train_memory_image_and_its_errors(trained_memory, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pentachora.cli import app

    monkeypatch.setenv("PENTACHORA_CACHE", str(tmp_path / "cache"))
    run, t2i_dir = trained_memory
    runner = CliRunner()
    out = tmp_path / "mi"
    args = ["train", "memory-image", "--model", str(t2i_dir), "--init", str(run.out_dir), "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--captions", "4", "--val-captions", "2", "--no-text-losses",
            "--eval-every", "0", "--save-every", "0"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "validation denoising loss" in res.output and "image_loss" in res.output
    trained = GeometricMemory.from_pretrained(out / "final")
    assert trained.config.infonce_weight == 0.0 and trained.config.image_weight == 1.0  # --no-text-losses
    loud = json.loads((out / "loudness.json").read_text())
    assert set(loud["end"]["weighted"]) == {"image_loss"} and "infonce" in loud["end"]["unit"]
    cases = {
        "family": (["--model", str(run.out_dir)], "not a mini-t2i model"),
        "weight": (["--model", str(t2i_dir), "--set", "image_weight=0"], "image_weight > 0"),
        "shape": (
            ["--model", str(t2i_dir), "--init", str(run.out_dir), "--set", "dim=96"],
            "change the model",
        ),
        "output": (["--model", str(t2i_dir), "--set", "consumer_output=latents"], "consumer_output"),
    }
    for name, (extra, message) in cases.items():
        res = runner.invoke(app, ["train", "memory-image", *extra, "--out", str(tmp_path / name), "--steps", "1",
                                  "--captions", "4", "--val-captions", "2"])  # fmt: skip
        assert res.exit_code == 2, (name, res.output)
        assert message in res.output and "Traceback" not in res.output, (name, res.output)


def test_the_image_preset_is_the_long_preset_trained_on_the_image_loss_alone():
    """``minilm-tiny-image`` is what `--init <minilm-tiny-long run> --no-text-losses` trains: the same model,
    every text objective at 0, the UNet's loss at 1."""
    from pentachora.memory.model import LOSS_WEIGHTS

    image, long = MemoryConfig.preset("minilm-tiny-image"), MemoryConfig.preset("minilm-tiny-long")
    text = [k for k in LOSS_WEIGHTS if k != "image_weight"]
    assert image.image_weight == 1.0 and all(getattr(image, k) == 0.0 for k in text)
    rest = {f.name for f in dataclasses.fields(MemoryConfig)} - set(LOSS_WEIGHTS)
    assert {k: getattr(image, k) for k in rest} == {k: getattr(long, k) for k in rest}
    # the same parameters, so a text-trained long run initialises it
    a, b = GeometricMemory(image).state_dict(), GeometricMemory(long).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}

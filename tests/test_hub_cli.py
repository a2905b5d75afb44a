"""The hub through the CLI with tiny in-code experts (typer's CliRunner), and its bad-input errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from pentachora.cli import app

pytest.importorskip("gensim")
pytest.importorskip("transformers")

runner = CliRunner()

TOPICS = {
    "river": "water flows bank stream fish delta valley flood bridge boat current",
    "music": "song melody guitar drum band concert album chorus rhythm singer stage",
    "space": "planet star orbit rocket moon galaxy comet telescope astronaut launch",
    "food": "bread cheese soup kitchen recipe spice baking oven flavour meal dinner",
    "law": "court judge trial lawyer verdict appeal statute jury evidence crime case",
    "sport": "match goal team player coach league score season stadium referee ball",
}
FILLER = [
    "the",
    "a",
    "of",
    "and",
    "in",
    "to",
    "is",
    "was",
    "for",
    "with",
    "on",
    "by",
    "as",
    "at",
    "from",
    "that",
    "this",
]


def _corpus(path, n_docs=80, seed=0):
    rng = random.Random(seed)
    docs = []
    names = list(TOPICS)
    for i in range(n_docs):
        words = TOPICS[names[i % len(names)]].split()
        other = TOPICS[names[(i * 7 + 3) % len(names)]].split()
        doc = [rng.choice(words if rng.random() < 0.7 else other) for _ in range(30)]
        doc += [*rng.sample(FILLER, 8), f"item{i}", f"tag{i % 13}"]
        rng.shuffle(doc)
        docs.append(" ".join(doc) + ".")
    path.write_text("\n\n".join(docs))
    return path


TINY = "tiny-bert,lsa:16,w2v:8"


def test_train_eval_hub_end_to_end_with_tiny_experts(tmp_path):
    corpus = _corpus(tmp_path / "docs.txt")
    run = tmp_path / "run"
    args = [
        "train", "hub", "--experts", TINY, "--data", f"text:{corpus}", "--d-hub", "16", "--steps", "4",
        "--batch-size", "16", "--n-tokens", "2", "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
        "--threads", "1",
    ]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (run / "final" / "model.safetensors").is_file() and (run / "eval.json").is_file()
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["pairs"]) == {"tiny-bert|lsa", "tiny-bert|w2v", "lsa|w2v"}
    for m in ev["pairs"].values():
        assert (
            0.0 <= m["r1_ab"] <= 1.0 and 0.0 <= m["r1_ba"] <= 1.0 and m["chance_r1"] == pytest.approx(1 / 8)
        )
    aligners = json.loads((run / "aligners.json").read_text())
    assert aligners["reference"] == "lsa"
    assert aligners["tiny-bert"]["mode"] == "pca" and aligners["w2v"]["mode"] == "pad"
    assert "lift" in aligners["w2v"] and "r1_shuffled" in aligners["w2v"]
    data = json.loads((run / "data.json").read_text())
    assert data["leakage"]["shared_items"] == 0
    res = runner.invoke(app, ["eval-hub", str(run), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pairs"].keys() == ev["pairs"].keys()
    from pentachora.recipes.hub import load_hub

    hub = load_hub(run)
    assert hub.config.expert_dims == (32, 16, 8) and hub.aligners_fitted


def test_train_hub_expert_not_available_offline_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = _corpus(tmp_path / "docs.txt")
    run, cache = tmp_path / "run", tmp_path / "cache"
    res = runner.invoke(
        app,
        ["train", "hub", "--experts", "hf:nobody/no-such-model,lsa:16", "--data", f"text:{corpus}",
         "--out", str(run), "--cache-dir", str(cache)],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "not available offline" in res.output and "huggingface-cli download" in res.output
    assert not run.exists() and not cache.exists()
    res = runner.invoke(app, ["train", "hub", "--experts", "lsa,bogus", "--out", str(run)])
    assert res.exit_code == 2 and "unknown expert" in res.output and not run.exists()
    res = runner.invoke(
        app, ["train", "hub", "--readout", "sum", "--out", str(run), "--cache-dir", str(cache)]
    )
    assert res.exit_code == 2 and "--readout" in res.output and "anchored" in res.output
    assert not run.exists() and not cache.exists()


def _save(path, x):
    from safetensors.torch import save_file

    save_file({"features": x.contiguous()}, str(path))
    return path


def test_align_fits_reports_and_saves(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 10, generator=g)
    a = _save(tmp_path / "a.safetensors", z @ torch.randn(10, 24, generator=g))
    b = _save(
        tmp_path / "b.safetensors",
        z @ torch.randn(10, 12, generator=g) + 0.1 * torch.randn(300, 12, generator=g),
    )
    res = runner.invoke(app, ["align", str(a), str(b), "-o", str(tmp_path / "al")])
    assert res.exit_code == 0, res.output
    assert "held-out" in res.output and "lift" in res.output
    report = json.loads((tmp_path / "al" / "report.json").read_text())
    assert report["mode"] == "pca" and report["d_hub"] == 12
    assert (
        report["heldout"]["lift"] > 0.5 and report["heldout"]["r1"] > 0.5 > report["heldout"]["r1_shuffled"]
    )
    from pentachora.hub import ProcrustesAligner
    from pentachora.recipes.hub import apply_aligner

    src = ProcrustesAligner.from_pretrained(tmp_path / "al" / "source")
    assert src.config.d_in == 24
    from pentachora.errors import DataError

    with pytest.raises(DataError, match="fitted on 24-d"):
        apply_aligner(tmp_path / "al" / "source", torch.randn(5, 23))


def test_align_bad_input_is_a_clear_error_and_touches_nothing(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = _save(tmp_path / "a.safetensors", torch.randn(50, 8, generator=g))
    short = _save(tmp_path / "short.safetensors", torch.randn(49, 8, generator=g))
    nan = torch.randn(50, 8, generator=g)
    nan[4, 1] = float("nan")
    nanf = _save(tmp_path / "nan.safetensors", nan)
    inf = torch.randn(50, 8, generator=g)
    inf[0, 0] = float("inf")
    inff = _save(tmp_path / "inf.safetensors", inf)
    # constant rows: once "R@1 100 %, lift nan" and a non-finite whitener on disk (issue 25)
    const = _save(tmp_path / "const.safetensors", torch.ones(50, 8))
    out = tmp_path / "out"
    for other, msg in (
        (short, "has 49"),
        (nanf, "NaN/inf"),
        (inff, "NaN/inf"),
        (const, "same for all"),
        (tmp_path / "missing.safetensors", "not found"),
    ):
        res = runner.invoke(app, ["align", str(a), str(other), "-o", str(out)])
        assert res.exit_code == 2, res.output
        assert msg in " ".join(res.output.split())
        assert not out.exists()


def test_cli_readout_choices_are_the_hub_readouts():
    from pentachora.cli.hub import HUB_READOUT_CHOICES
    from pentachora.hub.model import READOUTS

    assert HUB_READOUT_CHOICES == READOUTS


def test_train_hub_has_the_shared_training_options():
    """It re-declared steps, batch size, lr, out, seed, eval/save-every by hand and lacked the rest."""
    from typer.testing import CliRunner

    from pentachora.cli import app

    runner = CliRunner()
    text = " ".join(runner.invoke(app, ["train", "hub", "--help"], terminal_width=200).output.split())
    for flag in ("--fresh", "--force-resume", "--audit", "--bf16", "--warmup", "--weight-decay", "--seed"):
        assert flag in text, flag
    bad = runner.invoke(app, ["train", "hub", "--seed", "-1"])
    assert bad.exit_code == 2 and "--seed" in bad.output
    both = runner.invoke(app, ["train", "hub", "--fresh", "--force-resume", "--steps", "1"])
    assert both.exit_code == 2 and "give one of them" in both.output


def test_align_audit_and_eval_hub_errors_go_to_stderr_and_outputs_are_checked_first(tmp_path, monkeypatch):
    """Issue 25: these commands printed errors on stdout (audit without "error:") and checked their
    output folder only after the work."""
    import pentachora.recipes.diagnostics as diag
    import pentachora.recipes.hub as hub_recipes

    g = torch.Generator().manual_seed(0)
    a = _save(tmp_path / "a.safetensors", torch.randn(60, 8, generator=g))
    b = _save(tmp_path / "b.safetensors", torch.randn(60, 6, generator=g))
    # a bad input: the one-line error is on stderr, stdout is empty
    short = _save(tmp_path / "short.safetensors", torch.randn(59, 6, generator=g))
    res = runner.invoke(app, ["align", str(a), str(short)])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and "has 59" in res.stderr
    assert res.stdout == ""
    # an output that is a file is refused before the fit runs
    taken = tmp_path / "taken"
    taken.write_text("notes")
    calls = []
    monkeypatch.setattr(hub_recipes, "fit_aligner_files", lambda *a, **k: calls.append(1))
    res = runner.invoke(app, ["align", str(a), str(b), "-o", str(taken)])
    assert res.exit_code == 2 and "is a file" in res.stderr and not calls
    assert taken.read_text() == "notes"
    # audit: a run without metrics says "error:" on stderr; a file as --out is refused before the report
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["audit", str(tmp_path / "empty")])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and "metrics.jsonl" in res.stderr
    monkeypatch.setattr(diag, "audit_run", lambda *a, **k: calls.append(1))
    res = runner.invoke(app, ["audit", str(tmp_path / "empty"), "--out", str(taken)])
    assert res.exit_code == 2 and "is a file" in res.stderr and not calls
    # eval-hub of something that is not a hub run
    res = runner.invoke(app, ["eval-hub", str(tmp_path / "empty")])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and res.stdout == ""


def test_cli_hub_option_defaults_are_the_config_defaults():
    """The hub's settings are declared for the CLI without importing torch; their defaults must stay
    those of ConduitHubConfig (one source of truth, checked here)."""
    import dataclasses

    from pentachora.cli.hub import HUB_MODEL_OPTIONS, HubModelOptions
    from pentachora.hub.model import ConduitHubConfig

    config = {f.name: f.default for f in dataclasses.fields(ConduitHubConfig)}
    cli = HubModelOptions().config_kwargs()
    for name, spec in HUB_MODEL_OPTIONS.items():
        assert getattr(HubModelOptions(), name) == spec.default, name
        assert cli[name] == config[name], name

"""The CLI's one error path, its refusals before compute, and its shared option declarations."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from pentachora.cli import app
from pentachora.cli.core import BUG_HINT, PentachoraTyper, set_resume_dir
from pentachora.cli.options import (
    IMAGE_DATA_OPTIONS,
    MAX_SEED,
    TRAIN_OPTIONS,
    TrainOptions,
    check_output_file,
    parse_overrides,
)
from pentachora.errors import ConfigError, DataError

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def run(*args: str):
    return runner.invoke(app, list(args))


def error_line(result) -> str:
    """The single ``error: ...`` line of a refused command (fails if there is not exactly one)."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output, result.output
    return lines[0]


# ----------------------------------------------------------------------------------- import cost
def _python(*code: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *code, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["train", "svae", "--help"], ["eval", "--help"]]
)
def test_help_does_not_import_torch_or_a_model(argv):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['pentachora', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('pentachora.cli', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'transformers')\n"
        "               or m.startswith(('pentachora.autoencoders', 'pentachora.memory', 'pentachora.training')))\n"
        "print('HEAVY', heavy, 'EXIT', code)\n"
    )
    proc = _python("-c", probe)
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "HEAVY [] EXIT 0", proc.stdout[-2000:] + proc.stderr[-2000:]


def test_console_entry_point_user_error_is_one_line_and_exit_2(tmp_path):
    proc = _python("-m", "pentachora.cli", args=("eval", str(tmp_path / "no-such-run")))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load"), proc.stderr
    bad_flag = _python("-m", "pentachora.cli", args=("eval", str(tmp_path), "--no-such-flag"))
    assert bad_flag.returncode == 2 and "No such option" in bad_flag.stderr


# ----------------------------------------------------------------------------------- error path
def _toy_app() -> typer.Typer:
    toy = PentachoraTyper(name="toy")
    plain = typer.Typer()  # a sub-app made without PentachoraTyper still gets the group's handling
    toy.add_typer(plain, name="plain")

    @toy.command()
    def user(kind: str = "config") -> None:
        if kind == "config":
            raise ConfigError("--lr must be a positive number [got -1]\nsecond line")
        raise typer.BadParameter("needs a multiple of 8", param_hint="--size")

    @toy.command()
    def bug() -> None:
        raise RuntimeError("boom")

    @toy.command()
    def interrupt(out: str = "") -> None:
        set_resume_dir(out or None)
        raise KeyboardInterrupt

    @toy.command()
    def exits() -> None:
        raise typer.Exit(code=3)

    @plain.command("data")
    def plain_data() -> None:
        raise DataError("folder x holds no image")

    return toy


def test_user_errors_are_one_red_line_and_exit_2():
    toy = _toy_app()
    result = runner.invoke(toy, ["user"])
    assert result.exit_code == 2
    assert error_line(result) == "error: --lr must be a positive number [got -1] second line"
    result = runner.invoke(toy, ["user", "--kind", "bad"])
    assert result.exit_code == 2 and "needs a multiple of 8" in error_line(result)
    assert "--size" in error_line(result)
    result = runner.invoke(toy, ["plain", "data"])
    assert result.exit_code == 2 and error_line(result) == "error: folder x holds no image"


def test_bugs_show_the_traceback_and_ask_for_a_report():
    result = runner.invoke(_toy_app(), ["bug"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "RuntimeError: boom" in result.output
    assert result.output.strip().splitlines()[-1] == BUG_HINT


def test_interrupt_says_where_to_resume_and_exits_130(tmp_path):
    result = runner.invoke(_toy_app(), ["interrupt", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert result.output.strip() == f"interrupted — rerun the same command to resume from {tmp_path / 'run'}"
    result = runner.invoke(_toy_app(), ["interrupt"])
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


def test_exit_codes_and_usage_errors_pass_through():
    toy = _toy_app()
    assert runner.invoke(toy, ["exits"]).exit_code == 3
    result = runner.invoke(toy, ["user", "--nope"])
    assert result.exit_code == 2 and "No such option" in result.output and "error: " not in result.output
    assert runner.invoke(toy, ["--help"]).exit_code == 0


def test_interrupted_training_prints_the_run_folder(tmp_path, monkeypatch):
    import pentachora.recipes

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pentachora.recipes, "train_autoencoder", interrupted)
    out = tmp_path / "run"
    result = run("train", "svae", "--steps", "2", "--batch-size", "2", "--image-size", "16",
                 "--noise-per-type", "1", "--data", "noise", "--out", str(out))  # fmt: skip
    assert result.exit_code == 130, result.output
    assert (
        result.output.strip().splitlines()[-1] == f"interrupted — rerun the same command to resume from {out}"
    )


def test_unexpected_failure_in_a_command_is_reported_as_a_bug(tmp_path, monkeypatch):
    import pentachora.recipes

    def broken(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(pentachora.recipes, "train_autoencoder", broken)
    result = run("train", "svae", "--steps", "1", "--batch-size", "2", "--image-size", "16",
                 "--noise-per-type", "1", "--data", "noise", "--out", str(tmp_path / "r"))  # fmt: skip
    assert result.exit_code == 1 and "ZeroDivisionError: oops" in result.output and BUG_HINT in result.output


# ----------------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--set", "V=32.5"], "V must be an integer"),
        (["--set", "V=true"], "V must be an integer"),
        (["--set", "cv_weight=abc"], "cv_weight must be a number"),
        (["--set", "dropout=2"], "dropout"),
        (["--set", "nope=1"], "nope"),
        (["--set", "novalue"], "KEY=VALUE"),
        (["--set", "cv_weight=NaN"], "finite"),
        (["--set", "max_alpha=1e308"], "max_alpha must be in [0, 1]"),  # trained to NaN with exit 0
        (["--set", "cv_readout_samples=20000000"], "cv_readout_samples must be ≤ 100,000"),
        (["--preset", "huge"], "huge"),
        (["--set", "readout=linear", "--readout", "svd"], "conflicts with --readout"),
        (["--set", "cv_mode=loss", "--cv-mode", "readout"], "conflicts with --cv-mode"),
    ],
)
def test_bad_model_settings_are_one_line_errors(args, expect):
    result = run("train", "svae", "--steps", "0", *args)
    assert result.exit_code == 2, result.output
    assert expect in error_line(result)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "svae", "--steps", "1", "--out", ""],
        ["train", "geovae", "--steps", "1", "--out", "."],
        ["demo", "--steps", "1", "-o", ""],
    ],
)
def test_an_empty_or_current_directory_run_folder_is_refused(argv, tmp_path, monkeypatch):
    """``--out ''`` silently meant the current directory (demo would have trained and written there)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert "empty or the current directory" in error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_int_given_for_a_float_field_is_accepted():
    assert parse_overrides(["cv_weight=1", "V=64", "readout=linear"]) == {
        "cv_weight": 1,
        "V": 64,
        "readout": "linear",
    }
    result = run("train", "svae", "--steps", "0", "--set", "cv_weight=1")
    assert result.exit_code == 0, result.output
    assert '"cv_weight": 1.0' in result.output


@pytest.mark.parametrize("seed", [str(2**63), "-1", "99999999999999999999999"])
def test_seeds_are_bounded_to_int64(seed):
    for command in (["train", "svae", "--steps", "0"], ["train", "geovae", "--steps", "0"], ["sample", "x"]):
        result = run(*command, "--seed", seed)
        assert result.exit_code == 2 and "--seed" in result.output, result.output
    assert run("train", "svae", "--steps", "0", "--seed", str(MAX_SEED)).exit_code == 0


def test_nonfinite_and_out_of_range_training_settings(tmp_path):
    for args in (["--grad-clip", "-1"], ["--grad-clip", "nan"], ["--batch-size", "0"], ["--warmup", "-3"]):
        result = run("train", "svae", "--steps", "1", *args, "--out", str(tmp_path / "r"))
        assert result.exit_code == 2, result.output
    for args, expect in (
        (["--lr", "nan"], "lr"),
        (["--lr", "inf"], "lr"),
        (["--lr", "-1"], "lr"),
    ):
        result = run("train", "svae", "--steps", "1", *args, "--data", "noise", "--out", str(tmp_path / "r"))
        assert result.exit_code == 2 and expect in error_line(result), result.output
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


# ----------------------------------------------------------------------------------- output paths
@pytest.fixture
def photo(tmp_path) -> Path:
    img = (torch.rand(3, 24, 40, generator=torch.Generator().manual_seed(0)) * 255).byte()
    path = tmp_path / "photo.png"
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    return path


def test_check_output_file_refusals(tmp_path, photo):
    assert check_output_file(tmp_path / "new" / "deeper" / "out.png", "image") is not None
    cases = {
        tmp_path: "is a directory",
        tmp_path / "out": "has no extension",
        tmp_path / "out.xyz": "unknown image extension",
        photo: "is the input file",
        photo.parent / "." / photo.name: "is the input file",
        photo / "out.png": "is not a directory",
    }
    for path, expect in cases.items():
        with pytest.raises(ConfigError, match=expect):
            check_output_file(path, "image", inputs=(photo,))
    with pytest.raises(ConfigError, match=r"must end in \.safetensors"):
        check_output_file(tmp_path / "x.pt", "safetensors")
    with pytest.raises(ConfigError, match="cannot create files"):
        check_output_file(Path("/proc/pentachora-out.png"), "image")


def test_read_only_outputs_are_refused(tmp_path, monkeypatch):
    target = tmp_path / "ro.png"
    target.write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == target else real_access(p, mode))
    with pytest.raises(ConfigError, match="read-only"):
        check_output_file(target, "image")
    if os.geteuid() != 0:  # root writes into read-only folders, so only a normal user can test this one
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="cannot create files"):
                check_output_file(folder / "x.png", "image")
        finally:
            folder.chmod(0o700)


@pytest.mark.parametrize(
    ("output", "expect"),
    [("{dir}", "is a directory"), ("{dir}/out", "no extension"), ("{dir}/out.abc", "unknown image extension"),
     ("{photo}", "is the input file"), ("/proc/x.png", "cannot create files")],
)  # fmt: skip
def test_reconstruct_refuses_bad_outputs_before_loading_anything(tmp_path, photo, output, expect):
    target = output.format(dir=tmp_path, photo=photo)
    before = photo.read_bytes()
    result = run("reconstruct", str(tmp_path / "no-such-run"), str(photo), "-o", target)
    assert result.exit_code == 2 and expect in error_line(result), result.output
    assert photo.read_bytes() == before


def test_sample_encode_eval_refuse_bad_outputs_first(tmp_path):
    missing = str(tmp_path / "no-such-run")
    result = run("sample", missing, "-o", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in error_line(result)
    result = run("sample", missing, "-o", str(tmp_path / "grid.gif2"))
    assert result.exit_code == 2 and "unknown image extension" in error_line(result)
    result = run("encode", "hello", "--model", missing, "-o", str(tmp_path / "x.txt"))
    assert result.exit_code == 2 and ".safetensors" in error_line(result)
    result = run("eval", missing, "--json", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in error_line(result)
    result = run("eval-memory", missing, "--json", str(tmp_path / "m.txt"))
    assert result.exit_code == 2 and ".json" in error_line(result)


# ----------------------------------------------------------------------------------- encode --file
def test_encode_file_errors(tmp_path):
    missing_model = str(tmp_path / "no-such-run")
    out = str(tmp_path / "p.safetensors")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    cases = {
        "missing.txt": "does not exist",
        "empty.txt": "is empty",
        "blank.txt": "no",
        "binary.txt": "looks binary",
        "latin1.txt": "not UTF-8",
    }
    for name, expect in cases.items():
        result = run("encode", "--file", str(tmp_path / name), "--model", missing_model, "-o", out)
        assert result.exit_code == 2, (name, result.output)
        assert expect in error_line(result), (name, result.output)
    result = run("encode", "--file", str(tmp_path), "--model", missing_model, "-o", out)
    assert result.exit_code == 2 and "is a directory" in error_line(result)
    result = run("encode", "--model", missing_model, "-o", out)
    assert result.exit_code == 2 and "at least one text" in error_line(result)


# ----------------------------------------------------------------------------------- runs of another family
@pytest.fixture
def memory_run(tmp_path) -> Path:
    run_dir = tmp_path / "memory-run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text(
        json.dumps({"model_type": "geometric_memory", "config": {}})
    )
    (run_dir / "final" / "model.safetensors").write_bytes(b"")
    return run_dir


def test_autoencoder_commands_name_a_memory_run(memory_run, photo, tmp_path):
    for args in (
        ["eval", str(memory_run)],
        ["reconstruct", str(memory_run), str(photo), "-o", str(tmp_path / "r.png")],
        ["sample", str(memory_run), "-o", str(tmp_path / "s.png")],
        ["export-linear", str(memory_run)],
    ):
        result = run(*args)
        assert result.exit_code == 2, result.output
        line = error_line(result)
        assert "geometric_memory" in line and "eval-memory" in line, line
    (memory_run / "final" / "config.json").write_text(json.dumps({"model_type": "conduit_hub", "config": {}}))
    line = error_line(run("eval", str(memory_run)))
    assert "'conduit_hub'" in line and "not an image autoencoder" in line and "eval-hub" in line
    (memory_run / "final" / "config.json").write_text(json.dumps({"model_type": "nope", "config": {}}))
    line = error_line(run("eval", str(memory_run)))
    assert "'nope'" in line and "not an image autoencoder" in line and "patch_svae" in line


# ----------------------------------------------------------------------------------- one declaration
def _train_commands() -> dict[str, typing.Any]:
    group = get_command(app)
    train = group.commands["train"]
    return {name: train.commands[name] for name in ("svae", "geovae", "batteries", "container", "memory")}


def test_training_options_are_declared_once_and_map_onto_train_config():
    from pentachora.training import GRAD_CLIP_MODES, TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    for name, spec in TRAIN_OPTIONS.items():
        assert spec.help.strip(), name
        if spec.field is None:  # --fresh is an argument of the recipe, not a TrainConfig field
            continue
        assert spec.field in fields, name
        if name not in ("bf16", "out", "grad_clip_mode"):
            assert spec.type in (*typing.get_args(hints[spec.field]), hints[spec.field]), name
    assert typing.get_args(TRAIN_OPTIONS["grad_clip_mode"].type) == GRAD_CLIP_MODES
    assert TRAIN_OPTIONS["weight_decay"].default == TrainConfig().weight_decay
    assert {f.name for f in dataclasses.fields(TrainOptions)} == set(TRAIN_OPTIONS)
    # the defaults of `train svae` give the TrainConfig the old 17-parameter helper built
    svae = TrainOptions(**{n: s.default for n, s in TRAIN_OPTIONS.items()}).train_config(out="runs/x")
    assert svae == TrainConfig(
        steps=500, batch_size=16, lr=1e-3, weight_decay=0.01, warmup_steps=50, grad_clip=1.0,
        grad_clip_mode="fixed", mixed_precision="no", seed=0, eval_every=100, save_every=250, log_every=12,
        out_dir="runs/x", progress=True,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="steps"):
        TrainOptions(steps=0).train_config()


def test_fresh_is_passed_only_to_recipes_that_take_it():
    def takes(model, fresh: bool = False): ...

    def lacks(model): ...

    assert TrainOptions().fit_kwargs(lacks) == {}
    assert TrainOptions(fresh=True).fit_kwargs(takes) == {"fresh": True}
    with pytest.raises(ConfigError, match="--fresh"):
        TrainOptions(fresh=True).fit_kwargs(lacks)

    def resumes(model, resume: bool = True, fresh: bool = False): ...

    assert TrainOptions(force_resume=True).fit_kwargs(resumes) == {"resume": "force"}
    with pytest.raises(ConfigError, match="--force-resume"):
        TrainOptions(force_resume=True).fit_kwargs(lacks)
    with pytest.raises(ConfigError, match="give one of them"):
        TrainOptions(fresh=True, force_resume=True).fit_kwargs(resumes)


def test_a_resume_with_another_seed_is_refused_unless_forced(tmp_path):
    out = str(tmp_path / "run")
    base = ("train", "svae", "--preset", "tiny", "--data", "noise", "--image-size", "16", "--batch-size", "2")
    assert run(*base, "--steps", "2", "--out", out).exit_code == 0
    refused = run(*base, "--steps", "3", "--seed", "5", "--out", out)
    assert (
        refused.exit_code == 2 and "seed 0" in error_line(refused) and "--force-resume" in error_line(refused)
    )
    forced = run(*base, "--steps", "3", "--seed", "5", "--force-resume", "--out", out)
    assert forced.exit_code == 0, forced.output
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3


def test_a_run_folder_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "taken").write_text("x")
    result = run("train", "svae", "--steps", "1", "--data", "noise", "--out", str(tmp_path / "taken"))
    assert result.exit_code == 2 and "is a file, not a run folder" in error_line(result)
    result = run(
        "train", "geovae", "--steps", "1", "--data", "noise", "--out", str(tmp_path / "taken" / "sub")
    )
    assert result.exit_code == 2 and "is not a directory" in error_line(result)


def test_every_train_command_declares_the_shared_options_with_help():
    commands = _train_commands()
    expected = {
        "svae": set(TRAIN_OPTIONS) | set(IMAGE_DATA_OPTIONS),
        "geovae": (set(TRAIN_OPTIONS) - {"grad_clip_mode", "weight_decay"}) | set(IMAGE_DATA_OPTIONS),
        "container": (set(TRAIN_OPTIONS) - {"grad_clip_mode", "weight_decay", "bf16"})
        | set(IMAGE_DATA_OPTIONS),
        "memory": set(TRAIN_OPTIONS) - {"grad_clip_mode", "weight_decay"},
        "batteries": {"steps", "batch_size", "lr", "seed", "out"},
    }
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params}
        assert expected[name] <= set(params), (name, sorted(expected[name] - set(params)))
        for p in cmd.params:
            if p.param_type_name == "option":
                assert (p.help or "").strip(), f"train {name} {p.opts} has no help"
    defaults = {name: {p.name: p.default for p in cmd.params} for name, cmd in commands.items()}
    assert defaults["svae"]["steps"] == 500 and defaults["batteries"]["steps"] == 400
    assert defaults["memory"]["batch_size"] == 32 and defaults["memory"]["lr"] == 2e-3
    assert defaults["container"]["image_size"] == 32 and defaults["container"]["eval_tiles"] == 16
    assert defaults["container"]["warmup"] == 25 and defaults["geovae"]["warmup"] == 50


def test_train_help_explains_each_option():
    result = runner.invoke(
        app, ["train", "memory", "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"}
    )
    assert result.exit_code == 0
    for flag in ("--steps", "--batch-size", "--lr", "--warmup", "--grad-clip", "--seed", "--eval-every",
                 "--save-every", "--bf16", "--out", "Documents per batch (InfoNCE negatives)."):  # fmt: skip
        assert flag in result.output, flag


@pytest.mark.slow
def test_ctrl_c_during_a_real_training_exits_130_with_the_resume_hint(tmp_path):
    """A real SIGINT through the console entry point (slow: starts torch in a subprocess)."""
    import signal

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    args = ["train", "svae", "--steps", "100000", "--batch-size", "2", "--image-size", "16", "--data", "noise",
            "--noise-per-type", "1", "--eval-every", "0", "--save-every", "0", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pentachora.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "COLUMNS": "400"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until training has started
        if line.startswith("training "):
            break
    while not (out / "metrics.jsonl").is_file() and proc.poll() is None:
        subprocess.run(["sleep", "0.2"], check=False)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted — rerun the same command to resume from {out}", err


def test_audit_flag_logs_audit_records_and_the_audit_command_writes_a_report(tmp_path):
    out = tmp_path / "run"
    args = (
        "train",
        "geovae",
        "--preset",
        "tiny-12",
        "--data",
        "noise",
        "--image-size",
        "16",
        "--batch-size",
        "2",
    )
    result = run(
        *args, "--steps", "4", "--audit", "encoder,bottleneck", "--audit-every", "2", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    audits = [r for r in records if r.get("split") == "audit"]
    assert audits and {r["step"] for r in audits} >= {2, 4}
    report = run("audit", str(out))
    assert report.exit_code == 0, report.output
    text = (out / "audit" / "audit.md").read_text()
    assert "`encoder`" in text and "`bottleneck`" in text
    missing = run(*args, "--steps", "1", "--audit", "encodr", "--out", str(tmp_path / "other"))
    assert missing.exit_code == 2 and "close matches: encoder" in error_line(missing)


@pytest.mark.parametrize(
    ("args", "floats"),
    [
        (["--set", "readout=linear"], "8 floats per patch"),  # was trained as readout=svd (flag default won)
        (["--readout", "linear"], "8 floats per patch"),
        (["--set", "readout=linear", "--readout", "linear"], "8 floats per patch"),
        ([], "328 floats per patch"),  # the canonical readout: V·D + D + D² = 256 + 8 + 64 for tiny
    ],
)
def test_set_and_model_flags_are_one_mechanism(args, floats):
    """``--set readout=linear`` (the documented NoSVD ablation) used to lose to the flag's default."""
    result = run("train", "svae", "--steps", "0", *args)
    assert result.exit_code == 0, result.output
    assert floats in " ".join(result.output.split())


DEMO_FAST = ["demo", "--steps", "1", "--batch-size", "2", "--image-size", "32", "--eval-tiles", "2",
             "--noise-per-type", "1", "--models", "svae"]  # fmt: skip


def test_demo_refuses_a_folder_it_did_not_write_and_deletes_nothing(tmp_path):
    """``demo -o DIR`` deleted an existing ``DIR/svae`` (a real run and a user's notes) before checking."""
    out = tmp_path / "d"
    (out / "svae").mkdir(parents=True)
    (out / "svae" / "notes.txt").write_text("mine")
    (out / "svae" / "train_config.json").write_text("{}")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run(*DEMO_FAST, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert "did not write" in error_line(result)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a marked demo folder with a stranger inside is refused too
    (out / ".pentachora-demo").write_text("x")
    result = run(*DEMO_FAST, "-o", str(out))
    assert result.exit_code == 2 and "svae/notes.txt" in error_line(result)
    assert (out / "svae" / "notes.txt").read_text() == "mine"


def test_demo_validates_every_option_before_touching_disk(tmp_path):
    out = tmp_path / "d"
    assert run(*DEMO_FAST, "-o", str(out)).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    result = run(*DEMO_FAST, "-o", str(out), "--lr", "nan")
    assert result.exit_code == 2, result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # an image size the contenders' patch does not divide: once a traceback after the folder was marked
    fresh = tmp_path / "new"
    result = run(*DEMO_FAST, "-o", str(fresh), "--image-size", "30")
    assert result.exit_code == 2 and "patch size 8" in error_line(result) and not fresh.exists()
    # its own folder is reused: a second fresh demo run replaces the first
    assert run(*DEMO_FAST, "-o", str(out)).exit_code == 0


def test_demo_honours_a_live_training_lock(tmp_path):
    """A demo run must not wipe a sub-folder while another process trains in it."""
    import subprocess
    import sys
    import time

    out = tmp_path / "d"
    assert run(*DEMO_FAST, "-o", str(out)).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(out / "svae" / ".lock")],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p: p.read_bytes() for p in (out / "svae").rglob("*") if p.is_file() and p.name != ".lock"}
        t0 = time.perf_counter()
        result = run(*DEMO_FAST, "-o", str(out))
        assert result.exit_code == 2, result.output
        assert "in use by another training" in error_line(result) and time.perf_counter() - t0 < 60
        after = {p: p.read_bytes() for p in (out / "svae").rglob("*") if p.is_file() and p.name != ".lock"}
        assert after == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "target", ["final/config.json", "final/model.safetensors", "eval.json", "train_config.json"]
)
def test_an_output_never_overwrites_a_runs_own_files(tmp_path, target):
    """``eval --json RUN/final/config.json`` (and ``models --json``, ``encode -o``…) exited 0 and the model
    no longer loaded."""
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    run_dir = tmp_path / "run"
    PatchSVAE(PatchSVAEConfig.preset("tiny", V=16, hidden=32, depth=1)).save_pretrained(run_dir / "final")
    for name in ("train_config.json", "eval.json"):
        (run_dir / name).write_text("{}")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    kind = "json" if target.endswith(".json") else "safetensors"
    argv = ["models", "--json", str(run_dir / target)] if kind == "json" else None
    if argv is None:  # a .safetensors output: the memory encoder's -o
        argv = ["encode", "some text", "-m", str(run_dir), "-o", str(run_dir / target)]
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert "writing there would break it" in error_line(result)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # the eval of that run may not write its json over the checkpoint either
    if target == "final/config.json":
        result = run(
            "eval", str(run_dir), "--json", str(run_dir / target), "--data", "noise", "--noise-per-type", "1"
        )
        assert result.exit_code == 2 and "writing there would break it" in error_line(result)


def test_a_tile_larger_than_every_held_out_photo_is_a_one_line_error(tmp_path):
    """It was a ValueError traceback with the "this is a bug" hint."""
    result = run("demo", "--steps", "1", "--image-size", "4096", "-o", str(tmp_path / "d"))
    assert result.exit_code == 2, result.output
    assert "no held-out image is at least 4096×4096" in error_line(result) and BUG_HINT not in result.output


def test_eval_of_another_family_names_it_and_the_command_to_use(tmp_path):
    """``eval`` on a hub run said "unknown model_type"."""
    import json

    folder = tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "conduit_hub", "config": {}}))
    (folder / "model.safetensors").write_bytes(b"")
    result = run("eval", str(tmp_path / "run"), "--data", "noise", "--noise-per-type", "1")
    assert result.exit_code == 2, result.output
    assert "'conduit_hub'" in error_line(result) and "eval-hub" in error_line(result)


def test_eval_of_finite_but_exploding_weights_fails_instead_of_printing_nan(tmp_path):
    """Weights ×1e30 pass the load check (finite) and gave NaN metrics with exit 0."""
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig
    from pentachora.io import atomic_save_tensors, load_tensors

    folder = tmp_path / "run" / "final"
    torch.manual_seed(0)
    PatchSVAE(PatchSVAEConfig.preset("tiny", readout="linear", V=16, hidden=32, depth=1)).save_pretrained(
        folder
    )
    weights = load_tensors(folder / "model.safetensors")
    atomic_save_tensors(folder / "model.safetensors", {k: v * 1e30 if v.is_floating_point() else v
                                                       for k, v in weights.items()},
                        metadata={"model_type": "patch_svae"})  # fmt: skip
    result = run(
        "eval", str(tmp_path / "run"), "--eval-tiles", "2", "--noise-per-type", "1", "--image-size", "32"
    )
    assert result.exit_code == 2, result.output
    assert "reconstruct to NaN/inf" in error_line(result) and "model is broken" in error_line(result)


def test_a_closed_pipe_is_not_reported_as_a_bug(monkeypatch):
    """`pentachora demo --help | head` printed a traceback and "this is a bug in pentachora"."""
    import pentachora.recipes.loading as loading

    def reader_left(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(loading, "preset_rows", reader_left)
    result = CliRunner().invoke(app, ["models", "--no-params"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "this is a bug" not in result.output


def test_cv_table_refuses_sizes_it_cannot_allocate_before_allocating(monkeypatch):
    """The documented --samples maximum ended in an allocator traceback (issue 25)."""
    import pentachora.geometry.cv as cv

    def never(*args, **kwargs):
        raise AssertionError("the table was computed")

    monkeypatch.setattr(cv, "_target_cv_stats_cached", never)
    result = CliRunner().invoke(app, ["geometry", "cv-table", "--dim", "16", "--samples", "10000000"])
    assert result.exit_code == 2, result.output
    assert "GiB" in result.output and "--samples" in result.output and "Traceback" not in result.output
    with pytest.raises(ValueError, match="GiB"):
        cv.target_cv_stats(4096, n_points=100_000, n_samples=10, trials=8)


def test_eval_of_a_training_run_survives_a_checkpoint_pruned_while_it_is_read(tmp_path, monkeypatch):
    """A live training saves step N+1 and prunes step N between `eval`'s resolve and its load; that
    was a CheckpointError (issue 25). The newest checkpoint is loaded instead."""
    import shutil

    import pentachora.recipes
    from pentachora.training.state import TRAINER_STATE_NAME, checkpoint_name

    out = tmp_path / "run"
    trained = run("train", "svae", "--steps", "2", "--batch-size", "2", "--image-size", "16", "--save-every", "1",
                  "--eval-every", "0", "--noise-per-type", "1", "--data", "noise", "--out", str(out))  # fmt: skip
    assert trained.exit_code == 0, trained.output
    shutil.rmtree(out / "final")  # the run is still training: only checkpoints so far
    real_load, calls = pentachora.recipes.load_model, []

    def racing_load(folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 1:  # the trainer saves a newer checkpoint and prunes the one just resolved
            newer = folder.parent / checkpoint_name(3)
            shutil.copytree(folder, newer)
            state = json.loads((newer / TRAINER_STATE_NAME).read_text())
            (newer / TRAINER_STATE_NAME).write_text(json.dumps({**state, "step": 3}))
            shutil.rmtree(folder)
        return real_load(folder, *args, **kwargs)

    monkeypatch.setattr(pentachora.recipes, "load_model", racing_load)
    result = run("eval", str(out), "--data", "noise", "--image-size", "16", "--noise-per-type", "1")
    assert result.exit_code == 0, result.output
    assert [p.name for p in calls] == [checkpoint_name(2), checkpoint_name(3)]


def test_demo_checks_its_results_path_before_training(tmp_path):
    """`--results FILE/x` trained every model, then ended in a FileExistsError traceback."""
    (tmp_path / "notes.txt").write_text("notes")
    out = tmp_path / "d"
    result = run(*DEMO_FAST, "-o", str(out), "--results", str(tmp_path / "notes.txt" / "x"))
    assert result.exit_code == 2 and "--results" in error_line(result) and not out.exists()


def test_generate_refuses_a_bad_encoder_or_weighting_before_loading_the_model(tmp_path, monkeypatch):
    import pentachora.diffusion.mini as mini

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(mini.MiniT2IPipeline, "from_run", classmethod(never))
    bad = run(
        "generate",
        "a red circle",
        "--model",
        str(tmp_path),
        "--encoder",
        "bogus:x",
        "-o",
        str(tmp_path / "a.png"),
    )
    assert bad.exit_code == 2 and "unknown encoder" in error_line(bad)
    bad = run(
        "generate",
        "a red circle",
        "--model",
        str(tmp_path),
        "--weighting",
        "nope",
        "-o",
        str(tmp_path / "a.png"),
    )
    assert bad.exit_code == 2 and "--weighting" in error_line(bad)

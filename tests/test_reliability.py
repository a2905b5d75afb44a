"""Reliability: fresh machines, run folders, hostile checkpoints, bad settings (issue 10, items 1–10)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pentachora.errors import CheckpointError, ConfigError, DataError, RunFolderError
from pentachora.io import atomic_save_tensors, atomic_write_json
from pentachora.modeling import ModelOutput, PentachoraModel, register_model
from pentachora.training import Callback, TrainConfig, Trainer, TrainingDiverged, read_metrics

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- 1. fresh machine
def test_requirements_install_the_versions_ci_tested():
    req = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-c constraints.txt" in [line.strip() for line in req]
    assert "torch==2.13.0" in [line.strip() for line in req]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9_.\-]*)", line)
            assert m, f"constraints.txt line is not an exact pin: {line!r}"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    for name in (
        "pytest",
        "hypothesis",
        "transformers",
        "diffusers",
        "accelerate",
        "numpy",
        "scipy",
        "scikit-image",
        "safetensors",
        "typer",
        "pillow",
        "einops",
        "torch",
    ):
        assert name in pins, f"constraints.txt does not pin {name}"
    assert pins["torch"] == "2.13.0"
    assert "+" not in "".join(pins.values())  # local tags (+cpu) are not on PyPI
    # and this environment (installed by the README's command, as CI installs it) *is* those versions
    from importlib import metadata

    wrong = {}
    for name, pin in pins.items():
        try:
            installed = metadata.version(name).split("+", 1)[0]
        except metadata.PackageNotFoundError:
            continue  # a pin for a platform-specific dependency this machine does not need
        if installed != pin:
            wrong[name] = (installed, pin)
    assert not wrong, f"installed ≠ constraints.txt (installed, pinned): {wrong}"


# ----------------------------------------------------------------------------- shared test pieces
@dataclass
class RelConfig:
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.1
    recon_weight: float = 1.0


@dataclass
class RelOutput(ModelOutput):
    recon: torch.Tensor | None = None


@register_model
class RelAE(PentachoraModel):
    model_type = "test_reliability_ae"
    config_class = RelConfig

    def __init__(self, config: RelConfig) -> None:
        super().__init__(config)
        self.enc = nn.Sequential(nn.Linear(config.dim, config.hidden), nn.Tanh(), nn.Dropout(config.dropout))
        self.dec = nn.Linear(config.hidden, config.dim)

    def forward(self, x: torch.Tensor) -> RelOutput:
        recon = (self.dec(self.enc(x)) - x).pow(2).mean()
        return RelOutput(loss=self.config.recon_weight * recon, recon=recon)


@register_model
class OtherAE(RelAE):
    model_type = "test_reliability_other_ae"


class Toy:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.mix = torch.randn(2, 8, generator=torch.Generator().manual_seed(99))

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(16, 2, generator=g) @ self.mix


def model(seed: int = 0, cls: type[RelAE] = RelAE, **kw: Any) -> RelAE:
    torch.manual_seed(seed)
    return cls(RelConfig(**kw))


def tcfg(out: Path | None, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        steps=6, batch_size=16, lr=1e-2, log_every=1, progress=False, tensorboard=False, seed=7
    )
    base.update(kw)
    return TrainConfig(out_dir=str(out) if out is not None else None, **base)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (except the lock) by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ----------------------------------------------------------------------------- 2. one training per folder
def test_a_second_training_on_a_locked_run_folder_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as fh:  # another process's lock (a separate open file description)
        fh.write("4242\n")
        fh.flush()
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match=r"in use by another training \(pid 4242\)"):
            Trainer(model(), tcfg(out), Toy()).fit()
        assert not (out / "train_config.json").exists()  # refused before writing anything
    res = Trainer(model(), tcfg(out), Toy()).fit()  # released: trains
    assert res.steps == 6


def test_a_symlinked_or_directory_lock_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A symlinked ``OUT/.lock`` was opened read-write and truncated, wiping its target (issue 25);
    a ``.lock`` directory gave a traceback."""
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(RunFolderError, match="symbolic link"):
        Trainer(model(), tcfg(out), Toy()).fit()
    assert victim.read_text() == "do not truncate me\n"
    assert not (out / "train_config.json").exists()
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    with pytest.raises(RunFolderError, match="not a regular file"):
        Trainer(model(), tcfg(out), Toy()).fit()


def test_the_lock_is_held_during_training_and_names_this_process(tmp_path: Path) -> None:
    seen: list[str] = []

    class Peek(Callback):
        def on_step_end(self, trainer: Trainer, step: int, scalars: dict[str, float]) -> None:
            if step == 2:
                seen.append((tmp_path / ".lock").read_text().strip())
                with open(tmp_path / ".lock") as fh, pytest.raises(BlockingIOError):
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    Trainer(model(), tcfg(tmp_path), Toy(), callbacks=[Peek()]).fit()
    assert seen == [str(os.getpid())]


def test_resume_with_another_seed_is_refused_unless_forced(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=3), Toy()).fit()
    with pytest.raises(RunFolderError, match=r"seed 7, this run has seed 8"):
        Trainer(model(), tcfg(tmp_path, steps=6, seed=8), Toy()).fit()
    res = Trainer(model(), tcfg(tmp_path, steps=6, seed=8), Toy()).fit(resume="force")
    assert res.resumed_from == 3 and res.steps == 6


def test_resume_with_another_model_config_can_be_forced_when_shapes_match(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=3), Toy()).fit()
    with pytest.raises(CheckpointError, match="different"):
        Trainer(model(recon_weight=2.0), tcfg(tmp_path, steps=6), Toy()).fit()
    res = Trainer(model(recon_weight=2.0), tcfg(tmp_path, steps=6), Toy()).fit(resume="force")
    assert res.resumed_from == 3
    with pytest.raises(CheckpointError, match="holds a 'test_reliability_ae' model"):
        Trainer(model(cls=OtherAE), tcfg(tmp_path, steps=9), Toy()).fit(resume="force")


# ----------------------------------------------------------------------------- 3. finished runs are not wiped
def _finished_run(out: Path) -> None:
    m = model()
    Trainer(m, tcfg(out, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()
    m.save_pretrained(out / "final")
    atomic_write_json(out / "eval.json", {"psnr": 1.0})


def test_a_finished_run_without_a_usable_checkpoint_is_refused_not_wiped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _finished_run(out)
    for step in ("step-0000002", "step-0000004"):  # every checkpoint corrupt
        (out / "checkpoints" / step / "model.safetensors").write_bytes(b"\x00garbage")
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"no usable checkpoint.*fresh=True"):
        Trainer(model(), tcfg(out, steps=8), Toy()).fit()
    assert snapshot(out) == before  # nothing replaced, truncated or renamed
    with pytest.raises(FileExistsError, match=r"already holds checkpoints|earlier run"):
        Trainer(model(), tcfg(out, steps=8), Toy()).fit(resume=False)

    shutil.rmtree(out / "checkpoints")  # no checkpoint at all, but final/ and eval.json
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"earlier run \(.*final.*\) but no usable checkpoint"):
        Trainer(model(), tcfg(out, steps=8), Toy()).fit()
    with pytest.raises(FileExistsError, match="earlier run"):
        Trainer(model(), tcfg(out, steps=8), Toy()).fit(resume=False)
    assert snapshot(out) == before


def test_fresh_moves_the_earlier_run_aside(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _finished_run(out)
    before = snapshot(out)
    res = Trainer(model(), tcfg(out, steps=3), Toy()).fit(fresh=True)
    assert res.resumed_from is None and res.steps == 3
    olds = sorted(tmp_path.glob("run.old-*"))
    assert len(olds) == 1 and snapshot(olds[0]) == before
    assert not (out / "final").exists() and not (out / "eval.json").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_an_unreadable_newer_checkpoint_is_kept_aside_and_never_overwritten(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()
    bad = tmp_path / "checkpoints" / "step-0000004"
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    kept = snapshot(bad)
    res = Trainer(model(), tcfg(tmp_path, steps=6, save_every=2, keep_last_checkpoints=1), Toy()).fit()
    assert res.resumed_from == 2 and res.steps == 6
    aside = tmp_path / "checkpoints" / "unreadable-step-0000004"
    assert aside.is_dir() and snapshot(aside) == kept  # neither overwritten by the new step 4 nor pruned
    assert (tmp_path / "checkpoints" / "step-0000006").is_dir()


def test_parseable_but_wrong_trainer_state_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()
    path = tmp_path / "checkpoints" / "step-0000004" / "trainer_state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "nonfinite_steps": "many", "callbacks": []}))
    res = Trainer(model(), tcfg(tmp_path, steps=6), Toy()).fit()
    assert res.resumed_from == 2


def test_nan_optimizer_moments_fall_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    from pentachora.training import load_optimizer_state, save_optimizer_state

    Trainer(model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()
    path = tmp_path / "checkpoints" / "step-0000004" / "optimizer.safetensors"
    opt, sched = load_optimizer_state(path)
    first = next(iter(opt["state"].values()))
    first["exp_avg"].fill_(math.nan)
    save_optimizer_state(path, opt, sched)
    res = Trainer(model(), tcfg(tmp_path, steps=6), Toy()).fit()
    assert res.resumed_from == 2 and res.nonfinite_steps == 0


def _tamper_optimizer(tmp_path: Path, change: Any) -> None:
    from pentachora.training import load_optimizer_state, save_optimizer_state

    path = tmp_path / "checkpoints" / "step-0000004" / "optimizer.safetensors"
    opt, sched = load_optimizer_state(path)
    change(opt, sched)
    save_optimizer_state(path, opt, sched)


@pytest.mark.parametrize(
    "change",
    [
        lambda opt, sched: sched.update(last_epoch=100_000),  # a resumed run on another schedule
        lambda opt, sched: sched.update(base_lrs=[math.nan] * len(sched["base_lrs"])),
        lambda opt, sched: opt["param_groups"][0].update(weight_decay=-5.0),
        lambda opt, sched: opt["param_groups"][0].update(lr=math.inf),
        lambda opt, sched: opt["param_groups"][0].update(betas=[0.9, 1.5]),
        lambda opt, sched: opt["param_groups"][0].update(eps=0.0),
    ],
    ids=[
        "scheduler-last-epoch",
        "scheduler-nan-base-lr",
        "negative-weight-decay",
        "inf-lr",
        "beta-above-1",
        "zero-eps",
    ],
)
def test_tampered_optimizer_or_scheduler_values_fall_back_to_the_previous_checkpoint(
    tmp_path: Path, change: Any
) -> None:
    """They were accepted on resume (a negative weight decay, a scheduler 100,000 steps ahead)."""
    Trainer(model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()
    _tamper_optimizer(tmp_path, change)
    res = Trainer(model(), tcfg(tmp_path, steps=6), Toy()).fit()
    assert res.resumed_from == 2


def test_a_nan_callback_state_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    class Counter(Callback):
        def __init__(self) -> None:
            self.ema = 0.0

        def on_step_end(self, trainer: Trainer, step: int, output_scalars: dict[str, float]) -> None:
            self.ema = 0.9 * self.ema + 0.1 * step

        def state_dict(self) -> dict[str, Any]:
            return {"ema": self.ema}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.ema = float(state["ema"])

    Trainer(
        model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy(), callbacks=[Counter()]
    ).fit()
    path = tmp_path / "checkpoints" / "step-0000004" / "trainer_state.json"
    state = json.loads(path.read_text())
    (key,) = state["callbacks"]
    state["callbacks"][key]["ema"] = math.nan
    path.write_text(json.dumps(state))  # json writes NaN, and reads it back
    res = Trainer(model(), tcfg(tmp_path, steps=6), Toy(), callbacks=[Counter()]).fit()
    assert res.resumed_from == 2


def test_a_misshapen_optimizer_moment_is_a_checkpoint_error_not_a_crash_mid_step(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=4, save_every=2, keep_last_checkpoints=0), Toy()).fit()

    def reshape(opt: dict, sched: dict) -> None:
        first = next(iter(opt["state"].values()))
        first["exp_avg"] = torch.zeros(first["exp_avg"].numel() + 1)

    _tamper_optimizer(tmp_path, reshape)
    with pytest.raises(CheckpointError, match="optimizer state 'exp_avg' has shape"):
        Trainer(model(), tcfg(tmp_path, steps=6), Toy()).fit()


# ----------------------------------------------------------------------------- 4. data is part of the run
def test_resume_on_other_data_is_refused_and_metadata_is_written_only_when_accepted(tmp_path: Path) -> None:
    data = {"data": "noise:gaussian", "image_size": 16}
    Trainer(model(), tcfg(tmp_path, steps=3), Toy(), run_data=data).fit()
    assert json.loads((tmp_path / "data.json").read_text()) == data
    saved = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match=r"other data \(image_size: saved 16 vs now 32"):
        Trainer(model(), tcfg(tmp_path, steps=6), Toy(), run_data={**data, "image_size": 32}).fit()
    with pytest.raises(CheckpointError, match="holds a 'test_reliability_ae' model"):
        Trainer(model(cls=OtherAE), tcfg(tmp_path, steps=6), Toy(), run_data={"data": "images"}).fit()
    assert snapshot(tmp_path) == saved  # refused runs rewrite neither data.json nor the configs
    res = Trainer(model(), tcfg(tmp_path, steps=6), Toy(), run_data=data).fit()
    assert res.resumed_from == 3


def test_train_autoencoder_compares_the_data_spec_and_image_size(tmp_path: Path) -> None:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig
    from pentachora.recipes import build_eval_data, train_autoencoder

    def run(data: str, size: int, steps: int, **kw: Any):
        torch.manual_seed(0)
        net = PatchSVAE(PatchSVAEConfig.preset("tiny"))
        ev = build_eval_data(parse(data), size, n_noise_per_type=1)
        return train_autoencoder(
            net, data, tcfg(tmp_path, steps=steps, batch_size=2), image_size=size, eval_data=ev, **kw
        )

    from pentachora.data import parse_data_spec as parse

    run("noise:gaussian", 16, 2)
    saved = json.loads((tmp_path / "data.json").read_text())
    with pytest.raises(RunFolderError, match="other data"):
        run("noise:pink", 16, 3)
    with pytest.raises(RunFolderError, match="image_size"):
        run("noise:gaussian", 32, 3)
    assert json.loads((tmp_path / "data.json").read_text()) == saved
    assert run("noise:gaussian", 16, 3).result.resumed_from == 2


# ----------------------------------------------------------------------------- 5. no unpickling
def test_encoder_classes_are_allow_listed() -> None:
    pytest.importorskip("transformers")
    from pentachora.nn.text_encoder import FrozenTextEncoder

    for bad in ("os", "AutoModelForCausalLM", "__class__", "PreTrainedModel"):
        with pytest.raises(CheckpointError, match="not allowed"):
            FrozenTextEncoder.from_pretrained("minilm", model_class=bad)


def test_a_pickle_weights_file_is_refused_without_being_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from pentachora.nn.text_encoder import FrozenTextEncoder, tiny_encoder

    net, tok = tiny_encoder("bert")
    net.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")  # the test writes a pickle; nothing may read it
    calls: list[Any] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*pytorch_model\.bin is refused"):
        FrozenTextEncoder.from_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="cannot load the text encoder"):
        FrozenTextEncoder.from_pretrained(str(tmp_path), model_class="BertModel")
    assert calls == []


def test_a_missing_encoder_is_a_checkpoint_error(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from pentachora.nn.text_encoder import FrozenTextEncoder

    with pytest.raises(CheckpointError, match="offline"):
        FrozenTextEncoder.from_pretrained(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- 6. no allocation before the check
def _svae_checkpoint(folder: Path, **config_changes: Any) -> Path:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    torch.manual_seed(0)
    PatchSVAE(PatchSVAEConfig.preset("tiny")).save_pretrained(folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"].update(config_changes)
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_a_huge_depth_in_config_is_refused_before_building(tmp_path: Path) -> None:
    from pentachora.recipes import load_model

    folder = _svae_checkpoint(tmp_path, depth=5000)
    with pytest.raises(
        CheckpointError, match=r"depth must be ≤ 64|more than \d+ tensors, but the file holds \d+"
    ):
        load_model(folder)


def test_a_huge_width_in_config_is_refused_against_the_header(tmp_path: Path) -> None:
    from pentachora.recipes import load_model

    for hidden in (100_000, 10**9):
        folder = _svae_checkpoint(tmp_path / str(hidden), hidden=hidden)
        with pytest.raises(
            CheckpointError, match=r"hidden must be ≤|does not match PatchSVAE: .*shape mismatch|more memory"
        ):
            load_model(folder)


def test_a_good_checkpoint_still_loads_exactly(tmp_path: Path) -> None:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig
    from pentachora.recipes import load_model

    torch.manual_seed(0)
    net = PatchSVAE(PatchSVAEConfig.preset("tiny"))
    net.save_pretrained(tmp_path)
    back = load_model(tmp_path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())


# ----------------------------------------------------------------------------- 7. settings are checked
def test_non_finite_and_out_of_range_settings_are_refused() -> None:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    for bad, match in (
        ({"max_alpha": math.inf}, "max_alpha must be (a finite number|in)"),
        ({"cv_weight": math.nan}, "cv_weight must be a finite number"),
        ({"dropout": 2.0}, r"dropout must be in \[0, 1\)"),
        ({"V": 32.5}, "V must be an integer"),
        ({"recon_weight": -1.0}, "recon_weight must be >= 0"),
        ({"readout": "linear", "omega_layernorm": 1}, "omega_layernorm must be true or false"),
    ):
        with pytest.raises(ConfigError, match=match):
            PatchSVAE(PatchSVAEConfig.preset("tiny", **bad))
    from pentachora.modeling import config_from_dict

    with pytest.raises(ConfigError, match=r"readout must be one of \['svd', 'linear'\]"):
        config_from_dict(PatchSVAEConfig, {"readout": "magic"}, error=ConfigError)
    with pytest.raises(ConfigError, match="V must be an integer, got '8'"):
        config_from_dict(PatchSVAEConfig, {"V": "8"}, error=ConfigError)
    net = PatchSVAE(PatchSVAEConfig.preset("tiny", cv_weight=1))  # an int for a float field: coerced
    assert isinstance(net.config.cv_weight, float) and net.config.cv_weight == 1.0
    for bad in (
        {"grad_clip": math.nan},
        {"lr": math.inf},
        {"seed": 10**30},
        {"steps": 2.5},
        {"min_lr_ratio": 2.0},
        {"betas": (0.9, math.nan)},
    ):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_geovae_align_fraction_is_checked() -> None:
    from pentachora.recipes import geovae_schedule

    for bad in (2.0, -0.1, math.nan):
        with pytest.raises(ConfigError, match="align_fraction"):
            geovae_schedule(100, align_fraction=bad)


def test_a_nan_in_a_saved_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    from pentachora.recipes import load_model

    folder = _svae_checkpoint(tmp_path, max_alpha=math.nan)  # json writes NaN, Python reads it
    with pytest.raises(CheckpointError, match=r"config\.json.*max_alpha must be a finite number"):
        load_model(folder)
    folder = _svae_checkpoint(tmp_path / "b", V="8")
    with pytest.raises(CheckpointError, match="V must be an integer"):
        load_model(folder)


def test_integer_or_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from pentachora.recipes import load_model

    folder = _svae_checkpoint(tmp_path / "int")
    state = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    save_file({**state, name: state[name].round().to(torch.int32)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"dtype mismatch e\.g\. {name}"):
        load_model(folder)
    folder = _svae_checkpoint(tmp_path / "nan")
    poisoned = state[name].clone()
    poisoned[0, 0] = math.nan
    save_file({**state, name: poisoned}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' holds NaN"):
        load_model(folder)


# ----------------------------------------------------------------------------- 8. the umask is respected
@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_checkpoint_folders_follow_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
        Trainer(model(), tcfg(tmp_path / "run", steps=2), Toy()).fit()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o666 & ~mask
    assert mode(tmp_path / "t.safetensors") == 0o666 & ~mask
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert mode(ckpt) == 0o777 & ~mask
    assert mode(ckpt / "model.safetensors") == 0o666 & ~mask
    assert mode(tmp_path / "run" / "train_config.json") == 0o666 & ~mask


# ----------------------------------------------------------------------------- 9. user errors say what to do
def test_image_folder_errors_name_the_folder_and_the_file(tmp_path: Path) -> None:
    from pentachora.data.images import load_image_file, load_image_folder

    with pytest.raises(DataError, match=r"'.*missing' does not exist") as info:
        load_image_folder(tmp_path / "missing")
    assert isinstance(info.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty.*contains no image files.*it is empty"):
        load_image_folder(empty)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no image files.*notes\.txt"):
        load_image_folder(texts)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "photo.png").write_text("not a png")
    with pytest.raises(DataError, match=r"could be read.*photo\.png"):
        load_image_folder(fake)
    with pytest.raises(DataError, match=r"photo\.png' is not an image"):
        load_image_file(fake / "photo.png")
    (fake / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg' is empty"):
        load_image_file(fake / "empty.jpg")
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (10, 20, 30)).save(good)
    data = good.read_bytes()
    (fake / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png' is (truncated|not an image)"):
        load_image_file(fake / "cut.png")


def test_a_too_small_image_names_its_file(tmp_path: Path) -> None:
    from PIL import Image

    from pentachora.data import parse_data_spec

    Image.new("RGB", (20, 24), (1, 2, 3)).save(tmp_path / "tiny.png")
    with pytest.raises(DataError, match=r"tiny\.png\) is 24×20 pixels, smaller than the 64×64 crop"):
        parse_data_spec(f"folder:{tmp_path}").train_source(2, 64)


def test_hf_data_offline_says_it_needs_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    from pentachora.data.images import load_hf_images
    from pentachora.data.text import load_hf_texts

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'someone/photos' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for load in (load_hf_images, load_hf_texts):
        with pytest.raises(DataError, match=r"needs internet access.*local dataset folder"):
            load("someone/photos")


def test_text_files_that_are_missing_empty_or_binary(tmp_path: Path) -> None:
    from pentachora.data.text import load_jsonl, load_text_file

    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="holds no text"):
        load_text_file(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(DataError, match="binary"):
        load_text_file(tmp_path / "bin.txt")
    (tmp_path / "latin.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_jsonl(tmp_path / "latin.jsonl")


def test_nan_weights_reach_the_nan_guard_instead_of_crashing_in_eigh(tmp_path: Path) -> None:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    torch.manual_seed(0)
    net = PatchSVAE(PatchSVAEConfig.preset("tiny"))
    with torch.no_grad():
        next(net.parameters()).fill_(math.nan)

    class Images:
        def batch(self, step: int) -> torch.Tensor:
            return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(step))

    with pytest.raises(TrainingDiverged, match=r"2 non-finite steps in a row.*non-finite: loss"):
        Trainer(net, tcfg(None, steps=5, batch_size=2, max_nonfinite_in_row=2), Images()).fit()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_precisions_are_cast_to_the_model_dtype(dtype: torch.dtype) -> None:
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    torch.manual_seed(0)
    net = PatchSVAE(PatchSVAEConfig.preset("tiny")).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ref = float(net(x).loss)
        got = float(net(x.to(dtype)).loss)
    assert math.isfinite(got) and abs(got - ref) <= 0.05 * abs(ref) + 1e-3


# ----------------------------------------------------------------------------- 10. rough edges
def test_stale_temp_files_of_an_interrupted_final_save_are_removed(tmp_path: Path) -> None:
    Trainer(model(), tcfg(tmp_path, steps=2), Toy()).fit()
    final = tmp_path / "final"
    model().save_pretrained(final)
    stale = [final / ".model.safetensors.ab12cd34.tmp", tmp_path / ".train_config.json.zz_99xyz.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = final / "notes.tmp"  # not one of our temp names
    keep.write_text("mine")
    Trainer(model(), tcfg(tmp_path, steps=3), Toy()).fit()
    assert not any(p.exists() for p in stale) and keep.exists()


def test_ctrl_c_writes_a_checkpoint_at_the_current_step_and_the_rerun_resumes_exactly(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # background jobs ignore SIGINT
    try:
        _ctrl_c_round_trip(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_round_trip(tmp_path: Path) -> None:
    steps = dict(steps=8, save_every=100, keep_last_checkpoints=0)

    class CtrlC(Callback):
        def on_step_end(self, trainer: Trainer, step: int, scalars: dict[str, float]) -> None:
            if step == 3 and not trainer.config.out_dir.endswith("a"):
                signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 3

    a = model(seed=0)
    Trainer(a, tcfg(tmp_path / "a", **steps), Toy(), callbacks=[CtrlC()]).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(model(seed=0), tcfg(tmp_path / "b", **steps), Toy(), callbacks=[CtrlC()]).fit()
    assert (tmp_path / "b" / "checkpoints" / "step-0000003").is_dir()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    b = model(seed=5)
    res = Trainer(b, tcfg(tmp_path / "b", **steps), Toy()).fit()
    assert res.resumed_from == 3 and res.steps == 8
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


def test_a_keyboard_interrupt_between_steps_saves_the_last_finished_step(tmp_path: Path) -> None:
    class Boom(Callback):
        def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
            if step == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(
            model(),
            tcfg(tmp_path, steps=8, eval_every=4),
            Toy(),
            eval_fn=lambda m: {"x": 1.0},
            callbacks=[Boom()],
        ).fit()
    assert (tmp_path / "checkpoints" / "step-0000004").is_dir()
    res = Trainer(model(), tcfg(tmp_path, steps=8, eval_every=4), Toy(), eval_fn=lambda m: {"x": 1.0}).fit()
    assert res.resumed_from == 4


def test_pictures_replace_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    """A symlinked ``curves.png`` / ``reconstructions.png`` in a run folder was written through to its
    target (issue 25); pictures are now written atomically like the JSON files."""
    from pentachora.diagnostics.plots import save_image_grid, save_training_curves

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "reconstructions.png").symlink_to(victim)
    (run / "curves.png").symlink_to(victim)
    save_image_grid(torch.rand(4, 3, 8, 8), run / "reconstructions.png")
    records = [{"split": "train", "step": s, "recon_loss": 1.0 / s} for s in range(1, 6)]
    save_training_curves({"run": records}, run / "curves.png")
    assert victim.read_text() == "keep me\n"
    for name in ("reconstructions.png", "curves.png"):
        assert not (run / name).is_symlink() and (run / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_config_json_with_an_oversized_field_is_refused_before_allocating(tmp_path: Path) -> None:
    """``"cv_readout_samples": 20000000`` passed validation and drove ``eval`` past 12 GB (issue 25)."""
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig

    PatchSVAE(PatchSVAEConfig.preset("tiny")).save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    for key, value in (("cv_readout_samples", 20_000_000), ("max_alpha", 1e308), ("hidden", 10**9)):
        original = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps({**original, "config": {**original["config"], key: value}}))
        with pytest.raises((CheckpointError, ConfigError), match=key):
            PatchSVAE.from_pretrained(tmp_path / "m")
        cfg_path.write_text(json.dumps(original))
    PatchSVAE.from_pretrained(tmp_path / "m")


def test_deeply_nested_json_is_a_clear_error_not_a_recursion_error(tmp_path: Path) -> None:
    """100,000 nested brackets in a config.json gave a RecursionError traceback (issue 25)."""
    from pentachora.autoencoders import PatchSVAE, PatchSVAEConfig
    from pentachora.io import loads_json, read_json

    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_json(deep)
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(tmp_path / "deep.json")
    PatchSVAE(PatchSVAEConfig.preset("tiny")).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"model_type": "patch_svae", "config": ' + deep + "}")
    with pytest.raises(CheckpointError):
        PatchSVAE.from_pretrained(tmp_path / "m")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_loading_onto_a_missing_gpu_names_the_device_not_a_corrupt_file(tmp_path: Path) -> None:
    model().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no CUDA GPU"):
        RelAE.from_pretrained(tmp_path / "m", map_location="cuda")
    with pytest.raises(CheckpointError, match="not a device name"):
        RelAE.from_pretrained(tmp_path / "m", map_location="gpu0")


def test_a_config_the_model_refuses_is_a_checkpoint_error_on_load(tmp_path: Path) -> None:
    """Model-construction errors escaped ``CheckpointError`` (so callers that try the next checkpoint
    crashed instead)."""
    pytest.importorskip("diffusers")
    from pentachora.autoencoders import (
        AutoencoderTinyAdapter,
        AutoencoderTinyAdapterConfig,
        LatentAutoencoder,
    )

    ae = LatentAutoencoder.wrap(
        AutoencoderTinyAdapter(AutoencoderTinyAdapterConfig(block_out_channels=(8, 8)))
    )
    ae.save_pretrained(tmp_path / "ae")
    meta = json.loads((tmp_path / "ae" / "config.json").read_text())
    meta["config"]["first_stage_type"] = (
        "patch_svae"  # registered, valid JSON, but not this first stage's config
    )
    (tmp_path / "ae" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be built"):
        LatentAutoencoder.from_pretrained(tmp_path / "ae")


def test_a_kill_before_the_final_eval_record_is_made_up_on_rerun(tmp_path: Path) -> None:
    """The last checkpoint was written, the final evaluation was not: the rerun used to finish without it."""

    class Killed(Exception):
        pass

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {"score": 1.0}

    cfg = tcfg(tmp_path, steps=4, eval_every=3, save_every=4)
    trainer = Trainer(model(), cfg, Toy(), eval_fn=eval_fn)
    real = trainer.evaluate

    def evaluate_or_die() -> dict[str, float]:
        if trainer.step == 4:
            raise Killed
        return real()

    trainer.evaluate = evaluate_or_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        trainer.fit()
    evals = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert evals == [3] and (tmp_path / "checkpoints" / "step-0000004").is_dir()
    res = Trainer(model(), tcfg(tmp_path, steps=4, eval_every=3, save_every=4), Toy(), eval_fn=eval_fn).fit()
    assert res.resumed_from == 4 and res.eval_metrics == {"score": 1.0}
    evals = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert evals == [3, 4]
    # a third run of the finished folder adds nothing
    Trainer(model(), tcfg(tmp_path, steps=4, eval_every=3, save_every=4), Toy(), eval_fn=eval_fn).fit()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"] == [3, 4]


@pytest.mark.parametrize(
    "entry", ["tensorboard", "final", "checkpoints", "metrics.jsonl", "checkpoints/step-0000001"]
)
def test_a_symlink_inside_a_run_folder_is_refused_and_nothing_is_written_through_it(tmp_path, entry):
    """`OUT/tensorboard -> /elsewhere` sent the event files to /elsewhere (issue 25)."""
    from typer.testing import CliRunner

    from pentachora.cli import app
    from pentachora.training.state import run_folder_lock

    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / entry).parent.mkdir(parents=True, exist_ok=True)
    (out / entry).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunFolderError, match="symbolic links"), run_folder_lock(out):
        pass
    result = CliRunner().invoke(app, ["train", "svae", "--steps", "2", "--batch-size", "2", "--image-size", "16",
                                      "--data", "noise", "--noise-per-type", "1", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "symbolic links" in result.output, result.output
    assert list(elsewhere.iterdir()) == []


def test_fresh_moves_the_old_runs_pictures_aside_with_it(tmp_path):
    """`--fresh` left the old run's pictures in OUT, shown beside a new run until it overwrote them."""
    from typer.testing import CliRunner

    from pentachora.cli import app

    out = tmp_path / "run"
    args = ["train", "svae", "--steps", "2", "--batch-size", "2", "--image-size", "16", "--data", "noise",
            "--noise-per-type", "1", "--eval-every", "0", "--out", str(out)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    (out / "curves.png").write_bytes(b"the old run's curves")
    (out / "reconstructions.png").write_bytes(b"the old run's reconstructions")
    result = CliRunner().invoke(app, [*args, "--fresh"])
    assert result.exit_code == 0, result.output
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "curves.png").read_bytes() == b"the old run's curves"
    assert (old / "reconstructions.png").read_bytes() == b"the old run's reconstructions"
    assert not (out / "reconstructions.png").exists()  # the new run (noise only) draws none
    assert (out / "curves.png").read_bytes() != b"the old run's curves"


def test_recipe_sizes_are_checked_before_any_work(tmp_path):
    """Negative chunk counts and zero images were passed on (chunks=-1 compressed to nonsense)."""
    from pentachora.recipes.hub import prepare_hub_data
    from pentachora.recipes.t2i import generate_from_prompt

    with pytest.raises(ConfigError, match="chunks must be >= 0"):
        prepare_hub_data(["tiny-bert"], chunks=-1, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="n must be >= 1"):
        generate_from_prompt(tmp_path / "no-run", "a red circle", n=0)


ALLOCATOR_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 4915200000000 bytes. Error code 12 (Cannot allocate memory)"
)


def test_an_allocation_the_machine_cannot_hold_is_one_error_line_not_a_bug(tmp_path, monkeypatch):
    """Huge sizes (`--batch-size 100000000`, `--set V=100000000`, `--hidden ...`) ended in allocator
    tracebacks reported as bugs (issue 25)."""
    from typer.testing import CliRunner

    import pentachora.recipes
    from pentachora.cli import app
    from pentachora.cli.core import out_of_memory_message

    assert "≈4,577.6 GiB" in out_of_memory_message(RuntimeError(ALLOCATOR_FAILURE))
    assert out_of_memory_message(MemoryError()).startswith("out of memory")
    assert out_of_memory_message(RuntimeError("shape mismatch")) is None
    cuda = RuntimeError(  # the text torch 2.11 raised on an H100 (torch.OutOfMemoryError), shortened
        "CUDA out of memory. Tried to allocate 3725.29 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "78.68 GiB is free."
    )
    assert "≈3,725.3 GiB failed on the GPU (79 GiB)" in out_of_memory_message(cuda)

    def huge(*args, **kwargs):
        raise RuntimeError(ALLOCATOR_FAILURE)

    monkeypatch.setattr(pentachora.recipes, "train_autoencoder", huge)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "svae", "--steps", "1", "--batch-size", "2", "--image-size", "16",
                                      "--data", "noise", "--noise-per-type", "1", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "error: out of memory" in result.output and "GiB" in result.output
    assert "Traceback" not in result.output and "this is a bug" not in result.output


def test_a_scene_pool_larger_than_the_machine_is_refused_before_it_is_built(monkeypatch):
    import pentachora.resources
    from pentachora.data.scenes import SceneWorld, SceneWorldConfig
    from pentachora.nn.text_encoder import FrozenTextEncoder, tiny_encoder
    from pentachora.recipes.t2i import scene_pool

    model, tokenizer = tiny_encoder("clip", hidden=32)
    encoder = FrozenTextEncoder(model, tokenizer, name="tiny")
    monkeypatch.setattr(pentachora.resources, "physical_memory_bytes", lambda: 2**30)
    with pytest.raises(ConfigError, match=r"a pool of 1,000,000 scenes needs .* GiB; this machine has 1 GiB"):
        scene_pool(SceneWorld(SceneWorldConfig.preset("cpu")), encoder, 1_000_000, use_cache=False)

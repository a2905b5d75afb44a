"""Diagnostics: the CV precision auditor, the convergence-order monitor, the gradient-loudness meter,
their Trainer callbacks and the run report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pentachora.diagnostics import (
    AuditCallback,
    ConvergenceMonitor,
    LoudnessCallback,
    LoudnessMeter,
    analyse_convergence,
    attach,
    cv_in_dtype,
    relative_deviation,
)
from pentachora.diagnostics.convergence import WARN_NO_LOCK, WARN_PLATEAU
from pentachora.errors import ConfigError, RunFolderError
from pentachora.geometry import cv_metric, target_cv
from pentachora.modeling import ModelOutput, PentachoraModel, register_model
from pentachora.training import TrainConfig, Trainer, read_metrics


# ----------------------------------------------------------------------------- a tiny model
@dataclass
class DiagNetConfig:
    dim: int = 8
    hidden: int = 16


@dataclass
class DiagOutput(ModelOutput):
    recon: torch.Tensor | None = None
    spread: torch.Tensor | None = None
    z: torch.Tensor | None = None


@register_model
class DiagNet(PentachoraModel):
    """enc → mid → dec; loss = recon + 0.1·spread (two terms for the loudness meter)."""

    model_type = "test_diag_net"
    config_class = DiagNetConfig

    def __init__(self, config: DiagNetConfig) -> None:
        super().__init__(config)
        self.enc = nn.Sequential(nn.Linear(config.dim, config.hidden), nn.Tanh())
        self.mid = nn.Linear(config.hidden, config.hidden)
        self.dec = nn.Linear(config.hidden, config.dim)

    def forward(self, x: torch.Tensor) -> DiagOutput:
        z = self.mid(self.enc(x))
        y = self.dec(z)
        recon = (y - x).pow(2).mean()
        spread = (z.norm(dim=-1) - 1.0).pow(2).mean()
        return DiagOutput(loss=recon + 0.1 * spread, recon=recon, spread=spread, z=z)


class Source:
    def __init__(self, seed: int = 0, batch: int = 32, dim: int = 8) -> None:
        self.seed, self.bs, self.dim = seed, batch, dim

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(self.bs, self.dim, generator=g)


def make_net(seed: int = 0) -> DiagNet:
    torch.manual_seed(seed)
    return DiagNet(DiagNetConfig())


def batch(seed: int = 3, n: int = 64) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def round_to_fp16(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.half().float()


def quantise(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return (output * 8).round() / 8


# ----------------------------------------------------------------------------- the auditor
def test_auditor_quiet_on_clean_fp32_and_flags_injected_fp16_rounding() -> None:
    model, x = make_net(), batch()
    with attach(model, watch=["enc", "mid", "dec"]) as auditor:
        clean = {r.name: r for r in auditor.audit(x, step=0)}
    assert not any(r.flagged for r in clean.values()) and auditor.flags == {}
    for r in clean.values():
        assert r.run_dtype == "fp32" and r.reference_dtype == "fp64"
        assert 0 <= r.deviation < 1e-6
        assert r.cv == pytest.approx(r.cv_ref, rel=1e-4)
        assert r.cv_target == pytest.approx(target_cv(r.dim))
    handle = model.mid.register_forward_hook(round_to_fp16)
    auditor = attach(model, watch=["enc", "mid", "dec"])
    auditor.audit(x, step=10)
    readings = {r.name: r for r in auditor.audit(x, step=20)}
    handle.remove()
    assert readings["mid"].flagged and not readings["enc"].flagged
    assert 1e-5 < readings["mid"].deviation < 2e-3  # fp16 rounding: ~u/√3 relative
    assert "deviation" in readings["mid"].reasons[0] and "fp64" in readings["mid"].reasons[0]
    # the module after it recomputes from its (rounded) input: its own error is small
    assert not readings["dec"].flagged
    assert auditor.flags == {"mid": 10} and auditor.first_flagged == {"mid": 10}
    # back in band after the corruption is removed: the flag clears
    auditor.audit(x, step=30)
    assert auditor.flags == {} and auditor.first_flagged == {"mid": 10}
    auditor.detach()


def test_auditor_quantisation_noise_moves_cv_and_model_reference_sees_accumulation() -> None:
    model, x = make_net(), batch()
    handle = model.enc.register_forward_hook(quantise)
    with attach(model, watch=["enc", "dec"], reference="model") as auditor:
        r = {r.name: r for r in auditor.audit(x, step=5)}
    handle.remove()
    assert r["enc"].flagged and r["enc"].deviation > 1e-2
    assert abs(r["enc"].cv - r["enc"].cv_ref) > 0.0
    # against a whole-model fp64 reference the downstream module inherits the error
    assert r["dec"].flagged and r["dec"].deviation > 1e-3


def test_auditor_precision_bf16_autocast_is_flagged_against_tight_band_and_read_at_bf16() -> None:
    model, x = make_net(), batch()
    with attach(model, watch="mid", precision="bf16") as auditor:
        (r,) = auditor.audit(x)
    assert r.run_dtype == "bf16" and 1e-4 < r.deviation < 0.125 and not r.flagged  # inside bf16's band
    with attach(model, watch="mid", precision="bf16", max_deviation=1e-4) as auditor:
        (r,) = auditor.audit(x)
    assert r.flagged


def test_detach_leaves_the_model_bit_identical() -> None:
    model, x = make_net(), batch()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    rng = torch.get_rng_state()
    auditor = attach(model, watch=["enc", "mid", "dec", "mid.weight"], reference="model")
    auditor.audit(x, step=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the audit does not consume the global RNG
    assert model.training and all(m.training for m in model.modules())
    during = model(x)  # attached but idle hooks change nothing
    auditor.detach()
    after = model(x)
    for a, b in ((before, during), (before, after)):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.z, b.z)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="detached"):
        auditor.audit(x)


def test_auditor_parameters_fields_and_points() -> None:
    model, x = make_net(), batch()
    with attach(model, watch=["mid.weight", "enc.0@4"], cv_band={"mid.weight": (0.9, 1.0)}) as auditor:
        w, e = auditor.audit(x, step=2)
    assert w.name == "mid.weight" and math.isnan(w.deviation) and w.dim == 16
    unit = torch.nn.functional.normalize(model.mid.weight.detach().double(), dim=-1)
    assert w.cv == pytest.approx(cv_metric(unit, 256, torch.Generator().manual_seed(1)))
    assert w.flagged and "outside the band" in w.reasons[0]
    assert e.dim == 4 and not e.flagged


def test_missing_module_name_is_a_clear_error_with_close_matches() -> None:
    model = make_net()
    with pytest.raises(ConfigError, match=r"no module, parameter or buffer named 'mdi'.*close matches: mid"):
        attach(model, watch=["enc", "mdi"])
    assert all(not m._forward_hooks for m in model.modules())  # nothing was left attached
    with pytest.raises(ConfigError, match="field 'nope'"), attach(model, watch="enc:nope") as auditor:
        auditor.audit(batch())
    with pytest.raises(ConfigError, match="at least one"):
        attach(model, watch=[])


def test_cv_in_dtype_matches_float64_metric() -> None:
    x = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    ref = cv_metric(x.double(), 500, torch.Generator().manual_seed(4))
    assert cv_in_dtype(x, torch.float64, 500, torch.Generator().manual_seed(4)) == pytest.approx(
        ref, rel=1e-9
    )
    assert cv_in_dtype(x, torch.float32, 500, torch.Generator().manual_seed(4)) == pytest.approx(
        ref, rel=1e-3
    )
    assert relative_deviation(torch.ones(3), torch.ones(3)) == 0.0
    assert relative_deviation(torch.tensor([math.nan]), torch.ones(1)) == math.inf


# ----------------------------------------------------------------------------- the convergence monitor
def _hist(**curves: list[float]) -> list[dict[str, float]]:
    n = len(next(iter(curves.values())))
    return [{"step": 10 * (i + 1), **{k: v[i] for k, v in curves.items()}} for i in range(n)]


def test_monitor_finds_the_seed_order_on_synthetic_curves() -> None:
    h = _hist(
        cv=[0.40, 0.30, 0.17, 0.165, 0.164, 0.165, 0.164, 0.165],
        m_acc=[0.05, 0.06, 0.10, 0.40, 0.70, 0.80, 0.82, 0.83],
        s_cos=[0.20, 0.20, 0.21, 0.22, 0.30, 0.45, 0.55, 0.60],
    )
    rep = analyse_convergence(h, tags={"structure": "cv", "alignment": "m_acc", "reconstruction": "s_cos"})
    d = rep.to_dict()
    assert d["cv_lock_step"] == 30 and d["m_acc_climb_step"] == 50 and d["s_cos_climb_step"] == 60
    assert rep.order == ["cv_lock", "m_acc_climb", "s_cos_climb"] and rep.order_holds is True
    assert rep.warnings == []
    # tags by name give the same answer
    assert analyse_convergence(h).order == rep.order


def test_monitor_reads_the_plateau_and_the_missing_lock() -> None:
    h = _hist(
        cv=[0.60, 0.30, 0.55, 0.25, 0.50, 0.28, 0.52, 0.30],  # never settles
        m_acc=[0.05, 0.10, 0.20, 0.40, 0.60, 0.75, 0.80, 0.84],
        s_cos=[0.42, 0.425, 0.42, 0.421, 0.425, 0.42, 0.424, 0.425],  # flat-lined from the start
    )
    rep = analyse_convergence(h)
    assert rep.tags["structure"] == ["cv"] and rep.tags["alignment"] == ["m_acc"]
    assert rep.step_of("lock", "structure") is None and rep.step_of("plateau", "reconstruction") == 10
    assert WARN_NO_LOCK in rep.warnings and WARN_PLATEAU in rep.warnings
    assert "serving the louder consumer" in WARN_PLATEAU
    # alignment climbing before the structure locked breaks the order
    h2 = _hist(cv=[0.5, 0.4, 0.3, 0.2, 0.2, 0.2], m_acc=[0.1, 0.8, 0.85, 0.9, 0.9, 0.9])
    rep2 = analyse_convergence(h2)
    assert any(w.startswith("order broken: alignment") for w in rep2.warnings)
    # losses improve downwards
    rep3 = analyse_convergence(_hist(cv=[0.2] * 5, recon_loss=[1.0, 0.9, 0.3, 0.2, 0.19]))
    assert rep3.to_dict()["recon_loss_climb_step"] == 30


# ----------------------------------------------------------------------------- the loudness meter
def test_loudness_equals_hand_computed_autograd_norms() -> None:
    model, x = make_net(), batch()
    meter = LoudnessMeter(model, ["recon", "spread"], groups={"enc": ["enc."], "late": ["mid.", "dec."]})
    table = meter.measure(x, step=1)
    out = model(x)
    for term in ("recon", "spread"):
        for group, prefixes in {"enc": ["enc."], "late": ["mid.", "dec."]}.items():
            params = [p for n, p in model.named_parameters() if n.startswith(tuple(prefixes))]
            grads = torch.autograd.grad(getattr(out, term), params, retain_graph=True, allow_unused=True)
            want = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
            assert table.norms[term][group] == pytest.approx(want, rel=1e-9)
    assert table.norms["spread"]["late"] > 0 and table.ratio("spread", "recon", "enc") == pytest.approx(
        table.norms["spread"]["enc"] / table.norms["recon"]["enc"]
    )
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    with pytest.raises(ConfigError, match="match no parameter"):
        LoudnessMeter(model, ["recon"], groups={"bank": ["bank."]})
    with pytest.raises(ConfigError, match="no 0-d tensor"):
        LoudnessMeter(model, ["nope"]).measure(x)


# ----------------------------------------------------------------------------- callbacks + resume
def _callbacks() -> list:
    return [
        AuditCallback(["enc", "mid"], every=3),
        LoudnessCallback(["recon", "spread"], groups={"enc": ["enc."], "all": [""]}, every=4),
        ConvergenceMonitor(source="train", every=2, tags={"reconstruction": "recon"}),
    ]


def test_callbacks_log_on_their_schedule_and_survive_resume(tmp_path: Path) -> None:
    def run(out: Path, steps: int) -> list:
        cbs = _callbacks()
        cfg = TrainConfig(
            steps=steps, batch_size=32, lr=1e-2, log_every=5, save_every=6, progress=False,
            tensorboard=False, seed=3, out_dir=str(out), lr_schedule="constant",
        )  # fmt: skip
        Trainer(make_net(), cfg, Source(), callbacks=cbs).fit()
        return cbs

    straight = run(tmp_path / "straight", 12)
    run(tmp_path / "resumed", 6)
    resumed = run(tmp_path / "resumed", 12)

    def split(out: Path, name: str) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.items() if k != "time"}
            for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == name
        ]

    audit = split(tmp_path / "straight", "audit")
    assert [r["step"] for r in audit] == [0, 3, 6, 9, 12]
    assert {"enc/cv", "enc/deviation", "mid/cv_ref", "mid/flag"} <= set(audit[0])
    assert [r["step"] for r in split(tmp_path / "straight", "loudness")] == [4, 8, 12]
    for name in ("audit", "loudness"):
        assert split(tmp_path / "resumed", name) == split(tmp_path / "straight", name)
    assert split(tmp_path / "resumed", "train")[-1] == split(tmp_path / "straight", "train")[-1]
    assert resumed[0].history == straight[0].history and len(resumed[0].history) == 10
    assert resumed[1].history == straight[1].history
    assert resumed[2].history == straight[2].history and resumed[2].report["events"]
    assert (
        json.loads((tmp_path / "resumed" / "convergence.json").read_text())["history"] == resumed[2].history
    )


def test_audit_callback_does_not_change_training(tmp_path: Path) -> None:
    def losses(cbs: list) -> list[float]:
        cfg = TrainConfig(steps=6, batch_size=32, lr=1e-2, progress=False, tensorboard=False, seed=1)
        trainer = Trainer(make_net(), cfg, Source(), callbacks=cbs)
        trainer.fit()
        return [float(p.detach().sum()) for p in trainer.unwrapped_model.parameters()]

    assert losses([]) == losses([AuditCallback("mid", every=1, reference="model")])


# ----------------------------------------------------------------------------- report, recipe, CLI
def test_report_of_a_run_folder_and_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pentachora.cli import app
    from pentachora.recipes.diagnostics import audit_callbacks, audit_run

    model = make_net()
    cbs = audit_callbacks(model, "enc,mid", every=2, loudness_terms=["recon", "spread"], convergence=False)
    assert [type(c).__name__ for c in cbs] == ["AuditCallback", "LoudnessCallback"]
    cbs.append(ConvergenceMonitor(source="train", tags={"reconstruction": "recon"}))
    cfg = TrainConfig(
        steps=8, batch_size=32, lr=1e-2, log_every=1, progress=False, tensorboard=True, seed=0,
        out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    Trainer(model, cfg, Source(), callbacks=cbs).fit()
    # the `train` extra (TensorBoard) is installed: the audit scalars must be in its event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert {"audit/enc/cv", "audit/mid/deviation", "loudness/recon/enc"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("audit/enc/cv")) >= 2  # audited every 2 of 8 steps
    paths = audit_run(tmp_path / "run")
    assert {"markdown", "cv", "deviation", "loudness"} <= set(paths)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    md = paths["markdown"].read_text()
    assert "| `enc` | 5 |" in md and "| `mid` |" in md and "ratio spread:recon/enc" in md
    assert "## Convergence order" in md
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "run"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (tmp_path / "rep" / "audit.md").is_file()


def test_bad_run_folders_and_watch_names_are_clear_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pentachora.cli import app
    from pentachora.recipes.diagnostics import audit_callbacks, audit_run

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match=r"has no metrics\.jsonl"):
        audit_run(tmp_path / "empty")
    with pytest.raises(RunFolderError, match="does not exist"):
        audit_run(tmp_path / "nope")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "metrics.jsonl").write_text("")
    with pytest.raises(RunFolderError, match="holds no metric records"):
        audit_run(tmp_path / "blank")
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "metrics.jsonl" in result.output
    with pytest.raises(ConfigError, match="close matches: enc"):
        audit_callbacks(make_net(), "enc,ecn", every=5)
    with pytest.raises(ConfigError, match="match no parameter"):
        audit_callbacks(make_net(), "enc", loudness_terms=["recon"], loudness_groups={"x": ["bank."]})

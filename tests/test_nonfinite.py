"""The forward non-finite finder and the activation dynamic range (diagnostics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from pentachora.diagnostics import NonFiniteOriginCallback, NonFiniteTracer, locate_nonfinite
from pentachora.diagnostics.auditor import attach, dynamic_range_bits
from pentachora.modeling import ModelOutput, PentachoraModel, register_model
from pentachora.training import TrainConfig, Trainer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.inp(x))
        h = h / (h - h)  # functional code in the model's own forward: 0/0
        return self.out(h)


def test_the_first_module_with_finite_inputs_is_named():
    torch.manual_seed(0)
    net = Net()
    origin = locate_nonfinite(net, torch.randn(3, 4))
    assert origin is not None and origin.module == "" and origin.kind == "nan" and origin.inputs_finite
    # a broken weight inside the block: the inner layer is named, not the block that contains it
    net = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 2))
    with torch.no_grad():
        net[1][0].weight[0, 0] = math.inf
    with NonFiniteTracer(net) as tracer:
        net(torch.randn(3, 4))
    o = tracer.origin
    assert o is not None and o.module == "1.0" and o.type == "Linear" and not o.params_finite
    assert "1.0 (Linear)" in o.describe() and o.kind in ("inf", "nan", "nan+inf")
    # non-finite input data: no module made them; the first module that saw them is reported as such
    net = nn.Sequential(nn.Linear(4, 2))
    origin = locate_nonfinite(net, torch.tensor([[math.nan, 0.0, 0.0, 0.0]]))
    assert origin is not None and not origin.inputs_finite
    # and a finite pass reports nothing, leaving no hooks behind
    assert locate_nonfinite(net, torch.randn(2, 4)) is None
    assert not net[0]._forward_hooks


@dataclass
class _Out(ModelOutput):
    pass


@dataclass
class _Cfg:
    blow_up_at: int = 3


@register_model
class _Exploding(PentachoraModel):
    """A model whose middle layer makes a NaN on one step (the batch's first value is the step number)."""

    model_type = "test_nonfinite_exploding"
    config_class = _Cfg

    def __init__(self, config: _Cfg) -> None:
        super().__init__(config)
        self.a = nn.Linear(2, 4)
        self.mid = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, batch: torch.Tensor) -> _Out:
        h = self.a(batch)
        if int(batch[0, 0]) == self.config.blow_up_at:
            h = self.mid(h) * torch.tensor(math.nan)
        else:
            h = self.mid(h)
        noise = torch.randn(())  # randomness drawn inside the step: the replay must not disturb it
        return _Out(loss=self.b(h).pow(2).mean() + 0 * noise)


class _Steps:
    def batch(self, step: int) -> torch.Tensor:
        return torch.tensor([[float(step), 1.0], [0.5, 0.5]])


def _train(callbacks: list) -> tuple[Trainer, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = _Exploding(_Cfg())
    cfg = TrainConfig(
        steps=5, batch_size=2, lr=1e-2, progress=False, tensorboard=False, max_nonfinite_in_row=3
    )
    trainer = Trainer(model, cfg, _Steps(), callbacks=callbacks)
    trainer.fit()
    return trainer, {k: v.clone() for k, v in model.state_dict().items()}


def test_the_callback_names_the_module_of_a_skipped_step_and_changes_nothing(caplog):
    cb = NonFiniteOriginCallback()
    with caplog.at_level("WARNING"):
        _, with_cb = _train([cb])
    assert [o["step"] for o in cb.origins] == [3]
    assert cb.origins[0]["module"] == "" and cb.origins[0]["inputs_finite"]  # the multiply in forward()
    assert "step 3: the first non-finite forward output" in caplog.text
    _, without = _train([])
    for k in with_cb:  # the replay restores the RNG: training is bit-identical
        assert torch.equal(with_cb[k], without[k])
    assert NonFiniteOriginCallback().state_dict() == {"origins": []}


def test_dynamic_range_bits_and_the_auditor_reports_it():
    assert dynamic_range_bits(torch.tensor([0.0, 1.0, 8.0, -0.5])) == pytest.approx(4.0)
    assert math.isnan(dynamic_range_bits(torch.zeros(3)))
    assert dynamic_range_bits(torch.tensor([math.inf, 2.0, 4.0])) == pytest.approx(1.0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16))
    auditor = attach(net, watch=["1"])
    (reading,) = auditor.audit(torch.randn(64, 8))
    assert reading.range_bits > 0 and reading.scalars()["1/range_bits"] == reading.range_bits

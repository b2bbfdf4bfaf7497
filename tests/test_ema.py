"""The weight EMA that training releases: warmed up, so a short run's release is its late weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from playworld.train.ema import EMA


def test_a_short_run_releases_its_late_weights_not_its_initialisation():
    """A weight walked from 0 to 1 over 300 steps: a fixed 0.999 would release ~0.05 (mostly the
    initial 0); the warmed-up average follows the last tenth or so of the run."""
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    ema = EMA(dict(layer.named_parameters()), decay=0.999)
    steps = 300
    for n in range(1, steps + 1):
        with torch.no_grad():
            layer.weight.fill_(n / steps)
        ema.update(dict(layer.named_parameters()), n)
    released = ema.export(layer)["weight"].item()
    assert 0.85 < released < 1.0


def test_the_decay_warms_up_to_the_configured_one():
    ema = EMA({"w": torch.zeros(2)}, decay=0.999)
    decays = [ema.decay_at(n) for n in (1, 10, 100, 1000, 100_000)]
    assert decays == sorted(decays) and decays[0] == pytest.approx(2 / 11)
    assert decays[-1] == 0.999
    ema.update({"w": torch.ones(2)}, 1)
    assert torch.allclose(ema.shadow["w"], torch.full((2,), 9 / 11))

"""Resuming a run: run-control knobs may change, model and data settings may not."""

from __future__ import annotations

import pytest
import torch

from train.loop import OptimConfig, RuntimeConfig, Trainer, config_dict


def _trainer(out, optim: OptimConfig) -> Trainer:
    model = torch.nn.Linear(2, 1)

    def loss_fn(m, step):
        x = torch.ones(4, 2)
        return (m(x) ** 2).mean(), {}

    return Trainer(model, loss_fn, out, optim, RuntimeConfig(), run_config=config_dict(optim))


def test_resume_with_another_time_budget_but_not_another_lr(tmp_path):
    first = _trainer(
        tmp_path, OptimConfig(steps=40, lr=0.01, warmup_steps=1, checkpoint_every=5, seconds=1e-9)
    )
    first.fit(progress=False)
    stopped_at = first.state.step
    assert 0 < stopped_at < 40  # the time budget stopped it early, after a checkpoint
    resumed = _trainer(
        tmp_path, OptimConfig(steps=40, lr=0.01, warmup_steps=1, checkpoint_every=10, seconds=0)
    )
    assert resumed.state.step == stopped_at
    resumed.fit(progress=False)
    assert resumed.state.step == 40
    with pytest.raises(ValueError, match="different configuration"):
        _trainer(tmp_path, OptimConfig(steps=40, lr=0.02, warmup_steps=1, checkpoint_every=5))

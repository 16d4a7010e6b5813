"""The shared training loop (train/loop.py): schedule, EMA, checkpoints, resume, logs, errors."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.loop import (
    CHECKPOINT_EMA,
    CHECKPOINT_OPTIMIZER,
    CHECKPOINT_STATE,
    CHECKPOINT_WEIGHTS,
    LOSS_LOG,
    OptimConfig,
    RuntimeConfig,
    Trainer,
    config_dict,
    lr_at,
    pin_run_inputs,
)
from wm_env.errors import CorruptFileError

W_TRUE = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
B_TRUE = 0.7
RUN = {"task": "linear", "n": 4}


class Killed(Exception):
    """Stands in for the process being killed in the middle of a step."""


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 4, generator=g)
    return x, x @ W_TRUE.T + B_TRUE


def make_loss_fn(kill_at: int | None = None, bad_at: int | None = None, bad=float("nan")):
    """Batches from a generator seeded by the step, plus a little noise from torch's GLOBAL
    RNG (which checkpoints save and resume restores)."""

    def loss_fn(model, step):
        if step == kill_at:
            raise Killed(step)
        x, y = batch(step)
        y = y + 0.01 * torch.randn(y.shape)
        loss = F.mse_loss(model(x), y)
        if step == bad_at:
            loss = loss * bad
        return loss, {"mse": loss.item()}

    return loss_fn


def optim(**overrides) -> OptimConfig:
    kwargs = dict(
        steps=12,
        batch_size=16,
        lr=0.05,
        warmup_steps=2,
        min_lr_ratio=0.1,
        ema_decay=0.9,
        checkpoint_every=5,
        log_every=1,
        grad_clip=1.0,
    )
    kwargs.update(overrides)
    return OptimConfig(**kwargs)


def trainer(out, loss_fn=None, seed: int = 0, run_config=RUN, **optim_overrides) -> Trainer:
    return Trainer(
        make_model(seed),
        loss_fn or make_loss_fn(),
        out,
        optim(**optim_overrides),
        RuntimeConfig(),
        run_config=run_config,
    )


def eval_loss(model: nn.Module) -> float:
    x, y = batch(-1)
    with torch.no_grad():
        return float(F.mse_loss(model(x), y))


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[name]), name
    for name, value in a.ema.state_dict().items():
        assert torch.equal(value, b.ema.state_dict()[name]), f"ema {name}"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[key][name], sb[key][name]), (key, name)
    assert a.state.step == b.state.step


# ---------------------------------------------------------------------- schedule


def test_lr_warmup_then_cosine_to_floor():
    config = OptimConfig(steps=110, lr=2.0, warmup_steps=10, min_lr_ratio=0.25)
    # linear warm-up reaching the peak at its last step
    assert lr_at(0, config) == pytest.approx(0.2)
    assert lr_at(4, config) == pytest.approx(1.0)
    assert lr_at(9, config) == pytest.approx(2.0)
    # cosine from the peak ...
    assert lr_at(10, config) == pytest.approx(2.0)
    assert lr_at(60, config) == pytest.approx(0.5 * (2.0 + 0.5))  # half way: mean of peak/floor
    # ... down to min_lr_ratio * lr at the end, and it stays there
    assert lr_at(110, config) == pytest.approx(0.5)
    assert lr_at(10_000, config) == pytest.approx(0.5)
    decay = [lr_at(s, config) for s in range(10, 111)]
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))
    assert min(decay) >= 0.5 - 1e-12
    warm = [lr_at(s, config) for s in range(10)]
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False))


def test_lr_without_warmup_starts_at_peak():
    config = OptimConfig(steps=10, lr=1e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, config) == pytest.approx(1e-3)
    assert lr_at(10, config) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(5, config) == pytest.approx(0.5e-3)


def test_fit_sets_the_scheduled_lr(tmp_path):
    t = trainer(tmp_path)
    t.fit(progress=False)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(11, t.optim_config))


# ---------------------------------------------------------------------- training, EMA


def test_training_reduces_loss(tmp_path):
    t = trainer(tmp_path, steps=80, lr=0.1, warmup_steps=5, ema_decay=0.0)
    before = eval_loss(t.model)
    returned = t.fit(progress=False)
    assert t.ema is None and returned is t.model  # no EMA: the raw model comes back
    assert not returned.training  # fit leaves the model in eval mode
    assert t.state.step == 80 and t.done
    assert eval_loss(returned) < 0.01 * before


def test_ema_differs_from_raw_weights_and_tracks_them(tmp_path):
    t = trainer(tmp_path, steps=60, lr=0.1, ema_decay=0.9)
    init = [p.detach().clone() for p in t.model.parameters()]
    returned = t.fit(progress=False)
    assert returned is t.ema
    raw, ema = list(t.model.parameters()), list(t.ema.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(raw, ema, strict=True))
    assert all(not p.requires_grad for p in ema)

    def dist(xs, ys):
        return math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(xs, ys, strict=True)))

    # the EMA followed the weights most of the way from the initialisation ...
    assert dist(ema, raw) < 0.5 * dist(init, raw)
    # ... and is itself a trained model
    assert eval_loss(t.ema) < 0.2 * eval_loss(make_model(0))


# ---------------------------------------------------------------------- checkpoints and resume


def test_checkpoint_files_are_complete_and_atomic(tmp_path):
    trainer(tmp_path).fit(progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        CHECKPOINT_WEIGHTS,
        CHECKPOINT_EMA,
        CHECKPOINT_OPTIMIZER,
        CHECKPOINT_STATE,
        LOSS_LOG,
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    # the optimizer state is plain tensors: loadable with weights_only=True
    state = torch.load(tmp_path / CHECKPOINT_OPTIMIZER, weights_only=True)
    assert state["state"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    reference = trainer(tmp_path / "a")
    reference.fit(progress=False)

    killed = trainer(tmp_path / "b", make_loss_fn(kill_at=7))
    with pytest.raises(Killed):
        killed.fit(progress=False)
    assert killed.state.step == 7  # steps 5 and 6 were done but never checkpointed

    resumed = trainer(tmp_path / "b", seed=123)  # a new process: other initial weights
    assert resumed.state.step == 5  # the last checkpoint
    resumed.fit(progress=False)
    assert_same_state(resumed, reference)


def test_resume_after_time_budget_matches_uninterrupted_run(tmp_path):
    reference = trainer(tmp_path / "a")
    reference.fit(progress=False)

    out = tmp_path / "b"
    first = trainer(out, seconds=1e-9)  # the budget runs out after the first step
    first.fit(progress=False)
    assert 1 <= first.state.step < 12 and not first.done
    saved = first.state.step
    # the stop wrote a checkpoint at the step it stopped
    again = trainer(out, seed=7, seconds=1e-9)
    assert again.state.step == saved
    assert again.state.seconds > 0
    # resume with the same config until done (each run gets at least one more step)
    for _ in range(12):
        if again.done:
            break
        again.fit(progress=False)
        again = trainer(out, seed=7, seconds=1e-9)
    assert again.done
    assert_same_state(again, reference)


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    trainer(tmp_path).fit(progress=False)
    calls = []

    def loss_fn(model, step):
        calls.append(step)
        return make_loss_fn()(model, step)

    again = trainer(tmp_path, loss_fn, seed=5)
    assert again.done
    again.fit(progress=False)
    assert calls == []
    assert again.state.step == 12


def test_resume_with_other_run_config_refuses(tmp_path):
    trainer(tmp_path, steps=3).fit(progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        trainer(tmp_path, steps=3, run_config={**RUN, "n": 5})
    # the same configuration resumes
    assert trainer(tmp_path, steps=3).state.step == 3


def test_run_config_is_normalised_to_json(tmp_path):
    config = config_dict(optim(), RuntimeConfig())
    assert set(config) == {"OptimConfig", "RuntimeConfig"}
    assert config["OptimConfig"]["betas"] == [0.9, 0.99]  # tuple -> list, as JSON stores it
    trainer(tmp_path, steps=2, run_config=config).fit(progress=False)
    assert trainer(tmp_path, steps=2, run_config=config).state.step == 2


def test_pinned_inputs_must_match_to_resume(tmp_path):
    legacy = tmp_path / "legacy"
    trainer(legacy, steps=3).fit(progress=False)  # checkpointed without inputs
    old = trainer(legacy, steps=3)
    pin_run_inputs(old, ["abc"])  # resumes as before, and records them from now on
    assert old.state.step == 3

    t = trainer(tmp_path / "run", steps=3)
    pin_run_inputs(t, ["abc"])
    t.fit(progress=False)
    same = trainer(tmp_path / "run", steps=3)
    pin_run_inputs(same, ("abc",))  # JSON-normalised: a tuple is the same list
    assert same.state.step == 3
    with pytest.raises(ValueError, match="trained on other inputs"):
        pin_run_inputs(trainer(tmp_path / "run", steps=3), ["def"])


def test_truncated_checkpoint_weights_raise_naming_the_file(tmp_path):
    trainer(tmp_path, steps=5).fit(progress=False)
    path = tmp_path / CHECKPOINT_WEIGHTS
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorruptFileError) as info:
        trainer(tmp_path, steps=5)
    assert CHECKPOINT_WEIGHTS in str(info.value)
    assert info.value.path == str(path)


def test_missing_ema_checkpoint_raises(tmp_path):
    trainer(tmp_path, steps=5).fit(progress=False)
    (tmp_path / CHECKPOINT_EMA).unlink()
    with pytest.raises(CorruptFileError, match=CHECKPOINT_EMA):
        trainer(tmp_path, steps=5)


def test_garbled_optimizer_state_raises_naming_the_file(tmp_path):
    trainer(tmp_path, steps=5).fit(progress=False)
    (tmp_path / CHECKPOINT_OPTIMIZER).write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError, match=CHECKPOINT_OPTIMIZER):
        trainer(tmp_path, steps=5)


def test_garbled_checkpoint_state_raises_naming_the_file(tmp_path):
    trainer(tmp_path, steps=5).fit(progress=False)
    (tmp_path / CHECKPOINT_STATE).write_text('{"step": ')
    with pytest.raises(CorruptFileError, match=CHECKPOINT_STATE):
        trainer(tmp_path, steps=5)


# ---------------------------------------------------------------------- logs and errors


def read_log(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_loss_log_has_header_and_rows(tmp_path):
    t = trainer(tmp_path, log_every=3)
    t.fit(progress=False)
    rows = read_log(tmp_path / LOSS_LOG)
    assert rows[0] == ["step", "lr", "seconds", "loss", "mse", "grad_norm"]
    steps = [int(r[0]) for r in rows[1:]]
    assert steps == [0, 3, 6, 9, 11]  # every log_every steps, and the last one
    for row in rows[1:]:
        assert len(row) == len(rows[0])
        values = [float(v) for v in row]
        assert all(math.isfinite(v) for v in values)
        assert values[1] == pytest.approx(lr_at(int(row[0]), t.optim_config))
        assert values[3] > 0 and values[5] >= 0
    assert [float(r[2]) for r in rows[1:]] == sorted(float(r[2]) for r in rows[1:])


def test_loss_log_is_appended_on_resume_without_a_second_header(tmp_path):
    with pytest.raises(Killed):
        trainer(tmp_path, make_loss_fn(kill_at=7)).fit(progress=False)
    trainer(tmp_path).fit(progress=False)
    rows = read_log(tmp_path / LOSS_LOG)
    assert rows[0][0] == "step"
    assert sum(r[0] == "step" for r in rows) == 1
    steps = [int(r[0]) for r in rows[1:]]
    assert steps[-1] == 11 and set(range(12)) <= set(steps)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises(tmp_path, bad):
    t = trainer(tmp_path, make_loss_fn(bad_at=3, bad=bad))
    with pytest.raises(FloatingPointError, match="step 3"):
        t.fit(progress=False)
    assert t.state.step == 3


def test_grad_clip_bounds_the_update(tmp_path):
    # a huge loss: unclipped AdamW still moves each weight by ~lr, so compare the logged norms
    t = trainer(tmp_path, make_loss_fn(bad_at=0, bad=1e6), steps=1, grad_clip=1.0)
    t.fit(progress=False)
    rows = read_log(tmp_path / LOSS_LOG)
    assert float(rows[1][rows[0].index("grad_norm")]) > 1.0  # the norm before clipping
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"ema_decay": 1.0},
        {"ema_decay": -0.1},
        {"warmup_steps": -1},
        {"min_lr_ratio": 1.5},
    ],
)
def test_optim_config_validation(kwargs):
    with pytest.raises(ValueError):
        OptimConfig(**kwargs)


def test_runtime_config_validation():
    with pytest.raises(ValueError, match="amp"):
        RuntimeConfig(amp="fp8")
    RuntimeConfig(amp="bf16")  # valid names construct


def test_model_without_trainable_parameters_is_refused(tmp_path):
    model = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(model, make_loss_fn(), tmp_path, optim(), RuntimeConfig())

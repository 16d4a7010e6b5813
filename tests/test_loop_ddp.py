"""The training loop under DistributedDataParallel: two Gloo processes on the CPU, as torchrun runs them."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    from safetensors.torch import save_file

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from train.loop import OptimConfig, RuntimeConfig, Trainer, batch_rng

    torch.manual_seed(0)  # same initial weights on both ranks, as DDP expects
    model = torch.nn.Linear(4, 1)
    runtime = RuntimeConfig(seed=1)
    target = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    drawn = []

    def loss_fn(m, step):
        x = torch.from_numpy(batch_rng(runtime, step).normal(size=(8, 4))).float()
        drawn.append(float(x[0, 0]))
        return ((m(x) - x @ target.T) ** 2).mean(), {}

    optim = OptimConfig(
        steps=120,
        batch_size=8,
        lr=0.1,
        warmup_steps=1,
        weight_decay=0.0,
        ema_decay=0.0,
        checkpoint_every=50,
    )
    trainer = Trainer(model, loss_fn, f"{out}/run", optim, runtime)
    trainer.fit(progress=False)
    save_file(
        {"weight": model.weight.detach().clone(), "first_batch": torch.tensor(drawn[:1])},
        f"{out}/rank{rank}.safetensors",
    )
    torch.distributed.destroy_process_group()


def test_two_ranks_train_in_sync_and_only_rank0_writes(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no Gloo backend")
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (
        load_file(str(tmp_path / "rank0.safetensors")),
        load_file(str(tmp_path / "rank1.safetensors")),
    )
    assert torch.equal(r0["weight"], r1["weight"])  # gradients were all-reduced
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank drew its own data
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert torch.allclose(
        r0["weight"], torch.tensor([[1.0, -2.0, 0.5, 3.0]]), atol=0.3
    )  # it learned

"""Two real torchrun processes (gloo, CPU) end where one process with the same global batch ends."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vilbert.train.checkpoint import latest_checkpoint

# 21 examples, batch 8, accumulation 2: micro-batches of 4, 4 / 4, 4 / 4, 1 per epoch, so the
# ranks get uneven (and, at the last micro-step, empty) shares.
CONFIG = {"max_steps": 5, "batch_size": 8, "grad_accum": 2, "lr": 1e-2, "seed": 7, "warmup_fraction": 0.2,
          "save_every": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc: int, out, config: dict) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "vilbert.train.toy", "--out", str(out), "--size", "21", "--config", json.dumps(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_here(out, config: dict) -> dict:
    from vilbert.train.loop import train
    from vilbert.train.config import TrainConfig
    from vilbert.train.toy import ToyModel, ToyTask

    torch.manual_seed(1234)  # as vilbert.train.toy.main does in every process
    result = train(ToyModel(), ToyTask(size=21), TrainConfig(progress=False, **config), out, eval_splits=())
    return {"step": result.step, "loss": result.loss}


def _one_and_two_processes(tmp_path, config: dict) -> dict:
    """Train with one plain process (no process group) and with 2 torchrun processes; assert they
    end equal; returns the one process's summary."""
    one = _run_here(tmp_path / "one", config)
    two = _run(2, tmp_path / "two", config)
    assert one["step"] == two["step"] == 5
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    a = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), (key, (a[key] - b[key]).abs().max())
    return one


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path):
    _one_and_two_processes(tmp_path, CONFIG)
    # each rank saved its RNG state
    assert (latest_checkpoint(tmp_path / "two") / "rng_rank1.pt").is_file()


@pytest.mark.distributed
def test_length_buckets_two_processes_match_one(tmp_path):
    """Bucketed batches (planned per (seed, epoch), then cut across ranks) give one process's weights."""
    one = _one_and_two_processes(tmp_path, {**CONFIG, "bucket_by_length": True})
    plain = _run_here(tmp_path / "plain", CONFIG)
    assert plain["loss"] != pytest.approx(one["loss"], abs=1e-6)  # the buckets did change the batches

"""The generic trainer on a toy task: schedule, no-decay groups, exact resume, logs, atomicity."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vilbert.core.subsets import data_subset
from vilbert.train.checkpoint import latest_checkpoint
from vilbert.train.config import TrainConfig
from vilbert.train.distributed import StepBatchSampler
from vilbert.train.loop import train
from vilbert.train.optim import build_optimizer, build_scheduler, param_groups
from vilbert.train.toy import ToyModel, ToyTask


def _config(**kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=8, grad_accum=2, lr=1e-2, seed=3, progress=False, warmup_fraction=0.25)
    return TrainConfig(**{**base, **kw})


def _model(dropout: float = 0.1) -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(dropout=dropout)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


def test_schedule_values():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=20, warmup_fraction=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0, 0.5, 1.0, 17 / 18])
    assert lrs[-1] == pytest.approx(1 / 18) and sched.get_last_lr()[0] == 0.0


def test_no_decay_groups():
    model = _model()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["embed.weight", "out.weight", "region.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["norm.bias", "norm.weight", "out.bias", "region.bias"]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    # tied weights appear once; frozen ones not at all
    model.out.weight = model.region.weight  # shapes differ in use, but ties are about identity here
    model.norm.weight.requires_grad_(False)
    total = sum(len(g["params"]) for g in param_groups(model, 0.01))
    assert total == len({id(p) for p in model.parameters() if p.requires_grad})
    assert isinstance(build_optimizer(_model(), 1e-3, 0.01), torch.optim.AdamW)


def test_lr_scales_split_groups_and_scale_with_the_schedule():
    model = _model()
    groups = param_groups(model, 0.01, lr=1e-3, lr_scales={"embed.": 0.1, "out.bias": 0.5})
    names = {id(p): n for n, p in model.named_parameters()}
    found = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert found["embed.weight"] == (pytest.approx(1e-4), 0.01)
    assert found["out.bias"] == (pytest.approx(5e-4), 0.0)
    assert found["region.weight"] == (1e-3, 0.01) and found["norm.weight"] == (1e-3, 0.0)
    assert groups[0]["lr"] == 1e-3  # the base rate comes first: it is the one logged
    # the schedule multiplies every group's own rate
    opt = build_optimizer(model, 1e-3, 0.01, lr_scales={"embed.": 0.1})
    sched = build_scheduler(opt, total_steps=10, warmup_fraction=0.0)
    opt.step(), sched.step()
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == [pytest.approx(9e-5), pytest.approx(9e-4)]
    with pytest.raises(ValueError, match="'embed.' must be > 0"):
        param_groups(model, 0.01, 1e-3, {"embed.": 0.0})


def test_step_batches_cover_the_epoch_and_do_not_depend_on_world_size():
    one = list(StepBatchSampler(21, 8, 2, seed=5, epoch=1))
    assert sorted(i for micro in one for i in micro) == list(range(21))
    two = [list(StepBatchSampler(21, 8, 2, seed=5, epoch=1, rank=r, world_size=2)) for r in range(2)]
    for m in range(len(one)):  # each micro-step's examples, split over the two ranks
        assert two[0][m] + two[1][m] == one[m]
    resumed = list(StepBatchSampler(21, 8, 2, seed=5, epoch=1, start_step=1))
    assert resumed == one[2:]
    assert list(StepBatchSampler(21, 8, 2, seed=5, epoch=2)) != one
    assert set(data_subset(100, 0.25)) <= set(data_subset(100, 0.5)) and len(data_subset(100, 0.25)) == 25


def test_resume_equals_uninterrupted(tmp_path):
    # dropout on: the resumed run must also replay the random masks of the steps it redoes
    full = train(_model(), ToyTask(size=21), _config(save_every=3, eval_every=4), tmp_path / "full", eval_splits=("val",))
    assert full.finished and full.step == 8 and "mse" in full.metrics["val"]
    half = train(_model(), ToyTask(size=21), _config(save_every=3, stop_after=5), tmp_path / "split")
    assert not half.finished and half.step == 5
    # stop_after 5 wrote a checkpoint at 5; pretend the run died after step 3 instead
    ckpts = tmp_path / "split" / "checkpoints"
    (ckpts / "latest").write_text("step_3\n")
    import shutil
    shutil.rmtree(ckpts / "step_5")
    task = ToyTask(size=21)
    resumed = train(_model(dropout=0.1), task, _config(save_every=3), tmp_path / "split", resume=True)
    assert resumed.finished and resumed.step == 8
    assert len(task.seen) == 21 + 16  # steps 4..8 only: epochs are 3 steps of 8, 8, 5 examples
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the logs read as one run: step 4 and 5 logged twice (killed run, resumed run) appear once
    with open(tmp_path / "split" / "train_log.csv") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f)]
    assert steps == list(range(1, 9))


def test_logs_and_plot(tmp_path):
    result = train(_model(), ToyTask(size=16), _config(max_steps=4, log_every=1), tmp_path, eval_splits=("val",))
    with open(tmp_path / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "abs_error"} <= set(rows[0])
    assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) == pytest.approx(1e-2)
    assert float(rows[-1]["loss"]) == pytest.approx(result.loss)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/mse" in (tmp_path / "eval_log.csv").read_text()


def test_leftover_temp_dir_and_bad_latest_do_not_break_resume(tmp_path):
    train(_model(), ToyTask(size=16), _config(max_steps=6, save_every=2, stop_after=4), tmp_path)
    ckpts = tmp_path / "checkpoints"
    # a save killed half-way: a temp dir with a partial state, and `latest` already rewritten
    partial = ckpts / ".tmp_step_6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    (ckpts / "latest").write_text("step_6\n")
    assert latest_checkpoint(tmp_path).name == "step_4"
    resumed = train(_model(), ToyTask(size=16), _config(max_steps=6, save_every=2), tmp_path, resume=True)
    assert resumed.step == 6 and not partial.exists()
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_4", "step_6"]  # keep_last=2
    uninterrupted = train(_model(), ToyTask(size=16), _config(max_steps=6), tmp_path / "ref")
    a, b = _weights(tmp_path), _weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_trajectory(tmp_path):
    train(_model(), ToyTask(size=16), _config(max_steps=4, stop_after=2), tmp_path)
    with pytest.raises(ValueError, match=r"batch_size: 8 -> 4"):
        train(_model(), ToyTask(size=16), _config(max_steps=4, batch_size=4), tmp_path, resume=True)


def test_accumulation_matches_one_big_batch(tmp_path):
    # 21 examples: the last global batch (5) splits 4 + 1 or 2+2+1: uneven micro-batches
    one = train(_model(0.0), ToyTask(size=21), _config(grad_accum=1, max_steps=3), tmp_path / "a")
    three = train(_model(0.0), ToyTask(size=21), _config(grad_accum=3, max_steps=3), tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert one.loss == pytest.approx(three.loss, abs=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="precision 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=4, grad_accum=8)
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['lr_max'\]"):
        TrainConfig.from_dict({"lr_max": 1})
    assert TrainConfig.from_dict(TrainConfig(betas=(0.8, 0.9)).to_dict()) == TrainConfig(betas=(0.8, 0.9))


def test_a_killed_process_resumes_to_the_same_weights(tmp_path):
    """SIGKILL in the middle of step 6 (after the step-4 checkpoint), then resume here."""
    script = (
        "import os, signal, sys, torch\n"
        "from vilbert.train.loop import train\n"
        "from vilbert.train.toy import ToyModel, ToyTask\n"
        "from tests.test_train import _config\n"
        "torch.set_num_threads(int(sys.argv[2]))  # as in this process, so results match bitwise\n"
        "def hook(seen):  # 37 examples make steps 1-5; step 6's micro-batches hold 4 + 1\n"
        "    if seen >= 37 + 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.manual_seed(0)\n"
        "train(ToyModel(dropout=0.1), ToyTask(size=21, loss_hook=hook), _config(save_every=2), sys.argv[1])\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run"), str(torch.get_num_threads())],
        env=env, capture_output=True, cwd=root,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert latest_checkpoint(tmp_path / "run").name == "step_4"
    for out, resume in ((tmp_path / "run", True), (tmp_path / "ref", False)):
        torch.manual_seed(0)  # the resumed run, and the same run never killed
        train(ToyModel(dropout=0.1), ToyTask(size=21), _config(save_every=2), out, resume=resume)
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_precision_on_cpu(tmp_path):
    from vilbert.train.loop import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) is None  # CPU stays fp32 unless asked
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    fp32 = train(_model(0.0), ToyTask(size=16), _config(max_steps=2), tmp_path / "fp32")
    bf16 = train(_model(0.0), ToyTask(size=16), _config(max_steps=2, precision="bf16"), tmp_path / "bf16")
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.05) and bf16.loss != fp32.loss


def test_package_exports():
    import vilbert.train as T
    from vilbert.train.loop import TrainResult

    assert T.train is train and T.TrainConfig is TrainConfig and T.TrainResult is TrainResult


def _flip(path: Path, at: float = 0.5, count: int = 8) -> None:
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * at)
    raw[i : i + count] = bytes(b ^ 0xFF for b in raw[i : i + count])
    path.write_bytes(bytes(raw))


def test_resume_skips_a_damaged_newest_checkpoint_and_says_so(tmp_path, capsys):
    train(_model(), ToyTask(size=16), _config(max_steps=6, save_every=2, stop_after=4), tmp_path)
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path).name == "step_4"
    _flip(root / "step_4" / "model.safetensors")
    resumed = train(_model(), ToyTask(size=16), _config(max_steps=6, save_every=2), tmp_path, resume=True)
    err = capsys.readouterr().err
    assert "skipping a damaged checkpoint" in err and "step_4/model.safetensors does not match its checksum" in err
    assert resumed.step == 6
    # resumed from step 2, it ends where an uninterrupted run ends
    train(_model(), ToyTask(size=16), _config(max_steps=6, save_every=2), tmp_path / "ref")
    a, b = _weights(tmp_path), _weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path):
    from vilbert.train.checkpoint import DamagedCheckpointError

    train(_model(), ToyTask(size=16), _config(max_steps=4, save_every=2, stop_after=4), tmp_path)
    for step in ("step_2", "step_4"):
        _flip(tmp_path / "checkpoints" / step / "trainer_state.pt", at=0.3)
    with pytest.raises(DamagedCheckpointError, match=r"every checkpoint .* is damaged \(step_4, step_2\)"):
        train(_model(), ToyTask(size=16), _config(max_steps=4, save_every=2), tmp_path, resume=True)


def test_length_buckets_cover_each_epoch_and_pad_less():
    from vilbert.train.buckets import LengthBuckets

    lengths = [int(v) for v in torch.randint(4, 40, (203,), generator=torch.Generator().manual_seed(1))]
    plan = LengthBuckets(lengths, batch_size=8, chunk_batches=5)
    epoch = plan.epoch_batches(seed=3, epoch=0)
    assert len(epoch) == plan.steps_per_epoch == 26
    assert sorted(i for b in epoch for i in b.indices) == list(range(203))  # every example once
    assert all(len(b.indices) == 8 for b in epoch[:-1]) and len(epoch[-1].indices) == 3  # the short one last
    assert epoch == plan.epoch_batches(seed=3, epoch=0) and epoch != plan.epoch_batches(seed=3, epoch=1)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(3)).tolist()
    plain = [shuffled[k : k + 8] for k in range(0, 203, 8)]  # the trainer's own kind of order
    assert padding([b.indices for b in epoch]) < padding(plain) / 3


def test_bucketed_training_resumes_exactly_and_refuses_tasks_without_lengths(tmp_path):
    class NoLengths(ToyTask):
        def lengths(self, split):
            return None  # the Task default: no single text length per example

    toy = ToyTask(size=40)
    assert toy.lengths("train") == [len(toy.dataset("train")[i]["ids"]) for i in range(40)]
    config = _config(max_steps=6, save_every=2, bucket_by_length=True)
    train(_model(), ToyTask(size=40), config, tmp_path / "ref")
    train(_model(), ToyTask(size=40), _config(max_steps=6, save_every=2, bucket_by_length=True, stop_after=4),
          tmp_path / "cut")
    train(_model(), ToyTask(size=40), config, tmp_path / "cut", resume=True)
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="gives no text lengths"):
        train(_model(), NoLengths(size=16), _config(bucket_by_length=True), tmp_path / "plain")

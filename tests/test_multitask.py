"""Multi-task fine-tuning (12-in-1) on the tiny world with real tasks, store and checkpoints: the
batch plan (one task a step, per-task batch sizes, the samplers' shares), per-task logs and
metrics, loss weights, `vilbert finetune --tasks` end to end, a killed run resuming to identical
weights, 2 torchrun processes ending where 1 does, and a single-task fine-tune from the result."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vilbert.cli import evaluate as evaluate_cli
from vilbert.cli import finetune as finetune_cli
from vilbert.model import build_model, load_preset, load_pretrained
from vilbert.pipelines import ModelSource, MultitaskRun, TaskSpec, multitask
from vilbert.tasks import build_task
from vilbert.tasks.mixing import MultiTaskPlan, TaskMix, apportion
from vilbert.tasks.multitask import MultiTask, metrics_by_task
from vilbert.train import TrainConfig
from vilbert.train.checkpoint import latest_checkpoint
from vilbert.train.planned import PlannedStepSampler

REPO = Path(__file__).resolve().parents[1]
NO_DROPOUT = {k: 0.0 for k in ("hidden_dropout_prob", "attention_probs_dropout_prob", "v_hidden_dropout_prob",
                               "v_attention_probs_dropout_prob")}


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


# -- the plan ------------------------------------------------------------------------------------

NAMES, SIZES, BATCHES = ["a", "b", "c"], [23, 7, 40], [4, 3, 8]


def plan(mix: TaskMix = TaskMix()) -> MultiTaskPlan:
    return MultiTaskPlan(NAMES, SIZES, BATCHES, mix)


def task_of(p: MultiTaskPlan, index: int) -> int:
    return max(t for t, off in enumerate(p.offsets) if index >= off)


@pytest.mark.parametrize("mix", [TaskMix(), TaskMix("proportional"), TaskMix("temperature", 3.0),
                                 TaskMix("shares", shares={"a": 5, "b": 1, "c": 2})], ids=lambda m: m.sampler)
def test_every_step_is_one_tasks_batch_and_each_task_gets_its_share(mix):
    p = plan(mix)
    per_pass = [-(-n // b) for n, b in zip(SIZES, BATCHES)]
    assert p.steps_per_epoch == sum(per_pass)
    for epoch in range(2):
        batches = p.epoch_batches(seed=5, epoch=epoch)
        assert len(batches) == p.steps_per_epoch
        counts = [0] * len(NAMES)
        for batch in batches:
            tasks = {task_of(p, i) for i in batch.indices}
            assert len(tasks) == 1  # one task a step
            t = tasks.pop()
            assert batch.nominal_size == BATCHES[t] and 1 <= len(batch.indices) <= BATCHES[t]
            counts[t] += 1
        assert counts == p.counts
        # any prefix of an epoch holds each task's share to within one step
        order = p.tasks_of_epoch
        share = [c / p.steps_per_epoch for c in p.counts]
        for k in range(1, len(order) + 1):
            assert all(abs(order[:k].count(t) - k * share[t]) < 1 + 1e-9 for t in range(len(NAMES)))
    assert p.epoch_batches(5, 1) == p.epoch_batches(5, 1)  # a function of (seed, epoch)
    assert p.epoch_batches(5, 1) != p.epoch_batches(6, 1)


def test_the_samplers_shares():
    assert plan().tasks_of_epoch[:6] == [0, 1, 2, 0, 1, 2]  # 12-in-1's cycle
    prop = plan(TaskMix("proportional"))
    assert prop.counts == [-(-n // b) for n, b in zip(SIZES, BATCHES)]  # every task one pass an epoch
    for epoch in range(3):  # ... so each epoch sees every example of every task exactly once
        seen = sorted(i for b in prop.epoch_batches(0, epoch) for i in b.indices)
        assert seen == list(range(sum(SIZES)))
    hot, warm = plan(TaskMix("temperature", 1.0)).counts, plan(TaskMix("temperature", 1e6)).counts
    assert hot == prop.counts and max(warm) - min(warm) <= 1  # T=1 proportional, T large equal
    assert plan(TaskMix("shares", shares={"a": 5, "b": 1, "c": 2})).steps_per_task(16) == {"a": 10, "b": 2, "c": 4}
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]


def test_a_task_cycles_through_its_examples_across_epochs():
    p = plan()  # round-robin gives the small task b more steps than it has batches
    stream = [b.indices for e in range(3) for b in p.epoch_batches(1, e) if task_of(p, b.indices[0]) == 1]
    first_pass = sorted(i for batch in stream[:3] for i in batch)
    assert first_pass == list(range(p.offsets[1], p.offsets[1] + SIZES[1]))  # 7 examples in 3 batches of 3
    assert stream[0] != stream[3]  # the next pass is another order


@pytest.mark.parametrize("world_size,grad_accum", [(1, 1), (2, 2), (3, 1)])
def test_ranks_and_micro_steps_share_each_planned_batch(world_size, grad_accum):
    batches = plan().epoch_batches(2, 0)
    shares = [list(PlannedStepSampler(batches, grad_accum, rank=r, world_size=world_size)) for r in range(world_size)]
    for step, batch in enumerate(batches):
        rows = [i for r in range(world_size) for m in range(grad_accum) for i in shares[r][step * grad_accum + m]]
        assert sorted(rows) == sorted(batch.indices)
    later = PlannedStepSampler(batches, grad_accum, start_step=4, num_steps=3)
    assert list(later) == list(PlannedStepSampler(batches, grad_accum))[4 * grad_accum : 7 * grad_accum]


def test_mix_errors_name_the_value():
    with pytest.raises(ValueError, match="not one of"):
        TaskMix("uniform")
    with pytest.raises(ValueError, match="needs a share"):
        TaskMix("shares")
    with pytest.raises(ValueError, match="tasks are"):
        plan(TaskMix("shares", shares={"a": 1, "z": 1}))
    with pytest.raises(ValueError, match="no training examples"):
        MultiTaskPlan(["a"], [0], [4], TaskMix())


# -- the multi-task Task -------------------------------------------------------------------------


def test_loss_is_the_tasks_own_times_its_weight_and_logged_under_its_name(root):
    tasks = {"vqa": build_task("vqa", root), "refer": build_task("refer", root)}
    torch.manual_seed(0)
    model = build_model(load_preset("tiny", heads={}))
    for name, kwargs in MultiTask(tasks, {"vqa": 4, "refer": 4}).required_heads().items():
        model.add_head(name, **kwargs)
    model.eval()  # no dropout: the two forwards below must agree
    weighted = MultiTask(tasks, {"vqa": 4, "refer": 4}, {"refer": 2.5})
    items = [weighted.dataset("train")[i] for i in range(len(tasks["vqa"].dataset("train")), len(weighted.dataset("train")))][:3]
    batch = weighted.collate(items)
    loss, stats = weighted.loss(model, batch)
    own, own_stats = tasks["refer"].loss(model, tasks["refer"].collate([x for _, x in items]))
    torch.testing.assert_close(loss, 2.5 * own)
    assert stats["refer/loss"] == pytest.approx(float(own.detach())) and stats["refer/accuracy"] == own_stats["accuracy"]
    with pytest.raises(ValueError, match="mixes"):
        weighted.collate([weighted.dataset("train")[0], items[0]])


def test_heads_are_shared_by_name_and_a_conflict_is_named(root):
    both = MultiTask({"vcr": build_task("vcr", root), "retrieval": build_task("retrieval", root)},
                     {"vcr": 2, "retrieval": 2})
    assert set(both.required_heads()) == {"pair_score"}  # VCR and retrieval score pairs with one head, as the original
    other = build_task("vqa", root, min_answer_count=2)
    with pytest.raises(ValueError, match="both need head 'vqa'"):
        MultiTask({"vqa": build_task("vqa", root), "vqa_b": other}, {"vqa": 2, "vqa_b": 2})


# -- the pipeline and the command ----------------------------------------------------------------

FOUR = "vqa,vcr,refer,retrieval"


@pytest.fixture(scope="module")
def mt_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mt")
    rc = finetune_cli.main(["--tasks", FOUR, "--data", str(root), "--out", str(out), "--preset", "tiny",
                            "--max-steps", "6", "--batch-size", "2", "--task-batch-size", "vqa=5,refer=3",
                            "--task-tokens", "--option", "retrieval.hard_pool=3", "--no-progress"])
    assert rc == 0
    return out


def test_the_command_trains_every_task_and_reports_each(mt_run, root):
    metrics = json.loads((mt_run / "metrics.json").read_text())
    names = FOUR.split(",")
    assert metrics["tasks"] == names and metrics["steps"] == 6 and metrics["finished"]
    with open(mt_run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {n: sum(1 for r in rows if r.get(f"{n}/loss")) for n in names}  # each step logs its task's loss
    assert logged == metrics["steps_per_task"] and sum(logged.values()) == 6
    assert all(sum(1 for n in names if r.get(f"{n}/loss")) == 1 for r in rows)
    for split in ("val", "test"):  # every task's own metrics, under its name
        assert {"vqa/accuracy", "vcr/q_ar", "refer/accuracy", "retrieval/ir_r1"} <= set(metrics[split])
    with open(mt_run / "eval_log.csv") as f:
        assert {"val/vqa/accuracy", "val/refer/accuracy"} <= set(next(csv.DictReader(f)))
    config = json.loads((mt_run / "model" / "config.json").read_text())
    assert {"vqa", "pair_score", "region_score"} <= set(config["heads"]) and config["task_tokens"] == names
    record = json.loads((mt_run / "multitask_run.json").read_text())
    assert [t["batch_size"] for t in record["tasks"]] == [5, 2, 3, 2]
    assert record["tasks"][3]["options"] == {"hard_pool": 3}


def test_evaluate_scores_one_task_of_the_multitask_model_as_the_run_did(mt_run, root, tmp_path, capsys):
    rc = evaluate_cli.main(["--task", "refer", "--checkpoint", str(mt_run / "model"), "--data", str(root),
                            "--split", "test", "--out", str(tmp_path / "m.json")])
    assert rc == 0
    got = json.loads((tmp_path / "m.json").read_text())["metrics"]
    test = json.loads((mt_run / "metrics.json").read_text())["test"]
    assert got == metrics_by_task(test, FOUR.split(","))["refer"] and "accuracy" in got


def test_a_single_task_fine_tune_starts_from_the_multitask_model(mt_run, root, tmp_path, capsys):
    start = load_pretrained(mt_run / "model")
    out = tmp_path / "vqa"
    rc = finetune_cli.main(["--task", "vqa", "--data", str(root), "--out", str(out), "--init", str(mt_run / "model"),
                            "--max-steps", "2", "--batch-size", "4", "--lr", "1e-6", "--no-progress"])
    assert rc == 0
    after = load_pretrained(out / "model")
    assert after.config.heads["vqa"] == start.config.heads["vqa"]  # the same answers, the same head
    before, now = start.state_dict(), after.state_dict()
    moved = {k: float((now[k] - before[k]).abs().max()) for k in before}
    assert max(moved.values()) < 1e-3  # two steps at 1e-6 from the multi-task weights, not afresh
    rows = before["task_embeddings.weight"], now["task_embeddings.weight"]
    vqa = start.config.task_tokens.index("vqa")
    changed = [i for i in range(rows[0].shape[0]) if not torch.equal(rows[0][i], rows[1][i])]
    assert changed == [vqa]  # the fine-tune runs under VQA's own token
    # a task the multi-task model had no token for gets one
    rc = finetune_cli.main(["--task", "vcr_q_a", "--data", str(root), "--out", str(tmp_path / "qa"),
                            "--init", str(mt_run / "model"), "--max-steps", "1", "--batch-size", "2", "--no-progress"])
    assert rc == 0 and "added a task token for 'vcr_q_a'" in capsys.readouterr().err
    assert load_pretrained(tmp_path / "qa" / "model").config.task_tokens == [*start.config.task_tokens, "vcr_q_a"]


def test_bad_multitask_arguments_are_named(root, tmp_path, capsys):
    base = ["--data", str(root), "--out", str(tmp_path / "r"), "--preset", "tiny", "--max-steps", "1", "--no-progress"]
    cases = [
        (["--task", "vqa", "--sampler", "proportional"], "apply to several tasks"),
        (["--tasks", "vqa,refer", "--task-batch-size", "vcr=4"], "TASK one of vqa, refer"),
        (["--tasks", "vqa,refer", "--loss-weight", "vqa=heavy"], "'heavy' is not a float"),
        (["--tasks", "vqa,refer", "--option", "vcr.x=1"], "'vcr' is not one of the tasks"),
        (["--tasks", "vqa,nosuch"], "valid tasks"),
        (["--tasks", "vqa,refer", "--data-fraction", "0.5"], "data_fraction"),
        (["--tasks", "vqa,refer", "--sampler", "round_robin", "--task-shares", "vqa=1,refer=2"], "use sampler 'shares'"),
    ]
    for extra, message in cases:
        assert finetune_cli.main([*extra, *base]) == 2, extra
        assert message in capsys.readouterr().err, extra


# -- exact resume and torchrun -------------------------------------------------------------------


def small_run(root, out, tasks, resume=False, dropout=True, **train) -> MultitaskRun:
    """A short multi-task run of the tiny preset, no evaluation (what resume and DDP are about)."""
    settings = dict(max_steps=7, lr=5e-3, seed=4, save_every=2, progress=False, warmup_fraction=0.2) | train
    return MultitaskRun(
        tasks=tuple(TaskSpec(n, batch_size=b) for n, b in tasks), data=root, out=out,
        model=ModelSource(preset="tiny", overrides={} if dropout else dict(NO_DROPOUT), text_init="none"),
        train=TrainConfig(**settings), eval_splits=(), resume=resume,
    )


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out) / "model.safetensors"))


KILL_TASKS = [("vqa", 3), ("retrieval", 2)]  # retrieval draws its negatives in collate
KILL_SETTINGS = dict(max_steps=5, save_every=1)


def test_a_killed_multitask_run_resumes_to_the_same_weights(root, tmp_path):
    """SIGKILL inside step 4 (after the step-3 checkpoint), then resume here."""
    script = (
        "import os, signal, sys, torch\n"
        "import vilbert.tasks.multitask as M\n"
        "from vilbert.pipelines import multitask\n"
        "from tests.test_multitask import small_run, KILL_TASKS, KILL_SETTINGS\n"
        "torch.set_num_threads(int(sys.argv[3]))  # as in this process, so results match bitwise\n"
        "loss, calls = M.MultiTask.loss, []\n"
        "def killing(self, model, batch):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return loss(self, model, batch)\n"
        "M.MultiTask.loss = killing\n"
        "multitask(small_run(sys.argv[1], sys.argv[2], KILL_TASKS, **KILL_SETTINGS), log=lambda m: None)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", script, str(root), str(tmp_path / "run"), str(torch.get_num_threads())],
                            env=env, capture_output=True, cwd=REPO, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    assert latest_checkpoint(tmp_path / "run").name == "step_3"
    resumed = multitask(small_run(root, tmp_path / "run", KILL_TASKS, resume=True, **KILL_SETTINGS), log=lambda m: None)
    reference = multitask(small_run(root, tmp_path / "ref", KILL_TASKS, **KILL_SETTINGS), log=lambda m: None)
    assert resumed.steps == reference.steps == 5
    a, b = weights(tmp_path / "run"), weights(tmp_path / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a resumed run keeps its tasks' batch sizes (they decide step k), and says which file holds them
    changed = [("vqa", 4), *KILL_TASKS[1:]]
    with pytest.raises(ValueError, match="multi-task settings changed.*multitask_run.json"):
        multitask(small_run(root, tmp_path / "run", changed, resume=True, **KILL_SETTINGS), log=lambda m: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# VCR's and VQA's collates draw nothing at random, so the ranks' shares are the one process's
# micro-batches exactly; odd batch sizes with accumulation 2 give uneven (and empty) shares.
DDP_TASKS = [("vqa", 5), ("vcr", 3), ("refer", 1)]
DDP_SETTINGS = dict(grad_accum=2, max_steps=5, save_every=0)


@pytest.mark.distributed
def test_two_processes_match_one(root, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from vilbert.pipelines import multitask\n"
        "from tests.test_multitask import small_run, DDP_TASKS, DDP_SETTINGS\n"
        "multitask(small_run(sys.argv[1], sys.argv[2], DDP_TASKS, dropout=False, **DDP_SETTINGS), log=lambda m: None)\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(root), str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    one = multitask(small_run(root, tmp_path / "one", DDP_TASKS, dropout=False, **DDP_SETTINGS), log=lambda m: None)
    assert one.steps == 5
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    # Adam moves a weight by ~lr (5e-3) a step, so a step on other examples would differ by ~1e-3;
    # summing the ranks' gradients in another order differs by float noise (2e-7 here, 3e-6 for
    # the pair score's weights, whose gradients are near Adam's eps). The pair score's bias is
    # left out: VCR's softmax over its four choices does not change when one bias shifts all four
    # scores, so its gradient is zero but for rounding, which Adam scales up to steps of any size
    # (7e-5 apart on one CPU, 3e-6 on another).
    shift_invariant = {"heads.pair_score.linear.bias"}
    assert shift_invariant <= a.keys()
    for key in a.keys() - shift_invariant:
        assert torch.allclose(a[key], b[key], atol=2e-5, rtol=0), (key, (a[key] - b[key]).abs().max())
    assert (latest_checkpoint(tmp_path / "two") / "rng_rank1.pt").is_file()

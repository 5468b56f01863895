"""The demo: stage runner (skip, resume, logs, errors), results writer and claims, settings guard,
and (slow) `vilbert demo --quick` end to end."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch

from vilbert.demo.plan import build_plan
from vilbert.demo.results import COLUMNS, check_claims, make_table, write_results
from vilbert.demo.run import check_settings
from vilbert.demo.sizes import TASKS, default_sizes, quick_sizes, with_overrides
from vilbert.demo.stages import Stage, StageError, StageRunner


def _runner(tmp_path: Path) -> tuple[StageRunner, io.StringIO]:
    stream = io.StringIO()
    return StageRunner(tmp_path, stream=stream), stream


def test_runner_skips_finished_stages_and_keeps_results(tmp_path):
    calls: list[str] = []

    def stage(name: str, value: int) -> Stage:
        def run():
            calls.append(name)
            print(f"working on {name}")
            return {"value": value}
        return Stage(name, run, estimate_s=5.0, description=f"make {name}")

    stages = [stage("a", 1), stage("b", 2)]
    runner, stream = _runner(tmp_path)
    assert runner.run(stages) == {"a": {"value": 1}, "b": {"value": 2}}
    assert calls == ["a", "b"]
    assert "[1/2] a - make a" in stream.getvalue() and "left" in stream.getvalue()
    # The stage's own output went to its log, not to the progress stream.
    assert "working on a" in (tmp_path / "logs" / "a.log").read_text()
    assert "working on a" not in stream.getvalue()
    marker = json.loads((tmp_path / "stages" / "b.json").read_text())
    assert marker["result"] == {"value": 2} and marker["seconds"] >= 0
    assert marker["threads"] == torch.get_num_threads()  # a stage's numbers depend on it

    again, stream = _runner(tmp_path)
    assert again.run(stages) == {"a": {"value": 1}, "b": {"value": 2}}
    assert calls == ["a", "b"]  # nothing ran twice
    assert "reused" in stream.getvalue()


def test_time_left_is_not_scaled_to_zero_by_instant_small_stages(tmp_path):
    stages = [Stage("config", lambda: None, estimate_s=1.0), Stage("big", lambda: None, estimate_s=600.0)]
    runner, stream = _runner(tmp_path)
    runner.run(stages)
    big_line = next(line for line in stream.getvalue().splitlines() if line.startswith("[2/2] big ("))
    assert "about 10m00s left" in big_line  # the instant config stage does not rescale the estimate


def test_runner_failure_leaves_no_marker_and_a_rerun_resumes(tmp_path):
    state = {"fail": True, "runs": 0}
    progress = tmp_path / "partial.txt"

    def flaky():
        state["runs"] += 1
        # Work done before the failure survives (like a trainer's checkpoint) and is reused.
        done = int(progress.read_text()) if progress.exists() else 0
        progress.write_text(str(done + 1))
        if state["fail"]:
            raise RuntimeError("disk on fire")
        return {"units": done + 1}

    stages = [Stage("first", lambda: {"ok": True}), Stage("flaky", flaky), Stage("last", lambda: None)]
    runner, _ = _runner(tmp_path)
    with pytest.raises(StageError, match=r"stage 'flaky' failed: RuntimeError: disk on fire .*flaky\.log"):
        runner.run(stages)
    assert (tmp_path / "stages" / "first.json").exists()
    assert not (tmp_path / "stages" / "flaky.json").exists()
    assert not (tmp_path / "stages" / "last.json").exists()
    assert "disk on fire" in (tmp_path / "logs" / "flaky.log").read_text()  # the traceback is logged

    state["fail"] = False
    results = _runner(tmp_path)[0].run(stages)
    assert results["flaky"] == {"units": 2}  # resumed from the first attempt's work
    assert results["last"] is None and state["runs"] == 2


def test_runner_rejects_duplicate_names(tmp_path):
    with pytest.raises(ValueError, match="repeated: \\['x'\\]"):
        _runner(tmp_path)[0].run([Stage("x", lambda: None), Stage("x", lambda: None)])



# A plan for the side-by-side runner: a -> (b, c) -> d. Each stage records when it ran and with how
# many threads; b fails while FAIL_B exists. The launched workers build the same stages from here.
SIDE_BY_SIDE_PLAN = """
import json, os, sys, time
from pathlib import Path
import torch
from vilbert.demo.stages import Stage, StageRunner

out = Path(sys.argv[1])

def work(name):
    def run():
        start = time.time()
        if name == "b" and (out / "FAIL_B").exists():
            raise RuntimeError("b broke")
        met = None
        if name in ("b", "c"):  # each waits (up to a minute) to see the other one started
            (out / f"{name}.started").touch()
            other = out / ("c.started" if name == "b" else "b.started")
            deadline = time.time() + 60
            while not other.exists() and time.time() < deadline:
                time.sleep(0.05)
            met = other.exists()
        return {"start": start, "end": time.time(), "threads": torch.get_num_threads(), "met": met}
    return run

STAGES = [Stage("a", work("a")), Stage("b", work("b"), needs=("a",)), Stage("c", work("c"), needs=("a",)),
          Stage("d", work("d"), needs=("b", "c"))]

if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]))
    StageRunner(out).run_here(next(s for s in STAGES if s.name == sys.argv[2]))
"""


def _side_by_side(tmp_path: Path):
    import importlib.util
    import sys

    script = tmp_path / "plan.py"
    script.write_text(SIDE_BY_SIDE_PLAN)
    spec = importlib.util.spec_from_file_location("side_by_side_plan", script)
    module = importlib.util.module_from_spec(spec)
    sys.argv, argv = [str(script), str(tmp_path / "out")], sys.argv
    try:
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
    out = tmp_path / "out"
    return module.STAGES, out, lambda name: [sys.executable, str(script), str(out), name, "2"]  # 2 threads each


def test_stages_side_by_side_wait_for_what_they_need_and_share_the_threads(tmp_path):
    stages, out, launch = _side_by_side(tmp_path)
    stream = io.StringIO()
    results = StageRunner(out, stream=stream).run(stages, jobs=2, launch=launch)
    a, b, c, d = (results[n] for n in "abcd")
    assert b["start"] >= a["end"] and c["start"] >= a["end"]  # both wait on a
    assert d["start"] >= max(b["end"], c["end"])
    assert b["met"] and c["met"]  # and run at the same time
    assert all(r["threads"] == 2 for r in (a, b, c, d))  # each what it would get one at a time
    assert all((out / "stages" / f"{n}.json").is_file() for n in "abcd")
    assert "[2/4] b - " not in stream.getvalue() and "b: finished in" in stream.getvalue()
    again = io.StringIO()
    assert StageRunner(out, stream=again).run(stages, jobs=2, launch=launch) == results
    assert again.getvalue().count("reused") == 4


def test_a_failed_stage_side_by_side_is_named_and_the_rest_resume(tmp_path):
    stages, out, launch = _side_by_side(tmp_path)
    out.mkdir()
    (out / "FAIL_B").write_text("")
    (out / "b.started").touch()  # b fails before it gets there: c must not wait on it
    with pytest.raises(StageError, match=r"stage 'b' failed: RuntimeError: b broke .*b\.log"):
        StageRunner(out, stream=io.StringIO()).run(stages, jobs=2, launch=launch)
    assert (out / "stages" / "c.json").is_file()  # c ran beside b and finished
    assert not (out / "stages" / "b.json").exists() and not (out / "stages" / "d.json").exists()
    assert "b broke" in (out / "logs" / "b.log").read_text()
    (out / "FAIL_B").unlink()
    stream = io.StringIO()
    StageRunner(out, stream=stream).run(stages, jobs=2, launch=launch)
    assert "c: done earlier" in stream.getvalue() and (out / "stages" / "d.json").is_file()
    assert not (out / "stages" / "b.failed").exists()


def test_side_by_side_refuses_a_plan_that_cannot_finish(tmp_path):
    runner = StageRunner(tmp_path, stream=io.StringIO())
    with pytest.raises(ValueError, match=r"not in the plan: \['z'\]"):
        runner.run([Stage("a", lambda: None, needs=("z",))], jobs=2, launch=lambda n: [])
    with pytest.raises(ValueError, match="wait on each other"):
        runner.run([Stage("a", lambda: None, needs=("b",)), Stage("b", lambda: None, needs=("a",))],
                   jobs=2, launch=lambda n: [])
    with pytest.raises(ValueError, match="launch command"):
        runner.run([Stage("a", lambda: None)], jobs=2)

def _fake_metrics(boost: float) -> dict:
    return {
        "vqa": {"accuracy": 0.5 + boost}, "vcr": {"q_a": 0.4 + boost, "qa_r": 0.45 + boost, "q_ar": 0.2 + boost},
        "refer": {"accuracy": 0.6 + boost},
        "retrieval": {"ir_r1": 0.3 + boost, "ir_r5": 0.6 + boost, "ir_r10": 0.7 + boost},
        "zero_shot_retrieval": {"ir_r1": 0.01 + 3 * boost, "ir_r5": 0.05 + boost, "ir_r10": 0.1 + boost},
    }


ROWS = [("single_stream", "Single"), ("vilbert_scratch", "Scratch"), ("vilbert", "ViLBERT")]


def test_results_table_markdown_json_png_and_claims(tmp_path):
    metrics = {"single_stream": _fake_metrics(0.05), "vilbert_scratch": _fake_metrics(0.0),
               "vilbert": _fake_metrics(0.1)}
    metrics["vilbert"]["refer"]["accuracy"] = 0.55  # below the single-stream row: that claim must fail
    del metrics["vilbert_scratch"]["vcr"]  # a task that did not run
    table = make_table("Table", ROWS, metrics, ["a note"], test_images=100, prior={"VQA": 0.4})
    assert table.values["ViLBERT"]["VQA"] == 60.0
    assert table.prior == {"VQA": 40.0} and table.chance["VCR Q->AR"] == 6.25
    assert table.values["Scratch"]["VCR Q->A"] is None
    assert table.chance["Zero-shot R@1"] == 1.0 and table.chance["Retrieval R@10"] == 10.0

    claims = check_claims(table, "ViLBERT", "Scratch", "Single")
    by_text = {c.text: c for c in claims}
    assert by_text["pretraining helps: VQA"].held is True
    assert by_text["pretraining helps: VCR Q->A"].held is None  # not run -> not checked
    assert by_text["two streams beat one: RefCOCO+"].held is False
    assert by_text["zero-shot retrieval far above chance"].held is True  # 31% vs 1% chance

    text = write_results(table, tmp_path, "results", claims)
    md = (tmp_path / "results.md").read_text()
    assert md == text
    header = md.splitlines()[2]
    assert all(column in header for column, _, _ in COLUMNS)
    assert "| ViLBERT | 60.0 |" in md and "- a note" in md
    assert "| chance (VQA: best answer per question type) | 40.0 | 25.0 | 25.0 | 6.2 |" in md
    assert "pretraining helps: VQA (pretrained 60.0 vs unpretrained 50.0; without the image 40.0)" in md
    assert "[NOT held] two streams beat one: RefCOCO+" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["values"]["Single"]["Retrieval R@5"] == 65.0
    assert {c["claim"]: c["held"] for c in data["claims"]}["pretraining helps: VQA"] is True
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_names_every_row_and_task(tmp_path):
    sizes = dataclasses.replace(default_sizes(), preset="small")  # 6 text layers: depths 2, 4, 6
    plan = build_plan(tmp_path, sizes, ablations=True)
    names = [s.name for s in plan.stages]
    assert names[:2] == ["world", "features"]
    assert len(names) == len(set(names))
    for row in ("single_stream", "vilbert_scratch", "vilbert", "vilbert_depth4", "vilbert_data25"):
        for task in TASKS:
            assert f"{row}-{task}" in names
        assert f"{row}-zero_shot_retrieval" in names
    assert "pretrain-vilbert" in names and "pretrain-single_stream" in names
    assert "pretrain-vilbert_data50" in names
    assert [t.name for t in plan.tables] == ["results", "ablation_depth", "ablation_data", "ablation_multitask"]
    assert "pretrain-vilbert_scratch" not in names  # the unpretrained row is never pretrained
    assert "vilbert_depth6-vqa" in names and "vilbert_depth2-vqa" not in names  # depth 2 is the main row
    # the multi-task row: one stage over every task, from the main pretrained model, no zero-shot of its own
    assert "vilbert_multitask-multitask" in names and "pretrain-vilbert_multitask" not in names
    assert not [n for n in names if n.startswith("vilbert_multitask-") and n != "vilbert_multitask-multitask"]


def test_multitask_row_trains_the_single_task_steps_in_all(tmp_path):
    """Same pretraining, same total steps: each task's share is its single-task number of steps at
    its single-task batch size, from the main row's pretrained model."""
    from vilbert.demo.rows import multitask_rows
    from vilbert.demo.steps import Steps

    sizes = default_sizes()
    single, multi = multitask_rows()
    run = Steps(tmp_path, sizes).multitask_run(multi, seed=1)
    assert run.train.max_steps == sum(sizes.finetune[t].steps for t in TASKS)
    assert run.mix.shares == {t: sizes.finetune[t].steps for t in TASKS}
    assert {t.name: t.batch_size for t in run.tasks} == {t: sizes.finetune[t].batch_size for t in TASKS}
    assert run.model.directory == Steps(tmp_path, sizes).row_model(single).directory
    assert run.train.seed == sizes.seed + 1 and run.out == tmp_path / "runs" / "vilbert_multitask" / "all-seed1"


def test_report_only_writes_the_multitask_table_and_its_claims(tmp_path):
    from vilbert.cli.demo import main
    from vilbert.io.atomic import write_json

    out = tmp_path / "demo"
    check_settings(out, quick_sizes())
    write_json(out / "stages" / "vilbert-vqa.json", {"name": "vilbert-vqa", "seconds": 2.0,
                                                     "result": {"split": "test", "metrics": {"accuracy": 0.42}}})
    per_task = {"vqa": {"accuracy": 0.5}, "vcr": {"q_a": 0.3, "qa_r": 0.3, "q_ar": 0.1}, "refer": {"accuracy": 0.2},
                "retrieval": {"ir_r1": 0.1, "ir_r5": 0.3, "ir_r10": 0.5}}
    write_json(out / "stages" / "vilbert_multitask-multitask.json",
               {"name": "vilbert_multitask-multitask", "seconds": 5.0, "result": {"split": "test", "metrics": per_task}})
    assert main(["--quick", "--out", str(out), "--report-only", "--ablations"]) == 0
    data = json.loads((out / "ablation_multitask.json").read_text())
    assert data["rows"] == ["ViLBERT, single-task (4 models)", "ViLBERT, multi-task (1 model)"]
    assert data["values"]["ViLBERT, multi-task (1 model)"]["VCR Q->AR"] == 10.0
    assert data["values"]["ViLBERT, single-task (4 models)"]["VQA"] == 42.0
    vqa = next(c for c in data["claims"] if c["claim"] == "multi-task beats single-task: VQA")
    assert vqa["held"] is True
    assert next(c for c in data["claims"] if c["claim"].endswith("RefCOCO+"))["detail"] == "not run"


def test_settings_of_an_existing_demo_are_not_mixed(tmp_path):
    sizes = quick_sizes()
    check_settings(tmp_path, sizes)
    check_settings(tmp_path, sizes)  # the same settings: fine
    from dataclasses import replace

    with pytest.raises(FileExistsError, match="differs in: images"):
        check_settings(tmp_path, replace(sizes, images=99))
    check_settings(tmp_path, replace(sizes, seconds_per_image_features=9.0))  # an estimate, not a setting


def test_report_only_writes_a_partial_table_without_running(tmp_path):
    from vilbert.cli.demo import main
    from vilbert.io.atomic import write_json

    out = tmp_path / "demo"
    check_settings(out, quick_sizes())
    write_json(out / "stages" / "world.json", {"name": "world", "seconds": 1.0,
                                               "result": {"images": {"train": 33, "val": 5, "test": 10}}})
    write_json(out / "stages" / "vilbert-vqa.json", {"name": "vilbert-vqa", "seconds": 2.0,
                                                     "result": {"split": "test", "metrics": {"accuracy": 0.42}}})
    assert main(["--quick", "--out", str(out), "--report-only"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["values"]["ViLBERT (pretrained)"]["VQA"] == 42.0
    assert data["values"]["ViLBERT, no pretraining"]["VQA"] is None
    assert data["chance"]["Zero-shot R@1"] == 10.0  # 1 of the 10 test images
    assert not (out / "features.lmdb").exists()  # nothing ran
    assert len(build_plan(out, quick_sizes()).stages) > 2


@pytest.mark.slow
def test_vilbert_demo_quick_end_to_end(tmp_path):
    from vilbert.cli.demo import main

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out), "--heartbeat", "0"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["rows"] == ["Single-stream (pretrained)", "ViLBERT, no pretraining", "ViLBERT (pretrained)"]
    for row in data["rows"]:
        for column, value in data["values"][row].items():
            assert value is not None and 0.0 <= value <= 100.0, (row, column, value)
    assert (out / "results.png").stat().st_size > 0 and (out / "results.md").is_file()
    assert (out / "runs" / "pretrain" / "vilbert" / "model" / "model.safetensors").is_file()
    assert (out / "runs" / "vilbert" / "vqa" / "metrics.json").is_file()
    from vilbert.model import load_pretrained

    vqa_model = load_pretrained(out / "runs" / "vilbert" / "vqa" / "model")  # the fine-tuned model, answers and all
    assert vqa_model.heads["vqa"].answers and not (out / "runs" / "vilbert" / "vqa" / "checkpoints").exists()
    assert (out / "logs" / "pretrain-vilbert.log").is_file()
    threads = torch.get_num_threads()
    assert f"stages ran with {threads} torch thread{'s' if threads > 1 else ''}\n" in (out / "results.md").read_text()
    # A rerun reuses every stage and writes the same table.
    before = (out / "results.json").read_text()
    assert main(["--quick", "--out", str(out), "--heartbeat", "0"]) == 0
    assert (out / "results.json").read_text() == before


@pytest.mark.slow
def test_vilbert_demo_quick_with_varied_pretraining_end_to_end(tmp_path):
    """Two seeds, each pretrained row's from its own pretraining: the pretrainings really differ and
    every pretrained row's cells (zero-shot included) carry a spread across them."""
    from safetensors.torch import load_file

    from vilbert.cli.demo import main

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out), "--heartbeat", "0", "--seeds", "2", "--vary-pretraining"]) == 0
    data = json.loads((out / "results.json").read_text())
    for name in ("vilbert", "single_stream"):
        a, b = (load_file(str(out / "runs" / "pretrain" / d / "model" / "model.safetensors"))
                for d in (name, f"{name}-seed1"))
        assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a), name
        assert f"{name}-seed1" in data["pretraining_val"]
    for row in ("ViLBERT (pretrained)", "Single-stream (pretrained)"):
        assert len(data["runs"][row]["Zero-shot R@1"]) == 2 and data["spread"][row]["Zero-shot R@1"] is not None
    assert len(data["runs"]["ViLBERT, no pretraining"]["Zero-shot R@1"]) == 1  # nothing pretrained to vary
    assert all(len(data["runs"]["ViLBERT (pretrained)"][c]) == 2 for c in ("VQA", "RefCOCO+"))
    assert "covers how pretraining fell" in (out / "results.md").read_text()
    # Every two-row claim is decided on the margins of the seeds both rows ran.
    compared = [c for c in data["claims"] if not c["claim"].startswith("zero-shot")]
    assert len(compared) == 12 and all("(seeds " in c["detail"] for c in compared)


def test_default_demo_model_starts_its_text_stream_from_minilm():
    """The demo's sizes rest on this (README): the preset's text stream has MiniLM's shapes, so
    every row starts from it, as the paper's starts from BERT."""
    from vilbert.core.assets import minilm_dir
    from vilbert.model import build_model, init_text_stream_from_bert, load_preset, text_stream_prefixes
    from vilbert.pipelines.models import text_stream_lr_scales

    sizes = default_sizes()
    assert sizes.text_init and sizes.preset == "demo"
    for architecture in ("two_stream", "single_stream"):
        model = build_model(load_preset(sizes.preset, architecture=architecture))
        report = init_text_stream_from_bert(model, minilm_dir())
        assert len(report.loaded) == 77  # 6 layers x 12 tensors + 5 embeddings: all of MiniLM
        # what `vilbert finetune --text-lr-scale` slows down is exactly what came from MiniLM
        prefixes = tuple(text_stream_prefixes(model))
        assert {n for n, _ in model.named_parameters() if n.startswith(prefixes)} == set(report.loaded)
        # and the demo's fine-tunes slow down exactly those
        scales = text_stream_lr_scales(model, sizes.finetune_text_lr_scale)
        assert scales == {prefix: sizes.finetune_text_lr_scale for prefix in prefixes}


def test_drawing_leaves_a_users_matplotlib_alone(tmp_path):
    """The library draws on Figure objects: a notebook's backend is not switched, no figure is left open."""
    import matplotlib

    before = matplotlib.get_backend()
    table = make_table("T", [("vilbert", "ViLBERT")], {"vilbert": {"vqa": {"accuracy": 0.5}}})
    write_results(table, tmp_path, "results")
    from vilbert.train.logging import plot_curves

    plot_curves([{"step": 1, "loss": 1.0, "lr": 0.1}], [{"step": 1, "val/acc": 0.5}], tmp_path / "curves.png")
    assert matplotlib.get_backend() == before
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == [] and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_seeds_give_means_spreads_and_undecided_claims(tmp_path):
    """Several fine-tuning seeds: cells show mean ± sample std, and a claim whose per-seed margins
    (seed k of one row against seed k of the other) average less than their spread is undecided."""
    def seeds(*values):
        return [{"accuracy": v} for v in values]

    metrics = {"vilbert": {"vqa": seeds(0.50, 0.52, 0.54), "refer": seeds(0.60, 0.61, 0.62)},
               "vilbert_scratch": {"vqa": seeds(0.49, 0.53, 0.57), "refer": seeds(0.40, 0.41, 0.42)},
               "single_stream": {"vqa": seeds(0.30, 0.31, 0.32), "refer": seeds(0.70, 0.71, 0.72)}}
    table = make_table("T", ROWS, metrics)
    assert table.values["ViLBERT"]["VQA"] == 52.0 and table.spread["ViLBERT"]["VQA"] == 2.0
    assert table.runs["ViLBERT"]["VQA"] == [50.0, 52.0, 54.0]
    claims = {c.text: c for c in check_claims(table, "ViLBERT", "Scratch", "Single")}
    vqa = claims["pretraining helps: VQA"]  # margins +1, -1, -3: mean -1 within their spread 2
    assert vqa.held is None and not vqa.decided and "seeds +1.0 / -1.0 / -3.0), spread 2.0" in vqa.detail
    assert claims["pretraining helps: RefCOCO+"].held is True  # +20 at every seed
    assert claims["two streams beat one: RefCOCO+"].held is False and claims["two streams beat one: RefCOCO+"].decided
    text = write_results(table, tmp_path, "results", list(claims.values()))
    assert "| 52.0 ± 2.0 |" in text and "[undecided: within the spread] pretraining helps: VQA" in text
    assert "mean of its per-seed margins" in text


def test_claims_pair_each_seed_with_the_same_seed_of_the_other_row():
    """Rows that move together with the seed: the margin is decided by its own spread, which the
    spread of two independent runs (sqrt(s_a^2 + s_b^2)) would overstate; and the same values paired
    the other way round leave it undecided. Only seeds both rows ran are paired."""
    def seeds(*values):
        return [None if v is None else {"accuracy": v} for v in values]

    together = {"vilbert": {"vqa": seeds(0.50, 0.56, 0.62)}, "vilbert_scratch": {"vqa": seeds(0.48, 0.54, 0.60)},
                "single_stream": {"vqa": seeds(0.60, 0.54, 0.48)}}
    table = make_table("T", ROWS, together)
    assert table.spread["ViLBERT"]["VQA"] == 6.0 and table.spread["Scratch"]["VQA"] == 6.0  # independent: 8.5
    claims = {c.text: c for c in check_claims(table, "ViLBERT", "Scratch", "Single")}
    helps = claims["pretraining helps: VQA"]
    assert helps.held is True and helps.decided and "margin +2.0 (seeds +2.0 / +2.0 / +2.0), spread 0.0" in helps.detail
    crossed = claims["two streams beat one: VQA"]  # margins -10, +2, +14: mean +2 against a spread of 12
    assert crossed.held is None and not crossed.decided and "spread 12.0" in crossed.detail
    # An unfinished run: seed 1 of the scratch row missing. Seeds 0 and 2 pair; the row's list keeps its gap.
    partial = make_table("T", ROWS, {**together, "vilbert_scratch": {"vqa": seeds(0.48, None, 0.60)}})
    assert partial.runs["Scratch"]["VQA"] == [48.0, None, 60.0] and partial.values["Scratch"]["VQA"] == 54.0
    helps = {c.text: c for c in check_claims(partial, "ViLBERT", "Scratch", "Single")}["pretraining helps: VQA"]
    assert helps.held is True and "(seeds +2.0 / +2.0)" in helps.detail
    # One shared seed (1): no paired spread, so the rows' own spreads decide (margin -4 within 6.0).
    lone = make_table("T", ROWS, {**together, "vilbert": {"vqa": seeds(0.50, 0.56, None)},
                                  "vilbert_scratch": {"vqa": seeds(None, 0.54, 0.60)}})
    helps = {c.text: c for c in check_claims(lone, "ViLBERT", "Scratch", "Single")}["pretraining helps: VQA"]
    assert not helps.decided and "margin -4.0, spread 6.0 (of two independent runs)" in helps.detail


def test_the_plan_runs_each_fine_tune_at_every_seed(tmp_path):
    sizes = dataclasses.replace(quick_sizes(), seeds=3)
    names = [s.name for s in build_plan(tmp_path, sizes).stages]
    assert {"vilbert-vqa", "vilbert-vqa-seed1", "vilbert-vqa-seed2", "single_stream-refer-seed2"} <= set(names)
    assert "vilbert-zero_shot_retrieval-seed1" not in names  # evaluation only: nothing to reseed


def test_varied_pretraining_gives_each_seed_its_own_pretrained_model(tmp_path):
    from vilbert.demo.rows import MAIN_ROWS
    from vilbert.demo.steps import Steps

    sizes = with_overrides(quick_sizes(), seeds=3, vary_pretraining=True)
    names = [s.name for s in build_plan(tmp_path, sizes).stages]
    assert {"pretrain-vilbert", "pretrain-vilbert-seed1", "pretrain-vilbert-seed2", "pretrain-single_stream-seed2",
            "vilbert-zero_shot_retrieval-seed2", "single_stream-zero_shot_retrieval-seed1"} <= set(names)
    assert "vilbert_scratch-zero_shot_retrieval-seed1" not in names  # nothing pretrained to vary
    # Every pretraining comes before the fine-tunes that start from it.
    assert max(names.index(n) for n in names if n.startswith("pretrain-")) < names.index("vilbert-vqa")
    steps = Steps(tmp_path, sizes)
    rows = {r.key: r for r in MAIN_ROWS}
    for seed in range(sizes.seeds):
        source = steps.row_model(rows["vilbert"], seed)
        assert source.directory == steps.pretrain_dir(rows["vilbert"].model, seed) / "model"
        assert steps.multitask_run(rows["vilbert"], seed).model == source
        assert steps.row_model(rows["vilbert_scratch"], seed).directory is None  # a fresh model, seeded by fine-tuning
    assert len({steps.pretrain_dir(rows["vilbert"].model, k) for k in range(3)}) == 3
    plain = Steps(tmp_path, with_overrides(quick_sizes(), seeds=3))  # fine-tune seeds only: one pretraining
    assert {plain.row_model(rows["vilbert"], k).directory for k in range(3)} == {steps.row_model(rows["vilbert"], 0).directory}


def test_varied_pretraining_needs_seeds_and_older_demo_folders_stay_usable(tmp_path, capsys):
    from vilbert.cli.demo import main
    from vilbert.demo.run import SETTINGS_FILE

    assert main(["--quick", "--out", str(tmp_path / "d"), "--report-only", "--vary-pretraining"]) != 0
    assert "needs 2 or more seeds, got 1" in capsys.readouterr().err
    assert not (tmp_path / "d" / SETTINGS_FILE).exists()  # refused before anything was written
    # A folder made before the setting existed holds its default: the same demo, not another one.
    check_settings(tmp_path / "old", quick_sizes())
    settings = json.loads((tmp_path / "old" / SETTINGS_FILE).read_text())
    del settings["vary_pretraining"]
    (tmp_path / "old" / SETTINGS_FILE).write_text(json.dumps(settings))
    check_settings(tmp_path / "old", quick_sizes())
    with pytest.raises(FileExistsError, match="differs in: seeds, vary_pretraining"):
        check_settings(tmp_path / "old", with_overrides(quick_sizes(), seeds=2, vary_pretraining=True))
    # A folder from before the test split grew has 160 test images: another demo, refused by name.
    check_settings(tmp_path / "older", default_sizes())
    settings = json.loads((tmp_path / "older" / SETTINGS_FILE).read_text())
    del settings["extra_test_images"]
    (tmp_path / "older" / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(FileExistsError, match="differs in: extra_test_images"):
        check_settings(tmp_path / "older", default_sizes())
    check_settings(tmp_path / "older", dataclasses.replace(default_sizes(), extra_test_images=0))


def test_zero_shot_claim_across_pretrainings_is_decided_against_their_spread(tmp_path):
    def runs(*r1):
        return [{"ir_r1": v, "ir_r5": 0.5, "ir_r10": 0.7} for v in r1]

    for values, held, decided in (((0.33, 0.34, 0.35), True, True),  # 34 ± 1 against a bar of 30: clear of it
                                  ((0.20, 0.30, 0.40), None, False),  # 30 ± 10: the bar lies inside
                                  ((0.10, 0.11, 0.12), False, True)):  # 11 ± 1: clearly below
        metrics = {"vilbert": {"zero_shot_retrieval": runs(*values)}}
        table = make_table("T", ROWS, metrics, test_images=10)  # chance R@1 = 10%: the bar is 30%
        claim = next(c for c in check_claims(table, "ViLBERT", "Scratch", "Single") if c.text.startswith("zero-shot"))
        assert (claim.held, claim.decided) == (held, decided), (values, claim)
        assert "spread" in claim.detail


def test_finetune_steps_change_every_row_of_one_task_and_are_kept_with_the_demo(tmp_path):
    from vilbert.cli.demo import main
    from vilbert.demo.run import SETTINGS_FILE

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out), "--report-only", "--finetune-steps", "vqa=25"]) == 0
    settings = json.loads((out / SETTINGS_FILE).read_text())
    quick = quick_sizes()
    assert settings["finetune"]["vqa"]["steps"] == 25 != quick.finetune["vqa"].steps
    assert all(settings["finetune"][t]["steps"] == quick.finetune[t].steps for t in TASKS if t != "vqa")
    longer = build_plan(out, with_overrides(quick, finetune_steps={"vqa": 25}))
    plain = build_plan(tmp_path / "plain", quick)
    vqa = [k for k in plain.steps if k.name.endswith("-vqa")]
    assert vqa and all(longer.steps[k].estimate_s > plain.steps[k].estimate_s for k in vqa)
    assert all(longer.steps[k].estimate_s == plain.steps[k].estimate_s for k in plain.steps if k not in vqa)
    # the same folder with the default steps is another demo: refused, not mixed
    assert main(["--quick", "--out", str(out), "--report-only"]) != 0


@pytest.mark.parametrize("value, message", [("vqx=5", "unknown task"), ("vqa=0", ">= 1")])
def test_finetune_steps_name_what_is_wrong(tmp_path, capsys, value, message):
    from vilbert.cli.demo import main

    assert main(["--quick", "--out", str(tmp_path / "d"), "--report-only", "--finetune-steps", value]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_extra_test_images_are_checked_before_anything_is_written(tmp_path, capsys):
    from vilbert.cli.demo import main

    assert main(["--quick", "--out", str(tmp_path / "d"), "--extra-test-images", "-3"]) != 0
    assert "extra test images must be 0 or more, got -3" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    plan = build_plan(tmp_path / "p", with_overrides(quick_sizes(), extra_test_images=7))
    assert plan.steps[next(k for k in plan.steps if k.step == "world")].description == "generate 55 images"


def test_a_worker_rebuilds_the_exact_sizes_and_names_an_unknown_stage(tmp_path, capsys):
    from vilbert.demo.sizes import DemoSizes
    from vilbert.demo.worker import command, main

    sizes = with_overrides(default_sizes(), finetune_steps={"vqa": 960}, seeds=2, vary_pretraining=True)
    assert DemoSizes.from_dict(json.loads(json.dumps(sizes.to_dict()))) == sizes
    argv = command(str(tmp_path), "vilbert-vqa", sizes, 3, ablations=True)
    assert argv[1:5] == ["-m", "vilbert.demo.worker", str(tmp_path), "vilbert-vqa"] and argv[-1] == "--ablations"
    assert main([*argv[3:4], "no-such-stage", *argv[5:]]) == 2
    assert "the plan has no stage 'no-such-stage'" in capsys.readouterr().err


@pytest.mark.slow
def test_vilbert_demo_quick_side_by_side_prints_the_same_table(tmp_path):
    """Two stages at a time, each in a process of its own with one thread: the same table to the
    byte as one stage at a time with one thread."""
    from vilbert.cli.demo import main

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["--quick", "--out", str(one), "--heartbeat", "0", "--threads", "1"]) == 0
    assert main(["--quick", "--out", str(two), "--heartbeat", "0", "--threads", "1", "--jobs", "2"]) == 0
    assert (two / "results.json").read_text() == (one / "results.json").read_text()
    assert (two / "results.md").read_text() == (one / "results.md").read_text()


def test_every_stage_needs_what_it_reads_and_comes_after_it(tmp_path):
    sizes = with_overrides(default_sizes(), seeds=2, vary_pretraining=True)
    plan = build_plan(tmp_path, sizes, ablations=True)
    order = {s.name: k for k, s in enumerate(plan.stages)}
    for stage in plan.stages:
        assert all(order[n] < order[stage.name] for n in stage.needs), stage.name
        assert (stage.name == "world") == (not stage.needs), stage.name
    needs = {s.name: s.needs for s in plan.stages}
    assert needs["features"] == ("world",) and needs["pretrain-vilbert-seed1"] == ("features",)
    assert needs["vilbert-vqa-seed1"] == ("pretrain-vilbert-seed1",)
    assert needs["single_stream-zero_shot_retrieval"] == ("pretrain-single_stream",)
    assert needs["vilbert_scratch-refer-seed1"] == ("features",)  # nothing pretrained to wait on

"""`vilbert finetune` and `vilbert evaluate` through their main(argv) on a tiny world with real
features: the run writes RUN/model and metrics.json, and evaluate reproduces them from the
checkpoint alone."""

import json

import pytest
import torch

from vilbert.cli import evaluate as evaluate_cli
from vilbert.cli import finetune as finetune_cli
from vilbert.model import build_model, load_preset, load_pretrained, save_pretrained
from vilbert.pipelines.models import text_stream_lr_scales
from vilbert.tasks.builder import build_task, parse_options
from vilbert.tasks.registry import recipe


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


@pytest.fixture(scope="module")
def vqa_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa_run")
    rc = finetune_cli.main(["--task", "vqa", "--data", str(root), "--out", str(out), "--preset", "tiny",
                            "--max-steps", "3", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    return out


def test_finetune_writes_model_and_metrics(vqa_run, root):
    metrics = json.loads((vqa_run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["finished"]
    for split in ("val", "test"):  # overall and per answer type, as the official evaluation reports
        assert {"accuracy", "questions", "accuracy_yes_no", "accuracy_number", "accuracy_other"} == set(metrics[split])
    config = json.loads((vqa_run / "model" / "config.json").read_text())
    assert config["heads"]["vqa"]["answers"] == build_task("vqa", root).answers
    assert (vqa_run / "model" / "model.safetensors").is_file()
    assert (vqa_run / "train_log.csv").is_file()
    card = (vqa_run / "model" / "README.md").read_text()  # the model card says what it scored
    assert "## Metrics" in card and str(round(metrics["test"]["accuracy"], 4))[:4] in card


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_reproduces_metrics(vqa_run, root, tmp_path, capsys, split):
    out = tmp_path / "m.json"
    rc = evaluate_cli.main(["--task", "vqa", "--checkpoint", str(vqa_run / "model"), "--data", str(root),
                            "--split", split, "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["metrics"] == json.loads((vqa_run / "metrics.json").read_text())[split]


def test_vcr_from_a_saved_model(root, tmp_path):
    init = tmp_path / "init"
    save_pretrained(build_model(load_preset("tiny")), init)  # stands in for a pretraining run's model/
    out = tmp_path / "run"
    rc = finetune_cli.main(["--task", "vcr", "--data", str(root), "--out", str(out), "--init", str(init),
                            "--max-steps", "2", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"q_a", "qa_r", "q_ar"} <= set(metrics["val"])
    assert "pair_score" in json.loads((out / "model" / "config.json").read_text())["heads"]


def test_reinit_starts_the_named_modules_afresh(root, tmp_path, capsys):
    torch.manual_seed(0)
    init = tmp_path / "init"
    save_pretrained(build_model(load_preset("tiny")), init)
    out = tmp_path / "run"
    rc = finetune_cli.main(["--task", "vqa", "--data", str(root), "--out", str(out), "--init", str(init),
                            "--reinit", "text_pooler,image_pooler", "--max-steps", "2", "--batch-size", "4",
                            "--lr", "1e-5", "--no-progress"])
    assert rc == 0 and "re-initialised text_pooler, image_pooler" in capsys.readouterr().err
    before, after = load_pretrained(init).state_dict(), load_pretrained(out / "model").state_dict()
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    # two steps at 1e-5 move a weight by ~2e-5; a fresh N(0, 0.02) draw moves it by ~0.02
    assert moved["text_pooler.dense.weight"] > 0.01 and moved["image_pooler.dense.weight"] > 0.01
    assert moved["encoder.text_layers.0.qkv.proj.weight"] < 1e-3


def test_bad_arguments_are_named(root, tmp_path, capsys):
    base = ["--data", str(root), "--out", str(tmp_path / "r"), "--max-steps", "1", "--no-progress"]
    assert finetune_cli.main(["--task", "vqa", *base]) == 2
    assert "exactly one of --init" in capsys.readouterr().err
    assert finetune_cli.main(["--task", "vqa", "--preset", "tiny", "--option", "min_count=2", *base]) == 2
    assert "min_count" in capsys.readouterr().err
    assert finetune_cli.main(["--task", "nosuch", "--preset", "tiny", *base]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert finetune_cli.main(["--task", "vqa", "--preset", "tiny", "--reinit", "text_poolr", *base]) == 2
    assert "'text_poolr'" in capsys.readouterr().err
    wide = tmp_path / "wide"  # a saved model's width is fixed: a 2048-d model on the 1280-d store
    save_pretrained(build_model(load_preset("tiny", v_feature_size=2048)), wide)
    assert finetune_cli.main(["--task", "vqa", "--init", str(wide), *base]) == 2
    assert "1280-d features" in capsys.readouterr().err
    no_head = tmp_path / "nohead"
    save_pretrained(build_model(load_preset("tiny")), no_head)
    assert evaluate_cli.main(["--task", "vqa", "--checkpoint", str(no_head), "--data", str(root)]) == 2
    assert "no ['vqa'] head" in capsys.readouterr().err


def test_builder_folders_recipes_and_options(root):
    assert build_task("vcr_qa_r", root).data.data_dir == str(root / "vcr")
    task = build_task("vqa", root, max_text_length=16, max_regions=8)
    assert (task.data.max_text_length, task.data.max_regions) == (16, 8)
    assert (recipe("vqa").batch_size, recipe("vqa").lr) == (256, 4e-5)
    assert (recipe("vcr").batch_size, recipe("vcr").lr, recipe("refer").folder) == (64, 2e-5, "refcoco+")
    assert parse_options(["min_answer_count=3", "zero-shot=true", "name=abc"]) == {
        "min_answer_count": 3, "zero_shot": True, "name": "abc"}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["oops"])
    with pytest.raises(FileNotFoundError, match="data root"):
        build_task("vqa", root / "missing")


def test_text_lr_scale_names_the_text_stream(root):
    args = finetune_cli.build_parser().parse_args(["--task", "vqa", "--data", str(root), "--out", "x",
                                                   "--preset", "tiny", "--text-lr-scale", "0.1"])
    assert finetune_cli.finetune_run(args).text_lr_scale == 0.1
    two = text_stream_lr_scales(build_model(load_preset("tiny")), args.text_lr_scale)
    assert two == {"text_embeddings.": 0.1, "encoder.text_layers.": 0.1}
    one = text_stream_lr_scales(build_model(load_preset("tiny", architecture="single_stream")), args.text_lr_scale)
    assert one == {"text_embeddings.": 0.1, "encoder.layers.": 0.1}
    assert text_stream_lr_scales(build_model(load_preset("tiny")), 1.0) == {}


def test_evaluate_zero_shot_retrieval_from_a_data_root(root, tmp_path, capsys):
    """The README's `vilbert evaluate --task zero_shot_retrieval` on a world root reads flickr30k/."""
    assert build_task("zero_shot_retrieval", root).data.data_dir == str(root / "flickr30k")
    init = tmp_path / "init"
    save_pretrained(build_model(load_preset("tiny")), init)  # a pretraining run's model/ has an alignment head
    rc = evaluate_cli.main(["--task", "zero_shot_retrieval", "--checkpoint", str(init), "--data", str(root),
                            "--split", "val", "--option", "eval_images=3", "--option", "progress=false"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["metrics"]) == {f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)}
    assert printed["metrics"]["ir_r10"] == 1.0  # 3 images: the right one is always in the top 10


def test_evaluate_writes_predictions_in_the_official_format(vqa_run, root, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert evaluate_cli.main(["--task", "vqa", "--checkpoint", str(vqa_run / "model"), "--data", str(root),
                              "--split", "val", "--write-predictions", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)["metrics"]
    results = json.loads(out.read_text())
    task = build_task("vqa", root)
    examples = task.examples("val")
    assert [r["question_id"] for r in results] == [e.question_id for e in examples]
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in task.answers for r in results)
    # the official accuracy of those answers is the printed one, overall and per answer type
    from vilbert.tasks.vqa import vqa_accuracy

    assert vqa_accuracy([r["answer"] for r in results], [e.scores for e in examples]) == pytest.approx(printed["accuracy"])
    yes_no = [(r["answer"], e.scores) for r, e in zip(results, examples) if e.answer_type == "yes/no"]
    assert vqa_accuracy(*zip(*yes_no)) == pytest.approx(printed["accuracy_yes_no"])


def test_bucket_by_length_is_a_recorded_trajectory_setting(vqa_run, root, tmp_path, capsys):
    out = tmp_path / "bucketed"
    base = ["--task", "vqa", "--data", str(root), "--out", str(out), "--preset", "tiny", "--batch-size", "8",
            "--no-progress"]
    assert finetune_cli.main([*base, "--max-steps", "3", "--bucket-by-length", "--stop-after", "2"]) == 0
    # resuming without the flag would change which examples make up step 3: refused, naming it
    assert finetune_cli.main([*base, "--max-steps", "3", "--resume"]) != 0
    assert "bucket_by_length: True -> False" in capsys.readouterr().err
    assert finetune_cli.main([*base, "--max-steps", "3", "--bucket-by-length", "--resume"]) == 0
    bucketed, plain = load_pretrained(out / "model").state_dict(), load_pretrained(vqa_run / "model").state_dict()
    assert any(not torch.equal(bucketed[k], plain[k]) for k in plain)  # other batches than the plain order's

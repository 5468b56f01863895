"""`vilbert predict` from a checkpoint: top answers for a question, a drawn box for an expression."""

import json

import numpy as np
import pytest
from PIL import Image

from vilbert.cli import finetune as finetune_cli
from vilbert.cli import predict as predict_cli
from vilbert.features.store import FeatureStore
from vilbert.model import load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


@pytest.fixture(scope="module")
def model_dir(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_run")
    assert finetune_cli.main(["--task", "vqa", "--data", str(root), "--out", str(out), "--preset", "tiny",
                              "--max-steps", "2", "--batch-size", "8", "--no-progress"]) == 0
    # Expression mode needs a region_score head (a refer fine-tune); added untrained here.
    model = load_pretrained(out / "model")
    model.add_head("region_score")
    save_pretrained(model, out / "model")
    return out / "model"


def test_question_prints_top_answers(root, model_dir, capsys):
    rc = predict_cli.main(["--checkpoint", str(model_dir), "--image", str(root / "images" / "2.png"),
                           "--question", "how many red objects are there?", "--top", "3",
                           "--boxes", str(root / "proposals.json"), "--features", str(root / "features.lmdb")])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    scores = [float(line.split()[0]) for line in lines]
    answers = [line.split(maxsplit=1)[1] for line in lines]
    vocab = json.loads((model_dir / "config.json").read_text())["heads"]["vqa"]["answers"]
    assert scores == sorted(scores, reverse=True) and set(answers) <= set(vocab)


def test_expression_draws_the_chosen_box(root, model_dir, tmp_path, capsys):
    image = root / "images" / "2.png"
    out = tmp_path / "box.png"
    rc = predict_cli.main(["--checkpoint", str(model_dir), "--image", str(image), "--expression",
                           "the small red square", "--out", str(out), "--boxes", str(root / "proposals.json"),
                           "--features", str(root / "features.lmdb")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    stored = FeatureStore(root / "features.lmdb")["2"]
    assert any(np.allclose(result["box"], b) for b in stored.boxes)  # one of the image's proposals
    assert 0.0 < result["score"] <= 1.0
    drawn, original = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    x1, y1 = (int(v) for v in result["box"][:2])
    y1 = min(y1 + 1, drawn.shape[0] - 1)
    assert tuple(drawn[y1, min(x1 + 1, drawn.shape[1] - 1)]) == (255, 0, 0)  # the box's red outline


def test_grid_boxes_and_errors(root, model_dir, tmp_path, capsys):
    image = str(root / "images" / "2.png")
    rc = predict_cli.main(["--checkpoint", str(model_dir), "--image", image, "--question", "is there a circle?",
                           "--features", str(root / "features.lmdb"), "--top", "1"])
    assert rc == 0 and len(capsys.readouterr().out.strip().splitlines()) == 1
    assert predict_cli.main(["--checkpoint", str(model_dir), "--image", image, "--expression", "x"]) == 2
    assert "--out" in capsys.readouterr().err
    other = tmp_path / "elsewhere.png"
    Image.open(image).save(other)
    assert predict_cli.main(["--checkpoint", str(model_dir), "--image", str(other), "--question", "q",
                             "--boxes", str(root / "proposals.json")]) == 2
    assert "elsewhere.png" in capsys.readouterr().err

"""The released checkpoints' detectors through the product: `vilbert features --detector` fills a
store with what the detector computes (in the original releases' layout), resumes and names bad
input; `vilbert predict` answers a question about a photo through a detector and a VQA head.

Runs the two detector fixtures (tests/fixtures/detect/*: reduced architectures with random weights,
checked against the reference implementations by test_detect_*.py) on their own photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vilbert.cli.features import main as features_main
from vilbert.cli.predict import main as predict_main
from vilbert.detect import load_detector
from vilbert.detect.bottom_up import BottomUpConfig, build_bottom_up, load_bottom_up_weights
from vilbert.features.store import FeatureStore
from vilbert.model import build_model, load_preset, save_pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "detect"
BOTTOM_UP = ["--detector", "bottom-up-r101", "--detector-weights", str(FIXTURES / "bottom_up" / "frcnn_port.bin"),
             "--detector-config", str(FIXTURES / "bottom_up" / "config.json")]
X152 = ["--detector", "x152-fpn", "--detector-weights", str(FIXTURES / "x152_fpn" / "model.pth"),
        "--detector-config", str(FIXTURES / "x152_fpn" / "config.json")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("image_a.png", "image_b.png"):
        shutil.copy(FIXTURES / "bottom_up" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def bottom_up_store(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "bottom_up.lmdb"
    assert features_main(["--images", str(photos), *BOTTOM_UP, "--out", str(out), "--no-progress"]) == 0
    return out


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_bottom_up_store_holds_what_the_detector_computes(bottom_up_store, photos):
    config = BottomUpConfig.load(FIXTURES / "bottom_up" / "config.json")
    raw = build_bottom_up(config)
    load_bottom_up_weights(raw, FIXTURES / "bottom_up" / "frcnn_port.bin")
    store = FeatureStore(bottom_up_store)
    assert sorted(store.ids()) == ["image_a", "image_b"]
    for image_id in store.ids():
        found = raw.detect([_rgb(photos / f"{image_id}.png")])[0]  # one image at a time, as the store's run
        got = store[image_id]
        np.testing.assert_allclose(got.boxes, found.boxes, atol=1e-4)
        np.testing.assert_allclose(got.features, found.features, atol=1e-5)
        # the released features keep the background in column 0 (the port keeps it last)
        np.testing.assert_allclose(got.cls_prob[:, 0], found.cls_prob[:, -1], atol=1e-6)
        np.testing.assert_allclose(got.cls_prob[:, 1:], found.cls_prob[:, :-1], atol=1e-6)
        assert got.objects.tolist() == found.objects.tolist() and got.attributes.tolist() == found.attributes.tolist()
        np.testing.assert_allclose(got.scores, found.scores, atol=1e-6)
        assert config.min_boxes <= got.num_boxes <= config.max_boxes
    meta = store.meta
    assert meta["detector"] == "bottom-up-r101" and meta["feature_dim"] == got.features.shape[1]
    assert meta["num_classes"] == config.num_classes + 1 == got.cls_prob.shape[1]
    assert Path(meta["weights"]).samefile(FIXTURES / "bottom_up" / "frcnn_port.bin")


def test_a_rerun_resumes_and_another_detector_is_refused(bottom_up_store, photos, capsys):
    assert features_main(["--images", str(photos), *BOTTOM_UP, "--out", str(bottom_up_store), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 0 images" in printed and "skipped 2 already" in printed
    assert features_main(["--images", str(photos), *X152, "--out", str(bottom_up_store), "--no-progress"]) == 2
    assert "holds backbone='bottom-up-r101'" in capsys.readouterr().err


def test_x152_features_for_given_boxes(photos, tmp_path):
    boxes = {"images": [{"id": "image_a", "file_name": "image_a.png"}],
             "annotations": [{"id": 1, "image_id": "image_a", "bbox": [10, 12, 60, 40]},
                             {"id": 2, "image_id": "image_a", "bbox": [0, 0, 100, 90]}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes))
    out = tmp_path / "given.lmdb"
    assert features_main(["--images", str(photos), *X152, "--boxes", str(path), "--out", str(out), "--no-progress"]) == 0
    got = FeatureStore(out)["image_a"]
    detector = load_detector("x152-fpn", FIXTURES / "x152_fpn" / "model.pth", FIXTURES / "x152_fpn" / "config.json")
    want = detector.features_for_boxes([_rgb(photos / "image_a.png")], [np.array([[10, 12, 70, 52], [0, 0, 100, 90]],
                                                                                   np.float32)])[0]
    np.testing.assert_allclose(got.boxes, [[10, 12, 70, 52], [0, 0, 100, 90]], atol=1e-3)
    np.testing.assert_allclose(got.features, want.features, atol=1e-5)
    assert got.cls_prob.shape[1] == detector.num_classes


def test_bad_detector_input_is_named(photos, tmp_path, capsys):
    out = str(tmp_path / "s")
    # a weights file of the other detector
    wrong = ["--detector", "bottom-up-r101", "--detector-weights", str(FIXTURES / "x152_fpn" / "model.pth"),
             "--detector-config", str(FIXTURES / "bottom_up" / "config.json")]
    assert features_main(["--images", str(photos), *wrong, "--out", out]) == 2
    assert "model.pth" in capsys.readouterr().err
    assert features_main(["--images", str(photos), "--detector", "x152-fpn", "--out", out]) == 2
    assert "needs its weights file" in capsys.readouterr().err
    assert features_main(["--images", str(photos), "--detector", "resnet-9000", "--detector-weights", "w",
                          "--out", out]) == 2
    assert "resnet-9000" in capsys.readouterr().err
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"images": [{"id": 1, "file_name": "image_a.png"}],
                                 "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5]}]}))
    assert features_main(["--images", str(photos), *BOTTOM_UP, "--boxes", str(boxes), "--out", out]) == 2
    assert "chooses its own boxes" in capsys.readouterr().err
    # an image that does not decode is recorded and the others are extracted
    broken = tmp_path / "broken"
    shutil.copytree(photos, broken)
    (broken / "not_an_image.png").write_bytes(b"GIF89a nonsense")
    assert features_main(["--images", str(broken), *BOTTOM_UP, "--out", str(tmp_path / "s2"), "--no-progress"]) == 0
    failures = (tmp_path / "s2" / "failures.jsonl").read_text()
    assert "not_an_image.png" in failures and len(FeatureStore(tmp_path / "s2")) == 2


def _vqa_model(tmp_path: Path, width: int) -> Path:
    torch.manual_seed(0)
    config = load_preset("tiny", v_feature_size=width)
    config.heads = {"vqa": {"num_answers": 3, "answers": ["cat", "dog", "two"]}}
    out = tmp_path / f"vqa{width}"
    save_pretrained(build_model(config), out)
    return out


def test_predict_answers_about_a_photo_through_the_detector(bottom_up_store, photos, tmp_path, capsys):
    """The road a converted checkpoint takes: photo -> detector -> regions -> the VQA head's answers."""
    width = FeatureStore(bottom_up_store).meta["feature_dim"]
    model = _vqa_model(tmp_path, width)
    args = ["--checkpoint", str(model), "--image", str(photos / "image_a.png"), "--question", "what is it?",
            "--top", "3", "--device", "cpu"]
    assert predict_main([*args, *BOTTOM_UP]) == 0
    direct = capsys.readouterr().out.splitlines()
    assert len(direct) == 3 and {line.split()[1] for line in direct} == {"cat", "dog", "two"}
    # the store names its detector and weights: the same regions, the same answers
    assert predict_main([*args, "--features", str(bottom_up_store)]) == 0
    assert capsys.readouterr().out.splitlines() == direct
    # a model of another width names what it expects, and how a converted one gets its features
    assert predict_main(["--checkpoint", str(_vqa_model(tmp_path, 2048)), *args[2:]]) == 2
    err = capsys.readouterr().err
    assert "expects 2048" in err and "--detector bottom-up-r101" in err

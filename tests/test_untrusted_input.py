"""Input that must never crash the library or silently change a result: images of every mode,
boxes that are not boxes, files the library wrote that were damaged since, and jobs killed at
random points (which resume to exactly what an uninterrupted run gives)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vilbert.core.regions import ImageRegions
from vilbert.demo.stages import Stage, StageRunner
from vilbert.features.boxes import ImageEntry
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.fill import read_rgb
from vilbert.features.store import FeatureStore
from vilbert.io.atomic import TEMP_SUFFIX, DamagedFileError
from vilbert.train.checkpoint import latest_checkpoint
from vilbert.train.config import TrainConfig
from vilbert.train.loop import train
from vilbert.train.toy import ToyModel, ToyTask
from vilbert.world import generate_world

REPO = Path(__file__).resolve().parents[1]


# -- images -------------------------------------------------------------------------------------


def _save(tmp_path: Path, name: str, image: Image.Image, **kw) -> ImageEntry:
    path = tmp_path / name
    image.save(path, **kw)
    return ImageEntry(path.stem, path)


def test_every_image_mode_reads_as_opencv_would(tmp_path):
    grey16 = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)  # up to ~64,500
    got = np.asarray(read_rgb(_save(tmp_path, "g16.png", Image.fromarray(grey16))))
    assert got.shape == (48, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], grey16 >> 8)  # the high byte, not 255 everywhere
    assert len(np.unique(got)) > 200

    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    got = np.asarray(read_rgb(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA"))))
    np.testing.assert_array_equal(got, rgba[..., :3])  # alpha dropped, colours kept

    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    got = read_rgb(_save(tmp_path, "p.png", palette, transparency=0))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(palette.convert("RGB")))

    cmyk = Image.fromarray(rgba[..., :3]).convert("CMYK")
    assert read_rgb(_save(tmp_path, "c.jpg", cmyk, quality=95)).mode == "RGB"
    assert read_rgb(_save(tmp_path, "la.png", Image.fromarray(rgba[..., :2], "LA"))).mode == "RGB"


def test_a_16_bit_image_is_not_stored_as_white(tmp_path):
    grey16 = (np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16)
    dark = np.zeros((96, 96), np.uint16)
    entries = [_save(tmp_path, "ramp.png", Image.fromarray(grey16)), _save(tmp_path, "dark.png", Image.fromarray(dark))]
    report = extract_features(entries, tmp_path / "s", ExtractConfig(image_size=96), progress=False)
    assert report.written == 2
    store = FeatureStore(tmp_path / "s")
    assert not np.allclose(store["ramp"].features, store["dark"].features, atol=1e-3)


@pytest.mark.parametrize("bbox, message", [
    ([float("nan"), 0, 10, 10], "expected a finite number"),
    (["1", "3", 10, 10], "expected a finite number, got '1'"),
    ([0, 0, 10], r"must be \[x, y, width, height\]"),
    (None, r"must be \[x, y, width, height\]"),
])
def test_boxes_that_are_not_boxes_are_named(tmp_path, bbox, message):
    from vilbert.features.boxes import read_coco_boxes

    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png"}],
                                "annotations": [{"id": 9, "image_id": 1, "bbox": bbox}]}, allow_nan=True))
    with pytest.raises(ValueError, match=message) as err:
        read_coco_boxes(path, tmp_path)
    assert str(path) in str(err.value) and "annotation 9" in str(err.value)


def test_a_box_outside_its_image_fails_that_image_only(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "1.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "2.png")
    inside = np.array([[0, 0, 30, 30]], np.float32)
    entries = [ImageEntry("1", tmp_path / "1.png", boxes=np.array([[100, 100, 120, 120]], np.float32)),
               ImageEntry("2", tmp_path / "2.png", boxes=inside)]
    report = extract_features(entries, tmp_path / "s", ExtractConfig(image_size=64), progress=False)
    assert (report.written, report.failed) == (1, 1)
    failure = json.loads((tmp_path / "s" / "failures.jsonl").read_text())
    assert failure["image_id"] == "1" and "lies outside the 64x64 image" in failure["error"]


# -- files the library wrote, damaged since ----------------------------------------------------


def test_a_damaged_stage_marker_runs_the_stage_again(tmp_path):
    runs = []
    stage = Stage("a", lambda: runs.append(1) or {"n": len(runs)})
    StageRunner(tmp_path).run([stage])
    (tmp_path / "stages" / "a.json").write_text('{"name": "a", "res')  # cut short
    results = StageRunner(tmp_path).run([stage])
    assert results["a"] == {"n": 2} and (tmp_path / "stages" / "a.damaged").is_file()


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-2, "seed": 1, "progress": False, **kw})


def test_leftovers_of_a_killed_run_are_cleaned_and_logs_stay_whole(tmp_path):
    train(ToyModel(), ToyTask(size=16), _config(save_every=2, stop_after=4), tmp_path, eval_splits=("val",))
    stale = tmp_path / f".train_log.csv.abc123{TEMP_SUFFIX}"
    stale.write_text("half a log")
    with open(tmp_path / "train_log.csv", "a") as log:  # a row a kill cut short
        log.write("5,0.1")
    train(ToyModel(), ToyTask(size=16), _config(save_every=2), tmp_path, resume=True, eval_splits=("val",))
    train(ToyModel(), ToyTask(size=16), _config(save_every=2), tmp_path, resume=True, eval_splits=("val",))
    assert not stale.exists()
    steps = [line.split(",")[0] for line in (tmp_path / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "5", "6"]  # whole numbers, each once
    evals = [line.split(",")[0] for line in (tmp_path / "eval_log.csv").read_text().splitlines()[1:]]
    assert evals == ["6"]  # a finished run resumed again does not log its evaluation twice
    (tmp_path / "train_log.csv").write_text("step,loss\n1,0.5\n2,ten\n3,0.4\n")
    with pytest.raises(DamagedFileError, match=r"train_log.csv: line 3 is not a row of numbers"):
        train(ToyModel(), ToyTask(size=16), _config(save_every=2), tmp_path, resume=True)


def test_damaged_run_settings_are_named(tmp_path):
    from vilbert.pipelines.pretrain import RUN_FILE, _check_run_file

    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(DamagedFileError, match=RUN_FILE):
        _check_run_file(tmp_path, {"model": {}}, resume=True)


def test_a_damaged_world_manifest_is_named(tmp_path):
    generate_world(tmp_path / "w", num_images=6, seed=1, image_size=64, progress=False)
    (tmp_path / "w" / "world.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DamagedFileError, match="world.json"):
        generate_world(tmp_path / "w", num_images=6, seed=1, image_size=64, progress=False)


# -- kills at random points ----------------------------------------------------------------------

STEPS = 150
_TRAINER = (
    "import sys, time, torch\n"
    "from vilbert.train.config import TrainConfig\n"
    "from vilbert.train.loop import train\n"
    "from vilbert.train.toy import ToyModel, ToyTask\n"
    "torch.set_num_threads(int(sys.argv[2]))\n"
    "torch.manual_seed(0)\n"
    f"config = TrainConfig(max_steps={STEPS}, batch_size=4, lr=1e-2, seed=1, progress=False, save_every=1)\n"
    "slow = lambda seen: time.sleep(0.02)  # steps long enough for a kill to land in one, or in a save\n"
    "train(ToyModel(dropout=0.1), ToyTask(size=64, loss_hook=slow), config, sys.argv[1], resume=True)\n"
)


def _checkpoint_step(run: Path) -> int:
    """The step of the newest complete checkpoint, 0 before the first (or while one is replaced)."""
    try:
        found = latest_checkpoint(run)
    except OSError:
        return 0
    return int(found.name.split("_")[1]) if found else 0


def _wait_until(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll `condition` while `process` runs: kills are timed by what the job has done, not by the
    wall clock, so a slow machine (a CI start-up of 4 s) still sees every kind of kill."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, "the trainer ended before it was killed"
        assert time.monotonic() < deadline, f"no progress within {timeout_s} s"
        time.sleep(0.01)


def test_training_killed_at_random_points_resumes_to_the_same_weights(tmp_path):
    """SIGKILL at seeded random moments (at start-up, then twice mid-run: mid-step or mid-checkpoint),
    then finish: the weights equal those of a run never killed."""
    rng = random.Random(2026)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    args = [sys.executable, "-c", _TRAINER, str(run), str(torch.get_num_threads())]
    reached = []
    for kill in range(3):
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:  # during imports or set-up, before a step or so
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # once this process has saved a step of its own, a random moment later
            before = _checkpoint_step(run)
            _wait_until(lambda before=before: _checkpoint_step(run) > before, process)
            time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        reached.append(_checkpoint_step(run))
    assert any(0 < step < STEPS for step in reached), reached  # at least one kill landed mid-run
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    torch.manual_seed(0)
    config = TrainConfig(max_steps=STEPS, batch_size=4, lr=1e-2, seed=1, progress=False, save_every=1)
    train(ToyModel(dropout=0.1), ToyTask(size=64), config, tmp_path / "ref")
    a = load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "ref") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "run").rglob(f"*{TEMP_SUFFIX}"))


def test_world_generation_killed_at_a_random_point_resumes_byte_identical(tmp_path):
    args = [sys.executable, "-m", "vilbert", "world", "--out", str(tmp_path / "w"), "--images", "40",
            "--image-size", "96", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_until(lambda: any(p.is_file() for p in (tmp_path / "w").rglob("*.png")), process)
    time.sleep(random.Random(7).uniform(0.0, 0.5))  # mid-way through the images
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    generate_world(tmp_path / "ref", num_images=40, image_size=96, progress=False)
    files = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "w") for p in (tmp_path / "w").rglob("*") if p.is_file())
    assert all((tmp_path / "w" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes() for f in files)


def test_regions_in_a_store_are_what_was_written(tmp_path):
    """The cheapest end of the chain: a record read back is bitwise the regions written."""
    from vilbert.features.store import FeatureStoreWriter

    rng = np.random.default_rng(1)
    regions = ImageRegions("x", 10, 10, rng.uniform(0, 5, (3, 4)).astype(np.float32),
                           rng.normal(size=(3, 8)).astype(np.float32))
    with FeatureStoreWriter(tmp_path / "s", {"backbone": "t", "feature_dim": 8, "num_classes": 0}) as writer:
        writer.put_many([regions])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s")["x"].features, regions.features)


@pytest.mark.parametrize("key, value, message", [
    ("vocab_size", 10**9, "parameters"), ("vocab_size", 1e9, "whole number"), ("num_hidden_layers", 10**5, "at most"),
    ("num_attention_heads", 0, "whole number >= 1"), ("layer_norm_eps", -1, r"in \(0, 1\)"),
    ("hidden_dropout_prob", 1.5, "probability"),
])
def test_a_config_is_checked_before_anything_is_built(key, value, message):
    from vilbert.model import ViLBertConfig, load_preset

    with pytest.raises(ValueError, match=f"{key}|{message}"):
        ViLBertConfig.from_dict({**load_preset("tiny").to_dict(), key: value})

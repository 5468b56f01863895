"""Referring expressions: IoU targets, the original's loss, accuracy, and runs on a generated world
(random features in a real store, and features really extracted by the backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vilbert.core.regions import ImageRegions
from vilbert.data.readers.refer import read_refer
from vilbert.features.boxes import read_coco_boxes
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.store import FeatureStoreWriter
from vilbert.model import build_model, load_preset
from vilbert.tasks import get_task
from vilbert.tasks.common import TaskData
from vilbert.tasks.refer import hits, pick_regions, refer_loss, region_ious, soft_targets
from vilbert.train import TrainConfig, train
from vilbert.world import generate_world


def _store_from_proposals(world: Path, out: Path, ids: set[int] | None = None, scale: float = 1.0) -> None:
    """Random features over the world's proposals, boxes (and image size) scaled by `scale`."""
    proposals = json.loads((world / "proposals.json").read_text())
    boxes: dict[int, list] = {}
    for a in proposals["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    rng = np.random.default_rng(0)
    records = [
        ImageRegions(str(im["id"]), round(im["width"] * scale), round(im["height"] * scale),
                     np.asarray(boxes[im["id"]], np.float32) * scale,
                     rng.normal(size=(len(boxes[im["id"]]), 1280)).astype(np.float32))
        for im in proposals["images"] if ids is None or im["id"] in ids
    ]
    with FeatureStoreWriter(out, {"feature_dim": 1280, "num_classes": 0}) as writer:
        writer.put_many(records)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, num_images=30, seed=7, image_size=128, progress=False)
    _store_from_proposals(out, out / "features.lmdb")
    return out


def make_task(world: Path, features: str = "features.lmdb", **options):
    return get_task("refer")(TaskData(str(world / "refcoco+"), str(world / features)), **options)


def test_ious_and_targets_on_hand_made_boxes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60], [0, 0, 10, 11]], np.float32)
    regions = ImageRegions("7", 100, 100, boxes, np.zeros((4, 3), np.float32))
    iou = region_ious(regions, np.array([0.0, 0, 10, 10]), rows=7, max_regions=None)
    torch.testing.assert_close(iou, torch.tensor([0, 1, 0.5, 0, 10 / 11, 0, 0]))  # [IMG] and padding: 0
    assert region_ious(regions, np.array([0.0, 0, 10, 10]), rows=3, max_regions=2).tolist() == [0, 1, 0.5]
    torch.testing.assert_close(soft_targets(torch.tensor([0.2, 0.5, 0.49, 0.9])), torch.tensor([0, 0.5, 0, 0.9]))


def test_loss_is_the_originals_bce_times_regions_and_accuracy_skips_img_and_padding():
    logits = torch.tensor([[9.0, 1, -2, 0.5, -10000], [0.0, -1, 3, 2, 1]])
    iou = torch.tensor([[0, 0.8, 0.3, 0.6, 0], [0, 0.55, 0.1, 0.9, 0.2]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    # The original: BCEWithLogits(mean) over every [B,R] entry, times R; padding scores -10000, target 0.
    original = F.binary_cross_entropy_with_logits(logits, soft_targets(iou)) * logits.shape[1]
    torch.testing.assert_close(refer_loss(logits, iou, mask), original)
    assert pick_regions(logits, mask).tolist() == [1, 2]  # row 0 ([IMG]) scores 9 but is no proposal
    assert hits(logits, iou, mask).tolist() == [1.0, 0.0]


def test_collate_targets_follow_the_store_boxes(world):
    task = make_task(world)
    exprs = task.dataset("train")
    batch = task.collate(exprs[:6])
    iou = batch.targets["iou"]
    assert iou.shape == batch.image_mask.shape and (iou[:, 0] == 0).all()
    assert (iou[batch.image_mask == 0] == 0).all()
    # The world's proposals hold every true box, so the referred object is a region with IoU 1.
    torch.testing.assert_close(iou.max(1).values, torch.ones(6))
    assert batch.meta["ref_id"] == [e.ref_id for e in exprs[:6]]


def test_store_at_another_scale_gives_the_same_targets(world, tmp_path):
    _store_from_proposals(world, tmp_path / "half.lmdb", scale=0.5)
    task = get_task("refer")(TaskData(str(world / "refcoco+"), str(tmp_path / "half.lmdb")))
    exprs = make_task(world).dataset("val")[:4]
    torch.testing.assert_close(task.collate(exprs).targets["iou"], make_task(world).collate(exprs).targets["iou"])


def test_short_training_run_and_evaluate(world, tmp_path):
    torch.manual_seed(0)
    task = make_task(world)
    model = build_model(load_preset("tiny"))
    result = train(model, task, TrainConfig(max_steps=3, batch_size=8, lr=1e-3, progress=False, device="cpu"),
                   tmp_path / "run", eval_splits=("val",))
    assert result.step == 3 and np.isfinite(result.loss)
    metrics = result.metrics["val"]
    assert set(metrics) == {"accuracy", "upper_bound"} and metrics["upper_bound"] == 1.0
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_evaluate_on_really_extracted_features(world, tmp_path):
    """Features from the real backbone on the val images: the task runs end to end on them."""
    val_ids = {e.image_id for e in read_refer(world / "refcoco+", "val")}
    entries = [e for e in read_coco_boxes(world / "proposals.json", world / "images") if e.image_id in val_ids]
    extract_features(entries, tmp_path / "real.lmdb", ExtractConfig(image_size=128), progress=False)
    task = get_task("refer")(TaskData(str(world / "refcoco+"), str(tmp_path / "real.lmdb")))
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"))
    model.add_head("region_score")
    metrics = task.evaluate(model, "val", batch_size=4)
    assert metrics["upper_bound"] == 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    predictions = task.predictions(model, "val", batch_size=3)
    assert [(p["ref_id"], p["sent_id"]) for p in predictions] == [(e.ref_id, e.sent_id) for e in task.expressions("val")]
    store = task.store
    assert all(any(np.allclose(p["box"], b, atol=0.01) for b in store[p["image_id"]].boxes) for p in predictions)
    # the predictions' hits are the metric's
    assert np.mean([p["iou"] >= 0.5 for p in predictions]) == pytest.approx(metrics["accuracy"])


def test_unknown_split_and_bad_threshold_are_named(world):
    with pytest.raises(ValueError, match="no expressions of split 'nope'"):
        make_task(world).dataset("nope")
    with pytest.raises(ValueError, match="iou_threshold"):
        make_task(world, iou_threshold=1.5)

"""Retrieval: cached pair scoring equals the plain forward, recall@K, 4-way training rows,
zero-shot with the alignment head, and short training runs through the real trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vilbert.core.regions import ImageRegions
from vilbert.features.store import FeatureStore, FeatureStoreWriter
from vilbert.model import build_model, load_preset
from vilbert.model.pair_cache import ImageInputs, TextInputs, logits_to_score, score_matrix
from vilbert.tasks import get_task
from vilbert.tasks.common import TaskData
from vilbert.tasks.retrieval import image_retrieval_recall, recalls, text_retrieval_recall
from vilbert.train import TrainConfig, train
from vilbert.world import generate_world

FEATURE_DIM = 1280  # the tiny preset's v_feature_size


def write_random_store(world: Path, out: Path, seed: int = 0) -> Path:
    """A real LMDB store over the world's proposals (10-36 boxes per image), random features."""
    proposals = json.loads((world / "proposals.json").read_text())
    boxes: dict[int, list] = {}
    for a in proposals["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    rng = np.random.default_rng(seed)
    records = [
        ImageRegions(str(im["id"]), im["width"], im["height"], np.asarray(boxes[im["id"]], np.float32),
                     rng.normal(size=(len(boxes[im["id"]]), FEATURE_DIM)).astype(np.float32))
        for im in proposals["images"]
    ]
    with FeatureStoreWriter(out, {"feature_dim": FEATURE_DIM, "num_classes": 0}) as writer:
        writer.put_many(records)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, num_images=30, seed=5, image_size=128, progress=False)
    write_random_store(out, out / "features.lmdb")
    return out


def make_task(world: Path, name: str = "retrieval", features: str = "features.lmdb", **options):
    data = TaskData(str(world / "flickr30k"), str(world / features), max_text_length=24)
    return get_task(name)(data, progress=False, **options)


def scrambled_model(architecture: str = "two_stream", seed: int = 0):
    """A tiny model whose weights are far from the near-zero init, so scores differ visibly."""
    torch.manual_seed(seed)
    config = load_preset("tiny", architecture=architecture)
    model = build_model(config)
    model.add_head("pair_score")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def per_pair_reference(model, text: TextInputs, images: ImageInputs, head: str) -> torch.Tensor:
    """One unpadded forward per pair: the plainest possible definition of the scores."""
    out = torch.empty(len(text), len(images))
    with torch.no_grad():
        for t in range(len(text)):
            n_t = int(text.attention_mask[t].sum())
            for i in range(len(images)):
                n_r = int(images.image_mask[i].sum())
                o = model(text.input_ids[t : t + 1, :n_t], text.token_type_ids[t : t + 1, :n_t],
                          text.attention_mask[t : t + 1, :n_t], images.image_features[i : i + 1, :n_r],
                          images.image_locations[i : i + 1, :n_r], images.image_mask[i : i + 1, :n_r], heads=(head,))
                out[t, i] = logits_to_score(head, o.logits[head])[0]
    return out


def small_inputs(task, n_text: int = 6, n_images: int = 5) -> tuple[TextInputs, ImageInputs]:
    text, images = task.inputs("train")
    # Every 5th caption, so they come from different images and have different lengths.
    rows = torch.arange(0, 5 * n_text, 5)
    text = TextInputs(text.input_ids[rows], text.token_type_ids[rows], text.attention_mask[rows])
    images = ImageInputs(images.image_features[:n_images], images.image_locations[:n_images],
                         images.image_mask[:n_images])
    return text, images


@pytest.mark.parametrize("head", ["pair_score", "alignment"])
def test_cached_scores_equal_uncached_and_per_pair(world, head):
    task = make_task(world)
    text, images = small_inputs(task)
    assert len(set(text.attention_mask.sum(1).tolist())) > 2  # captions of different lengths
    assert len(set(images.image_mask.sum(1).tolist())) > 2  # images with different region counts
    model = scrambled_model()
    cached = score_matrix(model, text, images, head=head, cached=True, batch_size=16)
    plain = score_matrix(model, text, images, head=head, cached=False, batch_size=9)
    reference = per_pair_reference(model, text, images, head)
    assert cached.shape == (6, 5) and reference.std() > 0.05
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-5)


def test_single_stream_falls_back_to_the_plain_forward(world):
    task = make_task(world)
    text, images = small_inputs(task, 4, 3)
    model = scrambled_model("single_stream")
    cached = score_matrix(model, text, images, cached=True, batch_size=5)
    torch.testing.assert_close(cached, per_pair_reference(model, text, images, "pair_score"), atol=1e-5, rtol=1e-5)


def test_recall_perfect_and_known_permutation():
    owner = torch.arange(12).repeat_interleave(2)  # 12 images, 2 captions each
    perfect = (owner[:, None] == torch.arange(12)[None]).float()
    assert set(recalls(perfect, owner).values()) == {1.0}
    # 4 images, 1 caption each: caption c ranks its own image c-th, and image i its caption i-th.
    owner = torch.arange(4)
    scores = (4 - owner[None, :]) + 0.1 * (3 - owner[:, None])  # [caption, image]
    assert image_retrieval_recall(scores, owner, (1, 2, 3)) == {"ir_r1": 0.25, "ir_r2": 0.5, "ir_r3": 0.75}
    assert text_retrieval_recall(scores, owner, (1, 2, 3)) == {"tr_r1": 0.25, "tr_r2": 0.5, "tr_r3": 0.75}
    # Swap images 2 and 3 for every caption: captions 2 and 3 now find their image 4th and 3rd.
    swapped = scores[:, [0, 1, 3, 2]]
    assert image_retrieval_recall(swapped, owner, (1, 3, 4)) == {"ir_r1": 0.25, "ir_r3": 0.75, "ir_r4": 1.0}


def test_recall_text_side_takes_the_best_own_caption_and_ties_count_against():
    owner = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[0.0, 5], [9, 0], [1, 1], [0, 0]])  # image 0's 2nd caption is its best
    assert text_retrieval_recall(scores, owner, (1,)) == {"tr_r1": 0.5}  # image 1 loses to caption 0
    flat = torch.zeros(4, 2)
    assert set(recalls(flat, owner, (1,)).values()) == {0.0}


def test_four_way_rows(world):
    task = make_task(world, hard_pool=5)
    data = task.split("train")
    store = FeatureStore(world / "features.lmdb")
    means = np.stack([store[im.image_id].features.mean(0) for im in data.images])
    dist = ((means[:, None] - means[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    expected_pool = np.argsort(dist, axis=1)[:, :5]
    assert np.array_equal(np.sort(task.nearest("train").numpy(), 1), np.sort(expected_pool, 1))
    torch.manual_seed(0)
    owner = data.caption_image
    rows = task.dataset("train")
    assert len(rows) == len(data.captions) == 5 * len(data.images)
    hard_images = set()
    for row in rows[::3]:
        (c0, i0), (c1, i1), (c2, i2), (c3, i3) = task.choices(row)
        assert (c0, i0) == (row.caption, row.image) and owner[c0] == row.image
        assert i1 == row.image and owner[c1] != row.image
        assert c2 == row.caption and i2 != row.image
        assert i3 == row.image and int(owner[c3]) in set(expected_pool[row.image])
        hard_images.add(int(owner[c3]))
    assert len(hard_images) > 5
    batch = task.collate(rows[:3])
    assert batch.size == 12 and batch.targets["label"].tolist() == [0, 0, 0]
    # Clamped to the split: 24 training images leave 23 others.
    assert make_task(world).nearest("train").shape == (len(data.images), len(data.images) - 1)


def test_zero_shot_uses_the_alignment_head_and_needs_no_training(world):
    task = make_task(world, "zero_shot_retrieval")
    assert task.zero_shot and task.required_heads() == {"alignment": {}}
    assert make_task(world, zero_shot=True).score_head == "alignment"
    model = scrambled_model()
    del model.heads["pair_score"]  # a pretraining checkpoint has no retrieval head
    metrics = task.evaluate(model, "val")
    assert set(metrics) == {f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)}
    text, images = task.inputs("val")
    scores = task.scores(model, "val")
    with torch.no_grad():
        out = model(text.input_ids[2:3], text.token_type_ids[2:3], text.attention_mask[2:3],
                    images.image_features[1:2], images.image_locations[1:2], images.image_mask[1:2],
                    heads=("alignment",))
    assert scores[2, 1] == pytest.approx(float(torch.log_softmax(out.logits["alignment"], -1)[0, 0]), abs=1e-5)
    with pytest.raises(RuntimeError, match="evaluation only"):
        task.collate(task.dataset("train")[:2])


def test_short_training_run_and_evaluate(world, tmp_path):
    task = make_task(world)
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"))
    config = TrainConfig(max_steps=3, batch_size=4, lr=1e-3, progress=False, device="cpu")
    result = train(model, task, config, tmp_path / "run", eval_splits=("val",))
    assert result.step == 3 and np.isfinite(result.loss)
    assert set(result.metrics["val"]) == {f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)}
    assert all(0.0 <= v <= 1.0 for v in result.metrics["val"].values())
    # Evaluation through the plain forward gives the same recalls.
    assert make_task(world, cached=False).evaluate(model, "val") == result.metrics["val"]


def test_missing_split_file_is_named(world):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make_task(world).split("nope")


def test_eval_images_keeps_the_first_images_of_evaluation_splits_only(world):
    whole, first = make_task(world), make_task(world, eval_images=2)
    full, part = whole.split("val"), first.split("val")
    assert [im.image_id for im in part.images] == [im.image_id for im in full.images[:2]]
    assert part.captions == [c for im in full.images[:2] for c in im.captions]
    assert len(first.split("train").images) == len(whole.split("train").images)  # training keeps all
    scores = first.scores(scrambled_model(), "val")
    assert scores.shape == (len(part.captions), 2)
    with pytest.raises(ValueError, match="eval_images must be >= 2"):
        make_task(world, eval_images=1)

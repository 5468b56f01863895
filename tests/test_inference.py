"""The public inference API on a saved model and the real feature store of the tiny world: any
image form gives the same regions and answers, a batch equals one pair at a time, and the
retrieval scores equal the model's own forward per pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vilbert import VQA, Explainer, Grounding, Retrieval
from vilbert.features.store import FeatureStore
from vilbert.inference.images import boxes_from_file
from vilbert.model import build_model, load_preset, save_pretrained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = load_preset("tiny")
    config.heads = {"vqa": {"num_answers": 4, "answers": ["red", "blue", "2", "yes"]}, "region_score": {},
                    "pair_score": {}, "alignment": {}}
    out = tmp_path_factory.mktemp("api") / "model"
    save_pretrained(build_model(config), out)
    return out


@pytest.fixture(scope="module")
def vqa(model_dir, task_world):
    return VQA.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb")


def test_every_image_form_gives_the_same_answers(vqa, task_world):
    path = task_world / "images" / "2.png"
    boxes = boxes_from_file(path, task_world / "proposals.json")
    question = "what colour is the circle?"
    stored = FeatureStore(task_world / "features.lmdb")["2"]
    from_store = vqa.answer(stored, question, top_k=4)
    assert [a.answer for a in from_store] and sorted(a.answer for a in from_store) == sorted(vqa.answers)
    for image in (path, str(path), Image.open(path), np.asarray(Image.open(path).convert("RGB"))):
        got = vqa.answer([image], [question], top_k=4, boxes=[boxes])[0]
        assert [a.answer for a in got] == [a.answer for a in from_store]
        np.testing.assert_allclose([a.score for a in got], [a.score for a in from_store], atol=1e-5)


def test_a_batch_equals_one_pair_at_a_time(vqa, task_world):
    store = FeatureStore(task_world / "features.lmdb")
    images = [store[i] for i in store.ids()[:5]]
    questions = ["is there a cube?", "how many red things?", "what shape is it?", "is it blue?", "what is left?"]
    batched = vqa.answer(images, questions, top_k=2, batch_size=3)
    for image, question, got in zip(images, questions, batched):
        one = vqa.answer(image, question, top_k=2)
        assert [a.answer for a in got] == [a.answer for a in one]
        np.testing.assert_allclose([a.score for a in got], [a.score for a in one], atol=1e-5)


def test_grounding_picks_one_of_the_images_regions(model_dir, task_world):
    grounding = Grounding.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb")
    stored = FeatureStore(task_world / "features.lmdb")["3"]
    found = grounding.locate(stored, "the big red circle")
    assert any(np.allclose(found.box, b) for b in stored.boxes) and 0 < found.score <= 1


@pytest.mark.parametrize("zero_shot", [False, True])
def test_retrieval_scores_equal_the_forward_per_pair(model_dir, task_world, zero_shot):
    retrieval = Retrieval.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb",
                                          zero_shot=zero_shot)
    store = FeatureStore(task_world / "features.lmdb")
    images = [store[i] for i in store.ids()[:3]]
    texts = ["a red circle", "two blue squares and a cube", "nothing"]
    scores = retrieval.score(texts, images)
    assert scores.shape == (3, 3)
    head = retrieval.required_head
    for t, text in enumerate(texts):
        plain = retrieval.logits([text] * 3, images, head)
        if head == "alignment":
            plain = [torch.log_softmax(p, dim=-1)[0] for p in plain]
        torch.testing.assert_close(scores[t], torch.stack(plain).reshape(3), atol=1e-5, rtol=1e-5)


def test_explainer_maps_are_distributions(model_dir, task_world):
    explainer = Explainer.from_pretrained(model_dir, device="cpu", features=task_world / "features.lmdb")
    maps = explainer.attention(FeatureStore(task_world / "features.lmdb")["2"], "the red circle")
    np.testing.assert_allclose(maps.text_to_image.sum(1), 1.0, atol=1e-5)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"


def test_wrong_models_and_inputs_are_named(task_world, tmp_path, vqa):
    plain = tmp_path / "plain"
    save_pretrained(build_model(load_preset("tiny")), plain)  # no VQA head
    with pytest.raises(ValueError, match=r"has no 'vqa' head"):
        VQA.from_pretrained(plain, device="cpu")
    with pytest.raises(ValueError, match="2 images but 3 questions"):
        vqa.answer(["a.png", "b.png"], ["q1", "q2", "q3"])
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        vqa.answer(tmp_path / "nowhere.png", "q")
    with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\]"):
        vqa.answer(np.zeros((4, 4), np.float32), "q")

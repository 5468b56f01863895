"""VQA task: answer vocabulary, soft-score targets, the original's BCE scaling, VQA accuracy, and the
task over a generated world with really extracted features."""

import json

import pytest
import torch
import torch.nn.functional as F

from vilbert.data.readers.vqa import VQAExample
from vilbert.model import build_model, load_pretrained, load_preset, save_pretrained
from vilbert.tasks.builder import build_task
from vilbert.tasks.vqa import (
    answer_prior_accuracy, build_answer_vocab, head_answers, soft_targets, top_answers, vqa_accuracy, vqa_loss,
)


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


def ex(qid, mc, counts, image="1", question="what?"):
    return VQAExample(qid, image, question, dict(counts), mc)


def test_vocabulary_min_count_and_order():
    examples = [ex(1, "yes", {"yes": 10}), ex(2, "yes", {"yes": 9, "no": 1}), ex(3, "no", {"no": 10}),
                ex(4, "2", {"2": 4, "3": 6}), ex(5, None, {"red": 7, "blue": 3})]
    assert build_answer_vocab(examples, 1) == ["yes", "2", "no", "red"]  # count desc, then name
    assert build_answer_vocab(examples, 2) == ["yes"]
    with pytest.raises(ValueError, match="min_answer_count"):
        build_answer_vocab(examples, 0)


def test_soft_targets_drop_unknown_answers():
    e = ex(1, "red", {"red": 3, "blue": 1, "crimson": 6})
    target = soft_targets([e.scores], {"red": 0, "blue": 1, "green": 2})
    assert torch.allclose(target, torch.tensor([[0.9, 0.3, 0.0]]))  # "crimson" is outside the vocabulary


def test_accuracy_all_correct_partial_and_unknown():
    scores = [ex(1, "yes", {"yes": 10}).scores, ex(2, "2", {"2": 4, "3": 6}).scores, ex(3, "red", {"red": 2}).scores]
    assert vqa_accuracy(["yes", "2", "red"], scores) == pytest.approx((1 + 1 + 0.6) / 3)
    assert vqa_accuracy(["yes", "3", "red"], [scores[0], ex(2, "3", {"3": 10}).scores, ex(3, "red", {"red": 4}).scores]) == 1.0
    assert vqa_accuracy(["no", "7", "blue"], scores) == 0.0


def test_loss_is_mean_bce_times_answers():
    logits, target = torch.randn(3, 5), torch.rand(3, 5)
    per_row_sum = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()
    assert vqa_loss(logits, target) == pytest.approx(float(per_row_sum), rel=1e-6)


def test_answer_prior_answers_by_question_type():
    def typed(qid, counts, kind):
        return VQAExample(qid, "1", "what?", dict(counts), None, question_type=kind)

    train = [typed(1, {"yes": 10}, "is there a"), typed(2, {"yes": 7, "no": 3}, "is there a"),
             typed(3, {"no": 10}, "is there a"), typed(4, {"2": 10}, "how many"), typed(5, {"3": 4, "2": 6}, "how many")]
    test = [typed(6, {"yes": 10}, "is there a"), typed(7, {"no": 9, "yes": 1}, "is there a"),
            typed(8, {"3": 10}, "how many"), typed(9, {"2": 10}, "what color is the")]
    # "yes" (1 + 1 summed) beats "no" (0.9 + 1) for "is there a"; "2" for "how many"; an unseen
    # type takes the best answer overall: "2" and "yes" tie at 2.0, and ties go alphabetically.
    assert answer_prior_accuracy(train, test) == pytest.approx((1.0 + 0.3 + 0.0 + 1.0) / 4)


def test_top_answers_sorted():
    top = top_answers(torch.tensor([[0.0, 3.0, -2.0, 1.0]]), ["a", "b", "c", "d"], k=3)[0]
    assert [a for a, _ in top] == ["b", "d", "a"]
    assert top[0][1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_task_on_world(root):
    task = build_task("vqa", root, min_answer_count=2)
    train = task.dataset("train")
    questions = json.loads((root / "vqa" / "v2_OpenEnded_mscoco_train_questions.json").read_text())["questions"]
    assert len(train) == len(questions)
    assert all(c >= 2 for c in _mc_counts(train, task.answers))
    assert task.data.max_text_length == 23  # the paper's question length
    batch = task.collate(train[:4])
    assert batch.input_ids.shape[0] == 4 and batch.input_ids.shape[1] <= 23
    assert batch.image_features.shape[-1] == 1280 and bool(batch.image_mask[:, 0].all())

    model = build_model(load_preset("tiny"))
    for name, kwargs in task.required_heads().items():
        model.add_head(name, **kwargs)
    loss, stats = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= stats["vqa_score"] <= 1.0
    assert model.heads["vqa"].fc2.weight.grad.abs().sum() > 0

    metrics = task.evaluate(model, "val", batch_size=5)
    val = task.dataset("val")
    predicted = task.predict(model, val)
    assert metrics["accuracy"] == pytest.approx(vqa_accuracy(predicted, [e.scores for e in val]))
    assert metrics["questions"] == len(val)


def _mc_counts(examples, answers):
    from collections import Counter

    counts = Counter(e.multiple_choice_answer for e in examples)
    return [counts[a] for a in answers]


def test_answers_travel_with_the_checkpoint(root, tmp_path):
    task = build_task("vqa", root)
    model = build_model(load_preset("tiny"))
    model.add_head("vqa", **task.required_heads()["vqa"])
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["heads"]["vqa"]["answers"] == task.answers
    loaded = load_pretrained(tmp_path / "m")
    assert head_answers(loaded) == task.answers
    # A fresh task (another vocabulary) scores with the head's answers, not its own.
    other = build_task("vqa", root, min_answer_count=3)
    assert other.evaluate(loaded, "val") == task.evaluate(loaded, "val")


def test_errors_name_what_is_wrong(root, tmp_path):
    task = build_task("vqa", root)
    with pytest.raises(FileNotFoundError, match="nosuch"):
        task.dataset("nosuch")
    model = build_model(load_preset("tiny"))
    with pytest.raises(KeyError, match="no 'vqa' head"):
        task.evaluate(model, "val")
    model.add_head("vqa", num_answers=len(task.answers) + 1)
    with pytest.raises(ValueError, match="no answer list"):
        task.evaluate(model, "val")
    (tmp_path / "vqa").mkdir()
    src = root / "vqa" / "v2_OpenEnded_mscoco_val_questions.json"
    (tmp_path / "vqa" / src.name).write_text(src.read_text())
    unlabelled = build_task("vqa", tmp_path, features=root / "features.lmdb", answers=task.answers)
    assert len(unlabelled.dataset("val")) > 0
    good = build_model(load_preset("tiny"))
    good.add_head("vqa", **task.required_heads()["vqa"])
    with pytest.raises(FileNotFoundError, match="no annotations"):
        unlabelled.evaluate(good, "val")
    with pytest.raises(ValueError, match="no option"):
        build_task("vqa", root, min_count=2)

"""VCR tasks: choice rows and their grouping, QA->R text, Q->AR logic, loss and evaluation on a
generated world with really extracted features."""

import pytest
import torch
import torch.nn.functional as F

from vilbert.data.readers.vcr import VCRExample
from vilbert.model import build_model, load_preset
from vilbert.tasks.builder import build_task
from vilbert.tasks.vcr import choice_scores, make_item, q_ar_accuracy


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


def example(answer_label=2, rationale_label=1):
    return VCRExample(
        "val-7", "7", "7.png", "metadata/7.json", ("circle", "square", "star"),
        ("Where", "is", (0,), "?"),
        tuple((("It", "is", "left", "of", (i,), ".")) for i in range(3)) + (("Nowhere", "."),),
        tuple((((0, 1), "touch", str(k))) for k in range(4)),
        answer_label, rationale_label,
    )


def test_items_render_objects_and_use_the_right_answer():
    qa = make_item(example(), "q_a")
    assert len(qa.pairs) == 4 and qa.label == 2
    assert qa.pairs[1] == ("Where is circle ?", "It is left of square .")
    qr = make_item(example(), "qa_r")
    assert qr.label == 1
    assert all(a == "Where is circle ? It is left of star ." for a, _ in qr.pairs)  # answer 2 = star
    assert qr.pairs[3][1] == "circle and square touch 3"
    with pytest.raises(ValueError, match="val-7"):
        make_item(example(answer_label=None), "qa_r")
    assert make_item(example(answer_label=None), "q_a").label == -1


def test_grouping_and_q_ar_on_hand_made_scores():
    flat = torch.tensor([0.1, 0.9, 0.0, 0.2,   # question a: choice 1
                         0.5, 0.1, 0.2, 0.3])  # question b: choice 0
    grouped = choice_scores(flat, 4)
    assert grouped.shape == (2, 4) and grouped.argmax(-1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="groups of 4"):
        choice_scores(torch.zeros(6), 4)
    q_a = {"a": True, "b": True, "c": False, "d": True}
    qa_r = {"a": True, "b": False, "c": True, "d": True}
    assert q_ar_accuracy(q_a, qa_r) == 0.5  # only a and d have both right


def test_collate_rows_per_question(root):
    task = build_task("vcr", root)
    items = task.dataset("train")
    n = len(task.examples("train"))
    assert len(items) == 2 * n and {i.subtask for i in items} == {"q_a", "qa_r"}
    batch = task.collate(items[:3])
    assert batch.input_ids.shape[0] == 12 and batch.targets["label"].tolist() == [i.label for i in items[:3]]
    assert batch.input_ids.shape[1] <= 60
    for q in range(3):  # the 4 rows of a question share its image, and segment 1 holds the choice
        rows = batch.image_features[4 * q : 4 * q + 4]
        assert torch.equal(rows[0], rows[3])
        assert bool((batch.token_type_ids[4 * q : 4 * q + 4] == 1).any(dim=1).all())
    assert not torch.equal(batch.input_ids[0], batch.input_ids[1])  # choices differ

    model = build_model(load_preset("tiny"))
    model.add_head("pair_score")
    loss, stats = task.loss(model, batch)
    scores = task.scores(model.eval(), batch)
    assert scores.shape == (3, 4)
    model.train()
    loss.backward()
    assert torch.isfinite(loss) and model.heads["pair_score"].linear.weight.grad.abs().sum() > 0


def test_single_subtask_tasks(root):
    q_a, qa_r = build_task("vcr_q_a", root), build_task("vcr_qa_r", root)
    assert {i.subtask for i in q_a.dataset("val")} == {"q_a"}
    assert {i.subtask for i in qa_r.dataset("val")} == {"qa_r"}


class _Oracle:
    """Scores that make every Q->A right and QA->R right only for the first question."""

    def __init__(self, task):
        self.task = task

    def __call__(self, model, batch):
        labels = batch.targets["label"]
        scores = F.one_hot(labels, 4).float()
        for row, (annot_id, sub) in enumerate(zip(batch.meta["annot_id"], batch.meta["subtask"])):
            if sub == "qa_r" and annot_id != self.first:
                scores[row] = F.one_hot((labels[row] + 1) % 4, 4).float()
        return scores


def test_evaluate_reports_q_a_qa_r_and_q_ar(root, monkeypatch):
    task = build_task("vcr", root)
    model = build_model(load_preset("tiny"))
    model.add_head("pair_score")
    metrics = task.evaluate(model, "val")
    assert set(metrics) == {"q_a", "qa_r", "q_ar", "questions"}
    assert metrics["q_ar"] <= min(metrics["q_a"], metrics["qa_r"])
    examples = task.examples("train")  # the tiny world's largest split
    oracle = _Oracle(task)
    oracle.first = examples[0].annot_id
    monkeypatch.setattr(task, "scores", oracle)
    metrics = task.evaluate(model, "train", batch_size=4)
    assert metrics["q_a"] == 1.0
    assert metrics["qa_r"] == metrics["q_ar"] == pytest.approx(1 / len(examples))

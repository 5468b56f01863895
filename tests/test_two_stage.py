"""Retrieval in two stages: the dual-encoder view (each stream alone, the contrastive head and
loss), the first stage's top k re-ranked by ViLBERT (k = N is the exhaustive ranking, exactly;
smaller k ranks as a plain per-query sort says), the contrastive term at weight 0 leaving the
paper's losses as they were, gradients into every new parameter, and `vilbert pretrain /
finetune / evaluate --rerank-top` on the tiny task world."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from vilbert.cli import evaluate as evaluate_cli
from vilbert.cli import finetune as finetune_cli
from vilbert.cli import pretrain as pretrain_cli
from vilbert.model import build_model, load_preset, load_pretrained, save_pretrained
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix
from vilbert.model.two_stage import embed_images, embed_texts, first_stage_scores, two_stage_scores
from vilbert.tasks import build_task
from vilbert.tasks.contrastive import contrastive_loss, positive_pairs
from vilbert.tasks.pretrain import HEADS, PretrainTask
from vilbert.tasks.retrieval import recalls, two_stage_recalls

KS = (1, 2, 5, 10)


@pytest.fixture(scope="module")
def root(task_world):
    return task_world


def scrambled(seed: int = 0, architecture: str = "two_stream"):
    """A tiny model with both retrieval heads, weights far from the init so scores spread."""
    torch.manual_seed(seed)
    model = build_model(load_preset("tiny", architecture=architecture))
    model.add_head("pair_score")
    model.add_head("contrastive")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def without_dual(model):
    """The same model with no contrastive head (the paper's model)."""
    del model.heads["contrastive"], model.config.heads["contrastive"]
    return model


def retrieval(root, **options):
    return build_task("retrieval", root, progress=False, **options)


@pytest.fixture(scope="module")
def train_inputs(root):
    task = retrieval(root)
    return task, *task.inputs("train")


def test_two_stage_with_k_n_equals_exhaustive_exactly(root, train_inputs):
    task, text, images = train_inputs
    model = scrambled()
    n = max(len(text), len(images))
    result = two_stage_scores(model, text, images, n, batch_size=37)
    exhaustive = score_matrix(model, text, images, batch_size=37)
    assert result.pairs == len(text) * len(images)
    assert torch.equal(result.rescored, exhaustive)  # bit for bit: the same batches
    owner = task.split("train").caption_image
    plain = recalls(exhaustive, owner)
    assert two_stage_recalls(result, owner) == plain
    assert 0.0 < plain["ir_r10"] < 1.0  # a ranking that has something to get right
    # The same through the task's options, with the exhaustive ranking beside it (the small val split).
    val = retrieval(root).split("val")
    n_val = len(val.captions)
    metrics = retrieval(root, rerank_top=n_val, exhaustive=True, pair_batch_size=3).evaluate(model, "val")
    plain_val = retrieval(root, pair_batch_size=3).evaluate(model, "val")
    assert {k: metrics[k] for k in plain_val} == plain_val == {k: metrics[f"exhaustive_{k}"] for k in plain_val}
    assert metrics["pairs"] == metrics["exhaustive_pairs"] == n_val * len(val.images)


def reference_recalls(result, owner: torch.Tensor, ks=KS) -> dict[str, float]:
    """Each query's list sorted by hand: re-ranked candidates first by ViLBERT's score, then the
    rest by first-stage score; ties count against the truth."""
    first, rescored = result.first.tolist(), result.rescored.tolist()
    by_image, by_text = result.image_candidates.tolist(), result.text_candidates.tolist()
    n_text, n_images = len(first), len(first[0])

    def key(cand, t, i):
        return (1, rescored[t][i]) if cand[t][i] else (0, first[t][i])

    ir_ranks = []
    for t in range(n_text):
        g = int(owner[t])
        ir_ranks.append(sum(key(by_image, t, i) >= key(by_image, t, g) for i in range(n_images) if i != g))
    tr_ranks = []
    for i in range(n_images):
        own = [t for t in range(n_text) if int(owner[t]) == i]
        best = max(key(by_text, t, i) for t in own)
        tr_ranks.append(sum(key(by_text, t, i) >= best for t in range(n_text) if t not in own))
    out = {f"ir_r{k}": sum(r < k for r in ir_ranks) / n_text for k in ks}
    return out | {f"tr_r{k}": sum(r < k for r in tr_ranks) / n_images for k in ks}


@pytest.fixture(scope="module")
def scored(train_inputs):
    """A model and its exhaustive score matrix over the training split."""
    _, text, images = train_inputs
    model = scrambled(seed=1)
    return model, score_matrix(model, text, images)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_two_stage_ranks_candidates_first_then_by_the_first_stage(train_inputs, scored, k):
    task, text, images = train_inputs
    model, full = scored
    result = two_stage_scores(model, text, images, k, batch_size=64)
    assert result.image_candidates.sum(1).tolist() == [k] * len(text)
    assert result.text_candidates.sum(0).tolist() == [k] * len(images)
    union = result.image_candidates | result.text_candidates
    assert torch.equal(result.rescored.isfinite(), union) and result.pairs == int(union.sum())
    assert result.pairs < len(text) * len(images)
    torch.testing.assert_close(result.rescored[union], full[union], atol=1e-5, rtol=1e-5)
    # The first stage's candidates are its top k: nothing left out scores above what was kept.
    kept = result.first.masked_fill(~result.image_candidates, float("inf")).min(1).values
    dropped = result.first.masked_fill(result.image_candidates, float("-inf")).max(1).values
    assert bool((kept >= dropped).all())
    owner = task.split("train").caption_image
    assert two_stage_recalls(result, owner, KS) == pytest.approx(reference_recalls(result, owner))


def test_the_first_stage_sees_each_item_alone(train_inputs):
    _, text, images = train_inputs
    model = scrambled(seed=2)
    first = first_stage_scores(model, text, images, batch_size=5)
    with torch.no_grad():
        t_len, r_len = int(text.attention_mask[3].sum()), int(images.image_mask[4].sum())
        caption = model.embed_text(text.input_ids[3:4, :t_len], text.token_type_ids[3:4, :t_len],
                                   text.attention_mask[3:4, :t_len])
        image = model.embed_images(images.image_features[4:5, :r_len], images.image_locations[4:5, :r_len],
                                   images.image_mask[4:5, :r_len])
        assert float(caption.norm()) == pytest.approx(1.0, abs=1e-5)
        assert float(first[3, 4]) == pytest.approx(float(caption @ image.T), abs=1e-5)
        # In a pair forward the contrastive logits are the scaled embedding products, row x row.
        rows = slice(0, 4)
        out = model(text.input_ids[rows], text.token_type_ids[rows], text.attention_mask[rows],
                    images.image_features[rows], images.image_locations[rows], images.image_mask[rows],
                    heads=("contrastive", "pair_score"))
        scale = float(model.heads["contrastive"].scale())
        expected = scale * embed_texts(model, TextInputs(text.input_ids[rows], text.token_type_ids[rows],
                                                         text.attention_mask[rows])) @ embed_images(
            model, ImageInputs(images.image_features[rows], images.image_locations[rows], images.image_mask[rows])).T
        torch.testing.assert_close(out.logits["contrastive"], expected, atol=1e-4, rtol=1e-5)
        # A caption's embedding ignores the image it is batched with (no co-attention).
        other = model(text.input_ids[rows], text.token_type_ids[rows], text.attention_mask[rows],
                      images.image_features[rows].flip(0), images.image_locations[rows].flip(0),
                      images.image_mask[rows].flip(0), heads=("contrastive",))
        torch.testing.assert_close(other.logits["contrastive"], out.logits["contrastive"].flip(1))


def test_single_stream_has_a_dual_view_too(train_inputs):
    _, text, images = train_inputs
    model = scrambled(architecture="single_stream")
    first = first_stage_scores(model, TextInputs(text.input_ids[:6], text.token_type_ids[:6], text.attention_mask[:6]),
                               ImageInputs(images.image_features[:4], images.image_locations[:4], images.image_mask[:4]))
    assert first.shape == (6, 4) and bool((first.abs() <= 1 + 1e-5).all()) and float(first.std()) > 0


def test_contrastive_loss_is_clip_with_one_positive_and_counts_repeats_as_positives():
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    loss, _ = contrastive_loss(logits, torch.eye(5, dtype=torch.bool))
    target = torch.arange(5)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert float(loss) == pytest.approx(float(clip), rel=1e-6)
    # Rows 0 and 1 show the same image, rows 2 and 4 read alike: those are positives, not negatives.
    positives = positive_pairs(["a", "b", "c", "d", "c"], [7, 7, 8, 9, 10])
    expected = torch.eye(5, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = expected[2, 4] = expected[4, 2] = True
    assert torch.equal(positives, expected)
    both, accuracy = contrastive_loss(logits, positives)
    assert float(both) < float(loss)
    assert float(accuracy) == pytest.approx(sum(bool(positives[r, c]) for r, c in enumerate(logits.argmax(1).tolist())) / 5)


def _pretrain_task(root, **kwargs) -> PretrainTask:
    return build_task("pretrain", root, **kwargs)


def test_contrastive_weight_zero_leaves_the_three_losses_as_they_were(root):
    plain, dual = _pretrain_task(root), _pretrain_task(root, contrastive_weight=2.0)
    assert set(plain.required_heads()) == set(HEADS)
    assert set(dual.required_heads()) == set(HEADS) | {"contrastive"}
    items = [plain.dataset("train")[i] for i in range(8)]
    batch0 = plain.collate(items, generator=torch.Generator().manual_seed(4))
    batch2 = dual.collate(items, generator=torch.Generator().manual_seed(4))
    assert set(batch0.targets) == {"word_labels", "region_masked", "region_target", "alignment"}
    for name, value in batch0.model_inputs().items():  # the same masks and negatives at any weight
        assert torch.equal(value, batch2.model_inputs()[name]), name
    for name, value in batch0.targets.items():
        assert torch.equal(value, batch2.targets[name]), name
    model = scrambled()
    without = without_dual(scrambled())  # the paper's model: no dual head at all
    loss_without, stats_without = plain.loss(without, batch0)
    loss0, stats0 = plain.loss(model, batch0)
    loss2, stats2 = dual.loss(model, batch2)
    assert float(loss0.detach()) == float(loss_without.detach()) and stats0 == stats_without
    assert float(loss0.detach()) == pytest.approx(stats0["masked_word_loss"] + stats0["masked_region_loss"]
                                         + stats0["alignment_loss"], rel=1e-6)
    assert {k: stats2[k] for k in stats0} == stats0
    assert float((loss2 - loss0).detach()) == pytest.approx(2.0 * stats2["contrastive_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="contrastive_weight must be >= 0"):
        _pretrain_task(root, contrastive_weight=-1.0)


def _grads(model, loss) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_every_parameter_gets_a_gradient(root):
    task = _pretrain_task(root, contrastive_weight=1.0)
    torch.manual_seed(0)
    model = build_model(load_preset("tiny", hidden_dropout_prob=0.0, v_hidden_dropout_prob=0.0))
    model.add_head("contrastive")
    items = [task.dataset("train")[i] for i in range(8)]
    loss, _ = task.loss(model, task.collate(items, generator=torch.Generator().manual_seed(0)))
    grads = _grads(model, loss)
    assert [n for n, g in grads.items() if g is None or not bool(g.abs().sum() > 0)] == []
    # Retrieval fine-tuning: the contrastive head and the streams learn from both terms.
    ft = retrieval(root, contrastive_weight=1.0, hard_pool=3)
    model.add_head("pair_score")
    loss, stats = ft.loss(model, ft.collate(ft.dataset("train")[:6]))
    assert {"four_way_loss", "contrastive_loss", "contrastive_acc"} <= set(stats)
    grads = _grads(model, loss)
    for prefix in ("heads.contrastive.", "heads.pair_score.", "encoder.text_layers.", "encoder.visual_layers."):
        assert all(g is not None and bool(g.abs().sum() > 0) for n, g in grads.items() if n.startswith(prefix)), prefix


@pytest.fixture(scope="module")
def retrieval_run(root, tmp_path_factory):
    """`vilbert pretrain --contrastive-weight` then `vilbert finetune --task retrieval` with the term on."""
    base = tmp_path_factory.mktemp("two_stage")
    assert pretrain_cli.main(["--data", str(root), "--out", str(base / "pre"), "--preset", "tiny", "--max-steps", "2",
                              "--batch-size", "8", "--contrastive-weight", "1", "--no-progress"]) == 0
    assert finetune_cli.main(["--task", "retrieval", "--data", str(root), "--init", str(base / "pre" / "model"),
                              "--out", str(base / "ft"), "--max-steps", "2", "--batch-size", "4", "--option",
                              "contrastive_weight=1", "--option", "hard_pool=3", "--no-progress"]) == 0
    return base


def test_cli_pretrain_and_finetune_with_the_contrastive_term(retrieval_run):
    pre = load_pretrained(retrieval_run / "pre" / "model")
    assert "contrastive" in pre.heads
    with open(retrieval_run / "pre" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"contrastive_loss", "contrastive_acc"} <= set(rows[0]) and len(rows) == 2
    assert {"contrastive", "pair_score"} <= set(load_pretrained(retrieval_run / "ft" / "model").heads)


def test_cli_evaluate_rerank_top_reports_every_ranking(root, retrieval_run, tmp_path, capsys):
    model = str(retrieval_run / "ft" / "model")
    common = ["--task", "retrieval", "--checkpoint", model, "--data", str(root), "--split", "val"]
    assert evaluate_cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)["metrics"]
    assert evaluate_cli.main(common + ["--rerank-top", "1", "--exhaustive", "--out", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)["metrics"]
    assert metrics == json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert {k: metrics[f"exhaustive_{k}"] for k in plain} == plain
    recall_keys = [f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)]
    assert all(f"first_stage_{k}" in metrics and k in metrics for k in recall_keys)
    val = retrieval(root).split("val")
    assert metrics["exhaustive_pairs"] == len(val.captions) * len(val.images)
    assert 0 < metrics["pairs"] < metrics["exhaustive_pairs"] and metrics["first_stage_pairs"] == 0
    assert metrics["seconds"] > 0 and metrics["speedup"] > 0
    assert "first stage" in captured.err and "exhaustive" in captured.err


def test_cli_evaluate_refusals_name_the_problem(root, retrieval_run, tmp_path, capsys):
    model = retrieval_run / "ft" / "model"
    common = ["--checkpoint", str(model), "--data", str(root), "--split", "train"]
    assert evaluate_cli.main(["--task", "vqa", *common, "--rerank-top", "3"]) == 2
    assert "apply to retrieval" in capsys.readouterr().err
    assert evaluate_cli.main(["--task", "retrieval", *common, "--exhaustive"]) == 2
    assert "give rerank_top too" in capsys.readouterr().err
    save_pretrained(without_dual(scrambled()), tmp_path / "no_dual")
    assert evaluate_cli.main(["--task", "retrieval", "--checkpoint", str(tmp_path / "no_dual"), "--data", str(root),
                              "--split", "train", "--rerank-top", "3"]) == 2
    assert "no contrastive head" in capsys.readouterr().err

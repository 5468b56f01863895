"""Pretraining: masking and negatives in collate, the loss terms, and `vilbert pretrain` end to end
on a tiny generated world with really extracted features (efficientnet-lite0 + cls_prob)."""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vilbert.cli.pretrain import main as pretrain_main
from vilbert.core.assets import minilm_dir
from vilbert.core.regions import ImageRegions
from vilbert.core.subsets import data_subset
from vilbert.data.masking import IGNORE_INDEX
from vilbert.features.boxes import read_coco_boxes
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.store import FeatureStore, FeatureStoreWriter
from vilbert.model import build_model, load_preset, load_pretrained
from vilbert.tasks.common import TaskData
from vilbert.tasks.pretrain import ALIGNED, MISALIGNED, PretrainTask
from vilbert.world import generate_world

TINY = ["--preset", "tiny", "--no-progress", "--batch-size", "8", "--seed", "3"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """24 generated images (19 train: 57 caption pairs) and a store extracted from them."""
    root = tmp_path_factory.mktemp("pretrain")
    generate_world(root / "world", num_images=24, seed=0, image_size=64, progress=False)
    entries = read_coco_boxes(root / "world" / "proposals.json", root / "world" / "images")
    extract_features(entries, root / "store", ExtractConfig(image_size=64, batch_size=12),
                     boxes_source="annotations", progress=False)
    return root


def _task(world, **kwargs) -> PretrainTask:
    return PretrainTask(TaskData(str(world / "world"), str(world / "store")), **kwargs)


def _args(world, out, *extra) -> list[str]:
    return ["--data", str(world / "world"), "--features", str(world / "store"), "--out", str(out), *TINY, *extra]


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"))
    model.eval()  # no dropout: loss terms are compared exactly
    return model


def _many_batches(task, generator_seed: int = 0, repeats: int = 6):
    data = task.dataset("train")
    items = [data[i] for i in range(len(data))]
    g = torch.Generator().manual_seed(generator_seed)
    return [task.collate(items, generator=g) for _ in range(repeats)]


def test_word_and_region_masking_rates(world):
    task = _task(world, misaligned_prob=0.0)  # every row aligned: the labels show every choice
    tok = task.tokenizer
    chosen = candidates = masked = 0
    r_chosen = r_candidates = r_zeroed = 0
    store = FeatureStore(world / "store")
    for batch in _many_batches(task):
        plain, _, mask = task.encode_texts(batch.meta["caption"])
        labels = batch.targets["word_labels"]
        picked = labels != IGNORE_INDEX
        specials = torch.isin(plain, torch.tensor(tok.special_ids)) | (mask == 0)
        assert not picked[specials].any()  # never [CLS], [SEP] or padding
        assert torch.equal(batch.input_ids[specials], plain[specials])
        assert torch.equal(labels[picked], plain[picked])
        chosen += int(picked.sum())
        candidates += int((~specials).sum())
        masked += int((batch.input_ids[picked] == tok.mask_id).sum())
        assert torch.equal(batch.input_ids[~picked], plain[~picked])  # nothing else changes
        # regions
        regions = batch.targets["region_masked"]
        assert not regions[:, 0].any() and not regions[batch.image_mask == 0].any()  # never [IMG] or padding
        original = store.get_many(batch.meta["image_id"]).features
        assert torch.equal(batch.image_features[:, 0], original[:, 0])  # [IMG] = mean of unmasked regions
        zero = (batch.image_features == 0).all(-1)
        assert not zero[~regions & (batch.image_mask == 1)].any()
        r_chosen += int(regions.sum())
        r_candidates += int(batch.image_mask[:, 1:].sum())
        r_zeroed += int((zero & regions).sum())
    assert chosen / candidates == pytest.approx(0.15, abs=0.03), (chosen, candidates)
    assert masked / chosen == pytest.approx(0.8, abs=0.1)
    assert r_chosen / r_candidates == pytest.approx(0.15, abs=0.02), (r_chosen, r_candidates)
    assert r_zeroed / r_chosen == pytest.approx(0.9, abs=0.05)


def test_misaligned_rows_get_other_captions_and_no_masked_loss(world, tiny_model):
    task = _task(world)
    pairs = task.pairs("train")
    captions_of = {}
    for p in pairs:
        captions_of.setdefault(p.image_id, set()).add(p.caption)
    batches = _many_batches(task, generator_seed=1, repeats=3)
    labels = torch.cat([b.targets["alignment"] for b in batches])
    assert set(labels.tolist()) == {ALIGNED, MISALIGNED}
    assert (labels == MISALIGNED).float().mean() == pytest.approx(0.5, abs=0.1)
    for batch in batches:
        for row, (caption, image_id) in enumerate(zip(batch.meta["caption"], batch.meta["image_id"])):
            mis = int(batch.targets["alignment"][row]) == MISALIGNED
            assert (caption not in captions_of[image_id]) == mis  # a negative is never a true caption
            if mis:
                assert (batch.targets["word_labels"][row] == IGNORE_INDEX).all()
                assert not batch.targets["region_masked"][row].any()
    # An all-misaligned batch: only the alignment loss, though its inputs are still corrupted.
    negatives = _task(world, misaligned_prob=1.0)
    data = negatives.dataset("train")
    batch = negatives.collate([data[i] for i in range(16)], generator=torch.Generator().manual_seed(2))
    assert (batch.input_ids == negatives.tokenizer.mask_id).any()  # corrupted like aligned rows
    loss, stats = negatives.loss(tiny_model, batch)
    assert stats["masked_word_loss"] == 0.0 and stats["masked_region_loss"] == 0.0
    assert float(loss.detach()) == pytest.approx(stats["alignment_loss"]) and stats["alignment_loss"] > 0
    # A mixed batch: the masked-word loss is the CE over aligned rows' masked words only.
    mixed = task.collate([data[i] for i in range(16)], generator=torch.Generator().manual_seed(4))
    _, stats = task.loss(tiny_model, mixed)
    aligned = mixed.targets["alignment"] == ALIGNED
    with torch.no_grad():
        out = tiny_model(**mixed.model_inputs(), heads=("masked_word",))
    keep = aligned[:, None] & (mixed.targets["word_labels"] != IGNORE_INDEX)
    expected = torch.nn.functional.cross_entropy(out.logits["masked_word"][keep], mixed.targets["word_labels"][keep])
    assert stats["masked_word_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_loss_finite_with_nothing_masked(world):
    task = _task(world, word_mask_prob=0.0, region_mask_prob=0.0)
    data = task.dataset("train")
    batch = task.collate([data[i] for i in range(6)], generator=torch.Generator().manual_seed(0))
    assert not batch.targets["region_masked"].any() and (batch.targets["word_labels"] == IGNORE_INDEX).all()
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"))
    loss, stats = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and stats["masked_region_loss"] == 0.0 and stats["masked_word_loss"] == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_alignment_weight_scales_only_the_alignment_term(world, tiny_model):
    plain, weighted = _task(world), _task(world, alignment_weight=5.0)
    data = plain.dataset("train")
    batch = plain.collate([data[i] for i in range(8)], generator=torch.Generator().manual_seed(1))
    loss1, stats1 = plain.loss(tiny_model, batch)
    loss5, stats5 = weighted.loss(tiny_model, batch)
    assert stats1 == stats5  # the logged terms are the unweighted ones
    assert float(loss5 - loss1) == pytest.approx(4.0 * stats1["alignment_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="alignment_weight must be >= 0, got -1"):
        _task(world, alignment_weight=-1.0)


def test_batches_pad_to_their_own_longest(world):
    task = _task(world)
    data = task.dataset("train")
    batch = task.collate([data[0], data[1]], generator=torch.Generator().manual_seed(0))
    assert int(batch.attention_mask.sum(1).max()) == batch.input_ids.shape[1] < 36
    assert int(batch.image_mask.sum(1).max()) == batch.image_features.shape[1]


@pytest.fixture(scope="module")
def whole_run(world, tmp_path_factory):
    """An uninterrupted 4-step CLI run (checkpoints at steps 2 and 4), shared by two tests."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert pretrain_main(_args(world, out, *RESUME_STEPS)) == 0
    return out


RESUME_STEPS = ("--max-steps", "4", "--save-every", "2")


def test_cli_run_writes_model_logs_plot_and_checkpoint(whole_run):
    out = whole_run
    model = load_pretrained(out / "model")
    assert model.config.v_feature_size == 1280 and model.config.v_target_size == 1000
    assert set(model.heads) >= {"masked_word", "masked_region", "alignment"}
    rows = _rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "masked_word_loss", "masked_region_loss", "alignment_loss", "alignment_acc"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert "val/alignment_acc" in _rows(out / "eval_log.csv")[-1]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "step_4" / "model.safetensors").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))
    assert (out / "pretrain_run.json").is_file()


def test_cli_resume_ends_with_the_weights_of_an_uninterrupted_run(world, whole_run, tmp_path, capsys):
    cut = tmp_path / "cut"
    assert pretrain_main(_args(world, cut, *RESUME_STEPS, "--stop-after", "3")) == 0
    assert "continue with the same command and --resume" in capsys.readouterr().out
    assert not (cut / "model").exists()  # an unfinished run writes no final model
    assert pretrain_main(_args(world, cut, *RESUME_STEPS, "--resume")) == 0
    assert "model:" in capsys.readouterr().out
    a = load_file(str(whole_run / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the trainer rewrites the CSV on resume; the steps stay whole numbers
    assert [r["step"] for r in _rows(cut / "train_log.csv")] == ["1", "2", "3", "4"]
    # resuming with another model is refused, naming what changed
    assert pretrain_main(_args(world, cut, *RESUME_STEPS, "--resume") + ["--preset", "small"]) == 2
    assert "model config differs" in capsys.readouterr().err


def test_data_fraction_is_a_nested_deterministic_half(world, tmp_path):
    pairs = _task(world).pairs("train")
    half = _task(world, data_fraction=0.5)._pool("train").pairs
    assert half == [pairs[i] for i in data_subset(len(pairs), 0.5)] == _task(world, data_fraction=0.5)._pool("train").pairs
    assert len(half) == round(len(pairs) / 2)
    three_quarters = _task(world, data_fraction=0.75)._pool("train").pairs
    assert set(half) < set(three_quarters)
    # negatives come from the half only
    task = _task(world, data_fraction=0.5, misaligned_prob=1.0)
    data = task.dataset("train")
    batch = task.collate([data[i] for i in range(len(data))], generator=torch.Generator().manual_seed(0))
    assert set(batch.meta["caption"]) <= {p.caption for p in half}
    # the trainer runs on the same half: one epoch of 29 pairs at batch 8 is 4 steps, not 8
    out = tmp_path / "half"
    assert pretrain_main(_args(world, out, "--epochs", "1", "--data-fraction", "0.5")) == 0
    assert len(_rows(out / "train_log.csv")) == 4


def test_pretraining_lowers_the_loss(world, tmp_path):
    out = tmp_path / "learn"
    assert pretrain_main(_args(world, out, "--max-steps", "16", "--lr", "1e-2", "--warmup-fraction", "0.05")) == 0
    task = _task(world)
    torch.manual_seed(3)  # the CLI's --seed: the run's initial weights
    before = task.evaluate(build_model(load_preset("tiny")), "train")
    after = task.evaluate(load_pretrained(out / "model"), "train")  # the same masks and negatives
    assert after["loss"] < before["loss"] - 2.0, (before, after)
    assert after["masked_word_loss"] < before["masked_word_loss"] - 1.0
    assert after["masked_word_acc"] > before["masked_word_acc"]


def test_small_preset_text_stream_starts_from_minilm(world, tmp_path):
    out = tmp_path / "small"
    # step 1 of 10 runs at learning rate 0 (warm-up), so its checkpoint's text stream is exactly the init
    argv = ["--data", str(world / "world"), "--features", str(world / "store"), "--out", str(out),
            "--preset", "small", "--max-steps", "10", "--stop-after", "1", "--batch-size", "2", "--no-progress"]
    assert pretrain_main(argv) == 0
    minilm = load_file(str(minilm_dir() / "model.safetensors"))
    assert float(_rows(out / "train_log.csv")[0]["lr"]) == 0.0
    ours = load_file(str(out / "checkpoints" / "step_1" / "model.safetensors"))
    bert_key = next(k for k in minilm if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(ours["text_embeddings.word.weight"], minilm[bert_key])
    # as the original, the weights loaded from BERT train at a tenth of the rate
    scales = json.loads((out / "pretrain_run.json").read_text())["train"]["lr_scales"]
    assert scales == {"text_embeddings.": 0.1, "encoder.text_layers.": 0.1}


def test_clear_errors(world, tmp_path, capsys):
    # a store without cls_prob
    bare = tmp_path / "bare"
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(bare, {"backbone": "random", "feature_dim": 1280, "num_classes": 0}) as writer:
        writer.put_many(ImageRegions(str(i), 64, 64, np.array([[0, 0, 10, 10]] * 3, np.float32),
                                     rng.standard_normal((3, 1280)).astype(np.float32)) for i in range(1, 25))
    argv = ["--data", str(world / "world"), "--features", str(bare), "--out", str(tmp_path / "r"), *TINY]
    assert pretrain_main(argv) == 2
    assert "no cls_prob" in capsys.readouterr().err
    # captions naming images the store lacks
    captions = tmp_path / "captions"
    captions.mkdir()
    (captions / "train.tsv").write_text("a red circle\t1\na blue square\t999\n")
    argv = ["--data", str(captions), "--features", str(world / "store"), "--out", str(tmp_path / "r2"), *TINY]
    assert pretrain_main(argv) == 2
    err = capsys.readouterr().err
    assert "train.tsv" in err and "999" in err
    # an unknown preset lists the valid ones
    assert pretrain_main(_args(world, tmp_path / "r3") + ["--preset", "huge"]) == 2
    assert "valid presets" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes(world, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "vilbert.cli.main", "pretrain", *_args(world, out, "--max-steps", "3")]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("vilbert pretrain: step 3/3") == 1  # rank 0 alone reports
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoints" / "step_3" / "rng_rank1.pt").is_file()
    assert len(_rows(out / "train_log.csv")) == 3

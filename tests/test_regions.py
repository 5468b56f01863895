"""[IMG] row, 5-d locations and padding of region inputs."""

import numpy as np
import pytest
import torch

from vilbert.core.regions import ImageRegions, box_locations, collate_regions


def _img(image_id, n, d=3):
    boxes = np.array([[10 * i, 5 * i, 10 * i + 20, 5 * i + 40] for i in range(n)], dtype=np.float32)
    feats = np.arange(n * d, dtype=np.float32).reshape(n, d)
    return ImageRegions(image_id, 200, 100, boxes, feats, None)


def test_locations_formula():
    loc = box_locations(np.array([[20, 10, 120, 60]], np.float32), 200, 100)
    np.testing.assert_allclose(loc, [[0.1, 0.1, 0.6, 0.6, 100 * 50 / (200 * 100)]])


def test_img_row_and_truncation():
    features, locations, _ = collate_regions([_img("a", 4)], max_regions=2)
    features, locations = features[0], locations[0]
    assert features.shape == (3, 3)
    torch.testing.assert_close(features[0], torch.tensor([1.5, 2.5, 3.5]))  # mean of the 2 kept rows
    assert locations[0].tolist() == [0, 0, 1, 1, 1]
    torch.testing.assert_close(locations[2], torch.tensor([0.05, 0.05, 0.15, 0.45, 20 * 40 / 20000]))


def test_collate_pads_to_largest():
    batch = collate_regions([_img("a", 1), _img("b", 3)])
    assert batch.features.shape == (2, 4, 3) and batch.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch.features[0, 2:].abs().sum() == 0 and batch.cls_prob is None
    assert batch.num_boxes.tolist() == [2, 4]


def test_errors():
    with pytest.raises(ValueError, match="at least one image"):
        collate_regions([])
    with pytest.raises(ValueError, match="different feature widths"):
        collate_regions([_img("a", 1, d=3), _img("b", 1, d=4)])

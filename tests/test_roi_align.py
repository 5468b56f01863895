"""RoIAlign on torch ops against an exact, loop-by-loop reference of the aligned RoIAlign."""

import math

import numpy as np
import pytest
import torch

from vilbert.features.roi_align import roi_align


def _bilinear(fm: np.ndarray, y: float, x: float) -> np.ndarray:
    """The reference bilinear read: zero beyond one cell outside, clamped inside (fm [C,H,W])."""
    _, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fm.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fm[:, y0, x0] + (1 - ly) * lx * fm[:, y0, x1]
            + ly * (1 - lx) * fm[:, y1, x0] + ly * lx * fm[:, y1, x1])


def reference_roi_align(fm, box, out, scale, sr):
    """Aligned RoIAlign of one box on fm [C,H,W], float64 loops -> [C,out,out]."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    result = np.zeros((fm.shape[0], out, out))
    for py in range(out):
        for px in range(out):
            acc = np.zeros(fm.shape[0])
            for iy in range(sr):
                for ix in range(sr):
                    y = y1 + py * bin_h + (iy + 0.5) * bin_h / sr
                    x = x1 + px * bin_w + (ix + 0.5) * bin_w / sr
                    acc += _bilinear(fm, y, x)
            result[:, py, px] = acc / (sr * sr)
    return result


@pytest.mark.parametrize("sr,out", [(1, 2), (2, 3), (3, 7)])
def test_matches_exact_reference(sr, out):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 6, 9, generator=gen, dtype=torch.float64)
    # Inside, touching borders, reaching past the map, tiny, and one spanning everything.
    boxes = [
        torch.tensor([[0.0, 0.0, 288.0, 192.0], [10.0, 20.0, 100.0, 90.0], [250.0, 150.0, 330.0, 230.0]]),
        torch.tensor([[-40.0, -40.0, 20.0, 20.0], [33.3, 47.9, 34.1, 48.2], [100.0, 5.0, 280.0, 190.0]]),
    ]
    got = roi_align(feats, [b.double() for b in boxes], (out, out), 1 / 32, sr)
    expected = [reference_roi_align(feats[b].numpy(), box.tolist(), out, 1 / 32, sr)
                for b in range(2) for box in boxes[b]]
    np.testing.assert_allclose(got.numpy(), np.stack(expected), rtol=1e-10, atol=1e-10)


def test_region_independent_of_batch_company():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 8, 12, 12, generator=gen)
    box = torch.tensor([[40.0, 50.0, 200.0, 170.0]])
    alone = roi_align(feats[1:2], [box], (7, 7), 1 / 32, 2)
    crowd = [torch.rand(30, 4) * 100, torch.cat([torch.rand(5, 4) * 50, box, torch.rand(20, 4) * 300]), torch.rand(1, 4)]
    for b in (crowd[0], crowd[2]):
        b[:, 2:] += b[:, :2]
    together = roi_align(feats, crowd, (7, 7), 1 / 32, 2)
    assert together.shape == (57, 8, 7, 7)
    torch.testing.assert_close(together[30 + 5], alone[0], rtol=0, atol=0)


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="B box tensors"):
        roi_align(torch.zeros(2, 1, 4, 4), [torch.zeros(1, 4)])


def test_pooled_shortcut_equals_mean_of_bins():
    from vilbert.features.roi_align import roi_align_pooled

    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 7, 6, 9, generator=gen, dtype=torch.float64)
    boxes = [torch.tensor([[0.0, 0.0, 288.0, 192.0], [-40.0, -40.0, 20.0, 20.0], [250.0, 150.0, 330.0, 230.0]],
                          dtype=torch.float64),
             torch.tensor([[33.3, 47.9, 34.1, 48.2]], dtype=torch.float64)]
    full = roi_align(feats, boxes, (7, 7), 1 / 32, 2).mean(dim=(2, 3))
    torch.testing.assert_close(roi_align_pooled(feats, boxes, (7, 7), 1 / 32, 2), full, rtol=1e-12, atol=1e-12)
    cl = feats.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align_pooled(cl, [b.float() for b in boxes]), full.float(), rtol=1e-5, atol=1e-5)

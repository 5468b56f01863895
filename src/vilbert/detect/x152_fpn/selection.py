"""extract_features.py's box selection: per-class NMS, each box's best surviving class score.

Legend: R proposals, K classes competing (background excluded unless asked), M ranks a class.

For every class, NMS at `nms_threshold` runs over all R proposals by that class's score; a box's
selection score is the highest class score with which it survived (and that exceeds the
confidence threshold), 0 if none; the `num_features` best boxes are kept by that score.

`select_plain` is that loop (one NMS per class). `select_fast` gives the same top-k exactly with
far less work: a box's kept/suppressed status in a class depends only on boxes that score
higher in that class, so greedy NMS restricted to each class's top-M ranks is exact for those
ranks. The first few ranks of all classes (one vectorised pass over the classes) give every box
a proven lower bound on its score; the k-th largest of those bounds, L, bounds the k-th
selection score from below, so only class scores >= L can matter and NMS needs to run only down
to the rank where a class's scores fall below L (class by class, on one shared IoU matrix).
Scores below L may be underestimated; they never reach the top k.
"""

from __future__ import annotations

import numpy as np
import torch

from vilbert.detect.x152_fpn.ops import nms, overlap_matrix

Tensor = torch.Tensor


def select_plain(boxes: Tensor, scores: Tensor, nms_threshold: float, confidence_threshold: float) -> Tensor:
    """Selection score of every box [R] from boxes [R, 4] and class scores [R, K] (the script's loop)."""
    best = torch.zeros(scores.shape[0], dtype=scores.dtype, device=scores.device)
    threshold = torch.full_like(best, confidence_threshold)
    for k in range(scores.shape[1]):
        cs = scores[:, k]
        keep = nms(boxes, cs, nms_threshold)
        better = (cs[keep] > best[keep]) & (cs[keep] > threshold[keep])
        best[keep] = torch.where(better, cs[keep], best[keep])
    return best


def _greedy_prefix(order: Tensor, over: Tensor, ranks: int) -> Tensor:
    """Exact greedy NMS for the first `ranks` ranks of every class at once.

    order [R, K]: box index at each rank of each class; over [R, R]: IoU >= threshold.
    Returns kept [ranks, K].
    """
    cand = order[:ranks]  # [M, K]
    kept = torch.zeros_like(cand, dtype=torch.bool)
    if ranks == 0:
        return kept
    kept[0] = True  # a class's best box always survives
    for r in range(1, ranks):
        b = cand[r]  # [K]
        hits = over[cand[:r], b.expand(r, -1)] & kept[:r]  # [r, K]: kept higher-ranked overlaps
        kept[r] = ~hits.any(dim=0)
    return kept


def _greedy_deep(order: Tensor, over: Tensor, depths: Tensor) -> Tensor:
    """Exact greedy NMS for ranks < depths[k] of each class k, one class at a time (numpy).

    Costs (boxes kept) x R a class instead of the prefix pass's ranks^2 x classes, which wins
    when many classes need deep ranks (near-uniform scores, as untrained weights give).
    Returns kept [max(depths), K]."""
    order_np, over_np = order.cpu().numpy(), over.cpu().numpy()
    limits = depths.tolist()
    kept = np.zeros((max(limits, default=0), order_np.shape[1]), dtype=bool)
    for k, depth in enumerate(limits):
        removed = np.zeros(over_np.shape[0], dtype=bool)
        for r, b in enumerate(order_np[:depth, k].tolist()):
            if not removed[b]:
                kept[r, k] = True
                removed |= over_np[b]
    return torch.from_numpy(kept).to(order.device)


def _scatter_best(best: Tensor, boxes_at: Tensor, values: Tensor) -> Tensor:
    return best.scatter_reduce(0, boxes_at.reshape(-1), values.reshape(-1), reduce="amax", include_self=True)


def select_fast(
    boxes: Tensor,
    scores: Tensor,
    nms_threshold: float,
    confidence_threshold: float,
    top_k: int,
    first_ranks: int = 8,
    max_prefix: int = 64,
) -> Tensor:
    """Selection scores [R] that are exact wherever they are among the `top_k` largest (see module)."""
    num, classes = scores.shape
    best = torch.zeros(num, dtype=scores.dtype, device=scores.device)
    if num == 0 or classes == 0:
        return best
    sorted_scores, order = torch.sort(scores, dim=0, descending=True, stable=True)  # [R, K]
    over = overlap_matrix(boxes, nms_threshold)
    threshold = torch.tensor(confidence_threshold, dtype=scores.dtype, device=scores.device)

    def bound(kept: Tensor, cols: Tensor | None = None) -> Tensor:
        """Best surviving score of each box over the ranks `kept` [M, K'] covers."""
        o = order if cols is None else order[:, cols]
        top = (sorted_scores if cols is None else sorted_scores[:, cols])[: len(kept)]
        values = torch.where(kept & (top > threshold), top, torch.zeros_like(top))
        return _scatter_best(best, o[: len(kept)], values)

    ranks = min(num, first_ranks)
    lower = bound(_greedy_prefix(order, over, ranks))
    while ranks < num and int((lower > 0).sum()) < top_k:
        if ranks * 4 > max_prefix:  # few classes' leaders: do every rank, class by class
            return bound(_greedy_deep(order, over, torch.full((classes,), num)))
        ranks = min(num, ranks * 4)
        lower = bound(_greedy_prefix(order, over, ranks))
    if ranks == num:  # every rank done: exact everywhere
        return lower
    cut = torch.topk(lower, top_k).values[-1]  # L > 0
    needed = (sorted_scores >= cut).sum(dim=0)  # [K] ranks whose scores can still matter
    deeper = torch.nonzero(needed > ranks).squeeze(1)
    if len(deeper) == 0:
        return lower
    return torch.maximum(lower, bound(_greedy_deep(order[:, deeper], over, needed[deeper]), deeper))


def select_boxes(
    boxes: Tensor,
    scores: Tensor,
    num_features: int,
    nms_threshold: float = 0.5,
    confidence_threshold: float = 0.0,
    include_background: bool = False,
    method: str = "fast",
) -> tuple[Tensor, Tensor, int]:
    """boxes [R, 4] (original pixels), scores [R, K+1] softmax -> (kept indices [n], their
    selection scores [n], num_boxes) with n = min(num_features, R) in decreasing score order,
    num_boxes the count of non-zero scores among them. Equal scores keep proposal order."""
    competing = scores if include_background else scores[:, 1:]
    if method == "plain":
        best = select_plain(boxes, competing, nms_threshold, confidence_threshold)
    elif method == "fast":
        best = select_fast(boxes, competing, nms_threshold, confidence_threshold, min(num_features, len(boxes)))
    else:
        raise ValueError(f"unknown selection method {method!r}; expected 'fast' or 'plain'")
    values, order = torch.sort(best, descending=True, stable=True)
    keep = order[:num_features]
    return keep, best[keep], int((values[:num_features] != 0).sum())

"""Referring expressions (RefCOCO+, `refer` layout): pick the region an expression names.

Rows are (expression, image id). The model scores every region ("region_score" head, [B,R];
padded rows already at -10000). Targets follow the original code (vilbert-multi-task,
refer_expression_dataset + the "V-logit" loss): each region's target is its IoU with the
referred box, set to 0 below 0.5; the loss is binary cross-entropy with logits on those soft
targets, summed over regions and averaged over expressions (the original's
`BCEWithLogitsLoss(mean) * num_regions`, which is the same thing). The [IMG] row is not a
proposal: its target is 0 and it is never chosen. Accuracy: the top-scoring region's IoU with the
referred box is >= 0.5. IoU uses continuous pixel areas (x2 - x1), not the original's `+ 1`.

Dimension letters: B expressions, R region rows ([IMG] included), N real regions of one image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.regions import ImageRegions, collate_regions
from vilbert.core.runtime import evaluating, model_device
from vilbert.data.readers.refer import ReferExpression, read_refer
from vilbert.features.boxes import box_iou
from vilbert.tasks.common import RegionTextTask, TaskData, batches
from vilbert.tasks.registry import Recipe, register_task

HEAD = "region_score"


def target_box_in_store_pixels(expr: ReferExpression, regions: ImageRegions) -> np.ndarray:
    """The referred box [4] in the pixel frame of the stored regions (rescaled if the store's
    image size differs from the annotation's)."""
    box = np.asarray(expr.box, dtype=np.float64)
    size = (expr.image_width, expr.image_height)
    if all(size) and size != (regions.width, regions.height):
        box = box * np.array([regions.width / size[0], regions.height / size[1]] * 2)
    return box


def region_ious(regions: ImageRegions, target: np.ndarray, rows: int, max_regions: int | None) -> torch.Tensor:
    """IoU of each model row with the target box -> [rows]: row 0 ([IMG]) and padding are 0."""
    n = regions.num_boxes if max_regions is None else min(regions.num_boxes, max_regions)
    out = torch.zeros(rows, dtype=torch.float32)
    ious = box_iou(regions.boxes[:n].astype(np.float64), target[None].astype(np.float64))[:, 0]  # [N]
    out[1 : n + 1] = torch.from_numpy(ious.astype(np.float32))
    return out


def soft_targets(iou: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The original's region targets: IoU where IoU >= threshold, else 0."""
    return torch.where(iou >= threshold, iou, torch.zeros_like(iou))


def refer_loss(logits: torch.Tensor, iou: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """BCE-with-logits on soft targets, summed over real regions, mean over expressions."""
    per_region = F.binary_cross_entropy_with_logits(logits.float(), soft_targets(iou, threshold), reduction="none")
    return (per_region * mask.float()).sum(1).mean()  # [B,R] -> scalar


def pick_regions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the top-scoring real region per row -> [B], never [IMG] (row 0) or padding."""
    eligible = mask.bool().clone()
    eligible[:, 0] = False
    return logits.float().masked_fill(~eligible, float("-inf")).argmax(1)


def hits(logits: torch.Tensor, iou: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """1.0 where the chosen region's IoU with the target is >= threshold -> [B]."""
    chosen = pick_regions(logits, mask)
    return (iou.gather(1, chosen[:, None])[:, 0] >= threshold).float()


@register_task("refer", Recipe("refcoco+", max_text_length=20, batch_size=256, lr=4e-5, epochs=20))
class ReferTask(RegionTextTask):
    """RefCOCO+-style referring expressions over the feature store's region proposals.

    `data.data_dir` is the refer-layout folder (refs(unc).p + instances.json).
    """

    def __init__(self, data: TaskData, iou_threshold: float = 0.5, refs_file: str = "refs(unc).p") -> None:
        super().__init__(data)
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.refs_file = refs_file
        self._expressions: dict[str, list[ReferExpression]] = {}

    def required_heads(self) -> dict[str, dict]:
        return {HEAD: {}}

    def expressions(self, split: str) -> list[ReferExpression]:
        if split not in self._expressions:
            found = read_refer(self.data.data_dir, split, refs_file=self.refs_file)
            if not found:
                raise ValueError(f"{self.data.data_dir}/{self.refs_file} has no expressions of split {split!r}")
            self._expressions[split] = found
        return self._expressions[split]

    def lengths(self, split: str) -> list[int]:
        return self.text_lengths([e.sentence for e in self.expressions(split)])

    def dataset(self, split: str) -> list[ReferExpression]:
        return self.expressions(split)

    def collate(self, examples: Sequence[ReferExpression]) -> Batch:
        stored = self.store.get_regions([e.image_id for e in examples])
        regions = collate_regions(stored, max_regions=self.data.max_regions)
        rows = regions.features.shape[1]
        iou = torch.stack([
            region_ious(r, target_box_in_store_pixels(e, r), rows, self.data.max_regions)
            for e, r in zip(examples, stored)
        ])  # [B,R]
        meta = {"ref_id": [e.ref_id for e in examples], "sent_id": [e.sent_id for e in examples],
                "image_id": [e.image_id for e in examples]}
        return self.make_batch([e.sentence for e in examples], [e.image_id for e in examples],
                               targets={"iou": iou}, meta=meta, regions=regions)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**batch.model_inputs(), heads=(HEAD,)).logits[HEAD]  # [B,R]
        iou = batch.targets["iou"]
        loss = refer_loss(logits, iou, batch.image_mask, self.iou_threshold)
        acc = hits(logits.detach(), iou, batch.image_mask, self.iou_threshold).mean()
        return loss, {"accuracy": float(acc)}

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        """accuracy: share of expressions whose top region has IoU >= 0.5 with the referred box;
        upper_bound: share where some kept proposal reaches it."""
        items = self.expressions(split)
        device = model_device(model)
        correct = reachable = 0.0
        with evaluating(model):
            for batch in batches(self, items, batch_size):
                batch = batch.to(device)
                logits = model(**batch.model_inputs(), heads=(HEAD,)).logits[HEAD]
                iou = batch.targets["iou"]
                correct += float(hits(logits, iou, batch.image_mask, self.iou_threshold).sum())
                reachable += float((iou.max(1).values >= self.iou_threshold).float().sum())
        return {"accuracy": correct / len(items), "upper_bound": reachable / len(items)}

    def predictions(self, model: nn.Module, split: str, batch_size: int = 64) -> list[dict]:
        """Each expression's chosen box: [{"ref_id", "sent_id", "image_id", "box" (x1,y1,x2,y2 pixels of
        the stored regions), "iou" (with the referred box)}]."""
        items = self.expressions(split)
        device = model_device(model)
        out: list[dict] = []
        with evaluating(model):
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                batch = self.collate(chunk).to(device)
                logits = model(**batch.model_inputs(), heads=(HEAD,)).logits[HEAD]
                chosen = pick_regions(logits, batch.image_mask).cpu()  # [B] rows, [IMG] is row 0
                iou = batch.targets["iou"].cpu()
                for e, row, ious in zip(chunk, chosen.tolist(), iou):
                    box = self.store[e.image_id].boxes[row - 1]
                    out.append({"ref_id": e.ref_id, "sent_id": e.sent_id, "image_id": e.image_id,
                                "box": [round(float(v), 2) for v in box], "iou": round(float(ious[row]), 4)})
        return out

"""The bottom-up-attention Faster R-CNN (Anderson et al. 2018) in plain PyTorch.

images -> ResNet-101 C4 backbone (res4, stride 16) -> RPN (12 anchors a location, NMS, top 300)
-> RoIPool 14x14 on res4 -> res5 on each RoI -> mean-pooled region features [R, 2048]
-> class scores (1600 + background), per-class box deltas, attributes (400 + none) from the feature
concatenated with an embedding of the predicted class -> per-image box selection (`selection.py`).

Every step follows the public port (transformers `examples/research_projects/lxmert/modeling_frcnn.py`)
operation for operation, under the port's module names (its weights load key for key).

Letters: N images, C channels, H, W feature height and width, A anchors a location, R RoIs (all images),
K foreground classes, D region feature width, P pooled size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vilbert.detect.bottom_up.config import BottomUpConfig
from vilbert.detect.bottom_up.detections import Detections
from vilbert.detect.bottom_up.layers import BufferList, ResNetC4, make_stage
from vilbert.detect.bottom_up.ops import apply_deltas, clip_boxes_, nms, roi_pool
from vilbert.detect.bottom_up.preprocess import ImageBatch, preprocess, to_rgb_array
from vilbert.detect.bottom_up.selection import Selection, max_class_nms, max_conf

Tensor = torch.Tensor
BACKBONE_STRIDE = 16  # res4
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def cell_anchors(sizes: list[float], aspect_ratios: list[float]) -> Tensor:
    """[A, 4] anchors centred on 0, sizes outer and ratios inner (detectron2's order)."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    def __init__(self, config: BottomUpConfig) -> None:
        super().__init__()
        self.offset = config.anchor_offset
        self.cell_anchors = BufferList([cell_anchors(config.anchor_sizes, config.anchor_aspect_ratios)])

    def forward(self, height: int, width: int) -> Tensor:
        """Anchors of a height x width feature map -> [H*W*A, 4], location-major."""
        base = self.cell_anchors[0]
        kw = {"step": BACKBONE_STRIDE, "dtype": torch.float32, "device": base.device}
        shifts_x = torch.arange(self.offset * BACKBONE_STRIDE, width * BACKBONE_STRIDE, **kw)
        shifts_y = torch.arange(self.offset * BACKBONE_STRIDE, height * BACKBONE_STRIDE, **kw)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, stride=1, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, kernel_size=1, stride=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class RPN(nn.Module):
    """res4 [N, C, H, W] -> per image proposals [<= post_nms_top_k, 4], best objectness first."""

    def __init__(self, config: BottomUpConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(config)
        self.rpn_head = RPNHead(config.res4_channels, config.rpn_hidden_channels, config.num_anchors)

    def forward(self, features: Tensor, image_sizes: Tensor) -> list[Tensor]:
        cfg = self.config
        n, _, h, w = features.shape
        logits, deltas = self.rpn_head(features)
        logits, deltas = logits.float(), deltas.float()  # boxes and ranking in float32 under autocast
        anchors = self.anchor_generator(h, w)
        deltas = deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4)  # [N*H*W*A, 4]
        proposals = apply_deltas(deltas, anchors.repeat(n, 1), cfg.rpn_box_weights).view(n, -1, 4)
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)  # [N, H*W*A]
        k = min(cfg.rpn_pre_nms_top_k, logits.shape[1])
        logits, order = logits.sort(descending=True, dim=1)
        batch = torch.arange(n, device=features.device)
        top_logits, top_boxes = logits[:, :k], proposals[batch[:, None], order[:, :k]]  # [N, k], [N, k, 4]
        out = []
        for i in range(n):
            boxes, scores = top_boxes[i], top_logits[i]
            clip_boxes_(boxes, image_sizes[i, 0], image_sizes[i, 1])
            ok = ((boxes[:, 2] - boxes[:, 0]) > cfg.rpn_min_box_size) & ((boxes[:, 3] - boxes[:, 1]) > cfg.rpn_min_box_size)
            if ok.sum().item() != len(boxes):
                boxes, scores = boxes[ok], scores[ok]
            keep = nms(boxes, scores, cfg.rpn_nms_threshold, max_keep=cfg.rpn_post_nms_top_k)
            scores, resort = scores[keep].sort(descending=True)  # the port sorts once more
            out.append(boxes[keep][resort])
        return out


class BoxPredictor(nn.Module):
    """Region feature [R, D] -> class logits [R, K+1], attribute logits [R, A+1], box deltas [R, K*4]."""

    def __init__(self, dim: int, num_classes: int, num_attributes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        self.cls_embedding = nn.Embedding(num_classes + 1, dim // 8)
        self.fc_attr = nn.Linear(dim + dim // 8, dim // 4)
        self.attr_score = nn.Linear(dim // 4, num_attributes + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = self.cls_score(x)
        deltas = self.bbox_pred(x)
        _, predicted = scores.max(-1)  # over all K+1 columns, background included, as the port
        a = F.relu(self.fc_attr(torch.cat([x, self.cls_embedding(predicted)], -1)))
        return scores, self.attr_score(a), deltas


class Res5ROIHeads(nn.Module):
    def __init__(self, config: BottomUpConfig) -> None:
        super().__init__()
        self.config = config
        self.res5 = make_stage(config.res5_blocks, 2, config.res4_channels,
                               config.num_groups * config.width_per_group * 8, config.res5_channels,
                               num_groups=config.num_groups, stride_in_1x1=config.stride_in_1x1, eps=config.norm_eps)
        if not config.res5_halve:  # the VG model: res5 keeps stride 1 and dilates its 3x3 convs by 2
            self.res5[0].conv1.stride = (1, 1)
            self.res5[0].shortcut.stride = (1, 1)
            for block in self.res5:
                block.conv2.padding, block.conv2.dilation = (2, 2), (2, 2)
        self.box_predictor = BoxPredictor(config.res5_channels, config.num_classes, config.num_attributes)

    def forward(self, features: Tensor, proposals: list[Tensor], chunk: int | None = None,
                memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """res4 [N, C, H, W] and per-image boxes -> region features [R, D] (mean of res5 over the RoI)."""
        rois = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device), b], 1)
                          for i, b in enumerate(proposals)])  # [R, 5]: image index, x1 y1 x2 y2
        step = len(rois) if not chunk else chunk
        pooled = []
        for s in range(0, len(rois), max(step, 1)):
            x = roi_pool(features, rois[s:s + step], self.config.pooler_resolution, 1.0 / BACKBONE_STRIDE)
            x = x.contiguous(memory_format=memory_format)
            pooled.append(self.res5(x).mean(dim=[2, 3]))  # [r, D, P, P] -> [r, D]
        return torch.cat(pooled) if pooled else features.new_zeros(0, self.config.res5_channels)


@dataclass
class RawOutputs:
    """The network's outputs before box selection (all RoIs of the batch, image after image)."""

    proposals: list[Tensor]  # per image [R_i, 4], resized-image pixels
    features: Tensor  # [R, D]
    obj_logits: Tensor  # [R, K+1]
    attr_logits: Tensor  # [R, A+1]
    box_deltas: Tensor  # [R, K*4]


class BottomUpRCNN(nn.Module):
    def __init__(self, config: BottomUpConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetC4(config.stage_blocks, stem_out_channels=config.stem_out_channels,
                                 res2_out_channels=config.res2_out_channels, width_per_group=config.width_per_group,
                                 num_groups=config.num_groups, stride_in_1x1=config.stride_in_1x1,
                                 caffe_maxpool=config.caffe_maxpool, eps=config.norm_eps)
        self.proposal_generator = RPN(config)
        self.roi_heads = Res5ROIHeads(config)
        # RoIs through res5 at a time: bounds memory ([64, 2048, 14, 14] is 100 MB in fp32); None = all
        self.roi_chunk: int | None = 64
        self.memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return self.backbone.stem.conv1.weight.device

    def set_channels_last(self, enabled: bool = True) -> BottomUpRCNN:
        """Run the convolutions in NHWC: about a third faster with oneDNN on a CPU. Results agree with
        the default NCHW to float rounding (tested), not bit for bit as the default does with the port."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        return self.to(memory_format=self.memory_format)

    def forward(self, images: Tensor, image_sizes: Tensor) -> RawOutputs:
        """Normalised padded images [N, 3, H, W] and their unpadded (h, w) -> RawOutputs."""
        features = self.backbone(images.contiguous(memory_format=self.memory_format))
        proposals = self.proposal_generator(features, image_sizes)
        pooled = self.roi_heads(features, proposals, self.roi_chunk, self.memory_format)
        obj_logits, attr_logits, deltas = self.roi_heads.box_predictor(pooled)
        return RawOutputs(proposals, pooled.float(), obj_logits.float(), attr_logits.float(), deltas.float())

    @torch.no_grad()
    def detect(self, images: Sequence[Any], *, batch_size: int | None = None, precision: str = "fp32") -> list[Detections]:
        """Detect regions in RGB images (uint8 arrays [H, W, 3], PIL images or file paths).

        Images are padded to the largest of their batch, as the port does, so a region's feature
        depends slightly on its batch-mates; `batch_size=None` runs all `images` as one batch.
        `precision` "fp16"/"bf16" runs the network under autocast (GPU only).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        if PRECISIONS[precision] is not None and self.device.type == "cpu":
            raise ValueError(f"precision {precision!r} needs a GPU; on the CPU the detector runs in fp32")
        if isinstance(images, (np.ndarray, str, Path, Image.Image)):
            raise TypeError(f"detect takes a list of images, got one {type(images).__name__}; pass [image]")
        arrays = [to_rgb_array(im, name=f"image {i}") for i, im in enumerate(images)]
        step = batch_size or max(len(arrays), 1)
        results: list[Detections] = []
        for start in range(0, len(arrays), step):
            batch = preprocess(arrays[start:start + step], self.config, self.device)
            ctx = (torch.autocast(self.device.type, dtype=PRECISIONS[precision]) if PRECISIONS[precision]
                   else contextlib.nullcontext())
            with ctx:
                raw = self(batch.tensor, batch.sizes)
            results.extend(self.postprocess(raw, batch))
        return results

    def postprocess(self, raw: RawOutputs, batch: ImageBatch) -> list[Detections]:
        """Decode boxes, softmax scores and select each image's regions (float32)."""
        cfg = self.config
        counts = [len(p) for p in raw.proposals]
        num = sum(counts)
        k = raw.box_deltas.shape[1] // 4
        props = torch.cat(raw.proposals).unsqueeze(-2).expand(num, k, 4).reshape(-1, 4)
        boxes = apply_deltas(raw.box_deltas.view(num * k, 4), props, cfg.box_weights).view(num, k * 4)
        probs = F.softmax(raw.obj_logits, dim=-1)
        attr_prob = raw.attr_logits[..., :-1].softmax(-1)
        attr_scores, attrs = attr_prob.max(-1)
        split = lambda t: t.split(counts, dim=0)
        out = []
        for i, (b, p, f, ap, asc, at, prop) in enumerate(zip(split(boxes), split(probs), split(raw.features),
                                                             split(attr_prob), split(attr_scores), split(attrs),
                                                             raw.proposals)):
            sel = self._select(p, b, prop, batch.sizes[i], batch.scales_yx[i])
            ids = sel.ids
            h, w = batch.original_sizes[i]
            out.append(Detections(
                boxes=_np(sel.boxes), scores=_np(sel.scores), features=_np(f[ids]), cls_prob=_np(p[ids]),
                objects=_np(sel.classes), attributes=_np(at[ids]), attribute_scores=_np(asc[ids]),
                attr_prob=_np(ap[ids]), width=int(w), height=int(h)))
        return out

    def _select(self, probs: Tensor, boxes: Tensor, proposals: Tensor, size: Tensor, scale_yx: Tensor) -> Selection:
        cfg = self.config
        if cfg.selection == "max_class_nms":
            return max_class_nms(probs, boxes, size, scale_yx, cfg.nms_thresholds, cfg.min_boxes, cfg.max_boxes)
        return max_conf(probs, proposals, scale_yx, cfg.conf_threshold, cfg.max_conf_nms_threshold,
                        cfg.min_boxes, cfg.max_boxes)


def _np(t: Tensor):
    return t.detach().cpu().numpy()


def build_bottom_up(config: BottomUpConfig | None = None, device: torch.device | str = "cpu") -> BottomUpRCNN:
    """The detector for `config` (default: the released model's architecture), in eval mode."""
    return BottomUpRCNN(config or BottomUpConfig()).to(device).eval()

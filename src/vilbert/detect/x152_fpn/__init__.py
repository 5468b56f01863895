"""The ResNeXt-152 32x8d FPN Faster R-CNN of vqa-maskrcnn-benchmark (CLI name `x152-fpn`): the
detector whose fc6 region features vilbert-multi-task (12-in-1) and MMF were trained on.

    from vilbert.detect.x152_fpn import build_x152_fpn, load_x152_fpn_weights
    model = build_x152_fpn()                      # full size, eval mode
    load_x152_fpn_weights(model, "detectron_model.pth")
    dets = model.detect(["photo.jpg"])            # list[Detections], 100 regions each
    dets = model.features_for_boxes(["photo.jpg"], [boxes])  # given boxes

Weights: `detectron_model.pth` from vilbert-multi-task's data README (with its
`detectron_config.yaml`), the file behind the released multi_task_model.bin / pretrained_model.bin
features.
"""

from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.detector import X152FPN, Detections, RegionOutputs, build_x152_fpn
from vilbert.detect.x152_fpn.preprocess import ImageBatch, ImageDecodeError
from vilbert.detect.x152_fpn.weights import (
    WeightsError,
    WeightsReport,
    convert_state_dict,
    load_x152_fpn_weights,
    read_checkpoint,
)

__all__ = [
    "X152FPN",
    "Detections",
    "ImageBatch",
    "ImageDecodeError",
    "RegionOutputs",
    "WeightsError",
    "WeightsReport",
    "X152FPNConfig",
    "build_x152_fpn",
    "convert_state_dict",
    "load_x152_fpn_weights",
    "read_checkpoint",
]

"""The detectors behind the released ViLBERT checkpoints' region features, in plain PyTorch.

- `bottom-up-r101` (`vilbert.detect.bottom_up`): the bottom-up-attention Faster R-CNN (ResNet-101,
  C4 head, Visual Genome 1600 objects + 400 attributes), whose features vilbert_beta and LXMERT
  were trained on.
- `x152-fpn` (`vilbert.detect.x152_fpn`): the ResNeXt-152 32x8d FPN Faster R-CNN of
  vqa-maskrcnn-benchmark, whose features vilbert-multi-task (12-in-1) and MMF were trained on.

`load_detector(name, weights)` builds either with its weights and gives one result type
(`vilbert.detect.registry`). No compiled extensions, no torchvision: every op (NMS, RoI
pooling, box decoding) is torch code.
"""

from vilbert.detect.registry import DETECTORS, Detections, Detector, list_detectors, load_detector

__all__ = ["DETECTORS", "Detections", "Detector", "list_detectors", "load_detector"]

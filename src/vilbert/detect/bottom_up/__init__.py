"""The bottom-up-attention Faster R-CNN (Anderson et al. 2018): ResNet-101 C4, Visual Genome 1600 objects
+ 400 attributes, 2048-d region features; the features vilbert_beta and LXMERT were trained on.

    from vilbert.detect.bottom_up import BottomUpConfig, build_bottom_up, load_bottom_up_weights
    model = build_bottom_up(BottomUpConfig())              # the released architecture
    load_bottom_up_weights(model, "pytorch_model.bin")     # or faster_rcnn_from_caffe_attr.pkl
    dets = model.detect([rgb_uint8_array])                 # list[Detections], original pixels
"""

from vilbert.detect.bottom_up.config import BottomUpConfig
from vilbert.detect.bottom_up.detections import Detections
from vilbert.detect.bottom_up.model import BottomUpRCNN, RawOutputs, build_bottom_up
from vilbert.detect.bottom_up.preprocess import ImageError, preprocess
from vilbert.detect.bottom_up.vocab import attributes_vocab, objects_vocab
from vilbert.detect.bottom_up.weights import WeightsError, WeightsReport, load_bottom_up_weights

__all__ = [
    "BottomUpConfig", "BottomUpRCNN", "Detections", "ImageError", "RawOutputs", "WeightsError", "WeightsReport",
    "attributes_vocab", "build_bottom_up", "load_bottom_up_weights", "objects_vocab", "preprocess",
]

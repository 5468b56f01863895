"""The detectors by name, behind one interface and one kind of result.

    detector = load_detector("bottom-up-r101", "pytorch_model.bin")   # or "x152-fpn", "detectron_model.pth"
    detections = detector.detect([rgb_uint8_array])                  # list[Detections]

Each detector keeps its own module names, preprocessing and selection rules (its subpackage);
this module only builds it, loads its weights and gives its results one layout: numpy arrays in
original pixels, `cls_prob` with the background in column 0 (the layout of both original
releases' `cls_prob` and of their masked-region targets), `objects` 0-based over the object
classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vilbert.detect import bottom_up, x152_fpn
from vilbert.io.checksums import file_digest

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class Detections:
    """One image's regions as a detector found them (or as it computed them for given boxes)."""

    boxes: np.ndarray  # [N,4] float32, x1 y1 x2 y2 in the image's pixels
    scores: np.ndarray  # [N] float32, the selection rule's confidence
    features: np.ndarray  # [N,D] float32 (D = 2048 for the released detectors)
    cls_prob: np.ndarray  # [N,C+1] float32, class softmax, background in column 0
    objects: np.ndarray  # [N] int32, best object class (0-based, an index into objects_vocab)
    width: int
    height: int
    attributes: np.ndarray | None = None  # [N] int32 (bottom-up only), an index into attributes_vocab
    attribute_scores: np.ndarray | None = None  # [N] float32


@dataclass(frozen=True)
class DetectorSpec:
    """How to build, load and run one detector."""

    name: str
    config_type: type
    build: Callable[[Any, str | torch.device], torch.nn.Module]
    load_weights: Callable[[torch.nn.Module, str | Path], Any]
    default_batch: Callable[[Any], int]  # images per forward that reproduce the reference
    feature_dim: Callable[[torch.nn.Module], int]  # the width of its region features
    weights_files: str  # what the user has, for help texts and errors
    given_boxes: bool  # whether features can be computed for boxes of a boxes file


DETECTORS: dict[str, DetectorSpec] = {
    "bottom-up-r101": DetectorSpec(
        "bottom-up-r101", bottom_up.BottomUpConfig, lambda c, d: bottom_up.build_bottom_up(c, d),
        bottom_up.load_bottom_up_weights,
        lambda c: 1,  # the port pads a batch to its largest image: 1 reproduces single-image extraction
        lambda m: int(m.roi_heads.box_predictor.cls_score.weight.shape[1]),  # the pooled res5 output
        "unc-nlp/frcnn-vg-finetuned's pytorch_model.bin, or py-bottom-up-attention's "
        "faster_rcnn_from_caffe_attr.pkl", given_boxes=False),
    "x152-fpn": DetectorSpec(
        "x152-fpn", x152_fpn.X152FPNConfig, lambda c, d: x152_fpn.build_x152_fpn(c, d),
        x152_fpn.load_x152_fpn_weights, lambda c: c.batch_size,
        lambda m: int(m.roi_heads.box.feature_extractor.fc6.weight.shape[0]),  # fc6, as the script saves
        "vilbert-multi-task's detectron_model.pth", given_boxes=True),
}


def list_detectors() -> list[str]:
    return sorted(DETECTORS)


def _config(spec: DetectorSpec, config: Any) -> Any:
    """The detector's config: its released architecture, or overrides from a dict or JSON file."""
    if config is None:
        return spec.config_type()
    if isinstance(config, spec.config_type):
        return config
    if isinstance(config, (str, Path)):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the {spec.name} config {config}: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"a {spec.name} config is a JSON object of its settings, got {type(config).__name__}")
    try:
        return spec.config_type.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{spec.name} config: {err}") from err


@dataclass
class Detector:
    """A loaded detector: `detect(images)` and, where it can, `features_for_boxes(images, boxes)`."""

    spec: DetectorSpec
    config: Any
    model: torch.nn.Module
    weights: Path
    weights_checksum: str
    precision: str = "fp32"
    objects_vocab: list[str] | None = field(default=None)
    attributes_vocab: list[str] | None = field(default=None)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batch_size(self) -> int:
        return self.spec.default_batch(self.config)

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim(self.model)

    @property
    def num_classes(self) -> int:
        """Columns of cls_prob: the object classes and the background."""
        foreground_only = self.name == "bottom-up-r101"  # its config counts the foreground classes
        return int(self.config.num_classes) + (1 if foreground_only else 0)

    def settings(self) -> dict[str, Any]:
        """What a feature store records of the detector (a store is never extended by another)."""
        return {"detector": self.name, "detector_config": self.config.to_dict(), "weights": str(self.weights.resolve()),
                "weights_checksum": self.weights_checksum, "precision": self.precision}

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Regions of RGB uint8 images [H,W,3], by the detector's own extraction rules."""
        if self.name == "bottom-up-r101":
            return [_from_bottom_up(d) for d in self.model.detect(list(images), batch_size=self.batch_size,
                                                                   precision=self.precision)]
        return [_from_x152(d) for d in self.model.detect(list(images), batch_size=self.batch_size,
                                                         amp_dtype=_amp(self.precision))]

    def features_for_boxes(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[Detections]:
        """Features of given boxes [N_i,4] (original pixels), every box in the given order."""
        if not self.spec.given_boxes:
            raise ValueError(f"the {self.name} detector chooses its own boxes; it does not compute features for "
                             "boxes of a boxes file (x152-fpn does)")
        return [_from_x152(d) for d in self.model.features_for_boxes(list(images), list(boxes),
                                                                     batch_size=self.batch_size,
                                                                     amp_dtype=_amp(self.precision))]


def _amp(precision: str) -> torch.dtype | None:
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _from_bottom_up(d: Any) -> Detections:
    # The port's softmax keeps the background last (detectron2); the released features, as Caffe
    # wrote them, keep it first.
    cls_prob = np.concatenate([d.cls_prob[:, -1:], d.cls_prob[:, :-1]], axis=1)
    return Detections(d.boxes.astype(np.float32), d.scores.astype(np.float32), d.features.astype(np.float32),
                      cls_prob.astype(np.float32), d.objects.astype(np.int32), int(d.width), int(d.height),
                      d.attributes.astype(np.int32), d.attribute_scores.astype(np.float32))


def _from_x152(d: Any) -> Detections:
    n = max(1, int(d.num_boxes))  # rows past num_boxes have a zero score: the script pads with them
    take = lambda t: t[:n].numpy()  # noqa: E731
    return Detections(take(d.boxes).astype(np.float32), take(d.scores).astype(np.float32),
                      take(d.features).astype(np.float32), take(d.cls_prob).astype(np.float32),
                      take(d.objects).astype(np.int32), int(d.width), int(d.height))


def load_detector(name: str, weights: str | Path, config: Any = None, device: str | torch.device = "cpu",
                  precision: str = "fp32") -> Detector:
    """Detector `name` at `config` (default the released architecture) with `weights` loaded."""
    if name not in DETECTORS:
        raise KeyError(f"unknown detector {name!r}; valid detectors: {', '.join(list_detectors())}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision != "fp32" and torch.device(device).type == "cpu":
        raise ValueError(f"precision {precision!r} needs a GPU (--device cuda); on the CPU detectors run in fp32")
    spec = DETECTORS[name]
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{name} weights {weights} do not exist (expected {spec.weights_files})")
    config = _config(spec, config)
    model = spec.build(config, device)
    spec.load_weights(model, weights)
    model.eval()
    objects = attributes = None
    if name == "bottom-up-r101":
        names = bottom_up.objects_vocab()
        objects = names if len(names) == config.num_classes else None  # a reduced test config has no names
        names = bottom_up.attributes_vocab()
        attributes = names if len(names) == config.num_attributes else None
    return Detector(spec, config, model, weights, file_digest(weights), precision, objects, attributes)

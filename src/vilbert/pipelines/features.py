"""Feature extraction as one function: `extract(FeaturesRun(...))`, which `vilbert features` and
the demo call. Where the boxes come from is the run's choice (see `vilbert.features.boxes`):

- EfficientNet-Lite0 + RoIAlign (the default, for models trained with this library) on a boxes
  file's boxes, VCR's own boxes, a multi-scale grid, or a proposal detector (`module:function`
  or `.onnx`);
- a released checkpoint's detector (`bottom-up-r101`, `x152-fpn`; `vilbert.detect`) with its
  weights file: its own boxes, or (x152-fpn) the boxes of a boxes file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vilbert.core.runtime import resolve_device
from vilbert.detect import DETECTORS, load_detector
from vilbert.features.boxes import images_in_folder, read_coco_boxes, read_vcr_boxes
from vilbert.features.boxes import load_detector as load_proposer
from vilbert.features.detected import extract_detected
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.fill import ExtractReport


@dataclass
class FeaturesRun:
    images: str | Path  # a folder of images (ids: file names without suffix, or from the boxes file)
    out: str | Path  # the feature store to create or extend
    boxes: str | Path | None = None  # a COCO-style boxes file, used as given
    vcr_boxes: tuple[str | Path, ...] = ()  # VCR jsonl files: each image's metadata boxes in object order
    detector: str | None = None  # bottom-up-r101 | x152-fpn (with `weights`), or "module:function" / a .onnx file
    weights: str | Path | None = None  # the released detector's weights file
    detector_config: str | Path | dict[str, Any] | None = None  # overrides of its released architecture
    config: ExtractConfig = field(default_factory=ExtractConfig)  # the EfficientNet path's settings
    device: str = "auto"  # where a released detector runs
    precision: str = "fp32"  # fp16 / bf16 autocast for a released detector on a GPU
    progress: bool = True

    def __post_init__(self) -> None:
        released = self.detector in DETECTORS
        chosen = [name for name, value in (("boxes", self.boxes), ("vcr_boxes", self.vcr_boxes),
                                           ("detector", self.detector and not released)) if value]
        if len(chosen) > 1:
            raise ValueError(f"give at most one source of boxes; got {', '.join(chosen)}")
        if released and self.weights is None:
            raise ValueError(f"the {self.detector} detector needs its weights file (--detector-weights; "
                             f"{DETECTORS[self.detector].weights_files})")
        if self.weights is not None and not released:
            raise ValueError(f"--detector-weights goes with a released detector ({', '.join(sorted(DETECTORS))}), "
                             f"not {self.detector!r}")


def extract(run: FeaturesRun) -> ExtractReport:
    """Extract every image of the run that the store lacks (a rerun resumes)."""
    if run.boxes:
        entries, source = read_coco_boxes(run.boxes, run.images), f"annotations:{run.boxes}"
    elif run.vcr_boxes:
        entries = read_vcr_boxes(list(run.vcr_boxes), run.images)
        source = f"vcr:{','.join(str(p) for p in run.vcr_boxes)}"
    else:
        entries, source = images_in_folder(run.images), "grid"
    if run.detector in DETECTORS:
        detector = load_detector(run.detector, run.weights, run.detector_config, resolve_device(run.device),
                                 run.precision)
        given = bool(run.boxes or run.vcr_boxes)
        return extract_detected(entries, run.out, detector, given_boxes=given,
                                boxes_source=source if given else f"detector:{run.detector}",
                                fp16_store=run.config.fp16_store, workers=run.config.workers, progress=run.progress)
    proposer = None
    if run.detector:
        proposer, source = load_proposer(run.detector), f"detector:{run.detector}"
    return extract_features(entries, run.out, run.config, boxes_source=source, detector=proposer,
                            progress=run.progress)

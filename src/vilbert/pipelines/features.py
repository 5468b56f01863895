"""Feature extraction as one function: `extract(FeaturesRun(...))`, which `vilbert features` and
the demo call. Where the boxes come from is the run's choice (see `vilbert.features.boxes`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vilbert.features.boxes import images_in_folder, load_detector, read_coco_boxes, read_vcr_boxes
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.fill import ExtractReport


@dataclass
class FeaturesRun:
    images: str | Path  # a folder of images (ids: file names without suffix, or from the boxes file)
    out: str | Path  # the feature store to create or extend
    boxes: str | Path | None = None  # a COCO-style boxes file, used as given
    vcr_boxes: tuple[str | Path, ...] = ()  # VCR jsonl files: each image's metadata boxes in object order
    detector: str | None = None  # "package.module:function" or a .onnx file
    config: ExtractConfig = field(default_factory=ExtractConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        chosen = [name for name, value in (("boxes", self.boxes), ("vcr_boxes", self.vcr_boxes),
                                           ("detector", self.detector)) if value]
        if len(chosen) > 1:
            raise ValueError(f"give at most one source of boxes; got {', '.join(chosen)}")


def extract(run: FeaturesRun) -> ExtractReport:
    """Extract every image of the run that the store lacks (a rerun resumes)."""
    detector = None
    if run.boxes:
        entries, source = read_coco_boxes(run.boxes, run.images), f"annotations:{run.boxes}"
    elif run.vcr_boxes:
        entries = read_vcr_boxes(list(run.vcr_boxes), run.images)
        source = f"vcr:{','.join(str(p) for p in run.vcr_boxes)}"
    else:
        entries, source = images_in_folder(run.images), "grid"
        if run.detector:
            detector, source = load_detector(run.detector), f"detector:{run.detector}"
    return extract_features(entries, run.out, run.config, boxes_source=source, detector=detector,
                            progress=run.progress)

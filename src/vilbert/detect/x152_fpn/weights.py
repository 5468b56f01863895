"""`detectron_model.pth` (vqa-maskrcnn-benchmark) -> the X152FPN state dict.

The file is a `torch.save` of maskrcnn-benchmark's checkpoint: a dict whose "model" entry is the
state dict (other entries, e.g. optimizer state, are ignored), possibly with DataParallel's
`module.` prefix; a bare state dict is accepted too. Our module names are maskrcnn-benchmark's,
so the key map is the identity; it is still checked in full: every key present with the shape
the config implies, the anchors equal to the config's, nothing unexpected except the attribute
head that the training config carries and feature extraction never runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vilbert.detect.x152_fpn.config import X152FPNConfig
from vilbert.detect.x152_fpn.detector import X152FPN
from vilbert.detect.x152_fpn.ops import cell_anchors
from vilbert.io.safe_pickle import safe_load_file

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

# Keys that may be in the file and feed nothing the extraction computes.
IGNORED = [
    r"roi_heads\.box\.predictor\.(cls_embed|attr_linear1|attr_linear2)\.(weight|bias)",  # ATTR: True at training
]


class WeightsError(ValueError):
    """A weights file that does not fit the detector (names the file and the first bad key)."""


@dataclass
class WeightsReport:
    path: str
    format: str  # "maskrcnn-benchmark checkpoint" or "state dict"
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    stripped_prefix: bool = False

    def summary(self) -> str:
        prefix = ", 'module.' prefix stripped" if self.stripped_prefix else ""
        return f"{self.path} ({self.format}{prefix}): {len(self.loaded)} tensors loaded, {len(self.ignored)} ignored"


def read_checkpoint(path: str | Path) -> tuple[StateDict, str]:
    """torch.load (tensors only) -> (state dict, format name); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    expected = (
        "expected maskrcnn-benchmark's detectron_model.pth (a torch checkpoint whose 'model' entry is the state dict)"
    )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if _is_detectron_pickle(path):
            raise WeightsError(
                f"{path}: a Detectron (Caffe2) pickle of numpy blobs, not a maskrcnn-benchmark checkpoint; "
                f"{expected} (vqa-maskrcnn-benchmark's tools/c2_to_pt.py converts Caffe2 models)"
            ) from err
        raise WeightsError(
            f"{path}: cannot read as a tensors-only PyTorch checkpoint ({type(err).__name__}: {err}); {expected}"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, fmt = obj["model"], "maskrcnn-benchmark checkpoint"
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state, fmt = obj, "state dict"
    else:
        what = f"a dict with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{path}: holds {what}; {expected}")
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise WeightsError(f"{path}: entry {k!r} of the state dict is a {type(v).__name__}, not a tensor")
    return state, fmt


def _is_detectron_pickle(path: Path) -> bool:
    try:
        obj = safe_load_file(str(path))
    except Exception:  # noqa: BLE001 - any failure means it is not a plain-data pickle
        return False
    return isinstance(obj, dict) and "blobs" in obj


def expected_shapes(config: X152FPNConfig) -> dict[str, torch.Size]:
    """Every state-dict key of the detector at `config` and its shape (built on the meta device)."""
    with torch.device("meta"):
        model = X152FPN(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_state_dict(
    state: StateDict, config: X152FPNConfig, what: str = "checkpoint"
) -> tuple[StateDict, WeightsReport]:
    """Check a maskrcnn-benchmark state dict against `config` -> (our state dict, report)."""
    report = WeightsReport(path=what, format="state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        report.stripped_prefix = True
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in state]
    if missing:
        raise WeightsError(
            f"{what}: missing key {missing[0]!r} (shape {tuple(shapes[missing[0]])}); {len(missing)} of the "
            f"{len(shapes)} keys the x152-fpn detector needs are absent - is this vqa-maskrcnn-benchmark's X-152 FPN checkpoint?"
        )
    for k, shape in shapes.items():
        if tuple(state[k].shape) != tuple(shape):
            raise WeightsError(
                f"{what}: wrong shape for {k!r}: the file has {tuple(state[k].shape)}, the config expects {tuple(shape)}"
            )
    unexpected = [k for k in state if k not in shapes and not any(re.fullmatch(p, k) for p in IGNORED)]
    if unexpected:
        raise WeightsError(f"{what}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    for i, (stride, size) in enumerate(zip(config.anchor_strides, config.anchor_sizes)):
        k = f"rpn.anchor_generator.cell_anchors.{i}"
        ours = cell_anchors(stride, size, config.anchor_aspect_ratios)
        if not torch.allclose(state[k].float(), ours, atol=1e-3):
            raise WeightsError(
                f"{what}: {k!r} holds anchors {state[k].tolist()}, but the config's anchor size {size}, stride {stride} "
                f"and aspect ratios {list(config.anchor_aspect_ratios)} give {ours.tolist()}"
            )
    converted = {k: state[k].detach().to(torch.float32).clone() for k in shapes}
    report.loaded = sorted(converted)
    report.ignored = sorted(k for k in state if k not in shapes)
    return converted, report


def load_x152_fpn_weights(model: X152FPN, path: str | Path) -> WeightsReport:
    """Load `detectron_model.pth` (or a bare state dict of the same names) into `model`, strictly."""
    state, fmt = read_checkpoint(path)
    converted, report = convert_state_dict(state, model.config, str(path))
    report.format = fmt
    dtype = model.rpn.head.conv.weight.dtype
    model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True)
    return report

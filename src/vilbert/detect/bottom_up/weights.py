"""Weight files users have -> our detector, as pure key maps checked key by key and shape by shape.

Which file is which (recognised by content, not by name):
- `pytorch_model.bin` of `unc-nlp/frcnn-vg-finetuned`, the FRCNN of transformers' LXMERT demo (the
  port): a torch state_dict under the port's module names, which are ours, plus BatchNorm's
  `num_batches_tracked` counters (ignored).
- py-bottom-up-attention's detectron2 pickles, `{"model": {name: ndarray}, ...}`, read through the
  allow-list unpickler: `faster_rcnn_from_caffe_attr.pkl` (the Caffe "alternative" model trained for 36
  boxes, LXMERT's features) and `faster_rcnn_from_caffe_attr_original.pkl` (the original 10-100 box
  model). Their names are detectron2's module names, which the port (and so we) kept; detectron2's
  FrozenBatchNorm has no `num_batches_tracked`. `faster_rcnn_from_caffe.pkl` has no attribute head and
  is refused with an error that says so.

The cell anchors (`proposal_generator.anchor_generator.cell_anchors.0`) are a function of the config;
a file may carry them (the port's does) or not (then ours, computed from the config, stay).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vilbert.io.safe_pickle import UnsafePickleError, safe_load_file, safe_loads

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
_IGNORED_PORT = re.compile(r".*\.num_batches_tracked$")
_ATTRIBUTE_KEYS = ("roi_heads.box_predictor.cls_embedding.", "roi_heads.box_predictor.fc_attr.",
                   "roi_heads.box_predictor.attr_score.")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-zip torch.save file
_HINTS = {
    "roi_heads.box_predictor.cls_score.weight": "num_classes",
    "roi_heads.box_predictor.attr_score.weight": "num_attributes",
    "proposal_generator.rpn_head.conv.weight": "rpn_hidden_channels",
    "proposal_generator.rpn_head.objectness_logits.weight": "anchor_sizes / anchor_aspect_ratios",
}


class WeightsError(ValueError):
    """A weights file that does not match the detector (names the file, the key and the problem)."""


@dataclass
class WeightsReport:
    path: str
    format: str  # "port" (pytorch_model.bin) or "detectron2" (.pkl)
    loaded: list[str] = field(default_factory=list)  # our keys filled from the file
    ignored: list[str] = field(default_factory=list)  # file keys deliberately unused
    computed: list[str] = field(default_factory=list)  # our keys the file lacks and the config defines

    def summary(self) -> str:
        return (f"{self.path} ({self.format}): {len(self.loaded)} tensors loaded, {len(self.ignored)} ignored, "
                f"{len(self.computed)} computed from the config")


def read_weights_file(path: str | Path) -> tuple[str, dict[str, Tensor]]:
    """("port" | "detectron2", name -> tensor) from a file of either kind, decided by its bytes."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (expected the port's pytorch_model.bin or a detectron2 .pkl)")
    head = path.read_bytes()[:64]
    if head.startswith(b"PK\x03\x04") or _is_legacy_torch(head):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(f"{path}: a torch file that cannot be read as a state_dict ({err})") from err
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise WeightsError(f"{path}: a torch file, but not a state_dict (name -> tensor); expected the port's "
                               "pytorch_model.bin")
        return "port", dict(state)
    if not head.startswith(b"\x80"):
        raise WeightsError(f"{path}: neither a torch state_dict nor a pickle; expected the port's pytorch_model.bin "
                           "or py-bottom-up-attention's faster_rcnn_from_caffe_attr.pkl")
    try:
        data = safe_load_file(str(path))
    except UnsafePickleError:
        raise
    except Exception as err:
        raise WeightsError(f"{path}: cannot unpickle ({err}); expected a detectron2 .pkl of numpy arrays") from err
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        keys = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise WeightsError(f"{path}: a pickle without a 'model' dict (found {keys}); expected detectron2's "
                           "{'model': {name: ndarray}} layout of py-bottom-up-attention")
    arrays = {}
    for name, value in data["model"].items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: model[{name!r}] is a {type(value).__name__}, expected a numpy array")
        arrays[name] = torch.from_numpy(np.ascontiguousarray(value))
    return "detectron2", arrays


def _is_legacy_torch(head: bytes) -> bool:
    try:
        return safe_loads(head, "<head>") == _TORCH_LEGACY_MAGIC
    except (pickle.UnpicklingError, EOFError, ValueError):  # a truncated pickle that is not that int
        return False


def convert_state_dict(source: dict[str, Tensor], expected: dict[str, Tensor], *, fmt: str, what: str) -> tuple[StateDict, WeightsReport]:
    """The file's tensors under our names, every key and shape checked against `expected`."""
    report = WeightsReport(what, fmt)
    out: StateDict = {}
    for key, ref in expected.items():
        if key not in source:
            if key == ANCHORS_KEY:
                out[key] = ref.clone()
                report.computed.append(key)
                continue
            raise WeightsError(f"{what}: missing key {key!r}{_missing_hint(key, source)}")
        value = source[key]
        if tuple(value.shape) != tuple(ref.shape):
            hint = f" (config field {_HINTS[key]})" if key in _HINTS else ""
            raise WeightsError(f"{what}: {key!r} has shape {tuple(value.shape)} in the file, this config expects "
                               f"{tuple(ref.shape)}{hint}")
        if not value.is_floating_point():
            raise WeightsError(f"{what}: {key!r} has dtype {value.dtype}, expected floating point")
        out[key] = value.to(ref.dtype)
        report.loaded.append(key)
    for key in source:
        if key in expected:
            continue
        if fmt == "port" and _IGNORED_PORT.match(key):
            report.ignored.append(key)
            continue
        raise WeightsError(f"{what}: unexpected key {key!r} (not part of the bottom-up detector; is this the "
                           "right file?)")
    return out, report


def _missing_hint(key: str, source: dict[str, Tensor]) -> str:
    if key.startswith(_ATTRIBUTE_KEYS):
        return (" - the file has no attribute head; it is a detector without attributes (e.g. "
                "py-bottom-up-attention's faster_rcnn_from_caffe.pkl), this one needs the attribute model "
                "(faster_rcnn_from_caffe_attr.pkl or the port's pytorch_model.bin)")
    if not any(k.startswith("backbone.") for k in source):
        return f" - the file holds no detector backbone (first keys: {sorted(source)[:3]}); is this the right file?"
    return ""


def load_bottom_up_weights(model: torch.nn.Module, path: str | Path) -> WeightsReport:
    """Load the port's pytorch_model.bin or a detectron2 .pkl into `model` (strict), return what was done."""
    fmt, source = read_weights_file(path)
    if fmt == "port":
        source = _legacy_names(source)
    state, report = convert_state_dict(source, model.state_dict(), fmt=fmt, what=str(path))
    model.load_state_dict(state, strict=True)
    return report


def _legacy_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The port's own renaming on load (old checkpoints named norm parameters gamma / beta)."""
    out = {}
    for key, value in state.items():
        new = key.replace("gamma", "weight") if "gamma" in key else key
        new = key.replace("beta", "bias") if "beta" in key else new
        out[new] = value
    return out


def port_key_names(model: torch.nn.Module) -> list[str]:
    """The keys of the port's state_dict for a model of this config (ours + BatchNorm counters)."""
    keys = []
    for key in model.state_dict():
        keys.append(key)
        if key.endswith(".norm.running_var"):
            keys.append(key.replace("running_var", "num_batches_tracked"))
    return keys

"""ViLBERT: a two-stream vision-and-language BERT (Lu et al., NeurIPS 2019).

    from vilbert import VQA, Grounding, Retrieval, Explainer, ViLBert

The public names are imported on first use, so that `vilbert --help` (and anything else that only
needs the version) does not import torch.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "VQA": "vilbert.inference", "Grounding": "vilbert.inference", "Retrieval": "vilbert.inference",
    "Explainer": "vilbert.inference", "Answer": "vilbert.inference", "Region": "vilbert.inference",
    "RegionSource": "vilbert.inference", "ViLBert": "vilbert.model", "ViLBertConfig": "vilbert.model",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vilbert' has no attribute {name!r}")

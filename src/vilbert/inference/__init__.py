"""The public inference API: `VQA`, `Grounding`, `Retrieval`, `Explainer` (each
`.from_pretrained(model_dir, ...)`), and `RegionSource`, which turns images into the regions a
model's training features were made of. See `vilbert.inference.predictors`."""

from vilbert.inference.images import ImageInput, RegionSource
from vilbert.inference.predictors import VQA, Answer, Explainer, Grounding, Predictor, Region, Retrieval

__all__ = ["Answer", "Explainer", "Grounding", "ImageInput", "Predictor", "Region", "RegionSource", "Retrieval", "VQA"]

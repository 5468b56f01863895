"""The public inference API: a saved model answering questions, finding what an expression names,
scoring captions against images, and showing its co-attention.

    from vilbert import VQA
    vqa = VQA.from_pretrained("runs/demo/runs/vilbert/vqa/model", features="runs/demo/features.lmdb")
    vqa.answer("photo.png", "what shape is the red one?")          # [Answer("cube", 0.91), ...]
    vqa.answer(["a.png", "b.png"], ["is there a dog?", "how many?"])   # one list per pair

Images are paths, PIL images, RGB uint8 arrays or stored regions; the regions are made as the
model's training features were (`vilbert.inference.images.RegionSource`). Every call is batched and
runs on the model's device, with bf16/fp16 autocast on CUDA.

Dimension letters: B pairs in a batch, T tokens, R region rows ([IMG] included), A answers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
import torch

from vilbert.core.regions import ImageRegions, collate_regions
from vilbert.core.runtime import resolve_device
from vilbert.data.inputs import encode_texts
from vilbert.data.tokenizer import load_tokenizer
from vilbert.inference.images import ImageInput, RegionSource
from vilbert.model import ViLBert, load_pretrained
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix
from vilbert.tasks import recipe
from vilbert.tasks.refer import HEAD as REGION_HEAD
from vilbert.tasks.vqa import HEAD as VQA_HEAD
from vilbert.tasks.vqa import head_answers
from vilbert.viz.attention import AttentionMaps, co_attention_maps, draw_co_attention

MAX_REGIONS = 36  # real regions per image, as the paper's features
P = TypeVar("P", bound="Predictor")


@dataclass(frozen=True)
class Answer:
    answer: str
    score: float  # sigmoid of the VQA head's logit (it is trained with BCE on soft scores)


@dataclass(frozen=True)
class Region:
    box: tuple[float, float, float, float]  # pixels x1, y1, x2, y2 of the chosen region
    region: int  # its index among the image's regions
    logit: float
    score: float  # its softmax share among the image's regions


def _many(value: Any) -> bool:
    return isinstance(value, (list, tuple))


class Predictor:
    """A saved model with what makes its inputs: its tokenizer and its region source."""

    required_head: str | None = None
    recipe_task: str = "vqa"  # whose text length to use by default

    def __init__(self, model: ViLBert, regions: RegionSource, max_regions: int = MAX_REGIONS,
                 max_text_length: int | None = None, source: str = "the model") -> None:
        if self.required_head is not None and self.required_head not in model.heads:
            raise ValueError(f"{source} has no {self.required_head!r} head (its heads: "
                             f"{', '.join(model.heads) or 'none'}); fine-tune it on the task first")
        self.model = model.eval()
        self.regions = regions
        self.tokenizer = load_tokenizer()
        self.max_regions = max_regions
        self.max_text_length = max_text_length or recipe(self.recipe_task).max_text_length
        self.source = source

    @classmethod
    def from_pretrained(cls: type[P], path: str | Path, *, device: str = "auto", features: str | Path | None = None,
                        detector: str | None = None, detector_weights: str | Path | None = None,
                        detector_config: Any = None, image_size: int | None = None, max_regions: int = MAX_REGIONS,
                        max_text_length: int | None = None, **options: Any) -> P:
        """The model saved at `path`; its regions from `features`' extractor (a feature store it
        was trained on), or a released `detector` with its weights, or EfficientNet-Lite0.
        `options` go to the predictor (e.g. `Retrieval`'s `zero_shot`)."""
        target = resolve_device(device)
        model = load_pretrained(path, map_location=target)
        regions = RegionSource(features, detector, detector_weights, detector_config, image_size, target)
        return cls(model, regions, max_regions, max_text_length, source=f"the model in {path}", **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    def region_list(self, images: Sequence[ImageInput], boxes: Sequence[np.ndarray | None] | None = None
                    ) -> list[ImageRegions]:
        found = self.regions(images, boxes)
        for i, r in enumerate(found):
            if r.features.shape[1] != self.model.config.v_feature_size:
                hint = (" (a converted checkpoint expects its detector's 2048-d features: detector='bottom-up-r101' "
                        "or 'x152-fpn' with its weights; on the command line --detector bottom-up-r101 "
                        "--detector-weights FILE)" if self.model.config.v_feature_size == 2048 else "")
                raise ValueError(f"image {i} has {r.features.shape[1]}-d region features but {self.source} expects "
                                 f"{self.model.config.v_feature_size}{hint}")
        return found

    @torch.inference_mode()
    def logits(self, texts: Sequence[str], regions: Sequence[ImageRegions], head: str,
               batch_size: int = 32) -> list[torch.Tensor]:
        """Each (text, regions) pair through the model -> the head's logits for that pair (CPU)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            ids, types, mask = encode_texts(self.tokenizer, texts[chunk], self.max_text_length)  # [B,T]
            batch = collate_regions(regions[chunk], self.max_regions)  # [B,R,D]
            inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                      "image_features": batch.features, "image_locations": batch.locations,
                      "image_mask": batch.mask}
            with self._autocast():
                logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}, heads=(head,)).logits[head]
            out += list(logits.float().cpu())
        return out


class VQA(Predictor):
    """Answers to questions about images, from a model fine-tuned on VQA (its head names its answers)."""

    required_head = VQA_HEAD

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers = head_answers(self.model)

    def answer(self, images: ImageInput | Sequence[ImageInput], questions: str | Sequence[str], top_k: int = 5,
               batch_size: int = 32, boxes: Sequence[np.ndarray | None] | None = None
               ) -> list[Answer] | list[list[Answer]]:
        """The `top_k` answers of one question about one image, or of each (image, question) pair;
        `boxes` (one [N,4] array or None per image) instead of the extractor's own regions."""
        single = not _many(questions)
        questions = [questions] if single else list(questions)
        images = list(images) if _many(images) else [images] * len(questions)
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        logits = self.logits(questions, self.region_list(images, boxes), VQA_HEAD, batch_size)  # each [A]
        top = [torch.sigmoid(l).topk(min(top_k, len(self.answers))) for l in logits]
        found = [[Answer(self.answers[i], float(v)) for v, i in zip(t.values.tolist(), t.indices.tolist())] for t in top]
        return found[0] if single else found


class Grounding(Predictor):
    """The region an expression names, from a model fine-tuned on referring expressions."""

    required_head = REGION_HEAD
    recipe_task = "refer"

    def locate(self, images: ImageInput | Sequence[ImageInput], expressions: str | Sequence[str],
               boxes: Sequence[np.ndarray | None] | None = None, batch_size: int = 32) -> Region | list[Region]:
        """The best-scoring real region ([IMG], row 0, is not a proposal) per (image, expression)."""
        single = not _many(expressions)
        expressions = [expressions] if single else list(expressions)
        images = list(images) if _many(images) else [images] * len(expressions)
        if len(images) != len(expressions):
            raise ValueError(f"{len(images)} images but {len(expressions)} expressions")
        regions = self.region_list(images, boxes)
        out = []
        for logits, r in zip(self.logits(expressions, regions, REGION_HEAD, batch_size), regions):  # each [R]
            n = min(r.num_boxes, self.max_regions)
            real = logits[1 : n + 1]  # [N]
            best = int(real.argmax())
            out.append(Region(tuple(float(v) for v in r.boxes[best]), best, float(real[best]),
                              float(torch.softmax(real, dim=0)[best])))
        return out[0] if single else out


class Retrieval(Predictor):
    """Scores of captions against images: the fine-tuned pair score, or (`zero_shot=True`) a
    pretrained model's alignment head."""

    recipe_task = "retrieval"

    def __init__(self, *args: Any, zero_shot: bool = False, **kwargs: Any) -> None:
        self.required_head = "alignment" if zero_shot else "pair_score"
        super().__init__(*args, **kwargs)

    def score(self, texts: Sequence[str], images: Sequence[ImageInput], batch_size: int = 256) -> torch.Tensor:
        """[len(texts), len(images)] scores (higher = a better match), every text with every image."""
        ids, types, mask = encode_texts(self.tokenizer, list(texts), self.max_text_length)
        batch = collate_regions(self.region_list(list(images)), self.max_regions)
        with self._autocast():
            return score_matrix(self.model, TextInputs(ids, types, mask),
                                ImageInputs(batch.features, batch.locations, batch.mask), head=self.required_head,
                                batch_size=batch_size).cpu()


class Explainer(Predictor):
    """The co-attention between a sentence's words and an image's regions."""

    recipe_task = "pretrain"  # captions' length: any sentence may be explained

    def attention(self, image: ImageInput, text: str, layers: Sequence[int] | None = None,
                  boxes: np.ndarray | None = None) -> AttentionMaps:
        regions = self.region_list([image], [boxes])[0]
        return co_attention_maps(self.model, text, regions, self.max_text_length, self.max_regions,
                                 None if layers is None else list(layers))

    def draw(self, image: str | Path, text: str, out: str | Path, layers: Sequence[int] | None = None,
             top_k: int = 4) -> tuple[Path, AttentionMaps]:
        """The attention maps drawn over the image (a path) into `out` (PNG)."""
        maps = self.attention(image, text, layers)
        return draw_co_attention(image, maps, out, top_k=top_k, title=f'"{text}"'), maps

"""Text-to-image search over an index: `search(SearchRun(...))`, which `vilbert search` calls.

The query is embedded by the text stream alone and compared with every indexed image by one
matmul (exact search); `rerank_top` K re-scores the K best with ViLBERT's pair score (the model's
`pair_score` head, or its alignment head when it has none), reading their regions from the
index's feature store. The model (and, when its regions are read, the store) must be the one the
index was built from: checked by checksum, refused otherwise.

Dimension letters: N indexed images, E embedding width, K re-ranked images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vilbert.core.runtime import evaluating, resolve_device
from vilbert.data.inputs import encode_texts
from vilbert.data.tokenizer import load_tokenizer
from vilbert.features.store import FeatureStore
from vilbert.model import ViLBert, load_pretrained
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_pairs
from vilbert.pipelines.index import ImageIndex
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.tasks.retrieval import RECIPE
from vilbert.viz.grid import draw_image_grid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class SearchRun:
    index: str | Path
    text: str
    top: int = 10
    checkpoint: str | Path | None = None  # default: the model the index records (it must be that model)
    features: str | Path | None = None  # for rerank_top; default: the store the index records
    rerank_top: int | None = None  # re-score the first stage's K best with ViLBERT
    draw: str | Path | None = None  # a PNG of the results
    images: str | Path | None = None  # the images' folder for `draw`; default: the one the index records
    max_text_length: int = RECIPE.max_text_length
    device: str = "auto"


@dataclass
class Hit:
    rank: int
    image_id: str
    score: float  # first-stage cosine similarity
    rerank_score: float | None = None  # ViLBERT's pair score, for the re-ranked ones


@dataclass
class SearchResult:
    hits: list[Hit]
    images: int  # how many the index holds
    seconds: dict[str, float] = field(default_factory=dict)  # embed, search, rerank: where the time went
    drawing: Path | None = None


def _check(run: SearchRun) -> None:
    if not run.text.strip():
        raise ValueError("the query text is empty")
    if run.top < 1:
        raise ValueError(f"--top must be >= 1, got {run.top}")
    if run.rerank_top is not None and run.rerank_top < 1:
        raise ValueError(f"--rerank-top must be >= 1, got {run.rerank_top}")


def load_search_model(index: ImageIndex, checkpoint: str | Path | None, device: str) -> ViLBert:
    """The index's own model (or `checkpoint`, which must be that model), in eval mode."""
    directory = checkpoint if checkpoint is not None else index.info["model"]["path"]
    index.check_model(directory)
    return load_pretrained(directory).to(resolve_device(device)).eval()


def rerank_scores(model: ViLBert, text: TextInputs, store: FeatureStore, ids: list[str], max_regions: int) -> torch.Tensor:
    """ViLBERT's scores [K] of one caption with each of the images `ids`."""
    head = "pair_score" if "pair_score" in model.heads else "alignment"
    regions = store.get_many(ids, max_regions=max_regions)
    images = ImageInputs(regions.features, regions.locations, regions.mask)
    return score_pairs(model, text, images, torch.arange(len(ids)), head, batch_size=len(ids)).cpu()


def search(run: SearchRun, log: Log = stderr_log("vilbert search")) -> SearchResult:
    """The `top` images for `run.text`; see the module docstring."""
    _check(run)
    index = ImageIndex.read(run.index)
    model = load_search_model(index, run.checkpoint, run.device)
    device = next(model.parameters()).device
    ids, types, mask = encode_texts(load_tokenizer(), [run.text], run.max_text_length)
    text = TextInputs(ids, types, mask)
    embeddings = index.embeddings.to(device)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with evaluating(model):
        query = model.embed_text(ids.to(device), types.to(device), mask.to(device), index.info["head"])  # [1,E]
    seconds["embed"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = (embeddings @ query[0].float()).cpu()  # [N]
    depth = min(max(run.top, run.rerank_top or 0), len(scores))
    best = scores.topk(depth)
    seconds["search"] = time.perf_counter() - start
    order = best.indices.tolist()
    hits = [Hit(0, index.image_ids[i], float(scores[i])) for i in order]
    if run.rerank_top is not None:
        features = run.features if run.features is not None else index.info["features"]["path"]
        index.check_store(features)
        start = time.perf_counter()
        k = min(run.rerank_top, len(hits))
        rescored = rerank_scores(model, text, FeatureStore(features), [h.image_id for h in hits[:k]],
                                 index.info["max_regions"])
        for hit, value in zip(hits[:k], rescored.tolist()):
            hit.rerank_score = value
        # The re-ranked ones by ViLBERT's score, above the rest in their first-stage order.
        hits = sorted(hits[:k], key=lambda h: -h.rerank_score) + hits[k:]
        seconds["rerank"] = time.perf_counter() - start
    hits = hits[: run.top]
    for rank, hit in enumerate(hits, 1):
        hit.rank = rank
    result = SearchResult(hits, len(scores), seconds)
    if run.draw is not None:
        result.drawing = draw_hits(run, index, hits)
    return result


def image_file(folder: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{image_id}{suffix}").is_file():
            return folder / f"{image_id}{suffix}"
    raise FileNotFoundError(f"no image file for {image_id!r} in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")


def draw_hits(run: SearchRun, index: ImageIndex, hits: list[Hit]) -> Path:
    folder = run.images if run.images is not None else index.info.get("images")
    if folder is None:
        raise ValueError("--draw needs the images: give --images DIR (or build the index with --images)")
    folder = Path(folder)
    labels = [f"{h.rank}. {h.image_id}\n{h.score:.3f}" + ("" if h.rerank_score is None else f"  ViLBERT {h.rerank_score:.2f}")
              for h in hits]
    return draw_image_grid([image_file(folder, h.image_id) for h in hits], labels, run.text, run.draw)

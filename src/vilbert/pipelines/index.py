"""An image index for retrieval's first stage: `build_index(IndexRun(...))`, which `vilbert index`
calls, and `ImageIndex.read`, which `vilbert search` reads.

The index holds every image of a feature store embedded by the model's visual stream alone (its
contrastive head), so a text query costs one text-stream forward and one matmul over the index.
It is one safetensors file, written atomically: the embeddings [N,E] and, in its metadata, the
image ids, the checksums of the model (weights and config) and of the store it came from, and
the checksum of the embeddings themselves; reading it verifies that last one, and a search
refuses a model or store whose checksum differs from the recorded one.

Exact search: a matmul over 10k x 256 unit vectors takes well under a millisecond on one CPU
core, so a vector library (faiss-cpu is on PyPI) would not pay at these sizes; see
benchmarks/bench_retrieval_two_stage.py.

Dimension letters: N images, E embedding width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from vilbert.core.runtime import evaluating, resolve_device
from vilbert.features.store import FeatureStore
from vilbert.io.atomic import DamagedFileError, atomic_path
from vilbert.io.checksums import file_digest
from vilbert.model import ViLBert, load_pretrained
from vilbert.model.pretrained import CONFIG_NAME, WEIGHTS_NAME
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.pipelines.models import check_fits_store
from vilbert.tasks import TaskData
from vilbert.tasks.contrastive import HEAD

FORMAT = "vilbert-image-index"
VERSION = 1
METADATA_KEY = "vilbert_index"
STORE_FILE = "data.mdb"


@dataclass
class IndexRun:
    model: str | Path  # a saved model directory with a contrastive head (a retrieval fine-tune)
    features: str | Path  # the feature store whose images are indexed
    out: str | Path  # the index file to write (safetensors)
    images: str | Path | None = None  # the images' folder (<id>.png / .jpg), recorded for `search --draw`
    max_regions: int = TaskData.max_regions  # real regions per image, as the model was trained
    batch_size: int = 256  # images per forward
    device: str = "auto"
    progress: bool = True


def model_identity(directory: str | Path) -> dict[str, str]:
    """What identifies a saved model: its directory and the checksums of its weights and config."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved ViLBERT model: {name} is missing")
    return {"path": str(directory.resolve()), "weights": file_digest(directory / WEIGHTS_NAME),
            "config": file_digest(directory / CONFIG_NAME)}


def store_identity(path: str | Path) -> dict[str, str]:
    """What identifies a feature store: its directory and the checksum of its data file."""
    path = Path(path)
    if not (path / STORE_FILE).is_file():
        raise FileNotFoundError(f"no feature store at {path} (expected {path / STORE_FILE})")
    return {"path": str(path.resolve()), "data": file_digest(path / STORE_FILE)}


def _tensor_digest(tensor: torch.Tensor) -> str:
    return "xxh3-128:" + xxhash.xxh3_128_hexdigest(tensor.contiguous().numpy().tobytes())


@dataclass
class ImageIndex:
    """An index read back: unit image embeddings [N,E] and where they came from."""

    path: Path
    embeddings: torch.Tensor  # [N,E] float32
    image_ids: list[str]
    info: dict[str, Any]  # format, model and store identities, max_regions, images folder

    @classmethod
    def read(cls, path: str | Path) -> "ImageIndex":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index at {path} (make one with `vilbert index`)")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                embeddings = f.get_tensor("embeddings")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise DamagedFileError(f"{path} is not a readable index ({type(err).__name__}: {err}); "
                                   "build it again with `vilbert index`") from err
        try:
            info = json.loads(metadata[METADATA_KEY])
        except (KeyError, json.JSONDecodeError) as err:
            raise DamagedFileError(f"{path} is not a vilbert image index (no readable {METADATA_KEY!r} metadata)") from err
        if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
            raise DamagedFileError(f"{path} is not a {FORMAT} version {VERSION} file")
        if _tensor_digest(embeddings) != info.get("embeddings") or len(info.get("image_ids", ())) != len(embeddings):
            raise DamagedFileError(f"{path}: the embeddings do not match their checksum; the index is damaged, "
                                   "build it again with `vilbert index`")
        return cls(path, embeddings, list(info.pop("image_ids")), info)

    def check_model(self, directory: str | Path) -> dict[str, str]:
        """Refuse a model other than the one the index was built from (by checksum)."""
        found, recorded = model_identity(directory), self.info["model"]
        changed = [k for k in ("weights", "config") if found[k] != recorded[k]]
        if changed:
            raise ValueError(f"index {self.path} was built from the model in {recorded['path']}; the model in "
                             f"{directory} differs ({' and '.join(changed)} checksum); use that model or rebuild "
                             "the index with `vilbert index`")
        return found

    def check_store(self, path: str | Path) -> None:
        """Refuse a feature store other than the one the index was built from (by checksum)."""
        found, recorded = store_identity(path), self.info["features"]
        if found["data"] != recorded["data"]:
            raise ValueError(f"index {self.path} was built from the feature store {recorded['path']}; the store "
                             f"{path} differs (its data checksum); use that store or rebuild the index")


def embed_store(model: ViLBert, store: FeatureStore, ids: list[str], max_regions: int, batch_size: int,
                progress: bool = False) -> torch.Tensor:
    """[N,E] unit embeddings of `ids` (visual stream alone), float32 on the CPU."""
    device = next(model.parameters()).device
    parts = []
    with evaluating(model):
        for start in tqdm(range(0, len(ids), batch_size), desc="embedding images", unit="batch", disable=not progress):
            regions = store.get_many(ids[start : start + batch_size], max_regions=max_regions)
            parts.append(model.embed_images(regions.features.to(device), regions.locations.to(device),
                                            regions.mask.to(device), HEAD).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def build_index(run: IndexRun, log: Log = stderr_log("vilbert index")) -> ImageIndex:
    """Embed every image of the store and write the index file (atomically); returns it."""
    identity = model_identity(run.model)
    store_id = store_identity(run.features)
    if run.images is not None and not Path(run.images).is_dir():
        raise FileNotFoundError(f"--images {run.images} is not a folder")
    if run.max_regions < 1 or run.batch_size < 1:
        raise ValueError(f"max_regions and batch_size must be >= 1, got {run.max_regions} and {run.batch_size}")
    model = load_pretrained(run.model).to(resolve_device(run.device))
    store = FeatureStore(run.features)
    check_fits_store(model.config, store.meta, store.path, f"the model in {run.model}")
    ids = store.ids()
    if not ids:
        raise ValueError(f"feature store {run.features} holds no images")
    model.contrastive_head(HEAD)  # a model without the first stage is refused before any work
    embeddings = embed_store(model, store, ids, run.max_regions, run.batch_size, run.progress)
    info = {"format": FORMAT, "version": VERSION, "model": identity, "features": store_id, "head": HEAD,
            "max_regions": run.max_regions, "dim": int(embeddings.shape[1]),
            "images": str(Path(run.images).resolve()) if run.images is not None else None,
            "embeddings": _tensor_digest(embeddings), "image_ids": ids}
    with atomic_path(run.out) as tmp:
        save_file({"embeddings": embeddings}, str(tmp), metadata={METADATA_KEY: json.dumps(info)})
    log(f"indexed {len(ids):,} images of {run.features} ({embeddings.shape[1]}-d) -> {run.out}")
    return ImageIndex.read(run.out)

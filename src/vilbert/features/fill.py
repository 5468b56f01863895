"""Fill a feature store from images, whatever computes the regions: resumable, batched, failures
recorded.

Ids already in the store are skipped, so a rerun adds only what is missing. Each image is
prepared (decoded, its boxes chosen) in DataLoader workers; an image that cannot be prepared is
reported with its path, written to `STORE/failures.jsonl` (the failures of the latest run; a rerun
retries them), and the job goes on. Each batch of regions is committed in one LMDB transaction,
so a killed job keeps every batch it finished.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from vilbert.core.regions import ImageRegions
from vilbert.features.boxes import ImageEntry
from vilbert.features.store import FeatureStoreWriter

FAILURES_FILE = "failures.jsonl"


@dataclass
class Failure:
    image_id: str
    path: str
    error: str


@dataclass
class ExtractReport:
    written: int
    skipped: int
    failed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as OpenCV's imread gives it to the original extraction scripts: 16-bit (and 32-bit
    integer) grey keeps its high byte (PIL's own conversion clips it to white), float grey is
    clipped to 0..255, alpha is dropped, palette, CMYK and the rest convert as PIL does."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or values.max() > 255:
            values = values.clip(0, 65535) >> 8
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def read_rgb(entry: ImageEntry) -> Image.Image:
    """The entry's image as RGB, as a viewer shows it (EXIF orientation applied, as OpenCV's
    imread does; boxes in a boxes file refer to that orientation), checked against the size the
    boxes file gives."""
    with Image.open(entry.path) as img:
        img = to_rgb(ImageOps.exif_transpose(img))
        img.load()
    width, height = img.size
    if entry.width is not None and (entry.width, entry.height) != (width, height):
        raise ValueError(f"image is {width}x{height} but the boxes file says {entry.width}x{entry.height}")
    return img


class _Prepared(torch.utils.data.Dataset):
    """`prepare(entry)` for each entry, in DataLoader workers; a failure is returned, not raised."""

    def __init__(self, entries: Sequence[ImageEntry], prepare: Callable[[ImageEntry], Any]) -> None:
        self.entries, self.prepare = entries, prepare

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Any:
        entry = self.entries[index]
        try:
            return self.prepare(entry)
        except Exception as err:  # noqa: BLE001 - any bad image is recorded, the job goes on
            return Failure(entry.image_id, str(entry.path), f"{type(err).__name__}: {err}")


def _as_list(batch: list) -> list:
    return batch


def fill_store(entries: Sequence[ImageEntry], out: str | Path, meta: dict[str, Any],
               prepare: Callable[[ImageEntry], Any], regions: Callable[[list[Any]], list[ImageRegions]],
               batch_size: int, workers: int = 0, progress: bool = True) -> ExtractReport:
    """Write `regions(prepared batch)` for every entry the store at `out` lacks; see the module
    docstring. `prepare` runs in `workers` processes (it must pickle), `regions` here."""
    out = Path(out)
    with FeatureStoreWriter(out, meta) as writer:
        done = writer.existing_ids()
        todo = [e for e in entries if e.image_id not in done]
        loader = torch.utils.data.DataLoader(_Prepared(todo, prepare), batch_size=batch_size, num_workers=workers,
                                             collate_fn=_as_list)
        written = failed = 0
        start = time.perf_counter()
        with open(out / FAILURES_FILE, "w") as failures, tqdm(
            total=len(todo), unit="img", desc=f"features -> {out.name}", disable=not progress
        ) as bar:
            for batch in loader:
                good = [p for p in batch if not isinstance(p, Failure)]
                for bad in (p for p in batch if isinstance(p, Failure)):
                    tqdm.write(f"vilbert features: skipping {bad.path}: {bad.error}", file=sys.stderr)
                    failures.write(json.dumps(asdict(bad)) + "\n")
                    failures.flush()
                    failed += 1
                if good:
                    written += writer.put_many(regions(good))
                bar.update(len(batch))
        return ExtractReport(written, len(entries) - len(todo), failed, time.perf_counter() - start)

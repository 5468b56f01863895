"""The region feature store: one LMDB record per image, found by id in O(1), no pickle.

Layout (LMDB directory, `data.mdb` + `lock.mdb`):
    b"__meta__"        JSON: format, version, backbone, feature_dim, num_classes, dtype, ...
    b"img/" + id       one record: a 32-byte header, then raw little-endian arrays
                       boxes [N,4] float32 | features [N,D] dtype | cls_prob [N,C] dtype (if C > 0)
                       | scores [N] float32 | objects [N] int32 | attributes [N] int32 (each if flagged)
Header: magic b"VRG1", width, height, N, D, C (uint32), dtype code (uint8: 0 float32, 1 float16),
flags (uint8: 1 scores, 2 objects, 4 attributes, 8 checksummed; 0 in records written before they
existed), then 48 bits of the xxh3-64 hash of the header's first 26 bytes and the arrays.
A detector's class and attribute names are the metadata's `objects_vocab` / `attributes_vocab`.

Reads verify each record's checksum (flipped bits are an error naming the image and the store, not
a silently different number), and opening a store checks that its file holds every page LMDB
expects (a cut-short copy would otherwise kill the process with SIGBUS on the first read).

Records are read with `numpy.frombuffer`; a whole batch is read in one read transaction
(`get_many`). Writes go in transactions of whole images, so a killed job keeps every image it
committed and never leaves a half-written record.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb
import numpy as np
import xxhash

from vilbert.core.regions import ImageRegions, RegionBatch, collate_regions

FORMAT = "vilbert-regions"
VERSION = 1
META_KEY = b"__meta__"
IMAGE_PREFIX = b"img/"
_HEADER = struct.Struct("<4sIIIIIBBHI")  # 32 bytes, keeps the arrays 4-byte aligned
_HASHED = 26  # header bytes covered by the checksum (all but the checksum itself)
FLAGS_OFFSET = 25  # where the flags byte sits in the header
CHECKSUMMED = 8  # flag bit
_MAGIC = b"VRG1"
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_DTYPE_CODES = {"float32": 0, "float16": 1}
_MAP_SIZE = 1 << 40  # virtual address space only; the file grows with its content
# Per-region extras after the arrays: (field, flag bit, dtype).
_EXTRAS = (("scores", 1, np.dtype("<f4")), ("objects", 2, np.dtype("<i4")), ("attributes", 4, np.dtype("<i4")))


class DamagedStoreError(ValueError):
    """A store whose file or record is not what was written; the message says which and what to do."""


def _checksum(header: bytes, body: bytes | memoryview) -> tuple[int, int]:
    """(high 16, low 32) bits of the 48 the header keeps of the record's xxh3-64 hash."""
    digest = xxhash.xxh3_64_intdigest(body, seed=xxhash.xxh3_64_intdigest(header[:_HASHED])) & ((1 << 48) - 1)
    return digest >> 32, digest & 0xFFFFFFFF


class MissingImageError(KeyError):
    """An image id the store does not hold (a KeyError whose message reads well)."""

    def __str__(self) -> str:
        return str(self.args[0])


def encode_record(regions: ImageRegions, dtype: str = "float32") -> bytes:
    """Serialise one image's regions (see the module docstring for the layout)."""
    code = _DTYPE_CODES[dtype]
    np_dtype = _DTYPES[code]
    num_classes = 0 if regions.cls_prob is None else int(regions.cls_prob.shape[1])
    extras = [(getattr(regions, name), dtype) for name, _, dtype in _EXTRAS]
    flags = CHECKSUMMED | sum(bit for (name, bit, _) in _EXTRAS if getattr(regions, name) is not None)
    fields = (_MAGIC, int(regions.width), int(regions.height), regions.num_boxes, int(regions.features.shape[1]),
              num_classes, code, flags)
    parts = [np.ascontiguousarray(regions.boxes, dtype="<f4").tobytes()]
    parts.append(np.ascontiguousarray(regions.features, dtype=np_dtype).tobytes())
    if regions.cls_prob is not None:
        parts.append(np.ascontiguousarray(regions.cls_prob, dtype=np_dtype).tobytes())
    parts += [np.ascontiguousarray(value, dtype=dtype).tobytes() for value, dtype in extras if value is not None]
    body = b"".join(parts)
    high, low = _checksum(_HEADER.pack(*fields, 0, 0), body)
    return _HEADER.pack(*fields, high, low) + body


def decode_record(image_id: str, data: bytes, source: str = "<record>") -> ImageRegions:
    """Parse one record; float16 arrays come back as float32."""
    if len(data) < _HEADER.size:
        raise DamagedStoreError(f"{source}: record for image {image_id!r} is truncated ({len(data)} bytes)")
    magic, width, height, n, d, c, code, flags, high, low = _HEADER.unpack_from(data)
    if magic != _MAGIC or code not in _DTYPES:
        raise DamagedStoreError(f"{source}: record for image {image_id!r} is not a vilbert region record")
    dtype = _DTYPES[code]
    present = [(name, extra) for name, bit, extra in _EXTRAS if flags & bit]
    expected = _HEADER.size + n * 16 + n * (d + c) * dtype.itemsize + sum(n * extra.itemsize for _, extra in present)
    if len(data) != expected:
        raise DamagedStoreError(f"{source}: record for image {image_id!r} has {len(data)} bytes, expected {expected}")
    if flags & CHECKSUMMED and _checksum(bytes(data[:_HASHED]), memoryview(data)[_HEADER.size:]) != (high, low):
        raise DamagedStoreError(f"{source}: the record of image {image_id!r} does not match its checksum (damaged "
                                "on disk or in a copy); extract that image again, or restore the store")
    offset = _HEADER.size
    boxes = np.frombuffer(data, "<f4", n * 4, offset).reshape(n, 4).copy()
    offset += n * 16
    features = np.frombuffer(data, dtype, n * d, offset).reshape(n, d).astype(np.float32)
    offset += n * d * dtype.itemsize
    cls_prob = np.frombuffer(data, dtype, n * c, offset).reshape(n, c).astype(np.float32) if c else None
    offset += n * c * dtype.itemsize
    extras = {}
    for name, extra in present:
        extras[name] = np.frombuffer(data, extra, n, offset).astype(extra.newbyteorder("="))
        offset += n * extra.itemsize
    return ImageRegions(image_id, int(width), int(height), boxes, features, cls_prob, **extras)


# One read-only environment per store path and process. py-lmdb refuses to open the same files
# twice in one process, so every FeatureStore of a path shares this handle; after a fork the
# child closes its inherited copy (LMDB handles must not cross fork) and opens its own.
_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}


def _shared_env(path: Path) -> lmdb.Environment:
    key = str(path.resolve())
    entry = _ENVS.get(key)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    if entry is not None:
        # Without a lock file (lock=False), closing the child's copy only unmaps child memory.
        entry[1].close()
    # lock=False: readers never write; readahead=False: access is random.
    try:
        env = lmdb.open(key, readonly=True, lock=False, readahead=False, max_readers=512, subdir=True)
    except lmdb.Error as err:
        raise DamagedStoreError(f"cannot open the feature store {path}: {err}") from err
    _check_complete(path, env)
    _ENVS[key] = (os.getpid(), env)
    return env


def _check_complete(path: Path, env: lmdb.Environment) -> None:
    """The data file must hold every page up to the last one LMDB uses: reading a page past the
    end of a cut-short file is a SIGBUS, not an exception."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < needed:
        env.close()
        raise DamagedStoreError(f"feature store {path} is damaged: data.mdb holds {size} bytes but its pages "
                                f"need {needed} (a copy cut short?); restore it, or delete it and extract again")


def _close_shared(path: Path) -> None:
    entry = _ENVS.pop(str(path.resolve()), None)
    if entry is not None:
        entry[1].close()


def _check_finite(regions: ImageRegions, store: Path) -> None:
    """No NaN or infinity goes into a store: it would come out as a NaN loss that names nothing."""
    for name in ("boxes", "features", "cls_prob", "scores"):
        value = getattr(regions, name)
        if value is not None and not np.isfinite(value).all():
            row = int(np.argwhere(~np.isfinite(value))[0][0])
            raise ValueError(f"image {regions.image_id!r}: {name} of region {row} is not finite; "
                             f"not written to {store}")


def _image_key(image_id: str) -> bytes:
    return IMAGE_PREFIX + str(image_id).encode("utf-8")


class FeatureStore:
    """Read-only access to a region feature store.

    `store[image_id] -> ImageRegions`, `image_id in store`, `len(store)`, `store.ids()`,
    `store.meta`, and `store.get_many(ids)` for model-ready padded tensors. The LMDB environment
    is opened lazily and reopened after a fork, so a store can be handed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(f"no feature store at {self.path} (expected {self.path / 'data.mdb'})")
        self.meta: dict[str, Any] = self._read_meta()

    def _environment(self) -> lmdb.Environment:
        return _shared_env(self.path)

    def _read_meta(self) -> dict[str, Any]:
        with self._environment().begin() as txn:
            raw = txn.get(META_KEY)
        if raw is None:
            raise ValueError(f"{self.path} is an LMDB without vilbert region metadata (key {META_KEY!r})")
        try:
            meta = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DamagedStoreError(f"{self.path}: the store's metadata is not JSON ({err}); the store is damaged") from err
        if not isinstance(meta, dict):
            raise DamagedStoreError(f"{self.path}: the store's metadata is a {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: format {meta.get('format')!r} is not {FORMAT!r}")
        return meta

    def __len__(self) -> int:
        return int(self._environment().stat()["entries"]) - 1  # every entry but the metadata

    def __contains__(self, image_id: object) -> bool:
        with self._environment().begin() as txn:
            return txn.get(_image_key(str(image_id))) is not None

    def ids(self) -> list[str]:
        """All image ids, in key order."""
        out = []
        with self._environment().begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(IMAGE_PREFIX):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(IMAGE_PREFIX):
                        break
                    out.append(key[len(IMAGE_PREFIX):].decode("utf-8"))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def _missing(self, image_id: str) -> MissingImageError:
        first = ", ".join(self.ids()[:5])
        return MissingImageError(
            f"image {image_id!r} has no features in store {self.path} ({len(self)} images; first ids: {first})"
        )

    def _get(self, txn: lmdb.Transaction, image_id: str) -> ImageRegions:
        try:
            raw = txn.get(_image_key(image_id))
        except lmdb.Error as err:
            raise DamagedStoreError(f"feature store {self.path} is damaged (reading image {image_id!r}: {err}); "
                                    "restore it, or delete it and extract again") from err
        if raw is None:
            raise self._missing(image_id)
        return decode_record(image_id, raw, str(self.path))

    def __getitem__(self, image_id: str | int) -> ImageRegions:
        with self._environment().begin() as txn:
            return self._get(txn, str(image_id))

    def get_regions(self, ids: Iterable[str | int]) -> list[ImageRegions]:
        """Several images' regions in one read transaction."""
        with self._environment().begin() as txn:
            return [self._get(txn, str(i)) for i in ids]

    def get_many(self, ids: Iterable[str | int], max_regions: int | None = None) -> RegionBatch:
        """Model-ready padded tensors for `ids`: a `RegionBatch` (features [B,R,D] with the [IMG]
        row first, locations [B,R,5], mask [B,R], cls_prob [B,R,C] or None)."""
        return collate_regions(self.get_regions(ids), max_regions=max_regions)

    def close(self) -> None:
        """Close this process's handle on the store (shared by every FeatureStore of this path;
        the next read reopens it)."""
        _close_shared(self.path)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, images={len(self)}, backbone={self.meta.get('backbone')!r})"


# Metadata keys that must agree when a job appends to an existing store.
_COMPATIBLE_KEYS = ("backbone", "feature_dim", "num_classes", "dtype", "image_size", "stride", "weights_checksum",
                    "detector_config")


class FeatureStoreWriter:
    """Create or append to a store. `put_many` commits whole images in one transaction."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        if meta.get("dtype", "float32") not in _DTYPE_CODES:
            raise ValueError(f"store dtype {meta.get('dtype')!r} is not one of {sorted(_DTYPE_CODES)}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        _close_shared(self.path)  # a reader's handle in this process would block the open
        try:
            self._env = lmdb.open(str(self.path), map_size=_MAP_SIZE, subdir=True, readahead=False)
        except lmdb.Error as err:
            raise DamagedStoreError(f"cannot open the feature store {self.path} for writing: {err}") from err
        _check_complete(self.path, self._env)
        self.meta = {"format": FORMAT, "version": VERSION, "dtype": "float32", **meta}
        with self._env.begin(write=True) as txn:
            raw = txn.get(META_KEY)
            if raw is not None:
                try:
                    existing = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise DamagedStoreError(f"{self.path}: the store's metadata is not JSON ({err})") from err
                self._check_compatible(existing)
            else:
                txn.put(META_KEY, json.dumps(self.meta).encode("utf-8"))

    def _check_compatible(self, existing: dict[str, Any]) -> None:
        for key in _COMPATIBLE_KEYS:
            if key in self.meta and existing.get(key) != self.meta[key]:
                raise ValueError(
                    f"store {self.path} holds {key}={existing.get(key)!r} but this job writes "
                    f"{key}={self.meta[key]!r}; use another --out or the same settings"
                )
        self.meta = existing

    def __contains__(self, image_id: object) -> bool:
        with self._env.begin() as txn:
            return txn.get(_image_key(str(image_id))) is not None

    def existing_ids(self) -> set[str]:
        with self._env.begin() as txn:
            cursor = txn.cursor()
            out: set[str] = set()
            if cursor.set_range(IMAGE_PREFIX):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(IMAGE_PREFIX):
                        break
                    out.add(key[len(IMAGE_PREFIX):].decode("utf-8"))
        return out

    def put_many(self, regions: Iterable[ImageRegions]) -> int:
        """Write images (replacing any with the same id) in one transaction; returns the count."""
        dtype = self.meta["dtype"]
        regions = list(regions)
        for r in regions:
            _check_finite(r, self.path)
        records = [(_image_key(r.image_id), encode_record(r, dtype)) for r in regions]
        self._check_dims(records)
        with self._env.begin(write=True) as txn:
            for key, value in records:
                txn.put(key, value)
        return len(records)

    def _check_dims(self, records: list[tuple[bytes, bytes]]) -> None:
        want_d, want_c = self.meta.get("feature_dim"), self.meta.get("num_classes")
        for key, value in records:
            _, _, _, _, d, c, _, _, _, _ = _HEADER.unpack_from(value)
            if (want_d is not None and d != want_d) or (want_c is not None and c != want_c):
                raise ValueError(
                    f"image {key[len(IMAGE_PREFIX):].decode()!r} has feature dim {d} and {c} classes; "
                    f"store {self.path} expects {want_d} and {want_c}"
                )

    def close(self) -> None:
        self._env.sync()
        self._env.close()

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The LMDB region store: round trip, float16, lookups, errors, batch reads."""

import os

import numpy as np
import pytest
import torch

from vilbert.core.regions import ImageRegions
from vilbert.features.store import DamagedStoreError, FeatureStore, FeatureStoreWriter, MissingImageError


def _regions(image_id: str, n: int, d: int = 6, c: int | None = 4, seed: int = 0) -> ImageRegions:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    cls = None if c is None else rng.dirichlet(np.ones(c), n).astype(np.float32)
    return ImageRegions(image_id, 100, 80, boxes, rng.normal(size=(n, d)).astype(np.float32), cls)


def _write(path, items, dtype="float32", d=6, c=4):
    with FeatureStoreWriter(path, {"backbone": "test", "feature_dim": d, "num_classes": c, "dtype": dtype}) as w:
        w.put_many(items)


def test_round_trip_float32(tmp_path):
    items = [_regions("1", 3, seed=1), _regions("img two", 12, seed=2)]
    _write(tmp_path / "s", items)
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 2 and sorted(store.ids()) == ["1", "img two"]
    assert "1" in store and 1 in store and "3" not in store
    got = store[1]
    assert (got.width, got.height) == (100, 80)
    for field in ("boxes", "features", "cls_prob"):
        np.testing.assert_array_equal(getattr(got, field), getattr(items[0], field))
        assert getattr(got, field).dtype == np.float32
    assert store.meta["backbone"] == "test" and store.meta["feature_dim"] == 6


def test_float16_storage_is_smaller_and_close(tmp_path):
    items = [_regions(str(i), 36, d=256, c=None, seed=i) for i in range(4)]
    _write(tmp_path / "a", items, d=256, c=0)
    _write(tmp_path / "b", items, "float16", d=256, c=0)
    a, b = FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")
    assert b.meta["dtype"] == "float16" and b["2"].cls_prob is None
    np.testing.assert_allclose(b["2"].features, a["2"].features, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(b["2"].boxes, a["2"].boxes)  # boxes stay float32
    sizes = [sum(len(txn_v) for _, txn_v in s._environment().begin().cursor()) for s in (a, b)]
    assert sizes[1] < 0.6 * sizes[0]


def test_missing_id_names_id_and_store(tmp_path):
    _write(tmp_path / "s", [_regions("7", 2)])
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(MissingImageError, match=r"image '8' has no features in store .*s \(1 images; first ids: 7\)"):
        store.get_many(["7", "8"])
    with pytest.raises(KeyError):
        store["8"]


def test_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore(tmp_path / "nothing")


def test_append_checks_compatible_meta(tmp_path):
    _write(tmp_path / "s", [_regions("1", 2)])
    with pytest.raises(ValueError, match="feature_dim=6 but this job writes feature_dim=8"):
        FeatureStoreWriter(tmp_path / "s", {"backbone": "test", "feature_dim": 8, "num_classes": 4})
    with FeatureStoreWriter(tmp_path / "s", {"backbone": "test", "feature_dim": 6, "num_classes": 4}) as w:
        with pytest.raises(ValueError, match="image 'x' has feature dim 5"):
            w.put_many([_regions("x", 2, d=5)])
        w.put_many([_regions("2", 4)])
    assert sorted(FeatureStore(tmp_path / "s").ids()) == ["1", "2"]


def test_get_many_is_model_ready(tmp_path):
    items = [_regions("a", 2, seed=3), _regions("b", 5, seed=4)]
    _write(tmp_path / "s", items)
    batch = FeatureStore(tmp_path / "s").get_many(["b", "a"])
    features, locations, mask = batch
    assert features.shape == (2, 6, 6) and locations.shape == (2, 6, 5) and mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    torch.testing.assert_close(features[1, 0], torch.from_numpy(items[0].features.mean(0)))
    assert batch.cls_prob.shape == (2, 6, 4)
    torch.testing.assert_close(batch.cls_prob[0, 1:].sum(-1), torch.ones(5))


def test_store_reopens_after_fork(tmp_path):
    import multiprocessing as mp

    _write(tmp_path / "s", [_regions("1", 2)])
    store = FeatureStore(tmp_path / "s")
    store["1"]  # open in the parent first
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_count_boxes, (store,)) == 2


def _count_boxes(store):
    return store["1"].num_boxes


def test_two_readers_and_a_writer_in_one_process(tmp_path):
    _write(tmp_path / "s", [_regions("1", 2)])
    first, second = FeatureStore(tmp_path / "s"), FeatureStore(tmp_path / "s")
    assert first["1"].num_boxes == second["1"].num_boxes == 2
    _write(tmp_path / "s", [_regions("2", 3)])  # appending while readers exist in this process
    assert len(first) == len(second) == 2 and second["2"].num_boxes == 3


def test_dataloader_workers_read_the_store(tmp_path):
    _write(tmp_path / "s", [_regions(str(i), i + 1, seed=i) for i in range(4)])
    store = FeatureStore(tmp_path / "s")
    store["0"]
    loader = torch.utils.data.DataLoader(store.ids(), batch_size=2, num_workers=2, collate_fn=store.get_many)
    counts = [int(b.mask.sum()) for b in loader]
    assert counts == [2 + 3, 4 + 5]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_detector_extras_round_trip_and_older_records_read(tmp_path, dtype):
    """A detector's per-region score, class and attribute survive the store; a record without
    them (every record written before they existed) reads with None there."""
    base = _regions("1", 5, seed=3)
    rng = np.random.default_rng(4)
    full = ImageRegions(base.image_id, base.width, base.height, base.boxes, base.features, base.cls_prob,
                        scores=rng.uniform(0, 1, 5).astype(np.float32), objects=np.arange(5, dtype=np.int32) * 7,
                        attributes=np.array([0, 399, 3, 2, 1], dtype=np.int32))
    partial = ImageRegions("2", 100, 80, base.boxes[:2], base.features[:2], base.cls_prob[:2],
                           objects=np.array([1, 2], dtype=np.int32))
    _write(tmp_path / "s", [full, partial, _regions("3", 2, seed=5)], dtype=dtype)
    store = FeatureStore(tmp_path / "s")
    got = store["1"]
    np.testing.assert_array_equal(got.scores, full.scores)
    assert got.objects.tolist() == full.objects.tolist() and got.attributes.tolist() == full.attributes.tolist()
    assert got.objects.dtype == np.int32
    assert store["2"].objects.tolist() == [1, 2] and store["2"].scores is None and store["2"].attributes is None
    plain = store["3"]
    assert plain.scores is None and plain.objects is None and plain.attributes is None
    with pytest.raises(ValueError, match=r"objects \(3,\) must be \[2\]"):
        ImageRegions("x", 10, 10, base.boxes[:2], base.features[:2], objects=np.zeros(3, np.int32))


def test_flipped_bytes_in_a_record_are_an_error_naming_the_image(tmp_path):
    items = [_regions(str(i), 8, d=64, c=16, seed=i) for i in range(4)]
    _write(tmp_path / "s", items, d=64, c=16)
    data = tmp_path / "s" / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(items[2].features.tobytes()[:64])  # image "2"'s features, as LMDB keeps them
    assert at > 0
    raw[at + 100 : at + 108] = bytes(b ^ 0xFF for b in raw[at + 100 : at + 108])
    data.write_bytes(bytes(raw))
    store = FeatureStore(tmp_path / "s")
    np.testing.assert_array_equal(store["1"].features, items[1].features)  # the others read as written
    with pytest.raises(DamagedStoreError, match=r"image '2' does not match its checksum"):
        store["2"]
    with pytest.raises(DamagedStoreError, match=str(tmp_path / "s")):
        store.get_many(["1", "2"])


def test_a_store_cut_short_is_refused_on_open_not_a_sigbus(tmp_path):
    _write(tmp_path / "s", [_regions(str(i), 36, d=256, c=None, seed=i) for i in range(40)], d=256, c=0)
    data = tmp_path / "s" / "data.mdb"
    os.truncate(data, data.stat().st_size - 4096)  # one page short
    with pytest.raises(DamagedStoreError, match=r"is damaged: data.mdb holds \d+ bytes but its pages need"):
        FeatureStore(tmp_path / "s")
    with pytest.raises(DamagedStoreError, match="is damaged"):
        FeatureStoreWriter(tmp_path / "s", {"backbone": "test", "feature_dim": 256, "num_classes": 0})


def test_non_finite_regions_are_not_written(tmp_path):
    bad = _regions("7", 3)
    bad.boxes[1, 2] = np.nan
    with pytest.raises(ValueError, match="image '7': boxes of region 1 is not finite"):
        _write(tmp_path / "s", [_regions("1", 2), bad])
    assert "1" not in FeatureStore(tmp_path / "s")  # the batch is one transaction: nothing of it written

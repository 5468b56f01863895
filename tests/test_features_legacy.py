"""Importing the original code's pickled feature LMDBs, and refusing malicious pickles."""

import base64
import os
import pickle

import lmdb
import numpy as np
import pytest

from vilbert.cli.features import main as features_main
from vilbert.features.legacy import import_legacy
from vilbert.features.store import FeatureStore
from vilbert.io.safe_pickle import UnsafePickleError


def _record(image_id, n, rng, with_cls=True, b64=False):
    boxes = rng.uniform(0, 300, (n, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + 20
    features = rng.normal(size=(n, 2048)).astype(np.float32)
    item = {"image_id": image_id, "image_h": 480, "image_w": 640, "num_boxes": n,
            "boxes": boxes, "features": features}
    if b64:  # the layout some original readers expect: base64 of the float32 bytes
        item["boxes"] = base64.b64encode(boxes.tobytes())
        item["features"] = base64.b64encode(features.tobytes())
    if with_cls:
        item["cls_prob"] = rng.dirichlet(np.ones(1601), n).astype(np.float32)
    return item


def _write_original(path, items, keys=None):
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for item in items:
            txn.put(str(item["image_id"]).encode(), pickle.dumps(item))
        ids = keys if keys is not None else [str(i["image_id"]).encode() for i in items]
        txn.put(b"keys", pickle.dumps(ids))
    env.close()


def test_import_original_lmdb_and_resume(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = [_record(9, 10, rng), _record(1234, 36, rng), _record(77, 5, rng, b64=False)]
    _write_original(tmp_path / "orig.lmdb", items[:2])
    out = tmp_path / "ours"
    assert features_main(["--import-legacy", str(tmp_path / "orig.lmdb"), "--out", str(out), "--no-progress"]) == 0
    assert "imported 2 images" in capsys.readouterr().out
    store = FeatureStore(out)
    assert sorted(store.ids()) == ["1234", "9"]
    got = store[1234]
    assert (got.width, got.height) == (640, 480)
    np.testing.assert_array_equal(got.features, items[1]["features"])
    np.testing.assert_array_equal(got.boxes, items[1]["boxes"])
    np.testing.assert_array_equal(got.cls_prob, items[1]["cls_prob"])
    assert store.meta["feature_dim"] == 2048 and store.meta["num_classes"] == 1601
    batch = store.get_many(["9", "1234"])
    assert batch.features.shape == (2, 37, 2048) and batch.mask.sum().item() == 11 + 37
    # The original grows: a rerun imports only the new image.
    _write_original(tmp_path / "orig.lmdb", items)
    assert import_legacy(tmp_path / "orig.lmdb", out, progress=False) == 1
    assert len(FeatureStore(out)) == 3


def test_import_base64_layout_without_cls_prob(tmp_path):
    rng = np.random.default_rng(1)
    item = _record("COCO_val2014_000000000042", 7, rng, with_cls=False, b64=True)
    _write_original(tmp_path / "orig.lmdb", [item], keys=[item["image_id"]])  # str keys are fine too
    import_legacy(tmp_path / "orig.lmdb", tmp_path / "ours", fp16=True, progress=False)
    got = FeatureStore(tmp_path / "ours")["COCO_val2014_000000000042"]
    expected = np.frombuffer(base64.b64decode(item["features"]), np.float32).reshape(7, 2048)
    np.testing.assert_allclose(got.features, expected, rtol=1e-3, atol=1e-3)
    assert got.cls_prob is None and got.boxes.shape == (7, 4)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(2)
    item = _record(5, 3, rng)
    item["extra"] = _Exploit()
    _write_original(tmp_path / "orig.lmdb", [item])
    with pytest.raises(UnsafePickleError, match=r"orig.lmdb\[5\]: refusing to unpickle (posix|os)\.system"):
        import_legacy(tmp_path / "orig.lmdb", tmp_path / "ours", progress=False)
    assert features_main(["--import-legacy", str(tmp_path / "orig.lmdb"), "--out", str(tmp_path / "o")]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_not_an_original_lmdb(tmp_path, capsys):
    env = lmdb.open(str(tmp_path / "other.lmdb"))
    env.close()
    assert features_main(["--import-legacy", str(tmp_path / "other.lmdb"), "--out", str(tmp_path / "o")]) == 2
    assert "no b'keys' entry" in capsys.readouterr().err

"""The allow-list unpickler: plain data of every protocol loads; code, unknown globals, calls that
ask for too much and things that are not pickles are refused with an error naming the source."""

import os
import pickle

import numpy as np
import pytest

from vilbert.io.safe_pickle import MAX_ELEMENTS, UnsafePickleError, safe_loads

DATA = {"features": np.arange(12, dtype=np.float32).reshape(3, 4), "image_id": 7, "name": "x", "raw": b"\x00\xff",
        "boxes": [(1.0, 2.0), (3.0, 4.0)], "kinds": {"a", "b"}, "none": None, "scalar": np.float64(2.5)}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_of_every_protocol_loads(protocol):
    # protocol 2 from Python 3 stores bytes through _codecs.encode (numpy array data included)
    out = safe_loads(pickle.dumps(DATA, protocol=protocol), "record")
    np.testing.assert_array_equal(out["features"], DATA["features"])
    assert {k: v for k, v in out.items() if k != "features"} == {k: v for k, v in DATA.items() if k != "features"}


class _Call:
    """Pickles as a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as f
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as f
    return f


@pytest.mark.parametrize("payload, message", [
    (_Call(os.system, "true"), "refusing to unpickle posix.system"),
    (_Call(list, range(10**9)), "refusing to unpickle builtins.range"),  # the 36 GB list of the issue
    (_Call(bytes, 10**10), r"refusing bytes\(...\) asking for 10,000,000,000 elements"),
    (_Call(bytearray, MAX_ELEMENTS + 1), "asking for"),
    (_Call(_reconstruct(), np.ndarray, (10**6, 10**6), b"b"), "asking for 1,000,000,000,000 elements"),
])
def test_code_and_bombs_are_refused_naming_the_source(payload, message):
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(UnsafePickleError, match=message) as err:
            safe_loads(pickle.dumps(payload, protocol=protocol), "store.lmdb[42]")
        assert str(err.value).startswith("store.lmdb[42]: ")


@pytest.mark.parametrize("data", [b"", b"not a pickle", b"\x80\x04\x95", pickle.dumps(DATA)[:-20]])
def test_what_is_not_a_pickle_is_a_named_error(data):
    with pytest.raises(UnsafePickleError, match=r"^refs\(unc\).p: not a readable data pickle"):
        safe_loads(data, "refs(unc).p")

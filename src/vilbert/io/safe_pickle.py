"""Load pickles written by other people's code without letting them run code.

The original ViLBERT feature LMDBs and the RefCOCO+ `refs(unc).p` file are pickles. A pickle can
name any importable callable and have it called on load, so we unpickle with an allow-list: the
builtin containers and scalars, and numpy arrays / dtypes / scalars (which is all those files hold).
Anything else is refused with an error naming the global it asked for and the file it came from.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# (module, name) pairs the unpickler may resolve. numpy moved `multiarray` under `_core` in 2.0;
# files written by numpy 1.x name the old path, so both are allowed.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
        ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "bytearray"),
        ("builtins", "slice"), ("builtins", "range"),
        ("collections", "OrderedDict"), ("collections", "defaultdict"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ]
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1 lets Python 3 read numpy arrays pickled by Python 2 (the original code's era).
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle {module}.{name}; only plain containers, scalars and "
            "numpy arrays are allowed in data files (a pickle can run arbitrary code when loaded)"
        )


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, allowing only plain data types; `source` names it in errors."""
    return _RestrictedUnpickler(io.BytesIO(data), source).load()


def safe_load_file(path: str) -> Any:
    """Unpickle the file at `path` with the same allow-list as `safe_loads`."""
    with open(path, "rb") as handle:
        return _RestrictedUnpickler(handle, str(path)).load()  # type: ignore[arg-type]

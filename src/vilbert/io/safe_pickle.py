"""Load pickles written by other people's code without letting them run code or exhaust memory.

The original ViLBERT feature LMDBs, the RefCOCO+ `refs(unc).p` file, VQA answer lists and the
detectron2 weight files are pickles. A pickle can name any importable callable and have it called
on load, so we unpickle with an allow-list: the builtin containers and scalars, and numpy arrays /
dtypes / scalars (which is all those files hold). Anything else is refused with an error naming the
global it asked for and the file it came from.

Allowed callables can still be asked for too much (`bytes(10**10)`, an array of 10**12 elements),
so every call the pickle makes is checked first: no integer argument, container or array shape
above `MAX_ELEMENTS`. The pure-Python unpickler makes the calls visible; the files are small or
hold few, large arrays, so it costs little. Any failure while loading is an `UnsafePickleError`
naming the source.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
import struct
from typing import Any, Callable

# The most elements any one call of the pickle may ask for (a legacy record holds ~200,000
# floats, a detectron2 weight file arrays of a few million).
MAX_ELEMENTS = 100_000_000

# (module, name) pairs the unpickler may resolve. numpy moved `multiarray` under `_core` in 2.0;
# files written by numpy 1.x name the old path, so both are allowed. `_codecs.encode` is how a
# protocol-2 pickle written by Python 3 stores bytes (numpy array data included).
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
        ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("collections", "OrderedDict"), ("collections", "defaultdict"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
        ("_codecs", "encode"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ]
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list, for too much, or is not a pickle."""


_ARRAY_BUILDERS = ("_reconstruct", "ndarray", "_frombuffer")  # numpy callables taking a shape


def _requested(name: str, args: tuple) -> int:
    """The most elements a call asks to allocate: an integer argument (`bytes(n)`), or for numpy's
    array builders the product of a shape. What the pickle itself holds is already paid for."""
    sizes = [abs(a) for a in args if isinstance(a, int) and not isinstance(a, bool)]
    if name in _ARRAY_BUILDERS:
        sizes += [math.prod(abs(v) for v in a) for a in args
                  if isinstance(a, tuple) and a and all(isinstance(v, int) for v in a)]
    return max(sizes, default=0)


class _RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its calls can be checked
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1 lets Python 3 read numpy arrays pickled by Python 2 (the original code's era).
        super().__init__(file, encoding="latin1")
        self._source = source
        self.dispatch = dict(pickle._Unpickler.dispatch)
        self.dispatch[pickle.REDUCE[0]] = _RestrictedUnpickler._reduce
        self.dispatch[pickle.NEWOBJ[0]] = _RestrictedUnpickler._newobj
        self.dispatch[pickle.NEWOBJ_EX[0]] = _RestrictedUnpickler._newobj_ex

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 names (__builtin__.set, copy_reg) as pickle itself maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle {module}.{name}; only plain containers, scalars and "
            "numpy arrays are allowed in data files (a pickle can run arbitrary code when loaded)"
        )

    def _check_call(self, func: Callable, args: tuple, kwargs: dict | None = None) -> None:
        name = getattr(func, "__qualname__", repr(func))
        if name == "_reconstructor" and (len(args) < 2 or args[1] is not object):
            raise UnsafePickleError(f"{self._source}: refusing copyreg._reconstructor on {args[1:2]!r} "
                                    "(only plain objects are rebuilt this way)")
        asked = _requested(name, (*args, *(kwargs or {}).values()))
        if asked > MAX_ELEMENTS:
            raise UnsafePickleError(f"{self._source}: refusing {name}(...) asking for {asked:,} elements "
                                    f"(at most {MAX_ELEMENTS:,} in a data file)")

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_call(func, args)
        self.stack[-1] = func(*args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args)
        self.append(cls.__new__(cls, *args))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_call(cls, args, kwargs)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: tuple) -> None:  # protocol 0/1 INST and OBJ
        self._check_call(klass, tuple(args))
        super()._instantiate(klass, args)

    def load(self) -> Any:
        try:
            return super().load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                MemoryError, OverflowError, UnicodeDecodeError, RecursionError, struct.error) as err:
            raise UnsafePickleError(f"{self._source}: not a readable data pickle ({type(err).__name__}: {err})") from err


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data`, allowing only plain data types; `source` names it in errors."""
    return _RestrictedUnpickler(io.BytesIO(data), source).load()


def safe_load_file(path: str) -> Any:
    """Unpickle the file at `path` with the same allow-list as `safe_loads`."""
    with open(path, "rb") as handle:
        return _RestrictedUnpickler(handle, str(path)).load()  # type: ignore[arg-type]

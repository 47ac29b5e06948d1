"""TGB's negative-sample pickles, read without running arbitrary code.

TGB publishes its evaluation negatives as ``pickle.dump(d, f, protocol=pickle.HIGHEST_PROTOCOL)`` of a
dict ``{(src, dst, t): ndarray of negative destination ids}`` whose keys are numpy scalars
(``tgb/utils/utils.py`` ``save_pkl``). ``pickle.load`` on a downloaded file runs whatever callable the
file names; :class:`RestrictedUnpickler` admits only the few numpy globals that rebuild arrays,
scalars and dtypes, and refuses anything else (``os.system``, ``builtins.eval``...) with a
:class:`~disttgl.errors.DataError` naming the file and the global, before it is called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from disttgl.atomic import atomic_path
from disttgl.errors import DataError

# (module, name) pairs numpy's own __reduce__ emits for ndarray, numpy scalars and dtypes; numpy 1.x
# pickles say ``numpy.core``, numpy 2.x ``numpy._core``.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` resolves only numpy's array/scalar/dtype rebuilders."""

    def __init__(self, file: io.BufferedIOBase, path: str | os.PathLike):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(self._path, f"refused to unpickle the global {module}.{name}: a TGB negatives "
                                        "pickle holds only numpy arrays and scalars")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 moved it
        return super().find_class(module, name)


def load_tgb_negatives_pickle(path: str | os.PathLike) -> dict[tuple[int, int, int], np.ndarray]:
    """Load a TGB negatives pickle safely; keys become ``(int, int, int)``, values int64 arrays."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "TGB negatives pickle does not exist")
    try:
        with open(p, "rb") as fh:
            obj = RestrictedUnpickler(fh, p).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as exc:
        raise DataError(p, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(p, f"expected a dict {{(src, dst, t): negatives}}, found {type(obj).__name__}")
    out: dict[tuple[int, int, int], np.ndarray] = {}
    for key, value in obj.items():
        if not (isinstance(key, tuple) and len(key) == 3):
            raise DataError(p, f"key {key!r} is not a (src, dst, t) triple")
        try:
            k = tuple(int(x) for x in key)
        except (TypeError, ValueError):
            raise DataError(p, f"key {key!r} holds non-integer values") from None
        a = np.asarray(value)
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            raise DataError(p, f"negatives of key {k} are {a.dtype} {a.shape}, expected a 1-d numeric array")
        ints = a.astype(np.int64)
        if a.dtype.kind == "f" and not np.array_equal(ints, a):
            raise DataError(p, f"negatives of key {k} hold non-integer ids")
        out[k] = ints  # TGB's arrays are float64 where a source had no history (np.array([]) concatenated)
    return out


def save_tgb_negatives_pickle(path: str | os.PathLike,
                              mapping: Mapping[tuple[int, int, int], np.ndarray]) -> None:
    """Write ``mapping`` as TGB does (numpy int64 scalar keys, ``HIGHEST_PROTOCOL``), atomically."""
    obj = {(np.int64(s), np.int64(d), np.int64(t)): np.asarray(v, dtype=np.int64)
           for (s, d, t), v in mapping.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)

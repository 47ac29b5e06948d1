"""String node ids as integer codes, computed in polars: no Python object per event.

``Series.to_numpy()`` of a string column gives one Python ``str`` per row (~60-90 bytes each, and
a pointer); a stream of 100M events would hold 200M of them. :func:`string_codes` instead maps
both id columns onto one sorted table of the distinct ids (one Python ``str`` per node) and returns
the events as int64 codes into it. Sorted in code-point order (polars sorts UTF-8 bytes, which
orders as code points), so compacting the codes numbers nodes exactly as ``np.unique`` over the
strings did.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def string_codes(src: pl.Series, dst: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src codes int64 [E], dst codes int64 [E], names object [M]): ``names[code]`` is the id.

    Args:
        src: the source id column (strings).
        dst: the destination id column (strings).
    """
    src, dst = src.cast(pl.String), dst.cast(pl.String)
    names = pl.concat([src, dst]).unique().sort()
    enum = pl.Enum(names)

    def codes(s: pl.Series) -> np.ndarray:
        return s.cast(enum).to_physical().to_numpy().astype(np.int64)

    return codes(src), codes(dst), names.to_numpy().astype(object)

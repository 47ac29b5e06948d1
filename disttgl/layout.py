"""The i x j x k layout (docs/design.md §5.1): a value the training configuration, the workflow's
checks, the schedule and the report all name, so it sits below every stage."""

from __future__ import annotations

from dataclasses import dataclass

from disttgl.errors import DataError


@dataclass(frozen=True)
class Layout:
    i: int
    j: int
    k: int

    def __post_init__(self) -> None:
        for name in ("i", "j", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallelism {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def parse(cls, text: str) -> "Layout":
        """``"2x1x1"`` (or ``"2"``, meaning 2x1x1) -> Layout(2, 1, 1)."""
        parts = text.lower().replace(" ", "").split("x")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"parallelism must look like IxJxK (e.g. 2x1x1), got {text!r}")
        vals = [int(p) for p in parts] + [1] * (3 - len(parts))
        return cls(*vals)

    def __str__(self) -> str:
        return f"{self.i}x{self.j}x{self.k}"

    @property
    def world(self) -> int:
        return self.i * self.j * self.k

    def copy(self, rank: int) -> int:
        return rank // (self.i * self.j)

    def slot(self, rank: int) -> int:
        return (rank % (self.i * self.j)) // self.i

    def offset(self, rank: int) -> int:
        return rank % self.i

    def ranks_of(self, copy: int, slot: int) -> list[int]:
        base = copy * self.i * self.j + slot * self.i
        return list(range(base, base + self.i))


def parse_parallelism(spec: str) -> Layout | None:
    """``--parallelism``: ``IxJxK`` (``"2"`` means 2x1x1) -> Layout; ``auto`` -> None. The one
    parser of the flag; a malformed value is a :class:`DataError`."""
    if spec.strip().lower() == "auto":
        return None
    try:
        return Layout.parse(spec)
    except ValueError as exc:
        raise DataError(None, f"--parallelism: {exc}") from None

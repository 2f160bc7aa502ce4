"""A tiny name -> variant registry. Algorithm variants (KL estimators, advantage estimators and scales,
importance-sampling modes, loss aggregations) are small pure functions registered by name; the kernels
see the integer `code` of a variant, the reference calls its function. No if/elif ladders over strings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Variant:
    name: str
    code: int          # the enum value csrc/params.h uses for it (-1: handled in Python only)
    fn: Callable[..., Any]
    extra: Any = None  # a second function where a variant needs two (e.g. aggregation weights)


class Registry:
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Variant] = {}

    def register(self, name: str, code: int = -1, extra: Callable | None = None):
        def deco(fn):
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = Variant(name, code, fn, extra)
            return fn
        return deco

    def get(self, name: str, arg: str = "") -> Variant:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            label = f"{arg}: " if arg else ""
            raise ValueError(f"{label}unknown {self.what} {name!r}; expected one of {sorted(self._items)}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name) -> bool:
        return name in self._items

"""One registry pattern for the whole suite: a decorator that fills a dict.

Datasets and methods each own a `Registry`; third-party packages add entries
through an entry-point group (their module is imported, its decorators run).
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A dict of name -> class filled by the `register` decorator."""

    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` on a class."""

        def decorate(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({existing!r} and {obj!r})")
            self._items[name] = obj
            try:
                obj.name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorate

    def load_plugins(self) -> None:
        """Import every module declared in this registry's entry-point group (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not take the suite down
                warnings.warn(f"could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)

    def get(self, name: str) -> T:
        """The entry registered as `name`; an unknown name lists the valid ones."""
        self.load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

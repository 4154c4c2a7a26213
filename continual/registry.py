"""One registry class for every kind of pluggable class (PEFT methods, hosts): a name -> class mapping that a
class decorator fills, refusing a name given twice and naming the known ones when asked for an unknown one."""
from __future__ import annotations

import difflib
import inspect


class Registry(dict):
    """``name -> class`` for one kind of class; ``register`` is the decorator that adds one by its ``key``
    attribute (``method`` for methods, ``kind`` for hosts). Errors are raised as ``error``."""

    def __init__(self, what: str, key: str, error: type[Exception]):
        super().__init__()
        self.what, self.key, self.error = what, key, error

    def register(self, cls: type) -> type:
        """Class decorator: make ``cls`` known by its ``key`` attribute (from user code too)."""
        name = getattr(cls, self.key)
        if name in self and not _same_definition(self[name], cls):
            raise self.error(f"{self.what} {name!r} registered twice ({self[name].__module__} and {cls.__module__})")
        self[name] = cls
        return cls

    def lookup(self, name: str) -> type:
        """The class registered as ``name``; an error naming the nearest known name otherwise."""
        if name not in self:
            close = difflib.get_close_matches(name, list(self), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"unknown {self.what} {name!r}{hint} (known: {', '.join(sorted(self))})")
        return self[name]


def _same_definition(old: type, new: type) -> bool:
    """The same class statement run again: a user's file run as a script and imported by a config's
    ``imports``, or a module reloaded."""
    try:
        return old.__qualname__ == new.__qualname__ and inspect.getfile(old) == inspect.getfile(new)
    except TypeError:  # a class without a source file
        return False

"""Package names loaded when first used (PEP 562), so importing one light module of a package
(`hashing.errors`, `registry.digests`) does not load all of it: a package's `__init__` lists where
each name lives and hands `exports(...)` to its module `__getattr__`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports each name from `where[name]` once."""

    def attribute(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # once: the next use is a plain attribute
        return value

    return attribute

"""Locate the templates, runtime Lua and schemas shipped with gwc.

In a wheel they live in gwc/_data/; in a source checkout they sit at the
repository root, which is where developers edit them.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    packaged = _PACKAGE_DIR / "_data" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent.parent / name


def templates_dir() -> Path:
    return data_dir("templates")


def lua_dir() -> Path:
    return data_dir("lua")


def schemas_dir() -> Path:
    return data_dir("schemas")


SCHEMA_BASE = "https://gwc.dev/schemas/"


@lru_cache(maxsize=None)
def schemas() -> Dict[str, dict]:
    """Every schema document by its $id."""
    out = {}
    for path in sorted(schemas_dir().glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[doc["$id"]] = doc
    return out

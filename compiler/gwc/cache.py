"""A content-addressed record of specs that passed structural validation.

A spec whose every input file, gwc version, validator version and OpenAPI
schemas are unchanged cannot validate differently, so `gwc validate` followed
by `gwc build` in CI pays for the structural check once. Only specs with no
structural diagnostic at all (warnings included, so they are shown again)
are recorded; any failure to use the cache just means validating again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from . import __version__


def default_dir() -> Optional[Path]:
    if os.environ.get("GWC_NO_CACHE"):
        return None
    explicit = os.environ.get("GWC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gwc"


def _validator_version() -> str:
    from .openapi_structure import schema_versions

    return schema_versions()


@dataclass(frozen=True)
class ValidationCache:
    directory: Path

    def key(self, input_hashes: Dict[str, str]) -> str:
        material = json.dumps({"gwc": __version__, "validator": _validator_version(), "inputs": input_hashes}, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    def _marker(self, key: str) -> Path:
        return self.directory / "structural" / key

    def hit(self, input_hashes: Dict[str, str]) -> bool:
        return self._marker(self.key(input_hashes)).is_file()

    def record(self, input_hashes: Dict[str, str]) -> None:
        marker = self._marker(self.key(input_hashes))
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("ok\n")
        except OSError:
            pass

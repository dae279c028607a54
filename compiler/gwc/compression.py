"""Stage 3, response compression (x-gateway.compression, x-gateway.binary_media_types
and the AWS `x-amazon-apigateway-binary-media-types` and
`x-amazon-apigateway-minimum-compression-size` at the document root).

nginx does the work: `gzip` per location, and `brotli` where the runtime has
Debian's brotli filter module. This module decides, per operation, the media
types that are compressed (the configured ones minus the binary media types),
the smallest body, the level, and whether brotli is on; templates/macros.j2
(`compression_directives`, `compression_headers`) only formats them. Every
media type that reaches the configuration matches a strict grammar here, so a
spec cannot add a directive. See docs/compression.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .diagnostics import WARNING, Diagnostic
from .load import SourceFile
from .schema_defaults import with_defaults

# Debian's libnginx-mod-http-brotli-filter (ngx_brotli's filter half).
BROTLI_MODULE = "/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so"
AWS_BINARY_MEDIA_TYPES = "x-amazon-apigateway-binary-media-types"
AWS_MINIMUM_COMPRESSION_SIZE = "x-amazon-apigateway-minimum-compression-size"
# AWS accepts 0 to 10 MiB for minimumCompressionSize; nginx reads a size into an ssize_t.
MAX_MIN_SIZE = 2**31 - 1

# RFC 6838 names, restricted to what nginx's `gzip_types` word and ngx_word accept.
_NAME = r"[a-z0-9][a-z0-9.+_-]{0,63}"
_MEDIA_TYPE = re.compile(rf"^{_NAME}/{_NAME}$")
_BINARY_TYPE = re.compile(rf"^(\*/\*|{_NAME}/\*|{_NAME}/{_NAME})$")
_SIZE = re.compile(r"^([0-9]{1,10})([kKmM]?)$")
# nginx compresses text/html wherever gzip (or brotli) is on, whatever *_types says.
ALWAYS_COMPRESSED = "text/html"


@dataclass(frozen=True)
class Compression:
    """One operation's compression; operations with equal ones can share a location."""

    min_size: int  # bytes
    types: Tuple[str, ...]  # gzip_types / brotli_types: the configured types minus the binary ones, sorted
    level: int  # 1-9
    brotli: str  # "on" (asked for), "auto" (the build host has the module), "off"

    def uses_brotli(self, target: str) -> bool:
        """Whether the location gets brotli directives for this target.

        `auto` relies on the Debian module, which only the nginx-lua target loads;
        `true` in the spec is taken at its word (an OpenResty built with ngx_brotli)."""
        return self.brotli == "on" or (self.brotli == "auto" and target == "nginx-lua")

    @property
    def module_path(self) -> str:
        """The nginx module brotli needs loaded (conf.d/gateway.conf names it for the host's nginx.conf)."""
        return BROTLI_MODULE


def brotli_module_present() -> bool:
    """Build-time detection: Debian's brotli filter module is installed on this host."""
    return Path(BROTLI_MODULE).is_file()


def match_binary(media_type: str, pattern: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return media_type.split("/", 1)[0] == pattern[:-2]
    return media_type == pattern


def min_size_bytes(value: Any) -> Optional[int]:
    """Bytes from an integer or an nginx size (`512`, `1k`, `2m`); None when negative or unparsable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value).strip())
        if not m:
            return None
        n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return n if 0 <= n <= MAX_MIN_SIZE else None


class CompressionBuilder:
    """Reads the document-wide settings once, then builds each operation's Compression."""

    def __init__(self, data: dict, raw_gw: dict, root: SourceFile, diags: List[Diagnostic],
                 module_present: Optional[bool] = None):
        self.root = root
        self.diags = diags
        self.raw_root = raw_gw.get("compression")
        self.module_present = brotli_module_present() if module_present is None else module_present
        self.warned_brotli = False
        self.warned_html = set()
        self.warned_empty = set()
        self.binary: List[str] = []
        self.binary_ptr = {}
        for i, value in enumerate(raw_gw.get("binary_media_types") or []):
            self._binary(value, f"/x-gateway/binary_media_types/{i}")
        aws_types = data.get(AWS_BINARY_MEDIA_TYPES)
        if aws_types is not None:
            if not isinstance(aws_types, list):
                self.error("GW121", f"{AWS_BINARY_MEDIA_TYPES} is a list of media types", root, "/" + AWS_BINARY_MEDIA_TYPES)
            else:
                for i, value in enumerate(aws_types):
                    # AWS's own exports escape the slash as in a JSON pointer (image~1png).
                    text = value.replace("~1", "/") if isinstance(value, str) else value
                    self._binary(text, f"/{AWS_BINARY_MEDIA_TYPES}/{i}")
        self.aws_min_size: Optional[int] = None
        if AWS_MINIMUM_COMPRESSION_SIZE in data:
            raw = data[AWS_MINIMUM_COMPRESSION_SIZE]
            size = min_size_bytes(raw) if isinstance(raw, int) else None
            if size is None:
                self.error("GW122", f"{AWS_MINIMUM_COMPRESSION_SIZE} must be an integer number of bytes from 0 to "
                           f"{MAX_MIN_SIZE}, got {raw!r}", root, "/" + AWS_MINIMUM_COMPRESSION_SIZE)
            else:
                self.aws_min_size = size

    def error(self, code: str, message: str, src: SourceFile, ptr: str, severity: str = "error") -> None:
        line, col = src.position(ptr)
        self.diags.append(Diagnostic(code, message, src.display, line, col, ptr, severity))

    def _binary(self, value: Any, ptr: str) -> None:
        text = value.strip().lower() if isinstance(value, str) else None
        if text is None or not _BINARY_TYPE.match(text):
            self.error("GW121", f"binary media type {value!r} is not a media type (type/subtype, type/* or */*)", self.root, ptr)
        elif text not in self.binary:
            self.binary.append(text)
            self.binary_ptr[text] = ptr

    def operation(self, op_raw: Any, item_raw: Any, src: SourceFile, op_ptr: str, deep_merge) -> Tuple[bool, Optional[Compression]]:
        """(ok, the operation's Compression or None when off). op_raw/item_raw: the raw
        `compression` of the operation and of its path item (absent: None)."""
        levels = [(self.raw_root, self.root, "/x-gateway/compression"),
                  (item_raw, src, op_ptr.rsplit("/", 1)[0] + "/x-gateway/compression"),
                  (op_raw, src, op_ptr + "/x-gateway/compression")]
        # true or a map turns it on, false off; the maps' settings deep-merge across levels either way.
        on = self.aws_min_size is not None
        settings: dict = {"min_size": self.aws_min_size} if on else {}
        # Where each key was written (innermost wins), for located errors.
        aws_ptr = (self.root, "/" + AWS_MINIMUM_COMPRESSION_SIZE)
        where = {"": aws_ptr, "min_size": aws_ptr} if on else {}
        for raw, rsrc, rptr in levels:
            if raw is None:
                continue
            where[""] = (rsrc, rptr)
            if isinstance(raw, dict):
                for key in raw:
                    where[key] = (rsrc, f"{rptr}/{key}")
                settings = deep_merge(settings, raw)
            on = raw is not False
        if not on:
            return True, None
        conf = with_defaults(settings, {"$ref": "compression.json"})
        ok = True

        def err(code: str, message: str, key: str) -> None:
            nonlocal ok
            ok = False
            esrc, eptr = where.get(key, where[""])
            self.error(code, message, esrc, eptr)

        level = conf["level"]
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            err("GW120", f"compression level {level!r} is outside 1-9", "level")
        size = min_size_bytes(conf["min_size"])
        if size is None:
            err("GW122", f"compression min_size {conf['min_size']!r} is not a size: bytes from 0 to {MAX_MIN_SIZE} "
                "or an nginx size such as 1k", "min_size")
        types: List[str] = []
        base = where.get("types", where[""])
        for i, value in enumerate(conf["types"]):
            text = value.strip().lower() if isinstance(value, str) else None
            if text is None or not _MEDIA_TYPE.match(text):
                why = ("nginx compresses exact media types only: list each one" if text and "*" in text
                       else "not a media type (type/subtype)")
                ok = False
                self.error("GW121", f"compression type {value!r}: {why}", base[0],
                           f"{base[1]}/{i}" if "types" in where else base[1])
            elif text not in types:
                types.append(text)
        if not ok:
            return False, None
        kept = tuple(sorted(t for t in types if not any(match_binary(t, b) for b in self.binary)))
        if not kept:
            wsrc, wptr = where.get("types", where[""])
            if (wsrc.display, wptr) not in self.warned_empty:
                self.warned_empty.add((wsrc.display, wptr))
                self.error("GW124", "every compression type is a binary media type: nothing is compressed here",
                           wsrc, wptr, WARNING)
            return True, None
        html = [b for b in self.binary if match_binary(ALWAYS_COMPRESSED, b)]
        if html and html[0] not in self.warned_html:
            self.warned_html.add(html[0])
            self.error("GW124", f"binary media type {html[0]!r} covers text/html, which nginx compresses wherever "
                       "compression is on", self.root, self.binary_ptr[html[0]], WARNING)
        brotli = conf["brotli"]
        if brotli is True:
            mode = "on"
        elif brotli is False:
            mode = "off"
        elif self.module_present:
            mode = "auto"
        else:
            mode = "off"
            if not self.warned_brotli:
                self.warned_brotli = True
                bsrc, bptr = where.get("brotli", where[""])
                self.error("GW123", f"no brotli module at {BROTLI_MODULE} (Debian: libnginx-mod-http-brotli-filter): "
                           "compressing with gzip only; set compression.brotli to false to say so, or true for a "
                           "runtime that has it", bsrc, bptr, WARNING)
        return True, Compression(min_size=size, types=kept, level=level, brotli=mode)


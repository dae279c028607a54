"""API-key and password files, edited by `gwc keys`.

Two forms of the consumer file exist: the YAML source named by
`x-gateway.keys` (a `consumers` list), and the `keys.json` a build writes
into the output (consumers keyed by key hash), which a deployed gateway
re-reads on reload. Both are edited the same way and only ever hold hashes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml

from .diagnostics import Diagnostic
from .security import _CONSUMER_ID, _timestamp, consumers_from_data

KEY_BYTES = 32
# PBKDF2 runs on the gateway's event loop for each new Authorization value;
# 10,000 rounds keep that near a few milliseconds while still slowing offline guessing.
PBKDF2_ITERATIONS = 10_000
PBKDF2_SALT_BYTES = 16


@dataclass(frozen=True)
class NewKey:
    consumer_id: str
    key: str


def new_key_text() -> str:
    """A random key: 256 bits, URL- and header-safe, prefixed so leaks are greppable."""
    return "gwc_" + secrets.token_urlsafe(KEY_BYTES)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def password_hash(password: str, iterations: int = PBKDF2_ITERATIONS, salt: Optional[bytes] = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(PBKDF2_SALT_BYTES)
    derived = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2-sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _read(path: Path, empty: Any) -> Tuple[Any, List[Diagnostic]]:
    if not path.exists():
        return empty, []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        return None, [Diagnostic("GW045", f"cannot read {path}: {exc.strerror or exc}", str(path))]
    try:
        data = json.loads(text) if _is_json(path) else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        return None, [Diagnostic("GW001", f"malformed {'JSON' if _is_json(path) else 'YAML'}: {exc}", str(path))]
    return (data if data is not None else empty), []


def _write(path: Path, data: Any) -> List[Diagnostic]:
    """Replace the file atomically, keeping its permissions (a key file is often 0600)."""
    if _is_json(path):
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    try:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent.resolve()))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        return [Diagnostic("GW050", f"cannot write {path}: {exc.strerror or exc}", str(path))]
    return []


def _check_consumers(path: Path, data: Any) -> List[Diagnostic]:
    if _is_json(path):
        return []
    diags: List[Diagnostic] = []
    consumers_from_data(data, lambda code, msg, ptr: diags.append(Diagnostic(code, msg, str(path), pointer=ptr)))
    return diags


def add_consumer(path: Path, consumer_id: str, plan: str, expires: Optional[str]) -> Tuple[Optional[NewKey], List[Diagnostic]]:
    if not _CONSUMER_ID.match(consumer_id):
        return None, [Diagnostic("GW046", f"consumer id {consumer_id!r} must be letters, digits, '.', '_', '@' or '-'", str(path))]
    if expires and _timestamp(expires) is None:
        return None, [Diagnostic("GW046", f"--expires {expires!r} is not an RFC 3339 date-time such as 2027-01-01T00:00:00Z", str(path))]
    json_form = _is_json(path)
    data, diags = _read(path, {"consumers": {} if json_form else []})
    if diags:
        return None, diags
    diags = _check_consumers(path, data)
    if diags:
        return None, diags
    key = new_key_text()
    digest = key_sha256(key)
    if json_form:
        consumers = data.get("consumers") if isinstance(data, dict) else None
        if not isinstance(consumers, dict):
            return None, [Diagnostic("GW046", "keys.json must hold a `consumers` object", str(path))]
        if any(isinstance(c, dict) and c.get("id") == consumer_id for c in consumers.values()):
            return None, [Diagnostic("GW046", f"consumer {consumer_id!r} already exists; revoke it or pick another id", str(path))]
        consumers[digest] = {"id": consumer_id, "plan": plan, "enabled": True, "expires": _epoch(expires)}
    else:
        consumers = data["consumers"]
        if any(c.get("id") == consumer_id for c in consumers):
            return None, [Diagnostic("GW046", f"consumer {consumer_id!r} already exists; revoke it or pick another id", str(path))]
        entry = {"id": consumer_id, "key_sha256": digest, "plan": plan, "enabled": True}
        if expires:
            entry["expires"] = expires
        consumers.append(entry)
    diags = _write(path, data)
    return (None if diags else NewKey(consumer_id, key)), diags


def revoke_consumer(path: Path, consumer_id: str) -> List[Diagnostic]:
    data, diags = _read(path, None)
    if diags:
        return diags
    if data is None:
        return [Diagnostic("GW045", f"{path} does not exist", str(path))]
    consumers = data.get("consumers") if isinstance(data, dict) else None
    entries = list(consumers.values()) if isinstance(consumers, dict) else (consumers if isinstance(consumers, list) else [])
    found = [c for c in entries if isinstance(c, dict) and c.get("id") == consumer_id]
    if not found:
        return [Diagnostic("GW046", f"no consumer {consumer_id!r} in {path}", str(path))]
    for c in found:
        c["enabled"] = False
    return _write(path, data)


def set_password(path: Path, username: str, password: str) -> List[Diagnostic]:
    if not _CONSUMER_ID.match(username):
        return [Diagnostic("GW046", f"username {username!r} must be letters, digits, '.', '_', '@' or '-'", str(path))]
    data, diags = _read(path, {"users": []})
    if diags:
        return diags
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, list):
        return [Diagnostic("GW046", "a credentials file is a mapping with a `users` list", str(path))]
    hashed = password_hash(password)
    for user in users:
        if isinstance(user, dict) and user.get("username") == username:
            user["password_hash"] = hashed
            break
    else:
        users.append({"username": username, "password_hash": hashed})
    return _write(path, data)


def _epoch(expires: Optional[str]) -> Optional[int]:
    return _timestamp(expires) if expires else None

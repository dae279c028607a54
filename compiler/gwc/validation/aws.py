"""AWS API Gateway request validators -> the two x-gateway.validate switches."""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..diagnostics import Diagnostic
from ..load import Document, split_pointer

VALIDATORS = "x-amazon-apigateway-request-validators"
SELECTED = "x-amazon-apigateway-request-validator"


def _node(data, pointer: str):
    for token in split_pointer(pointer):
        if isinstance(data, list):
            data = data[int(token)]
        elif isinstance(data, dict):
            data = data[token]
        else:
            raise KeyError(token)
    return data


def aws_switches(doc: Document, op_pointer: str) -> Optional[Tuple[bool, bool]]:
    """(parameters, body) for the operation at op_pointer in the root file, or
    None when the document does not use AWS request validators.

    As in AWS, the operation's validator name overrides the root's, and an
    operation with no validator selected in a document that declares some is
    not validated. An unknown name also gives None (see aws_diagnostics).
    """
    root = doc.data if isinstance(doc.data, dict) else {}
    table = root.get(VALIDATORS)
    try:
        op = _node(root, op_pointer)
    except (KeyError, IndexError, ValueError):
        op = {}
    name = op.get(SELECTED) if isinstance(op, dict) else None
    if name is None:
        name = root.get(SELECTED)
    if table is None and name is None:
        return None
    if name is None:
        return (False, False)
    entry = table.get(name) if isinstance(table, dict) else None
    if not isinstance(entry, dict):
        return None
    return (entry.get("validateRequestParameters") is True, entry.get("validateRequestBody") is True)


def aws_diagnostics(doc: Document, op_pointers: List[str]) -> List[Diagnostic]:
    """GW077 for validator names that the validators map does not define."""
    root = doc.data if isinstance(doc.data, dict) else {}
    table = root.get(VALIDATORS) if isinstance(root.get(VALIDATORS), dict) else {}
    out = []
    for ptr in [""] + list(op_pointers):
        try:
            node = _node(root, ptr)
        except (KeyError, IndexError, ValueError):
            continue
        name = node.get(SELECTED) if isinstance(node, dict) else None
        if name is not None and name not in table:
            p = f"{ptr}/{SELECTED}"
            line, col = doc.root.position(p)
            out.append(Diagnostic("GW077", f"request validator {name!r} is not defined in {VALIDATORS}", doc.root.display, line, col, p))
    return out

"""The stages in order. Each returns a value or diagnostics; this module only
chains them and fills in source positions that later stages cannot know."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from . import load as load_stage
from . import model as model_stage
from . import plan as plan_stage
from . import render as render_stage
from . import validate as validate_stage
from . import validation
from .cache import ValidationCache
from .diagnostics import Diagnostic, has_errors


@dataclass
class Result:
    diagnostics: List[Diagnostic] = field(default_factory=list)
    plan: Optional[plan_stage.Plan] = None
    files: Optional[Dict[str, bytes]] = None

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def _locate(diags: List[Diagnostic], doc: load_stage.Document) -> List[Diagnostic]:
    """Give a line and column to diagnostics that only know a file and pointer."""
    by_display = {src.display: src for src in doc.files.values()}
    out = []
    for d in diags:
        if not d.line and d.pointer is not None:
            src = by_display.get(d.file or doc.root.display, doc.root)
            line, col = src.position(d.pointer)
            d = replace(d, file=src.display, line=line, col=col)
        elif not d.file:
            d = replace(d, file=doc.root.display)
        out.append(d)
    return out


def check(path: str, listen: Optional[List[str]] = None, structural: bool = True, cache: Optional[ValidationCache] = None) -> Result:
    """load -> validate -> model -> plan."""
    doc, diags = load_stage.load(path)
    if doc is None or has_errors(diags):
        return Result(diags)
    diags = diags + validate_stage.validate(doc, structural=structural, cache=cache)
    if has_errors(diags):
        return Result(_locate(diags, doc))
    gateway, model_diags = model_stage.build(doc, listen)
    diags += model_diags
    if has_errors(diags) or gateway is None:
        return Result(_locate(diags, doc))
    module, validation_diags = _validators(doc, gateway)
    diags += validation_diags
    if has_errors(diags):
        return Result(_locate(diags, doc))
    if module is not None:
        # Operations whose validator would check nothing skip the access phase.
        gateway = replace(gateway, operations=tuple(
            op if op.operation_id in module.operations else replace(op, validate_parameters=False, validate_body=False)
            for op in gateway.operations
        ))
    the_plan, plan_diags = plan_stage.plan(gateway)
    diags += plan_diags
    if the_plan is not None and module is not None and module.operations:
        the_plan = replace(the_plan, validators_lua=module.source)
    return Result(_locate(diags, doc), the_plan)


def _validators(doc: load_stage.Document, gateway) -> tuple:
    """Request validators (a ValidatorModule, or None) for every operation that declares something to validate."""
    dialect = "oas31" if gateway.openapi.startswith("3.1") else "oas30"
    targets = [
        validation.Target(
            operation_id=op.operation_id, method=op.method, file=op.file, pointer=op.pointer,
            path_params=tuple(op.template.params), parameters=op.validate_parameters,
            body=op.validate_body, max_errors=op.max_errors, dialect=dialect,
        )
        for op in gateway.operations
        if op.needs_validation
    ]
    aws = validation.aws_diagnostics(doc, [op.pointer for op in gateway.operations if op.file == doc.root.display])
    if not targets:
        return None, aws
    module = validation.compile_validator_module(doc, targets)
    return module, aws + list(module.diagnostics)


def build(path: str, options: render_stage.RenderOptions, listen: Optional[List[str]] = None, cache: Optional[ValidationCache] = None) -> Result:
    """check, then render in memory (nothing is written here)."""
    result = check(path, listen, cache=cache)
    if not result.ok or result.plan is None:
        return result
    files, render_diags = render_stage.render(result.plan, options)
    result.diagnostics += [replace(d, file=d.file or path) for d in render_diags]
    result.files = files
    return result

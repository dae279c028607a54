"""Request validation: OpenAPI parameters and JSON Schemas compiled to Lua.

See module.compile_validators (the render stage's entry point), aws.aws_switches
and codes.CODES.
"""
from .aws import aws_diagnostics, aws_switches
from .codes import CODES
from .module import Target, ValidatorModule, compile_schema, compile_validator_module, compile_validators

__all__ = [
    "CODES", "Target", "ValidatorModule", "aws_diagnostics", "aws_switches", "compile_schema",
    "compile_validator_module", "compile_validators",
]

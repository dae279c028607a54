"""Diagnostic codes of the validation compiler: the GW07x range of the one
catalogue in gwc.diagnostics."""
from ..diagnostics import CODES as _ALL

CODES = {code: meaning for code, meaning in _ALL.items() if code.startswith("GW07")}

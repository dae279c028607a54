"""Diagnostic codes of the validation compiler; the lead merges them into
diagnostics.CODES."""

CODES = {
    "GW070": "schema cannot be read (bad $ref, wrong JSON type for a keyword)",
    "GW071": "pattern is not valid ECMA-262",
    "GW072": "pattern cannot run safely on PCRE (lookbehind, backreference, nested quantifier)",
    "GW073": "schema keyword that cannot be honoured as written (warning; e.g. a discriminator without $ref branches)",
    "GW074": "schema recursion that consumes no input (infinite loop)",
    "GW075": "parameter cannot be validated (unsupported style, missing schema)",
    "GW076": "request body media type cannot be validated",
    "GW077": "invalid AWS request validator reference",
}

"""The things that usually go wrong when validating JSON in Lua (issue 4)."""
import json

import pytest
from gwc.validation import compile_schema
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import run, valid


def test_empty_object_is_not_empty_array(lua):
    assert valid(lua, {"type": "object"}, ["{}", "[]"], raw=True) == [True, False]
    assert valid(lua, {"type": "array"}, ["{}", "[]"], raw=True) == [False, True]
    # and nested, where cjson would hand both back as the same empty table
    schema = {"properties": {"a": {"type": "array"}, "o": {"type": "object"}}}
    assert valid(lua, schema, ['{"a": [], "o": {}}', '{"a": {}, "o": []}'], raw=True) == [True, False]


def test_integer_versus_float_per_dialect(lua):
    texts = ["1", "1.0", "1e0", "1.5", "-0", "10E2"]
    assert valid(lua, {"type": "integer"}, texts, "oas31", raw=True) == [True, True, True, False, True, True]
    # draft 4 / OpenAPI 3.0: an integer is written without fraction or exponent
    assert valid(lua, {"type": "integer"}, texts, "oas30", raw=True) == [True, False, False, False, True, False]
    # a boxed 1.0 is still a number for every numeric keyword
    assert valid(lua, {"type": "number", "minimum": 1, "maximum": 1, "enum": [1]}, ["1.0"], "oas30", raw=True) == [True]
    assert valid(lua, {"multipleOf": 2}, ["4.0", "3.0"], "oas30", raw=True) == [True, False]


def test_big_integers(lua):
    big = "12345678910111213141516171819202122232425262728293031"
    assert valid(lua, {"type": "integer"}, [big, "-" + big], raw=True) == [True, True]
    assert valid(lua, {"type": "integer", "maximum": 18446744073709551615}, ["18446744073709551600"], raw=True) == [True]
    assert valid(lua, {"type": "integer", "format": "int64"}, ["9007199254740993", "-9223372036854775808", "1e30"], raw=True) == [True, True, False]
    assert valid(lua, {"type": "integer", "format": "int32"}, ["2147483647", "2147483648", "-2147483649"], raw=True) == [True, False, False]
    # exact for every integer a double holds exactly
    assert valid(lua, {"const": 9007199254740992}, ["9007199254740992"], raw=True) == [True]


def test_min_length_counts_code_points(lua):
    schema = {"type": "string", "minLength": 3, "maxLength": 3}
    # 3 code points in 3, 6, 9 and 12 bytes; a surrogate pair escape is one code point
    texts = ['"abc"', '"äöü"', '"日本語"', '"😀😀😀"', '"\\ud83d\\ude00ab"', '"ab"', '"äöüä"']
    assert valid(lua, schema, texts, raw=True) == [True, True, True, True, True, False, False]


def test_duplicate_keys_are_rejected(lua):
    res = run(lua, [{}], [(0, '{"a": 1, "a": 1}'), (0, '{"a": {"b": 1, "b": 2}}'), (0, '{"a": 1, "A": 1}')], raw=True)
    assert res[0] == {"decode": "duplicate", "detail": "a"}
    assert res[1] == {"decode": "duplicate", "detail": "b"}
    assert res[2]["valid"] is True


def test_deep_nesting_is_refused_not_a_stack_overflow(lua):
    deep = "[" * 100000 + "]" * 100000
    res = run(lua, [{}], [(0, deep), (0, "[" * 64 + "]" * 64), (0, '{"a":' * 65 + "1" + "}" * 65)], raw=True)
    assert res[0]["decode"] == "too_deep"
    assert res[1]["valid"] is True
    assert res[2]["decode"] == "too_deep"


def test_recursive_schema_on_deep_but_allowed_document(lua):
    schema = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}
    doc = '{"c":' * 60 + "{}" + "}" * 60
    bad = '{"c":' * 60 + "[]" + "}" * 60
    assert valid(lua, schema, [doc, bad], raw=True) == [True, False]


def test_malformed_json_is_reported_not_thrown(lua):
    texts = ['{"a":}', "[1,]", "01", '"\\x"', '"\x01"', '"\udcff"', "nul", "1 2", "", "  ", '"\\ud800"', "{'a':1}"]
    res = run(lua, [{}], [(0, t) for t in texts], raw=True)
    assert [r.get("decode") for r in res] == ["malformed"] * len(texts)


def test_strings_with_escapes_decode_exactly(lua):
    schema = {"const": "a\"b\\c/d\be\ff\ng\rh\ti\u00e9\U0001F600"}
    assert valid(lua, schema, ['"a\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\\u00e9\\ud83d\\ude00"'], raw=True) == [True]


@pytest.mark.parametrize("pattern, good, bad", [
    ("^a$", ["a"], ["a\n", "ba"]),             # $ is the very end in ECMA-262, not before a final newline
    ("^.$", ["x", "é", "😀"], ["\n", "\r", "\u2028", "ab"]),  # . is one code point, not a line terminator
    ("^\\d+$", ["0123"], ["٣"]),                # \d is ASCII only
    ("^\\s$", [" ", "\u00a0", "\ufeff", "\u2003"], ["x"]),   # \s is Unicode whitespace
    ("^[^a]$", ["é"], ["a", "éé"]),            # a negated class matches one code point
    ("^\\u00e9$", ["é"], ["e"]),
    ("^[[:alpha:]]+$", ["a]", ":]]"], ["abc", "b]"]),  # [[:alpha:] is a plain class in ECMA-262, not POSIX
    ("^\\p{Letter}+$", ["héllo"], ["h3llo"]),
    ("^a\\vb$", ["a\u000bb"], ["a\nb"]),       # \v is only VT
    ("^[a-z-]+(?<!-)$", ["a-b", "ab"], ["ab-", "-"]),   # fixed-length lookbehind runs in PCRE as written
    ("^.(?<=[\\d\\p{L}])x$", ["1x", "éx"], ["-x"]),
    ("^a\\000b\\0$", ["a\u0000b\u0000"], ["a0b0"]),   # Annex B octal escapes, not backreferences
    ("^\\012$", ["\n"], ["12"]),
])
def test_ecma_patterns_translate(lua, pattern, good, bad):
    res = valid(lua, {"pattern": pattern}, good + bad)
    assert res == [True] * len(good) + [False] * len(bad)


@pytest.mark.parametrize("pattern, code", [
    ("(?<=a+)b", "GW072"),
    ("(?<!a|bc)b", "GW072"),
    ("(?<=(a))b", "GW072"),
    ("(a)\\1", "GW072"),
    ("(?<x>a)\\k<x>", "GW072"),
    ("(a+)+$", "GW072"),
    ("^(\\w+\\s?)*$", "GW072"),
    ("(a|a)*", "GW072"),
    ("([a-z]*)*", "GW072"),
    ("(", "GW071"),
    ("a)", "GW071"),
    ("[a", "GW071"),
    ("\\", "GW071"),
    ("*a", "GW071"),
    ("\\q", "GW071"),
])
def test_unsafe_or_invalid_patterns_are_build_errors(pattern, code):
    _, problems = compile_schema({"pattern": pattern}, "oas31")
    assert [p[0] for p in problems] == [code]
    assert problems[0][2] == "/pattern"


@pytest.mark.parametrize("pattern", ["^([a-z0-9-]+\\.)+[a-z]{2,}$", "^(\\d{3}-)?\\d{4}$", "^[A-Z]{2}(\\d+)?$", "^(ab)+$"])
def test_safe_nested_groups_are_accepted(pattern):
    _, problems = compile_schema({"pattern": pattern}, "oas31")
    assert problems == []


def test_oas30_nullable_and_boolean_exclusive_bounds(lua):
    schema = {"type": "integer", "nullable": True, "minimum": 0, "exclusiveMinimum": True, "maximum": 5, "exclusiveMaximum": False}
    assert valid(lua, schema, ["null", "0", "1", "5", "6", '"1"'], "oas30", raw=True) == [True, False, True, True, False, False]
    # nullable without type still admits null; without nullable, null is a type error
    assert valid(lua, {"type": "string"}, ["null"], "oas30", raw=True) == [False]


def test_oas_discriminator_dispatches_and_reports_the_chosen_branch(lua):
    schema = {
        "oneOf": [{"$ref": "#/components/schemas/Dog"}, {"$ref": "#/components/schemas/Cat"}],
        "discriminator": {"propertyName": "kind", "mapping": {"doggo": "#/components/schemas/Dog"}},
        "components": {"schemas": {
            "Dog": {"type": "object", "required": ["kind", "bark"], "properties": {"kind": {"type": "string"}, "bark": {"type": "boolean"}}},
            "Cat": {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}, "lives": {"type": "integer", "maximum": 9}}},
        }},
    }
    res = run(lua, [schema], [(0, {"kind": "doggo", "bark": True}), (0, {"kind": "Dog", "bark": True}),
                              (0, {"kind": "Cat", "lives": 12}), (0, {"kind": "cow"}), (0, {"kind": "Dog"})])
    assert [r["valid"] for r in res] == [True, True, False, False, False]
    assert [(e["pointer"], e["keyword"]) for e in res[2]["errors"]] == [("/lives", "maximum")]
    assert [(e["pointer"], e["keyword"]) for e in res[3]["errors"]] == [("/kind", "discriminator")]
    assert [(e["pointer"], e["keyword"]) for e in res[4]["errors"]] == [("/bark", "required")]


def test_error_pointers_and_cap(lua):
    schema = {"type": "object", "properties": {"a/b": {"type": "array", "items": {"type": "integer"}}, "m~n": {"type": "string"}}}
    res = run(lua, [schema], [(0, {"a/b": [1, "x", 2, "y"], "m~n": 3})])
    assert [(e["pointer"], e["keyword"]) for e in res[0]["errors"]] == [("/a~1b/1", "type"), ("/a~1b/3", "type"), ("/m~0n", "type")]


def test_every_error_has_a_message(lua):
    schema = {"type": "object", "required": ["a"], "additionalProperties": False, "minProperties": 4,
              "properties": {"b": {"enum": [1]}, "c": {"format": "date"}}}
    res = run(lua, [schema], [(0, {"b": 2, "c": "2021-02-30", "d": 1})])
    errs = res[0]["errors"]
    assert {e["keyword"] for e in errs} == {"required", "additionalProperties", "minProperties", "enum", "format"}
    assert all(e["message"] for e in errs)


# Bytes that look like JSON often enough to reach deep into the decoder.
_JSONISH = st.lists(st.sampled_from(list('{}[]",:0123456789.eE+-tfnrulas\\/ \t\n') + ["\\u", "\\ud83d", "\xe9", "\xff", "1e400"]),
                    max_size=60).map("".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), _JSONISH.map(lambda s: s.encode("utf-8", "surrogatepass"))), min_size=20, max_size=20))
def test_decoder_never_throws_on_arbitrary_bytes(lua, bodies):
    """Any body decodes to a value or to (nil, reason): never a Lua error, so never a 500."""
    import base64

    encoded = ", ".join(f'ngx.decode_base64("{base64.b64encode(b).decode()}")' for b in bodies)
    got = lua.run(f"""
        local decode = require("gwc.validation").decode
        local out = {{}}
        for i, text in ipairs({{ {encoded} }}) do
            local ok, value, kind = pcall(decode, text, 64, false)
            out[i] = ok and (value ~= nil and "value" or tostring(kind)) or ("THREW: " .. tostring(value))
        end
        return out
    """)
    assert len(got) == len(bodies)
    assert not [g for g in got if g.startswith("THREW")], got
    for body, outcome in zip(bodies, got):
        try:
            json.loads(body.decode("utf-8"))
            python_ok = True
        except (UnicodeDecodeError, ValueError):
            python_ok = False
        if outcome == "value":
            assert python_ok, f"{body!r} decoded in Lua but is not JSON"

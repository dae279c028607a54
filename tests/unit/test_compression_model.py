"""The compression model (compiler/gwc/compression.py), its plan and its rendered directives.

Cases as data where they are inputs and outputs: a spec fragment in, the
operations' Compression (or the rendered lines) out.
"""
import textwrap

import crossplane
import pytest

from gwc import compression as compression_mod
from gwc import pipeline
from gwc.compression import BROTLI_MODULE, Compression, match_binary, min_size_bytes
from gwc.render import RenderOptions
from unit.test_structure import ALLOWED

SPEC = """\
openapi: 3.0.3
info: {title: t, version: "1"}
%(aws)s
x-gateway:
  upstreams: {a: {servers: ["http://127.0.0.1:9"]}}
  upstream: a
%(root)s
paths:
  /one:
    get:
      operationId: one
%(one)s
      responses: {"200": {description: ok}}
  /two:
%(item)s
    get:
      operationId: two
%(two)s
      responses: {"200": {description: ok}}
"""
DEFAULT_TYPES = ("application/javascript", "application/json", "application/problem+json", "application/xml",
                 "text/css", "text/csv", "text/javascript", "text/plain", "text/xml")


def _indent(text, n):
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * n) if text else ""


def write(tmp_path, root="", one="", two="", item="", aws=""):
    spec = tmp_path / "api.yaml"
    spec.write_text(SPEC % {"root": _indent(root, 2), "one": _indent(one, 6), "two": _indent(two, 6),
                            "item": _indent(item, 4), "aws": textwrap.dedent(aws).strip("\n")})
    return spec


def checked(tmp_path, **parts):
    result = pipeline.check(str(write(tmp_path, **parts)), structural=False)
    assert result.ok, [d.format_text() for d in result.diagnostics]
    return result


def comps(tmp_path, **parts):
    result = checked(tmp_path, **parts)
    return {op.operation_id: op.compression for op in result.plan.gateway.operations}, result


@pytest.fixture(autouse=True)
def brotli_present(monkeypatch):
    """The build host has the module unless a test says otherwise."""
    monkeypatch.setattr(compression_mod, "brotli_module_present", lambda: True)


# --------------------------------------------------------------------------- the model

MODEL_CASES = [
    {
        "name": "defaults",
        "parts": {"root": "compression: true"},
        "one": Compression(1024, DEFAULT_TYPES, 5, "auto"),
        "two": Compression(1024, DEFAULT_TYPES, 5, "auto"),
    },
    {
        "name": "issue example, binary types removed, inner level deep-merges",
        "parts": {"root": "compression: {min_size: 1024, types: [application/json, text/plain, image/png], level: 5}\n"
                          "binary_media_types: [image/png, application/octet-stream]",
                  "two": "x-gateway: {compression: {level: 9}}"},
        "one": Compression(1024, ("application/json", "text/plain"), 5, "auto"),
        "two": Compression(1024, ("application/json", "text/plain"), 9, "auto"),
    },
    {
        "name": "wildcard binary types, upper case and sizes",
        "parts": {"root": "compression: {min_size: 2k, types: [Application/JSON, image/svg+xml, text/plain]}\n"
                          "binary_media_types: ['image/*']"},
        "one": Compression(2048, ("application/json", "text/plain"), 5, "auto"),
    },
    {
        "name": "false on a path item, true again nowhere",
        "parts": {"root": "compression: {level: 2}", "item": "x-gateway: {compression: false}"},
        "one": Compression(1024, DEFAULT_TYPES, 2, "auto"),
        "two": None,
    },
    {
        "name": "true on an operation keeps the settings of the outer levels",
        "parts": {"root": "compression: {level: 2}", "item": "x-gateway: {compression: false}",
                  "two": "x-gateway: {compression: true}"},
        "two": Compression(1024, DEFAULT_TYPES, 2, "auto"),
    },
    {
        "name": "only one operation",
        "parts": {"one": "x-gateway: {compression: {min_size: 0, brotli: false}}"},
        "one": Compression(0, DEFAULT_TYPES, 5, "off"),
        "two": None,
    },
    {
        "name": "AWS minimum compression size turns it on",
        "parts": {"aws": "x-amazon-apigateway-minimum-compression-size: 0"},
        "one": Compression(0, DEFAULT_TYPES, 5, "auto"),
        "two": Compression(0, DEFAULT_TYPES, 5, "auto"),
    },
    {
        "name": "x-gateway min_size wins over AWS; false still turns it off",
        "parts": {"aws": "x-amazon-apigateway-minimum-compression-size: 10",
                  "root": "compression: {min_size: 100}", "two": "x-gateway: {compression: false}"},
        "one": Compression(100, DEFAULT_TYPES, 5, "auto"),
        "two": None,
    },
    {
        "name": "AWS binary media types, with AWS's ~1 for the slash, add to x-gateway's",
        "parts": {"aws": "x-amazon-apigateway-binary-media-types: ['text~1csv', 'application/xml']",
                  "root": "compression: true\nbinary_media_types: [text/css]"},
        "one": Compression(1024, tuple(t for t in DEFAULT_TYPES if t not in ("text/csv", "application/xml", "text/css")), 5, "auto"),
    },
    {
        "name": "brotli true",
        "parts": {"root": "compression: {brotli: true}"},
        "one": Compression(1024, DEFAULT_TYPES, 5, "on"),
    },
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_model(case, tmp_path):
    got, result = comps(tmp_path, **case["parts"])
    for op in ("one", "two"):
        if op in case:
            assert got[op] == case[op], op
    assert not result.diagnostics, [d.format_text() for d in result.diagnostics]


def test_equal_compression_shares_a_location_and_a_different_one_does_not(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, result = comps(tmp_path / "a", root="compression: true")
    assert len(set(result.plan.operation_locations)) == 1
    _, result = comps(tmp_path / "b", root="compression: true", two="x-gateway: {compression: {level: 9}}")
    assert len(set(result.plan.operation_locations)) == 2


def test_no_brotli_module_is_a_located_warning_once_and_gzip_only(tmp_path, monkeypatch):
    monkeypatch.setattr(compression_mod, "brotli_module_present", lambda: False)
    got, result = comps(tmp_path, root="compression: true", two="x-gateway: {compression: {level: 9}}")
    assert got["one"].brotli == "off" and got["two"].brotli == "off"
    warnings = [d for d in result.diagnostics if d.code == "GW123"]
    assert len(warnings) == 1 and warnings[0].severity == "warning"
    assert warnings[0].pointer == "/x-gateway/compression" and warnings[0].line == 7
    assert BROTLI_MODULE in warnings[0].message


def test_brotli_false_is_silent_without_the_module(tmp_path, monkeypatch):
    monkeypatch.setattr(compression_mod, "brotli_module_present", lambda: False)
    _, result = comps(tmp_path, root="compression: {brotli: false}")
    assert not result.diagnostics


def test_every_type_binary_turns_compression_off_with_a_warning(tmp_path):
    got, result = comps(tmp_path, root="compression: {types: [image/png]}\nbinary_media_types: ['*/*']")
    assert got == {"one": None, "two": None}
    assert [d.code for d in result.diagnostics] == ["GW124"]


def test_binary_text_html_warns_that_nginx_compresses_it_anyway(tmp_path):
    got, result = comps(tmp_path, root="compression: true\nbinary_media_types: ['text/*']")
    assert "text/plain" not in got["one"].types
    d = [d for d in result.diagnostics if d.code == "GW124"]
    assert len(d) == 1 and d[0].pointer == "/x-gateway/binary_media_types/0"


@pytest.mark.parametrize("brotli, target, expected", [
    ("auto", "nginx-lua", True), ("auto", "openresty", False), ("on", "openresty", True), ("off", "nginx-lua", False)])
def test_uses_brotli_per_target(brotli, target, expected):
    assert Compression(0, ("text/plain",), 1, brotli).uses_brotli(target) is expected


@pytest.mark.parametrize("value, expected", [
    (0, 0), (1024, 1024), ("512", 512), ("1k", 1024), ("2M", 2 * 1024 * 1024), (-1, None), ("-1", None),
    ("1.5k", None), ("ten", None), (True, None), (2**31, None), ("", None)])
def test_min_size_bytes(value, expected):
    assert min_size_bytes(value) == expected


@pytest.mark.parametrize("media_type, pattern, expected", [
    ("image/png", "image/png", True), ("image/png", "image/*", True), ("image/png", "*/*", True),
    ("image/png", "image/jpeg", False), ("imagex/png", "image/*", False), ("application/json", "text/*", False)])
def test_match_binary(media_type, pattern, expected):
    assert match_binary(media_type, pattern) is expected


# --------------------------------------------------------------------------- rendering


def rendered(tmp_path, target="nginx-lua", **parts):
    result = pipeline.build(str(write(tmp_path, **parts)), RenderOptions(target=target))
    assert result.ok, [d.format_text() for d in result.diagnostics]
    return {k: v.decode() for k, v in result.files.items() if k.endswith(".conf")}


def directives(text):
    """(name, args) of every directive in a location gw:N, by location."""
    out = {}
    loc = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("location = gw:") and s.endswith("{"):
            loc = s.split()[2]
            out[loc] = []
        elif s == "}" and loc and line.startswith(" " * 8 + "}") and not line.startswith(" " * 12):
            loc = None
        elif loc and s and not s.startswith("#"):
            out[loc].append(s)
    return out


def test_rendered_gzip_and_brotli_lines(tmp_path):
    files = rendered(tmp_path, root="compression: {min_size: 100, types: [application/json, text/plain], level: 3}",
                     two="x-gateway: {compression: false}")
    conf = files["nginx.conf"]
    assert f'load_module "{BROTLI_MODULE}";' in conf
    locs = directives(conf)
    on = locs["gw:1"]
    for line in ("add_header Vary Accept-Encoding always;", "gzip on;", "gzip_types application/json text/plain;",
                 "gzip_min_length 100;", "gzip_comp_level 3;", "gzip_proxied any;", "gzip_vary off;", "brotli on;",
                 "brotli_types application/json text/plain;", "brotli_min_length 100;", "brotli_comp_level 3;",
                 "if ($gw_br_refused) {", "brotli off;"):
        assert line in on, line
    assert not [l for l in locs["gw:2"] if "gzip" in l or "brotli" in l or "Vary" in l]
    assert "gzip off;" in conf, "the server compresses nothing by itself"
    assert "map $http_accept_encoding $gw_br_refused {" in conf
    assert f"needs `load_module {BROTLI_MODULE};`" in files["conf.d/gateway.conf"]


def test_gzip_only_has_no_brotli_module_map_or_note(tmp_path):
    files = rendered(tmp_path, root="compression: {brotli: false}")
    for text in files.values():
        assert "brotli" not in text and "gw_br_refused" not in text
    assert "gzip on;" in files["nginx.conf"]


def test_openresty_target_auto_is_gzip_only(tmp_path):
    files = rendered(tmp_path, target="openresty", root="compression: true")
    assert "brotli" not in files["nginx.conf"] and "load_module" not in files["nginx.conf"]


def _walk(block):
    for d in block:
        yield d
        if "block" in d and d["directive"] not in ("map", "geo"):
            yield from _walk(d["block"])


@pytest.mark.parametrize("name", ["nginx.conf", "conf.d/gateway.conf"])
def test_rendered_config_parses_with_crossplane_and_the_allow_list(tmp_path, name):
    files = rendered(tmp_path, root="compression: true\nbinary_media_types: [image/png]",
                     one="x-gateway: {mock: {body: {a: 1}}}", two="x-gateway: {compression: {brotli: false}}")
    path = tmp_path / "out.conf"
    path.write_text(files[name])
    payload = crossplane.parse(str(path), strict=False, check_ctx=False, check_args=False, single=True)
    assert payload["status"] == "ok", payload["errors"]
    names = {d["directive"] for d in _walk(payload["config"][0]["parsed"])}
    assert {"gzip", "gzip_types", "add_header"} <= names
    assert names <= ALLOWED, names - ALLOWED

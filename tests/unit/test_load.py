"""The load stage: positions, duplicate keys, $refs (local, relative files, circular)."""
import json

from gwc.load import load


def test_positions_of_values_and_keys(tmp_path):
    (tmp_path / "api.yaml").write_text("openapi: 3.0.3\ninfo:\n  title: t\n  version: '1'\npaths:\n  /a:\n    get: {}\n")
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert not diags
    assert doc.root.position("/info/title") == (3, 10)
    assert doc.root.position("/paths/~1a", key=True) == (6, 3)
    assert doc.root.position("/paths/~1a/get/missing") == (7, 10), "falls back to the nearest ancestor"


def test_json_positions_are_recovered_lazily(tmp_path):
    (tmp_path / "api.json").write_text(json.dumps({"openapi": "3.0.3", "info": {"title": "t"}}, indent=2))
    doc, diags = load(str(tmp_path / "api.json"))
    assert not diags
    assert doc.root.position("/info/title")[0] == 4


def test_duplicate_keys_in_json_are_reported_with_position(tmp_path):
    (tmp_path / "api.json").write_text('{\n  "a": 1,\n  "a": 2\n}\n')
    doc, diags = load(str(tmp_path / "api.json"))
    assert [(d.code, d.line) for d in diags] == [("GW004", 3)]


def test_relative_file_refs_and_circular_schemas(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "pet.yaml").write_text(
        "Pet:\n  type: object\n  properties:\n    parent: {$ref: '#/Pet'}\n    owner: {$ref: '../api.yaml#/components/schemas/Owner'}\n"
    )
    (tmp_path / "api.yaml").write_text(
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {}\ncomponents:\n  schemas:\n"
        "    Owner: {type: object, properties: {pets: {type: array, items: {$ref: 'schemas/pet.yaml#/Pet'}}}}\n"
    )
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert not diags
    pet, src, ptr = doc.resolve("schemas/pet.yaml#/Pet", doc.root)
    assert pet["type"] == "object" and ptr == "/Pet"
    parent, _, _ = doc.resolve(pet["properties"]["parent"]["$ref"], src)
    assert parent is pet
    owner, osrc, _ = doc.resolve(pet["properties"]["owner"]["$ref"], src)
    assert osrc is doc.root and owner["type"] == "object"
    assert set(doc.input_hashes()) == {"api.yaml", "schemas/pet.yaml"}


def test_yaml_timestamps_stay_strings(tmp_path):
    (tmp_path / "api.yaml").write_text("openapi: 3.0.3\ninfo: {title: t, version: 2024-01-01}\n")
    doc, _ = load(str(tmp_path / "api.yaml"))
    assert doc.data["info"]["version"] == "2024-01-01"


def test_byte_order_mark_and_crlf(tmp_path):
    (tmp_path / "api.json").write_bytes(b'\xef\xbb\xbf{"openapi": "3.0.3",\r\n "info": {"title": "t"}}')
    doc, diags = load(str(tmp_path / "api.json"))
    assert not diags and doc.data["info"]["title"] == "t"
    (tmp_path / "api.yaml").write_bytes(b"\xef\xbb\xbfopenapi: 3.0.3\r\ninfo:\r\n  title: t\r\n")
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert not diags and doc.root.position("/info/title") == (3, 10)


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join(f"*{prev}" for _ in range(10)) + "]")
    (tmp_path / "api.yaml").write_text("openapi: 3.0.3\n" + "\n".join(lines) + "\n")
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert doc is None and [d.code for d in diags] == ["GW001"] and "aliases" in diags[0].message


def test_recursive_alias_is_refused(tmp_path):
    (tmp_path / "api.yaml").write_text("openapi: 3.0.3\nloop: &a [1, *a]\n")
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert doc is None and [d.code for d in diags] == ["GW001"] and "own anchor" in diags[0].message


def test_deep_nesting_is_a_diagnostic(tmp_path):
    depth = 50_000
    (tmp_path / "api.json").write_text('{"openapi": "3.0.3", "x": ' + "[" * depth + "]" * depth + "}")
    doc, diags = load(str(tmp_path / "api.json"))
    assert doc is None and [d.code for d in diags] == ["GW001"]
    (tmp_path / "api.yaml").write_text("openapi: 3.0.3\nx: " + "[" * depth + "]" * depth + "\n")
    doc, diags = load(str(tmp_path / "api.yaml"))
    assert doc is None and [d.code for d in diags] == ["GW001"]

"""Path templates: parsing, precedence and overlap (the plan stage's inputs)."""
import pytest

from gwc.paths import GREEDY, LITERAL, MIXED, PARAM, TemplateError, lua_pattern, parse_template, templates_overlap


@pytest.mark.parametrize(
    "text, kinds",
    [
        ("/", [LITERAL]),
        ("/pets", [LITERAL]),
        ("/pets/", [LITERAL, LITERAL]),
        ("/pets/{id}", [LITERAL, PARAM]),
        ("/gists/{sid}.json", [LITERAL, MIXED]),
        ("/compare/{base}...{head}", [LITERAL, MIXED]),
        ("/files/{proxy+}", [LITERAL, GREEDY]),
        ("/a%20b", [LITERAL]),
    ],
)
def test_parse(text, kinds):
    assert [s.kind for s in parse_template(text).segments] == kinds


def test_literal_segments_are_percent_decoded():
    assert parse_template("/a%20b").segments[0].parts == ("a b",)


@pytest.mark.parametrize(
    "text",
    ["pets", "/a//b", "/a/{x}{y}", "/a/{p+}/b", "/a/x{p+}", "/a/{x}/{x}", "/a/{", "/a/}", "/a b", "/a/../b", "/a/{}"],
)
def test_rejects(text):
    with pytest.raises(TemplateError):
        parse_template(text)


@pytest.mark.parametrize(
    "key,text,query,fragment",
    [
        ("/#X-Amz-Target=Svc.Op", "/", None, "X-Amz-Target=Svc.Op"),
        ("/webhdfs/v1/{path}#op=APPEND", "/webhdfs/v1/{path}", None, "op=APPEND"),
        ("/combined_submissions?v=2", "/combined_submissions", "v=2", None),
        ("/a?v=2#x", "/a", "v=2", "x"),
    ],
)
def test_query_and_fragment_are_kept_aside(key, text, query, fragment):
    t = parse_template(key)
    assert (t.text, t.query, t.fragment, t.key) == (text, query, fragment, key)
    assert t.shape() == parse_template(text).shape()


def _winner(*texts):
    return min(texts, key=lambda t: parse_template(t).precedence())


@pytest.mark.parametrize(
    "candidates, winner",
    [
        (["/pets/{id}", "/pets/mine"], "/pets/mine"),
        (["/{a}/b/c", "/a/{x}/c", "/a/b/{y}"], "/a/b/{y}"),
        (["/{a}/b/c", "/a/{x}/c"], "/a/{x}/c"),
        (["/gists/{id}", "/gists/{sid}.json"], "/gists/{sid}.json"),
        (["/x/{a}.{b}", "/x/{a}.json"], "/x/{a}.json"),
        (["/files/{p+}", "/{a}/{b}"], "/{a}/{b}"),
        (["/{p+}", "/files/{p+}"], "/files/{p+}"),
        (["/a/{p+}", "/a/{x}/{p+}"], "/a/{x}/{p+}"),
    ],
)
def test_precedence(candidates, winner):
    assert _winner(*candidates) == winner


@pytest.mark.parametrize(
    "a, b, overlap",
    [
        ("/pets/{id}", "/pets/{name}", True),
        ("/pets/{id}", "/pets/mine", True),
        ("/pets/{id}", "/dogs/{id}", False),
        ("/f/{a}.json", "/f/data.{b}", True),
        ("/f/{a}.json", "/f/{b}.xml", False),
        ("/f/{a}x", "/f/x{b}", True),
        ("/a/{p+}", "/a/b/c", True),
        ("/a/{p+}", "/b/c", False),
        ("/a/{p+}", "/a", False),
        ("/a/{x}", "/a/{x}/", False),
    ],
)
def test_overlap(a, b, overlap):
    assert templates_overlap(parse_template(a), parse_template(b)) is overlap
    assert templates_overlap(parse_template(b), parse_template(a)) is overlap


def test_lua_pattern_escapes_magic_characters():
    seg = parse_template("/{base}...{head}").segments[0]
    assert lua_pattern(seg) == "^(.+)%.%.%.(.+)$"
    seg = parse_template("/v{n}%25+").segments[0]
    assert lua_pattern(seg) == "^v(.+)%%%+$"

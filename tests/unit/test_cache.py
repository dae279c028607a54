"""Structural validation is reused only for exactly the inputs that passed."""
from gwc import cache as cache_mod
from gwc import pipeline
from gwc.cache import ValidationCache

SPEC = """\
openapi: 3.0.3
info: {title: t, version: "1"}
x-gateway: {upstreams: {a: {servers: ["http://127.0.0.1:1"]}}, upstream: a}
paths:
  /a: {$ref: "paths.yaml#/a"}
"""


def calls(monkeypatch):
    seen = []
    real = pipeline.validate_stage.check_openapi_structure

    def counting(doc):
        seen.append(doc.root.display)
        return real(doc)

    monkeypatch.setattr(pipeline.validate_stage, "check_openapi_structure", counting)
    return seen


def test_reused_after_success_and_invalidated_by_any_referenced_file(tmp_path, monkeypatch):
    seen = calls(monkeypatch)
    cache = ValidationCache(tmp_path / "cache")
    (tmp_path / "api.yaml").write_text(SPEC)
    (tmp_path / "paths.yaml").write_text("a: {get: {responses: {'200': {description: ok}}}}\n")
    assert pipeline.check(str(tmp_path / "api.yaml"), cache=cache).ok
    assert pipeline.check(str(tmp_path / "api.yaml"), cache=cache).ok
    assert len(seen) == 1, "the second run reuses the first one's validation"
    (tmp_path / "paths.yaml").write_text("a: {get: {responses: {'200': {descriptio: ok}}}}\n")
    result = pipeline.check(str(tmp_path / "api.yaml"), cache=cache)
    assert not result.ok and [d.code for d in result.diagnostics] == ["GW010"]
    assert len(seen) == 2
    result = pipeline.check(str(tmp_path / "api.yaml"), cache=cache)
    assert not result.ok and len(seen) == 3, "failures are never recorded"


def test_disabled_by_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GWC_NO_CACHE", "1")
    assert cache_mod.default_dir() is None
    monkeypatch.delenv("GWC_NO_CACHE")
    monkeypatch.setenv("GWC_CACHE_DIR", str(tmp_path))
    assert cache_mod.default_dir() == tmp_path

"""docs/reference.md is generated from the schemas and must stay in sync."""
from gwc import reference
from gwc.diagnostics import CODES


def test_reference_page_is_current(repo_root):
    page = (repo_root / "docs" / "reference.md").read_text()
    assert page == reference.render(), "docs/reference.md is stale: python -m gwc.reference > docs/reference.md"


def test_every_schema_key_is_documented():
    for name, _typ, _default, description in reference._rows({"$ref": "#/$defs/root"}, reference.SCHEMA_BASE + "x-gateway.json", ""):
        assert description.strip(), f"{name} has no description in schemas/"


def test_every_diagnostic_code_is_listed(repo_root):
    page = (repo_root / "docs" / "reference.md").read_text()
    for code in CODES:
        assert f"`{code}`" in page

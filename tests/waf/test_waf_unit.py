"""The WAF at build time: the model (levels, defaults, limits), the grammar every
spec value passes before it reaches ModSecurity (GW095/GW096 as located
errors), the rules text, the nginx directives (crossplane, the allow-list),
and GW097 from --check. Live behaviour is in test_waf_live.py."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import crossplane
import pytest

from gwc import pipeline, verify, waf
from gwc.render import RenderOptions
from gwc.runtime import Runtime

from unit.test_structure import ALLOWED

BASE = """
openapi: 3.1.0
info: {title: W, version: "1"}
x-gateway:
  upstreams: {a: {servers: ["http://127.0.0.1:9"]}}
  upstream: a
  validate: {parameters: false, body: false}
%s
paths:
  /search:
    get:
      operationId: search
%s
      responses: {"200": {description: ok}}
  /items/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    put:
      operationId: replace
      requestBody: {content: {application/json: {schema: {type: object}}, application/merge-patch+json: {schema: {type: object}}}}
      responses: {"200": {description: ok}}
  /open:
    x-gateway: {waf: false}
    get:
      operationId: open
      responses: {"200": {description: ok}}
"""


def build(tmp_path, root: str, op: str = "", files=None):
    spec = tmp_path / "api.yaml"
    spec.write_text(BASE % (textwrap.indent(textwrap.dedent(root), "  "), textwrap.indent(textwrap.dedent(op), "      ")))
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return pipeline.build(str(spec), RenderOptions(install_dir="/srv/gw"))


def ok(tmp_path, root: str, op: str = "", files=None):
    result = build(tmp_path, root, op, files)
    assert result.ok, [str(d) for d in result.diagnostics]
    return result


def ops(result):
    return {op.operation_id: op for op in result.plan.gateway.operations}


def errors(result):
    return [(d.code, d.pointer, d.line) for d in result.diagnostics if d.is_error]


# --- model ---------------------------------------------------------------------------------

def test_levels_defaults_and_waf_false(tmp_path):
    result = ok(tmp_path, "waf: {paranoia: 2}", "x-gateway: {waf: {mode: detect}}")
    by_id = ops(result)
    assert by_id["open"].waf is None
    search, replace = by_id["search"].waf, by_id["replace"].waf
    assert (search.mode, search.paranoia) == ("detect", 2)  # maps deep-merge
    assert (replace.mode, replace.paranoia, replace.inbound_threshold, replace.max_body) == ("block", 2, 5, "128k")
    assert search.methods == ("GET", "HEAD")
    assert replace.methods == ("PUT",)
    assert replace.content_types == ("application/json", "application/merge-patch+json")
    assert search.content_types == tuple(sorted(waf.CRS_CONTENT_TYPES))  # no body declared: the CRS's list


def test_no_waf_anywhere_means_no_modsecurity(tmp_path):
    result = ok(tmp_path, "")
    conf = result.files["nginx.conf"].decode()
    assert "modsecurity" not in conf and all(op.waf is None for op in result.plan.gateway.operations)


def test_waf_true_is_every_default(tmp_path):
    search = ops(ok(tmp_path, "waf: true"))["search"].waf
    assert (search.mode, search.paranoia, search.json, search.oversize, search.rules) == ("block", 1, True, "reject", "crs")


def test_oversize_reject_lowers_the_body_limit(tmp_path):
    result = ok(tmp_path, "waf: {inspect: {max_body: 64k}}")
    locs = {loc.ident: loc for loc in result.plan.locations}
    by_loc = dict(zip([op.operation_id for op in result.plan.gateway.operations], result.plan.operation_locations))
    assert locs[by_loc["search"]].max_body_size == "64k"
    assert locs[by_loc["open"]].max_body_size is None
    passing = ok(tmp_path, "waf: {inspect: {max_body: 64k, oversize: pass}}")
    assert all(loc.max_body_size is None for loc in passing.plan.locations)
    assert "SecRequestBodyLimitAction ProcessPartial" in passing.files["nginx.conf"].decode()


# --- grammar: bad input is a located error -----------------------------------------------------

@pytest.mark.parametrize("exclusion,pointer", [
    ("{rule: 0}", "/exclusions/0/rule"),
    ("{rule: 10000000}", "/exclusions/0/rule"),  # the schema's maximum
    ("{rule: '942100-942000'}", "/exclusions/0/rule"),
    ("{rule: '942100,ctl:ruleEngine=Off'}", "/exclusions/0/rule"),
    ("{rules: [942100, 'abc'], target: 'ARGS:x'}", "/exclusions/0/rules/1"),
    ("{rule: 942100, target: 'ARGS:x,ctl:ruleEngine=Off'}", "/exclusions/0/target"),
    ("{rule: 942100, target: \"ARGS:x'\"}", "/exclusions/0/target"),
    ("{rule: 942100, target: 'ARGS:%{tx.0}'}", "/exclusions/0/target"),
    ("{rule: 942100, target: 'ARGS:a;b'}", "/exclusions/0/target"),
    ("{rule: 942100, target: 'REQUEST_BODY:x'}", "/exclusions/0/target"),
    ("{rule: 942100, target: 'TX:anomaly_score'}", "/exclusions/0/target"),
    ("{rule: 942100, target: 'args:x'}", "/exclusions/0/target"),
    ("{rule: 942100, rules: [942110]}", "/exclusions/0"),
    ("{rules: ['100-200'], target: 'ARGS:x'}", "/exclusions/0"),  # no CRS rule in the range
])
def test_bad_exclusion_is_gw095_at_its_place(tmp_path, exclusion, pointer):
    result = build(tmp_path, f"waf: {{exclusions: [{exclusion}]}}")
    found = errors(result)
    assert found and all(code in ("GW095", "GW021") for code, _, _ in found), found
    assert any(p == "/x-gateway/waf" + pointer and line for _, p, line in found), found


def test_bad_exclusion_on_an_operation_points_there(tmp_path):
    result = build(tmp_path, "waf: {}", "x-gateway: {waf: {exclusions: [{rule: 942100, target: 'ARGS:a b'}]}}")
    assert [(c, p) for c, p, _ in errors(result)] == [("GW095", "/paths/~1search/get/x-gateway/waf/exclusions/0/target")]


def test_max_body_beyond_the_body_limit_is_gw096(tmp_path):
    result = build(tmp_path, "max_body_size: 64k\nwaf: {inspect: {max_body: 1m}}")
    assert [(c, p) for c, p, _ in errors(result)] == [("GW096", "/x-gateway/waf/inspect/max_body")] * 2
    assert "exceeds the operation's body limit '64k'" in result.diagnostics[0].message
    assert build(tmp_path, "max_body_size: 64k\nwaf: {inspect: {max_body: 1m, body: false}}").ok


def test_rules_files_outside_the_spec_directory_are_gw095(tmp_path):
    for name in ("../etc/x.conf", "/etc/modsecurity/x.conf", "missing.conf"):
        result = build(tmp_path, f"waf: {{rules_files: [{name!r}]}}")
        assert ("GW095", "/x-gateway/waf/rules_files/0") in [(c, p) for c, p, _ in errors(result)], name


@pytest.mark.parametrize("target", ["ARGS:json.a.b", "ARGS:q", "REQUEST_HEADERS:User-Agent", "REQUEST_COOKIES:session_id",
                                    "ARGS_NAMES", "REQUEST_BODY", "ARGS_POST:x-y_z.1", "FILES"])
def test_good_targets(target):
    assert waf.check_target(target) is None


# --- the rules text ----------------------------------------------------------------------------

def rules_of(result, location_name: str) -> str:
    """The modsecurity_rules arguments (unquoted) in force in the location named location_name:
    its own, then those of the location it is nested in, in ModSecurity's order of evaluation."""
    server = _gateway_server(result)

    def own(block):
        return "".join(d["args"][0] for d in block if d["directive"] == "modsecurity_rules")

    for loc, parents in _locations(server["block"]):
        if loc["args"][-1] == location_name:
            return own(loc["block"]) + "".join(own(p["block"]) for p in reversed(parents))
    raise AssertionError(location_name)


def _gateway_server(result):
    """The parsed server {} block of the output's nginx.conf (crossplane)."""
    payload = crossplane.parse(str(_write(result)), strict=False, check_ctx=False, check_args=False, single=True)
    assert payload["status"] == "ok", payload["errors"]
    return [d for d in _walk(payload["config"][0]["parsed"]) if d["directive"] == "server" and "block" in d][0]


def _locations(block, parents=()):
    """(location, the locations it is nested in) for every location in block."""
    for d in block:
        if d["directive"] == "location":
            yield d, parents
            yield from _locations(d["block"], parents + (d,))


def _write(result) -> Path:
    import tempfile

    out = Path(tempfile.mkdtemp()) / "nginx.conf"
    out.write_bytes(result.files["nginx.conf"])
    return out


def _walk(block, skip=()):
    for d in block:
        yield d
        if d["directive"] not in skip:
            yield from _walk(d.get("block", []), skip)


def test_rules_text_settings_and_exclusions(tmp_path):
    result = ok(tmp_path, """
        waf:
          paranoia: 3
          anomaly_threshold: {inbound: 10}
          inspect: {max_body: 64k}
          exclusions:
            - {rule: 942100, target: "ARGS:json.description"}
            - {rules: ["941000-941999"], target: "ARGS:html"}
            - {rules: [920350, "913100-913102"]}
        """)
    text = _rules_for(result, "replace")
    assert "SecRuleEngine On\n" in text
    assert "SecRequestBodyLimit 65536\n" in text
    assert "setvar:tx.paranoia_level=3," in text and "setvar:tx.inbound_anomaly_score_threshold=10," in text
    assert "setvar:'tx.allowed_methods=PUT'" in text
    assert "setvar:'tx.allowed_request_content_type=|application/json| |application/merge-patch+json|'" in text
    assert "ctl:ruleRemoveTargetById=942100;ARGS:json.description" in text
    # ... and from gwc's stage rules that stand for the multiMatch rule 942100
    assert "".join(f",ctl:ruleRemoveTargetById={i};ARGS:json.description" for i in range(9991020, 9991024)) in text
    assert "ctl:ruleRemoveTargetById=941100;ARGS:html" in text and "ctl:ruleRemoveTargetById=941380;ARGS:html" in text
    assert "ctl:ruleRemoveById=920350,ctl:ruleRemoveById=913100-913102" in text
    assert f"Include {waf.CRS_RULES_DIR}/REQUEST-942*.conf" in text and f"Include {waf.CRS_SETUP}" in text
    assert "SecAuditLog /srv/gw/logs/waf.log\n" in text
    # the CRS before the summary, the summary before the blocking evaluation, nolog on every scoring rule after
    order = [text.index(s) for s in ("REQUEST-944*", "SecRuleRemoveById 930110 934100 942100 942130\n", "id:9991029,",
                                     "id:9990005,", "REQUEST-949*", "SecRuleUpdateActionById 942190 ")]
    assert order == sorted(order)
    assert text.count("SecRuleUpdateActionById") == len(waf.CRS_SCORING_RULES) - len(waf.CRS_MULTIMATCH_RULES)
    assert "SecRuleUpdateActionById 942100 " not in text


def _rules_for(result, operation_id: str) -> str:
    by_id = dict(zip([op.operation_id for op in result.plan.gateway.operations], result.plan.operation_locations))
    return rules_of(result, f"gw:{by_id[operation_id]}")


def test_detect_mode_and_json_processor(tmp_path):
    text = _rules_for(ok(tmp_path, "waf: {mode: detect, inspect: {json: false}}"), "search")
    assert "SecRuleEngine DetectionOnly\n" in text
    assert "requestBodyProcessor=JSON" not in text
    text = _rules_for(ok(tmp_path, "waf: {}"), "search")
    assert "ctl:requestBodyProcessor=JSON" in text


def test_rules_files_come_verbatim_after_the_operation_s_rules_and_before_the_crs(tmp_path):
    extra = 'SecRule ARGS:debug "@streq 1" "id:10001,phase:1,deny,status:403,msg:\'no debug\\\'s\'"\n'
    result = ok(tmp_path, "waf: {rules_files: [rules/extra.conf]}", files={"rules/extra.conf": extra})
    text = _rules_for(result, "search")
    # crossplane keeps nginx's escapes; the template indents every line
    lines = [line.strip() for line in re.sub(r"\\(['\"\\])", r"\1", text).splitlines()]
    start = lines.index("# rules_files: rules/extra.conf")
    end = [i for i, line in enumerate(lines) if line.startswith("# gwc WAF: the OWASP CRS")][0]
    assert [line for line in lines[start:end] if line] == ["# rules_files: rules/extra.conf", extra.strip()]
    assert lines.index("SecAuditLogFormat Native") < start


def test_a_rules_file_naming_a_replaced_crs_rule_is_warned_once_with_the_ids_to_name(tmp_path):
    extra = 'SecRule REQUEST_FILENAME "@beginsWith /search" "id:10002,phase:1,pass,nolog,ctl:ruleRemoveById=930110"\n'
    result = ok(tmp_path, "waf: {rules_files: [rules/extra.conf]}", files={"rules/extra.conf": extra})
    warnings = [d for d in result.diagnostics if d.code == "GW098"]
    assert len(warnings) == 1, [str(d) for d in warnings]  # one file, several operations: one warning
    (w,) = warnings
    assert not w.is_error and w.pointer == "/x-gateway/waf/rules_files/0" and w.line > 0
    assert "930110" in w.message and "9991000-9991004" in w.message
    # Ids that only contain a replaced id's digits are not that id.
    extra = 'SecRule ARGS "@rx x" "id:19301100,phase:1,pass,nolog"\n'
    result = ok(tmp_path, "waf: {rules_files: [rules/extra.conf]}", files={"rules/extra.conf": extra})
    assert not [d for d in result.diagnostics if d.code == "GW098"]


# --- nginx directives --------------------------------------------------------------------------

def test_directives_are_allowed_and_only_in_waf_locations(tmp_path):
    result = ok(tmp_path, "waf: {}")
    conf = _write(result)
    payload = crossplane.parse(str(conf), strict=False, check_ctx=False, check_args=False, single=True)
    tree = payload["config"][0]["parsed"]
    assert {d["directive"] for d in _walk(tree, skip=("map", "geo"))} <= ALLOWED
    loads = [d["args"][0] for d in tree if d["directive"] == "load_module"]
    assert waf.MODSECURITY_MODULE in loads
    by_id = dict(zip([op.operation_id for op in result.plan.gateway.operations], result.plan.operation_locations))
    server = [d for d in _walk(tree) if d["directive"] == "server" and "block" in d][0]
    locations = {loc["args"][-1]: loc["block"] for loc, _ in _locations(server["block"])}
    for op_id, ident in by_id.items():
        names = [d["directive"] for d in locations[f"gw:{ident}"]]
        if op_id == "open":
            assert not [n for n in names if n.startswith("modsecurity")] and "error_log" not in names
        else:
            assert names.count("modsecurity") == 1 and "modsecurity_transaction_id" in names
            assert ["crit"] == [d["args"][1] for d in locations[f"gw:{ident}"] if d["directive"] == "error_log"]
    # nginx reads a token into a 4096-byte buffer
    for line_token in re.findall(r"modsecurity_rules ('(?:[^'\\]|\\.)*')", result.files["nginx.conf"].decode()):
        assert len(line_token.encode()) < 4096


def test_block_locations_log_only_crit_and_detect_locations_notice(tmp_path):
    result = ok(tmp_path, "waf: {}", "x-gateway: {waf: {mode: detect}}")
    server = _gateway_server(result)
    locations = {loc["args"][-1]: loc["block"] for loc, _ in _locations(server["block"])}
    by_id = dict(zip([op.operation_id for op in result.plan.gateway.operations], result.plan.operation_locations))
    levels = {op_id: [d["args"][1] for d in locations[f"gw:{ident}"] if d["directive"] == "error_log"]
              for op_id, ident in by_id.items()}
    assert levels == {"search": ["notice"], "replace": ["crit"], "open": []}


def test_the_crs_is_parsed_once_around_the_crs_locations_only(tmp_path):
    result = ok(tmp_path, "waf: {}", "x-gateway: {waf: {rules: none}}")
    conf = result.files["nginx.conf"].decode()
    assert conf.count(f"Include {waf.CRS_RULES_DIR}/REQUEST-942*.conf") == 1
    server = _gateway_server(result)
    parents = {loc["args"][-1]: [p["args"] for p in up] for loc, up in _locations(server["block"])}
    by_id = dict(zip([op.operation_id for op in result.plan.gateway.operations], result.plan.operation_locations))
    assert parents[f"gw:{by_id['replace']}"] == [["gw:"]]  # the CRS operation
    assert parents[f"gw:{by_id['search']}"] == [] and parents[f"gw:{by_id['open']}"] == []  # rules: none, waf: false
    holder = [loc for loc, _ in _locations(server["block"]) if loc["args"] == ["gw:"]][0]["block"]
    assert [d["directive"] for d in holder][0] == "internal"
    assert not [d for d in holder if d["directive"] == "modsecurity"]  # on only in the operations' locations
    # without a CRS operation there is no holder
    assert "location gw: {" not in ok(tmp_path, "waf: {rules: none}").files["nginx.conf"].decode()


def test_conf_d_names_the_module_to_load(tmp_path):
    assert f"load_module {waf.MODSECURITY_MODULE};" in ok(tmp_path, "waf: {}").files["conf.d/gateway.conf"].decode()
    assert "load_module" not in ok(tmp_path, "").files["conf.d/gateway.conf"].decode()


def test_quoting_round_trips_through_nginx_s_rules():
    text = "a 'b' \\ \\\\ \\n \"c\" ; { } $x\n"
    quoted = waf.nginx_quoted(text)
    # nginx's unescaping inside quotes: \\ \' \" become the character; others stay
    assert re.sub(r"\\(['\"\\])", r"\1", quoted[1:-1]) == text


def test_crs_scoring_rules_match_the_installed_crs():
    rules_dir = Path(waf.CRS_RULES_DIR)
    if not rules_dir.is_dir():
        pytest.skip(f"no CRS installed at {rules_dir} (scripts/install-runtime)")
    found = []
    for path in sorted(rules_dir.glob("*.conf")):
        text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
        chain = []
        for statement in (l.strip() for l in text.splitlines() if re.match(r"\s*Sec(Rule|Action)\b", l)):
            chain.append(statement)
            if re.search(r"[\"',]\s*chain\s*[,\"']", statement):
                continue
            m = re.search(r"id:(\d+)", chain[0])
            if m and re.search(r"anomaly_score_pl\d=\+", " ".join(chain)):
                found.append(int(m.group(1)))
            chain = []
    assert sorted(found) == sorted(waf.CRS_SCORING_RULES)


def _crs_rule(rule_id: int):
    """(variables, operator, actions) of one installed CRS rule."""
    for path in sorted(Path(waf.CRS_RULES_DIR).glob("*.conf")):
        for line in re.sub(r"\\\n\s*", "", path.read_text(encoding="utf-8")).splitlines():
            if line.startswith("SecRule ") and f'"id:{rule_id},' in line:
                m = re.match(r'SecRule (\S+) "((?:[^"\\]|\\.)*)"\s*"(.*)"\s*$', line)
                assert m, line
                return m.groups()
    raise AssertionError(f"rule {rule_id} not in the installed CRS")


def test_multimatch_rules_are_the_installed_crs_s():
    """gwc's equivalents test what the CRS rules test: same variables, operator, transformations,
    scores and tags; and no other CRS rule is marked multiMatch."""
    rules_dir = Path(waf.CRS_RULES_DIR)
    if not rules_dir.is_dir():
        pytest.skip(f"no CRS installed at {rules_dir} (scripts/install-runtime)")
    marked = set()
    for path in sorted(rules_dir.glob("*.conf")):
        for line in re.sub(r"\\\n\s*", "", path.read_text(encoding="utf-8")).splitlines():
            if line.startswith("SecRule") and re.search(r"[\",]\s*multiMatch\s*[,\"]", line):
                marked.add(int(re.search(r"id:(\d+)", line).group(1)))
    assert marked == set(waf.MULTIMATCH_BY_ID)
    for rule in waf.CRS_MULTIMATCH_RULES:
        variables, operator, actions = _crs_rule(rule.id)
        assert (variables, operator) == (rule.variables, rule.operator)
        assert tuple(re.findall(r"\bt:(\w+)", actions)) == rule.transformations
        assert tuple(re.findall(r"setvar:'([^']*)'", actions)) == rule.scores
        assert tuple(re.findall(r"tag:'([^']*)'", actions)) == rule.tags
        assert f"tag:'paranoia-level/{rule.paranoia}'" in actions
        first, last = rule.stage_ids
        assert last - first + 1 == len(rule.stages) <= 7


def test_multimatch_rules_are_replaced_and_exclusions_follow(tmp_path):
    result = ok(tmp_path, """
        waf:
          exclusions:
            - {rules: ["942000-942199"], target: "ARGS:q"}
            - {rules: [930110, "934000-934999"]}
        """)
    text = _rules_for(result, "search")
    assert "SecRuleRemoveById 930110 934100 942100 942130\n" in text
    # the 942100 stages: the original value, then each transformation in turn; scored once per flag
    for n, t in enumerate(["t:none,", "t:none,t:utf8toUnicode,", "t:none,t:utf8toUnicode,t:urlDecodeUni,",
                           "t:none,t:utf8toUnicode,t:urlDecodeUni,t:removeNulls,"]):
        assert re.search(rf'"@detectSQLi" "id:{9991020 + n},phase:2,pass,nolog,noauditlog,{t}tag:', text), n
    assert "id:9991024," not in text
    assert re.search(r'SecRule TX:/\^gwc_mm_942100_/ "@eq 1" "id:9991029,[^"]*'
                     r"setvar:'tx.anomaly_score_pl1=\+%\{tx.critical_anomaly_score\}'", text)
    assert "SecRule TX:GWC_MATCHED_942100 \"@eq 1\" \"id:9991027," in text
    assert "%{MATCHED_VAR}=1'" in text and "logdata" not in text.split("# gwc WAF: the OWASP CRS")[1]
    # paranoia 2 for 942130
    assert '"@lt 2" "id:9991038,phase:2,pass,nolog,noauditlog,t:none,skipAfter:GWC-END-942130"' in text
    # exclusions: a targeted range names the stage rules of 942100 and 942130 (942130 is in 942000-942199)
    targeted = re.search(r'SecAction "id:9990101,[^"]*"', text).group(0)
    for i in list(range(9991020, 9991024)) + list(range(9991030, 9991033)):
        assert f",ctl:ruleRemoveTargetById={i};ARGS:q" in targeted
    removed = re.search(r'SecAction "id:9990102,[^"]*"', text).group(0)
    assert removed.endswith(",ctl:ruleRemoveById=930110,ctl:ruleRemoveById=934000-934999"
                            ",ctl:ruleRemoveById=9991000-9991004,ctl:ruleRemoveById=9991010-9991012\"")


# --- verify ------------------------------------------------------------------------------------

def test_check_without_the_module_is_gw097(tmp_path, monkeypatch):
    result = ok(tmp_path, "waf: {}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "nginx.conf").write_bytes(result.files["nginx.conf"])
    monkeypatch.setattr(verify, "MODSECURITY_MODULE", str(tmp_path / "missing.so"))
    diags = verify.check_waf_runtime(out, Runtime("native", "/usr/sbin/nginx", "nginx-lua", "nginx"))
    assert [d.code for d in diags] == ["GW097"] and "libnginx-mod-http-modsecurity" in diags[0].message
    (out / "nginx.conf").write_bytes(ok(tmp_path, "").files["nginx.conf"])
    assert verify.check_waf_runtime(out, Runtime("native", "/usr/sbin/nginx", "nginx-lua", "nginx")) == []


def test_chunks_keep_continuations_and_chains_together():
    text = 'A "id:1,chain"\nB "x"\nC \\\n  "id:2,\\\n    chain"\nD\nE\n'
    assert waf._statements(text) == ['A "id:1,chain"\nB "x"\n', 'C \\\n  "id:2,\\\n    chain"\nD\n', "E\n"]


def test_a_rules_file_rule_too_long_for_nginx_is_an_error(tmp_path):
    long_rule = 'SecRule ARGS "@pm ' + " ".join(f"w{i}" for i in range(1200)) + '" "id:10002,phase:2,deny"\n'
    result = build(tmp_path, "waf: {rules_files: [big.conf]}", files={"big.conf": long_rule})
    assert [d.code for d in result.diagnostics if d.is_error] == ["GW038"]
    assert "does not fit in one nginx directive" in result.diagnostics[0].message


# --- the build cache -------------------------------------------------------------------------

def test_a_changed_rules_file_rebuilds_with_the_structural_cache(tmp_path):
    """The cache (gwc/cache.py) only skips the OpenAPI structural check of unchanged spec files;
    the WAF reads its rules_files on every build, so an edited file reaches the output even on a hit."""
    from gwc.cache import ValidationCache

    cache = ValidationCache(tmp_path / "cache")
    rule = 'SecRule ARGS:debug "@streq %s" "id:10001,phase:1,deny,status:403,nolog"\n'
    spec = tmp_path / "api.yaml"
    spec.write_text(BASE % ("  waf: {rules_files: [extra.conf]}", ""))
    texts = []
    for value in ("1", "2"):
        (tmp_path / "extra.conf").write_text(rule % value)
        result = pipeline.build(str(spec), RenderOptions(install_dir="/srv/gw"), cache=cache)
        assert result.ok, [str(d) for d in result.diagnostics]
        texts.append(b"".join(result.files.values()).decode("utf-8", "replace"))
    # one key for both builds: the second was a hit (the rules file is no input of the structural check)
    assert len(list((tmp_path / "cache" / "structural").iterdir())) == 1
    assert '@streq 1' in texts[0] and '@streq 2' not in texts[0]
    assert '@streq 2' in texts[1] and '@streq 1' not in texts[1]

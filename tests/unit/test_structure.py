"""Structural checks of the generated configuration through crossplane's parse tree."""
import json
import re
import subprocess
import sys
import textwrap

import crossplane
import pytest

from golden.cases import CASES, expected_dir

# Every directive gwc may emit. A directive outside this list means a spec
# value escaped its quoting.
ALLOWED = {
    "load_module", "worker_processes", "pid", "error_log", "events", "worker_connections", "http",
    "default_type", "sendfile", "tcp_nodelay", "keepalive_timeout", "client_body_temp_path", "proxy_temp_path",
    "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path", "lua_package_path", "init_by_lua_block", "log_format",
    "upstream", "least_conn", "hash", "server", "keepalive", "listen", "server_tokens", "client_max_body_size",
    "access_log", "merge_slashes", "set", "add_header", "uninitialized_variable_warn", "error_page", "location",
    "set_by_lua_block", "rewrite", "internal", "proxy_pass", "proxy_http_version", "proxy_set_header",
    "proxy_hide_header", "proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout", "proxy_next_upstream",
    "proxy_next_upstream_tries", "proxy_next_upstream_timeout", "proxy_ssl_server_name", "proxy_ssl_name",
    "if", "return", "pcre_jit", "proxy_ssl_session_reuse", "proxy_ssl_verify", "proxy_ssl_verify_depth", "proxy_ssl_trusted_certificate",
    "content_by_lua_block", "init_worker_by_lua_block", "map",
    # access policy
    "access_by_lua_block", "client_body_buffer_size", "geo", "env", "lua_socket_log_errors", "lua_shared_dict",
    "lua_ssl_trusted_certificate", "lua_ssl_verify_depth", "resolver", "set_real_ip_from", "real_ip_header",
    "real_ip_recursive", "ssl_certificate", "ssl_certificate_key", "ssl_protocols", "ssl_session_cache",
    "ssl_client_certificate", "ssl_verify_client", "ssl_verify_depth", "ssl_crl",
    # traffic
    "limit_req_zone", "limit_req", "limit_req_status", "limit_req_log_level",
    # the WAF (docs/waf.md)
    "modsecurity", "modsecurity_rules", "modsecurity_transaction_id", "header_filter_by_lua_block",
    "body_filter_by_lua_block",
    # the response cache (docs/cache.md)
    "proxy_cache_path", "proxy_cache", "proxy_cache_key", "proxy_cache_methods", "proxy_cache_valid",
    "proxy_ignore_headers", "proxy_no_cache", "proxy_cache_bypass", "proxy_cache_lock", "proxy_cache_use_stale",
    "open_file_cache",
    # compression (docs/compression.md)
    "gzip", "gzip_types", "gzip_min_length", "gzip_comp_level", "gzip_proxied", "gzip_vary",
    "brotli", "brotli_types", "brotli_min_length", "brotli_comp_level",
}


def parse(path):
    result = crossplane.parse(str(path), strict=False, check_ctx=False, check_args=False, single=True)
    assert result["status"] == "ok", result["errors"]
    return result["config"][0]["parsed"]


def walk(block, parents=()):
    for d in block:
        yield d, parents
        if "block" in d:
            yield from walk(d["block"], parents + (d,))


def find(block, name):
    return [d for d, _ in walk(block) if d["directive"] == name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_known_directives(name):
    tree = parse(expected_dir(name) / "nginx.conf")
    # Entries inside a map block are source/value pairs, not directives.
    # map and geo entries are data (checked below and in test_security_model), not directives.
    unknown = {d["directive"] for d, parents in walk(tree) if not (parents and parents[-1]["directive"] in ("map", "geo"))} - ALLOWED
    assert not unknown
    maps = {tuple(m["args"]): [(e["directive"], e["args"]) for e in m["block"]] for m in find(tree, "map")}
    base = {
        ("$gw_rid", "$gw_request_id"): [("", ["$request_id"]), ("default", ["$gw_rid"])],
        ("$request_uri", "$gw_log_path"): [("~^(?<path>[^?]*)", ["$path"])],
    }
    assert {k: maps.get(k) for k in base} == base
    # The capabilities' maps (cache, CORS, compression) set gwc's own variables, to
    # flags, header values gwc wrote, or the request's own Origin.
    for (source, variable), entries in maps.items():
        if (source, variable) in base:
            continue
        assert variable.startswith("$gw_"), (source, variable)
        for _, values in entries:
            assert len(values) == 1 and (values[0] == "$http_origin" or re.fullmatch(r"[A-Za-z0-9 ,._:*/-]*", values[0])), \
                (variable, values)


@pytest.mark.parametrize("name", sorted(CASES))
def test_locations_and_upstreams_are_consistent(name):
    out = expected_dir(name)
    tree = parse(out / "nginx.conf")
    routes = json.loads((out / "lua/gwc/data/routes.json").read_text())
    servers = find(tree, "server")
    gateway_servers = [s for s in servers if "block" in s]
    assert len(gateway_servers) == 1
    locations = {tuple(d["args"]): d for d in find(gateway_servers[0]["block"], "location")}
    # Every location an operation jumps to exists, is exact-match and internal.
    for op in routes["operations"]:
        loc = locations[("=", "gw:" + op["loc"])]
        assert [d["directive"] for d in loc["block"]][0] == "internal"
    for rejection in ("e404", "e405"):
        assert ("=", "gw:" + rejection) in locations
    # The only location a client path can reach is the router.
    reachable = [args for args, d in locations.items() if not any(x["directive"] == "internal" for x in d["block"])]
    assert ("=", "gw:declare") in locations
    assert reachable == [("/",)]
    router = locations[("/",)]["block"]
    assert [d["directive"] for d in router] == ["if", "set_by_lua_block", "rewrite"]
    guard = router[0]
    assert guard["args"][:2] == ["$request_uri", "~"]
    assert [(d["directive"], d["args"]) for d in guard["block"]] == [("set", ["$gw_problem", "encoded_slash"]), ("return", ["400"])]
    # proxy_pass targets name declared upstream blocks.
    upstreams = {d["args"][0] for d in find(tree, "upstream")}
    for d in find(tree, "proxy_pass"):
        target = d["args"][0].split("://", 1)[1].split("$", 1)[0]
        assert target in upstreams


def test_conf_d_is_the_same_gateway_with_absolute_paths():
    out = expected_dir("petstore")
    full = parse(out / "nginx.conf")
    included = parse(out / "conf.d" / "gateway.conf")
    http = find(full, "http")[0]["block"]
    skip = {"default_type", "sendfile", "tcp_nodelay", "keepalive_timeout", "client_body_temp_path", "proxy_temp_path",
            "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path"}
    assert [d["directive"] for d in http if d["directive"] not in skip] == [d["directive"] for d in included]
    assert find(included, "lua_package_path")[0]["args"] == ["/etc/nginx/gwc/lua/?.lua;;"]


NASTY = ['x;}', "a{b}", '$host', '"q"', "'s'", "line\nbreak", "\\", "#c"]


def test_spec_values_never_reach_the_config_unquoted(tmp_path, repo_root):
    """Paths, descriptions, ids, mock bodies and header values full of config
    syntax build fine, and the config's parse tree is the same as a clean spec's."""
    nasty = "".join(NASTY)
    spec = textwrap.dedent(f"""\
        openapi: 3.0.3
        info: {{title: {json.dumps(nasty)}, version: "1", description: {json.dumps(nasty)}}}
        x-gateway:
          upstreams: {{be: {{servers: ["http://127.0.0.1:9"]}}}}
          upstream: be
        paths:
          "/a;b/{{id}}/c\\"$x'%7B":
            parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]
            get:
              operationId: {json.dumps(nasty)}
              responses: {{"200": {{description: ok}}}}
          "/mock":
            get:
              x-gateway:
                mock: {{body: {json.dumps(nasty)}, headers: {{X-Nasty: {json.dumps(nasty.replace(chr(10), ' '))}}}}}
              responses: {{"200": {{description: ok}}}}
        """)
    clean = spec.replace('"/a;b/{id}/c\\"$x\'%7B"', '"/a/{id}"')
    for text in (json.dumps(nasty),):
        clean = clean.replace(text, '"clean"')
    results = {}
    for label, body in (("nasty", spec), ("clean", clean)):
        (tmp_path / f"{label}.yaml").write_text(body)
        out = tmp_path / label
        proc = subprocess.run([sys.executable, "-m", "gwc.cli", "build", f"{label}.yaml", "-o", label, "--target", "nginx-lua"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        shape = [(d["directive"], len(parents)) for d, parents in walk(parse(out / "nginx.conf"))]
        results[label] = (shape, out)
    assert results["nasty"][0] == results["clean"][0]
    data = json.loads((results["nasty"][1] / "lua/gwc/data/routes.json").read_text())
    assert data["operations"][0]["id"] == nasty
    assert data["operations"][1]["mock"]["body"] == nasty
    conf = (results["nasty"][1] / "nginx.conf").read_text()
    assert "a;b" not in conf and nasty not in conf

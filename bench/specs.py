"""OpenAPI documents the benchmarks generate for themselves.

Every spec routes to one upstream `be` and runs exactly one nginx worker, so
the worker's CPU counters describe the whole gateway. Every templated path
parameter is declared (`in: path, required: true`) and every operation has
`responses`, so the specs pass `gwc validate`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import yaml


# One worker per nginx, like every nginx bench/run.py writes itself.
WORKER_PROCESSES = 1


def _root(backend_port: int, title: str) -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1"},
        "x-gateway": {
            "nginx": {"worker_processes": WORKER_PROCESSES},
            "upstreams": {"be": {"servers": [f"http://127.0.0.1:{backend_port}"]}},
            "upstream": "be",
        },
        "paths": {},
    }


def _param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _params_of(path: str) -> List[str]:
    out, pos = [], 0
    while True:
        start = path.find("{", pos)
        if start < 0:
            return out
        end = path.index("}", start)
        out.append(path[start + 1 : end])
        pos = end + 1


def _ok(description: str = "ok") -> dict:
    return {"200": {"description": description}}


def dump(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False, width=200)


# --- one route ---------------------------------------------------------------------------


def one_route(backend_port: int) -> dict:
    spec = _root(backend_port, "bench one-route")
    spec["paths"]["/pets/{petId}"] = {
        "parameters": [_param("petId")],
        "get": {"operationId": "getPet", "responses": _ok()},
    }
    return spec


# --- many routes -------------------------------------------------------------------------


def many_routes(backend_port: int) -> dict:
    """About 1,100 routes shaped like a real API: concrete and templated paths,
    several levels, a shared `/repos/{owner}/{repo}/` prefix, mixed segments
    (`{sku}.json`) and a few paths that begin with a parameter."""
    spec = _root(backend_port, "bench many-routes")
    paths = spec["paths"]

    def add(path: str, methods: Tuple[str, ...], op_base: str) -> None:
        item: dict = {}
        params = _params_of(path)
        if params:
            item["parameters"] = [_param(p) for p in params]
        for m in methods:
            item[m] = {"operationId": f"{op_base}_{m}", "responses": _ok()}
        paths[path] = item

    add("/healthz", ("get",), "healthz")
    add("/status", ("get",), "status")
    for i in range(150):
        add(f"/svc{i}/items", ("get", "post"), f"svc{i}_items")
        add(f"/svc{i}/items/{{itemId}}", ("get", "put", "delete"), f"svc{i}_item")
        add(f"/svc{i}/items/{{itemId}}/history", ("get",), f"svc{i}_item_history")
    for i in range(200):
        add(f"/repos/{{owner}}/{{repo}}/thing{i}", ("get", "post"), f"repo_thing{i}")
        add(f"/repos/{{owner}}/{{repo}}/thing{i}/{{thingId}}", ("get", "patch"), f"repo_thing{i}_item")
    for i in range(80):
        add(f"/orgs/{{org}}/teams/{{teamSlug}}/res{i}", ("get",), f"org_team_res{i}")
    for i in range(50):
        add(f"/v2/catalog{i}/{{sku}}.json", ("get",), f"catalog{i}_sku")
    for i in range(40):
        add(f"/users/{{username}}/lists{i}", ("get",), f"user_lists{i}")
    for i in range(10):
        add(f"/{{tenant}}/reports{i}", ("get",), f"tenant_reports{i}")
    return spec


def concrete_path(template: str) -> str:
    """A request path that the template matches and that spells no literal of
    the bench specs (so it cannot be captured by a more specific route)."""
    out = template
    for name in _params_of(template):
        out = out.replace("{" + name + "}", f"{name.lower()}-7", 1)
    return out


# The path the many-routes bench uses for "no route": it walks into the trie
# under /repos/{owner}/{repo}/ and fails there, the realistic 404.
MISSING_PATH = "/repos/octo/hello/thing-missing/x"


# --- a GitHub-size spec for the compile bench --------------------------------------------

_REPO_RESOURCES = [
    "issues", "pulls", "commits", "branches", "tags", "releases", "deployments", "environments",
    "hooks", "keys", "labels", "milestones", "projects", "collaborators", "invitations", "forks",
    "stargazers", "subscribers", "contributors", "languages", "topics", "teams", "actions-runs",
    "actions-jobs", "actions-artifacts", "actions-secrets", "actions-variables", "actions-workflows",
    "actions-caches", "actions-runners", "check-runs", "check-suites", "code-scanning-alerts",
    "code-scanning-analyses", "codespaces", "dependabot-alerts", "dependabot-secrets",
    "secret-scanning-alerts", "security-advisories", "pages-builds", "autolinks", "rulesets",
    "environments-secrets", "git-blobs", "git-trees", "git-refs", "git-tags", "notifications",
    "comments", "statuses", "traffic-views", "vulnerability-alerts", "discussions", "packages",
    "assignees",
]
_ORG_RESOURCES = [
    "members", "outside-collaborators", "teams", "repos", "hooks", "invitations", "projects",
    "packages", "actions-secrets", "actions-variables", "actions-runners", "actions-runner-groups",
    "codespaces", "copilot-seats", "custom-roles", "security-managers", "blocks", "migrations",
    "rulesets", "installations", "dependabot-secrets", "credential-authorizations",
]
_USER_RESOURCES = [
    "repos", "gists", "followers", "following", "starred", "subscriptions", "orgs", "events",
    "received-events", "keys", "gpg-keys", "ssh-signing-keys", "packages", "projects", "social-accounts",
]
_ME_RESOURCES = [
    "repos", "emails", "followers", "following", "keys", "gpg-keys", "ssh-signing-keys", "starred",
    "subscriptions", "orgs", "teams", "issues", "installations", "migrations", "codespaces",
    "packages", "blocks", "interaction-limits", "memberships-orgs", "social-accounts",
    "marketplace-purchases", "repository-invitations", "public-emails", "projects",
]
_TOP_LEVEL = [
    "/", "/meta", "/emojis", "/events", "/feeds", "/gitignore/templates", "/licenses", "/markdown",
    "/markdown/raw", "/networks/{owner}/{repo}/events", "/notifications", "/octocat", "/organizations",
    "/rate_limit", "/repositories", "/search/code", "/search/commits", "/search/issues",
    "/search/labels", "/search/repositories", "/search/topics", "/search/users", "/users", "/versions",
    "/zen", "/app", "/app/hook/config", "/app/hook/deliveries", "/app/installations",
    "/applications/grants", "/gists", "/gists/public", "/gists/starred", "/marketplace_listing/plans",
]


def _ident(name: str) -> str:
    return name.replace("-", "_")


def _schema_name(resource: str) -> str:
    return resource.rstrip("s").replace("_", "-") or resource


def github_like(backend_port: int, target_paths: int = 800) -> dict:
    """About 800 paths and 1,200 operations with GitHub's shape: a third of the
    paths under /repos/{owner}/{repo}/, shared parameters and responses in
    components, and request/response schemas that $ref each other."""
    spec = _root(backend_port, "bench github-like")
    spec["servers"] = [{"url": "https://api.example.com"}]
    components: Dict[str, dict] = {"parameters": {}, "schemas": {}, "responses": {}, "requestBodies": {}}
    spec["components"] = components
    params = components["parameters"]
    schemas = components["schemas"]

    for name in ("owner", "repo", "org", "username", "enterprise", "team_id", "gist_id"):
        params[name] = _param(name)
    params["per-page"] = {"name": "per_page", "in": "query", "schema": {"type": "integer", "default": 30, "maximum": 100}}
    params["page"] = {"name": "page", "in": "query", "schema": {"type": "integer", "default": 1}}
    params["direction"] = {"name": "direction", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}}

    schemas["simple-user"] = {
        "type": "object",
        "required": ["login", "id", "url"],
        "properties": {
            "login": {"type": "string"},
            "id": {"type": "integer", "format": "int64"},
            "node_id": {"type": "string"},
            "avatar_url": {"type": "string", "format": "uri"},
            "url": {"type": "string", "format": "uri"},
            "type": {"type": "string"},
            "site_admin": {"type": "boolean"},
        },
    }
    schemas["license-simple"] = {
        "type": "object",
        "properties": {"key": {"type": "string"}, "name": {"type": "string"}, "spdx_id": {"type": "string", "nullable": True}},
    }
    schemas["repository"] = {
        "type": "object",
        "required": ["id", "name", "full_name", "owner", "private"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "full_name": {"type": "string"},
            "owner": {"$ref": "#/components/schemas/simple-user"},
            "private": {"type": "boolean"},
            "license": {"allOf": [{"$ref": "#/components/schemas/license-simple"}], "nullable": True},
            "topics": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    schemas["basic-error"] = {
        "type": "object",
        "properties": {"message": {"type": "string"}, "documentation_url": {"type": "string"}, "status": {"type": "string"}},
    }
    schemas["validation-error"] = {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["code"],
                    "properties": {"resource": {"type": "string"}, "field": {"type": "string"}, "code": {"type": "string"}},
                },
            },
        },
    }
    components["responses"]["not_found"] = {
        "description": "Resource not found",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/basic-error"}}},
    }
    components["responses"]["validation_failed"] = {
        "description": "Validation failed",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/validation-error"}}},
    }

    def resource_schema(resource: str) -> str:
        return ensure_schema(_schema_name(resource))

    def ensure_schema(name: str) -> str:
        if name not in schemas:
            schemas[name] = {
                "type": "object",
                "required": ["id", "url"],
                "properties": {
                    "id": {"type": "integer"},
                    "node_id": {"type": "string"},
                    "url": {"type": "string", "format": "uri"},
                    "name": {"type": "string"},
                    "state": {"type": "string", "enum": ["open", "closed"]},
                    "user": {"$ref": "#/components/schemas/simple-user"},
                    "repository": {"$ref": "#/components/schemas/repository"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            }
        if name not in components["requestBodies"]:
            components["requestBodies"][name] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "body": {"type": "string"}, "labels": {"type": "array", "items": {"type": "string"}}},
                        }
                    }
                },
            }
        return name

    paths = spec["paths"]
    counter = {"ops": 0}

    def declare(path: str, shared: Tuple[str, ...]) -> List[dict]:
        out = []
        for p in _params_of(path):
            if p in shared:
                out.append({"$ref": f"#/components/parameters/{p}"})
            else:
                out.append(_param(p))
        return out

    def op(op_id: str, method: str, schema: Optional[str], many: bool) -> dict:
        counter["ops"] += 1
        if schema:
            ensure_schema(schema)
        body_schema: dict = {"$ref": f"#/components/schemas/{schema}"} if schema else {"type": "object"}
        if many:
            body_schema = {"type": "array", "items": body_schema}
        out: dict = {
            "operationId": op_id,
            "summary": op_id.replace("/", " ").replace("-", " "),
            "tags": [op_id.split("/")[0]],
        }
        if many:
            out["parameters"] = [{"$ref": "#/components/parameters/per-page"}, {"$ref": "#/components/parameters/page"}]
        if method in ("post", "put", "patch") and schema:
            out["requestBody"] = {"$ref": f"#/components/requestBodies/{schema}"}
        status = {"post": "201", "delete": "204"}.get(method, "200")
        responses: dict = {}
        if status == "204":
            responses["204"] = {"description": "No content"}
        else:
            responses[status] = {"description": "Response", "content": {"application/json": {"schema": body_schema}}}
        responses["404"] = {"$ref": "#/components/responses/not_found"}
        if method in ("post", "put", "patch"):
            responses["422"] = {"$ref": "#/components/responses/validation_failed"}
        out["responses"] = responses
        return out

    shared = ("owner", "repo", "org", "username", "enterprise", "team_id", "gist_id")

    def add(path: str, methods: Tuple[str, ...], op_base: str, schema: Optional[str], many: bool = False) -> None:
        names = _params_of(path)
        if path in paths or len(paths) >= target_paths or len(set(names)) != len(names):
            return
        item: dict = {}
        declared = declare(path, shared)
        if declared:
            item["parameters"] = declared
        for m in methods:
            item[m] = op(f"{op_base}/{m}", m, schema, many and m == "get")
        paths[path] = item

    for path in _TOP_LEVEL:
        add(path, ("get",), "meta/" + _ident(path.strip("/").replace("/", "-").replace("{", "").replace("}", "") or "root"), None)

    add("/repos/{owner}/{repo}", ("get", "patch", "delete"), "repos/get", "repository")
    # Repository sub-resources: list, one item, and its nested collections.
    # Method counts mirror GitHub: about 1.5 operations per path.
    for n, res in enumerate(_REPO_RESOURCES):
        schema = resource_schema(res)
        rid = _ident(res.rstrip("s")) + "_id"
        base = f"/repos/{{owner}}/{{repo}}/{res}"
        tag = "repos-" + _ident(res)
        add(base, ("get", "post") if n % 2 == 0 else ("get",), tag + "/list", schema, many=True)
        add(f"{base}/{{{rid}}}", ("get", "patch", "delete") if n % 3 == 0 else ("get", "delete") if n % 3 == 1 else ("get",), tag + "/item", schema)
        add(f"{base}/{{{rid}}}/comments", ("get", "post") if n % 2 else ("get",), tag + "/comments", "comment", many=True)
        add(f"{base}/{{{rid}}}/comments/{{comment_id}}", ("get", "patch", "delete") if n % 4 == 0 else ("get",), tag + "/comment", "comment")
        add(f"{base}/{{{rid}}}/reactions", ("get", "post") if n % 3 == 0 else ("get",), tag + "/reactions", "reaction", many=True)
        add(f"{base}/{{{rid}}}/events", ("get",), tag + "/events", "event", many=True)
    # GitHub's mixed segments and refs.
    add("/repos/{owner}/{repo}/compare/{basehead}", ("get",), "repos/compare", "commit")
    add("/repos/{owner}/{repo}/zipball/{ref}", ("get",), "repos/zipball", None)
    add("/repos/{owner}/{repo}/tarball/{ref}", ("get",), "repos/tarball", None)
    add("/repos/{owner}/{repo}/contents/{path}", ("get", "put", "delete"), "repos/contents", "content")
    add("/repos/{owner}/{repo}/readme/{dir}", ("get",), "repos/readme-dir", "content")
    add("/repos/{owner}/{repo}/actions/runs/{run_id}/logs.zip", ("get",), "actions/run-logs", None)
    add("/repos/{owner}/{repo}/releases/assets/{asset_id}.{ext}", ("get",), "repos/release-asset", None)

    for prefix, pname, resources, tagbase in (
        ("/orgs/{org}", "org", _ORG_RESOURCES, "orgs"),
        ("/enterprises/{enterprise}", "enterprise", _ORG_RESOURCES[:14], "enterprise-admin"),
        ("/users/{username}", "username", _USER_RESOURCES, "users"),
        ("/teams/{team_id}", "team_id", _ORG_RESOURCES[:8], "teams"),
    ):
        add(prefix, ("get", "patch") if pname != "username" else ("get",), f"{tagbase}/get", pname)
        for n, res in enumerate(resources):
            schema = resource_schema(res)
            rid = _ident(res.rstrip("s")) + "_id"
            tag = f"{tagbase}-{_ident(res)}"
            add(f"{prefix}/{res}", ("get", "post") if n % 2 == 0 else ("get",), tag + "/list", schema, many=True)
            add(f"{prefix}/{res}/{{{rid}}}", ("get", "put", "delete") if n % 2 == 0 else ("get",), tag + "/item", schema)
            add(f"{prefix}/{res}/{{{rid}}}/settings", ("get", "patch"), tag + "/settings", schema)
            add(f"{prefix}/{res}/{{{rid}}}/repos", ("get",), tag + "/repos", "repository", many=True)

    for n, res in enumerate(_ME_RESOURCES):
        schema = resource_schema(res)
        rid = _ident(res.rstrip("s")) + "_id"
        add(f"/user/{res}", ("get", "post") if n % 2 == 0 else ("get",), f"me-{_ident(res)}/list", schema, many=True)
        add(f"/user/{res}/{{{rid}}}", ("get", "delete"), f"me-{_ident(res)}/item", schema)
        add(f"/user/{res}/{{{rid}}}/repos", ("get",), f"me-{_ident(res)}/repos", "repository", many=True)

    for name in ("gists", "gist-comments", "gist-forks"):
        resource_schema(name)
    add("/gists/{gist_id}", ("get", "patch", "delete"), "gists/get", "gist")
    add("/gists/{gist_id}/{sha}", ("get",), "gists/revision", "gist")
    add("/gists/{gist_id}/comments", ("get", "post"), "gists/comments", "gist-comment", many=True)
    add("/gists/{gist_id}/comments/{comment_id}", ("get", "patch", "delete"), "gists/comment", "gist-comment")
    add("/gists/{gist_id}/forks", ("get", "post"), "gists/forks", "gist-fork", many=True)
    add("/gists/{gist_id}/star", ("get", "put", "delete"), "gists/star", None)

    # Top up with deeper repository paths until the target is reached, the
    # way GitHub's long tail looks (/repos/{owner}/{repo}/x/{id}/y/{id2}).
    n = 0
    while len(paths) < target_paths:
        res = _REPO_RESOURCES[n % len(_REPO_RESOURCES)]
        sub = ("assets", "reviews", "requested-reviewers", "attempts", "timing", "files", "protection", "logs")[(n // len(_REPO_RESOURCES)) % 8]
        rid = _ident(res.rstrip("s")) + "_id"
        sid = _ident(sub.rstrip("s")) + "_id"
        base = f"/repos/{{owner}}/{{repo}}/{res}/{{{rid}}}/{sub}"
        tag = f"repos-{_ident(res)}-{_ident(sub)}"
        add(base, ("get", "post") if n % 3 == 0 else ("get",), tag + "/list", resource_schema(sub), many=True)
        add(f"{base}/{{{sid}}}", ("get", "delete") if n % 2 == 0 else ("get",), tag + "/item", resource_schema(sub))
        n += 1
    return spec


def synthetic_routes(backend_port: int, routes: int = 10_000) -> dict:
    """`routes` paths, one GET each and a POST with a JSON body on every fourth:
    literal and templated segments mixed, 50 shared component schemas, so the
    compiler's cost per route shows without one real API's quirks."""
    spec = _root(backend_port, f"bench synthetic {routes} routes")
    schemas = {
        f"thing-{k}": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 100}, "tags": {"type": "array", "items": {"type": "string"}}},
        }
        for k in range(50)
    }
    spec["components"] = {"schemas": schemas, "parameters": {"id": _param("id"), "sub_id": _param("sub_id")}}
    paths = spec["paths"]
    shapes = ("", "/{id}", "/{id}/sub", "/{id}/sub/{sub_id}")
    for i in range(routes):
        k = (i // 4) % 50
        path = f"/g{i // 200}/r{k}{shapes[i % 4]}"
        ref = {"$ref": f"#/components/schemas/thing-{k}"}
        item: dict = {
            "get": {"operationId": f"get-{i}", "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": ref}}}}},
        }
        names = _params_of(path)
        if names:
            item["parameters"] = [{"$ref": f"#/components/parameters/{n}"} for n in names]
        if i % 4 == 0:
            item["post"] = {"operationId": f"post-{i}", "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}, "responses": _ok()}
        paths[path] = item
    return spec


def count(spec: dict) -> Tuple[int, int]:
    """(paths, operations)."""
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    paths = spec["paths"]
    return len(paths), sum(1 for item in paths.values() for m in methods if m in item)


# --- access policy (issue 3) ---------------------------------------------------------------

AUTH_ROUTES = {
    # path prefix -> security scheme (None: public, the gwc baseline)
    "/pets": None,
    "/rs": "rs",
    "/rs-cold": "rs_cold",
    "/es-cold": "es_cold",
    "/key": "key",
}


def auth(backend_port: int, rsa_jwk: dict, ec_jwk: dict, keys_file: str) -> dict:
    """One gateway, one operation per scheme. The *_cold schemes keep a
    one-entry verified-token cache, so a pool of distinct tokens always misses."""
    spec = _root(backend_port, "bench auth")
    spec["openapi"] = "3.1.0"
    spec["x-gateway"]["keys"] = keys_file
    common = {"issuer": "https://id.bench/", "audiences": ["bench"]}
    spec["components"] = {
        "securitySchemes": {
            "rs": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "x-gateway": {**common, "algorithms": ["RS256"], "jwks": {"keys": [rsa_jwk]}}},
            "rs_cold": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                        "x-gateway": {**common, "algorithms": ["RS256"], "jwks": {"keys": [rsa_jwk]}, "cache_size": 1}},
            "es_cold": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                        "x-gateway": {**common, "algorithms": ["ES256"], "jwks": {"keys": [ec_jwk]}, "cache_size": 1}},
            "key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    }
    for prefix, scheme in AUTH_ROUTES.items():
        path = prefix + "/{petId}"
        op = {"operationId": "get" + prefix.strip("/").replace("-", "_"), "responses": _ok()}
        op["security"] = [{scheme: []}] if scheme else []
        spec["paths"][path] = {"parameters": [_param("petId")], "get": op}
    return spec


# --- request validation (issue 4) ---------------------------------------------------------


def validation(backend_port: int, schemas: dict) -> dict:
    """POST /pets validates a Pet body; POST /raw/pets accepts the same body unvalidated."""
    spec = _root(backend_port, "bench validation")
    spec["openapi"] = "3.1.0"
    spec["components"] = {"schemas": schemas}
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}
    spec["paths"]["/pets"] = {"post": {"operationId": "createPet", "requestBody": body, "responses": _ok()}}
    spec["paths"]["/raw/pets"] = {
        "post": {"operationId": "createPetRaw", "requestBody": body, "x-gateway": {"validate": {"body": False}}, "responses": _ok()}
    }
    return spec


# --- traffic (issue 9) ---------------------------------------------------------------------

# Rates no bench run comes near, so a limit is checked and charged on every
# request and never refuses one; the bursts are large because nginx's
# limit_req and the Lua GCRA both see many requests in the same millisecond.
# IDLE: one token per µs, far faster than requests arrive, so every request
# finds the bucket idle (TAT in the past), the costlier path (charge, then
# lift TAT to now). Not faster: the interval must stay above the float
# resolution of a millisecond timestamp (about 0.2 µs), or a charge adds
# nothing. BUSY: one token per 100 µs, slower than wrk sends, so TAT runs
# ahead of the clock (the one-incr path) but stays within the burst's
# tolerance (10^7 x 0.1 ms = 1,000 s) for a whole bench.
NEVER_REFUSE = {"rate": "1000000/s", "burst": 1000000}
NEVER_REFUSE_BUSY = {"rate": "10000/s", "burst": 10000000}

TRAFFIC_ROUTES = {
    # path prefix -> (security scheme or None, rate_limit key or None, scope, rates)
    "/key": ("key", None, None, None),  # API key, no limit: the reference of the consumer limits
    "/node": ("key", "consumer", "node", NEVER_REFUSE),
    "/node-busy": ("key", "consumer", "node", NEVER_REFUSE_BUSY),
    "/fleet": ("key", "consumer", "fleet", NEVER_REFUSE),
    "/pets": (None, None, None, None),  # public, no limit: the reference of the per-IP limit
    "/ip": (None, "ip", "node", NEVER_REFUSE),
}


def traffic(backend_port: int, keys_file: str, redis: Optional[dict], headers: str = "ietf") -> dict:
    """One gateway, one operation per kind of limit, each beside the same
    operation without one. `redis` is the x-gateway.redis block (standalone
    `url` or `cluster` seeds), or None for a gateway with node limits only;
    `headers: none` lets nginx's limit_req enforce the per-IP limit."""
    spec = _root(backend_port, "bench traffic")
    spec["openapi"] = "3.1.0"
    gw = spec["x-gateway"]
    gw["keys"] = keys_file
    gw["rate_limit_headers"] = headers
    if redis is not None:
        gw["redis"] = redis
    spec["components"] = {"securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}}
    for prefix, (scheme, key, scope, rates) in TRAFFIC_ROUTES.items():
        if scope == "fleet" and redis is None:
            continue
        name = prefix.strip("/")
        op: dict = {"operationId": "get_" + name.replace("-", "_"), "security": [{scheme: []}] if scheme else [], "responses": _ok()}
        if key:
            op["x-gateway"] = {"rate_limit": {"name": f"bench-{name}", "key": key, "scope": scope, **rates}}
        spec["paths"][prefix + "/{petId}"] = {"parameters": [_param("petId")], "get": op}
    return spec

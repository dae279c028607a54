"""Stage 3, the web application firewall (x-gateway.waf): ModSecurity v3 with
the OWASP Core Rule Set, per operation.

Every spec value that reaches the generated ModSecurity rules is checked
here against a strict grammar (rule ids, ranges, targets, sizes, media
types), so a spec can never add a rule or an action; the rules text itself is
written by templates/waf.conf.j2 from the frozen Waf below. See docs/waf.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .diagnostics import WARNING, Diagnostic
from .load import SourceFile
from .schema_defaults import with_defaults

# Debian's modsecurity-crs (CRS 3.3): the rules are referenced, never copied.
CRS_RULES_DIR = "/usr/share/modsecurity-crs/rules"
CRS_SETUP = "/etc/modsecurity/crs/crs-setup.conf"
MODSECURITY_MODULE = "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so"
CRS_SETUP_VERSION = 334
# gwc's own rule ids: above the CRS's six-digit range, inside the 1-9999999 a spec may name.
OWN_RULE_BASE = 9990000

# The CRS 3.3.4 rules that add to an anomaly score (chain starters), from
# Debian's package (tests/waf/test_waf_unit.py checks this against the
# installed CRS). Each gets `nolog,noauditlog` and appends its id to
# tx.gwc_rules, so the one record gwc writes names the matched rules without
# their matched data (docs/waf.md, "Logs").
CRS_SCORING_RULES: Tuple[int, ...] = (
    910000, 910100, 910150, 910160, 910170, 910180, 911100, 913100, 913110, 913120, 913101, 913102,
    920100, 920120, 920160, 920170, 920171, 920180, 920181, 920190, 920210, 920220, 920240, 920250,
    920260, 920270, 920280, 920290, 920310, 920311, 920330, 920340, 920350, 920380, 920360, 920370,
    920390, 920400, 920410, 920470, 920420, 920480, 920530, 920430, 920440, 920500, 920450, 920600,
    920620, 920200, 920201, 920230, 920300, 920271, 920320, 920121, 920341, 920272, 920490, 920510,
    920202, 920273, 920274, 920275, 920460, 921110, 921120, 921130, 921140, 921150, 921160, 921190,
    921200, 921421, 921151, 921422, 921230, 921180, 922100, 922110, 922120, 930100, 930110, 930120,
    930130, 931100, 931110, 931120, 931130, 932100, 932105, 932110, 932115, 932120, 932130, 932140,
    932150, 932160, 932170, 932171, 932180, 932200, 932106, 932190, 933100, 933110, 933120, 933130,
    933140, 933200, 933150, 933160, 933170, 933180, 933210, 933151, 933131, 933161, 933111, 933190,
    934100, 941100, 941110, 941120, 941130, 941140, 941160, 941170, 941180, 941190, 941200, 941210,
    941220, 941230, 941240, 941250, 941260, 941270, 941280, 941290, 941300, 941310, 941350, 941360,
    941370, 941101, 941150, 941320, 941330, 941340, 941380, 942100, 942140, 942160, 942170, 942190,
    942220, 942230, 942240, 942250, 942270, 942280, 942290, 942320, 942350, 942360, 942500, 942110,
    942120, 942130, 942150, 942180, 942200, 942210, 942260, 942300, 942310, 942330, 942340, 942361,
    942370, 942380, 942390, 942400, 942410, 942470, 942480, 942430, 942440, 942450, 942510, 942251,
    942490, 942420, 942431, 942460, 942101, 942511, 942421, 942432, 943100, 943110, 943120, 944100,
    944110, 944120, 944130, 944200, 944210, 944240, 944250, 944300, 950130, 950140, 950100, 951110,
    951120, 951130, 951140, 951150, 951160, 951170, 951180, 951190, 951200, 951210, 951220, 951230,
    951240, 951250, 951260, 952100, 952110, 953100, 953110, 953120, 954100, 954110, 954120, 954130,
)



@dataclass(frozen=True)
class MultiMatchRule:
    """A CRS rule marked multiMatch, which gwc replaces by its own rules (docs/waf.md, "Logs").

    libmodsecurity 3.0.9 (and 3.0.13) records a message for every multiMatch match,
    matched value included, before any nolog of the rule can act, so such a rule
    always puts the payload in the audit record. gwc removes the CRS rule
    (SecRuleRemoveById) and runs, in its place, one rule per stage of the
    rule's transformations (the original value, then after each transformation:
    the values multiMatch tests) with the same variables and operator. A stage
    that matches only flags the variable and its value after the stage's
    transformations (tx.gwc_mm_<id>_<variable>_<value>: a transformation that
    changes nothing gives the same flag, and multiMatch tests only the values
    that changed); one rule then adds the CRS rule's scores once per flag, as
    multiMatch adds them once per match, and one names the CRS id in
    tx.gwc_rules. The flags live in the transaction only (no audit part gwc
    writes holds TX). Texts copied from CRS 3.3.4 (Debian's package);
    tests/waf/test_waf_unit.py checks them against the installed CRS."""

    id: int
    paranoia: int
    variables: str
    operator: str  # as between the double quotes of the CRS file
    transformations: Tuple[str, ...]  # starting with none
    scores: Tuple[str, ...]  # the CRS rule's setvars
    tags: Tuple[str, ...]
    base: int  # gwc ids: base + stage, base + 7 naming it in tx.gwc_rules, base + 8 the paranoia guard, base + 9 scoring

    @property
    def stages(self) -> Tuple[Tuple[str, ...], ...]:
        """The transformations of each stage: none, then each prefix of the rest."""
        return tuple(self.transformations[:n] for n in range(1, len(self.transformations) + 1))

    @property
    def stage_ids(self) -> Tuple[int, int]:
        """The first and last id of the stage rules (the ids an exclusion of `id` also names)."""
        return self.base, self.base + len(self.transformations) - 1


_CRITICAL = "=+%{tx.critical_anomaly_score}"
CRS_MULTIMATCH_RULES: Tuple[MultiMatchRule, ...] = (
    MultiMatchRule(
        930110, 1, "REQUEST_URI|ARGS|REQUEST_HEADERS|!REQUEST_HEADERS:Referer|XML:/*",
        r"@rx (?:^|[\\/])\.\.(?:[\\/]|$)",
        ("none", "utf8toUnicode", "urlDecodeUni", "removeNulls", "cmdLine"),
        ("tx.anomaly_score_pl1" + _CRITICAL, "tx.lfi_score" + _CRITICAL),
        ("application-multi", "language-multi", "platform-multi", "attack-lfi", "paranoia-level/1", "OWASP_CRS",
         "capec/1000/255/153/126"),
        OWN_RULE_BASE + 1000),
    MultiMatchRule(
        934100, 1, "REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|ARGS_NAMES|ARGS|XML:/*",
        r"@rx (?:(?:_(?:\$\$ND_FUNC\$\$_|_js_function)|(?:new\s+Function|\beval)\s*\(|String\s*\.\s*fromCharCode"
        r"|function\s*\(\s*\)\s*{|this\.constructor)|module\.exports\s*=)",
        ("none", "urlDecodeUni", "base64Decode"),
        ("tx.rce_score" + _CRITICAL, "tx.anomaly_score_pl1" + _CRITICAL),
        ("application-multi", "language-javascript", "platform-multi", "attack-rce", "attack-injection-nodejs",
         "paranoia-level/1", "OWASP_CRS", "capec/1000/152/242"),
        OWN_RULE_BASE + 1010),
    MultiMatchRule(
        942100, 1, "REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|REQUEST_HEADERS:User-Agent"
        "|REQUEST_HEADERS:Referer|ARGS_NAMES|ARGS|XML:/*",
        "@detectSQLi",
        ("none", "utf8toUnicode", "urlDecodeUni", "removeNulls"),
        ("tx.anomaly_score_pl1" + _CRITICAL, "tx.sql_injection_score" + _CRITICAL),
        ("application-multi", "language-multi", "platform-multi", "attack-sqli", "paranoia-level/1", "OWASP_CRS",
         "capec/1000/152/248/66", "PCI/6.5.2"),
        OWN_RULE_BASE + 1020),
    MultiMatchRule(
        942130, 2, "ARGS_NAMES|ARGS|XML:/*",
        r"""@rx (?i:[\s'\"`()]*?\b([\d\w]+)\b[\s'\"`()]*?(?:<(?:=(?:[\s'\"`()]*?(?!\b\1\b)[\d\w]+|>[\s'\"`()]*?"""
        r"""(?:\b\1\b))|>?[\s'\"`()]*?(?!\b\1\b)[\d\w]+)|(?:not\s+(?:regexp|like)|is\s+not|>=?|!=|\^)[\s'\"`()]*?"""
        r"""(?!\b\1\b)[\d\w]+|(?:(?:sounds\s+)?like|r(?:egexp|like)|=)[\s'\"`()]*?(?:\b\1\b)))""",
        ("none", "urlDecodeUni", "replaceComments"),
        ("tx.sql_injection_score" + _CRITICAL, "tx.anomaly_score_pl2" + _CRITICAL),
        ("application-multi", "language-multi", "platform-multi", "attack-sqli", "OWASP_CRS", "capec/1000/152/248/66",
         "PCI/6.5.2", "paranoia-level/2"),
        OWN_RULE_BASE + 1030),
)
MULTIMATCH_BY_ID = {rule.id: rule for rule in CRS_MULTIMATCH_RULES}
_MULTIMATCH_ID = re.compile(r"(?<![0-9])(" + "|".join(str(r.id) for r in CRS_MULTIMATCH_RULES) + r")(?![0-9])")


def _replaced_rules_named(text: str) -> Tuple["MultiMatchRule", ...]:
    """The multiMatch rules gwc replaces that a user's rules text names by id (in any directive or action)."""
    named = {int(m.group(1)) for m in _MULTIMATCH_ID.finditer(text)}
    return tuple(r for r in CRS_MULTIMATCH_RULES if r.id in named)

# The CRS's default tx.allowed_request_content_type (crs-setup.conf.example, 3.3).
CRS_CONTENT_TYPES = (
    "application/x-www-form-urlencoded", "multipart/form-data", "multipart/related", "text/xml",
    "application/xml", "application/soap+xml", "application/x-amf", "application/json",
    "application/cloudevents+json", "application/cloudevents-batch+json", "application/octet-stream",
    "application/csp-report", "application/xss-auditor-report", "text/plain",
)

_RULE_ID = re.compile(r"^[1-9][0-9]{0,6}$")
_RANGE = re.compile(r"^([1-9][0-9]{0,6})-([1-9][0-9]{0,6})$")
# A collection that takes a selector, or a whole variable; selectors are
# letters, digits and `._-` only, so no `;`, `,`, quote, `%{` or `|` reaches a ctl.
_SELECTABLE = {
    "ARGS", "ARGS_GET", "ARGS_POST", "ARGS_NAMES", "ARGS_GET_NAMES", "ARGS_POST_NAMES",
    "REQUEST_HEADERS", "REQUEST_HEADERS_NAMES", "REQUEST_COOKIES", "REQUEST_COOKIES_NAMES",
    "FILES", "FILES_NAMES", "XML",
}
_WHOLE = {"REQUEST_BODY", "REQUEST_URI", "REQUEST_URI_RAW", "REQUEST_FILENAME", "REQUEST_BASENAME",
          "REQUEST_LINE", "QUERY_STRING", "REQUEST_METHOD", "REQUEST_PROTOCOL"}
_TARGET = re.compile(r"^([A-Z_]+)(?::([A-Za-z0-9._-]{1,128}))?$")
_SIZE = re.compile(r"^([0-9]{1,9})([kKmM]?)$")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+_-]{0,63}/[a-z0-9][a-z0-9.+_-]{0,63}$")
_RULES_FILE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,254}$")


def size_bytes(text: str) -> int:
    """An nginx size (`128k`, `8m`, `4096`) in bytes; the schemas checked the pattern."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


@dataclass(frozen=True)
class Exclusion:
    """Rules (inclusive id ranges) removed for one target, or entirely when target is None."""

    ranges: Tuple[Tuple[int, int], ...]
    target: Optional[str]

    def target_ids(self) -> Tuple[int, ...]:
        """The ids a targeted exclusion names: single ids as given, ranges as the CRS rules inside them
        (ModSecurity's ctl:ruleRemoveTargetById takes one id)."""
        out = []
        for first, last in self.ranges:
            if first == last:
                out.append(first)
            else:
                out.extend(i for i in sorted(CRS_SCORING_RULES) if first <= i <= last)
        return tuple(sorted(set(out)))

    def ctl_target_ids(self) -> Tuple[int, ...]:
        """target_ids(), and the stage rules gwc runs in place of a multiMatch rule among them."""
        out = []
        for rule in self.target_ids():
            out.append(rule)
            if rule in MULTIMATCH_BY_ID:
                first, last = MULTIMATCH_BY_ID[rule].stage_ids
                out.extend(range(first, last + 1))
        return tuple(out)

    def ctl_ranges(self) -> Tuple[Tuple[int, int], ...]:
        """ranges, and the stage rules of every multiMatch rule inside one (it is removed with them)."""
        out = list(self.ranges)
        for rule in CRS_MULTIMATCH_RULES:
            if any(first <= rule.id <= last for first, last in self.ranges) and rule.stage_ids not in out:
                out.append(rule.stage_ids)
        return tuple(out)


@dataclass(frozen=True)
class Waf:
    """One operation's effective WAF settings; operations with equal ones share a rules text."""

    mode: str  # block | detect
    rules: str  # crs | none
    paranoia: int
    inbound_threshold: int
    outbound_threshold: int
    inspect_body: bool
    max_body: str  # nginx size, as written
    max_body_bytes: int
    json: bool
    oversize: str  # reject | pass
    exclusions: Tuple[Exclusion, ...]
    rules_files: Tuple[Tuple[str, str], ...]  # (name relative to the spec, text)
    methods: Tuple[str, ...]  # tx.allowed_methods
    content_types: Tuple[str, ...]  # tx.allowed_request_content_type

    @property
    def module_path(self) -> str:
        """The nginx module the WAF needs loaded (conf.d/gateway.conf names it for the host's nginx.conf)."""
        return MODSECURITY_MODULE

    @property
    def splits_location(self) -> bool:
        """Whether the operation's location hands its requests to a named location that calls the
        upstream: block mode, whose location logs only [crit] (ModSecurity's refusal line holds the
        request line), so the upstream's errors are logged at the server's level there (docs/waf.md)."""
        return self.mode == "block"

    @property
    def rejects_oversize(self) -> bool:
        """Whether nginx itself refuses bodies larger than max_body (413), before the WAF."""
        return self.inspect_body and self.oversize == "reject"


def _rule_ranges(value: Any) -> Optional[Tuple[int, int]]:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if _RULE_ID.match(text):
        return int(text), int(text)
    m = _RANGE.match(text)
    if m and int(m.group(1)) <= int(m.group(2)):
        return int(m.group(1)), int(m.group(2))
    return None


def check_target(text: str) -> Optional[str]:
    """None when text is a target the grammar allows, else why not."""
    m = _TARGET.match(text)
    if not m:
        return "a target is VARIABLE or COLLECTION:selector, the selector letters, digits and '._-' only"
    name, selector = m.group(1), m.group(2)
    if name in _SELECTABLE:
        return None
    if name in _WHOLE:
        return None if selector is None else f"{name} takes no selector"
    return f"unknown or unsupported variable {name!r}"


def _content_types(media_types: Tuple[str, ...]) -> Tuple[str, ...]:
    """The operation's request media types, or the CRS's list when it declares none or a wildcard."""
    concrete = tuple(m for m in media_types if _MEDIA_TYPE.match(m))
    if not media_types or len(concrete) != len(media_types):
        return tuple(sorted(set(CRS_CONTENT_TYPES) | set(concrete)))
    return concrete


def build(raw: Any, src: SourceFile, ptr: str, diags: List[Diagnostic], method: str,
          media_types: Tuple[str, ...], body_limit: str, body_limit_ptr: str) -> Tuple[bool, Optional[Waf]]:
    """(ok, the operation's Waf or None when off). ok is False after an error.

    raw: the merged `waf` value; ptr: where it is written (innermost level);
    body_limit: the operation's effective body limit, which max_body may not exceed (GW096)."""
    if raw is None or raw is False:
        return True, None
    conf = with_defaults({} if raw is True else raw, {"$ref": "waf.json"})
    ok = True

    def error(code: str, message: str, where: str) -> None:
        nonlocal ok
        ok = False
        line, col = src.position(where)
        diags.append(Diagnostic(code, message, src.display, line, col, where))

    exclusions: List[Exclusion] = []
    for i, item in enumerate(conf["exclusions"]):
        where = f"{ptr}/exclusions/{i}"
        if not isinstance(item, dict):
            continue
        if ("rule" in item) == ("rules" in item):
            error("GW095", "an exclusion names its rules with exactly one of `rule` or `rules`", where)
            continue
        values = [(item["rule"], where + "/rule")] if "rule" in item else [
            (v, f"{where}/rules/{j}") for j, v in enumerate(item["rules"])]
        ranges = []
        for value, vptr in values:
            parsed = _rule_ranges(value)
            if parsed is None:
                error("GW095", f"invalid rule id or range {value!r}: ids are 1-9999999, ranges FIRST-LAST with FIRST <= LAST", vptr)
            else:
                ranges.append(parsed)
        target = item.get("target")
        if target is not None:
            why = check_target(str(target))
            if why:
                error("GW095", f"invalid exclusion target {target!r}: {why}", where + "/target")
                continue
        if len(ranges) == len(values):
            excl = Exclusion(tuple(ranges), target)
            if target is not None and not excl.target_ids():
                error("GW095", f"the range(s) of this exclusion hold no CRS rule to remove {target!r} from; name rule ids", where)
                continue
            exclusions.append(excl)

    max_body_bytes = size_bytes(conf["inspect"]["max_body"])
    if conf["inspect"]["body"] and max_body_bytes > size_bytes(body_limit):
        error("GW096", f"waf.inspect.max_body {conf['inspect']['max_body']!r} exceeds the operation's body limit "
              f"{body_limit!r} ({body_limit_ptr}); lower max_body or raise the limit",
              ptr + "/inspect/max_body" if isinstance(raw, dict) and "max_body" in (raw.get("inspect") or {}) else ptr)

    rules_files = []
    for i, name in enumerate(conf["rules_files"]):
        where = f"{ptr}/rules_files/{i}"
        if not _RULES_FILE_NAME.match(name) or ".." in name.split("/"):
            error("GW095", f"rules file {name!r} must be a path inside the spec's directory", where)
            continue
        try:
            text = (Path(src.path).parent / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            error("GW095", f"cannot read rules file {name!r}: {exc.__class__.__name__}: {exc}", where)
            continue
        if "\x00" in text:
            error("GW095", f"rules file {name!r} contains a NUL byte", where)
            continue
        for rule in _replaced_rules_named(text):
            first, last = rule.stage_ids
            line, col = src.position(where)
            warning = Diagnostic(
                "GW098", f"rules file {name!r} names CRS rule {rule.id}, which gwc runs as its own rules "
                f"{first}-{last} (docs/waf.md, \"What gwc generates\"): a removal or update of {rule.id} alone "
                f"leaves them running; name {first}-{last} too (or use `exclusions`, which does)",
                src.display, line, col, where, severity=WARNING)
            if warning not in diags:
                diags.append(warning)
        rules_files.append((name, text))
    if not ok:
        return False, None
    methods = (method, "HEAD") if method == "GET" else (method,)
    return True, Waf(
        mode=conf["mode"],
        rules=conf["rules"],
        paranoia=conf["paranoia"],
        inbound_threshold=conf["anomaly_threshold"]["inbound"],
        outbound_threshold=conf["anomaly_threshold"]["outbound"],
        inspect_body=conf["inspect"]["body"],
        max_body=conf["inspect"]["max_body"],
        max_body_bytes=max_body_bytes,
        json=conf["inspect"]["json"],
        oversize=conf["inspect"]["oversize"],
        exclusions=tuple(exclusions),
        rules_files=tuple(rules_files),
        methods=methods,
        content_types=_content_types(media_types),
    )


def effective_body_limit(waf: Optional[Waf], limit: Optional[str], default: str) -> Optional[str]:
    """The location's client_max_body_size: with `oversize: reject` nginx refuses what the WAF would not inspect."""
    if waf is None or not waf.rejects_oversize:
        return limit
    current = limit or default
    return waf.max_body if waf.max_body_bytes < size_bytes(current) else limit


def nginx_quoted(text: str) -> str:
    """text as one single-quoted nginx token that nginx's parser turns back into exactly text."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


CRS_REQUEST_GROUPS = ("90", "91", "92", "93", "941", "942", "943", "944")
# nginx reads a configuration token into a 4096-byte buffer: longer ones are
# "too long parameter". The rules go into several modsecurity_rules directives,
# each counted with room for the indentation templates add to every line.
_CHUNK_BYTES = 4000
_INDENT_ALLOWANCE = 16
_CHUNK_MARK = "#chunk"


class RulesTooLong(ValueError):
    """A single rule of a rules file does not fit in one nginx token."""


# The argument of the `waf_rules` filter that stands for the CRS part, held once by
# the location around every CRS location: templates/http.conf.j2 passes it where a
# location passes its Waf.
SERVER_PART = "crs"


def rules_chunks(template, waf, audit_log: str) -> Tuple[str, ...]:
    """The WAF's ModSecurity rules as nginx-quoted modsecurity_rules arguments, in order.

    waf: a location's Waf (its own part), or SERVER_PART for the CRS, parsed
    once for all the locations that run it (docs/waf.md, "What gwc generates").
    Pieces between #chunk marks are parsed by separate modsecurity_rules
    directives, so each keeps what must be parsed together (SecDefaultAction
    with the CRS it applies to) in one piece when it fits."""
    text = template.render(
        part="server" if waf == SERVER_PART else "location", waf=None if waf == SERVER_PART else waf,
        base=OWN_RULE_BASE, audit_log=audit_log, crs_setup=CRS_SETUP, crs_rules_dir=CRS_RULES_DIR,
        crs_request_groups=CRS_REQUEST_GROUPS, crs_setup_version=CRS_SETUP_VERSION,
        scoring_rules=sorted(set(CRS_SCORING_RULES) - set(MULTIMATCH_BY_ID)),
        multimatch_rules=CRS_MULTIMATCH_RULES,
    )
    out: List[str] = []
    for piece in text.split("\n" + _CHUNK_MARK + "\n"):
        current = ""
        for statement in _statements(piece):
            if _token_bytes(statement) > _CHUNK_BYTES:
                raise RulesTooLong(f"a rule of {len(statement)} bytes does not fit in one nginx directive: {statement[:80]!r}...")
            if current and _token_bytes(current + statement) > _CHUNK_BYTES:
                out.append(nginx_quoted(current))
                current = ""
            current += statement
        if current.strip():
            out.append(nginx_quoted(current))
    return tuple(out)


def _token_bytes(text: str) -> int:
    return len(nginx_quoted(text).encode("utf-8")) + _INDENT_ALLOWANCE * text.count("\n")


_CHAIN = re.compile(r"[\"',]\s*chain\s*[,\"']")


def _statements(text: str) -> List[str]:
    """Lines joined with their backslash continuations, each ending in a newline;
    a chained rule stays with the rules it chains to (they must be parsed together)."""
    out: List[str] = []
    chained = ""
    current = ""
    for line in text.splitlines(keepends=True):
        current += line if line.endswith("\n") else line + "\n"
        if line.rstrip("\r\n").endswith("\\"):
            continue
        chained += current
        if not _CHAIN.search(re.sub(r"\\\r?\n", " ", current)):
            out.append(chained)
            chained = ""
        current = ""
    if chained or current:
        out.append(chained + current)
    return out

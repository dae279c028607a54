"""Command-line interface. The only place that decides exit codes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import click

from . import __version__
from . import diagnostics as diag_mod
from . import cache as cache_mod
from . import pipeline, runtime
from .cache import ValidationCache
from .diagnostics import Diagnostic
from .output import write_output
from .render import DEFAULT_INSTALL_DIR, RenderOptions
from .verify import verify

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


def _report(diags: List[Diagnostic], fmt: str) -> None:
    if fmt == "json":
        click.echo(diag_mod.render(diags, "json"))
        return
    if diags:
        click.echo(diag_mod.render(diags, fmt), err=(fmt == "text"))


_NO_CACHE = click.option("--no-cache", is_flag=True, help="Always run structural OpenAPI validation (also GWC_NO_CACHE=1).")


def _cache(no_cache: bool) -> Optional[ValidationCache]:
    directory = None if no_cache else cache_mod.default_dir()
    return ValidationCache(directory) if directory is not None else None


def _resolve_target(target: str) -> str:
    if target != "auto":
        return target
    rt, _ = runtime.detect(allow_docker=False)
    return rt.target if rt else "nginx-lua"


EXIT_INTERNAL = 70


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gwc")
def cli() -> None:
    """Compile OpenAPI + x-gateway into an NGINX/OpenResty gateway."""


def main() -> None:
    """Entry point: bad input is reported by the stages; anything else is a bug,
    reported in one line unless GWC_DEBUG is set."""
    try:
        cli(prog_name="gwc")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last line of defence against tracebacks
        if os.environ.get("GWC_DEBUG"):
            raise
        click.echo(f"gwc: internal error: {type(exc).__name__}: {exc} (a bug in gwc; rerun with GWC_DEBUG=1 for the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True)
@click.option("--listen", multiple=True, metavar="HOST:PORT", help="Override x-gateway.listen (repeatable).")
@_NO_CACHE
def validate(spec: str, fmt: str, listen: tuple, no_cache: bool) -> None:
    """Check SPEC and report every problem."""
    result = pipeline.check(spec, list(listen) or None, cache=_cache(no_cache))
    _report(result.diagnostics, fmt)
    if not result.ok:
        sys.exit(EXIT_INVALID)
    if fmt == "text":
        plan = result.plan
        click.echo(f"{spec}: ok ({len(plan.gateway.operations)} operations, {len(plan.routes)} paths)", err=True)


def _as_deployed(diags, staged: Path, out_dir: Path):
    """Name the files as they will be in out_dir: the staged generation is
    deleted once the check fails, so its path would point nowhere."""
    names = sorted({str(staged), str(Path(staged).resolve())}, key=len, reverse=True)

    def deployed(text):
        for name in names:
            text = text.replace(name, str(out_dir))
        return text

    return [replace(d, file=deployed(d.file) if d.file else d.file, message=deployed(d.message)) for d in diags]


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--target", type=click.Choice(["openresty", "nginx-lua", "auto"]), default="auto", show_default=True)
@click.option("--listen", multiple=True, metavar="HOST:PORT", help="Override x-gateway.listen (repeatable).")
@click.option("--install-dir", default=DEFAULT_INSTALL_DIR, show_default=True, help="Absolute path the output will live at, for conf.d/.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True)
@click.option("--check", "run_check", is_flag=True, help="Run nginx -t on the new output before it replaces the old one.")
@_NO_CACHE
def build(spec: str, out_dir: str, target: str, listen: tuple, install_dir: str, fmt: str, run_check: bool, no_cache: bool) -> None:
    """Compile SPEC into an output directory."""
    check_with = None
    if run_check:
        rt, _ = runtime.detect()
        if rt is None:
            click.echo("gwc: --check: " + runtime.INSTALL_HINT, err=True)
            sys.exit(EXIT_RUNTIME)
        check_with = lambda staged: _as_deployed(verify(staged, rt), staged, Path(out_dir))  # noqa: E731
        if target == "auto":
            target = rt.target
    options = RenderOptions(target=_resolve_target(target), install_dir=install_dir)
    result = pipeline.build(spec, options, list(listen) or None, cache=_cache(no_cache))
    if not result.ok or result.files is None:
        _report(result.diagnostics, fmt)
        sys.exit(EXIT_INVALID)
    failures = write_output(result.files, Path(out_dir), check_with)
    if failures:
        _report(result.diagnostics + failures, fmt)
        sys.exit(EXIT_INVALID)
    _report(result.diagnostics, fmt)
    if fmt == "text":
        g = result.plan.gateway
        click.echo(f"built {out_dir} ({len(g.operations)} operations, target {options.target})", err=True)


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
def check(out_dir: str) -> None:
    """Run `nginx -t` on a built output directory."""
    rt, tried = runtime.detect()
    if rt is None:
        click.echo("gwc: " + runtime.INSTALL_HINT, err=True)
        for t in tried:
            click.echo(f"  tried: {t}", err=True)
        sys.exit(EXIT_RUNTIME)
    problems = verify(Path(out_dir), rt)
    if problems:
        _report(problems, "text")
        sys.exit(EXIT_INVALID)
    click.echo(f"{out_dir}: configuration ok ({rt.description})", err=True)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--listen", multiple=True, metavar="HOST:PORT", help="Override x-gateway.listen (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Keep the build here (default: a temporary directory).")
def run(spec: str, listen: tuple, out_dir: Optional[str]) -> None:
    """Build SPEC and run a dev gateway in the foreground. Ctrl-C stops it."""
    rt, tried = runtime.detect(allow_docker=False)
    if rt is None:
        click.echo("gwc: " + runtime.INSTALL_HINT, err=True)
        sys.exit(EXIT_RUNTIME)
    options = RenderOptions(target=rt.target, foreground=True)
    result = pipeline.build(spec, options, list(listen) or None)
    if not result.ok or result.files is None:
        _report(result.diagnostics, "text")
        sys.exit(EXIT_INVALID)
    _report(result.diagnostics, "text")
    holder = None
    if out_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="gwc-run-")
        out_dir = os.path.join(holder.name, "gateway")
    failures = write_output(result.files, Path(out_dir))
    if failures:
        _report(failures, "text")
        sys.exit(EXIT_INVALID)
    prefix = str(Path(out_dir).resolve()) + "/"
    cmd = [rt.binary, "-p", prefix, "-c", "nginx.conf", "-e", "/dev/stderr", "-g", "daemon off;"]
    addresses = ", ".join(l.address for l in result.plan.gateway.listen)
    click.echo(f"gwc: serving {spec} on {addresses} ({rt.description}); Ctrl-C stops", err=True)
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        # nginx treats SIGINT/SIGTERM as a fast shutdown; SIGQUIT would wait for clients.
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    finally:
        if holder is not None:
            holder.cleanup()
    sys.exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else EXIT_RUNTIME)


@cli.group()
def keys() -> None:
    """Manage API-key consumers and basic-auth users (only hashes are stored)."""


_KEY_FILE = click.option(
    "--file", "path", type=click.Path(dir_okay=False), required=True,
    help="The YAML key file named by x-gateway.keys, or a built output's keys.json.",
)


@keys.command("new")
@click.option("--id", "consumer_id", required=True, help="Consumer id, shown in logs and used by usage plans.")
@click.option("--plan", default="", help="Usage plan name.")
@click.option("--expires", default=None, metavar="DATE-TIME", help="RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.")
@_KEY_FILE
def keys_new(consumer_id: str, plan: str, expires: Optional[str], path: str) -> None:
    """Add a consumer and print its new key once, alone on the last line of stdout."""
    from . import keys as keys_mod

    created, diags = keys_mod.add_consumer(Path(path), consumer_id, plan, expires)
    if created is None:
        _report(diags, "text")
        sys.exit(EXIT_INVALID)
    click.echo(f"gwc: added consumer {consumer_id!r} to {path}; the key is shown once and stored only as a hash", err=True)
    click.echo(created.key)


@keys.command("revoke")
@click.option("--id", "consumer_id", required=True)
@_KEY_FILE
def keys_revoke(consumer_id: str, path: str) -> None:
    """Disable a consumer's key (it stays in the file, with enabled: false)."""
    from . import keys as keys_mod

    diags = keys_mod.revoke_consumer(Path(path), consumer_id)
    if diags:
        _report(diags, "text")
        sys.exit(EXIT_INVALID)
    click.echo(f"gwc: revoked {consumer_id!r} in {path}; reload nginx (or rebuild) for it to take effect", err=True)


@keys.command("passwd")
@click.option("--user", "username", required=True)
@click.option("--file", "path", type=click.Path(dir_okay=False), required=True, help="The credentials file of an HTTP basic scheme.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
def keys_passwd(username: str, path: str, password_stdin: bool) -> None:
    """Set a basic-auth user's password (stored as PBKDF2-SHA256)."""
    from . import keys as keys_mod

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("gwc: empty password refused", err=True)
        sys.exit(EXIT_USAGE)
    diags = keys_mod.set_password(Path(path), username, password)
    if diags:
        _report(diags, "text")
        sys.exit(EXIT_INVALID)
    click.echo(f"gwc: password set for {username!r} in {path}", err=True)



@cli.command()
@click.option("--redis", "redis_url", metavar="URL", help="The Redis of x-gateway.redis, for fleet-scope quotas: redis://HOST:PORT/DB, or rediss:// (add ?ssl_ca_certs=PATH for a private CA).")
@click.option("--cluster", is_flag=True, help="--redis names one Redis Cluster node: scan every master.")
@click.option("--password-env", metavar="NAME", default=None, help="Environment variable holding the Redis password.")
@click.option("--prefix", default="gwc", show_default=True, help="x-gateway.redis.prefix of the gateways.")
@click.option("--status", "status_url", metavar="URL", help="A gateway's status listener (http://127.0.0.1:9145), for its node-scope quotas.")
@click.option("--plan", default=None, help="Only this usage plan.")
@click.option("--consumer", default=None, help="Only this consumer.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def usage(redis_url: Optional[str], cluster: bool, password_env: Optional[str], prefix: str, status_url: Optional[str],
          plan: Optional[str], consumer: Optional[str], fmt: str) -> None:
    """Print each consumer's quota use in the current period and what is left (AWS GetUsage)."""
    import time

    from . import usage as usage_mod

    if (redis_url is None) == (status_url is None):
        click.echo("gwc: usage: give exactly one of --redis URL or --status URL", err=True)
        sys.exit(EXIT_USAGE)
    if status_url is not None and (cluster or password_env):
        click.echo("gwc: usage: --cluster and --password-env apply to --redis only", err=True)
        sys.exit(EXIT_USAGE)
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            click.echo(f"gwc: usage: environment variable {password_env} is not set", err=True)
            sys.exit(EXIT_USAGE)
    now = int(time.time())
    try:
        if redis_url is not None:
            rows, scope = usage_mod.from_redis(redis_url, cluster, password, prefix, now), "fleet"
        else:
            rows, scope = usage_mod.from_status(status_url, now), "node"
    except usage_mod.UsageError as exc:
        click.echo(f"gwc: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    click.echo(usage_mod.render(usage_mod.select(rows, plan, consumer), fmt, scope, now))

if __name__ == "__main__":  # pragma: no cover
    main()

"""Plumbing every `meshd` subcommand shares: the HTTP client options and error reporting.

Consul's CLI takes `-http-addr`/`-token` on each subcommand (`consul kv get -http-addr=...`),
and people also put them before the subcommand; both places write the same context slot, and
the later (subcommand) one wins. Errors are raised as `CLIError` so click prints exactly one line
on stderr and exits non-zero, whether run from the console script or a test's CliRunner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from meshd.api import APIError, Client

__all__ = ["FORMATS", "CLIError", "client", "format_option", "http_options"]

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("pretty", "text", "table", "json")
_META_ADDR = "meshd.http_addr"
_META_TOKEN = "meshd.token"
_META_TOKEN_FILE = "meshd.token_file"


class CLIError(click.ClickException):
    """A failure reported as a single stderr line; `prefix` lets KV keep Consul's `Error! `."""

    def __init__(self, message: str, *, prefix: str = "Error: ") -> None:
        super().__init__(message)
        self.prefix = prefix

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"{self.prefix}{self.format_message()}", err=True)

    @classmethod
    def from_api(cls, err: APIError) -> CLIError:
        return cls(str(err) or f"request failed with status {err.status}")


def _remember(slot: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[slot] = value

    return callback


def http_options(f: F) -> F:
    """Adds Consul's `-http-addr` and `-token`; read them back with `client()`."""
    f = click.option(
        "-token",
        "--token",
        expose_value=False,
        default=None,
        metavar="TOKEN",
        callback=_remember(_META_TOKEN),
        help="ACL token (else $MESHD_HTTP_TOKEN / $CONSUL_HTTP_TOKEN).",
    )(f)
    f = click.option(
        "-token-file",
        "--token-file",
        expose_value=False,
        default=None,
        metavar="PATH",
        callback=_remember(_META_TOKEN_FILE),
        help="File holding the ACL token (else $MESHD_HTTP_TOKEN_FILE / $CONSUL_HTTP_TOKEN_FILE).",
    )(f)
    f = click.option(
        "-http-addr",
        "--http-addr",
        expose_value=False,
        default=None,
        metavar="ADDR",
        callback=_remember(_META_ADDR),
        help="Agent HTTP address (else $MESHD_HTTP_ADDR / $CONSUL_HTTP_ADDR, "
        "default http://127.0.0.1:8500).",
    )(f)
    return f


def format_option(f: F) -> F:
    return click.option(
        "-format",
        "--format",
        "fmt",
        default="pretty",
        show_default=True,
        type=click.Choice(FORMATS, case_sensitive=False),
        help="Output format; json prints the API's JSON for scripts.",
    )(f)


def client() -> Client:
    """The API client for the current invocation; a bad address is a usage-level error."""
    ctx = click.get_current_context()
    try:
        return Client(
            ctx.meta.get(_META_ADDR),
            token=ctx.meta.get(_META_TOKEN),
            token_file=ctx.meta.get(_META_TOKEN_FILE),
        )
    except ValueError as e:
        raise CLIError(str(e)) from None

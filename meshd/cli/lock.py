"""`meshd lock`: run a command only while holding a lock (or a semaphore slot), like `consul lock`.

The child starts only once the lock is held and is sent SIGTERM (then SIGKILL after a grace
period) as soon as the lock is lost: invalidated session, key taken, or the agent unreachable
for `-monitor-retry` reads. The lock-delay the servers enforce after a holder's loss is what
leaves room for that signal before another holder starts.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time

import click

from meshd.api import APIError
from meshd.cli import CLIError, client, http_options
from meshd.config import ConfigError, parse_duration
from meshd.locks import Lock, LockError, Semaphore, SessionKeeper, monitor

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a child that ignores the first


def _say(verbose: bool, text: str) -> None:
    if verbose:
        click.echo(text, err=True)


def _stop_child(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def _supervise(
    child: subprocess.Popen[bytes], lost: threading.Event, stop: threading.Event
) -> int | None:
    """The child's exit status, or None when the lock was lost (the child has been stopped)."""
    while True:
        try:
            return child.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
        if lost.is_set():
            click.echo("Lock lost, killing child", err=True)
            _stop_child(child)
            return None
        if stop.is_set():
            return _stop_child(child)


@click.command("lock", context_settings={"allow_interspersed_args": False})
@http_options
@click.option(
    "-n",
    "--n",
    "limit",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Holders allowed at once: above 1 the lock is a semaphore.",
)
@click.option("-name", "--name", default="", help="Name of the session (default 'meshd lock').")
@click.option(
    "-timeout",
    "--timeout",
    default="0s",
    show_default=True,
    help="Longest wait for the lock (0: forever).",
)
@click.option(
    "-child-exit-code",
    "--child-exit-code",
    is_flag=True,
    help="Exit 2 when the child exits with an error.",
)
@click.option(
    "-monitor-retry",
    "--monitor-retry",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Failed reads of the lock tolerated before it counts as lost.",
)
@click.option(
    "-shell",
    "--shell",
    type=bool,
    default=True,
    show_default=True,
    help="Run the child through 'sh -c'.",
)
@click.option("-pass-stdin", "--pass-stdin", is_flag=True, help="Give the child this stdin.")
@click.option("-verbose", "--verbose", is_flag=True, help="Say what the lock is doing.")
@click.argument("prefix")
@click.argument("child", nargs=-1, required=True, type=click.UNPROCESSED)
def lock(
    limit: int,
    name: str,
    timeout: str,
    child_exit_code: bool,
    monitor_retry: int,
    shell: bool,
    pass_stdin: bool,
    verbose: bool,
    prefix: str,
    child: tuple[str, ...],
) -> None:
    """Run CHILD while holding the lock PREFIX/.lock (with -n N: one of N semaphore slots)."""
    try:
        wait = parse_duration(timeout)
    except ConfigError as e:
        raise CLIError(f"invalid -timeout: {e}") from None
    api = client()
    stop = threading.Event()
    previous = {
        s: signal.signal(s, lambda _n, _f: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)
    }
    session = SessionKeeper(
        api, name or "meshd lock", behavior="release" if limit == 1 else "delete"
    )
    lk: Lock | Semaphore = (
        Lock(api, prefix, session) if limit == 1 else Semaphore(api, prefix, session, limit)
    )
    held = False
    try:
        _say(verbose, f"Attempting lock acquisition on {prefix}")
        try:
            held = lk.acquire(stop, time.monotonic() + wait if wait else None)
        except LockError as e:
            raise CLIError(str(e)) from None
        if not held:
            raise CLIError("Lock acquisition failed" if not stop.is_set() else "Interrupted")
        _say(verbose, "Lock acquired, starting child")
        argv = ["sh", "-c", " ".join(child)] if shell else list(child)
        proc = subprocess.Popen(argv, stdin=None if pass_stdin else subprocess.DEVNULL)
        lost = threading.Event()
        watcher = threading.Thread(
            target=monitor, args=(lk, lost, stop, monitor_retry), daemon=True
        )
        watcher.start()
        code = _supervise(proc, lost, stop)
        stop.set()
        if code is None:
            sys.exit(1)
        _say(verbose, f"Child exited with code {code}")
        if code != 0 and child_exit_code:
            sys.exit(2)
    finally:
        _cleanup(lk if held else None, session)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _cleanup(lk: Lock | Semaphore | None, session: SessionKeeper) -> None:
    """Release and destroy, best effort: an unreachable agent leaves it to the session's TTL."""
    if lk is not None:
        with contextlib.suppress(APIError):
            lk.release()
    session.destroy()

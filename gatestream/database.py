"""Every database connection of gatestream comes from here, and none waits for ever.

- ``connect``: for long-running processes. Transient failures (nothing answers, the
  server is starting or shutting down) are waited out with ``gatestream.waiting`` until
  ``stop`` is set.
- ``connect_once``: for commands. One attempt; a database that does not answer gives
  ``DatabaseUnavailable`` with one line saying where and why, at once.

Both always carry a ``connect_timeout`` (libpq has none by default: a server that
accepts the TCP connection and never answers would block the caller for ever) and TCP
keepalives (a vanished peer is found, not waited for). A
connection that hangs later, in a query, is ended from another thread with ``sever``,
or after a deadline with ``bounded``. Permanent failures (a malformed URL, a wrong
password, a database or role that does not exist) cannot get better by waiting: they
raise ``DatabaseSettingError`` with one line that says what to fix.

Through a pooler in transaction mode (``GATESTREAM_DATABASE_POOLER=transaction``, e.g.
PgBouncer: a server connection is a client's for one transaction only) a connection
prepares no statements (psycopg would after 5 runs of one query: the next transaction
may run on a server connection that has not got it, or another client's may) and sends
no startup options (PgBouncer refuses them). What must hold for a while is set per
transaction (``limited``: SET LOCAL), never per session.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog

from gatestream.settings import DatabasePooler, DatabasePoolerSettings
from gatestream.waiting import first_line, wait_for_service

log = structlog.get_logger("gatestream.database")

CONNECT_TIMEOUT_S = 5  # per attempt; a URL's own connect_timeout wins
# A peer that vanished (host down, network cut) is found within ~25 s of silence, and a
# write nobody acknowledges fails after 30 s; a URL's own settings win.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 30000}  # fmt: skip

# What a server says while it cannot take connections *yet* (libpq reports the server's
# FATAL message on connect; psycopg gives no SQLSTATE there)
_TRANSIENT_FATAL = (
    "starting up", "shutting down", "not yet accepting connections", "in recovery mode",
    "too many clients", "remaining connection slots", "terminating connection",
)  # fmt: skip


# What a server or libpq says when it refuses a client for good: the phrase, and what was
# refused, for the one line (libpq gives no SQLSTATE at connect; none of these carries a secret)
_REFUSALS = (
    ("password authentication failed", "its password (wrong password)"),
    ("no password supplied", "a login without a password: the server asks for one (passfile= in the URL)"),
    ("no encryption", "a plaintext connection: the server takes TLS only (sslmode=verify-full)"),
    ("does not match host name", "the server's certificate: {detail} (sslmode=verify-full)"),
    ("certificate verify failed", "the server's certificate: not signed by the CA of sslrootcert"),
    ("root certificate file", "to check the server's certificate: {detail}"),
    ("server does not support SSL", "a connection without TLS: the server offers none and sslmode requires it"),
    ("is not permitted to log in", "a login by a role without LOGIN (log in as one of its login users)"),
)  # fmt: skip


class DatabaseSettingError(Exception):
    """The database settings are wrong; retrying will not help."""


def login_user(url: str) -> str:
    """The user ``url`` logs in as (libpq's default: PGUSER, else the OS user), for messages."""
    try:
        user = psycopg.conninfo.conninfo_to_dict(url).get("user")
    except psycopg.Error:
        user = None
    return str(user or os.environ.get("PGUSER") or getpass.getuser())


def refusal(url: str, exc: psycopg.Error) -> str:
    """One line for a connection refused for good: the user, the server/database and what was
    refused (never the password: the URL's is not printed, libpq's words carry none)."""
    line = first_line(exc)
    detail = line.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    what = next((w.format(detail=detail) for phrase, w in _REFUSALS if phrase in line), detail)
    return f"the database at {where(url)} refused user {login_user(url)}: {what}"


class DatabaseUnavailable(psycopg.OperationalError):
    """The database did not answer (a command's one attempt, or a deadline passed)."""


def permanent(exc: psycopg.Error) -> bool:
    """The server answered and refused (a password, a database or role name), or the URL is bad."""
    if isinstance(exc, psycopg.ProgrammingError):  # e.g. an invalid connection string
        return True
    text = str(exc)
    if "FATAL:" in text:
        return not any(phrase in text for phrase in _TRANSIENT_FATAL)
    return any(phrase in text for phrase, _ in _REFUSALS)  # libpq's own: TLS, a missing password


def where(url: str) -> str:
    """host:port/dbname of ``url``, for messages (never the password)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the database"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def pooler() -> DatabasePooler:
    """GATESTREAM_DATABASE_POOLER, read for each connection (a process's settings carry it too)."""
    return DatabasePoolerSettings().database_pooler


def _params(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection keywords: ours as defaults under what the URL and the caller say."""
    try:
        in_url = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        in_url = {}
    ours: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **KEEPALIVES}
    if pooler() == "transaction":
        if "options" in in_url or "options" in kwargs:
            raise DatabaseSettingError(
                f"the database URL for {where(url)} sets startup options, which a pooler in transaction mode "
                "(GATESTREAM_DATABASE_POOLER=transaction) refuses: set them on the role instead "
                "(ALTER ROLE ... SET parameter = value)"
            )
        # prepared statements live in one server session: none through a transaction pooler
        return {**{k: v for k, v in ours.items() if k not in in_url}, **kwargs, "prepare_threshold": None}
    return {**{k: v for k, v in ours.items() if k not in in_url}, **kwargs}


def _one_attempt(url: str, autocommit: bool, params: dict[str, Any]) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=autocommit, **params)
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.ProgrammingError):  # nothing was asked of a server
            raise DatabaseSettingError(f"the database URL is not valid: {first_line(exc)}") from None
        if permanent(exc):
            raise DatabaseSettingError(refusal(url, exc)) from None  # the chain would repeat the URL
        raise


def connect(
    url: str, *, stop: threading.Event | None = None, autocommit: bool = True, **kwargs: Any
) -> psycopg.Connection[Any]:
    """A connection for a long-running process, waiting out transient failures (until
    ``stop`` is set: then the last psycopg error is raised); DatabaseSettingError for
    permanent ones."""
    params = _params(url, kwargs)
    return wait_for_service(
        "database",
        lambda: _one_attempt(url, autocommit, params),
        retry=lambda exc: isinstance(exc, psycopg.Error),
        stop=stop,
        logger=log,
    )


def connect_once(url: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection for a command: one attempt, ``DatabaseUnavailable`` (one line) if
    nothing answers within the connect timeout, DatabaseSettingError if the settings are
    wrong. A time limit on its statements: ``limited``."""
    params = _params(url, kwargs)
    try:
        return _one_attempt(url, autocommit, params)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the database at {where(url)} is unreachable: {first_line(exc)}") from exc


def sever(conn: psycopg.Connection[Any] | None) -> None:
    """End ``conn``'s link from any thread: a call blocked on it (a query a hung server
    never answers) returns at once with OperationalError; the server, if it ever reads
    again, rolls the open transaction back. Use only on a connection that is not being
    closed meanwhile."""
    if conn is None or conn.closed:
        return
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


@contextmanager
def bounded(conn: psycopg.Connection[Any], seconds: float, what: str = "the database") -> Iterator[None]:
    """What runs inside gets ``seconds`` of the server's time: past that the connection
    is severed and ``DatabaseUnavailable`` raised (a server that accepted the connection
    and then stopped answering cannot enforce a statement_timeout itself)."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sever(conn)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except psycopg.OperationalError as exc:
        if expired.is_set():
            raise DatabaseUnavailable(f"{what} did not answer within {seconds:g} s") from exc
        raise
    finally:
        timer.cancel()


@contextmanager
def limited(conn: psycopg.Connection[Any], seconds: float, what: str = "the database") -> Iterator[None]:
    """What runs inside is one transaction (``conn`` in autocommit mode) whose statements the
    server cancels after ``seconds``, and which is cut off from the client's side 5 s later
    (``bounded``: a hung server cannot cancel). The limit is SET LOCAL: it ends with the
    transaction, so it works through a transaction pooler and reaches no other client
    (a startup option or a plain SET would stay on a shared server connection)."""
    with bounded(conn, seconds + 5, what), conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(seconds * 1000)}ms",))
        yield

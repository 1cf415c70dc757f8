"""A PostgreSQL + TimescaleDB server of one's own, to crash, stop and replicate at will.

The fault bench's postgres-crash, database-away and postgres-failover scenarios run against
it, so the bench (and the tests that run it) never stops the local stack's server that other
tests and other people use. It is made from the binaries the stack installed (the same
TimescaleDB build), in a folder of its own, and removed afterwards.

A server can have a streaming standby (``standby()``: ``pg_basebackup -R``, asynchronous
unless ``synchronous()`` names it), which ``promote()`` makes the new primary after the
primary was killed -9 (``kill9()``). ``hold_replication()`` stops the primary's WAL senders,
as a slow link to the standby would: what commits meanwhile the standby never receives.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.brokers import _free_ports

DEBIAN_PG = Path("/usr/lib/postgresql")


def pg_bindir(major: str | None = None) -> Path | None:
    """The server binaries: Debian's folder of that major version (the newest one when None),
    else what ``pg_config --bindir`` names."""
    if DEBIAN_PG.is_dir():
        majors = sorted((p.name for p in DEBIAN_PG.iterdir() if (p / "bin" / "pg_ctl").exists()), key=int)
        if major in majors or (major is None and majors):
            return DEBIAN_PG / (major or majors[-1]) / "bin"
    if shutil.which("pg_config") is None:
        return None
    done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
    found = Path(done.stdout.strip())
    return found if done.returncode == 0 and (found / "pg_ctl").exists() else None


class PrivatePostgres:
    """One server: ``start()`` (initdb the first time), ``crash()`` (no shutdown: what the WAL
    holds is what survives), ``kill9()``, ``stop()`` (fast shutdown), ``remove()``; and a
    streaming standby of it (``standby()``, ``promote()``). Raises RuntimeError with the
    server's own words when a step fails."""

    def __init__(self, bindir: Path, name: str = "primary", *, wal_level: str = "replica") -> None:
        self.bindir = bindir
        self.name = name  # its application_name as a standby (synchronous_standby_names)
        self.wal_level = wal_level  # "logical": change data capture (a logical replication slot) reads it
        # the server runs as the postgres user when we are root (initdb refuses root): its folder
        # must be reachable by that user, which a private home or /tmp/pytest-* may not be
        self.state = Path(tempfile.mkdtemp(prefix="gatestream-pg-", dir="/var/tmp" if os.geteuid() == 0 else None))
        self.data = self.state / "data"
        self.log = self.state / "postgres.log"
        (self.port,) = _free_ports(1)
        self.tls: Path | None = None  # secure(): the CA's folder (ca.pem) ...
        self.secrets: Path | None = None  # ... and the passfiles' folder
        if os.geteuid() == 0:
            self.state.chmod(0o755)
            shutil.chown(self.state, "postgres", "postgres")

    @property
    def url(self) -> str:
        return self.login_url("postgres")

    def login_url(self, user: str, dbname: str = "postgres") -> str:
        """A URL that logs in as ``user``; once ``secure()``, over TLS checked against the CA
        (verify-full) with the password from the user's passfile (ops/postgres/secure login)."""
        url = f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"
        if self.tls is None or self.secrets is None:
            return url
        return f"{url}?sslmode=verify-full&sslrootcert={self.tls / 'ca.pem'}&passfile={self.secrets / f'pg-{user}'}"

    def secure(self, tls: Path, secrets: Path) -> None:
        """This running server as ops/stack runs its own (ops/postgres/secure): TLS with a
        certificate of the CA in ``tls``, scram-sha-256, pg_hba.conf without trust; the
        postgres user's password made in ``secrets``. ``url`` logs in that way from then on.
        (``standby()`` wants a primary that is not secured: the standby, run as the postgres
        user, could not read the root-owned passfile.)"""
        _secure("server", str(self.data), str(tls))
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "restart")  # ssl: off -> on
        self.tls, self.secrets = tls, secrets
        self.add_login("postgres")

    def add_login(self, user: str, group: str | None = None) -> Path:
        """A login user (a member of ``group``) with a password made once in the secrets
        folder (``secure()`` first); its passfile."""
        assert self.secrets is not None, "secure() the server first"
        _secure("login", str(self.state), str(self.port), str(self.secrets), f"{user}:{group}" if group else user)
        return self.secrets / f"pg-{user}"

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        argv = [str(self.bindir / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = self.log.read_text()[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} {cmd[-1]} failed: {(done.stderr or done.stdout).strip()[-1500:]} {tail}")

    def start(self) -> None:
        """Start (initdb and configure it the first time); returns once it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.state}'\n"
                    "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n"
                    "shared_buffers = 128MB\nmax_connections = 100\nlog_min_messages = warning\n"
                    # a standby can be made of it at any time (initdb's pg_hba trusts replication
                    # connections from 127.0.0.1); the standby copies these settings
                    f"wal_level = {self.wal_level}\nmax_wal_senders = 4\nhot_standby = on\nwal_keep_size = 256MB\n"
                )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def standby(self, name: str = "standby") -> PrivatePostgres:
        """A streaming standby of this running server, started: a ``pg_basebackup -R`` copy
        (standby.signal, primary_conninfo naming it ``name``) on a port of its own.
        Asynchronous: commits on the primary do not wait for it."""
        other = PrivatePostgres(self.bindir, name)
        source = f"host=127.0.0.1 port={self.port} user=postgres application_name={name}"
        other._run("pg_basebackup", "-D", str(other.data), "-X", "stream", "-c", "fast", "-R", "--no-sync",
                   "-d", source, timeout=300)  # fmt: skip
        with (other.data / "postgresql.conf").open("a") as conf:  # the last setting wins
            conf.write(f"\n# the standby's own\nport = {other.port}\nunix_socket_directories = '{other.state}'\n")
        other.start()
        return other

    def synchronous(self, standby: str | None) -> None:
        """Commits wait until ``standby`` has flushed them (None: asynchronous again)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    psycopg.sql.Literal(standby or "")
                )
            )
            conn.execute("SELECT pg_reload_conf()")

    def wait_streaming(self, timeout: float = 60) -> None:
        """Returns once a standby streams from this server (pg_stat_replication)."""
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        while True:
            with psycopg.connect(self.url, autocommit=True) as conn:
                streaming = conn.execute(query).fetchone()
            if streaming != (0,):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no standby streams from {self.url} after {timeout:g} s")
            time.sleep(0.2)

    def hold_replication(self) -> int:
        """Stop (SIGSTOP) this server's WAL senders: the standby receives nothing more until
        they are continued or the server dies. Returns how many were stopped."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            pids = [int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return len(pids)

    def promote(self) -> None:
        """End this standby's recovery: it becomes a primary (returns once it accepts writes)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def kill9(self) -> None:
        """SIGKILL the postmaster and every process of the server (pg_ctl made the postmaster
        a process group leader): no shutdown at all, connections reset."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self, *, keep: bool = False) -> None:
        """Stop it if it runs; remove its folder unless ``keep`` (its log is worth a look)."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.crash()
            except RuntimeError:
                pass
        if not keep:
            shutil.rmtree(self.state, ignore_errors=True)


SECURE_SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "postgres" / "secure"


def _secure(*args: str) -> None:
    done = subprocess.run([str(SECURE_SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ops/postgres/secure {args[0]} failed: {(done.stderr or done.stdout).strip()[-1500:]}")


def failover_url(primary: PrivatePostgres, standby: PrivatePostgres, dbname: str = "postgres") -> str:
    """Both servers in one URL: libpq tries them in turn and keeps the one that takes writes,
    so a client reconnecting after the primary died lands on the promoted standby."""
    return (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{dbname}"
        "?target_session_attrs=read-write"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.postgres",
        description="Run a PostgreSQL + TimescaleDB primary with a streaming standby of its own (the stack's "
        "binaries, a folder under /var/tmp), print the multi-host GATESTREAM_DATABASE_URL that reaches whichever "
        "takes writes, and keep them until SIGINT/SIGTERM (then both are removed). For the failover drill and for "
        "measuring what synchronous replication costs (e.g. gatestream bench ingest against each kind of pair).",
    )
    p.add_argument("--sync", action="store_true", help="synchronous replication: commits wait for the standby")
    p.add_argument("--major", help="PostgreSQL major version of the binaries (default: the newest installed)")
    args = p.parse_args(argv)
    bindir = pg_bindir(args.major)
    if bindir is None:
        print("bench.postgres: error: no PostgreSQL server binaries found (pg_config --bindir)", file=sys.stderr)
        return 2
    primary = PrivatePostgres(bindir)
    standby: PrivatePostgres | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        primary.start()
        standby = primary.standby()
        primary.wait_streaming()
        if args.sync:
            primary.synchronous(standby.name)
        kind = "synchronous" if args.sync else "asynchronous"
        print(f"# primary {primary.port}, {kind} standby {standby.port} (logs in {primary.state}, {standby.state})")
        print(f"export GATESTREAM_DATABASE_URL='{failover_url(primary, standby)}'", flush=True)
        stop.wait()
        return 0
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"bench.postgres: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


if __name__ == "__main__":
    raise SystemExit(main())

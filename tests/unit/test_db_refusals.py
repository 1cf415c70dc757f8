"""A connection refused for good (issue 25: a wrong password, a plaintext client on the TLS-only
server, a server certificate that does not verify) is a setting to fix, said in one line naming
the user, the server and what was refused, and never waited out; an outage still is."""

from __future__ import annotations

import psycopg
import pytest

from gatestream.database import DatabaseSettingError, connect_once, permanent, refusal

URL = "postgresql://gs_ingest:s3cret-pw@db.example.com:5433/gatestream?sslmode=verify-full&sslrootcert=/ca.pem"
AT = 'connection failed: connection to server at "10.0.0.5", port 5433 failed: '
REFUSED = {
    AT + 'FATAL:  password authentication failed for user "gs_ingest"\npassword retrieved from file "/p"':
        "its password (wrong password)",
    AT + 'FATAL:  pg_hba.conf rejects connection for host "10.0.0.5", user "gs_ingest", database "gatestream", '
         "no encryption": "a plaintext connection: the server takes TLS only (sslmode=verify-full)",
    AT + 'server certificate for "127.0.0.1" (and 1 other name) does not match host name "db.example.com"':
        "the server's certificate: server certificate for \"127.0.0.1\" (and 1 other name) does not match host name "
        '"db.example.com" (sslmode=verify-full)',
    AT + "SSL error: certificate verify failed": "the server's certificate: not signed by the CA of sslrootcert",
    AT + "fe_sendauth: no password supplied":
        "a login without a password: the server asks for one (passfile= in the URL)",
    AT + 'FATAL:  database "nodb" does not exist': 'database "nodb" does not exist',
}  # fmt: skip


@pytest.mark.parametrize("message", REFUSED)
def test_a_refusal_is_permanent_and_one_line_with_user_server_and_what(message: str) -> None:
    exc = psycopg.OperationalError(message)
    assert permanent(exc)
    line = refusal(URL, exc)
    assert line == f"the database at db.example.com:5433/gatestream refused user gs_ingest: {REFUSED[message]}"
    assert "s3cret-pw" not in line


@pytest.mark.parametrize(
    "message",
    [
        AT + "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        AT + "FATAL:  the database system is starting up",
        AT + "SSL SYSCALL error: EOF detected",  # a server going away mid-handshake: an outage
    ],
)
def test_an_outage_is_still_waited_out(message: str) -> None:
    assert not permanent(psycopg.OperationalError(message))


def test_a_malformed_url_is_said_as_such_and_asks_no_server() -> None:
    with pytest.raises(DatabaseSettingError, match=r"^the database URL is not valid: .*IPv6"):
        connect_once("postgresql://[::1")

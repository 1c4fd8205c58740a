"""Database servers a fault test may break: a private PostgreSQL it can restart, and helpers
that kill the product's connections on the shared servers.

The shared servers are never stopped or reconfigured: other tests (and other people) use
them. A test that needs a server restart starts its own PostgreSQL here, initdb'd into a
temporary directory on a free port, and restarts that. Killing a single connection on a shared
server is fine: it is scoped to one throwaway database (and, for PostgreSQL, to connections
whose `application_name` says they are milepost's), so nobody else's session is touched.

Every wait here polls for a state change with a deadline; none sleeps a guessed time.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

IN_CI = os.environ.get("CI", "").lower() == "true"

# The OS user that runs initdb and postgres when we are root: both refuse to run as root.
POSTGRES_OS_USER = os.environ.get("MILEPOST_TEST_PG_OS_USER", "postgres")

# Kept small so a private server starts quickly and stays out of the way of the shared ones.
# fsync stays on: restart tests are about durability, and a server that loses committed data
# on an immediate shutdown would prove nothing.
PRIVATE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'16MB'",
    "max_connections": "30",
    "log_min_messages": "warning",
    "log_connections": "off",
    "log_disconnections": "off",
    "logging_collector": "off",
    "timezone": "'UTC'",
}

ShutdownMode = Literal["smart", "fast", "immediate"]

# MariaDB/MySQL error code for "Unknown thread id": the session ended between list and KILL.
ER_NO_SUCH_THREAD = 1094


# --- a private PostgreSQL ---------------------------------------------------------------------


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or an OS user to run them as) are not on this machine."""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_postgres_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: MILEPOST_TEST_PG_BINDIR if set, else
    the newest Debian (/usr/lib/postgresql/N/bin) or RHEL (/usr/pgsql-N/bin) install, else
    wherever pg_ctl is on PATH. Debian keeps the server binaries off PATH, hence the globs."""
    override = os.environ.get("MILEPOST_TEST_PG_BINDIR")
    candidates = [override] if override else []
    if not override:  # a chosen directory that lacks the tools is an error, not a hint
        for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
            candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in "
        f"{candidates or 'MILEPOST_TEST_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH'}"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now. Another process may take it
    before the server binds it, so PrivatePostgres.start retries with a fresh one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL server of our own, in a temporary directory, that a test may restart, stop
    and crash at will. Use as a context manager, or call close(): it always stops the server
    and removes the directory, whatever state the test left it in."""

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.bindir = bindir or find_postgres_bindir()
        self.settings = {**PRIVATE_SETTINGS, **(settings or {})}
        self.timeout_s = timeout_s
        self._as_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam(POSTGRES_OS_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and there is no OS user {POSTGRES_OS_USER!r} to run "
                    "initdb and postgres as (they refuse to run as root)"
                ) from None
        # /tmp rather than pytest's tmp_path: the latter is private to root (0700), so the
        # postgres user could not reach it, and unix socket paths must stay under 107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="milepost-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "server.log"
        self.port = 0
        self._closed = False
        self.socket_dir.mkdir()
        if self._as_user is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self._as_user.pw_uid, self._as_user.pw_gid)
        atexit.register(self.close)

    # --- addresses ---

    def url_for(self, dbname: str = "postgres") -> str:
        """postgresql://postgres@127.0.0.1:PORT/DBNAME (trust auth, so no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """The URL of the server's `postgres` database, for admin work and quick checks."""
        return self.url_for("postgres")

    @property
    def running(self) -> bool:
        """Whether pg_ctl sees a live postmaster for the data directory."""
        if not self.data.is_dir():
            return False
        return self._pg_ctl("status", check=False).returncode == 0

    # --- lifecycle ---

    def init(self) -> None:
        """initdb: superuser `postgres`, trust auth, UTF8, locale C; --no-sync only skips the
        flush of initdb's own files (a crash of the machine during a test is not our fault
        model), the server itself still fsyncs every commit."""
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        conf = self.data / "postgresql.conf"
        lines = [f"{k} = {v}" for k, v in self.settings.items()]
        lines.append(f"unix_socket_directories = '{self.socket_dir}'")
        with conf.open("a", encoding="utf-8") as f:
            f.write("\n# milepost tests\n" + "\n".join(lines) + "\n")

    def start(self, *, attempts: int = 3) -> None:
        """Start the server (initdb first if there is no data directory yet) and return once it
        accepts connections. The port is chosen here on the first start and kept afterwards,
        so URLs stay valid across stop/start; if another process grabbed it in between the
        check and the bind, the first start retries with a fresh port."""
        if not self.data.is_dir():
            self.init()
        fixed = self.port != 0
        last: subprocess.CalledProcessError | None = None
        for _ in range(1 if fixed else attempts):
            if not fixed:
                self.port = free_port()
                self._set_port()
            try:
                self._pg_ctl("start", "-l", str(self.log_file))
                return
            except subprocess.CalledProcessError as exc:
                last = exc
                if "could not bind" not in self.log_tail():
                    break
        raise RuntimeError(f"private PostgreSQL did not start: {last}\n{self.log_tail()}") from last

    def stop(self, mode: ShutdownMode = "fast", *, wait: bool = True) -> None:
        """Stop the server. `fast` rolls back open transactions and checkpoints; `immediate`
        is a crash as far as the data is concerned: the next start runs WAL recovery; `smart`
        waits for every session to end, refusing new ones meanwhile. With wait=False this
        returns once the shutdown has begun (to observe the server while it shuts down)."""
        if wait:
            self._pg_ctl("stop", "-m", mode)
        else:
            self._run([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-W", "-m", mode])

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop and start again on the same port; every open connection is broken."""
        self._pg_ctl("restart", "-m", mode, "-l", str(self.log_file))

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def close(self) -> None:
        """Stop the server (immediately: nobody will read this data again) and remove the
        directory. Idempotent, and safe whatever state a failed test left the server in."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError, OSError):
                    self._pg_ctl("stop", "-m", "immediate")
                self._kill_leftover_postmaster()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for failure messages."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- internals ---

    def _set_port(self) -> None:
        # The last setting in postgresql.conf wins, so appending overrides an earlier port.
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(f"port = {self.port}\n")

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            [
                str(self.bindir / "pg_ctl"),
                *args[:1],
                "-D",
                str(self.data),
                "-w",
                "-t",
                str(int(self.timeout_s)),
                *args[1:],
            ],
            check=check,
        )

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the postgres OS user when we are root (they refuse root), in
        the temp dir (it may not be able to read our cwd), without our PG* variables (a stray
        PGDATA or PGPORT would point it elsewhere)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        user: dict[str, Any] = {}
        if self._as_user is not None:
            env.update(HOME=str(self.base), USER=POSTGRES_OS_USER, LOGNAME=POSTGRES_OS_USER)
            user = {
                "user": self._as_user.pw_uid,
                "group": self._as_user.pw_gid,
                "extra_groups": [],
            }
        done = subprocess.run(
            argv,
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout_s + 30,
            check=False,
            **user,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, argv, output=done.stdout, stderr=done.stderr
            )
        return done

    def _kill_leftover_postmaster(self) -> None:
        """If pg_ctl could not stop it, SIGKILL the postmaster named in postmaster.pid and wait
        for it to go (its children exit on their own once it has). Only if that pid still runs
        postgres on our data directory: a stale pid file may name a reused pid."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if not _runs_postgres_on(pid, self.data):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _runs_postgres_on(pid, self.data) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the process to be gone, with a deadline


def _runs_postgres_on(pid: int, data: Path) -> bool:
    """Whether `pid` is a live (not zombie) process whose command line names `data`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and os.fsencode(str(data)) in cmdline


def postgres_unavailable_reason() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None if it can."""
    try:
        find_postgres_bindir()
    except PostgresUnavailable as exc:
        return str(exc)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            return f"running as root, and there is no OS user {POSTGRES_OS_USER!r} for initdb"
    return None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL, stopped and removed after the test. Skipped with the
    reason when the server binaries are missing; under CI=true that fails instead, like an
    unreachable shared server."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"private PostgreSQL unavailable under CI=true: {reason}")
        pytest.skip(f"private PostgreSQL unavailable: {reason}")
    with PrivatePostgres() as server:
        yield server


# --- connecting to MariaDB quickly -----------------------------------------------------------


class MySqlConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """A PyMySQL connection that shares one default TLS context. PyMySQL builds a new one for
    every connection that names no TLS options (to try TLS, falling back without it), loading
    the system's CA certificates each time: 15 to 50 ms of CPU, most of what a connection
    costs. The helpers here connect once per statement, hundreds of times in a suite, so they
    share one (milepost.connectors.mysql does the same for the product's connections)."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if sslp != {}:
            return super()._create_ssl_ctx(sslp)
        with _TLS_LOCK:
            if not _TLS:
                _TLS.append(super()._create_ssl_ctx({}))
            return _TLS[0]


_TLS: list[ssl.SSLContext] = []
_TLS_LOCK = threading.Lock()


def mysql_connect(**params: Any) -> pymysql.connections.Connection:
    """pymysql.connect(**params), with the shared default TLS context."""
    return MySqlConnection(**params)


# --- killing the product's connections on a server ---------------------------------------------


def terminate_postgres_backends(
    admin_url: str,
    dbname: str,
    *,
    application_name_prefix: str = "milepost",
    wait_s: float = 10.0,
) -> int:
    """pg_terminate_backend every backend connected to `dbname` whose application_name starts
    with the prefix (milepost names its connections milepost:source, milepost:destination,
    milepost:heartbeat), except our own. Returns how many were terminated.

    A backend that ends between the listing and the kill makes pg_terminate_backend return
    false (with a warning), which simply is not counted. With `wait_s` > 0 this returns only
    once the terminated backends have left pg_stat_activity, so the caller's next step sees
    them gone; AssertionError if they are still there after `wait_s`.
    """
    # Our own application_name must not match the prefix, or a concurrent call could kill us.
    with psycopg.connect(admin_url, autocommit=True, application_name="fault-injector") as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND starts_with(application_name, %s) "
            "AND pid <> pg_backend_pid()",
            (dbname, application_name_prefix),
        ).fetchall()
        killed = [pid for pid, done in rows if done]
        if killed and wait_s > 0:
            _poll_until_gone(
                lambda: {
                    r[0]
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (killed,)
                    ).fetchall()
                },
                wait_s,
                f"PostgreSQL backends on {dbname}",
            )
    return len(killed)


def kill_mysql_connections(
    admin: str | Mapping[str, Any], dbname: str, *, wait_s: float = 10.0
) -> int:
    """KILL CONNECTION every MariaDB/MySQL session whose current database is `dbname`, except
    our own. `admin` is a mysql:// URL or pymysql.connect keyword arguments. Returns how many
    were killed.

    A session that ends between the listing and the KILL ("Unknown thread id", 1094) is not
    an error and is not counted. With `wait_s` > 0 this returns only once the killed sessions
    have left the process list (a killed session lingers briefly as 'Killed').
    """
    conn = mysql_connect(**_mysql_params(admin), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID <> CONNECTION_ID()",
                (dbname,),
            )
            killed = kill_mysql_threads(cur, [int(row[0]) for row in cur.fetchall()])

            def still_there() -> set[int]:
                if not killed:
                    return set()
                marks = ", ".join(["%s"] * len(killed))
                cur.execute(
                    f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({marks})",
                    killed,
                )
                return {int(row[0]) for row in cur.fetchall()}

            if killed and wait_s > 0:
                _poll_until_gone(still_there, wait_s, f"MariaDB sessions on {dbname}")
    finally:
        conn.close()
    return len(killed)


def kill_mysql_threads(cur: pymysql.cursors.Cursor, ids: list[int]) -> list[int]:
    """KILL CONNECTION each id; return the ids killed. An id whose session has ended already
    ("Unknown thread id", 1094) is skipped: it lost a race with the kill, which is fine."""
    killed = []
    for thread_id in ids:
        try:
            cur.execute(f"KILL CONNECTION {int(thread_id)}")
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != ER_NO_SUCH_THREAD:
                raise
            continue
        killed.append(thread_id)
    return killed


def _mysql_params(admin: str | Mapping[str, Any]) -> dict[str, Any]:
    """pymysql.connect keywords from a mysql:// URL (with or without +driver), or a copy of the
    given keywords. No database: the admin connection needs none, and must not count as one
    of the sessions on `dbname`."""
    if not isinstance(admin, str):
        params = dict(admin)
        params.pop("database", None)
        params.pop("db", None)
        return params
    u = make_url(admin)
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port or 3306,
        "user": u.username or "root",
        "password": u.password or "",
        "connect_timeout": 10,
    }


def _poll_until_gone(present: Any, wait_s: float, what: str) -> None:
    """Poll `present()` (a set of ids still there) until it is empty or `wait_s` passes."""
    deadline = time.monotonic() + wait_s
    left = present()
    while left:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still present {wait_s} s after the kill: {left}")
        time.sleep(0.01)  # polling for a state change, with a deadline
        left = present()

"""One contract for every checkpoint store, run against each: directory, SQLite,
PostgreSQL (a random database on the test server, dropped afterwards), S3 (moto's
server, started here, reached through s3fs with an endpoint URL and dummy credentials),
fsspec's memory filesystem, and fsspec over local files (its write-then-move path).

Then what only one store has to do: the directory store's atomic writes and temp-file
clean-up, PostgreSQL's reconnect after its backend was killed, and `open_store`'s choice
of store by URL.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from conftest import POSTGRES_URL, Database
from milepost.checkpoints import (
    CheckpointNameError,
    CheckpointNotFound,
    CheckpointStore,
    CheckpointStoreError,
    open_store,
)
from milepost.checkpoints.stores import DirectoryStore, FsspecStore, SqliteStore
from milepost.checkpoints.stores.directory import STALE_AFTER_S, _host_tag
from milepost.checkpoints.stores.postgres import PostgresStore
from milepost.errors import ConfigError

Opener = Callable[[str], CheckpointStore]
KINDS = ["directory", "sqlite", "postgresql", "s3", "memory", "fsspec-file"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "key": "testing-key-id",
        "secret": "testing-secret",
        "client_kwargs": {"region_name": "us-east-1"},
    }


def s3_bucket(endpoint: str) -> str:
    bucket = f"mp-test-{secrets.token_hex(4)}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=KINDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a store of one kind for a pipeline; every pipeline shares one location."""
    kind = request.param
    opened: list[CheckpointStore] = []
    if kind == "directory":
        url, options = str(tmp_path / "checkpoints"), {}
    elif kind == "sqlite":
        url, options = f"sqlite:///{tmp_path / 'checkpoints.db'}", {}
    elif kind == "postgresql":
        db: Database = request.getfixturevalue("pg")
        url, options = db.url, {}
    elif kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        url, options = f"s3://{s3_bucket(endpoint)}/some/prefix", s3_options(endpoint)
    elif kind == "memory":
        url, options = f"memory://mp-{secrets.token_hex(4)}/checkpoints", {}
    else:
        url, options = f"file://{tmp_path / 'fsspec'}", {}

    def open_(pipeline: str) -> CheckpointStore:
        if kind == "fsspec-file":  # open_store sends file:// to the directory store
            store: CheckpointStore = FsspecStore(url, pipeline)
        else:
            store = open_store(url, pipeline, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


# --- the contract ----------------------------------------------------------------------------


def test_put_and_get_return_the_same_bytes(opener: Opener) -> None:
    store = opener("orders_migration")
    assert isinstance(store, CheckpointStore)
    every_byte = bytes(range(256)) * 3
    blob = os.urandom(200_000)
    store.put("a.ckpt", every_byte)
    store.put("b.ckpt", blob)
    store.put("empty.ckpt", b"")
    assert store.get("a.ckpt") == every_byte
    assert store.get("b.ckpt") == blob
    assert store.get("empty.ckpt") == b""


def test_put_overwrites(opener: Opener) -> None:
    store = opener("orders_migration")
    store.put("a.ckpt", b"first")
    store.put("a.ckpt", b"second, longer than the first")
    store.put("a.ckpt", b"3")
    assert store.get("a.ckpt") == b"3"
    assert store.list() == ["a.ckpt"]


def test_list_is_sorted_bytewise(opener: Opener) -> None:
    store = opener("orders_migration")
    assert store.list() == []
    # '-', '.', '_' and case order differently under a locale collation.
    names = ["b.ckpt", "a_b.ckpt", "A.ckpt", "a-b.ckpt", "a.ckpt", "20261123T031500.123Z-a.ckpt"]
    for name in names:
        store.put(name, name.encode())
    assert store.list() == sorted(names)


def test_pipelines_do_not_see_each_other(opener: Opener) -> None:
    alpha, alpha2, alph = opener("alpha"), opener("alpha-2"), opener("alph")
    alpha.put("x.ckpt", b"alpha")
    alpha2.put("x.ckpt", b"alpha-2")
    alpha2.put("y.ckpt", b"alpha-2")
    assert alpha.list() == ["x.ckpt"]
    assert alpha2.list() == ["x.ckpt", "y.ckpt"]
    assert alph.list() == []
    assert alpha.get("x.ckpt") == b"alpha"
    with pytest.raises(CheckpointNotFound):
        alpha.get("y.ckpt")
    alpha.delete("x.ckpt")
    assert alpha2.get("x.ckpt") == b"alpha-2"


def test_pipelines_are_those_with_a_checkpoint_seen_from_any_of_them(opener: Opener) -> None:
    # `milepost checkpoints clear --all` opens the store for one pipeline and must reach all.
    # "orders" is a prefix of both others; '-' and '_' order differently under a collation.
    migration, archive = opener("orders_migration"), opener("orders-archive")
    idle = opener("orders")
    migration.put("a.ckpt", b"1")
    migration.put("b.ckpt", b"2")
    archive.put("a.ckpt", b"3")
    for store in (migration, archive, idle):
        assert store.pipelines() == ["orders-archive", "orders_migration"]

    for name in migration.list():
        migration.delete(name)
    if isinstance(migration, DirectoryStore):  # the emptied directory is still there
        assert migration.path.is_dir() and idle.path.is_dir()
    for store in (migration, archive, idle, opener("orders_migration")):
        assert store.pipelines() == ["orders-archive"]


def test_delete(opener: Opener) -> None:
    store = opener("orders_migration")
    store.put("a.ckpt", b"1")
    store.put("b.ckpt", b"2")
    store.delete("a.ckpt")
    assert store.list() == ["b.ckpt"]
    with pytest.raises(CheckpointNotFound):
        store.get("a.ckpt")
    store.delete("a.ckpt")  # already gone: not an error
    store.delete("never-there.ckpt")
    assert store.list() == ["b.ckpt"]


def test_get_of_a_missing_name_is_a_clear_error(opener: Opener) -> None:
    store = opener("orders_migration")
    with pytest.raises(CheckpointNotFound) as caught:
        store.get("20261123T031500.123Z-abcdef.ckpt")
    assert "20261123T031500.123Z-abcdef.ckpt" in str(caught.value)
    assert "checkpoints list" in str(caught.value)


@pytest.mark.parametrize("name", ["", "../x.ckpt", "a/b.ckpt", ".hidden", ".tmp-1-x", "a b.ckpt"])
def test_names_that_could_escape_or_hide_are_refused(opener: Opener, name: str) -> None:
    store = opener("orders_migration")
    for call in (
        lambda: store.put(name, b"x"),
        lambda: store.get(name),
        lambda: store.delete(name),
    ):
        with pytest.raises(CheckpointNameError):
            call()
    assert store.list() == []


def test_what_is_stored_outlives_the_store_object(opener: Opener) -> None:
    first = opener("orders_migration")
    first.put("a.ckpt", b"kept")
    first.close()
    assert opener("orders_migration").get("a.ckpt") == b"kept"


@pytest.mark.parametrize("pipeline", [".", "..", "a/b", "", "x" * 101])
def test_pipelines_that_would_escape_their_namespace_are_refused(
    pipeline: str, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointNameError):
        open_store(tmp_path / "checkpoints", pipeline)


# --- the directory store ---------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def test_directory_leftover_temp_files_are_never_listed_and_cleared_on_open(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path, "p")
    store.put("a.ckpt", b"real")
    here, elsewhere = _host_tag(), "0" * 8 if _host_tag() != "0" * 8 else "1" * 8
    crashed = store.path / f".tmp-{dead_pid()}-{here}-deadbeef-b.ckpt"
    writing = store.path / f".tmp-{os.getpid()}-{here}-cafebabe-c.ckpt"  # a live writer
    remote_old = store.path / f".tmp-4242-{elsewhere}-00000000-d.ckpt"
    remote_new = store.path / f".tmp-4242-{elsewhere}-11111111-e.ckpt"
    for path in (crashed, writing, remote_old, remote_new):
        path.write_bytes(b"half a docu")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(remote_old, (old, old))
    (store.path / "notes").mkdir()  # neither is a checkpoint
    (store.path / ".DS_Store").write_bytes(b"")

    assert store.list() == ["a.ckpt"]
    DirectoryStore(tmp_path, "p")  # opening clears what a crash left
    assert not crashed.exists() and not remote_old.exists()
    assert writing.exists() and remote_new.exists()  # someone may still be writing those
    assert DirectoryStore(tmp_path, "p").list() == ["a.ckpt"]


def test_directory_pipelines_skip_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path, "p")
    store.put("a.ckpt", b"x")
    (tmp_path / "only-temp").mkdir()
    (tmp_path / "only-temp" / f".tmp-4242-{_host_tag()}-00000000-a.ckpt").write_bytes(b"half")
    (tmp_path / "only-a-folder" / "notes").mkdir(parents=True)
    (tmp_path / "only-strays").mkdir()
    (tmp_path / "only-strays" / ".DS_Store").write_bytes(b"")
    (tmp_path / "not a pipeline").mkdir()
    (tmp_path / "not a pipeline" / "a.ckpt").write_bytes(b"x")
    (tmp_path / "a-file").write_bytes(b"not a directory")
    assert store.pipelines() == ["p"]


def test_directory_put_is_atomic_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path, "p")
    store.put("a.ckpt", b"old and complete")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointStoreError, match="No space left"):
        store.put("a.ckpt", b"new")
    monkeypatch.undo()
    assert store.get("a.ckpt") == b"old and complete"
    assert sorted(p.name for p in store.path.iterdir()) == ["a.ckpt"]  # no temp file left


def test_directory_writes_fsync_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path, "p")
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.put("a.ckpt", b"x")
    assert synced == ["file", "dir"]


def test_directory_files_are_private(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "new", "p")
    store.put("a.ckpt", b"x")
    assert stat.S_IMODE((store.path / "a.ckpt").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.stat().st_mode) & 0o077 == 0


# --- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_reconnects_after_its_backend_is_killed(pg: Database) -> None:
    store = open_store(pg.url, "p")
    assert isinstance(store, PostgresStore)
    store.put("a.ckpt", b"before")
    assert store._conn is not None
    pid = store._conn.info.backend_pid
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.put("b.ckpt", b"after")
    assert store.list() == ["a.ckpt", "b.ckpt"]
    assert store._conn.info.backend_pid != pid
    store.close()


def test_postgres_errors_mask_the_password() -> None:
    with pytest.raises(CheckpointStoreError) as caught:
        open_store("postgresql://etl:hunter2-secret@127.0.0.1:1/db", "p", connect_timeout=2)
    assert "hunter2-secret" not in str(caught.value)
    assert "postgresql://etl:***@127.0.0.1:1/db" in str(caught.value)


def test_postgres_location_masks_the_password(pg: Database) -> None:
    from sqlalchemy.engine import make_url

    with_password = make_url(pg.url).set(password="unused-with-trust").render_as_string(False)
    store = open_store(with_password, "p")
    assert "unused-with-trust" not in store.location
    store.close()


# --- fsspec --------------------------------------------------------------------------------------


def test_s3_listing_ignores_foreign_objects_and_subfolders(s3_endpoint: str) -> None:
    bucket = s3_bucket(s3_endpoint)
    store = open_store(f"s3://{bucket}/pre", "p", **s3_options(s3_endpoint))
    assert isinstance(store, FsspecStore)
    store.put("a.ckpt", b"x")
    fs = store.fs  # type: ignore[attr-defined]
    fs.pipe_file(f"{bucket}/pre/p/notes/readme.txt", b"not a checkpoint")
    fs.pipe_file(f"{bucket}/pre/p/.tmp-1234-x", b"temp")
    fs.pipe_file(f"{bucket}/pre/p-other/b.ckpt", b"another pipeline")
    assert store.list() == ["a.ckpt"]


def test_s3_errors_name_the_store(s3_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket-here/pre", "p", **s3_options(s3_endpoint))
    with pytest.raises(CheckpointStoreError, match="s3://no-such-bucket-here/pre/p"):
        store.put("a.ckpt", b"x")


# --- open_store ---------------------------------------------------------------------------------


def test_open_store_chooses_by_scheme(tmp_path: Path, pg: Database) -> None:
    stores = {
        "path": open_store(tmp_path / "dir", "p"),
        "relative": open_store(os.path.relpath(tmp_path / "rel"), "p"),
        "file": open_store(f"file://{tmp_path / 'f'}", "p"),
        "sqlite": open_store(f"sqlite:///{tmp_path / 'c.db'}", "p"),
        "postgres": open_store(pg.url.replace("postgresql://", "postgresql+psycopg://"), "p"),
        "memory": open_store("memory://mp-choose/x", "p"),
    }
    assert isinstance(stores["path"], DirectoryStore)
    assert isinstance(stores["relative"], DirectoryStore)
    assert isinstance(stores["file"], DirectoryStore)
    assert stores["file"].location == str(tmp_path / "f" / "p")
    assert isinstance(stores["sqlite"], SqliteStore)
    assert isinstance(stores["postgres"], PostgresStore)
    assert isinstance(stores["memory"], FsspecStore)
    for store in stores.values():
        store.close()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("mysql://root:pw-x@h/db", {}, "is not a checkpoint store"),
        ("nosuchscheme://x/y", {}, "is not known"),
        ("sqlite://", {}, "names no file"),
        ("sqlite:///:memory:", {}, "names no file"),
        ("file://otherhost/x", {}, "another host"),
        ("{tmp}/dir", {"endpoint_url": "http://x"}, "apply to object store URLs only"),
    ],
)
def test_open_store_refuses_what_it_cannot_keep(
    tmp_path: Path, url: str, options: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        open_store(url.format(tmp=tmp_path), "p", **options)
    assert "pw-x" not in str(caught.value)
    assert not (tmp_path / "dir").exists()

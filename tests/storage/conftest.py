"""A real PostgreSQL for the storage tests, and a fresh database for each test.

With ``SPREADWATCH_TEST_DATABASE_URL`` set (CI points it at postgresql://postgres@127.0.0.1:5432/test)
that server is used; otherwise one embedded server is started for the session in a temporary
directory. Either way each test gets a database of its own with a unique name, dropped after the
test, so runs never collide and no test sees another's rows.

These tests run on the real clock: asyncpg's timers run on trio's clock under trio-asyncio, so
the autojump clock would fire them while the socket is waited on (DESIGN section 4).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from storage import Database, open_database
from storage.embedded import start_server, stop_server

TEST_DATABASE_URL_ENV = "SPREADWATCH_TEST_DATABASE_URL"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.contextmanager
def _private_directory() -> Iterator[pathlib.Path]:
    # Not under pytest's tmp_path: as root the embedded server runs as another user, which needs
    # to traverse the directory's parents, and every pytest run that starts (another terminal,
    # another checkout) chmods /tmp/pytest-of-<user> back to 0700, killing the server mid-test.
    directory = pathlib.Path(tempfile.mkdtemp(prefix="spreadwatch-test-pg-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_dir() -> Iterator[pathlib.Path]:
    """A private directory for an embedded server's data directory (see _private_directory)."""
    with _private_directory() as directory:
        yield directory


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of the test server whose database we may create other databases from."""
    external = os.environ.get(TEST_DATABASE_URL_ENV)
    if external:
        yield external
        return
    with _private_directory() as directory:
        server = start_server(directory / "pgdata")
        try:
            yield server.dsn("postgres")
        finally:
            stop_server(server)


@pytest.fixture
async def database_url(server_url: str, tmp_path: pathlib.Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database that is dropped after the test."""
    name = f"spreadwatch_test_{uuid.uuid4().hex[:16]}"
    async with open_database(server_url, data_dir=tmp_path, max_size=1) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        async with open_database(server_url, data_dir=tmp_path, max_size=1) as admin:
            # FORCE: a test that failed half-way may have left a session behind.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str, tmp_path: pathlib.Path) -> AsyncIterator[Database]:
    """An open ``Database`` on the test's fresh database (no migrations applied)."""
    async with open_database(database_url, data_dir=tmp_path, max_size=4) as database:
        yield database

"""Fixtures with override points for every test tier.

Servers: testcontainers starts PostgreSQL and RabbitMQ where Docker runs;
elsewhere the local servers are used (``DATABASE_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``, and ``AMQP_URI``,
default ``amqp://guest:guest@127.0.0.1:5672/``). Either way each test session
gets its own database and its own vhost, named ``autostep_test_<epoch>_<hex>``,
and removes them afterwards; at start it also removes those that sessions
older than an hour left behind (a killed run). Reachability is checked by
connecting to the configured URLs with a 3 s timeout. When a server cannot be
reached the tests that need it are skipped with a reason, except in CI
(``CI`` set to anything but empty, ``0``, ``false``, ``no`` or ``off``),
where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from autostep.settings import get_settings

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
#: Seconds a reachability check waits for a server.
CONNECT_TIMEOUT = 3
#: Test databases and vhosts are named ``<prefix><epoch seconds>_<hex>``.
TEST_PREFIX = "autostep_test_"
#: Leftovers of sessions older than this are removed at start.
LEFTOVER_AGE_SECONDS = 3600


def in_ci() -> bool:
    """Whether this is CI, where missing servers fail the tests instead of skipping them."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it or set the URL to run these tests"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _test_name() -> str:
    return f"{TEST_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"


def _is_leftover(name: str) -> bool:
    """A test database or vhost of a session that started over an hour ago."""
    stamp = name.removeprefix(TEST_PREFIX).split("_", 1)[0]
    return (
        name.startswith(TEST_PREFIX)
        and stamp.isdigit()
        and time.time() - int(stamp) > LEFTOVER_AGE_SECONDS
    )


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(database server URL, AMQP server URI); override to point elsewhere."""
    if os.environ.get("DATABASE_URL") or os.environ.get("AMQP_URI") or not _docker_running():
        yield (
            os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            os.environ.get("AMQP_URI", DEFAULT_AMQP_URI),
        )
        return
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with (
        PostgresContainer("postgres:16", driver="psycopg") as pg,
        RabbitMqContainer("rabbitmq:3.13") as rabbit,
    ):
        params = rabbit.get_connection_params()
        amqp = f"amqp://guest:guest@{params.host}:{params.port}/"
        yield pg.get_connection_url(), amqp


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    from autostep.migrate import upgrade
    from autostep.settings import libpq_dsn

    server = server_urls[0]
    name = _test_name()
    try:
        admin = psycopg.connect(libpq_dsn(server), autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    with admin:
        for (leftover,) in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (TEST_PREFIX + "%",)
        ).fetchall():
            if _is_leftover(leftover):
                admin.execute(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunparse(urlparse(server)._replace(path=f"/{name}"))
    try:
        upgrade(url)
        yield url
    finally:
        from autostep.db import dispose_engines

        dispose_engines()
        with psycopg.connect(libpq_dsn(server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def amqp_uri(server_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh vhost on the broker for this test session."""
    import amqp

    from autostep.settings import amqp_params

    server = server_urls[1]
    try:
        probe = amqp.Connection(**amqp_params(server), connect_timeout=CONNECT_TIMEOUT)
        probe.connect()
        probe.close()
    except (OSError, amqp.exceptions.AMQPError) as exc:
        _unavailable("RabbitMQ", exc)
    vhost = _test_name()
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or urlparse(server).hostname not in ("127.0.0.1", "localhost"):
        yield server  # a container or remote broker: it is ours alone already
        return
    user = urlparse(server).username or "guest"
    listed = subprocess.run([ctl, "-q", "list_vhosts"], capture_output=True, text=True)
    for leftover in listed.stdout.split():
        if _is_leftover(leftover):
            subprocess.run([ctl, "delete_vhost", leftover], capture_output=True)
    created = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, text=True)
    if created.returncode != 0:
        _unavailable("RabbitMQ", RuntimeError(created.stderr.strip()))
    subprocess.run(
        [ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield urlunparse(urlparse(server)._replace(path=f"/{vhost}"))
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def platform_env(database_url: str, amqp_uri: str) -> Iterator[dict[str, str]]:
    """The environment every autostep process of this session runs with."""
    env = {"AUTOSTEP_DATABASE_URL": database_url, "AUTOSTEP_AMQP_URI": amqp_uri}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def session_factory(platform_env: dict[str, str]) -> Any:
    """Sessions on the test database."""
    from autostep.db import make_session_factory, shared_engine

    return make_session_factory(shared_engine(platform_env["AUTOSTEP_DATABASE_URL"]))


@pytest.fixture(scope="session")
def effect_table(session_factory: Any) -> None:
    """The table the test step functions record their effects in (``tests.stepfuncs``)."""
    from sqlalchemy import text

    from autostep.db import unit_of_work
    from tests.stepfuncs import EFFECT_TABLE

    with unit_of_work(session_factory) as session:
        session.execute(text(EFFECT_TABLE))

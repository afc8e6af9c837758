"""Session setup and the fixtures shared by every test directory.

Sections: import path; environment hygiene; the S3 server; store kinds and
repository locations.  Helpers that are not fixtures live in ``tests/support``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# -- import path -----------------------------------------------------------------
# Tests import helpers as ``from support.s3server import ...``.  pytest's default
# "prepend" import mode already puts this directory on sys.path for a rootless
# conftest; doing it explicitly keeps that true under other import modes.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support.s3server import ACCESS_KEY, REGION, SECRET_KEY, SERVERS, S3Server, delete_prefix  # noqa: E402
from wsfs.store import ObjectStore, open_store  # noqa: E402

# -- environment hygiene ------------------------------------------------------------
# Real-S3 mode: both variables set; the s3 store kind then uses that endpoint and
# bucket with the ambient AWS credentials, and the environment is left alone.
REAL_S3_ENDPOINT = os.environ.get("WSFS_TEST_S3_ENDPOINT", "")
REAL_S3_BUCKET = os.environ.get("WSFS_TEST_S3_BUCKET", "")
REAL_S3 = bool(REAL_S3_ENDPOINT and REAL_S3_BUCKET)

# Which local server the s3 kind starts: "seaweedfs" (default; enforces auth) or "moto".
S3_SERVER_KIND = os.environ.get("WSFS_TEST_S3_SERVER", "seaweedfs")

# One id per test session (per xdist worker): the top folder of every s3 test repository.
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``$XDG_STATE_HOME`` in a temporary folder: a read-write mount's default state folder (and any
    other per-user state) never lands in the real ``~/.local/state``, for us and for subprocesses."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Keep boto3 on loopback with fake credentials: no profiles, no instance metadata, no proxy.

    Yields the variables it set (the config-file ones go into ``s3_server.env``
    too, so subprocesses see the same isolation).
    """
    if REAL_S3:
        yield {}
        return
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    values = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "AWS_DEFAULT_REGION": REGION,
    }
    removed = (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    )
    mp = pytest.MonkeyPatch()
    for name in removed:
        mp.delenv(name, raising=False)
    for name, value in values.items():
        mp.setenv(name, value)
    try:
        yield values
    finally:
        mp.undo()


# -- the S3 server ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(aws_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 endpoint and bucket for the session: a SeaweedFS (or moto) process we own, or real S3.

    While it is up, ``AWS_ENDPOINT_URL`` in this process points at it, so
    ``open_store("s3://...")`` finds it the way the CLI would.
    """
    mp = pytest.MonkeyPatch()
    try:
        if REAL_S3:
            server = S3Server(
                kind="real",
                endpoint_url=REAL_S3_ENDPOINT,
                bucket=REAL_S3_BUCKET,
                env={"AWS_ENDPOINT_URL": REAL_S3_ENDPOINT},
                enforces_auth=True,
            )
            mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
            yield server
            return
        start = SERVERS.get(S3_SERVER_KIND)
        if start is None:
            raise pytest.UsageError(f"WSFS_TEST_S3_SERVER={S3_SERVER_KIND!r}: use one of {sorted(SERVERS)}")
        with start(tmp_path_factory.mktemp("s3server")) as server:
            config_vars = {
                k: aws_env[k]
                for k in (
                    "AWS_CONFIG_FILE",
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "AWS_EC2_METADATA_DISABLED",
                    "NO_PROXY",
                    "no_proxy",
                )
            }
            server = dataclasses.replace(server, env={**server.env, **config_vars})
            mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
            yield server
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> Any:
    """A raw boto3 client for the session's endpoint (ambient credentials), for setup and checks."""
    return s3_server.client()


# -- store kinds and repository locations ----------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("local", id="local"),
        pytest.param("s3", id="s3", marks=pytest.mark.s3),
    ]
)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per store kind: ``local`` (a directory) and ``s3``."""
    return request.param


@pytest.fixture
def repo_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty, unique repository location of the current kind; emptied after the test.

    s3: ``s3://<bucket>/wsfs-test/<run id>/<hash of the test node id>``.
    """
    if store_kind == "local":
        yield str(tmp_path / "repo")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    client = request.getfixturevalue("s3_client")  # now: fixtures cannot be set up in teardown
    node_hash = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    prefix = f"wsfs-test/{RUN_ID}/{node_hash}"
    yield f"s3://{server.bucket}/{prefix}"
    delete_prefix(client, server.bucket, prefix + "/")


@pytest.fixture
def store(repo_url: str) -> ObjectStore:
    """The store at ``repo_url`` (for s3, the endpoint comes from ``AWS_ENDPOINT_URL``)."""
    return open_store(repo_url)


@pytest.fixture
def subprocess_env(store_kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a ``wsfs`` subprocess working on ``repo_url``."""
    env = dict(os.environ)
    if store_kind == "s3":
        env.update(request.getfixturevalue("s3_server").env)
    return env


def pytest_terminal_summary(terminalreporter) -> None:
    """The POSIX suites' own counts (pjdfstest's ``Files=/Tests=`` line, fsx runs, fsstress), at the end of
    every run: tests record them with ``record_property("suite_summary", ...)``."""
    lines = [f"{rep.nodeid}: {value}" for outcome in ("passed", "failed")
             for rep in terminalreporter.stats.get(outcome, [])
             if getattr(rep, "when", "call") == "call"
             for key, value in getattr(rep, "user_properties", []) if key == "suite_summary"]
    if lines:
        terminalreporter.write_sep("-", "POSIX suites")
        for line in lines:
            terminalreporter.write_line(line)

"""Fixtures for the real-mount tests: ``mount`` (a factory of daemons) and ``rich`` (a pushed tree).

The mechanics (start, readiness, strict and forced stop) are in ``mountkit.py``.
Every mount test is marked ``mount``; without a usable ``/dev/fuse`` (or
without root, which the source tree needs for chown and mknod) they are
skipped with the reason.  The cache tests (``test_blob_cache.py``) need neither.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountkit import Mounter, PushedTree, fuse_unavailable, make_tree, stop

from support.cli import Wsfs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = fuse_unavailable()
    for item in items:
        if here in Path(item.fspath).parents and "test_blob_cache" not in item.nodeid:
            item.add_marker(pytest.mark.mount)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def mount(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mounter]:
    notify_dir = tempfile.mkdtemp(prefix="wsfs-", dir="/tmp")  # AF_UNIX paths must stay short
    mounter = Mounter(tmp_path, notify_dir)
    try:
        yield mounter
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        errors = []
        for m in reversed(mounter.mounts):
            try:
                stop(m, strict=not failed)
            except AssertionError as e:
                errors.append(str(e))
        shutil.rmtree(notify_dir, ignore_errors=True)
        if errors:
            pytest.fail("\n\n".join(errors))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> PushedTree:
    """The tree of :func:`make_tree`, pushed once per module as ``rich@1`` to a local repository."""
    base = tmp_path_factory.mktemp("rich")
    src = make_tree(base / "src")
    repo = base / "repo"
    w = Wsfs(str(repo), str(base / "push-cache"))
    w("init")
    w.push(src, "rich")
    return PushedTree(src, repo, w)

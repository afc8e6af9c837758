"""A base version pushed with the real CLI into a local repository, and write layers over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from layer_support import Base, push_tree, standard_tree  # noqa: F401 (re-exported for older imports)

from wsfs.layer import WriteLayer


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    b = push_tree(tmp_path_factory.mktemp("base"), standard_tree)
    yield b
    b.m.close()


@pytest.fixture
def layer_factory(base: Base, tmp_path: Path) -> Iterator[Callable[..., WriteLayer]]:
    opened: list[WriteLayer] = []

    def make(state: Path | None = None, **kw: object) -> WriteLayer:
        base.calls.clear()
        lay = WriteLayer(str(state or tmp_path / "state"), base.m, base.id, base.read_base, **kw)  # type: ignore[arg-type]
        opened.append(lay)
        return lay

    yield make
    for lay in opened:
        try:
            lay.close()
        except Exception:
            pass


@pytest.fixture
def layer(layer_factory: Callable[..., WriteLayer]) -> WriteLayer:
    return layer_factory()

import pytest

from support.cli import Wsfs


@pytest.fixture
def wsfs(repo_url, subprocess_env, tmp_path):
    """The CLI against a fresh, initialized repository (local or S3, by ``store_kind``)."""
    w = Wsfs(repo_url, str(tmp_path / "cache"), subprocess_env)
    w("init")
    return w

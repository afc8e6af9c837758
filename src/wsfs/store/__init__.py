"""Object stores: where a repository's bytes live.

The bottom layer.  A store maps ``/``-separated keys to immutable byte
strings and knows nothing of blobs, manifests or versions.  Two kinds:
:class:`~wsfs.store.local.LocalStore` (a directory, the embedded default) and
:class:`~wsfs.store.s3.S3Store` (boto3, any S3-compatible endpoint).
"""

from __future__ import annotations

from wsfs.errors import UsageError
from wsfs.store.base import ObjectStore, StoreStats, check_key

__all__ = ["ObjectStore", "StoreStats", "check_key", "open_store"]


def open_store(url: str, *, endpoint_url: str | None = None, timeout: float | None = None) -> ObjectStore:
    """Open the store named by *url*: ``s3://bucket/prefix`` or a local path (``file://`` optional).

    *timeout*: the budget of one S3 request in seconds (default ``$WSFS_OP_TIMEOUT`` or 30); a
    local store has none.
    """
    if url.startswith("s3://"):
        from wsfs.store.s3 import S3Store

        return S3Store.from_url(url, endpoint_url=endpoint_url, timeout=timeout)
    if "://" in url and not url.startswith("file://"):
        raise UsageError(f"unsupported repository URL {url!r} (use a local path or s3://bucket/prefix)")
    from wsfs.store.local import LocalStore

    return LocalStore(url.removeprefix("file://"))

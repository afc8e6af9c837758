"""The write layer of read-write mounts: local changes over an immutable base version.

Below the daemon (no FUSE here) and above ``format``: the target's ``tree``
layer (../shared/ARCHITECTURE.md §2), so that ``wsfs status`` and commit can
open a layer with no daemon running.  Modules: :mod:`~wsfs.layer.state` (the
state folder and its schema), :mod:`~wsfs.layer.content` (one changed file's
blocks, copy-on-write), :mod:`~wsfs.layer.batch`, :mod:`~wsfs.layer.namespace`
and :mod:`~wsfs.layer.layer` (:class:`WriteLayer`: the merged view and the
mutations), :mod:`~wsfs.layer.changes` (what differs from
the base, by path).  Design and guarantees: ``docs/write-layer.md``.
"""

from wsfs.layer.changes import Change
from wsfs.layer.layer import XATTR_CREATE, XATTR_REPLACE, WriteLayer
from wsfs.layer.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE
from wsfs.layer.state import BaseId

__all__ = ["BaseId", "Change", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "WriteLayer", "XATTR_CREATE", "XATTR_REPLACE"]

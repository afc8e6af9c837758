"""wsfs: a workspace filesystem.

Versioned, content-addressed workspaces stored in an object store (S3 or a
local directory), read back with the CLI or mounted lazily with FUSE.

Layers (one-way imports, top to bottom): cli -> versions -> repository ->
format -> store.  ``errors`` is shared by all of them.  See
``docs/architecture.md``.
"""

__version__ = "0.1.0"

"""The repository format: ids, blob encoding, chunking, manifests, version records, names.

Imports only :mod:`wsfs.errors` and the standard library / codecs: the format
is pure data, independent of where the bytes are stored.
"""

FORMAT_VERSION = 2
"""Version of the repository layout and of versions this wsfs writes (format 2: wsfs.format.tree)."""

READ_FORMATS = (1, 2)
"""Formats this wsfs reads: 1 (one SQLite manifest per version) and 2."""

"""The repository format: ids, blob encoding, chunking, manifests, version records, names.

Imports only :mod:`wsfs.errors` and the standard library / codecs: the format
is pure data, independent of where the bytes are stored.
"""

FORMAT_VERSION = 1
"""Version of the repository layout and of manifests this wsfs writes and reads."""

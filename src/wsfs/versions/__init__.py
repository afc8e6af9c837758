"""Operations on versions: push (directory -> version), checkout (version -> directory), diff.

Imports ``repository`` and ``format``; never a store directly.
"""

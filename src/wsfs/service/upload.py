"""``POST /v1/workspaces/{ws}/versions``: a tar body becomes the workspace's next version.

The body is written to a private temporary file (at most ``max_bytes``),
extracted into a private temporary directory, and pushed exactly as
``wsfs push`` would push that directory: every byte hashed, chunks and
pieces uploaded before the record, the record created conditionally (a
version taken meanwhile by another writer makes ours the next one: the body
is a whole tree, nothing needs merging).  Either the new version exists
whole, or nothing was published.  The temporary data is removed whatever
happens.

Extraction is where a tar from the network could hurt the server, so every
member passes :func:`_member`: no absolute names, no ``..``, no link whose
target leaves the tree, no member that would land outside it (tarfile's
``tar`` filter does these checks), no device nodes unless the server runs as
root; modes are kept as sent (the directory is private: nobody else can
reach a set-uid file in it), owners only when the server runs as root;
a symbolic link may point anywhere (its target is stored, never followed).
User extended attributes travel as PAX ``SCHILY.xattr.user.*`` records (what
``GET .../archive`` writes) and are set after extraction.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tarfile
from collections.abc import Callable

from wsfs.errors import UsageError
from wsfs.format.records import VersionRecord
from wsfs.localfs import private_dir
from wsfs.repository import Repository
from wsfs.versions.push import push

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 << 30  # a request body larger than this is refused (413)
_XATTR_PAX = "SCHILY.xattr."


class BadArchive(UsageError):
    """The body is not a tar archive wsfs accepts (400)."""


def _probe(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """*m* as the name checks see it: a symbolic link as a file (its target is not checked)."""
    if not m.issym():
        return m
    probe = copy.copy(m)
    probe.type, probe.linkname = tarfile.REGTYPE, ""
    return probe


def _member(root: str) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    is_root = os.geteuid() == 0

    def check(m: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        # A symbolic link's target is data (push stores it, nothing follows it), so any target is
        # allowed; its *name* is checked like every member's: where it lands, resolved through the
        # links extracted before it (a member "a/x" after a link "a" -> "/etc" is refused).
        try:
            safe = tarfile.tar_filter(_probe(m), dest)  # name, hard link and absolute-name checks
        except tarfile.FilterError as e:
            raise BadArchive(f"refused member {m.name!r}: {e}") from None
        if m.islnk():  # tar_filter leaves hard links to the data filter: a link to a server file must fail
            target = os.path.realpath(os.path.join(dest, m.linkname))
            if os.path.isabs(m.linkname) or os.path.commonpath([target, os.path.realpath(dest)]) != os.path.realpath(dest):
                raise BadArchive(f"refused member {m.name!r}: a hard link to {m.linkname!r}, outside the archive")
        if m.issparse():  # its declared size is not bounded by the body's: a small body, terabytes to hash
            raise BadArchive(f"refused member {m.name!r}: sparse members are not accepted")
        if (m.ischr() or m.isblk()) and not is_root:
            raise BadArchive(f"refused member {m.name!r}: device nodes need a server running as root")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo() or m.ischr() or m.isblk()):
            raise BadArchive(f"refused member {m.name!r}: unsupported type")
        out = copy.copy(safe)
        out.type, out.linkname, out.mode = m.type, m.linkname if m.issym() else safe.linkname, m.mode
        return out  # the modes as sent: the directory is private

    return check


def extract(tar_path: str, dest: str) -> None:
    """Extract the tar at *tar_path* into the existing, empty, private directory *dest*."""
    try:
        with tarfile.open(tar_path, mode="r:") as tf:
            members = tf.getmembers()
            tf.extractall(dest, members=members, numeric_owner=True, filter=_member(dest))
            for m in members:
                xattrs = {k[len(_XATTR_PAX):]: v for k, v in m.pax_headers.items() if k.startswith(_XATTR_PAX)}
                for name, value in xattrs.items():
                    if not name.startswith("user."):
                        continue  # as wsfs push and checkout: only user.* travels
                    path = os.path.join(dest, tarfile.tar_filter(_probe(m), dest).name)
                    raw = value.encode("utf-8", "surrogateescape")
                    os.setxattr(path, name, raw, follow_symlinks=False)
            # Directory times last: extracting into them changed them.
            for m in sorted((m for m in members if m.isdir()), key=lambda m: -m.name.count("/")):
                path = os.path.join(dest, tarfile.tar_filter(_probe(m), dest).name)
                os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    except (tarfile.TarError, EOFError) as e:
        raise BadArchive(f"the body is not a valid tar archive: {e}") from None
    except UnicodeError as e:
        raise BadArchive(f"the archive holds a name that cannot be extracted: {e}") from None


def version_from_tar(repo: Repository, ws: str, tar_path: str, *, message: str, author: str) -> VersionRecord:
    """Push the tree in the tar at *tar_path* as the next version of *ws* (see the module doc)."""
    work = repo.temp_path("upload")
    private_dir(work)
    try:
        tree = os.path.join(work, "tree")
        os.mkdir(tree)
        os.chmod(tree, 0o755)  # the root of a tar without a "." member; *work* (0700) keeps it private
        extract(tar_path, tree)
        record, stats = push(repo, tree, ws, message=message, author=author, exclude={}, stat_cache=False)
        log.info("%s@%d created from an upload by %s: %d entries changed, %d bytes uploaded",
                 ws, record.version, author, stats.changed, stats.bytes_uploaded)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""The ``wsfs`` command line.

One function per command (``cmd_<name>``), one parser; every failure that
reaches :func:`main` is a :class:`~wsfs.errors.WsfsError` printed as one line
(``wsfs: error: ...``) with the exit status its class carries.  Details go to
the log (``-v``).  Paths inside a version are bytes: arguments are encoded
with the filesystem encoding (surrogateescape), and names are written to
stdout as raw bytes, so any name round-trips.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from wsfs import __version__, redact
from wsfs.config import Settings, resolve
from wsfs.errors import FormatError, IntegrityError, NotFound, UsageError, WsfsError
from wsfs.format.chunking import DEFAULT_CHUNK_SIZE
from wsfs.format.names import named
from wsfs.terminal import EscapingFormatter, escape, escape_name

# The repository, the store and the formats (apsw, zstandard, blake3...) are imported by the commands
# that use them: `wsfs mount` through a resident mountd needs none of them (docs/daemon.md, mountd),
# and every command starts ~60 ms sooner after the page cache was dropped.
if TYPE_CHECKING:
    from wsfs.format.manifest import Inode
    from wsfs.repository import Repository

log = logging.getLogger("wsfs")


# -- helpers ---------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)


def _name(name: bytes) -> bytes:
    """A name from a version for stdout: raw bytes in a pipe, control bytes escaped on a terminal."""
    return escape_name(name) if sys.stdout.isatty() else name


class _JsonArray:
    """Writes a JSON array to stdout one element at a time (a listing of any size in bounded memory)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, item: dict[str, Any]) -> None:
        sys.stdout.write(("[" if not self.n else ",\n") + json.dumps(item))
        self.n += 1

    def close(self) -> None:
        sys.stdout.write(("[" if not self.n else "") + "]\n")


def _parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    suffix = t[-1:] if t[-1:] in units else ""
    try:
        return int(float(t[: len(t) - len(suffix)]) * units[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


@contextmanager
def _progress(
    args: argparse.Namespace, desc: str, unit: str, total: int | None = None
) -> Iterator[Callable[[int], None]]:
    """A progress callback: a tqdm bar on a terminal, nothing otherwise."""
    if args.quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, unit_scale=True, total=total, file=sys.stderr, leave=False) as bar:
        yield bar.update


def _settings(args: argparse.Namespace) -> Settings:
    return resolve(args.repo, args.endpoint_url, args.cache_dir)


def _open_repo(args: argparse.Namespace, *, create_default: bool = False) -> Repository:
    from wsfs.format.records import RepoConfig
    from wsfs.localfs import private_dir
    from wsfs.repository import Repository
    from wsfs.store import open_store

    s = _settings(args)
    store = open_store(s.repo, endpoint_url=s.endpoint_url)
    try:
        return Repository.open(store, s.cache_dir)
    except NotFound:
        if not (create_default and s.is_default_repo):
            raise
        log.info("creating the default repository at %s", s.repo)
        private_dir(s.repo)  # state of one user, like the cache: 0700
        return Repository.init(store, RepoConfig(), s.cache_dir)


def _mode_string(mode: int) -> str:
    return stat.filemode(mode)


def _time(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M")


# -- commands ----------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from wsfs.format.records import DEFAULT_INLINE_THRESHOLD, RepoConfig
    from wsfs.repository import Repository
    from wsfs.store import open_store

    s = resolve(args.location or args.repo, args.endpoint_url, args.cache_dir)
    store = open_store(s.repo, endpoint_url=s.endpoint_url)
    if not s.repo.startswith("s3://"):
        os.makedirs(s.repo, exist_ok=True)
    else:
        store.check()
    inline = DEFAULT_INLINE_THRESHOLD if args.inline_threshold is None else args.inline_threshold
    config = RepoConfig(chunk_size=args.chunk_size, inline_threshold=inline)
    Repository.init(store, config, s.cache_dir)
    print(f"initialized wsfs repository at {store.url} (chunks {_size(config.chunk_size)}, "
          f"inline files up to {_size(config.inline_threshold)})")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    repo = _open_repo(args)
    if repo.config.format == 2:
        print(f"{repo.store.url} is already a format 2 repository")
        return 0
    repo.upgrade()
    print(f"upgraded {repo.store.url} to format 2: its versions stay as they are; new versions are format 2 "
          "(wsfs releases before format 2 no longer open it)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from wsfs import collector
    from wsfs.versions.push import push

    collector.relax()  # the walk keeps objects per entry (wsfs.collector)
    repo = _open_repo(args, create_default=True)
    t0 = time.monotonic()
    with _progress(args, "push", " entries") as progress:
        record, stats = push(
            repo,
            args.dir,
            args.workspace,
            message=args.message,
            skip_unreadable=args.skip_unreadable,
            rehash=args.rehash,
            workers=args.jobs,
            progress=progress,
        )
    elapsed = time.monotonic() - t0
    if args.json:
        print(json.dumps({
            "workspace": record.workspace,
            "version": record.version,
            "parent": record.parent,
            "manifest": record.manifest,
            "manifest_size": record.manifest_size,
            "stats": {k: v for k, v in vars(stats).items()},
            "store": repo.store.stats.snapshot(),
            "seconds": round(elapsed, 3),
        }))
        return 0
    parent = f" (parent {record.parent})" if record.parent else ""
    print(
        f"pushed {record.workspace}@{record.version}{parent}: {stats.files} files, {stats.dirs} dirs, "
        f"{stats.symlinks} symlinks, {_size(stats.bytes)} in {elapsed:.1f}s; uploaded {stats.blobs_uploaded} "
        f"objects ({_size(stats.bytes_uploaded)}), {stats.blobs_reused} already stored"
        + ("" if stats.changed is None else f"; {stats.changed} {'entry' if stats.changed == 1 else 'entries'} changed")
        + ("" if record.format != 1 else f"; manifest {_size(record.manifest_size)}")
    )
    if stats.skipped:
        print(f"left out {len(stats.skipped)} entries (see warnings above)", file=sys.stderr)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from wsfs.format.names import check_workspace

    repo = _open_repo(args)
    ws = check_workspace(args.workspace)
    versions = repo.versions(ws)
    if not versions:
        raise NotFound(f"workspace {ws!r} has no versions")
    tags: dict[int, list[str]] = {}
    for tag, n in repo.tags(ws).items():
        tags.setdefault(n, []).append(tag)
    records = []
    for n in reversed(versions):
        try:
            records.append(repo.record(ws, n))
        except (IntegrityError, FormatError) as e:  # one bad record must not hide the others
            log.warning("skipping %s@%d: %s", ws, n, e)
    if args.json:
        print(json.dumps([dict(vars(r), tags=tags.get(r.version, [])) for r in records], default=str))
        return 0
    print(f"{'VERSION':>7} {'PARENT':>6}  {'TIME':<25} {'AUTHOR':<20} {'FILES':>7} {'BYTES':>10}  MESSAGE")
    for r in records:
        t = f" [{', '.join(sorted(tags[r.version]))}]" if r.version in tags else ""
        print(
            f"{r.version:>7} {r.parent or '-':>6}  {escape(r.time[:25]):<25} {escape(r.author[:20]):<20} "
            f"{r.stats.get('files', 0):>7} {_size(r.stats.get('bytes', 0)):>10}  {escape(r.message)}{t}"
        )
    return 0


def _ls_line(name: bytes, node: Inode, long: bool) -> bytes:
    if not long:
        return _name(name) + b"\n"
    line = (
        f"{_mode_string(node.mode)} {node.nlink:>3} {node.uid:>5} {node.gid:>5} {node.size:>12} "
        f"{_time(node.mtime_ns)} "
    ).encode()
    line += _name(name)
    if node.is_link and node.target is not None:
        line += b" -> " + _name(node.target)
    return line + b"\n"


def _ls_json(name: bytes, node: Inode) -> dict[str, Any]:
    kind = stat.S_IFMT(node.mode)
    out: dict[str, Any] = named("name", name)
    out.update(type={stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}.get(kind, "special"),
               mode=stat.S_IMODE(node.mode), nlink=node.nlink, uid=node.uid, gid=node.gid, size=node.size,
               mtime_ns=node.mtime_ns)
    if node.is_link and node.target is not None:
        out.update(named("target", node.target))
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref

    repo = _open_repo(args)
    record = repo.resolve(Ref.parse(args.ref))
    out = _JsonArray() if args.json else None

    def emit(entries: list[tuple[bytes, Inode]]) -> None:
        if out is not None:
            for name, child in entries:
                out.add(_ls_json(name, child))
        else:
            _out(b"".join(_ls_line(name, child, args.long) for name, child in entries))

    with repo.open_manifest(record) as m:
        path = os.fsencode(args.path)
        node = m.resolve(path)
        if node.is_link and path.endswith(b"/"):
            node = m.resolve(path, follow=True)
        if not node.is_dir:
            emit([(path, node)])
        else:
            after = 0
            while True:
                batch = m.readdir(node.ino, after, 1000)
                if not batch:
                    break
                emit([(name, child) for _, name, child in batch])
                after = batch[-1][0]
    if out is not None:
        out.close()
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref
    from wsfs.versions.read import iter_content

    repo = _open_repo(args)
    record = repo.resolve(Ref.parse(args.ref))
    with repo.open_manifest(record) as m:
        node = m.resolve(os.fsencode(args.path), follow=True)
        if not node.is_reg:
            raise UsageError(f"{args.path} is not a regular file")
        for data in iter_content(repo, m, node):
            _out(data)
    sys.stdout.buffer.flush()
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref
    from wsfs.versions.checkout import checkout

    repo = _open_repo(args)
    record = repo.resolve(Ref.parse(args.ref))
    t0 = time.monotonic()
    with repo.open_manifest(record) as m, _progress(args, "checkout", " entries") as progress:
        stats = checkout(repo, m, args.dir, workers=args.jobs, progress=progress, same_owner=args.same_owner,
                         devices=args.devices, setuid=args.setuid)
    print(
        f"checked out {record.workspace}@{record.version} into {args.dir}: {stats.entries} entries, "
        f"{stats.files} files, {_size(stats.bytes)} in {time.monotonic() - t0:.1f}s"
        + (f" ({stats.warnings} warnings)" if stats.warnings else "")
    )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref
    from wsfs.versions.diff import diff, diff_versions

    repo = _open_repo(args)
    ra, rb = repo.resolve(Ref.parse(args.a)), repo.resolve(Ref.parse(args.b))
    n = 0
    with contextlib.ExitStack() as stack:
        items = diff_versions(repo, ra, rb)
        if items is None:  # a format 1 version: compare the trees
            ma = stack.enter_context(repo.open_manifest(ra))
            items = diff(ma, stack.enter_context(repo.open_manifest(rb)))
        out = _JsonArray() if args.json else None
        for status, path in items:
            if out is not None:
                out.add({"status": status, **named("path", path)})
            else:
                _out(status.encode() + b" " + _name(path) + b"\n")
            n += 1
        if out is not None:
            out.close()
    return 1 if (n and args.exit_code) else 0


def cmd_tag(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref

    repo = _open_repo(args)
    ref = Ref.parse(args.ref)
    record = repo.resolve(ref)
    repo.set_tag(record.workspace, args.name, record.version)
    print(f"tagged {record.workspace}@{record.version} as {record.workspace}@{args.name}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    code = 0
    if args.cache:
        code = max(code, _fsck_cache(args))
    if args.targets or not args.cache:
        code = max(code, _fsck_store(args))
    return code


def _fsck_store(args: argparse.Namespace) -> int:
    from wsfs.repository import Ref
    from wsfs.versions.fsck import fsck

    repo = _open_repo(args)
    targets = [Ref.parse(t) for t in args.targets]
    with _progress(args, "fsck", "objects") as progress:
        r = fsck(repo, targets, full=args.full, sample=args.sample, progress=progress)
    for line in r.problems:
        print(f"problem: {line}")
    checked = "verified" if args.full else f"{r.verified} sampled and verified" if args.sample else "present"
    print(f"{repo.store.url}: {r.workspaces} workspace(s), {r.versions} version(s), {r.tags} tag(s), "
          f"{r.pieces} metadata pieces verified, {r.objects} chunks and packs {checked}"
          + (f" ({_size(r.verified_bytes)})" if r.verified else "") + f"; {len(r.problems)} problem(s)")
    if r.problems:
        print(f"wsfs: {len(r.problems)} problem(s) found in the repository", file=sys.stderr)
        return 6
    return 0


def _fsck_cache(args: argparse.Namespace) -> int:
    from wsfs.cache import cache_usage, check_cache
    from wsfs.repository import tidy_cache_dir

    cache_dir = _settings(args).cache_dir
    leftovers = tidy_cache_dir(cache_dir)
    with _progress(args, "fsck --cache", "B", total=cache_usage(cache_dir)[0]) as progress:
        r = check_cache(cache_dir, progress)
    r.leftovers += leftovers
    print(f"{cache_dir}: {r.files} cached blobs ({_size(r.bytes)}) checked: {r.dropped} corrupt"
          f" ({_size(r.dropped_bytes)}) dropped; index: {r.rows_removed} stale rows removed,"
          f" {r.rows_fixed} sizes corrected; {r.leftovers} leftover temporary files removed")
    if r.dropped:
        print(f"wsfs: {r.dropped} corrupt cached blob(s) dropped; they will be fetched again when read",
              file=sys.stderr)
        return 6
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from wsfs.versions.gc import GcReport, Retention, gc, parse_duration

    repo = _open_repo(args)
    retention = Retention(keep_last=args.keep_last,
                          keep_within=None if args.keep_within is None else parse_duration(args.keep_within))
    grace = parse_duration(args.grace)
    report = GcReport()
    started, ok = time.monotonic(), False
    try:
        with _progress(args, "gc", "versions") as progress:
            r = gc(repo, retention, grace=grace, dry_run=args.dry_run, progress=progress, report=report)
        ok = True
    finally:
        if args.metrics_file:
            from wsfs.metrics import gc_textfile

            try:
                gc_textfile(args.metrics_file, report, seconds=time.monotonic() - started, ok=ok,
                            dry_run=args.dry_run)
            except OSError as e:
                raise UsageError(f"--metrics-file {args.metrics_file}: {e.strerror}") from None
    would = "would be " if args.dry_run else ""
    for v in r.dropped:
        print(f"{'would drop' if args.dry_run else 'dropped'} {v}")
    print(f"{r.versions} version(s): {r.kept} kept ({r.leased} named by a live mount's lease), "
          f"{len(r.dropped)} {would}dropped")
    print(f"objects: {r.referenced} referenced, {r.unreferenced} unreferenced ({_size(r.unreferenced_bytes)}); "
          f"{r.deleted} {would}deleted ({_size(r.deleted_bytes)}), {r.marked} {would}marked for deletion "
          f"after {args.grace} ({_size(r.marked_bytes)}), {r.waiting} marked earlier and waiting")
    if r.dead_segment_bytes:
        print(f"segments kept for their live packs hold {_size(r.dead_segment_bytes)} of dead packs")
    return 0


def cmd_workspaces(args: argparse.Namespace) -> int:
    repo = _open_repo(args)
    rows: list[dict[str, Any]] = []
    for ws in repo.workspaces():
        rows.append({"workspace": ws, "latest": repo.latest(ws)})
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['workspace']}\t{r['latest'] if r['latest'] is not None else '-'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from wsfs.service.auth import new_token
    from wsfs.service.server import run

    if args.new_token:
        token, digest = new_token()
        print(f"token (give it to the client; it is not stored):\n  {token}\n"
              f"config entry (--config FILE):\n  [[token]]\n  name = \"CHANGE-ME\"\n  sha256 = \"{digest}\"\n"
              f"  scopes = [\"read\"]            # add \"write\" to let it POST new versions\n  workspaces = [\"*\"]")
        return 0
    return run(args.listen, args.config, lambda: _open_repo(args), _settings(args).cache_dir,
               access_log=args.verbose >= 1, threads=args.threads, max_upload=args.max_upload)


# -- parser ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # The same options are accepted before and after the command.  On the
        # sub-parsers their defaults are suppressed, or argparse would reset a
        # value given before the command to the default.
        def d(value: object) -> object:
            return argparse.SUPPRESS if suppress else value

        c = argparse.ArgumentParser(add_help=False)
        g = c.add_argument_group("repository")
        g.add_argument("--repo", metavar="URL", default=d(None),
                       help="repository: a local directory or s3://bucket/prefix "
                       "(default: $WSFS_REPO, the config file, or ~/.local/share/wsfs/repo)")
        g.add_argument("--endpoint-url", metavar="URL", default=d(None),
                       help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
        g.add_argument("--cache-dir", metavar="DIR", default=d(None),
                       help="local cache (default: $WSFS_CACHE_DIR or ~/.cache/wsfs)")
        g.add_argument("-v", "--verbose", action="count", default=d(0), help="more log output (-vv for debug)")
        g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress output")
        return c

    common = common_options(suppress=True)

    p = argparse.ArgumentParser(
        prog="wsfs",
        description="Versioned workspaces in an object store. WORKSPACE[@V] names a version: V is a "
        "number, a tag, or absent for the latest.",
        parents=[common_options(suppress=False)],
    )
    p.add_argument("--version", action="version", version=f"wsfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", cmd_init, "create a repository (local directory or s3://bucket/prefix)")
    sp.add_argument("location", nargs="?", metavar="REPO", help="where (default: as --repo)")
    sp.add_argument("--chunk-size", type=_parse_size, default=DEFAULT_CHUNK_SIZE,
                    help="chunk size of large files, a power of two (default 4MiB)")
    sp.add_argument("--inline-threshold", type=_parse_size, default=None,
                    help="files up to this size are stored inside the manifest (default 128KiB)")

    sp = add("upgrade", cmd_upgrade, "convert a format 1 repository to format 2 (in place: existing versions stay readable)")
    sp.epilog = ("Rewrites wsfs-repo.json only. Versions pushed before stay format 1 and keep being read; "
                 "every new version is format 2. Older wsfs releases refuse the repository afterwards.")

    sp = add("push", cmd_push, "snapshot DIR as the next version of WORKSPACE")
    sp.epilog = ("Symlinks are stored, never followed. wsfs' own repository (when local), cache and "
                 "state directory are left out with a warning. A file whose device, inode, size, mtime and "
                 "ctime are what they were at the last push of DIR is not read again (its content id is "
                 "remembered in the cache, as git's index does); --rehash reads every file.")
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("workspace", metavar="WORKSPACE")
    sp.add_argument("-m", "--message", default="", help="version message")
    sp.add_argument("--skip-unreadable", action="store_true",
                    help="leave out unreadable or vanished entries with a warning instead of failing")
    sp.add_argument("--rehash", action="store_true",
                    help="read and hash every file, even those unchanged since the last push (ignore the stat cache)")
    sp.add_argument("-j", "--jobs", type=int, default=8, help="parallel hash/upload workers (default 8)")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")

    sp = add("log", cmd_log, "list the versions of WORKSPACE, newest first")
    sp.add_argument("workspace", metavar="WORKSPACE")
    sp.add_argument("--json", action="store_true")

    sp = add("ls", cmd_ls, "list a directory of a version")
    sp.add_argument("ref", metavar="WORKSPACE[@V]")
    sp.add_argument("path", nargs="?", default="", metavar="PATH")
    sp.add_argument("-l", "--long", action="store_true", help="mode, links, owner, size, mtime")
    sp.add_argument("--json", action="store_true", help="a JSON array of entries (name, name_pct, type, mode, size, "
                    "...; name is text, name_pct the exact bytes percent-encoded, as the REST API writes them)")

    sp = add("cat", cmd_cat, "write one file of a version to stdout")
    sp.add_argument("ref", metavar="WORKSPACE[@V]")
    sp.add_argument("path", metavar="PATH")

    sp = add("checkout", cmd_checkout, "materialize a version into DIR (absent or empty)")
    sp.epilog = "Like tar -x: owners are restored when run as root; only user.* xattrs are restored."
    sp.add_argument("ref", metavar="WORKSPACE[@V]")
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("-j", "--jobs", type=int, default=8, help="parallel downloads (default 8)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--same-owner", dest="same_owner", action="store_true", default=None,
                   help="give entries their recorded owner and group (default when run as root)")
    g.add_argument("--no-same-owner", dest="same_owner", action="store_false",
                   help="leave entries owned by the user running checkout (default for other users)")
    sp.add_argument("--no-devices", dest="devices", action="store_false",
                    help="leave device nodes out, with a warning")
    sp.add_argument("--no-setuid", dest="setuid", action="store_false",
                    help="clear setuid/setgid bits of files")

    sp = add("diff", cmd_diff, "paths added (A), removed (D), modified (M) or type-changed (T) from A to B")
    sp.add_argument("a", metavar="WORKSPACE@A")
    sp.add_argument("b", metavar="WORKSPACE@B")
    sp.add_argument("--exit-code", action="store_true", help="exit 1 if there are differences")
    sp.add_argument("--json", action="store_true", help='a JSON array of {"status", "path", "path_pct"} (path is '
                    "text, path_pct the exact bytes percent-encoded, as the REST API writes them)")

    sp = add("tag", cmd_tag, "name a version (tags are immutable)")
    sp.add_argument("ref", metavar="WORKSPACE[@V]")
    sp.add_argument("name", metavar="NAME")

    sp = add("fsck", cmd_fsck, "check the repository (every version of WORKSPACE, or of every workspace) and/or "
             "the local cache; exit 6 if a problem was found")
    sp.add_argument("targets", nargs="*", metavar="WORKSPACE[@V]",
                    help="what to check: a workspace (every version and tag) or one version; default: every "
                    "workspace (unless only --cache is given)")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true",
                     help="also fetch every chunk and pack and verify it against its id (reads the whole "
                     "repository); without it, chunks and packs are only checked to be present")
    how.add_argument("--sample", type=int, default=0, metavar="N",
                     help="also fetch and verify N chunks and packs drawn at random")
    sp.add_argument("--cache", action="store_true",
                    help="verify the local blob cache (size against the index, blake3 against the name) and "
                    "drop the bad entries")

    sp = add("gc", cmd_gc, "drop old versions by retention rules, then delete objects no version needs "
             "(two runs at least --grace apart: the first marks, a later one deletes)")
    sp.add_argument("--keep-last", type=int, metavar="N",
                    help="keep the N newest versions of each workspace (the latest, tagged versions and "
                    "versions a live mount uses are always kept); no rule: every version is kept")
    sp.add_argument("--keep-within", metavar="AGE", help="keep versions younger than AGE (e.g. 30d, 12h)")
    sp.add_argument("--grace", default="24h", metavar="AGE",
                    help="an object is deleted only once it was unreferenced at two runs this far apart "
                    "(default 24h; pushes and commits must finish within it)")
    sp.add_argument("--dry-run", action="store_true", help="change nothing; print what would be dropped and deleted")
    sp.add_argument("--metrics-file", metavar="PATH",
                    help="write this run's figures (wsfs_gc_*: success, duration, versions dropped, objects and "
                    "bytes marked and deleted) to PATH as Prometheus text, replaced atomically, also after a "
                    "failure; for node_exporter's textfile collector")

    sp = add("workspaces", cmd_workspaces, "list workspaces and their latest version")
    sp.add_argument("--json", action="store_true")

    sp = add("serve", cmd_serve, "serve the repository's versions over HTTP (REST API, docs/api.md); writes "
             "(POST of a tar as a new version) only with a write-scoped token")
    sp.epilog = ("Endpoints under /v1 (workspaces, versions, tags, tree, files with Range/ETag, tar archives, diff); "
                 "the OpenAPI document at /openapi.json. Loopback only unless --config names bearer tokens: a "
                 "non-loopback address without tokens is refused. Plain HTTP: put a TLS proxy in front for remote "
                 "clients. Access log with -v. Stop with Ctrl-C or SIGTERM.")
    sp.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="address to listen on (default 127.0.0.1:8080; [::1]:PORT for IPv6)")
    sp.add_argument("--config", metavar="FILE",
                    help="TOML file of [[token]] entries (name, sha256, scopes, workspaces): every request then "
                    "needs Authorization: Bearer <token>")
    sp.add_argument("--threads", type=int, default=16, help="threads reading content (default 16)")
    sp.add_argument("--max-upload", type=_parse_size, default=4 << 30, metavar="SIZE",
                    help="largest tar body a POST of a new version may send (default 4G)")
    sp.add_argument("--new-token", action="store_true",
                    help="print a new random token and its config entry, then exit")

    from wsfs.daemon.cli import register as register_daemon_commands

    register_daemon_commands(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    redact.scrub_argv()  # --endpoint-url http://user:password@...: not in ps, nor in a daemon forked below
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("wsfs: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    redact.install()
    if args.verbose < 2:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except WsfsError as e:
        log.debug("failed", exc_info=True)
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print("wsfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        # A local file system said no (a full disk, a file where a directory
        # should be, permissions): one line naming the file, never a traceback.
        log.debug("failed", exc_info=True)
        where = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        return _fail(f"{where}{e.strerror or e}", 1)
    except Exception as e:  # noqa: BLE001 - the last resort: still one line
        log.debug("failed", exc_info=True)
        return _fail(f"internal error ({type(e).__name__}: {e}); run with -vv for details", 1)


def _fail(message: str, code: int) -> int:
    print(f"wsfs: error: {escape(redact.redact(message))}", file=sys.stderr)
    return code

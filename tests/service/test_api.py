"""The REST API over real HTTP: listings, paging, file bytes, HTTP caching and ranges, names, symlinks, archives, diff.

One local-directory repository (conftest ``served``) with two versions of a
tree holding every kind of entry; the server has a cache of its own, so the
first read of each blob fetches and verifies it.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path
from urllib.parse import quote_from_bytes, urlencode

import pytest

from support.service import MANY, WEIRD, Served, file_url

WS = "/v1/workspaces/demo"


def read(path: Path | bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- listings ---------------------------------------------------------------------------


def test_workspaces_versions_tags(served: Served) -> None:
    assert served.json("/v1/workspaces") == {"workspaces": [{"name": "demo"}, {"name": "other"}]}
    page = served.json(f"{WS}/versions")
    assert [r["version"] for r in page["versions"]] == [2, 1] and page["next"] is None
    assert page["versions"][0]["message"] == "second" and page["versions"][0]["parent"] == 1
    # paged, newest first
    p1 = served.json(f"{WS}/versions?limit=1")
    assert [r["version"] for r in p1["versions"]] == [2] and p1["next"] == 2
    p2 = served.json(f"{WS}/versions?limit=1&after={p1['next']}")
    assert [r["version"] for r in p2["versions"]] == [1] and p2["next"] is None
    assert served.json(f"{WS}/tags") == {"workspace": "demo", "tags": {"rel-1": 1}}


def test_version_record_and_cache_control(served: Served) -> None:
    for v, n in (("1", 1), ("rel-1", 1), ("2", 2), ("latest", 2)):
        r = served.get(f"{WS}/versions/{v}")
        assert r.status == 200 and r.json()["version"] == n
        immutable = "immutable" in r.headers["cache-control"]
        assert immutable == (v != "latest"), (v, r.headers["cache-control"])
        for sub in ("/tree", "/archive?path=dir%2Fsub"):
            r = served.get(f"{WS}/versions/{v}{sub}")
            assert r.status == 200 and ("immutable" in r.headers["cache-control"]) == (v != "latest")
    # listings may change: always asked again
    for path in ("/v1/workspaces", f"{WS}/versions", f"{WS}/tags"):
        assert served.get(path).headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"{WS}/versions/9", 404, "not_found"),
        (f"{WS}/versions/no-such-tag", 404, "not_found"),
        (f"{WS}/versions/0", 400, "bad_request"),
        ("/v1/workspaces/.bad/versions", 400, "bad_request"),
        ("/v1/workspaces/nope/versions", 404, "not_found"),
        (f"{WS}/versions?limit=0", 400, "bad_request"),
        (f"{WS}/versions?limit=x", 400, "bad_request"),
        ("/v1/nothing", 404, "not_found"),
    ],
)
def test_errors_are_json(served: Served, path: str, status: int, code: str) -> None:
    r = served.get(path)
    assert r.status == status, r.body
    body = r.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]


def test_method_not_allowed(served: Served) -> None:
    r = served.get(file_url("demo", 1, b"small.txt"), method="POST")
    assert r.status == 405 and r.json()["error"] == "method_not_allowed"


# -- trees -------------------------------------------------------------------------------


def test_tree_root_attributes(served: Served) -> None:
    t = served.json(f"{WS}/versions/1/tree")
    by = {e["name"]: e for e in t["entries"]}
    src = served.sources[1]
    assert sorted(by) == sorted(os.listdir(src))
    assert by["small.txt"]["type"] == "file" and by["small.txt"]["size"] == 6
    assert by["small.txt"]["mtime_ns"] == 1_234_567_890_123_456_789
    assert by["setuid"]["mode"] == 0o4755
    assert by["link"]["type"] == "symlink" and by["link"]["target"] == "small.txt"
    assert by["abslink"]["target"] == "/etc/passwd"
    assert by["dir"]["type"] == "directory" and by["fifo"]["type"] == "fifo"
    assert by["null-dev"]["type"] == "char-device" and by["null-dev"]["rdev"] == os.makedev(1, 3)
    assert by["big.bin"]["nlink"] == 2
    # the etag a listing gives is the one the file has
    r = served.get(file_url("demo", 1, b"big.bin"), method="HEAD")
    assert r.headers["etag"] == by["big.bin"]["etag"]


def test_tree_pages(served: Served) -> None:
    names: list[str] = []
    after = None
    pages = 0
    while True:
        q = {"path": "many", "limit": "1000"} | ({"after": after} if after else {})
        t = served.json(f"{WS}/versions/1/tree?{urlencode(q)}")
        assert len(t["entries"]) <= 1000
        names += [e["name"] for e in t["entries"]]
        pages += 1
        after = t["next"]
        if after is None:
            break
    assert pages == 3 and names == sorted(f"f{i:05d}" for i in range(MANY))
    # small pages give the same listing
    small, after = [], None
    for _ in range(10):
        q = {"path": "many", "limit": "300"} | ({"after": after} if after else {})
        t = served.json(f"{WS}/versions/1/tree?{urlencode(q)}")
        small += [e["name"] for e in t["entries"]]
        after = t["next"]
        if after is None:
            break
    assert small[:3000] == names[: len(small)] and len(small) == 3000 or small == names[:3000]


def test_tree_errors(served: Served) -> None:
    assert served.get(f"{WS}/versions/1/tree?path=small.txt").json()["error"] == "not_a_directory"
    r = served.get(f"{WS}/versions/1/tree?path=dirlink")
    assert r.status == 409 and r.json()["error"] == "symlink" and r.json()["target"] == "dir"
    assert served.get(f"{WS}/versions/1/tree?path=nope").status == 404
    assert served.get(f"{WS}/versions/1/tree?path=dir/../..").status == 400
    assert served.get(f"{WS}/versions/1/tree?after=%%%").status == 400


def test_tree_weird_names_round_trip(served: Served) -> None:
    t = served.json(f"{WS}/versions/1/tree?path=dir")
    pct = {e["name_pct"] for e in t["entries"] if e["type"] == "file"}
    for name in WEIRD:
        assert quote_from_bytes(name, safe="") in pct
    for e in t["entries"]:
        if e["type"] != "file":
            continue
        # name_pct goes into a URL as it is
        r = served.get(f"{WS}/versions/1/files/dir/{e['name_pct']}")
        assert r.status == 200
        from urllib.parse import unquote_to_bytes

        assert r.body == read(os.fsencode(served.sources[1]) + b"/dir/" + unquote_to_bytes(e["name_pct"]))


# -- files ---------------------------------------------------------------------------------

FILES = [b"small.txt", b"mid.bin", b"big.bin", b"exact.bin", b"empty", b"sparse", b"setuid", b"dir/sub/leaf",
         b"dir/hard-big", b"hard-mid"] + [b"dir/" + n for n in WEIRD]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.decode(errors="replace"))
def test_file_bytes(served: Served, path: bytes) -> None:
    want = read(os.fsencode(served.sources[1]) + b"/" + path)
    r = served.get(file_url("demo", 1, path))
    assert r.status == 200 and not r.incomplete
    assert r.body == want
    assert r.headers["content-length"] == str(len(want))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["content-type"] == "application/octet-stream"
    etag = r.headers["etag"]
    assert etag.startswith('"') and len(etag) == 66
    # the same content in another version has the same ETag; latest is not immutable
    r2 = served.get(file_url("demo", "latest", path))
    if path != b"small.txt" and path != b"hard-mid" and path != b"mid.bin":
        assert r2.status == 200 and r2.headers["etag"] == etag and r2.body == want
        assert r2.headers["cache-control"] == "no-cache"


def test_changed_file_between_versions(served: Served) -> None:
    a, b = served.get(file_url("demo", 1, b"small.txt")), served.get(file_url("demo", 2, b"small.txt"))
    assert (a.body, b.body) == (b"hello\n", b"changed\n") and a.headers["etag"] != b.headers["etag"]
    assert served.get(file_url("demo", 2, b"mid.bin")).status == 404
    assert served.get(file_url("demo", "rel-1", b"mid.bin")).status == 200


def test_head(served: Served) -> None:
    r = served.get(file_url("demo", 1, b"big.bin"), method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == str(5 * 64 * 1024 + 1234)
    r = served.get(file_url("demo", 1, b"big.bin"), {"Range": "bytes=10-19"}, method="HEAD")
    assert r.status == 206 and r.headers["content-length"] == "10" and r.body == b""


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-20", 10, 21),
        ("bytes=65530-65545", 65530, 65546),  # across a chunk boundary
        ("bytes=100000-", 100000, None),
        ("bytes=-5", -5, None),
        ("bytes=-999999999", 0, None),  # a suffix longer than the file: all of it
        ("bytes=300000-999999999", 300000, None),  # a last position past the end: clamped
        ("bytes=0-327679", 0, 327680),  # exactly five chunks
    ],
)
def test_range(served: Served, spec: str, start: int, end: int | None) -> None:
    want = read(served.sources[1] / "big.bin")
    r = served.get(file_url("demo", 1, b"big.bin"), {"Range": spec})
    assert r.status == 206
    part = want[start:end] if start >= 0 else want[start:]
    assert r.body == part
    first = len(want) + start if start < 0 else start
    assert r.headers["content-range"] == f"bytes {first}-{first + len(part) - 1}/{len(want)}"
    assert r.headers["content-length"] == str(len(part))


def test_range_in_sparse_and_small(served: Served) -> None:
    sparse = read(served.sources[1] / "sparse")
    r = served.get(file_url("demo", 1, b"sparse"), {"Range": f"bytes={7 * 65536 + 90}-{7 * 65536 + 120}"})
    assert r.status == 206 and r.body == sparse[7 * 65536 + 90 : 7 * 65536 + 121] and b"island" in r.body
    r = served.get(file_url("demo", 1, b"small.txt"), {"Range": "bytes=1-3"})
    assert r.status == 206 and r.body == b"ell"


@pytest.mark.parametrize("spec", ["bytes=400000-", "bytes=400000-400001", "bytes=-0"])
def test_range_unsatisfiable(served: Served, spec: str) -> None:
    size = 5 * 65536 + 1234
    r = served.get(file_url("demo", 1, b"big.bin"), {"Range": spec})
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"] == "range_not_satisfiable"


def test_range_on_empty_file(served: Served) -> None:
    r = served.get(file_url("demo", 1, b"empty"), {"Range": "bytes=0-"})
    assert r.status == 416 and r.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=x-y", "bytes="])
def test_range_ignored(served: Served, spec: str) -> None:
    """Several ranges, another unit or a malformed value: the whole file (200), as RFC 9110 allows."""
    r = served.get(file_url("demo", 1, b"mid.bin"), {"Range": spec})
    assert r.status == 200 and r.body == read(served.sources[1] / "mid.bin")


def test_conditionals(served: Served) -> None:
    url = file_url("demo", 1, b"big.bin")
    etag = served.get(url, method="HEAD").headers["etag"]
    r = served.get(url, {"If-None-Match": etag})
    assert r.status == 304 and r.body == b"" and r.headers["etag"] == etag
    assert served.get(url, {"If-None-Match": f'"other", W/{etag}'}).status == 304
    assert served.get(url, {"If-None-Match": "*"}).status == 304
    assert served.get(url, {"If-None-Match": '"other"'}).status == 200
    # If-Range: the range only if the ETag matches (strongly); a date never does
    r = served.get(url, {"Range": "bytes=0-9", "If-Range": etag})
    assert r.status == 206 and len(r.body) == 10
    for other in ('"0000"', f"W/{etag}", "Sun, 06 Dec 2026 12:00:00 GMT"):
        r = served.get(url, {"Range": "bytes=0-9", "If-Range": other})
        assert r.status == 200 and len(r.body) == 5 * 65536 + 1234


def test_symlinks_not_followed(served: Served) -> None:
    for path, target in ((b"link", "small.txt"), (b"abslink", "/etc/passwd"), (b"dirlink/sub/leaf", "dir")):
        r = served.get(file_url("demo", 1, path))
        assert r.status == 409, (path, r.body)
        body = r.json()
        assert body["error"] == "symlink" and body["target"] == target
        assert r.headers["x-wsfs-symlink-target"] == quote_from_bytes(target.encode(), safe="/")
        assert "passwd" not in r.body.decode() or body["target"] == "/etc/passwd"


@pytest.mark.parametrize(
    "raw",
    ["dir/../small.txt", "../x", "./small.txt", "dir/%2E%2E/small.txt", "a%2Fb", "small%00.txt", "dir//sub/leaf",
     "%2Fetc/passwd"],
)
def test_bad_paths_refused(served: Served, raw: str) -> None:
    r = served.get(f"{WS}/versions/1/files/{raw}")
    assert r.status == 400, (raw, r.status, r.body)
    assert r.json()["error"] == "bad_request"


def test_absolute_path_is_not_the_host(served: Served) -> None:
    # a leading slash after files/ is an empty segment: refused, never the host's /etc/passwd
    r = served.get(f"{WS}/versions/1/files//etc/passwd")
    assert r.status == 400


def test_not_a_file(served: Served) -> None:
    for path in (b"dir", b"fifo", b"null-dev", b""):
        r = served.get(file_url("demo", 1, path))
        assert r.status == 409 and r.json()["error"] == "not_a_file"
    assert served.get(file_url("demo", 1, b"small.txt/x")).status == 404
    assert served.get(file_url("demo", 1, b"nope")).status == 404


# -- archives ------------------------------------------------------------------------------


def _tar_members(body: bytes) -> dict[bytes, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(body), mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
        for ti in tf:
            data = tf.extractfile(ti).read() if ti.isreg() else None  # type: ignore[union-attr]
            out[os.fsencode(ti.name.rstrip("/"))] = (ti, data)
    return out


def _walk(root: Path) -> dict[bytes, os.stat_result]:
    out = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, base)] = os.lstat(p)
    return out


def test_archive_equals_tree(served: Served) -> None:
    r = served.get(f"{WS}/versions/1/archive")
    assert r.status == 200 and r.headers["content-type"] == "application/x-tar" and not r.incomplete
    assert "immutable" in r.headers["cache-control"]
    members = _tar_members(r.body)
    src = served.sources[1]
    tree = _walk(src)
    assert set(members) == set(tree)
    links = 0
    for path, st in tree.items():
        ti, data = members[path]
        assert ti.mode == stat.S_IMODE(st.st_mode), path
        assert ti.mtime == pytest.approx(st.st_mtime_ns / 1e9, abs=1e-6), path
        assert (ti.uid, ti.gid) == (st.st_uid, st.st_gid)
        full = os.fsencode(src) + b"/" + path
        if stat.S_ISLNK(st.st_mode):
            assert ti.issym() and os.fsencode(ti.linkname) == os.readlink(full)
        elif stat.S_ISDIR(st.st_mode):
            assert ti.isdir()
        elif stat.S_ISFIFO(st.st_mode):
            assert ti.isfifo()
        elif stat.S_ISCHR(st.st_mode):
            assert ti.ischr() and (ti.devmajor, ti.devminor) == (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif ti.islnk():
            links += 1
            target = os.fsencode(ti.linkname)
            assert os.path.samestat(os.lstat(os.fsencode(src) + b"/" + target), st)
        else:
            assert ti.isreg() and data == read(full), path
    assert links == 2  # dir/hard-big and hard-mid (or their first names) are links
    # nanoseconds survive in the PAX header, and so do user xattrs
    assert members[b"small.txt"][0].pax_headers["mtime"] == "1234567890.123456789"
    assert members[b"small.txt"][0].pax_headers["SCHILY.xattr.user.comment"] == "hello"
    binary = members[b"dir"][0].pax_headers["SCHILY.xattr.user.binary"]
    assert binary.encode("utf-8", "surrogateescape") == bytes(range(256))


def test_archive_subtree(served: Served) -> None:
    r = served.get(f"{WS}/versions/1/archive?path=dir%2Fsub")
    members = _tar_members(r.body)
    assert set(members) == {b"dir/sub", b"dir/sub/leaf"}
    assert members[b"dir/sub/leaf"][1] == b"leaf"
    r = served.get(f"{WS}/versions/1/archive?path=dirlink")
    assert r.status == 409 and r.json()["error"] == "symlink"
    assert served.get(f"{WS}/versions/1/archive?path=nope").status == 404


# -- diff, openapi ------------------------------------------------------------------------


def test_diff(served: Served) -> None:
    d = served.json(f"{WS}/diff?from=1&to=2")
    assert (d["from"], d["to"]) == (1, 2)
    changes = {(c["status"], c["path"]) for c in d["changes"]}
    assert changes == {("M", "small.txt"), ("D", "mid.bin"), ("D", "hard-mid"), ("A", "new.txt")} or \
        {("M", "small.txt"), ("A", "new.txt")} <= changes
    assert ("D", "mid.bin") in changes
    # defaults: to = latest, from = its parent
    assert served.json(f"{WS}/diff")["changes"] == d["changes"]
    assert served.json(f"{WS}/diff?from=rel-1&to=1")["changes"] == []
    assert served.get(f"{WS}/diff?to=1").status == 400  # version 1 has no parent


def test_openapi(served: Served) -> None:
    from openapi_spec_validator import validate

    r = served.get("/openapi.json")
    doc = json.loads(r.body)
    validate(doc)
    paths = set(doc["paths"])
    for p in ("/v1/workspaces", "/v1/workspaces/{ws}/versions", "/v1/workspaces/{ws}/versions/{v}",
              "/v1/workspaces/{ws}/tags", "/v1/workspaces/{ws}/versions/{v}/tree",
              "/v1/workspaces/{ws}/versions/{v}/files/{path}", "/v1/workspaces/{ws}/versions/{v}/archive",
              "/v1/workspaces/{ws}/diff"):
        assert p in paths
    assert set(doc["paths"]["/v1/workspaces/{ws}/versions/{v}/files/{path}"]) >= {"get", "head"}
    # every route of the application is described
    from wsfs.service.app import create_app

    app = create_app(served.backend).app
    routes = {getattr(r, "path", "").replace(":path", "") for r in app.routes} - {"/", "/openapi.json", "/metrics"}
    assert routes <= paths


# -- concurrency and clients that leave ----------------------------------------------------


def test_concurrent_range_readers(served: Served) -> None:
    """50 clients at once, 10 random ranges each over keep-alive connections: every body exact."""
    import http.client
    import random
    from concurrent.futures import ThreadPoolExecutor

    want = read(served.sources[1] / "big.bin")
    url = file_url("demo", 1, b"big.bin")

    def client(seed: int) -> int:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        try:
            for _ in range(10):
                a = rnd.randrange(len(want) - 1)
                b = min(len(want) - 1, a + rnd.randrange(1, 200_000))
                conn.request("GET", url, headers={"Range": f"bytes={a}-{b}"})
                r = conn.getresponse()
                assert r.status == 206 and r.read() == want[a : b + 1]
        finally:
            conn.close()
        return 10

    with ThreadPoolExecutor(50) as pool:
        assert sum(pool.map(client, range(50))) == 500


def test_clients_that_leave_free_their_resources(served: Served) -> None:
    """Archives and downloads dropped after their first bytes: the server keeps serving (no slot or thread leaks)."""
    import http.client
    import time

    def slot_free_within(seconds: float) -> bool:
        """Whether an archive slot comes free within *seconds* (a dropped client's slot is freed once the
        server notices it left, which takes longer on a loaded machine than the 5 s a request waits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if served.backend.archives.acquire(blocking=False):
                served.backend.archives.release()
                return True
            time.sleep(0.05)
        return False

    for path in [f"{WS}/versions/1/archive"] * 6 + [file_url("demo", 1, b"sparse")] * 6:
        assert slot_free_within(10), "an archive slot stayed taken by a client that left"
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            assert r.status == 200
            r.read(1000)
        finally:
            conn.close()  # gone before the end
    # more archives than the server builds at once (4) still succeed one after another
    for _ in range(6):
        assert slot_free_within(10), "an archive slot stayed taken by a client that left"
        r = served.get(f"{WS}/versions/1/archive?path=dir%2Fsub")
        assert r.status == 200 and not r.incomplete


def test_metrics(served: Served) -> None:
    """``/metrics`` parses with prometheus_client's own parser and counts by route template."""
    from prometheus_client.parser import text_string_to_metric_families

    served.get(file_url("demo", 1, b"small.txt"))
    served.get(file_url("demo", 1, b"nope"))
    r = served.get("/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    files = "/v1/workspaces/{ws}/versions/{v}/files/{path:path}"
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in fams["wsfs_http_requests"].samples
              if s.name == "wsfs_http_requests_total"}
    assert counts[(files, "200")] >= 1 and counts[(files, "404")] >= 1
    assert "small.txt" not in r.body.decode()  # templates, never names
    assert "wsfs_http_request_duration_seconds" in fams and "wsfs_http_response_bytes" in fams
    assert any(name.startswith("wsfs_cache_") for name in fams)
    assert "wsfs_store_requests" in fams

#!/usr/bin/env bash
# Builds and installs pyfuse3 with wsfs' two small patches (third_party/pyfuse3/):
# - inode-as-handle: read() and readdir() get the inode when the kernel sends
#   no file handle, so the daemon can answer OPEN/OPENDIR with ENOSYS and the
#   kernel stops sending OPEN, RELEASE, OPENDIR and RELEASEDIR (4 of the ~5
#   round trips of reading a small file) and caches directory listings;
# - read-before-wait: the FUSE fd is read before waiting for it to become
#   readable, so queued requests skip trio's epoll round (parallel clients);
# - spin-before-wait: with nothing queued, the fd is polled for up to 50 us
#   before that wait (one synchronous client: rm, tar, cp, git).
# See third_party/pyfuse3/README.md and docs/daemon.md.
#
# Idempotent: does nothing when the patched build is already installed.  When
# the build fails (no compiler, no network) it warns and leaves the stock
# pyfuse3 in place: wsfs then keeps answering OPEN/OPENDIR itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=3.5.0
PATCHES=("$PWD/third_party/pyfuse3/inode-as-handle.patch" "$PWD/third_party/pyfuse3/read-before-wait.patch"
         "$PWD/third_party/pyfuse3/spin-before-wait.patch")
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if "$PY" -c 'import pyfuse3, sys; sys.exit(0 if getattr(pyfuse3, "WSFS_PATCH", 0) >= 3 else 1)' 2>/dev/null; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if "$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "pyfuse3==$VERSION" \
    && tar -xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work" \
    && (cd "$work/pyfuse3-$VERSION" && for p in "${PATCHES[@]}"; do git apply -p1 "$p" || exit 1; done) \
    && "$PY" -m pip install -q --force-reinstall --no-deps "$work/pyfuse3-$VERSION"; then
    echo "pyfuse3 $VERSION installed with wsfs' patches (inode-as-handle, read-before-wait, spin-before-wait)"
else
    echo "warning: could not build the patched pyfuse3; using the stock one (one more round trip per open)" >&2
fi

#!/usr/bin/env bash
# Installs everything wsfs and its test suite need on a Debian machine, as root:
# FUSE 3 (kernel helper + headers for pyfuse3), small tools the tests use, and
# the package itself (editable) with its test extras (moto, SeaweedFS' weed, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for tool in fusermount3 pkg-config zstd setfattr rsync; do
    command -v "$tool" >/dev/null 2>&1 || need_apt=1
done
[ -e /usr/include/fuse3/fuse.h ] || need_apt=1
if [ "$need_apt" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 libfuse3-dev pkg-config psmisc attr zstd rsync >/dev/null
fi
[ -e /dev/fuse ] || echo "warning: /dev/fuse is missing; mounting will not work here" >&2

PY=${PYTHON:-python3}
# Debian's own python refuses system-wide pip installs; this machine's python does not.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# pyfuse3 with wsfs' two-line patch (no OPEN/OPENDIR round trips); falls back to the stock one.
PYTHON="$PY" bash scripts/install_pyfuse3.sh
"$PY" -m pip install -q -e '.[test]'
# Byte-compiled now, as a regular install is: an editable one is not, and where PYTHONDONTWRITEBYTECODE
# is set every wsfs process (each mount, each CLI command) would compile every module again (~0.1 s).
"$PY" -m compileall -q src
"$PY" -c 'import wsfs, pyfuse3, apsw, blake3, zstandard, boto3, starlette, uvicorn'
echo "wsfs installed: $("$PY" -m wsfs --version)"

# mount(8) finds helpers in /sbin only (never $PATH): link mount.wsfs there, under both
# names (mount -t wsfs and mount -t fuse.wsfs), and wsfs where systemd/wsfs@.service expects it.
SCRIPTS=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for name in mount.wsfs mount.fuse.wsfs; do ln -sfn "$SCRIPTS/mount.wsfs" "/sbin/$name"; done
[ "$(readlink -f /usr/local/bin/wsfs 2>/dev/null)" = "$(readlink -f "$SCRIPTS/wsfs")" ] \
    || ln -sfn "$SCRIPTS/wsfs" /usr/local/bin/wsfs
echo "mount helper: /sbin/mount.wsfs -> $SCRIPTS/mount.wsfs"

# The POSIX suites the read-write mount tests run (pjdfstest, fsx, fsstress), built from the
# sources beside the repository (scripts/build_posix_suites.sh says where it looks).  Without
# them those tests fail, loudly, unless WSFS_SKIP_POSIX_SUITES=1.
if suites=$(bash scripts/build_posix_suites.sh); then
    echo "POSIX suites: $suites"
else
    echo "warning: the POSIX suites could not be built; tests/mount/test_posix_suites.py will fail" >&2
fi

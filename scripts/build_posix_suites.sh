#!/usr/bin/env bash
# Builds the POSIX test suites the read-write mount tests run (pjdfstest, fsx, fsstress;
# tests/mount/test_posix_suites.py) and prints the directory they are in.
#
# Sources: the build script of ../shared/tools/posix-suites (unmodified upstream snapshots, kept
# outside this repository), found at $WSFS_POSIX_SUITES_SRC, <repo>/../shared/tools/posix-suites
# or /work/shared/tools/posix-suites.  Destination: $WSFS_POSIX_SUITES if set, else
# ${XDG_CACHE_HOME:-~/.cache}/wsfs-test/posix-suites.  Idempotent (~35 s the first time; the
# build installs the Debian packages it needs, so as root).  Exit 1 if no sources are found.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${WSFS_POSIX_SUITES:-${XDG_CACHE_HOME:-$HOME/.cache}/wsfs-test/posix-suites}
src=""
for d in "${WSFS_POSIX_SUITES_SRC:-}" "$repo/../shared/tools/posix-suites" /work/shared/tools/posix-suites; do
    if [ -n "$d" ] && [ -f "$d/build.sh" ]; then src=$d; break; fi
done
if [ -z "$src" ]; then
    echo "no POSIX suite sources (build.sh) in \$WSFS_POSIX_SUITES_SRC, $repo/../shared/tools/posix-suites" \
         "or /work/shared/tools/posix-suites" >&2
    exit 1
fi
bash "$src/build.sh" "$dest" >&2
echo "$dest"

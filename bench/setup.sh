#!/usr/bin/env bash
# Installs what bench/bench_mount.py compares wsfs with, where missing:
#   rclone, s3fs (s3fs-fuse), squashfuse + squashfs-tools, fuse3, zstd, node + npm  (apt-get, root)
#   restic, git (bench_versions.py)                                              (apt-get, root)
#   matplotlib (--plot), py-spy (--profile)                                    (pip, this python)
# Idempotent: a tool already on PATH is left alone (a NodeSource nodejs already ships npm, and
# Debian's npm package would conflict with it).  Usage, from the repository root, as root:
#   bash bench/setup.sh
set -euo pipefail

PYTHON=${PYTHON:-python}
missing=()
need() {  # need COMMAND PACKAGE: queue PACKAGE when COMMAND is not on PATH
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need rclone rclone
need s3fs s3fs
need squashfuse_ll squashfuse
need mksquashfs squashfs-tools
need fusermount3 fuse3
need zstd zstd
need restic restic
need git git
need node nodejs
need npm npm

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup.sh: missing ${missing[*]}; run as root to apt-get install them" >&2
        exit 1
    fi
    echo "setup.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "setup.sh: rclone, s3fs, squashfuse, squashfs-tools, fuse3, zstd, restic, git, node and npm already present"
fi

pip_missing=()
"$PYTHON" -c 'import matplotlib' 2>/dev/null || pip_missing+=(matplotlib)
command -v py-spy >/dev/null 2>&1 || pip_missing+=(py-spy)
if ((${#pip_missing[@]})); then
    echo "setup.sh: pip install ${pip_missing[*]}"
    "$PYTHON" -m pip install -q "${pip_missing[@]}"
fi

for tool in rclone s3fs squashfuse_ll mksquashfs restic git node npm; do
    printf '  %-14s %s\n' "$tool" "$(command -v "$tool" || echo MISSING)"
done

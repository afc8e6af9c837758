#!/bin/sh
# wsfs-entrypoint WORKSPACE[@V] MOUNTPOINT [-- COMMAND...]: mount (read-only), run COMMAND, unmount.
set -eu
ref=$1 mnt=$2; shift 2
[ "${1:-}" = "--" ] && shift
mkdir -p "$mnt"
wsfs mount "$ref" "$mnt"
trap 'wsfs umount "$mnt"' EXIT INT TERM
if [ "$#" -gt 0 ]; then "$@"; else sleep infinity; fi

#!/bin/bash
# Format 2 upload cost per edit on a local repository (issue 12). Usage: bench/format2_edits.sh TREE LABEL
# Prints one line per push: label, version, PUTs, bytes uploaded, seconds. Works in /var/tmp/f2m-LABEL.
set -e
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src"
T=$1; W=/var/tmp/f2m-$2; rm -rf $W; mkdir -p $W; cp -a $T $W/src
export WSFS_CACHE_DIR=$W/cache WSFS_REPO=$W/repo
python -m wsfs init -q
j() { python -m wsfs push --json "$W/src" "$1" | python -c "import json,sys; d=json.load(sys.stdin); print('$2', d['version'], 'put', d['store']['requests'].get('put',0), 'bytes_out', d['store']['bytes_out'], 's', d['seconds'])"; }
j demo initial
f=$(find $W/src -type f -size -100k | sort | sed -n '5000p'); echo "// edit" >> "$f"
j demo one-file
for f in $(find $W/src -type f -size -100k | sort | awk 'NR%100==0' | head -100); do echo "// edit" >> "$f"; done
j demo hundred-files
j demo unchanged
WSFS_CACHE_DIR=$W/cache2 j other second-ws
python -m wsfs diff demo@1 demo@2 | head -3
du -sb $W/repo

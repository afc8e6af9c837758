#!/bin/bash
# Format 2 upload cost per edit on a local repository (issue 12). Usage: bench/format2_edits.sh TREE LABEL
# Prints one line per push: label, version, PUTs, bytes uploaded, files not read (stat cache), seconds.
# Works in /var/tmp/f2m-LABEL.
set -e
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)/src"
T=$1; W=/var/tmp/f2m-$2; rm -rf $W; mkdir -p $W; cp -a $T $W/src
sleep 2.5  # the copies' ctimes leave the stat cache's racy window
export WSFS_CACHE_DIR=$W/cache WSFS_REPO=$W/repo
python -m wsfs init -q
j() { python -m wsfs push --json "$W/src" "$1" ${3:+"$3"} | python -c "import json,sys; d=json.load(sys.stdin); print('$2', d['version'], 'put', d['store']['requests'].get('put',0), 'bytes_out', d['store']['bytes_out'], 'files', d['stats']['files'], 'unread', d['stats']['unread_files'], 's', d['seconds'])"; }
j demo initial
f=$(find $W/src -type f -size -100k | sort | sed -n '5000p'); echo "// edit" >> "$f"
j demo one-file
for f in $(find $W/src -type f -size -100k | sort | awk 'NR%100==0' | head -100); do echo "// edit" >> "$f"; done
j demo hundred-files
sleep 2.5
j demo unchanged
j demo unchanged
j demo unchanged-rehash --rehash
WSFS_CACHE_DIR=$W/cache2 j other second-ws
python -m wsfs diff demo@1 demo@2 | head -3
du -sb $W/repo

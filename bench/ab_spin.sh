#!/usr/bin/env bash
# A/B of pyfuse3's spin before wait (third_party/pyfuse3/spin-before-wait.patch), as root, from the
# repository root, with the patched pyfuse3 installed (scripts/install_pyfuse3.sh):
#
#   bash bench/ab_spin.sh [ROUNDS] [TREE]    # log: bench/results-spin-ab.txt
#
# Each round, alternately with the poll off (WSFS_SPIN_NS=0, set through a sitecustomize in a temporary
# directory) and on (the build's 50 us), on a fresh read-write mount of a tiny version (local repository):
#   micro: cp -a of 12 packages of TREE (default: the generated 30k tree of bench_first_ls.py), sync -f,
#          1.5 s, rm -rf;
#   wf:    npm ci and python3 -m venv + pip install from bench_rw_workflows.py's inputs (run that once
#          first), 1.5 s, rm -rf of both.
# Prints seconds per step and the daemon's CPU during rm -rf (1/100 s); exits 0.
set -euo pipefail
ROUNDS=${1:-3}
TREE=${2:-/var/tmp/wsfs-first-ls-trees/tree-30000/node_modules}
INPUTS=/var/tmp/wsfs-bench-inputs
SRC=$PWD/src
WORK=$(mktemp -d /var/tmp/wsfs-ab-spin.XXXXXX)
MNT=
cleanup() { if [ -n "$MNT" ] && mountpoint -q "$MNT"; then fusermount3 -u -z "$MNT" || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir "$WORK/site"
cat > "$WORK/site/sitecustomize.py" <<'PY'
import os
if os.environ.get("WSFS_SPIN_NS"):
    try:
        import pyfuse3
    except ImportError:  # (a venv without it)
        pass
    else:
        pyfuse3.WSFS_SPIN_NS = int(os.environ["WSFS_SPIN_NS"])
PY

mount_fresh() {  # $1: side -> B, PID
    B=$WORK/$1; rm -rf "$B"; mkdir -p "$B/src/sub" "$B/mnt"; echo hello > "$B/src/sub/hello"
    export WSFS_REPO=$B/repo WSFS_CACHE_DIR=$B/cache
    python3 -m wsfs init >/dev/null; python3 -m wsfs push "$B/src" bench >/dev/null
    python3 -m wsfs mount --rw -o "state_dir=$B/state,noprofile" bench "$B/mnt"; MNT=$B/mnt
    PID=$(python3 -m wsfs stats --json "$B/mnt" | python3 -c "import json,sys; print(json.load(sys.stdin)['pid'])")
}
cpu() { awk '{print $14+$15}' "/proc/$PID/stat"; }
now() { date +%s.%N; }
unmount() { python3 -m wsfs umount "$MNT"; MNT=; rm -rf "$B"; }

for r in $(seq "$ROUNDS"); do
    for side in wait spin; do
        if [ $side = wait ]; then export WSFS_SPIN_NS=0 PYTHONPATH=$WORK/site:$SRC; else unset WSFS_SPIN_NS; export PYTHONPATH=$SRC; fi
        sync; sleep 3
        mount_fresh $side
        t0=$(now); for d in $(ls "$TREE" | head -12); do cp -a "$TREE/$d" "$B/mnt/"; done; t1=$(now)
        n=$(find "$B/mnt" | wc -l); sync -f "$B/mnt"; sleep 1.5
        a=$(cpu); t2=$(now); rm -rf "$B"/mnt/*; t3=$(now); b=$(cpu)
        echo "$side micro entries=$n cp=$(echo "$t1-$t0" | bc) rm=$(echo "$t3-$t2" | bc) rm_cpu_ticks=$((b - a))"
        unmount
        sync; sleep 3
        mount_fresh $side
        mkdir "$B/mnt/npm"; cp "$INPUTS"/npm-proj/package*.json "$B/mnt/npm/"
        t0=$(now); (cd "$B/mnt/npm" && npm ci --offline --cache "$INPUTS/npm-cache" --no-audit --no-fund >/dev/null 2>&1); t1=$(now)
        (cd "$B/mnt" && python3 -m venv v && v/bin/pip install -q --no-index --no-cache-dir --disable-pip-version-check \
            --find-links "$INPUTS/wheels" requests rich attrs six idna urllib3 certifi charset-normalizer pygments \
            markdown-it-py mdurl 2>/dev/null); t2=$(now)
        sleep 1.5; a=$(cpu); t3=$(now); rm -rf "$B/mnt/npm" "$B/mnt/v"; t4=$(now); b=$(cpu)
        echo "$side wf npm=$(echo "$t1-$t0" | bc) pip=$(echo "$t2-$t1" | bc) rm=$(echo "$t4-$t3" | bc) rm_cpu_ticks=$((b - a))"
        unmount
    done
done

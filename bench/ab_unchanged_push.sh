#!/bin/bash
# Unchanged push, A/B between two checkouts: wall time of `wsfs push` of a tree that was pushed before
# (stat cache warm, page cache warm), into a local repository of each side's own under /var/tmp.
#
#   bash bench/ab_unchanged_push.sh TREE LABEL ROUNDS BASE_SRC NEW_SRC
#   e.g. bash bench/ab_unchanged_push.sh /var/tmp/npm30k/node_modules npm 6 /work/wt-base/src /work/main/src
#
# Per side: init, a first push, then (after the stat cache's 2 s racy window) one unchanged push that
# writes what later pushes reuse; then ROUNDS timed unchanged pushes per side, alternating, each round
# with a `du -s` of the tree for reference (the machine's speed).  Prints one line per push and the
# medians; exits 0.
set -u
T=$1; L=$2; R=${3:-5}; BASE=${4:?BASE_SRC}; NEW=${5:?NEW_SRC}
src_of() { if [ "$1" = base ]; then echo "$BASE"; else echo "$NEW"; fi; }
out=$(mktemp)
for side in base new; do
  d=/var/tmp/ab-$L-$side; rm -rf "$d"; mkdir -p "$d"
  PYTHONPATH=$(src_of $side) python3 -m wsfs -q init "$d/repo" >/dev/null
  PYTHONPATH=$(src_of $side) python3 -m wsfs -q --repo "$d/repo" --cache-dir "$d/cache" push "$T" demo
done
sleep 3
for side in base new; do
  d=/var/tmp/ab-$L-$side
  PYTHONPATH=$(src_of $side) python3 -m wsfs -q --repo "$d/repo" --cache-dir "$d/cache" push "$T" demo
done
for r in $(seq "$R"); do
  # the machine's speed this round: a C program's lstat of every entry (du), the floor of any walk
  s=$(date +%s.%N); du -s "$T" >/dev/null; e=$(date +%s.%N)
  printf "%s du round %d: %.3f s  (lstat of every entry, for reference)\n" "$L" "$r" "$(echo "$e - $s" | bc)"
  for side in base new; do
    d=/var/tmp/ab-$L-$side
    s=$(date +%s.%N)
    PYTHONPATH=$(src_of $side) python3 -m wsfs --repo "$d/repo" --cache-dir "$d/cache" push "$T" demo > "$out" 2>&1
    e=$(date +%s.%N)
    printf "%s %s round %d: %.3f s  (%s)\n" "$L" "$side" "$r" "$(echo "$e - $s" | bc)" "$(tail -1 "$out")"
  done
done | tee "$out.all"
python3 - "$out.all" <<'EOF'
import re, statistics, sys
d = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (base|new|du) round \d+: ([\d.]+) s", line)
    if m:
        d.setdefault(m[2], []).append(float(m[3]))
for side, v in d.items():
    print(f"{side}: median {statistics.median(v):.2f} s (min {min(v):.2f}, max {max(v):.2f}, {len(v)} pushes)")
EOF
rm -f "$out" "$out.all"
exit 0

#!/usr/bin/env bash
# Quick start: install wsfs, then use it on the embedded default repository
# (a local directory under ~/.local/share/wsfs; no S3 server needed).
# Pushes a sample tree, reads it back, makes a second version, and (where
# FUSE works) mounts it and looks inside, then mounts it read-write, edits it
# and commits the edits as a third version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

demo=$(mktemp -d /tmp/wsfs-demo.XXXXXX)
trap 'if mountpoint -q "$demo/mnt" 2>/dev/null; then python3 -m wsfs umount "$demo/mnt" || fusermount3 -u -z "$demo/mnt"; fi; rm -rf "$demo"' EXIT
ws="demo-$(date +%s)"
wsfs() { python3 -m wsfs "$@"; }  # works before the shell has seen the new console script
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== a sample tree: a small JavaScript project"
mkdir -p "$demo/src/node_modules/left-pad" "$demo/src/src"
printf '{"name": "demo", "version": "1.0.0"}\n' > "$demo/src/package.json"
printf 'module.exports = (s, n) => String(s).padStart(n);\n' > "$demo/src/node_modules/left-pad/index.js"
printf 'console.log(require("left-pad")("hi", 5));\n' > "$demo/src/src/main.js"
ln -s src/main.js "$demo/src/main"
head -c 20000000 /dev/urandom > "$demo/src/assets.bin"

repo="${XDG_DATA_HOME:-$HOME/.local/share}/wsfs/repo"
if [ -f "$repo/wsfs-repo.json" ] && grep -q '"format": 1' "$repo/wsfs-repo.json"; then
    echo "== the default repository was made by an older wsfs (format 1): converting it in place"
    say wsfs upgrade  # its versions stay readable; new ones are format 2
fi
say wsfs push -m "first version" "$demo/src" "$ws"
say wsfs ls -l "$ws"
say wsfs cat "$ws" node_modules/left-pad/index.js
echo 'console.log("changed");' > "$demo/src/src/main.js"
say wsfs push -m "second version" "$demo/src" "$ws"
say wsfs log "$ws"
say wsfs diff "$ws@1" "$ws@2"
say wsfs checkout "$ws@1" "$demo/checkout"
diff -r <(cd "$demo/checkout" && find . | sort) <(cd "$demo/src" && find . | sort) >/dev/null && echo "checkout of version 1 has every path of the tree"

if python3 -m wsfs mount --help >/dev/null 2>&1 && [ -e /dev/fuse ]; then
    mkdir "$demo/mnt"
    say wsfs mount "$ws@1" "$demo/mnt"
    say ls -l "$demo/mnt"
    say cat "$demo/mnt/src/main.js"
    say cmp "$demo/mnt/assets.bin" "$demo/src/assets.bin"
    echo "assets.bin read through the mount is identical"
    say wsfs stats "$demo/mnt"
    say wsfs umount "$demo/mnt"

    echo "== read-write: edit the latest version in place, then commit the edits as version 3"
    say wsfs mount --rw -o state_dir="$demo/state" "$ws" "$demo/mnt"
    echo 'console.log("edited in the mount");' > "$demo/mnt/src/main.js"
    mkdir "$demo/mnt/docs" && echo "# demo" > "$demo/mnt/docs/README.md"
    say wsfs status "$demo/mnt"
    say wsfs commit -m "edited through the mount" "$demo/mnt"
    say wsfs umount "$demo/mnt"
    say wsfs diff "$ws@2" "$ws@3"
    say wsfs cat "$ws@3" src/main.js
fi
echo
echo "done: the repository is at $repo (workspace $ws)"

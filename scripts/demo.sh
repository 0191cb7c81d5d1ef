#!/usr/bin/env bash
# The main job: set up, start a server on an export inside the checkout, mount it, run
# ordinary shell tools on the mount, read a file through an application channel, print the
# channel statistics, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

export_dir="$PWD/export"
mnt="$(mktemp -d /tmp/ringfs-demo.XXXXXX)"
mkdir -p "$export_dir"
cleanup() { mountpoint -q "$mnt" && ringfs umount "$mnt"; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT

echo "== ringfs up $export_dir $mnt"
ringfs up "$export_dir" "$mnt"
grep " $mnt " /proc/mounts

echo "== shell tools on the mount"
set -x
mkdir -p "$mnt/demo/src"
cp -r channel "$mnt/demo/src/"
ls -la "$mnt/demo/src/channel" | head -5
sha256sum channel/protocol/ring.py "$mnt/demo/src/channel/protocol/ring.py"
echo "hello from ringfs" > "$mnt/demo/hello.txt"
cat "$mnt/demo/hello.txt"
ln -sf hello.txt "$mnt/demo/link" && readlink "$mnt/demo/link"
tar -C "$mnt/demo" -cf /tmp/ringfs-demo.tar src && tar -tf /tmp/ringfs-demo.tar | wc -l
du -sh "$mnt/demo"
find "$mnt/demo" -type f | wc -l
df -h "$mnt"
set +x

echo "== an application channel of its own (no system call per read)"
python examples/direct_read.py "$mnt" demo/src/channel/protocol/ring.py
rm -rf "$mnt/demo"

echo "== ringfs stats $mnt"
ringfs stats "$mnt"

#!/usr/bin/env bash
# One set-up path for README and CI: Debian packages (only when missing), .venv, editable install.
# Idempotent; quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and the Python headers: the install compiles channel/protocol/_core.c.
debs=(fuse3 libfuse3-dev pkg-config fio git sqlite3 tar attr procps psmisc build-essential python3-dev)
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install ${missing[*]}" >&2; exit 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$py" -m venv .venv
fi
stamp=.venv/.ringfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
    || [ channel/protocol/_core.c -nt "$stamp" ]; then
    # The editable install compiles channel/protocol/_core.c next to its source; a compiler error fails
    # the set-up with the compiler's message (no fallback to the pure-Python sides).
    echo "setup: installing ringfs (editable, compiling channel/protocol/_core.c) with its test and bench extras"
    log=.venv/setup.log
    if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test,bench]'; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed" >&2
        exit 1
    fi
    touch "$stamp"
fi

# mount(8) runs /sbin/mount.fuse.<subtype> for `mount -t fuse.ringfs` and fstab lines of that
# type: point it at this checkout's helper (root only; nothing else is installed system-wide).
if [ "$(id -u)" -eq 0 ] && [ -d /sbin ]; then
    helper="$PWD/.venv/bin/mount.ringfs"
    if [ "$(readlink /sbin/mount.fuse.ringfs 2>/dev/null)" != "$helper" ]; then
        ln -sfn "$helper" /sbin/mount.fuse.ringfs
        echo "setup: /sbin/mount.fuse.ringfs -> $helper"
    fi
fi

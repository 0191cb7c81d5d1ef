#!/usr/bin/env bash
# The protocol fuzz tests against an AddressSanitizer build of the compiled core.
#
# Copies the Python packages and tests to a scratch directory, compiles channel/protocol/_core.c there
# with -fsanitize=address (same -Wall -Wextra -Werror), and runs the fuzz, protocol, ring and
# differential tests with libasan preloaded into the test process and the server processes it
# starts (the interpreter itself is not instrumented; the extension is). Any ASan report makes
# the process abort, which fails the tests; reports are also kept under $ASAN_LOGS.
#     bash scripts/asan_check.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py="$root/.venv/bin/python"
work=$(mktemp -d /tmp/ringfs-asan.XXXXXX)
logs=${ASAN_LOGS:-$work.logs}
mkdir -p "$logs"
trap 'rm -rf "$work"' EXIT
cp -r channel backend_server fusefront tests pyproject.toml "$work"/
rm -f "$work"/channel/protocol/_core*.so
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -shared -fPIC -std=gnu11 -O1 -g -fno-omit-frame-pointer -fsanitize=address \
    -Wall -Wextra -Werror -I"$inc" channel/protocol/_core.c -o "$work/channel/protocol/_core$suffix"
libasan=$(gcc -print-file-name=libasan.so)
export LD_PRELOAD="$libasan" PYTHONPATH="$work"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$logs/asan"
cd "$work"
# The sanitizer copy is the one imported, and the ASan runtime is in the process.
"$py" - "$work" <<'PY'
import sys
import channel.protocol._core as core
import channel.protocol.sides as sides
assert core.__file__.startswith(sys.argv[1]), core.__file__
assert sides.IMPLEMENTATION == "compiled"
assert "libasan" in open("/proc/self/maps").read(), "libasan is not loaded"
print(f"asan_check: {core.__file__} (ASan runtime loaded)")
PY
status=0
"$py" -m pytest -q -p no:cacheprovider tests/channel/test_fuzz_channel.py tests/protocol/test_protocol.py \
    tests/protocol/test_ring.py tests/protocol/test_core_differential.py "$@" || status=$?
if compgen -G "$logs/asan*" >/dev/null; then
    echo "asan_check: AddressSanitizer reports in $logs:" >&2
    cat "$logs"/asan* >&2
    exit 1
fi
echo "asan_check: no AddressSanitizer reports (pytest status $status)"
exit "$status"

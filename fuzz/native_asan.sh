#!/bin/sh
# The native accelerator (parsers/_speedups.c) under AddressSanitizer + UndefinedBehaviorSanitizer,
# once, from a script (issue 19): builds the extension with -fsanitize=address,undefined into a
# scratch copy of parsers/, preloads libasan/libubsan into the (uninstrumented) interpreter, then
# runs tests/test_native.py (vectors, hostile corpus, benchmark traffic, hypothesis, the whole
# stage) and RUNS random mutations through the fuzz target `native` (native vs Python, slot by
# slot) against that build.  Any ASan/UBSan report aborts with a non-zero exit.
#
#   sh fuzz/native_asan.sh [RUNS]        # default 200000; from the repository root
set -eu
RUNS=${1:-200000}
PY=${PY:-.venv/bin/python}
T=$(mktemp -d /tmp/relay-asan.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir "$T/parsers"
cp parsers/*.py "$T/parsers/"
INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
    -shared -fPIC -I "$INC" -o "$T/parsers/_speedups$EXT" parsers/_speedups.c
echo "native_asan: built $T/parsers/_speedups$EXT with ASan + UBSan"
cat > "$T/run.py" <<PYEOF
import random, sys, time
sys.path.insert(0, "$T")
import parsers, parsers._speedups as sp
assert parsers.__file__.startswith("$T") and sp.__file__.startswith("$T"), (parsers.__file__, sp.__file__)
print("native_asan: parsers from", parsers.__file__, "extension", sp.__file__, flush=True)
import pytest
rc = pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_native.py"])
if rc:
    sys.exit(f"native_asan: tests/test_native.py failed under the sanitizers (exit {rc})")
from fuzz.run import mutate
from fuzz.targets import TARGETS, seeds_for
t = TARGETS["native"]
seeds = seeds_for(t)
rng = random.Random(19)
t0 = time.monotonic()
for i in range($RUNS):
    t.run(mutate(rng, seeds, 4096))
    if i and i % 50000 == 0:
        print(f"native_asan: {i:,} mutated inputs", flush=True)
print(f"native_asan: {$RUNS:,} mutated inputs through the native target in {time.monotonic() - t0:.0f} s: "
      "no difference, no sanitizer report")
PYEOF
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$PY" "$T/run.py"
echo "native_asan: clean"

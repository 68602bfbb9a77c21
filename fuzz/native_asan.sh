#!/bin/sh
# The native accelerator (parsers/_speedups.c, relay/_recvmmsg.c) under AddressSanitizer and
# UndefinedBehaviorSanitizer, once, from a script (issue 19): builds both extensions with
# -fsanitize=address,undefined into a scratch copy of parsers/ and relay/, preloads
# libasan/libubsan into the (uninstrumented) interpreter, then runs tests/test_native.py
# (vectors, hostile corpus, benchmark traffic, hypothesis, normaliser, LEEF, CEF, deframing, the whole
# stage), the UDP source's tests (recvmmsg against recvfrom) and RUNS random mutations through
# the fuzz target `native` (native vs Python) against that build.  Any ASan/UBSan report aborts with a non-zero exit.
#
#   sh fuzz/native_asan.sh [RUNS]        # default 200000; from the repository root
set -eu
RUNS=${1:-200000}
PY=${PY:-.venv/bin/python}
T=$(mktemp -d /tmp/relay-asan.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir "$T/parsers"
cp parsers/*.py "$T/parsers/"
cp -r relay "$T/relay"
find "$T/relay" -name '*.so' -delete
INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
    -shared -fPIC -I "$INC" -o "$T/parsers/_speedups$EXT" parsers/_speedups.c
gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
    -shared -fPIC -I "$INC" -o "$T/relay/_recvmmsg$EXT" relay/_recvmmsg.c
echo "native_asan: built $T/parsers/_speedups$EXT and $T/relay/_recvmmsg$EXT with ASan + UBSan"
cat > "$T/run.py" <<PYEOF
import random, sys, time
sys.path.insert(0, "$T")
import parsers, parsers._speedups as sp, relay._recvmmsg as rm
assert parsers.__file__.startswith("$T") and sp.__file__.startswith("$T"), (parsers.__file__, sp.__file__)
assert rm.__file__.startswith("$T"), rm.__file__
print("native_asan: parsers from", parsers.__file__, "extension", sp.__file__, flush=True)
import pytest
# not the glibc malloc tuning tests: ASan brings its own allocator, which mallopt() cannot tune
# --capture=sys: a sanitizer writes its report to file descriptor 2 and aborts the process;
# pytest's default capture (of the descriptors) would swallow it with the process
rc = pytest.main(["-q", "--capture=sys", "-p", "no:cacheprovider", "tests/test_native.py", "tests/test_native_stage.py",
                  "-k", "not malloc_tune"]) or \
    pytest.main(["-q", "--capture=sys", "-p", "no:cacheprovider", "tests/test_sources.py", "-k", "udp"])
if rc:
    sys.exit(f"native_asan: the native tests failed under the sanitizers (exit {rc})")
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
    "$PY" "$T/run.py" || { rc=$?; echo "native_asan: FAILED (exit $rc; the sanitizer's report is above)"; exit 1; }
echo "native_asan: clean"

#!/bin/sh
# The C prototype built with AddressSanitizer + UBSan, then check_cext.py run against it
# (the interpreter is not instrumented: libasan is preloaded, leak detection off).
# Usage (from the repository root): sh bench/native_study/asan_check.sh
set -eu
PY=${PY:-.venv-study/bin/python}
OUT=$(mktemp -d)
INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -shared -fPIC -I "$INC" \
    -o "$OUT/fastpath$EXT" bench/native_study/cext/fastpath.c
cp bench/native_study/cext/fastpath_wrap.py "$OUT/"
cat > "$OUT/run.py" <<PYEOF
import runpy, sys
sys.argv = ["check_cext.py", "-n", "20000", "--mutants", "100000"]
sys.path.insert(0, "$OUT")
import fastpath
print("fastpath from", fastpath.__file__)
runpy.run_path("bench/native_study/check_cext.py", run_name="__main__")
PYEOF
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "$PY" "$OUT/run.py"

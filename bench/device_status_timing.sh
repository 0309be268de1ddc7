#!/usr/bin/env bash
# On a real NVIDIA machine: how long a whole `gpuwarden status --json` takes (a CLI process, start to
# end) beside `nvidia-smi -q -x` and `nvitop --once` (when nvitop is installed), through nvidia-smi
# and through NVML; 7 runs each, min / median / max in ms. Output: $OUT/status_timing.log (or stdout).
#
#     bash bench/device_status_timing.sh        # gpuwarden from src/, its dependencies installed
set -u
OUT=${OUT:-/tmp/gw-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/status_timing.log") 2>&1
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STATE=$(mktemp -d)
printf 'state_dir = "%s"\n' "$STATE" > "$STATE/smi.toml"
printf 'state_dir = "%s"\ngpu_source = "nvml"\n' "$STATE" > "$STATE/nvml.toml"

times() {  # label, command...: 7 runs, min / median / max wall ms
  local label=$1; shift
  if ! "$@" >/dev/null 2>&1; then echo "$label: not available ($*)"; return; fi
  local runs=()
  for _ in 1 2 3 4 5 6 7; do
    local start; start=$(date +%s%N); "$@" >/dev/null 2>&1; runs+=($(( ($(date +%s%N) - start) / 1000000 )))
  done
  printf '%s\n' "${runs[@]}" | sort -n | awk -v label="$label" '{v[NR]=$1} END {print label ": " v[1] " / " v[4] " / " v[7] " ms (min / median / max of 7)"}'
}

echo "== machine"; nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total --format=csv,noheader
$PY -c "import sys; print('python', sys.version.split()[0])"
echo "== whole processes, start to end"
times "python -c pass" $PY -c pass
times "nvidia-smi -q -x" nvidia-smi -q -x
times "gpuwarden status --json (nvidia-smi)" $PY -m gpuwarden --config "$STATE/smi.toml" status --json
times "gpuwarden status --json (NVML)" $PY -m gpuwarden --config "$STATE/nvml.toml" status --json
times "nvitop --once" $PY -m nvitop --once
echo "== where gpuwarden's time goes (imports, ms)"
$PY -X importtime -m gpuwarden --config "$STATE/smi.toml" status --json 2>&1 >/dev/null \
  | sort -t'|' -k2 -n -r | head -12

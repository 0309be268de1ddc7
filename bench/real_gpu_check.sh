#!/usr/bin/env bash
# A check on a real NVIDIA machine (needs python3 with torch and psutil; gpuwarden from src/).
# It compares gpuwarden with nvidia-smi on an idle GPU, with a foreign CUDA process, with a model that
# gpuwarden itself loads, and with a crash of that model. Output: $OUT/log (or stdout).
set -u
OUT=${OUT:-/tmp/gw-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1
STATE=$(mktemp -d); CONF=$STATE/gw.toml
cat > "$CONF" <<TOML
state_dir = "$STATE"
unload_timeout_seconds = 5
[[models]]
name = "torch-1g"
command = ["python3", "-c", "import torch,time,os; x=torch.empty(1024**3, dtype=torch.uint8, device='cuda'); print('devices', torch.cuda.device_count(), 'visible', os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(600)"]
startup_grace_seconds = 1
TOML
gw() { python3 -m gpuwarden --config "$CONF" "$@"; }
j() { python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ('total_gpus','mode','error')}), [(g['index'], g['memory_used_mib'], g['state'], g['model_name'], [(p['pid'], p['process_name'], p['user'], p['used_memory_mib'], p['foreign']) for p in g['process_info']]) for g in d['gpu_status'] if isinstance(g['index'], int)])"; }
echo "== driver"; nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total --format=csv
echo "== 1. idle"; gw status --json | j
echo "== timing: gpuwarden status (5 runs, wall ms)"
for i in 1 2 3 4 5; do s=$(date +%s%N); gw status --json >/dev/null; echo -n "$(( ($(date +%s%N)-s)/1000000 )) "; done; echo
for i in 1 2 3 4 5; do s=$(date +%s%N); nvidia-smi -q -x >/dev/null; echo -n "smi:$(( ($(date +%s%N)-s)/1000000 )) "; done; echo
echo "== 2. foreign CUDA process (2 GiB) appears"
python3 -c "import torch,time; x=torch.empty(2*1024**3, dtype=torch.uint8, device='cuda'); print('foreign ready', flush=True); time.sleep(600)" &
FOREIGN=$!; for i in $(seq 60); do nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -q . && break; sleep 0.5; done
echo "foreign pid (ours): $FOREIGN; nvidia-smi apps:"; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
gw status --json | j; gw status
echo "== 3. load onto the occupied GPU (must be refused)"; gw load torch-1g --gpus 0; echo "exit=$?"
kill $FOREIGN; wait $FOREIGN 2>/dev/null; sleep 2
echo "== 4. load onto the freed GPU"; gw load torch-1g --gpus 0; echo "exit=$?"
for i in $(seq 60); do nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -q . && break; sleep 0.5; done; sleep 1
gw status --json | j; gw models; tail -3 "$STATE"/logs/*.log
echo "== 5. second load onto the same GPU (must be refused)"; gw load torch-1g --gpus 0; echo "exit=$?"
echo "== 6. kill -9 the model process (as seen by nvidia-smi)"
MPID=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | head -1 | tr -d ' '); echo "nvidia-smi pid: $MPID"
kill -9 "$MPID"; s=$(date +%s%N)
for i in $(seq 50); do gw models | grep -q failed && break; sleep 0.2; done
echo "failed noticed after $(( ($(date +%s%N)-s)/1000000 )) ms"; gw models; gw status --json | j
echo "== 7. load + unload frees the memory"
gw load torch-1g --gpus 0; sleep 8; gw status --json | j
s=$(date +%s%N); gw unload torch-1g; echo "unload took $(( ($(date +%s%N)-s)/1000000 )) ms"; sleep 1; gw status --json | j
nvidia-smi --query-gpu=memory.used --format=csv,noheader
echo "== done"

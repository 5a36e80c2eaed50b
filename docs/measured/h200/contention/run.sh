#!/bin/bash
# The bench's contention verdict on a lent GPU machine (2026-12-08): the same six CUDA rows timed by the
# pipeline's own bench jobs in passes, quiet twice in a row, then beside another process that uses the GPU,
# then beside 8 busy CPU processes. On the device, from the repository root, carrying .whl/offline:
#   bash docs/measured/h200/contention/run.sh setup quiet1 quiet2 gpuhog   # first call
#   bash docs/measured/h200/contention/run.sh cpuhog compare                # second call, same warm machine
# Each pass copies the rows' bench JSONs to $OUT/<pass>/<model>/<row>.json and its log to $OUT/<pass>.log.
set -u
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
CFG=(--configfile config/server.yaml docs/measured/h200/contention/overlay.yaml)
ROWS=(results/server-yolo/bench/yolov8n-640/torch_fp16_b1.json
      results/server-yolo/bench/yolov8n-640/torch_fp16_b256.json
      results/server-yolo/bench/yolov8n-640/torch-cudagraph_fp16_b1.json
      results/server-yolo/bench/yolov8n-640/torch-cudagraph_fp16_b256.json
      results/server-dfine/bench/dfine-x/torch_fp16_b1.json
      results/server-dfine/bench/dfine-x/torch-cudagraph_fp16_b1.json)
STORE=/tmp/contention  # the passes, kept on the warm machine between calls
mkdir -p "$STORE"

bench_pass() {  # name [--forcerun bench]: snakemake makes the six rows, then they are kept
  local name=$1; shift
  local t0=$SECONDS
  snakemake --profile profiles/server "${ROWS[@]}" "${CFG[@]}" "$@" > "$STORE/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - t0)) s" | tee -a "$STORE/passes.txt"
  for r in "${ROWS[@]}"; do
    m=$(basename "$(dirname "$r")"); mkdir -p "$STORE/$name/$m"; cp "$r" "$STORE/$name/$m/"
  done
}

for step in "$@"; do
  case $step in
    setup)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/offline/*.whl
      mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python
      chmod +x /tmp/bin/python
      nvidia-smi > "$STORE/nvidia-smi.txt" ;;
    quiet1) bench_pass quiet1 ;;
    quiet2) bench_pass quiet2 --forcerun bench ;;
    gpuhog)  # a second process multiplying FP16 matrices on the same GPU for the whole pass
      python3 -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda', dtype=torch.half)
t = time.time()
while time.time() - t < 900:
    for _ in range(20): a @ a
    torch.cuda.synchronize()
" & hog=$!
      sleep 5; bench_pass gpuhog --forcerun bench; kill $hog ;;
    cpuhog)  # 8 busy Python processes on the machine's 16 CPUs for the whole pass
      pids=(); for _ in $(seq 8); do python3 -c "while True: pass" & pids+=($!); done
      sleep 2; bench_pass cpuhog --forcerun bench; kill "${pids[@]}" ;;
    compare)
      for p in quiet2 gpuhog cpuhog; do
        [ -d "$STORE/$p" ] && python3 benchmarks/contention_study.py compare "$STORE/quiet1" "$STORE/$p" \
          > "$STORE/compare_quiet1_$p.md"
      done ;;
  esac
done
cp -r "$STORE"/. "$OUT"/

#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one script (a few minutes on one GPU), with one JSON out:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default: $OUT, else ./gpu_check
#
# 1. the CUDA tests (pytest -m cuda: CUDA against CPU for the TGN, JODIE and APAN models);
# 2. benchmarks/train.py on the Wikipedia shape (batch 600, d = 100): train and eval events/s, fp32
#    and bf16 alternated in one run;
# 3. disttgl profile (MSPipe's stage times on the GPU, and the speed-up bound they allow), then
#    benchmarks/pipeline.py: --pipeline threads and streams against off on the GPU (issue 16's
#    >= 1.5x target: streams_over_off / streams_over_plain in pipeline.json);
# 4. a 2-rank run (1x2x1) on the one GPU: correctness, not speed (two ranks on one GPU all-reduce
#    through gloo: NCCL needs a GPU per rank);
# 5. benchmarks/snapshot_transfer.py: host-to-device time of whole snapshots against graph
#    differences (issue 18), on CollegeMsg (or a synthetic stream) and on a 2M-event synthetic stream;
# and writes OUT_DIR/gpu_check.json with each step's exit status, seconds and numbers.
# Data: ../shared/datasets/wikipedia when present, else a synthetic stream of Wikipedia's shape
# (157,474 events, 9,227 nodes, bipartite). Exit 77 when there is no CUDA GPU (nothing to check).
# Assumes disttgl and its dependencies are installed (pip install -e ".[test]" with a CUDA torch).
#
# GPU_CHECK_DEVICE=cpu is a dry run of every step on the CPU with tiny synthetic data: it checks the
# script's own commands and JSON (tests/test_gpu_check.py), never a number.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check}}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT_DIR"
if [ "$DEVICE" = cpu ]; then
    DRY=1
    echo "gpu_check: GPU_CHECK_DEVICE=cpu: a dry run of the steps on tiny data, not a measurement" >&2
elif python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DRY=0
else
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check" >&2
    exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.jsonl"
: > "$STEPS"

step() {  # step NAME TIMEOUT_S CMD...: run, record exit status and seconds
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $*" >&2
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
    tail -3 "$OUT_DIR/$name.log" >&2
}

# data of Wikipedia's shape
WIKI=../shared/datasets/wikipedia/wikipedia.csv
GRAPH="$WORK/graph.h5"
if [ "$DRY" = 1 ]; then
    step convert 60 disttgl synth --events 4000 --nodes 300 --edge-dim 0 --bipartite --out "$GRAPH"
elif [ -f "$WIKI" ]; then
    step convert 300 disttgl convert "$WIKI" --format jodie --out "$GRAPH"
else
    step convert 300 disttgl synth --events 157474 --nodes 9227 --edge-dim 0 --bipartite --out "$GRAPH"
fi
step batches 300 disttgl batches "$GRAPH" --out "$WORK/cache.h5" --batch-size 600 --neg-sets 4 --no-progress

step cuda_tests 240 python3 -m pytest -q -m cuda tests
# fp32 and bf16 (--bf16: the same steps under --precision bf16, alternated with fp32 in one run)
step train 300 python3 benchmarks/train.py --graph "$GRAPH" --cache "$WORK/cache.h5" --device "$DEVICE" \
    --rounds 2 --bf16 --json "$OUT_DIR/train.json"
# MSPipe's stage times on this device, and the most a pipeline can gain over the sequential run by
# the timing model (speedup_bound: sum(tau) / max(tau1, tau2 + tau3, tau4, tau5), docs/design.md §10.1)
step profile 180 disttgl profile "$GRAPH" "$WORK/cache.h5" --out "$OUT_DIR/stages.json" --device "$DEVICE" \
    --warmup "$([ "$DRY" = 1 ] && echo 1 || echo 5)"
step pipeline 240 python3 benchmarks/pipeline.py --graph "$GRAPH" --cache "$WORK/cache.h5" --device "$DEVICE" \
    --rounds 2 --json "$OUT_DIR/pipeline.json"
step two_ranks 300 torchrun --standalone --nproc-per-node 2 -m disttgl.train "$GRAPH" "$WORK/cache.h5" \
    --out "$WORK/run_1x2x1" --parallelism 1x2x1 --device "$DEVICE" --epochs 1 --no-progress
cp "$WORK/run_1x2x1/summary.json" "$OUT_DIR/two_ranks_summary.json" 2>/dev/null

# snapshot transfer, whole against differences (edge life 10: the byte ratio tends to L/2 = 5)
COLLEGE=../shared/datasets/collegemsg/CollegeMsg.txt
BIG_EVENTS=2000000
if [ "$DRY" = 1 ]; then
    BIG_EVENTS=20000
    step snap_convert 60 disttgl synth --events 3000 --nodes 200 --edge-dim 0 --out "$WORK/college.h5"
elif [ -f "$COLLEGE" ]; then
    step snap_convert 120 disttgl convert "$COLLEGE" --format snap --out "$WORK/college.h5"
else
    step snap_convert 120 disttgl synth --events 59835 --nodes 1899 --edge-dim 0 --out "$WORK/college.h5"
fi
step snap_transfer_small 120 python3 benchmarks/snapshot_transfer.py "$WORK/college.h5" --num-snapshots 100 \
    --edge-life 10 --device "$DEVICE" --repeats 3 --out "$OUT_DIR/snap_transfer_small.json"
step snap_synth 180 disttgl synth --events "$BIG_EVENTS" --nodes 100000 --edge-dim 0 --out "$WORK/snap2m.h5"
step snap_transfer_2m 180 python3 benchmarks/snapshot_transfer.py "$WORK/snap2m.h5" --num-snapshots 100 \
    --edge-life 10 --device "$DEVICE" --repeats 3 --out "$OUT_DIR/snap_transfer_2m.json"

python3 - "$OUT_DIR" "$STEPS" "$DRY" <<'PY'
import json, pathlib, sys, torch
out, steps = pathlib.Path(sys.argv[1]), [json.loads(l) for l in open(sys.argv[2])]
dry = sys.argv[3] == "1"
def read(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
result = {"gpu": "none (GPU_CHECK_DEVICE=cpu dry run)" if dry else torch.cuda.get_device_name(0),
          "dry_run": dry, "torch": torch.__version__, "cuda": torch.version.cuda,
          "steps": steps, "train": read("train.json"),
          "pipeline": read("pipeline.json"), "stages": read("stages.json"), "two_ranks": read("two_ranks_summary.json"),
          "snapshot_transfer": {"small": read("snap_transfer_small.json"), "2m": read("snap_transfer_2m.json")}}
result["pipeline_speedup_bound"] = (result["stages"] or {}).get("speedup_bound")  # disttgl profile's
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({"gpu": result["gpu"], "steps": {s["step"]: s["rc"] for s in steps}}, indent=1))
sys.exit(0 if all(s["rc"] == 0 for s in steps) else 1)
PY

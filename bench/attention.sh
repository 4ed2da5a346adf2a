#!/bin/bash
# bench/attention.sh -- exact attention (glia.attention) beside PyTorch's naive
# matmul-softmax-matmul (what PyTorch 1.13 eager does), as ratios measured in
# the same run, and against glia's own sgemm as the efficiency ceiling.
#
#   bench/attention.sh                     N in 1024 4096 8192
#   bench/attention.sh 1024 4096           only these N
#   GLIA_NUM_THREADS=n                     threads of both sides (default 2)
#   GLIA_BIN=path                          the glia executable (default bin/glia)
#   BENCH_TORCH_MAX_N=n                    largest N run in PyTorch (default 8192;
#                                          its N x N scores take ~10 GB at 8192)
#
# Every workload runs in a process of its own, so each peak RSS (VmHWM /
# ru_maxrss) is that workload's. glia: median wall time (glia.clock) after a
# warm-up, bench/attention.lua; PyTorch: bench/torch_ref.py (mean of a few
# runs). Useful FLOPs count causal attention as half: forward 4*N^2*d*H/2,
# forward+backward 3.5x that. Ratios are throughputs: > 1 means glia is faster.
set -u
cd "$(dirname "$0")/.."

export GLIA_NUM_THREADS="${GLIA_NUM_THREADS:-2}"
export GLIA_STDLIB="${GLIA_STDLIB:-$PWD/stdlib}"
GLIA="${GLIA_BIN:-bin/glia}"
PY=/usr/bin/python3
TORCH_MAX_N="${BENCH_TORCH_MAX_N:-8192}"
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1024 4096 8192)
[ -x "$GLIA" ] || { echo "bench/attention.sh: $GLIA not found: run make first" >&2; exit 1; }

declare -A MS RATE RSS # keyed "side:workload"

# record SIDE < lines of "workload ms rate unit rss_MB"
record() {
  local name ms rate unit rss
  while read -r name ms rate unit rss; do
    MS[$1:$name]=$ms RATE[$1:$name]=$rate RSS[$1:$name]=$rss
  done
}

record glia < <("$GLIA" bench/attention.lua sgemm_2048)
for n in "${SIZES[@]}"; do
  for mode in fwd fwdbwd; do
    record glia < <("$GLIA" bench/attention.lua "attn_${mode}_$n")
  done
done

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "")
if [ -n "$TORCH_VERSION" ]; then
  for n in "${SIZES[@]}"; do
    [ "$n" -le "$TORCH_MAX_N" ] || continue
    for mode in fwd fwdbwd; do
      # torch_ref.py prints "name ms ms rate GFLOP/s(useful) maxrss rss MB"
      record torch < <("$PY" bench/torch_ref.py "attn_${mode}_$n" 2>/dev/null |
                       awk '{print $1, $2, $4, "GFLOP/s", $7}')
    done
  done
fi

cell() {
  if [ -n "${MS[$1]:-}" ]; then
    printf '%9.1f ms %6.1f GFLOP/s %6.0f MB' "${MS[$1]}" "${RATE[$1]}" "${RSS[$1]}"
  else
    printf '%34s' "-"
  fi
}
ratio() {
  if [ -n "${MS[$1]:-}" ] && [ -n "${MS[$2]:-}" ]; then
    awk -v a="${MS[$1]}" -v b="${MS[$2]}" 'BEGIN {printf "%7.1fx", b / a}'
  else
    printf '%8s' "-"
  fi
}
eff() {
  if [ -n "${RATE[$1]:-}" ] && [ -n "${RATE[glia:sgemm_2048]:-}" ]; then
    awk -v a="${RATE[$1]}" -v b="${RATE[glia:sgemm_2048]}" 'BEGIN {printf "%6.0f%%", 100 * a / b}'
  else
    printf '%7s' "-"
  fi
}

echo "attention bench, $(date '+%Y-%m-%d %H:%M'), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)," \
     "$(nproc) CPUs, GLIA_NUM_THREADS=$GLIA_NUM_THREADS, load $(cut -d' ' -f1 /proc/loadavg)"
echo "B=1 H=8 d=64 causal f32; PyTorch ${TORCH_VERSION:-not installed}: naive matmul-softmax-matmul"
printf '  sgemm 2048 (glia.matmul): %.1f GFLOP/s\n\n' "${RATE[glia:sgemm_2048]:-0}"
printf '%-18s %-34s %-34s %8s %8s\n' workload "glia (ms, useful, peak RSS)" PyTorch "glia/pt" "of sgemm"
for n in "${SIZES[@]}"; do
  for mode in fwd fwdbwd; do
    w=attn_${mode}_$n
    printf '%-18s %s %s %s %s\n' "$w" "$(cell glia:$w)" "$(cell torch:$w)" \
      "$(ratio glia:$w torch:$w)" "$(eff glia:$w)"
  done
done
echo "  targets (N >= 4096): forward >= 50% of sgemm and >= 4x PyTorch (N = 4096);"
echo "                       forward+backward >= 40% of sgemm and >= 3x PyTorch"

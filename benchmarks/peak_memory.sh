#!/usr/bin/env bash
# Peak memory (max RSS) of a real training run, measured by GNU time.
#   bash benchmarks/peak_memory.sh [extra train.py flags]   -> docs/peak_memory.md
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="$(mktemp -d)"
args=(--model=m2 --labels=100 --epochs=2 --eval_split=validation --model_dir="$run_dir" "$@")
/usr/bin/time -v python train.py "${args[@]}" > "$run_dir/stdout" 2> "$run_dir/stderr"
peak_kb=$(grep "Maximum resident set size" "$run_dir/stderr" | awk '{print $NF}')
wall=$(grep "Elapsed (wall clock)" "$run_dir/stderr" | awk '{print $NF}')
{
  echo "# Peak memory of a training run"
  echo
  echo "Command: \`bash benchmarks/peak_memory.sh $*\`, which runs"
  echo "\`/usr/bin/time -v python train.py ${args[*]/--model_dir=*/--model_dir=TMP}\`"
  echo "on $(uname -m), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB."
  echo
  echo "Maximum resident set size: **$((peak_kb / 1024)) MiB**; wall clock $wall."
  echo "Result line: $(tail -1 "$run_dir/stdout")"
} > docs/peak_memory.md
cat docs/peak_memory.md
rm -rf "$run_dir"

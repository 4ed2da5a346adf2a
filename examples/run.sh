#!/bin/sh
# examples/run.sh -- `make run`: the whole story on a fresh Debian machine.
# Installs what is missing (the build dependencies through `make deps`, the
# King James Bible through the bible-kjv package), builds glia, trains the
# character-level GPT on the Bible for a few minutes with a progress bar,
# leaves the checkpoint, log.csv and loss.svg in runs/gpt, and prints a
# sample from the checkpoint.
#
#   examples/run.sh                    five minutes of training
#   examples/run.sh --time 600         any options of examples/train_gpt.lua
#   RUN_OUT=dir examples/run.sh        another output directory
set -eu
cd "$(dirname "$0")/.."
OUT="${RUN_OUT:-runs/gpt}"

# Runs a command as root: directly, through sudo, or not at all.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "run.sh: '$*' needs root (or sudo)" >&2; exit 1
  fi
}

echo "== dependencies"
as_root make --no-print-directory deps
if ! command -v bible >/dev/null 2>&1; then
  echo "installing: bible-kjv"
  as_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv'
fi

echo "== build"
make --no-print-directory -j"$(nproc)" >/dev/null
echo "bin/glia built"

echo "== training (the validation loss is printed every 100 steps)"
# --time first, so that a --time among the arguments given wins
bin/glia examples/train_gpt.lua --time 300 --out "$OUT" --sample-len 120 "$@"

echo "== a sample from $OUT"
bin/glia examples/sample.lua "$OUT" --prompt "And God said" --length 400 --temperature 0.8 --top-k 20

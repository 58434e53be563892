#!/usr/bin/env bash
# One prepared check of nayer-jax on a fresh single-GPU machine, in <= 8 minutes:
#   experiments/device_check.sh [--smoke] [--wheels DIR] [--out FILE.json]
# 1. installs every wheel in DIR (default: $NAYER_WHEELS, else ./wheels) whose package is
#    missing (dm-pix, ml_collections travel as wheels; the GPU image has jax, flax, optax,
#    orbax, chex, torch);
# 2. runs the parts of experiments/device_check.py, each in its own process under its own
#    time limit: env, jax (synthesis + KD steps, f32 + bf16, MFU), torch (same steps on
#    CUDA), run (a 3-epoch NAYER run);
# 3. merges them into one JSON (default: $OUT/device_check.json when $OUT is set, else
#    experiments/results/device_check.json) and prints a table.
# --smoke: tiny sizes, CPU is fine, well under a minute (what CI runs).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
SMOKE=""
WHEELS="${NAYER_WHEELS:-$ROOT/wheels}"
if [ -n "${OUT:-}" ]; then DEST="$OUT/device_check.json"; else DEST="$ROOT/experiments/results/device_check.json"; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE="--smoke" ;;
    --wheels) WHEELS="$2"; shift ;;
    --wheels=*) WHEELS="${1#*=}" ;;
    --out) DEST="$2"; shift ;;
    --out=*) DEST="${1#*=}" ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$SMOKE" ]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
  B_ENV=60; B_JAX=300; B_TORCH=120; B_RUN=300   # limits for a loaded CI machine
else
  B_ENV=40; B_JAX=230; B_TORCH=80; B_RUN=100   # + installs: <= 480 s in all
fi
PARTS="$(mktemp -d "${TMPDIR:-/tmp}/nayer_device_check.XXXXXX")"

# --- 1. wheels that are not installed yet --------------------------------------------
if [ -d "$WHEELS" ]; then
  for whl in "$WHEELS"/*.whl; do
    [ -e "$whl" ] || continue
    dist="$(basename "$whl" | cut -d- -f1)"
    if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
      echo "wheel $dist: already installed"
    else
      echo "wheel $dist: installing $(basename "$whl")"
      "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$whl" \
        || "$PY" -m pip install -q --no-index --no-deps "$whl" \
        || echo "wheel $dist: install FAILED" >&2
    fi
  done
else
  echo "no wheel directory $WHEELS (nothing to install)"
fi

# --- 2. the parts, each under a time limit -------------------------------------------
remaining() { echo $(( 470 - ($(date +%s) - START) )); }
run_part() {  # name budget [extra args]
  local name="$1" budget="$2"; shift 2
  if [ -z "$SMOKE" ]; then
    local left; left=$(remaining)
    [ "$left" -lt "$budget" ] && budget="$left"
    if [ "$budget" -le 5 ]; then echo "part $name: skipped (time budget spent)"; return; fi
  fi
  echo "part $name (limit ${budget}s)"
  timeout --kill-after=10 "$budget" "$PY" "$HERE/device_check.py" --part "$name" \
    --out "$PARTS/part_$name.json" $SMOKE "$@" \
    || echo "part $name: exit $? (what it measured so far is kept)"
}
run_part env "$B_ENV"
run_part jax "$B_JAX"
run_part torch "$B_TORCH"
run_part run "$B_RUN" --budget $(( B_RUN - 15 ))

# --- 3. one JSON ------------------------------------------------------------------------
"$PY" "$HERE/device_check.py" --out "$DEST" $SMOKE --started "$START" \
  --merge "$PARTS"/part_env.json "$PARTS"/part_jax.json "$PARTS"/part_torch.json "$PARTS"/part_run.json
rc=$?
echo "device check: $(( $(date +%s) - START )) s"
exit $rc

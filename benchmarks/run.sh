#!/usr/bin/env bash
# Runs every benchmark in a throwaway virtualenv and prints the results as markdown.
#
#   bash benchmarks/run.sh > /tmp/bench.md     # progress goes to stderr
#
# Environment:
#   PYTHON     interpreter for the venv (default: python3)
#   BENCH_ARGS extra arguments for overhead.py and failing_call.py, e.g. "--repeats 9"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$root/.bench-venv"
python="${PYTHON:-python3}"
read -r -a extra <<<"${BENCH_ARGS:-}"

log() { printf '[bench] %s\n' "$*" >&2; }

log "creating $venv with $("$python" --version 2>&1)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
log "installing the benchmark's peers"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
log "installing the project"
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root" >&2; then
    log "the project did not install: its rows will read n/a"
fi

cd "$root"
"$venv/bin/python" -c 'import sys; sys.path.insert(0, "benchmarks"); import _harness; print(_harness.machine())'
for script in overhead failing_call; do
    log "running $script.py"
    printf '\n'
    "$venv/bin/python" "benchmarks/$script.py" "${extra[@]}"
done
log "running instructions.py (valgrind)"
printf '\n'
"$venv/bin/python" benchmarks/instructions.py
log "running memory.py"
printf '\n'
"$venv/bin/python" benchmarks/memory.py
# The distributed benchmarks start private redis-server processes (on PATH).
for script in distributed_commands distributed_overhead distributed_propagation distributed_herd distributed_scale; do
    log "running $script.py"
    printf '\n'
    "$venv/bin/python" "benchmarks/$script.py"
done
log "done"

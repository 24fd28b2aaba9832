#!/usr/bin/env bash
# Fuzz the HTTP API against its OpenAPI document with schemathesis: a server on a fresh SQLite database
# with an API key, every phase (examples, coverage, fuzzing, and stateful runs along the document's
# links), and checks for server errors, answers the document does not describe, valid requests the
# server refuses and invalid ones it accepts. Exits non-zero on any failure.
#
#   tests/fuzz/run.sh                           # the CI run: seed 1, 50 examples per operation
#   OPTIM_FUZZ_SEED=7 OPTIM_FUZZ_MAX_EXAMPLES=200 tests/fuzz/run.sh
#   tests/fuzz/run.sh --phases coverage --include-method POST --include-path /v1/sessions
#                                               # any further arguments go to schemathesis run
#   OPTIM_FUZZ_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/optim_fuzz tests/fuzz/run.sh
#                                               # on an empty PostgreSQL database instead of a fresh SQLite file
#
# Reports (JUnit, and a pytest file reproducing each failure) go to $OPTIM_FUZZ_REPORTS
# (default: a temporary directory, named at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
workdir=$(mktemp -d)
port=$("$PYTHON" -c 'from tests.e2e.server_process import free_port; print(free_port())')
export OPTIM_DATABASE_URL="${OPTIM_FUZZ_DATABASE_URL:-sqlite:///$workdir/optim.sqlite3}"
export OPTIM_FUZZ_URL="http://127.0.0.1:$port"
export OPTIM_FUZZ_SEED=${OPTIM_FUZZ_SEED:-1}
export OPTIM_FUZZ_MAX_EXAMPLES=${OPTIM_FUZZ_MAX_EXAMPLES:-50}
reports=${OPTIM_FUZZ_REPORTS:-$workdir/reports}

"$BIN/optim-service" migrate > /dev/null
OPTIM_FUZZ_KEY=$("$BIN/optim-service" keys create --tenant fuzz | tail -n 1)
export OPTIM_FUZZ_KEY
"$BIN/optim-service" serve --port "$port" --no-access-log > "$workdir/server.log" 2>&1 &
server=$!
stop() {
    kill "$server" 2> /dev/null || true
    wait "$server" 2> /dev/null || true
}
trap stop EXIT
healthy() {
    "$PYTHON" -c "import httpx, sys; sys.exit(httpx.get('$OPTIM_FUZZ_URL/healthz').status_code != 200)" 2> /dev/null
}
for _ in $(seq 150); do
    healthy && break
    kill -0 "$server" 2> /dev/null || break
    sleep 0.2
done
healthy || { echo "the server did not start:"; cat "$workdir/server.log"; exit 1; }

status=0
SCHEMATHESIS_HOOKS=tests.fuzz.hooks PYTHONPATH=. timeout 1500 "$BIN/schemathesis" \
    --config-file tests/fuzz/schemathesis.toml run "$OPTIM_FUZZ_URL/openapi.json" \
    --seed "$OPTIM_FUZZ_SEED" --max-examples "$OPTIM_FUZZ_MAX_EXAMPLES" --checks all \
    --report junit,pytest --report-dir "$reports" --no-color "$@" || status=$?
if grep -q "Traceback" "$workdir/server.log"; then
    echo "the server logged errors:" && grep -B2 -A30 "Traceback" "$workdir/server.log" | head -200
    status=1
fi
echo "schemathesis reports: $reports; server log: $workdir/server.log"
exit "$status"

#!/usr/bin/env bash
# The test run of `make test` (after lint): the deploy test and pytest side by side. Each keeps
# about one of the two cores busy, so together they take about as long as pytest alone instead
# of the sum. The deploy test writes to a log that is printed when both are done; the exit
# status is non-zero when either failed. Arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."

# Before the split, the random-weight model both use: built once here rather than by both at
# the same time. (`make system-deps` has installed Docker and the Compose plugin.)
.venv/bin/python -c 'from tests.fixtures.model import cached_random_model as m; m()' || exit 1

log="$(mktemp /tmp/raiox-e2e-log.XXXXXX)"
bash tests/e2e/deploy.sh >>"$log" 2>&1 & # appended: our own note on it stays in place
e2e_pid=$!
# The deploy test's waits are bounded, but a hung docker or ansible-playbook call is not: past
# this limit (it takes 7-11 minutes) it is stopped and fails, instead of holding CI until
# CI's own limit with nothing printed.
e2e_deadline=$((SECONDS + ${RAIOX_E2E_LIMIT_S:-1800}))

# A background job ignores Ctrl-C: send it SIGTERM, on which its trap tears down what it
# started. Bash runs that trap only when the command in progress returns, so that command and
# whatever it started (ansible's workers, a docker compose call) get SIGTERM too, but not the
# dockerd deploy.sh started: its teardown needs it to remove the stack.
below_deploy() {
  local child
  for child in $(pgrep -P "$1"); do
    [ "$(cat "/proc/$child/comm" 2>/dev/null)" = dockerd ] && continue
    echo "$child"
    below_deploy "$child"
  done
}
terminate_e2e() {
  local pids
  pids="$(below_deploy "$e2e_pid")"
  kill -TERM "$e2e_pid" $pids 2>/dev/null
  while kill -0 "$e2e_pid" 2>/dev/null; do sleep 1; done
}
stop_e2e() {
  terminate_e2e
  cat "$log"
  rm -f "$log"
  exit 130
}
trap stop_e2e INT TERM

.venv/bin/pytest -q "$@"
pytest_rc=$?
while kill -0 "$e2e_pid" 2>/dev/null && ((SECONDS < e2e_deadline)); do sleep 2; done
if kill -0 "$e2e_pid" 2>/dev/null; then
  echo "the deploy test ran past ${RAIOX_E2E_LIMIT_S:-1800} s: stopping it" >>"$log"
  terminate_e2e
fi
wait "$e2e_pid"
e2e_rc=$?
trap - INT TERM

echo "--- the deploy test (tests/e2e/deploy.sh), run beside pytest ---"
cat "$log"
rm -f "$log"
echo "pytest: exit $pytest_rc; deploy test: exit $e2e_rc"
[ "$pytest_rc" -eq 0 ] && [ "$e2e_rc" -eq 0 ]

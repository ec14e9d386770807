#!/usr/bin/env bash
# The deploy test (`make e2e`, also run by `make test`): a real Docker, the real images and the
# real playbooks on this machine, checked only through the proxy's port on 127.0.0.1.
#
#   1. Docker (docker.io, the Compose v2 plugin) installed if missing; our own dockerd started.
#   2. The offline base image (debootstrap), the random-weight model (tests/fixtures/model.py).
#   3. site.yml deploys two api replicas and two sync workers: /healthcheck, an upload and a
#      Jotform delivery answer three matches; the migrations ran once (before the replicas);
#      Prometheus reports every scrape target up, one per replica; both replicas serve through
#      the proxy, a redelivery reaching the other replica gets the stored result, and stopping
#      one replica under load loses no accepted upload. site.yml again: changed=0.
#   4. upgrade.yml to a release whose api cannot start: it rolls back, restores the pre-upgrade
#      backup, and the appliance answers with the same data.
#   5. Backup, destroy the database volume, restore: same catalog and submissions.
#   6. Managed services: TLS-only Postgres and Redis containers; a certificate of another CA
#      refused; that backup restored into them and dumped again; then site.yml with
#      appliance_managed_services moves the stack onto them (the local postgres and redis gone,
#      the same data served, every replica's database and cache up, the exporters reading both).
# RAIOX_E2E_QUICK=1 skips 4 and the second site.yml (for iterating; `make e2e` runs everything).
# Each phase's seconds are printed at the end.
# A trap tears down what this started: the stack, its volumes and networks, the deploy
# directory, the broken release's image, dockerd (by PID), Docker's iptables rules, bridges and
# ip_forward. Kept on purpose, so the next run is fast: the images (inside /var/lib/docker, Docker's
# layer cache) and the machine-wide cache RAIOX_CACHE_DIR (default ~/.cache/raiox: base rootfs
# tarball, wheels, the Compose plugin's source, the test model), each entry named by a hash of
# what made it, so a fresh clone reuses them and a change never picks up a stale one.
set -euo pipefail
# This script's own output, for the teardown: a signal that lands while a command's output goes
# to a file (the playbooks' logs) runs the trap with that redirection still in place.
exec 3>&1 4>&2

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="$root/.venv"
started=$(date +%s)
log() { printf '[e2e %4ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() { log "FAILED: $*"; exit 1; }
# Phase timings: `phase NAME` closes the previous phase and opens NAME.
phases=() phase_name="" phase_started=$started
phase() {
  local now; now=$(date +%s)
  [ -n "$phase_name" ] && phases+=("$(printf '%5ss  %s' "$((now - phase_started))" "$phase_name")")
  phase_name="$1" phase_started=$now
  [ -n "$1" ] && log "$1"
  return 0
}
export RAIOX_CACHE_DIR="${RAIOX_CACHE_DIR:-$HOME/.cache/raiox}"
mkdir -p "$RAIOX_CACHE_DIR"

export RAIOX_E2E_ROOT=/opt/raiox-e2e
export RAIOX_BASE_IMAGE=raiox/base:trixie
compose_dir="$RAIOX_E2E_ROOT/compose"
work="$(mktemp -d /tmp/raiox-e2e.XXXXXX)"
dockerd_pid=""
state="$work/state.json"

# --- teardown ---------------------------------------------------------------------------
# The stack's containers, volumes and networks, and phase 6's TLS services (first: they are
# attached to the stack's network), found by label, whatever made them.
remove_stack() {
  docker ps -aq --filter label=raiox.e2e=managed-services | xargs -r docker rm -f -v >/dev/null
  docker ps -aq --filter label=com.docker.compose.project=raiox | xargs -r docker rm -f -v >/dev/null
  docker volume ls -q --filter label=com.docker.compose.project=raiox | xargs -r docker volume rm >/dev/null
  docker network ls -q --filter label=com.docker.compose.project=raiox | xargs -r docker network rm >/dev/null
}

teardown() {
  local rc=$?
  set +e
  exec 1>&3 2>&4
  phase "teardown"
  if docker info >/dev/null 2>&1; then
    [ -f "$compose_dir/compose.yaml" ] && docker compose --project-directory "$compose_dir" \
      --profile grafana down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    remove_stack
    # Keep this version's images and the dependencies' build stage (untagged, labelled) as the
    # cache: the next version then rebuilds only its own layers (~10 s, not ~95 s). Drop the
    # broken release and the images of older test versions.
    docker images --format '{{.Repository}}:{{.Tag}}' raiox/appliance \
      | grep -E ':(broken-|e2e-)' | grep -vx "raiox/appliance:${version:-none}" \
      | xargs -r docker rmi -f >/dev/null 2>&1
    docker image prune -f --filter 'label!=raiox.build-cache=deps' >/dev/null 2>&1
  fi
  rm -rf "$RAIOX_E2E_ROOT"
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$dockerd_pid" 2>/dev/null
    # What dockerd added to the host: iptables chains, the docker0 bridge, ip_forward.
    for table in filter nat; do iptables-restore -T "$table" <"$iptables_saved.$table"; done
    ip link show docker0 >/dev/null 2>&1 && [ "$had_docker0" = no ] && ip link delete docker0
    sysctl -qw net.ipv4.ip_forward="$ip_forward"
  fi
  rm -rf "$work"
  phase ""
  printf '%s\n' "phases:" "${phases[@]}"
  log "done (exit $rc) in $(($(date +%s) - started))s"
  exit "$rc"
}
trap teardown EXIT
# Stopped (Ctrl-C, tests/suite.sh's limit): the teardown runs and the run counts as failed.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. Docker ----------------------------------------------------------------------------
phase "docker"
bash tests/e2e/install.sh | sed 's/^/  /'

if docker info >/dev/null 2>&1; then
  log "using the Docker daemon already running (not stopped afterwards)"
else
  iptables_saved="$work/iptables"
  for table in filter nat; do iptables-save -t "$table" >"$iptables_saved.$table"; done
  ip link show docker0 >/dev/null 2>&1 && had_docker0=yes || had_docker0=no
  ip_forward="$(sysctl -n net.ipv4.ip_forward)"
  dockerd >"$work/dockerd.log" 2>&1 3>&- 4>&- &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; fail "dockerd did not start"; }
  log "dockerd started (pid $dockerd_pid)"
  # A run killed before its teardown could reach dockerd (SIGKILL, power loss) leaves the
  # stack in Docker's data root; dockerd restarts its containers, and its volumes hold another
  # run's secrets (the database would refuse this run's password). Ours alone: start clean.
  leftovers="$(docker ps -aq --filter label=com.docker.compose.project=raiox | wc -l)"
  [ "$leftovers" -gt 0 ] && log "removing $leftovers container(s) an earlier run left behind"
  remove_stack
fi

# --- 2. Base image and model --------------------------------------------------------------
phase "base image and model"
bash compose/base-image.sh "$RAIOX_BASE_IMAGE" "$RAIOX_CACHE_DIR" | sed 's/^/  /'
model="$("$venv/bin/python" -c 'from tests.fixtures.model import cached_random_model as m; print(m())' 2>/dev/null | tail -1)"
export RAIOX_E2E_MODEL="$model"
[ -f "$model/manifest.json" ] || fail "no model at $model"
# Two free ports below the kernel's ephemeral range: `make test` runs pytest beside this test,
# and its servers bind port 0 (an ephemeral port) all the time, so one of them could take an
# ephemeral port chosen here before the proxy binds it, minutes later.
read -r RAIOX_E2E_HTTP_PORT RAIOX_E2E_HTTPS_PORT < <("$venv/bin/python" - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
found = []
while len(found) < 2:
    port = random.randrange(low // 2, low)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    if port not in found:
        found.append(port)
print(*found)
PY
)
export RAIOX_E2E_HTTP_PORT RAIOX_E2E_HTTPS_PORT
url="http://127.0.0.1:$RAIOX_E2E_HTTP_PORT"
# The version is the tree's content: an unchanged tree reuses its image, any edit builds anew.
version="e2e-$(git ls-files -co --exclude-standard -- appliance pyproject.toml compose/appliance.Dockerfile compose/probe.py \
  | sort | xargs sha1sum | sha1sum | cut -c1-12)"

playbook() {
  ANSIBLE_CONFIG="$root/ansible/ansible.cfg" ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks \
    "$venv/bin/ansible-playbook" \
    -i ansible/inventories/local.yml "$@"
}
compose() { docker compose --project-directory "$compose_dir" "$@"; }
sql() { # one query in the stack's database, unaligned output
  compose exec -T postgres sh -c 'PGPASSWORD="$POSTGRES_PASSWORD" exec psql -h 127.0.0.1 -U raiox -d raiox -Atc "$0"' "$1"
}
# The slowest tasks of a playbook's log (ansible.posix.profile_tasks' summary).
slowest() { grep -E ' -{3,} +[0-9.]+s$' "$1" | head -10 | sed 's/^/  /'; }

# --- 3. Deploy ----------------------------------------------------------------------------
phase "site.yml (version $version)"
playbook ansible/site.yml -e "appliance_version=$version" >"$work/site1.log" 2>&1 \
  || { tail -40 "$work/site1.log"; fail "site.yml"; }
slowest "$work/site1.log"
replicas="$(sed -n 's/^RAIOX_API_REPLICAS=//p' "$compose_dir/.env")"
[ "$replicas" = 2 ] || fail "the e2e inventory deploys 2 api replicas, .env says '$replicas'"

phase "migrations ran once"
# Each shipped migration is recorded once, before any replica started, and no replica's own
# start-up pass applied anything (it waits on the advisory lock, then finds nothing to do).
shipped="$(cd appliance/migrations && ls ./*.sql | sed 's|^\./||' | sort | tr '\n' ' ')"
recorded="$(sql "SELECT string_agg(name, ' ' ORDER BY name) || ' ' FROM schema_migrations")"
[ "$recorded" = "$shipped" ] || fail "schema_migrations holds '$recorded', shipped: '$shipped'"
last_applied="$(sql "SELECT floor(extract(epoch FROM max(applied_at))) FROM schema_migrations")"
for index in $(seq "$replicas"); do
  since="$(date -d "$(docker inspect -f '{{.State.StartedAt}}' "raiox-api-$index")" +%s)"
  [ "$last_applied" -le "$since" ] || fail "a migration was applied after raiox-api-$index started"
done
applied_by_api="$(compose logs --no-color api 2>&1 | grep -c 'applied migration' || true)"
[ "$applied_by_api" = 0 ] || fail "the api replicas applied $applied_by_api migrations themselves"
echo "  $(echo "$shipped" | wc -w) migrations, each applied once by 'raiox migrate' before the replicas"

phase "use the deployed appliance"
token="$(cat "$RAIOX_E2E_ROOT/secrets/webhook_token")"
# The API is closed by default: the checks use a key made the way an operator makes one.
RAIOX_E2E_API_KEY="$(compose exec -T api raiox apikey create "e2e-$version" 2>/dev/null | tail -n 1)"
[ -n "$RAIOX_E2E_API_KEY" ] || fail "raiox apikey create"
export RAIOX_E2E_API_KEY
"$venv/bin/python" tests/e2e/checks.py use "$url" "$token" "$state" || fail "the deployed appliance"

phase "prometheus targets"
targets_ok=no
for _ in $(seq 30); do
  if compose exec -T api python3 -c '
import collections, json, sys, urllib.request
targets = json.load(urllib.request.urlopen("http://prometheus:9090/api/v1/targets"))["data"]["activeTargets"]
up = collections.Counter(t["labels"]["job"] for t in targets if t["health"] == "up")
down = sorted((t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets if t["health"] != "up")
print(f"up: {dict(up)}; not up: {down}")
replicas = int(sys.argv[1])
sys.exit(0 if not down and up["api"] == replicas and up["sync"] == 2 and len(up) == 6 else 1)' "$replicas" \
    >"$work/targets.txt" 2>&1; then
    targets_ok=yes
    break
  fi
  sleep 2
done
cat "$work/targets.txt"
[ "$targets_ok" = yes ] || fail "a Prometheus target is not up"

phase "replicas: both serve, redelivery, one stopped under load"
"$venv/bin/python" tests/e2e/checks.py replicas "$url" "$token" "$replicas" \
  || { docker logs raiox-proxy-1 2>&1 | grep -v '"level":"info"' | tail -20; fail "the replicas"; }
docker stats --no-stream --format '  {{.Name}} {{.MemUsage}} {{.CPUPerc}}' | sort
docker start raiox-api-2 >/dev/null
for _ in $(seq 60); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' raiox-api-2)" = healthy ] && break
  sleep 2
done
[ "$(docker inspect -f '{{.State.Health.Status}}' raiox-api-2)" = healthy ] || fail "raiox-api-2 did not come back"

has_backup=no
compose exec -T backup raiox backup --help >/dev/null 2>&1 && has_backup=yes
if [ "${RAIOX_E2E_QUICK:-}" != 1 ]; then
phase "site.yml again: nothing may change"
playbook ansible/site.yml -e "appliance_version=$version" >"$work/site2.log" 2>&1 \
  || { tail -40 "$work/site2.log"; fail "second site.yml"; }
slowest "$work/site2.log"
grep -E '^localhost +:.* changed=0 ' "$work/site2.log" \
  || { grep -B3 '^changed' "$work/site2.log"; fail "the second site.yml changed something"; }

# --- 4. A broken upgrade rolls back ---------------------------------------------------------
phase "upgrade.yml to a broken release (raiox backup available: $has_backup)"
broken="$work/broken-src"
mkdir -p "$broken"
git ls-files -co --exclude-standard | grep -v '^tests/' | tar -cf - -T - | tar -xf - -C "$broken"
ln -s "$root/build" "$broken/build" # its release dir lands in our build/ and is removed at the end
echo 'raise RuntimeError("deliberately broken release (e2e upgrade test)")' >>"$broken/appliance/asgi.py"
if playbook ansible/upgrade.yml -e "upgrade_version=broken-$version" -e "upgrade_source=$broken" \
  -e upgrade_wait_timeout=30 \
  >"$work/upgrade.log" 2>&1; then
  tail -30 "$work/upgrade.log"
  fail "upgrade.yml to a broken release succeeded"
fi
grep -q "was rolled back" "$work/upgrade.log" || { tail -40 "$work/upgrade.log"; fail "no rollback"; }
slowest "$work/upgrade.log"
grep -q "^RAIOX_VERSION=$version$" "$compose_dir/.env" || fail "the previous version is not back"
"$venv/bin/python" tests/e2e/checks.py same "$url" "$state" || fail "data after the rollback"
fi

# --- 5. Backup, lose the database, restore ---------------------------------------------------
if [ "$has_backup" = yes ]; then
  phase "backup, destroy the database volume, restore"
  compose exec -T backup raiox backup --out /var/lib/raiox/backups/e2e >"$work/backup.log" 2>&1 \
    || { cat "$work/backup.log"; fail "raiox backup"; }
  compose stop api sync backup postgres-exporter postgres >/dev/null 2>&1
  compose rm -f postgres >/dev/null 2>&1
  docker volume rm raiox_postgres-data >/dev/null
  compose up -d --wait postgres >/dev/null 2>&1 || fail "a fresh postgres"
  compose run --rm -T --no-deps backup raiox restore /var/lib/raiox/backups/e2e/latest.json \
    >"$work/restore.log" 2>&1 || { cat "$work/restore.log"; fail "raiox restore"; }
  compose up -d --wait >/dev/null 2>&1 || fail "the stack after the restore"
  "$venv/bin/python" tests/e2e/checks.py same "$url" "$state" || fail "data after the restore"

  # --- 6. The managed-services variant against TLS-only services ---------------------------
  # A real PostgreSQL 17 + pgvector (the stack's own image, ssl=on) and a Redis that listens
  # with TLS only, both under dotted names with certificates of a CA of the test's own. Through
  # compose.managed.yaml's services, as Compose merges them: a certificate of another CA is
  # refused by name; the e2e backup is restored and dumped again (the image's pg_restore and
  # pg_dump). Then site.yml moves the stack onto them (below).
  phase "managed variant: TLS-only Postgres and Redis (verify-full)"
  tls="$work/tls"
  mkdir -p "$tls"
  ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "$@" 2>/dev/null; }
  # Extensions as a strict verifier (Python 3.13's default) wants them: key usages, key ids.
  for ca in ca other; do
    ec -x509 -days 2 -subj "/CN=raiox-e2e-$ca" -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout "$tls/$ca.key" -out "$tls/$ca.crt"
  done
  ec -subj /CN=db.e2e.test -keyout "$tls/server.key" -out "$tls/server.csr"
  printf '%s\n' subjectAltName=DNS:db.e2e.test,DNS:cache.e2e.test basicConstraints=CA:FALSE \
    keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth \
    subjectKeyIdentifier=hash authorityKeyIdentifier=keyid >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt" 2>/dev/null
  chmod 0644 "$tls"/*  # throwaway keys; Postgres copies its own to a 0600 file
  image_of() { docker inspect -f '{{.Config.Image}}' "$1"; }
  extra=(--label raiox.e2e=managed-services --network raiox_internal -v "$tls:/tls:ro")
  docker run -d --name raiox-e2e-tlsdb "${extra[@]}" --network-alias db.e2e.test \
    -e POSTGRES_PASSWORD=e2e-tls --entrypoint sh "$(image_of raiox-postgres-1)" \
    -c 'install -m 0600 /tls/server.key /tmp/server.key && exec postgres-entrypoint \
        -c ssl=on -c ssl_cert_file=/tls/server.crt -c ssl_key_file=/tmp/server.key' >/dev/null
  docker run -d --name raiox-e2e-tlscache "${extra[@]}" --network-alias cache.e2e.test \
    "$(image_of raiox-redis-1)" redis-server --port 0 --tls-port 6380 --tls-auth-clients no \
    --tls-cert-file /tls/server.crt --tls-key-file /tls/server.key --requirepass e2e-tls \
    --bind 0.0.0.0 --protected-mode no --save "" --appendonly no >/dev/null
  for _ in $(seq 60); do
    docker exec raiox-e2e-tlsdb pg_isready -q -h 127.0.0.1 -d raiox 2>/dev/null && break
    sleep 1
  done
  managed() { # the deployed stack with the managed-services override (its postgres and redis
    # are orphans to it: not an error)
    COMPOSE_IGNORE_ORPHANS=1 docker compose --project-directory "$compose_dir" \
      -f "$compose_dir/compose.yaml" -f "$root/compose/compose.managed.yaml" "$@"
  }
  export RAIOX_DATABASE_URL='postgresql://raiox:e2e-tls@db.e2e.test:5432/raiox?sslmode=verify-full'
  export RAIOX_REDIS_URL='rediss://default:e2e-tls@cache.e2e.test:6380/0'
  export RAIOX_DATABASE_CA_PATH="$tls/ca.crt" RAIOX_REDIS_CA_PATH="$tls/ca.crt"
  once() { managed run --rm -T --no-deps "$@"; }
  if RAIOX_DATABASE_CA_PATH="$tls/other.crt" once backup raiox migrate >"$work/tls-refused.log" 2>&1; then
    fail "a database certificate from another CA was accepted"
  fi
  grep -q RAIOX_DATABASE_CA_FILE "$work/tls-refused.log" \
    || { cat "$work/tls-refused.log"; fail "the refusal does not name RAIOX_DATABASE_CA_FILE"; }
  once backup raiox restore /var/lib/raiox/backups/e2e/latest.json >"$work/tls-restore.log" 2>&1 \
    || { cat "$work/tls-restore.log"; fail "raiox restore over TLS"; }
  once backup raiox backup --out /var/lib/raiox/backups/e2e-tls >"$work/tls-backup.log" 2>&1 \
    || { cat "$work/tls-backup.log"; fail "raiox backup over TLS"; }
  once backup raiox-probe postgres || fail "the container probe over TLS"
  [ "$(grep '^rows:' "$work/tls-backup.log")" = "$(grep '^rows:' "$work/backup.log")" ] \
    || { grep -h '^rows:' "$work/backup.log" "$work/tls-backup.log"; fail "rows differ over TLS"; }
  echo "  another CA refused by name; restored, backed up and probed over TLS: $(grep '^rows:' "$work/tls-backup.log")"
  # (Compose prefers the environment to .env: what site.yml writes must be all it reads.)
  db_url="$RAIOX_DATABASE_URL" redis_url="$RAIOX_REDIS_URL"
  unset RAIOX_DATABASE_URL RAIOX_REDIS_URL RAIOX_DATABASE_CA_PATH RAIOX_REDIS_CA_PATH
  # Then the operator's way: site.yml with appliance_managed_services (the CA files copied,
  # .env naming both compose files): the local postgres and redis go, every replica, the sync
  # workers and the exporters use the TLS services, and the restored data is what it serves.
  printf '%s\n' "{\"appliance_managed_services\": true," \
    "\"appliance_managed_database_url\": \"$db_url\", \"appliance_managed_redis_url\": \"$redis_url\"," \
    "\"appliance_database_ca_src\": \"$tls/ca.crt\", \"appliance_redis_ca_src\": \"$tls/ca.crt\"}" \
    >"$work/managed.json"
  playbook ansible/site.yml -e "appliance_version=$version" -e "@$work/managed.json" \
    >"$work/site-managed.log" 2>&1 || { tail -40 "$work/site-managed.log"; fail "site.yml with managed services"; }
  slowest "$work/site-managed.log"
  grep -qx 'COMPOSE_FILE=compose.yaml:compose.managed.yaml' "$compose_dir/.env" \
    || fail ".env does not name the managed override"
  [ -z "$(docker ps -q --filter name='^raiox-postgres-1$' --filter name='^raiox-redis-1$')" ] || fail "the local postgres or redis still runs with managed services"
  "$venv/bin/python" tests/e2e/checks.py same "$url" "$state" || fail "the data restored into the managed Postgres"
  scrape() { # a metric line from an exporter, through its own bash
    docker exec "raiox-$1-1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2 &&
      printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3" 2>/dev/null | grep -E "^$3 " || true
  }
  managed_ok=no
  for _ in $(seq 60); do
    health="$(for index in $(seq "$replicas"); do docker exec "raiox-api-$index" python3 -c '
import json, urllib.request
parts = json.load(urllib.request.urlopen("http://127.0.0.1:8000/healthcheck"))["components"]
print(" ".join(k + "=" + v["status"] for k, v in sorted(parts.items())))' 2>/dev/null || echo down; done)"
    pg_up="$(scrape postgres-exporter 9187 pg_up)" redis_up="$(scrape redis-exporter 9121 redis_up)"
    if [ "$(grep -c 'cache=ok.*database=ok' <<<"$health")" = "$replicas" ] \
      && [ "$pg_up" = "pg_up 1" ] && [ "$redis_up" = "redis_up 1" ]; then
      managed_ok=yes
      break
    fi
    sleep 1
  done
  echo "  api replicas: $(paste -sd ';' <<<"$health"); exporters: ${pg_up:-no pg_up}, ${redis_up:-no redis_up}"
  [ "$managed_ok" = yes ] || {
    for svc in api-1 postgres-exporter-1 redis-exporter-1; do docker logs --tail 15 "raiox-$svc" 2>&1; done
    fail "the managed variant"
  }
  echo "  the api replicas, the sync workers and the exporters on the TLS services, through site.yml"
else
  log "SKIPPED backup/restore: this appliance has no 'raiox backup' yet"
fi

phase ""
log "PASSED in $(($(date +%s) - started))s"

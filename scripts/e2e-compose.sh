#!/usr/bin/env bash
# End-to-end test of the whole stack with a real Docker engine:
#   1. docker compose up -d --build --wait (TiDB, TiCDC, Kafka, ES, Kibana,
#      Prometheus, Grafana, the consumer and the one-shot jobs);
#   2. waits for the consumer's /readyz and the changefeed to be normal, and
#      checks that the consumer's /metrics refuses a request without the
#      scrape token;
#   3. inserts, updates and deletes a row in appdb.users through the
#      mysql-client service, and asserts each change is in Elasticsearch
#      `cdc-events` with the right op within 10 s, and that Prometheus
#      reports cdc_events_total for it;
#   4. docker compose down -v (on any exit; E2E_KEEP=1 keeps the stack up).
#
# Only the consumer (/readyz, /metrics; through the `dashboard` proxy, which
# reaches one of its instances), Kibana and Grafana are published on
# 127.0.0.1. TiCDC, Elasticsearch (https, as `elastic`) and Prometheus are
# reached inside the compose network through the `curl` service of the
# `tools` profile, which trusts the stack's CA: the same way docs/runbook.md
# tells people to reach them.
#
# Needs Docker with Compose v2.20+ (`up --wait --wait-timeout`) and curl.
# CI machines for this project have no Docker engine, so CI does not run this
# against containers; scripts/test-stack.sh runs it against a stand-in
# `docker` command and stub services.
#
#   scripts/e2e-compose.sh            # uses .env if present, else .env.example
#                                     # with a fresh random value for every secret
#   E2E_ENV_FILE=path                 # another env file
#   E2E_KEEP=1                        # leave the stack running afterwards
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# A separate project name, so the test never touches a developer's own stack
# or its volumes (down -v below removes this project's volumes only).
PROJECT=${E2E_PROJECT:-cdc-monitor-e2e}
WORK=$(mktemp -d)
ENV_FILE="${E2E_ENV_FILE:-$ROOT/.env}"
if [[ ! -f "$ENV_FILE" ]]; then
  ENV_FILE="$WORK/e2e.env"
  # Random throwaway secrets: .env.example's placeholders are not to be used.
  # The secrets are the variables docker-compose.yml requires (${VAR:?...}),
  # so one added there is covered here too. 32 hex characters each: over the
  # 16 that the tokens need, and nothing sed or a setup script must escape.
  rand() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
  secrets=$(grep -Eo '[$][{][A-Z_][A-Z0-9_]*:[?]' "$ROOT/docker-compose.yml" | sed 's/^..//; s/..$//' | sort -u)
  [[ -n "$secrets" ]] || { echo "no \${VAR:?} secrets found in docker-compose.yml" >&2; exit 1; }
  replace=()
  for name in $secrets; do
    grep -q "^$name=" "$ROOT/.env.example" || { echo "$name is not in .env.example" >&2; exit 1; }
    replace+=(-e "s/^$name=.*/$name=$(rand)/")
  done
  sed "${replace[@]}" "$ROOT/.env.example" >"$ENV_FILE"
fi

# envval NAME DEFAULT: a value from the env file. The file is not sourced:
# the sink URI contains `&`, which a shell would take as "run in background".
envval() {
  local v
  v=$(grep -E "^$1=" "$ENV_FILE" | tail -n 1 | cut -d= -f2-) || true
  printf '%s' "${v:-$2}"
}
ELASTIC_PASSWORD=$(envval ELASTIC_PASSWORD "")
CDC_METRICS_TOKEN=$(envval CDC_METRICS_TOKEN "")
GRAFANA_ADMIN_USER=$(envval GRAFANA_ADMIN_USER admin)
GRAFANA_ADMIN_PASSWORD=$(envval GRAFANA_ADMIN_PASSWORD "")
CHANGEFEED_ID=$(envval CDC_CHANGEFEED_ID cf-kafka)
ES_INDEX=$(envval CDC_ES_INDEX cdc-events)
# Published on 127.0.0.1 (docker-compose.yml `ports:`).
CONSUMER_URL="http://127.0.0.1:$(envval CONSUMER_HOST_PORT 3000)"
KIBANA_URL="http://127.0.0.1:$(envval KIBANA_HOST_PORT 5601)"
GRAFANA_URL="http://127.0.0.1:$(envval GRAFANA_HOST_PORT 3001)"
# Inside the compose network only, through incurl below.
TICDC_URL=http://ticdc:8300
ES_URL=https://elasticsearch:9200
PROM_URL=http://prometheus:9090

COMPOSE=(docker compose --project-directory "$ROOT" --project-name "$PROJECT" --env-file "$ENV_FILE" -f "$ROOT/docker-compose.yml")

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

teardown() {
  local status=$?
  if ((status != 0)); then
    log "failed (exit $status); service states and recent logs follow"
    "${COMPOSE[@]}" ps -a || true
    "${COMPOSE[@]}" logs --no-color --tail=80 secrets-init es-certs es-setup cdc-task consumer ticdc kafka-init db-init || true
  fi
  if [[ "${E2E_KEEP:-0}" == 1 ]]; then
    log "E2E_KEEP=1: leaving project $PROJECT running (docker compose -p $PROJECT down -v to remove)"
  else
    log "tearing down"
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every second.
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${timeout}s"
    sleep 1
  done
  log "$what: ok"
}

# incurl CURL_ARGS...: curl inside the compose network (the `curl` tools
# service, whose entrypoint adds --cacert for the stack's CA).
incurl() { "${COMPOSE[@]}" run --rm -T curl "$@"; }

es() { incurl -fsS -u "elastic:${ELASTIC_PASSWORD}" -H 'Content-Type: application/json' "$@"; }

# The consumer's /metrics, with the scrape token Prometheus also holds.
consumer_metrics() { curl -fsS -H "Authorization: Bearer ${CDC_METRICS_TOKEN}" "${CONSUMER_URL}/metrics"; }

sql() { "${COMPOSE[@]}" run --rm -T mysql-client --batch --skip-column-names -e "$1"; }

# es_count TABLE OP ID: documents in the index for that change. `pk` is a
# flattened field, so pk.id matches the primary key column `id` as a keyword.
# The query is an argument, not stdin: `run` need not attach stdin.
es_count() {
  local query
  query=$(printf '{"size": 0, "query": {"bool": {"filter": [
  {"term": {"database": "appdb"}}, {"term": {"table": "%s"}},
  {"term": {"op": "%s"}}, {"term": {"pk.id": "%s"}}]}}}' "$1" "$2" "$3")
  es "${ES_URL}/${ES_INDEX}/_search?filter_path=hits.total.value&track_total_hits=true" -d "$query" \
    | grep -Eo '"value": ?[0-9]+' | grep -Eo '[0-9]+$'
}

# assert_in_es TABLE OP ID: the change must be searchable within 10 s of the
# statement returning (the issue's end-to-end budget).
assert_in_es() {
  local deadline=$((SECONDS + 10)) n
  while :; do
    n=$(es_count "$1" "$2" "$3" 2>/dev/null || true)
    if [[ "${n:-0}" -ge 1 ]]; then
      log "elasticsearch has $2 of $1 id=$3"
      return 0
    fi
    ((SECONDS < deadline)) || fail "no $2 document for $1 id=$3 in ${ES_INDEX} within 10s"
    sleep 0.5
  done
}

# prom_events_positive TABLE OP: Prometheus reports a positive
# cdc_events_total for it. Scrapes are every 10 s, so this allows 45 s.
prom_events_positive() {
  incurl -fsS -G "${PROM_URL}/api/v1/query" \
    --data-urlencode "query=sum(cdc_events_total{database=\"appdb\",table=\"$1\",op=\"$2\"}) > 0" \
    | grep -Eq '"result": ?\[\{'
}
assert_in_prometheus() {
  wait_for "prometheus cdc_events_total{table=$1,op=$2} > 0" 45 prom_events_positive "$1" "$2"
}

command -v docker >/dev/null || fail "docker is not installed"
docker compose version >/dev/null || fail "docker compose v2 is required"
[[ -n "$ELASTIC_PASSWORD" ]] || fail "ELASTIC_PASSWORD is empty in $ENV_FILE"
[[ -n "$CDC_METRICS_TOKEN" ]] || fail "CDC_METRICS_TOKEN is empty in $ENV_FILE"

log "starting the stack (project $PROJECT; the first build compiles the consumer)"
"${COMPOSE[@]}" up -d --build --wait --wait-timeout "${E2E_UP_TIMEOUT:-1200}"

wait_for "consumer /readyz (Kafka and Elasticsearch reachable)" 120 curl -fsS "${CONSUMER_URL}/readyz"
changefeed_normal() { incurl -fsS "${TICDC_URL}/api/v2/changefeeds/${CHANGEFEED_ID}" | grep -Eq '"state": ?"normal"'; }
wait_for "changefeed ${CHANGEFEED_ID} normal" 60 changefeed_normal
# Once on its own, so a TLS or password problem is not reported later as a
# change missing from the index.
wait_for "elasticsearch over https as elastic (curl service, stack CA)" 30 es "${ES_URL}/_cluster/health"
consumer_build_info() { consumer_metrics | grep -q '^cdc_build_info'; }
wait_for "consumer exports cdc_build_info" 30 consumer_build_info
code=$(curl -sS -o /dev/null -w '%{http_code}' "${CONSUMER_URL}/metrics") || true
[[ "$code" == 401 ]] || fail "consumer /metrics without the scrape token answered ${code:-nothing}, want 401"
log "consumer /metrics refuses a request without the token: ok"
prom_scrapes_consumer() {
  incurl -fsS -G "${PROM_URL}/api/v1/query" --data-urlencode 'query=up{job="cdc-monitor"} == 1' \
    | grep -Eq '"result": ?\[\{'
}
wait_for "prometheus scrapes the consumer" 60 prom_scrapes_consumer
kibana_data_view() { curl -fsS -u "elastic:${ELASTIC_PASSWORD}" "${KIBANA_URL}/api/data_views/data_view/${ES_INDEX}"; }
wait_for "kibana data view ${ES_INDEX}" 60 kibana_data_view
grafana_es_ok() {
  curl -fsS -u "${GRAFANA_ADMIN_USER}:${GRAFANA_ADMIN_PASSWORD}" "${GRAFANA_URL}/api/datasources/uid/elasticsearch/health" \
    | grep -Eq '"status": ?"OK"'
}
wait_for "grafana elasticsearch data source healthy" 60 grafana_es_ok

# A name no earlier run used, so assertions cannot match stale documents.
user="e2e_$(date +%s)_$$"

log "insert"
id=$(sql "INSERT INTO users (username, password, email) VALUES ('${user}', '\$2b\$12\$e2eNotARealHashxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', '${user}@example.com');
          SELECT id FROM users WHERE username = '${user}';" | tail -n 1)
[[ "$id" =~ ^[0-9]+$ ]] || fail "could not read the new row's id (got '$id')"
assert_in_es users insert "$id"

log "update"
sql "UPDATE users SET email = '${user}@changed.example.com' WHERE id = ${id};" >/dev/null
assert_in_es users update "$id"

log "delete"
sql "DELETE FROM users WHERE id = ${id};" >/dev/null
assert_in_es users delete "$id"

for op in insert update delete; do
  assert_in_prometheus users "$op"
done

log "PASS: insert, update and delete of appdb.users id=${id} reached Elasticsearch and Prometheus"

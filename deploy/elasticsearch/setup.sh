#!/usr/bin/env bash
# One-shot (compose service es-setup): give the built-in kibana_system user
# the password from KIBANA_SYSTEM_PASSWORD. Kibana 8 refuses to log in to
# Elasticsearch as the `elastic` superuser, and kibana_system has no password
# until someone sets one. Setting the same password again is a no-op, so
# re-running is safe.
set -euo pipefail

: "${ES_URL:=http://elasticsearch:9200}"
: "${ES_SECURITY_ENABLED:=true}"
: "${ES_SETUP_TIMEOUT:=120}"

if [[ "$ES_SECURITY_ENABLED" != "true" ]]; then
  echo "es-setup: security disabled, nothing to do"
  exit 0
fi
: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD is required}"
: "${KIBANA_SYSTEM_PASSWORD:?KIBANA_SYSTEM_PASSWORD is required}"

# compose starts us after the healthcheck passed, but the security index can
# still be initialising: retry until the deadline rather than fail at once.
deadline=$((SECONDS + ES_SETUP_TIMEOUT))
body=$(printf '{"password":"%s"}' "$KIBANA_SYSTEM_PASSWORD")
until curl -fsS -o /dev/null -u "elastic:${ELASTIC_PASSWORD}" \
    -H 'Content-Type: application/json' \
    -X POST "${ES_URL}/_security/user/kibana_system/_password" -d "$body"; do
  if (( SECONDS >= deadline )); then
    echo "es-setup: could not set the kibana_system password within ${ES_SETUP_TIMEOUT}s" >&2
    exit 1
  fi
  sleep 2
done
echo "es-setup: kibana_system password set"

#!/usr/bin/env bash
# One-shot (compose service es-setup), as `elastic`:
#   - gives the built-in kibana_system user the password KIBANA_SYSTEM_PASSWORD
#     (Kibana 8 refuses to log in to Elasticsearch as the `elastic` superuser);
#   - role and user cdc_writer, for the consumer: install its index template
#     and ILM policy (data-stream mode), create the index or data stream and
#     documents, search them (the consumer's API). It writes events with bulk
#     `create` only, so it may not overwrite or delete them; the current-state
#     index (CDC_ES_STATE_INDEX, when set) it also indexes into and deletes
#     from, one document per row;
#   - role and user cdc_reader, for Grafana's data source and for people in
#     Kibana: read the events and the state, read-only in Kibana.
# Each request sends the whole state (PUT role, PUT user with password), so
# re-running is safe and applies a changed password from .env.
set -euo pipefail

: "${ES_URL:=https://elasticsearch:9200}"
: "${ES_CA_FILE:=}"
: "${ES_SETUP_TIMEOUT:=120}"
: "${CDC_ES_INDEX:=cdc-events}"
: "${CDC_ES_STATE_INDEX:=}"
: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD is required}"
: "${KIBANA_SYSTEM_PASSWORD:?KIBANA_SYSTEM_PASSWORD is required}"
: "${CDC_ES_WRITER_PASSWORD:?CDC_ES_WRITER_PASSWORD is required}"
: "${CDC_ES_READER_PASSWORD:?CDC_ES_READER_PASSWORD is required}"

# json_string VALUE: VALUE as a JSON string literal (quote and backslash
# escaped; control characters are refused by the caller's .env anyway).
json_string() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

curl_tls=()
[[ -z "$ES_CA_FILE" ]] || curl_tls=(--cacert "$ES_CA_FILE")

# es METHOD PATH BODY: one request as elastic, retried until the deadline:
# compose starts us after the healthcheck passed, but the security index can
# still be initialising.
deadline=$((SECONDS + ES_SETUP_TIMEOUT))
es() {
  until curl -fsS -o /dev/null "${curl_tls[@]}" -u "elastic:${ELASTIC_PASSWORD}" \
      -H 'Content-Type: application/json' -X "$1" "${ES_URL}$2" -d "$3"; do
    if ((SECONDS >= deadline)); then
      echo "es-setup: $1 $2 did not succeed within ${ES_SETUP_TIMEOUT}s" >&2
      exit 1
    fi
    sleep 2
  done
}

# A routed CDC_ES_INDEX (cdc-{database}-{table}) is granted through its
# wildcard, each placeholder a `*`, as cdc-monitor writes and searches it.
index_pattern=$CDC_ES_INDEX
while [[ $index_pattern =~ \{[^}]*\} ]]; do
  index_pattern=${index_pattern/"${BASH_REMATCH[0]}"/*}
done
index=$(json_string "$index_pattern")
pattern=$(json_string "$index_pattern-*")
# The state index, when there is one: a second entry in each role.
writer_state='' reader_state=''
if [[ -n "$CDC_ES_STATE_INDEX" ]]; then
  state=$(json_string "$CDC_ES_STATE_INDEX")
  writer_state=", {\"names\": [$state], \"privileges\": [\"index\", \"delete\", \"create_index\", \"read\"]}"
  reader_state=", {\"names\": [$state], \"privileges\": [\"read\", \"view_index_metadata\"]}"
fi

es POST /_security/user/kibana_system/_password \
  "{\"password\": $(json_string "$KIBANA_SYSTEM_PASSWORD")}"

es PUT /_security/role/cdc_writer "{
  \"cluster\": [\"monitor\", \"manage_index_templates\", \"manage_ilm\"],
  \"indices\": [{\"names\": [$index, $pattern], \"privileges\": [\"create_doc\", \"create_index\", \"auto_configure\", \"read\", \"view_index_metadata\"]}$writer_state]
}"
es PUT /_security/user/cdc_writer "{
  \"password\": $(json_string "$CDC_ES_WRITER_PASSWORD"),
  \"roles\": [\"cdc_writer\"], \"full_name\": \"cdc-monitor consumer\"
}"

es PUT /_security/role/cdc_reader "{
  \"cluster\": [\"monitor\"],
  \"indices\": [{\"names\": [$index, $pattern], \"privileges\": [\"read\", \"view_index_metadata\"]}$reader_state],
  \"applications\": [{\"application\": \"kibana-.kibana\", \"privileges\": [\"read\"], \"resources\": [\"*\"]}]
}"
es PUT /_security/user/cdc_reader "{
  \"password\": $(json_string "$CDC_ES_READER_PASSWORD"),
  \"roles\": [\"cdc_reader\"], \"full_name\": \"cdc-monitor read-only\"
}"
echo "es-setup: kibana_system password set; roles and users cdc_writer, cdc_reader in place"

#!/usr/bin/env bash
# One-shot (compose service kibana-setup): creates the `cdc-events` data view
# (or one over CDC_ES_INDEX's wildcard when it is a routing template)
# and the saved search "Recent changes" in Kibana's default space.
# Idempotent: the data view is created only if its id is absent, and the
# saved search is written with overwrite=true under a fixed id.
set -euo pipefail

: "${KIBANA_URL:=http://kibana:5601}"
: "${CDC_ES_INDEX:=cdc-events}"
: "${KIBANA_SETUP_TIMEOUT:=300}"
# A routed CDC_ES_INDEX (cdc-events-{yyyy.MM.dd}) is viewed through its
# wildcard, each placeholder a `*` (cdc-events-*), as cdc-monitor searches
# it; the id is the template without braces, lower case, as the index
# template's name (cdc-events-yyyy.mm.dd). A plain name is its own.
INDEX_PATTERN=$CDC_ES_INDEX
while [[ $INDEX_PATTERN =~ \{[^}]*\} ]]; do
  INDEX_PATTERN=${INDEX_PATTERN/"${BASH_REMATCH[0]}"/*}
done
DATA_VIEW_ID=$(tr -d '{}' <<<"$CDC_ES_INDEX" | tr '[:upper:]' '[:lower:]')
SEARCH_ID="recent-changes"

auth=()
if [[ -n "${KIBANA_USERNAME:-}" ]]; then
  auth=(-u "${KIBANA_USERNAME}:${KIBANA_PASSWORD:?KIBANA_PASSWORD is required with KIBANA_USERNAME}")
fi

# kbn-xsrf is required by Kibana on every write request.
kibana() {
  curl -sS "${auth[@]}" -H 'kbn-xsrf: cdc-monitor' -H 'Content-Type: application/json' "$@"
}

# Kibana answers HTTP well before its plugins are ready; wait for "available".
deadline=$((SECONDS + KIBANA_SETUP_TIMEOUT))
until kibana -f "${KIBANA_URL}/api/status" 2>/dev/null | grep -Eq '"level": ?"available"'; do
  if (( SECONDS >= deadline )); then
    echo "kibana-setup: Kibana at ${KIBANA_URL} not available within ${KIBANA_SETUP_TIMEOUT}s" >&2
    exit 1
  fi
  sleep 3
done

code=$(kibana -o /dev/null -w '%{http_code}' "${KIBANA_URL}/api/data_views/data_view/${DATA_VIEW_ID}")
case "$code" in
  200)
    echo "kibana-setup: data view ${DATA_VIEW_ID} exists" ;;
  404)
    # allowNoIndex: the consumer creates the index on its first bulk request,
    # which may come after this job has run.
    kibana -f -o /dev/null -X POST "${KIBANA_URL}/api/data_views/data_view" -d @- <<JSON
{"data_view": {"id": "${DATA_VIEW_ID}", "title": "${INDEX_PATTERN}", "name": "${INDEX_PATTERN}",
  "timeFieldName": "@timestamp", "allowNoIndex": true}}
JSON
    echo "kibana-setup: data view ${DATA_VIEW_ID} created" ;;
  *)
    echo "kibana-setup: unexpected HTTP ${code} looking up data view ${DATA_VIEW_ID}" >&2
    exit 1 ;;
esac

# searchSourceJSON is a JSON document inside a string, hence the escaping;
# the index is linked through references, as Kibana itself stores it.
kibana -f -o /dev/null -X POST "${KIBANA_URL}/api/saved_objects/search/${SEARCH_ID}?overwrite=true" -d @- <<JSON
{"attributes": {
   "title": "Recent changes",
   "description": "Newest change events first (cdc-monitor)",
   "columns": ["database", "table", "op", "pk"],
   "sort": [["@timestamp", "desc"]],
   "kibanaSavedObjectMeta": {"searchSourceJSON":
     "{\"query\":{\"query\":\"\",\"language\":\"kuery\"},\"filter\":[],\"indexRefName\":\"kibanaSavedObjectMeta.searchSourceJSON.index\"}"}},
 "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern", "id": "${DATA_VIEW_ID}"}]}
JSON
echo "kibana-setup: saved search \"Recent changes\" (${SEARCH_ID}) written"

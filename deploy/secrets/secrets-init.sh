#!/usr/bin/env bash
# One-shot (compose service secrets-init): turns the secrets in .env into
# files, one volume per reader, each file owned by its reader's uid with mode
# 0400, so a container sees only its own secrets and never in its environment:
#
#   $OUT_DIR/tidb/root.sql             TiDB --initialize-sql-file (root password)
#   $OUT_DIR/consumer/http-token       CDC_HTTP_TOKEN_FILE
#   $OUT_DIR/consumer/metrics-token    CDC_METRICS_TOKEN_FILE
#   $OUT_DIR/consumer/es-password      CDC_ES_PASSWORD_FILE (user cdc_writer)
#   $OUT_DIR/prometheus/metrics-token  credentials_file in prometheus.yml
#
# Every run rewrites every file (write to a temporary name, then rename), so
# a changed .env takes effect on the next `docker compose up` and a reader
# never sees half a file. TiDB reads root.sql only at its first bootstrap.
set -euo pipefail

: "${OUT_DIR:=/out}"
# USER in ./Dockerfile; `nobody` in prom/prometheus; the PingCAP images run as root.
: "${CONSUMER_UID:=10001}"
: "${PROMETHEUS_UID:=65534}"
: "${TIDB_UID:=0}"

die() { echo "secrets-init: $*" >&2; exit 1; }

# require NAME MIN_LENGTH: the variable is set, long enough, one line.
require() {
  local name=$1 min=$2 value=${!1:-}
  [[ -n "$value" ]] || die "$name is empty (set it in .env, see .env.example)"
  ((${#value} >= min)) || die "$name is shorter than $min characters"
  [[ "$value" != *[[:cntrl:]]* ]] || die "$name contains a control character"
}
require TIDB_ROOT_PASSWORD 8
require CDC_HTTP_TOKEN 16
require CDC_METRICS_TOKEN 16
require CDC_ES_WRITER_PASSWORD 8
[[ "$CDC_HTTP_TOKEN" != "$CDC_METRICS_TOKEN" ]] \
  || die "CDC_METRICS_TOKEN must differ from CDC_HTTP_TOKEN: Prometheus holds it"

# put FILE UID VALUE: writes VALUE (no trailing newline) to FILE, mode 0400.
put() {
  local file=$1 uid=$2 value=$3 tmp
  mkdir -p "$(dirname "$file")"
  tmp="$file.tmp"
  rm -f "$tmp"
  (umask 077 && printf '%s' "$value" >"$tmp")
  chmod 0400 "$tmp"
  chown "$uid" "$tmp"
  mv -f "$tmp" "$file"
}

# A MySQL string literal: backslash and quote escaped (default sql_mode).
sql_quote() {
  local s=${1//\\/\\\\}
  s=${s//\'/\'\'}
  printf "'%s'" "$s"
}

put "$OUT_DIR/tidb/root.sql" "$TIDB_UID" \
  "ALTER USER 'root'@'%' IDENTIFIED BY $(sql_quote "$TIDB_ROOT_PASSWORD");"
put "$OUT_DIR/consumer/http-token" "$CONSUMER_UID" "$CDC_HTTP_TOKEN"
put "$OUT_DIR/consumer/metrics-token" "$CONSUMER_UID" "$CDC_METRICS_TOKEN"
put "$OUT_DIR/consumer/es-password" "$CONSUMER_UID" "$CDC_ES_WRITER_PASSWORD"
put "$OUT_DIR/prometheus/metrics-token" "$PROMETHEUS_UID" "$CDC_METRICS_TOKEN"
echo "secrets-init: secrets written"

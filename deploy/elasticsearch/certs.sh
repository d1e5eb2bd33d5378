#!/usr/bin/env bash
# One-shot (compose service es-certs): a CA and the certificate of the node
# `elasticsearch`, made with elasticsearch-certutil as in Elastic's own
# docker-compose example. Runs as root without capabilities: the fresh volumes
# are root-owned, and Elasticsearch (uid 1000, gid 0) reads through group 0.
#
#   $CERTS_DIR/ca/ca.crt, ca/ca.key               the CA (key: root only)
#   $CERTS_DIR/elasticsearch/elasticsearch.{crt,key}  HTTP and transport TLS
#   $CA_DIR/ca.crt                                what every client trusts
#
# Existing files are kept: a new CA at each start would break every client
# that holds the old one. Delete the es-certs volume to rotate.
set -euo pipefail

: "${CERTS_DIR:=/certs}"
: "${CA_DIR:=/ca}"
: "${ES_HOME:=/usr/share/elasticsearch}"
certutil="$ES_HOME/bin/elasticsearch-certutil"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ ! -s "$CERTS_DIR/ca/ca.crt" || ! -s "$CERTS_DIR/ca/ca.key" ]]; then
  "$certutil" ca --silent --pem --out "$tmp/ca.zip"
  unzip -q -o "$tmp/ca.zip" -d "$CERTS_DIR"
  # A new CA invalidates any node certificate signed by an old one.
  rm -rf "$CERTS_DIR/elasticsearch"
  echo "es-certs: CA created"
fi

if [[ ! -s "$CERTS_DIR/elasticsearch/elasticsearch.crt" || ! -s "$CERTS_DIR/elasticsearch/elasticsearch.key" ]]; then
  # localhost and 127.0.0.1 for the container's own healthcheck.
  cat >"$tmp/instances.yml" <<'YAML'
instances:
  - name: elasticsearch
    dns: [elasticsearch, localhost]
    ip: [127.0.0.1]
YAML
  "$certutil" cert --silent --pem --in "$tmp/instances.yml" --out "$tmp/certs.zip" \
    --ca-cert "$CERTS_DIR/ca/ca.crt" --ca-key "$CERTS_DIR/ca/ca.key"
  unzip -q -o "$tmp/certs.zip" -d "$CERTS_DIR"
  echo "es-certs: certificate for elasticsearch created"
fi

chmod 0750 "$CERTS_DIR/ca" "$CERTS_DIR/elasticsearch"
chmod 0640 "$CERTS_DIR/ca/ca.crt" "$CERTS_DIR/elasticsearch/elasticsearch.crt" \
  "$CERTS_DIR/elasticsearch/elasticsearch.key"
chmod 0600 "$CERTS_DIR/ca/ca.key"
# The public CA certificate alone, for Kibana, Grafana, the consumer, es-setup.
cp "$CERTS_DIR/ca/ca.crt" "$CA_DIR/ca.crt.tmp"
chmod 0644 "$CA_DIR/ca.crt.tmp"
mv -f "$CA_DIR/ca.crt.tmp" "$CA_DIR/ca.crt"
echo "es-certs: done"

#!/usr/bin/env bash
# One-shot (compose service db-init): the seed schema, then its user.
#   1. db/init.sql as root (schema appdb, table users, the seed row);
#   2. the user `app` with APPDB_PASSWORD and SELECT, INSERT, UPDATE, DELETE
#      on appdb.* only: what the demo application and mysql-client need.
# Both steps are idempotent; re-running applies a changed APPDB_PASSWORD.
# The root password is TiDB's, set at its first bootstrap (secrets-init).
set -euo pipefail

: "${DB_HOST:=tidb}"
: "${DB_PORT:=4000}"
: "${TIDB_ROOT_PASSWORD:?TIDB_ROOT_PASSWORD is required}"
: "${APPDB_PASSWORD:?APPDB_PASSWORD is required}"
here=$(dirname "${BASH_SOURCE[0]}")

# The password travels in the environment, never on a command line.
root_sql() {
  MYSQL_PWD="$TIDB_ROOT_PASSWORD" mysql --host="$DB_HOST" --port="$DB_PORT" --user=root "$@"
}

# A MySQL string literal: backslash and quote escaped (default sql_mode).
sql_quote() {
  local s=${1//\\/\\\\}
  s=${s//\'/\'\'}
  printf "'%s'" "$s"
}

if ! root_sql -e 'SELECT 1' >/dev/null; then
  echo "db-init: cannot log in as root with TIDB_ROOT_PASSWORD. TiDB takes it at its" >&2
  echo "db-init: first bootstrap only: after changing it, ALTER USER in TiDB or 'down -v'." >&2
  exit 1
fi
root_sql <"$here/init.sql"
pw=$(sql_quote "$APPDB_PASSWORD")
root_sql <<SQL
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY $pw;
ALTER USER 'app'@'%' IDENTIFIED BY $pw;
GRANT SELECT, INSERT, UPDATE, DELETE ON appdb.* TO 'app'@'%';
SQL
echo "db-init: appdb ready; user app has SELECT, INSERT, UPDATE, DELETE on appdb.*"

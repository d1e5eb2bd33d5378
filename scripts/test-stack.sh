#!/usr/bin/env bash
# Tests for the deployment files (compose, Dockerfile, Prometheus, Grafana,
# Kibana, db/init.sql, scripts). No Docker engine is needed: compose is
# validated statically, db/init.sql runs against a private MariaDB that this
# script starts and stops, and the Kibana setup job runs against a stub.
#
# Runs as root on a fresh Debian machine (CI): installs what it lacks, prints
# `ok - NAME` / `not ok - NAME` per check and a final `stack: N passed, M failed`
# line, and exits non-zero if anything failed.
#
#   bash scripts/test-stack.sh
set -uo pipefail

# mariadbd and friends live in /usr/sbin, which a CI PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
WORK=$(mktemp -d /tmp/cdc-test-stack.XXXXXX)
PASSED=0
FAILED=0
MARIADB_PID=
STUB_PID=
E2E_STUB_PID=

cleanup() {
  # Only what this script started, by pid.
  [[ -n "$MARIADB_PID" ]] && kill "$MARIADB_PID" 2>/dev/null && wait "$MARIADB_PID" 2>/dev/null
  [[ -n "$STUB_PID" ]] && kill "$STUB_PID" 2>/dev/null && wait "$STUB_PID" 2>/dev/null
  [[ -n "$E2E_STUB_PID" ]] && kill "$E2E_STUB_PID" 2>/dev/null && wait "$E2E_STUB_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# report NAME STATUS OUTPUT: one ok/not ok line, and on failure the output
# indented, so a CI log says why without a rerun.
report() {
  if (($2 == 0)); then
    echo "ok - $1"
    PASSED=$((PASSED + 1))
  else
    echo "not ok - $1"
    printf '%s\n' "$3" | sed 's/^/    /' | tail -n 40
    FAILED=$((FAILED + 1))
  fi
}

# check NAME COMMAND...: runs COMMAND in a subshell (command substitution).
# Anything that must outlive the check, such as a server, is started with
# `check_here` instead: a background child would hold the substitution's pipe
# open forever, and its pid would be lost with the subshell.
check() {
  local name=$1 out status
  shift
  out=$("$@" 2>&1)
  status=$?
  report "$name" "$status" "$out"
}

# check_here NAME COMMAND...: runs COMMAND in this shell, output to a file.
check_here() {
  local name=$1 status
  shift
  "$@" >"$WORK/check.out" 2>&1 </dev/null
  status=$?
  report "$name" "$status" "$(cat "$WORK/check.out")"
}

# --- dependencies --------------------------------------------------------------
install_deps() {
  local pkgs=()
  command -v promtool >/dev/null || pkgs+=(prometheus)
  { command -v mariadbd && command -v mariadb-install-db && command -v mariadb; } >/dev/null || pkgs+=(mariadb-server mariadb-client)
  command -v shellcheck >/dev/null || pkgs+=(shellcheck)
  command -v docker-compose >/dev/null || pkgs+=(docker-compose)
  command -v curl >/dev/null || pkgs+=(curl)
  if ((${#pkgs[@]})); then
    echo "# installing: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq "${pkgs[@]}" >/dev/null || return 1
  fi
  # PyYAML for the python3 that is first on PATH (may not be Debian's).
  if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml 2>/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null; } || return 1
    python3 -c 'import yaml'
  fi
}
check "dependencies installed (promtool, mariadb, shellcheck, docker-compose, pyyaml)" install_deps

# --- compose -------------------------------------------------------------------
# docker-compose 1.29 validates against its bundled Compose spec schema and
# interpolates variables; env -i keeps the caller's environment out of it.
compose_config() {
  env -i PATH="$PATH" HOME="$WORK" docker-compose --project-directory "$ROOT" \
    --env-file "$1" -f "$ROOT/docker-compose.yml" config
}

compose_valid() {
  compose_config "$ROOT/.env.example" >"$WORK/compose.resolved.yml"
}
check "compose: docker-compose config accepts docker-compose.yml with .env.example" compose_valid

compose_requires_secrets() {
  local out
  : >"$WORK/empty.env"
  if out=$(compose_config "$WORK/empty.env" 2>&1); then
    echo "config succeeded without secrets; a password has a default"
    return 1
  fi
  grep -q 'ELASTIC_PASSWORD\|GRAFANA_ADMIN_PASSWORD\|KIBANA_SYSTEM_PASSWORD' <<<"$out" || { echo "$out"; return 1; }
}
check "compose: refuses to start without the password variables (no hard-coded secret)" compose_requires_secrets

compose_structure() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT" <<'PY'
import os, re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
if not cfg:
    sys.exit("no resolved compose file: docker-compose config failed (see above)")
root = sys.argv[2]
raw = yaml.safe_load(open(os.path.join(root, "docker-compose.yml")))
svcs = cfg["services"]
errs = []

want = {"pd", "tikv", "tidb", "ticdc", "kafka", "elasticsearch", "kibana", "prometheus",
        "grafana", "db-init", "cdc-task", "consumer", "kibana-setup", "mysql-client"}
missing = want - set(svcs)
if missing:
    errs.append(f"missing services: {sorted(missing)}")

def one_shot(name, s):
    return s.get("restart", "no") == "no"

def cmd_text(s):
    out = []
    for k in ("command", "entrypoint"):
        v = s.get(k)
        out.append(" ".join(v) if isinstance(v, list) else (v or ""))
    return " ".join(out)

adopted = set()
for name, s in svcs.items():
    # Images pinned to a version tag.
    img = s.get("image", "")
    if not img:
        errs.append(f"{name}: no image")
    elif ":" not in img.split("/")[-1] or img.endswith(":latest"):
        errs.append(f"{name}: image {img} is not pinned")
    if s.get("build") and not img:
        errs.append(f"{name}: build without image name")
    # Build context and Dockerfile exist in the repo.
    b = s.get("build")
    if b:
        ctx = b["context"] if isinstance(b, dict) else b
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile")) if isinstance(b, dict) else os.path.join(ctx, "Dockerfile")
        if not os.path.isdir(ctx):
            errs.append(f"{name}: build context {ctx} missing")
        if not os.path.isfile(df):
            errs.append(f"{name}: Dockerfile {df} missing")
    # Bind mounts point at files in the repo.
    for v in s.get("volumes", []):
        src = v.get("source") if isinstance(v, dict) else v.split(":")[0]
        typ = v.get("type") if isinstance(v, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
        if typ == "bind":
            if not os.path.exists(src):
                errs.append(f"{name}: bind mount source {src} missing")
            elif not os.path.realpath(src).startswith(root + os.sep):
                errs.append(f"{name}: bind mount {src} is outside the repository")
    # No sleeps: order comes from depends_on conditions.
    if re.search(r"\bsleep\b", cmd_text(s)):
        errs.append(f"{name}: command uses sleep")
    # Long-running services have a health check.
    hc = s.get("healthcheck") or {}
    if not one_shot(name, s) and (not hc or hc.get("disable")):
        errs.append(f"{name}: long-running service without healthcheck")
    deps = s.get("depends_on", {})
    if isinstance(deps, list):
        errs.append(f"{name}: depends_on without conditions")
        deps = {}
    for dep, d in deps.items():
        cond = d.get("condition")
        if cond not in ("service_healthy", "service_completed_successfully"):
            errs.append(f"{name}: depends_on {dep} with condition {cond}")
        if cond == "service_healthy":
            dhc = svcs.get(dep, {}).get("healthcheck") or {}
            if not dhc or dhc.get("disable"):
                errs.append(f"{name}: waits for {dep} healthy but {dep} has no healthcheck")
        if cond == "service_completed_successfully":
            if not one_shot(dep, svcs.get(dep, {})):
                errs.append(f"{name}: waits for {dep} to complete but {dep} restarts")
            if not one_shot(name, s):
                adopted.add(dep)
            else:
                adopted.add(dep) if dep in adopted else None

# `docker compose up --wait` fails on an exited one-shot that no long-running
# service adopts; follow chains (cdc-task adopted by consumer adopts db-init).
changed = True
while changed:
    changed = False
    for name, s in svcs.items():
        if name in adopted:
            for dep, d in (s.get("depends_on") or {}).items():
                if d.get("condition") == "service_completed_successfully" and dep not in adopted:
                    adopted.add(dep)
                    changed = True
for name, s in svcs.items():
    if one_shot(name, s) and not s.get("profiles") and name not in adopted:
        errs.append(f"{name}: one-shot not adopted by any long-running service (breaks up --wait)")

# Published ports from the issue.
ports = {}
for name, s in svcs.items():
    for p in s.get("ports", []):
        ports[int(p["published"]) if isinstance(p, dict) else int(str(p).split(":")[-2])] = name
expected = {4000: "tidb", 8300: "ticdc", 9092: "kafka", 9200: "elasticsearch", 5601: "kibana",
            9090: "prometheus", 3001: "grafana", 3000: "consumer"}
for port, name in expected.items():
    if ports.get(port) != name:
        errs.append(f"port {port} should be published by {name}, got {ports.get(port)}")

# The one-shots that gate the pipeline.
def cond(svc, dep):
    return ((svcs.get(svc, {}).get("depends_on") or {}).get(dep) or {}).get("condition")
for svc, dep, c in [("cdc-task", "ticdc", "service_healthy"), ("cdc-task", "kafka", "service_healthy"),
                    ("consumer", "kafka", "service_healthy"), ("consumer", "elasticsearch", "service_healthy"),
                    ("consumer", "cdc-task", "service_completed_successfully"),
                    ("kibana-setup", "kibana", "service_healthy"), ("db-init", "tidb", "service_healthy")]:
    if cond(svc, dep) != c:
        errs.append(f"{svc} should depend on {dep} with {c}, has {cond(svc, dep)}")
if "changefeed" not in cmd_text(svcs.get("cdc-task", {})) or "ensure" not in cmd_text(svcs.get("cdc-task", {})):
    errs.append("cdc-task does not run `changefeed ensure`")
if svcs.get("mysql-client", {}).get("profiles") != ["tools"]:
    errs.append("mysql-client should be in profile tools")

print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "compose: build contexts, bind mounts, healthchecks, depends_on conditions, ports, pinned images" compose_structure

env_example_documents_all() {
  python3 - "$ROOT/docker-compose.yml" "$ROOT/.env.example" <<'PY'
import re, sys
compose = open(sys.argv[1]).read()
# Drop $$ (container-side expansion) before looking for ${VAR}.
used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", compose.replace("$$", "")))
documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", open(sys.argv[2]).read(), re.M))
missing = sorted(used - documented)
if missing:
    print("not in .env.example:", missing)
    sys.exit(1)
PY
}
check "compose: every \${VAR} used in docker-compose.yml is documented in .env.example" env_example_documents_all

dockerfile_shape() {
  local f="$ROOT/Dockerfile" errs=0
  [[ $(grep -c '^FROM ' "$f") -ge 2 ]] || { echo "not multi-stage"; errs=1; }
  grep -q 'cargo build --release --locked' "$f" || { echo "no cargo build --release --locked"; errs=1; }
  grep -q '^FROM rust:1\.[0-9]*-bookworm' "$f" || { echo "builder is not rust:1.x-bookworm"; errs=1; }
  grep -q '^FROM debian:bookworm-slim' "$f" || { echo "runtime is not debian:bookworm-slim"; errs=1; }
  grep -Eq '^USER +[^r0]' "$f" || { echo "runs as root"; errs=1; }
  grep -q '^EXPOSE 3000' "$f" || { echo "no EXPOSE 3000"; errs=1; }
  grep -q '^HEALTHCHECK.*/healthz' "$f" || { echo "no HEALTHCHECK on /healthz"; errs=1; }
  grep -qx 'target/' "$ROOT/.dockerignore" || { echo ".dockerignore lacks target/"; errs=1; }
  grep -qx '.git/' "$ROOT/.dockerignore" || { echo ".dockerignore lacks .git/"; errs=1; }
  return $errs
}
check "Dockerfile: multi-stage, --locked build, slim non-root runtime, healthcheck; .dockerignore" dockerfile_shape

# --- Prometheus --------------------------------------------------------------------
check "promtool check config deploy/prometheus/prometheus.yml" promtool check config "$ROOT/deploy/prometheus/prometheus.yml"
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules "$ROOT/deploy/prometheus/alerts.yml"
check "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules "$ROOT/deploy/prometheus/alerts_test.yml"

alerts_complete() {
  python3 - "$ROOT" <<'PY'
import re, sys, yaml
root = sys.argv[1]
rules = [r for g in yaml.safe_load(open(f"{root}/deploy/prometheus/alerts.yml"))["groups"] for r in g["rules"]]
tests = open(f"{root}/deploy/prometheus/alerts_test.yml").read()
runbook = open(f"{root}/docs/runbook.md").read()
# GitHub-style anchors of the runbook's headings.
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+\s+(.*)$", runbook, re.M)}
want = {"CDCConsumerDown", "CDCConsumerLagRecordsHigh", "CDCConsumerLagSecondsHigh",
        "CDCNoEventsWhileChangefeedRunning", "CDCSinkErrors", "CDCDeadLetterGrowing", "TiCDCCheckpointLagHigh"}
errs = []
names = {r["alert"] for r in rules if "alert" in r}
if want - names:
    errs.append(f"missing alerts: {sorted(want - names)}")
for r in rules:
    a = r.get("alert")
    if not a:
        continue
    ann = r.get("annotations", {})
    for k in ("summary", "description", "runbook_url"):
        if not ann.get(k):
            errs.append(f"{a}: no {k}")
    url = ann.get("runbook_url", "")
    if not url.startswith("docs/runbook.md#") or url.split("#", 1)[1] not in anchors:
        errs.append(f"{a}: runbook_url {url} has no matching heading in docs/runbook.md")
    # A firing case (non-empty exp_alerts) and a not-firing case per alert.
    blocks = re.findall(rf"alertname: {a}\n\s+exp_alerts:(.*)", tests)
    if not any(b.strip() == "[]" for b in blocks) or not any(b.strip() != "[]" for b in blocks):
        errs.append(f"{a}: needs both a firing and a not-firing test")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "alerts: annotations, runbook anchors exist, firing and not-firing tests for each" alerts_complete

# Runbook steps must target this stack: services that exist, published ports.
runbook_targets_stack() {
  python3 - "$ROOT" "$WORK/compose.resolved.yml" <<'PY'
import re, sys, yaml
root = sys.argv[1]
cfg = yaml.safe_load(open(sys.argv[2])) or sys.exit("no resolved compose file")
svcs = cfg["services"]
published = {int(p["published"]) for s in svcs.values() for p in s.get("ports", [])}
text = open(f"{root}/docs/runbook.md").read()
errs = []
for m in re.finditer(r"docker compose (exec|logs|ps|restart|stop|start|up|run)((?: -{1,2}[a-z-]+(?:=\S+)?| -d)*)((?: [a-z][a-z0-9-]*)+)", text):
    names = m.group(3).split()
    if m.group(1) in ("exec", "run"):
        names = names[:1]
    for n in names:
        if n not in svcs:
            errs.append(f"`{m.group(0)}`: no service {n}")
for port in set(int(p) for p in re.findall(r"localhost:(\d+)", text)):
    if port not in published:
        errs.append(f"localhost:{port} is not a published port")
for sec in ("No events in Elasticsearch", "Metrics not increasing", "Services up but nothing flows"):
    if not re.search(rf"^#+ {sec}$", text, re.M):
        errs.append(f"missing checklist: {sec}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "runbook: checklists present; commands name existing services and published ports" runbook_targets_stack

# --- Grafana -----------------------------------------------------------------------
# Extracts every PromQL expression from the dashboard into $WORK/exprs.txt.
grafana_files() {
  python3 - "$ROOT" "$WORK/exprs.txt" <<'PY'
import json, sys, yaml
root, out = sys.argv[1], sys.argv[2]
errs = []
ds = yaml.safe_load(open(f"{root}/deploy/grafana/provisioning/datasources/datasources.yml"))
prov = yaml.safe_load(open(f"{root}/deploy/grafana/provisioning/dashboards/dashboards.yml"))
dash = json.load(open(f"{root}/deploy/grafana/dashboards/cdc-monitor.json"))
by_uid = {d["uid"]: d for d in ds["datasources"]}
if by_uid.get("prometheus", {}).get("url") != "http://prometheus:9090":
    errs.append("Prometheus data source uid prometheus at http://prometheus:9090 missing")
es = by_uid.get("elasticsearch", {})
if es.get("url") != "http://elasticsearch:9200" or es.get("jsonData", {}).get("index") != "cdc-events" \
        or es.get("jsonData", {}).get("timeField") != "@timestamp":
    errs.append("Elasticsearch data source uid elasticsearch (cdc-events, @timestamp) missing")
if not any(p.get("options", {}).get("path") == "/var/lib/grafana/dashboards" for p in prov["providers"]):
    errs.append("dashboard provider does not load /var/lib/grafana/dashboards")
if dash.get("refresh") != "30s":
    errs.append(f"refresh is {dash.get('refresh')}, want 30s")

def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
exprs, types, ids = [], set(), set()
for p in panels(dash["panels"]):
    if p.get("id") in ids:
        errs.append(f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    if p["type"] == "row":
        continue
    types.add(p["type"])
    for d in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
        if not d or d.get("uid") not in by_uid:
            errs.append(f"panel {p['title']!r}: data source {d} is not provisioned")
        elif d.get("type") != by_uid[d["uid"]]["type"]:
            errs.append(f"panel {p['title']!r}: data source type {d.get('type')} != {by_uid[d['uid']]['type']}")
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") == "prometheus":
            exprs.append(t["expr"])
text = json.dumps(dash)
for needle, what in [('"raw_data"', "ES raw data table"), ("sum by (op) (cdc_events_total)", "pie chart by op"),
                     ("histogram_quantile(0.99", "p99 latency"), ("histogram_quantile(0.5", "p50 latency"),
                     ("cdc_consumer_lag_records", "lag records"), ("cdc_consumer_lag_seconds", "lag seconds"),
                     ("cdc_dead_letter_messages_total", "dead-letter rate"), ("ticdc_owner_checkpoint_ts_lag", "TiCDC checkpoint lag")]:
    if needle not in text:
        errs.append(f"dashboard lacks {what}")
for t in ("table", "piechart", "timeseries"):
    if t not in types:
        errs.append(f"no {t} panel")
open(out, "w").write("\n".join(exprs) + "\n")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "grafana: provisioning and dashboard parse, refresh 30s, every panel's data source uid provisioned" grafana_files

# promtool has no "parse this expression" command: each expression becomes a
# recording rule and `promtool check rules` parses them all.
grafana_promql_parses() {
  python3 - "$WORK/exprs.txt" "$WORK/dashboard_rules.yml" <<'PY'
import sys, yaml
exprs = [e for e in open(sys.argv[1]).read().splitlines() if e.strip()]
if not exprs:
    sys.exit("no PromQL expressions found")
# Grafana's interval variables are not PromQL; any valid duration stands in.
subst = lambda e: e.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
rules = [{"record": f"dashboard:expr_{i}", "expr": subst(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(rules)} expressions")
PY
  promtool check rules "$WORK/dashboard_rules.yml"
}
check "grafana: every PromQL expression in the dashboard parses (promtool)" grafana_promql_parses

# The consumer's metric names are a contract with src/metrics.rs; a typo in
# a rule or panel would silently show nothing.
metric_names_known() {
  python3 - "$ROOT" "$WORK/exprs.txt" <<'PY'
import re, sys
root = sys.argv[1]
# The consumer's metric names as src/metrics.rs registers them (histograms
# also as _bucket/_sum/_count), and the TiCDC metrics the stack relies on.
defined = set(re.findall(r'"(cdc_[a-z0-9_]+)"', open(f"{root}/src/metrics.rs").read()))
known = defined | {f"{n}_{s}" for n in defined for s in ("bucket", "sum", "count")}
known |= {"ticdc_owner_checkpoint_ts_lag", "ticdc_owner_status", "ticdc_sink_mq_worker_batch_size_sum"}
text = open(sys.argv[2]).read() + open(f"{root}/deploy/prometheus/alerts.yml").read()
used = set(re.findall(r"\b((?:cdc|ticdc)_[a-z0-9_]+)\b", text))
unknown = sorted(used - known - {"cdc_monitor"})
if unknown:
    print("unknown metric names:", unknown)
    sys.exit(1)
PY
}
check "metric names in alerts and dashboard are the consumer's documented ones" metric_names_known

# --- db/init.sql on MariaDB ---------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_mariadb() {
  local dir="$WORK/mariadb" port
  mkdir -p "$dir"
  port=$(free_port)
  MARIADB_SOCKET="$dir/mariadb.sock"
  mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
    || { cat "$dir/install.log"; return 1; }
  # --user=root: mariadbd refuses to run as root without it; grant tables are
  # skipped because only this script connects, over its own socket.
  mariadbd --no-defaults --datadir="$dir/data" --user=root --port="$port" \
    --bind-address=127.0.0.1 --socket="$MARIADB_SOCKET" --pid-file="$dir/mariadb.pid" \
    --skip-grant-tables --log-error="$dir/error.log" >"$dir/stdout.log" 2>&1 </dev/null &
  MARIADB_PID=$!
  local deadline=$((SECONDS + 60))
  until mariadb-admin --no-defaults --socket="$MARIADB_SOCKET" -uroot ping >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 "$MARIADB_PID" 2>/dev/null; then
      cat "$dir/error.log"
      return 1
    fi
    sleep 0.5
  done
}

sql() {
  mariadb --no-defaults --socket="$MARIADB_SOCKET" -uroot --batch --skip-column-names "$@"
}

init_sql_twice() {
  local state1 state2 n
  sql <"$ROOT/db/init.sql" || return 1
  # Everything a re-run could change: row contents and the AUTO_INCREMENT counter.
  state1=$(sql -e "CHECKSUM TABLE appdb.users; SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA='appdb' AND TABLE_NAME='users'")
  sql <"$ROOT/db/init.sql" || return 1
  state2=$(sql -e "CHECKSUM TABLE appdb.users; SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA='appdb' AND TABLE_NAME='users'")
  [[ "$state1" == "$state2" ]] || { echo "second run changed the table: $state1 -> $state2"; return 1; }
  n=$(sql -e "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='appdb'")
  [[ "$n" == 1 ]] || { echo "appdb databases: $n"; return 1; }
  n=$(sql -e "SELECT GROUP_CONCAT(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA='appdb'")
  [[ "$n" == users ]] || { echo "appdb tables: $n"; return 1; }
  n=$(sql -e "SELECT COUNT(*) FROM appdb.users")
  [[ "$n" == 1 ]] || { echo "users rows: $n"; return 1; }
  n=$(sql -e "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY ORDINAL_POSITION) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='appdb' AND TABLE_NAME='users'")
  [[ "$n" == "id,username,password,email,created_at" ]] || { echo "users columns: $n"; return 1; }
  # A bcrypt hash ($2a$/$2b$/$2y$, cost, 53 chars of salt+hash), not plain text.
  n=$(sql -e "SELECT COUNT(*) FROM appdb.users WHERE password REGEXP '^[$]2[aby][$][0-9]{2}[$][./A-Za-z0-9]{53}$'")
  [[ "$n" == 1 ]] || { echo "seed password is not a bcrypt hash"; return 1; }
  # The unique username is what keeps a second seed row out.
  if sql -e "INSERT INTO appdb.users (username, password, email) VALUES ('admin', 'x', 'x@example.com')" 2>/dev/null; then
    echo "username is not unique"
    return 1
  fi
}

check_here "mariadb: private server started on a free port" start_mariadb
check "db/init.sql: runs twice; one appdb, one users table, one seed row with a bcrypt hash" init_sql_twice

# --- Kibana setup job against a stub Kibana -------------------------------------------------
# The stub answers the three endpoints setup.sh uses and records each request,
# so the test sees what a real Kibana would have been asked, twice in a row.
KIBANA_STUB_PORT=
start_kibana_stub() {
  local log="$WORK/kibana-requests.log" deadline=$((SECONDS + 20))
  KIBANA_STUB_PORT=$(free_port)
  python3 - "$KIBANA_STUB_PORT" "$log" >"$WORK/stub.log" 2>&1 <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, log = int(sys.argv[1]), sys.argv[2]
views = set()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        with open(log, "a") as f: f.write(f"GET {self.path}\n")
        if self.path == "/api/status":
            return self.reply(200, {"status": {"overall": {"level": "available"}}})
        if self.path.startswith("/api/data_views/data_view/"):
            vid = self.path.rsplit("/", 1)[1]
            return self.reply(200 if vid in views else 404, {"data_view": {"id": vid}} if vid in views else {"statusCode": 404})
        self.reply(404, {})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.startswith("/_security/"):
            return self.do_POST_es(body)
        ok_xsrf = "kbn-xsrf" in self.headers
        with open(log, "a") as f: f.write(f"POST {self.path} xsrf={ok_xsrf} {json.dumps(body, sort_keys=True)}\n")
        if not ok_xsrf:
            return self.reply(400, {})
        if self.path == "/api/data_views/data_view":
            views.add(body["data_view"]["id"])
            return self.reply(200, body)
        if self.path.startswith("/api/saved_objects/search/"):
            return self.reply(200, body)
        self.reply(404, {})
    def do_POST_es(self, body):
        # Elasticsearch's change-password API, for deploy/elasticsearch/setup.sh.
        with open(log, "a") as f: f.write(f"ES {self.path} auth={self.headers.get('Authorization', '')} {json.dumps(body)}\n")
        self.reply(200, {})
HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  STUB_PID=$!
  until curl -fsS "http://127.0.0.1:$KIBANA_STUB_PORT/api/status" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 "$STUB_PID" 2>/dev/null; then
      cat "$WORK/stub.log"
      return 1
    fi
    sleep 0.2
  done
  : >"$log"
}

kibana_setup_idempotent() {
  local log="$WORK/kibana-requests.log"
  [[ -n "$KIBANA_STUB_PORT" ]] || { echo "stub not running"; return 1; }
  local env=(KIBANA_URL="http://127.0.0.1:$KIBANA_STUB_PORT" KIBANA_USERNAME=elastic KIBANA_PASSWORD=test KIBANA_SETUP_TIMEOUT=20 CDC_ES_INDEX=cdc-events)
  env "${env[@]}" bash "$ROOT/deploy/kibana/setup.sh" || return 1
  env "${env[@]}" bash "$ROOT/deploy/kibana/setup.sh" || return 1
  python3 - "$log" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
posts = [l for l in lines if l.startswith("POST")]
dv = [l for l in posts if l.startswith("POST /api/data_views/data_view ")]
ss = [l for l in posts if l.startswith("POST /api/saved_objects/search/recent-changes?overwrite=true ")]
errs = []
if len(dv) != 1:
    errs.append(f"data view created {len(dv)} times over two runs, want 1")
else:
    v = json.loads(dv[0].split(" ", 3)[3])["data_view"]
    if (v["id"], v["title"], v["timeFieldName"]) != ("cdc-events", "cdc-events", "@timestamp"):
        errs.append(f"data view {v}")
if len(ss) != 2:
    errs.append(f"saved search written {len(ss)} times, want 2 (overwrite each run)")
else:
    s = json.loads(ss[0].split(" ", 3)[3])
    a = s["attributes"]
    src = json.loads(a["kibanaSavedObjectMeta"]["searchSourceJSON"])
    if a["title"] != "Recent changes" or a["columns"] != ["database", "table", "op", "pk"] \
            or a["sort"] != [["@timestamp", "desc"]] or s["references"][0]["id"] != "cdc-events" \
            or src["indexRefName"] != s["references"][0]["name"]:
        errs.append(f"saved search {s}")
if any("xsrf=False" in l for l in posts):
    errs.append("a write request lacked kbn-xsrf")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check_here "kibana stub: started on a free port" start_kibana_stub
check "kibana setup.sh: creates data view once and saved search (overwrite) across two runs" kibana_setup_idempotent

es_setup_sets_password() {
  local log="$WORK/kibana-requests.log" auth
  [[ -n "$KIBANA_STUB_PORT" ]] || { echo "stub not running"; return 1; }
  : >"$log"
  ES_URL="http://127.0.0.1:$KIBANA_STUB_PORT" ES_SECURITY_ENABLED=false ELASTIC_PASSWORD=e KIBANA_SYSTEM_PASSWORD=k \
    bash "$ROOT/deploy/elasticsearch/setup.sh" || return 1
  [[ ! -s "$log" ]] || { echo "security disabled, yet it called Elasticsearch: $(cat "$log")"; return 1; }
  ES_URL="http://127.0.0.1:$KIBANA_STUB_PORT" ES_SETUP_TIMEOUT=10 ELASTIC_PASSWORD=el-pw KIBANA_SYSTEM_PASSWORD=kib-pw \
    bash "$ROOT/deploy/elasticsearch/setup.sh" || return 1
  auth="Basic $(printf 'elastic:el-pw' | base64)"
  grep -qF "ES /_security/user/kibana_system/_password auth=$auth {\"password\": \"kib-pw\"}" "$log" \
    || { echo "unexpected requests:"; cat "$log"; return 1; }
}
check "elasticsearch setup.sh: sets kibana_system password as elastic; no-op without security" es_setup_sets_password
[[ -n "$STUB_PID" ]] && kill "$STUB_PID" 2>/dev/null && wait "$STUB_PID" 2>/dev/null
STUB_PID=

kibana_setup_times_out() {
  # Nothing listens on this port: the job must give up, not hang.
  local port out
  port=$(free_port)
  if out=$(KIBANA_URL="http://127.0.0.1:$port" KIBANA_SETUP_TIMEOUT=3 timeout 30 bash "$ROOT/deploy/kibana/setup.sh" 2>&1); then
    echo "succeeded without Kibana"
    return 1
  fi
  grep -q 'not available within 3s' <<<"$out" || { echo "$out"; return 1; }
}
check "kibana setup.sh: fails with a message when Kibana never becomes available" kibana_setup_times_out

# --- e2e-compose.sh against a fake docker and stub services ---------------------------------
# No Docker engine here, so the e2e script's own logic (env handling, polling,
# ES queries, teardown) runs against a `docker` stand-in on PATH and one stub
# process that plays consumer, TiCDC, Elasticsearch, Prometheus, Kibana and
# Grafana on free ports. The stand-in records each compose call and, for each
# SQL statement, marks that op as "replicated" so the stubs start reporting it.
E2E_STUB_PID=
start_e2e_stubs() {
  local dir="$WORK/e2e" deadline=$((SECONDS + 20)) name
  mkdir -p "$dir/bin"
  : >"$dir/docker.log"
  : >"$dir/replicated"
  : >"$dir/es-queries.log"
  {
    grep -v -E '^(CONSUMER|TICDC|ES|KIBANA|PROMETHEUS|GRAFANA)_HOST_PORT=' "$ROOT/.env.example"
    for name in CONSUMER TICDC ES KIBANA PROMETHEUS GRAFANA; do
      echo "${name}_HOST_PORT=$(free_port)"
    done
  } >"$dir/e2e.env"
  cat >"$dir/bin/docker" <<'SH'
#!/usr/bin/env bash
# Stand-in for `docker`: logs the call; `run ... -e SQL` marks the op replicated.
dir=$(dirname "$(dirname "$0")")
echo "docker $*" >>"$dir/docker.log"
[[ "$1" == compose ]] || exit 1
sql=
while (($#)); do
  [[ "$1" == -e ]] && sql=$2
  shift
done
case "$sql" in
  *INSERT*) echo insert >>"$dir/replicated"; printf '42\n' ;;
  *UPDATE*) echo update >>"$dir/replicated" ;;
  *DELETE*) [[ -f "$dir/drop-delete" ]] || echo delete >>"$dir/replicated" ;;
esac
exit 0
SH
  chmod +x "$dir/bin/docker"
  python3 - "$dir" >"$dir/stub.log" 2>&1 <<'PY' &
import json, re, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
d = sys.argv[1]
env = dict(l.split("=", 1) for l in open(f"{d}/e2e.env").read().splitlines() if "=" in l and not l.startswith("#"))
def replicated():
    return set(open(f"{d}/replicated").read().split())
def handler(role):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def reply(self, code, body, ctype="application/json"):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code); self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        def do_GET(self):
            p = self.path
            if role == "consumer" and p == "/readyz": return self.reply(200, {"status": "ready"})
            if role == "consumer" and p == "/metrics": return self.reply(200, 'cdc_build_info{version="0.1.0"} 1\n', "text/plain")
            if role == "ticdc" and p == "/api/v2/changefeeds/cf-kafka": return self.reply(200, {"id": "cf-kafka", "state": "normal"})
            if role == "kibana" and p == "/api/data_views/data_view/cdc-events": return self.reply(200, {"data_view": {"id": "cdc-events"}})
            if role == "grafana" and p == "/api/datasources/uid/elasticsearch/health": return self.reply(200, {"status": "OK"})
            if role == "prometheus" and p.startswith("/api/v1/query"):
                from urllib.parse import parse_qs, urlparse
                q = parse_qs(urlparse(p).query).get("query", [""])[0]
                m = re.search(r'op="(\w+)"', q)
                hit = ('job="cdc-monitor"' in q) or (m and m.group(1) in replicated() and 'table="users"' in q)
                return self.reply(200, {"status": "success", "data": {"resultType": "vector",
                                  "result": [{"metric": {}, "value": [0, "1"]}] if hit else []}})
            self.reply(404, {})
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0).decode()
            if role == "es" and self.path.startswith("/cdc-events/_search"):
                with open(f"{d}/es-queries.log", "a") as f: f.write(json.dumps(json.loads(body)) + "\n")
                terms = {k: v for t in json.loads(body)["query"]["bool"]["filter"] for k, v in t["term"].items()}
                n = int(terms.get("table") == "users" and terms.get("pk.id") == "42" and terms.get("op") in replicated())
                return self.reply(200, {"hits": {"total": {"value": n}}})
            self.reply(404, {})
    return H
for role, key in [("consumer", "CONSUMER"), ("ticdc", "TICDC"), ("es", "ES"), ("kibana", "KIBANA"),
                  ("prometheus", "PROMETHEUS"), ("grafana", "GRAFANA")]:
    srv = ThreadingHTTPServer(("127.0.0.1", int(env[f"{key}_HOST_PORT"])), handler(role))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
PY
  E2E_STUB_PID=$!
  until grep -q ready "$dir/stub.log" 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$E2E_STUB_PID" 2>/dev/null; then
      cat "$dir/stub.log"
      return 1
    fi
    sleep 0.2
  done
}

run_e2e_fake() {
  local dir="$WORK/e2e"
  : >"$dir/docker.log"
  : >"$dir/replicated"
  env PATH="$dir/bin:$PATH" E2E_ENV_FILE="$dir/e2e.env" timeout 120 bash "$ROOT/scripts/e2e-compose.sh"
}

e2e_passes_on_fakes() {
  local dir="$WORK/e2e" out
  [[ -n "$E2E_STUB_PID" ]] || { echo "stubs not running"; return 1; }
  rm -f "$dir/drop-delete"
  out=$(run_e2e_fake 2>&1) || { echo "$out"; return 1; }
  grep -q 'PASS: insert, update and delete' <<<"$out" || { echo "$out"; return 1; }
  grep -q 'compose .*up -d --build --wait' "$dir/docker.log" || { echo "no up --wait"; return 1; }
  grep -q 'compose .*down -v' "$dir/docker.log" || { echo "no down -v"; return 1; }
  for op in insert update delete; do
    grep -q "\"op\": \"$op\"" "$dir/es-queries.log" || { echo "never asked ES for $op"; return 1; }
  done
}
e2e_fails_on_missing_change() {
  local dir="$WORK/e2e" out start=$SECONDS
  [[ -n "$E2E_STUB_PID" ]] || { echo "stubs not running"; return 1; }
  touch "$dir/drop-delete"
  if out=$(run_e2e_fake 2>&1); then
    echo "passed although the delete never reached Elasticsearch"
    return 1
  fi
  rm -f "$dir/drop-delete"
  grep -q 'no delete document for users id=42 in cdc-events within 10s' <<<"$out" || { echo "$out"; return 1; }
  grep -q 'compose .*down -v' "$dir/docker.log" || { echo "no teardown after failure"; return 1; }
  ((SECONDS - start < 60)) || { echo "took $((SECONDS - start))s to fail"; return 1; }
}
check_here "e2e stubs: fake docker and stub services started" start_e2e_stubs
check "e2e-compose.sh: passes against fakes; up --wait, ES queried per op, down -v" e2e_passes_on_fakes
check "e2e-compose.sh: fails within 10s budget when a change never reaches ES, still tears down" e2e_fails_on_missing_change
[[ -n "$E2E_STUB_PID" ]] && kill "$E2E_STUB_PID" 2>/dev/null && wait "$E2E_STUB_PID" 2>/dev/null
E2E_STUB_PID=

# --- shell scripts ---------------------------------------------------------------------------
shell_scripts() {
  local f errs=0 files
  mapfile -t files < <(find "$ROOT/scripts" "$ROOT/deploy" -type f -name '*.sh' | sort)
  ((${#files[@]})) || { echo "no scripts found"; return 1; }
  for f in "${files[@]}"; do
    bash -n "$f" || errs=1
    shellcheck -x "$f" || errs=1
  done
  return $errs
}
check "scripts: bash -n and shellcheck on every script under scripts/ and deploy/" shell_scripts

echo "stack: $PASSED passed, $FAILED failed"
((FAILED == 0))

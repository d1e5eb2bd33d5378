#!/usr/bin/env bash
# Tests for the deployment files (compose, Dockerfile, Prometheus, Grafana,
# Kibana, db/, scripts). No Docker engine is needed: compose is validated
# statically (including its hardening: published ports, privileges, memory,
# read-only roots, TLS and users), db/init.sh and db/init.sql run against a
# private MariaDB that this script starts and stops, the setup jobs run
# against stubs, and secrets-init and es-certs write into a scratch dir.
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
MARIADB_PORT=
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
  grep -q 'ELASTIC_PASSWORD\|GRAFANA_ADMIN_PASSWORD\|KIBANA_SYSTEM_PASSWORD\|TIDB_ROOT_PASSWORD\|CDC_HTTP_TOKEN' <<<"$out" || { echo "$out"; return 1; }
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
        "grafana", "dashboard", "db-init", "cdc-task", "consumer", "kibana-setup", "mysql-client",
        "secrets-init", "es-certs", "es-setup", "kafka-init", "kafka-cli", "curl"}
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

# Published ports (issue 13): only the two UIs and the consumer's dashboard
# (through the `dashboard` proxy, so the consumer can scale), each on
# 127.0.0.1; everything else is reached inside the network.
ports = {}
for name, s in svcs.items():
    for p in s.get("ports", []):
        if isinstance(p, dict):
            host_ip, published = p.get("host_ip", ""), int(p["published"])
        else:
            parts = str(p).split("/")[0].split(":")
            host_ip, published = (parts[0] if len(parts) == 3 else ""), int(parts[-2]) if len(parts) > 1 else 0
        if host_ip != "127.0.0.1":
            errs.append(f"{name}: port {p} is not bound to 127.0.0.1")
        ports[published] = name
expected = {5601: "kibana", 3001: "grafana", 3000: "dashboard"}
if ports != expected:
    errs.append(f"published ports {ports}, want exactly {expected}")

# The one-shots that gate the pipeline.
def cond(svc, dep):
    return ((svcs.get(svc, {}).get("depends_on") or {}).get(dep) or {}).get("condition")
for svc, dep, c in [("cdc-task", "ticdc", "service_healthy"), ("cdc-task", "kafka", "service_healthy"),
                    ("consumer", "kafka", "service_healthy"), ("consumer", "elasticsearch", "service_healthy"),
                    ("consumer", "cdc-task", "service_completed_successfully"),
                    ("kibana-setup", "kibana", "service_healthy"), ("db-init", "tidb", "service_healthy"),
                    ("tidb", "secrets-init", "service_completed_successfully"),
                    ("consumer", "secrets-init", "service_completed_successfully"),
                    ("prometheus", "secrets-init", "service_completed_successfully"),
                    ("elasticsearch", "es-certs", "service_completed_successfully"),
                    ("consumer", "es-setup", "service_completed_successfully"),
                    ("kibana", "es-setup", "service_completed_successfully")]:
    if cond(svc, dep) != c:
        errs.append(f"{svc} should depend on {dep} with {c}, has {cond(svc, dep)}")
if "changefeed" not in cmd_text(svcs.get("cdc-task", {})) or "ensure" not in cmd_text(svcs.get("cdc-task", {})):
    errs.append("cdc-task does not run `changefeed ensure`")
for tool in ("mysql-client", "kafka-cli", "curl"):
    if svcs.get(tool, {}).get("profiles") != ["tools"]:
        errs.append(f"{tool} should be in profile tools")

print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "compose: build contexts, bind mounts, healthchecks, depends_on conditions, ports, pinned images" compose_structure

# Issue 13, point 5: what every service must have, and the few exceptions.
# Each exception is named here with its reason, and docker-compose.yml says
# the same at the service; an exception that no longer applies is an error
# too, so this list cannot rot.
compose_hardened() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT/docker-compose.yml" <<'PY'
import re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
raw_text = open(sys.argv[2]).read()
svcs = cfg["services"]
errs = []

# Capabilities added back after cap_drop ALL.
CAP_ADD_OK = {"secrets-init": {"CHOWN"}}  # hands each secret file to its reader's uid
# Services whose image cannot run with a read-only root file system.
WRITABLE_ROOT_OK = {
    "kafka": "entrypoint rewrites /opt/kafka/config at every start; log4j writes /opt/kafka/logs",
    "elasticsearch": "entrypoint writes elasticsearch.keystore (bootstrap.password) into config/",
}

def block(name):
    # The service's own text in docker-compose.yml, for the comments.
    m = re.search(rf"^  {re.escape(name)}:\n(.*?)(?=^  [a-z][a-z0-9-]*:\n|^\S|\Z)", raw_text, re.M | re.S)
    return m.group(1) if m else ""

for name, s in sorted(svcs.items()):
    if "no-new-privileges:true" not in (s.get("security_opt") or []):
        errs.append(f"{name}: no security_opt no-new-privileges:true")
    if s.get("cap_drop") != ["ALL"]:
        errs.append(f"{name}: cap_drop is {s.get('cap_drop')}, want [ALL]")
    added = set(s.get("cap_add") or [])
    if added - CAP_ADD_OK.get(name, set()):
        errs.append(f"{name}: cap_add {sorted(added)} not in the allowlist")
    if name in CAP_ADD_OK and not added:
        errs.append(f"{name}: allowlisted for cap_add but adds none; drop it from CAP_ADD_OK")
    mem = s.get("mem_limit") or (((s.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
    if not mem:
        errs.append(f"{name}: no mem_limit or deploy.resources.limits.memory")
    if name in WRITABLE_ROOT_OK:
        if s.get("read_only"):
            errs.append(f"{name}: read-only now; drop it from WRITABLE_ROOT_OK")
        if "Not read-only:" not in block(name):
            errs.append(f"{name}: writable root without a `Not read-only:` comment in docker-compose.yml")
    elif s.get("read_only") is not True:
        errs.append(f"{name}: read_only is not true (allowlist it with a reason if the image needs it)")
    if s.get("privileged") or s.get("network_mode") == "host" or s.get("pid") == "host":
        errs.append(f"{name}: privileged, host network or host pid")
    for v in s.get("volumes", []):
        if "docker.sock" in str(v):
            errs.append(f"{name}: mounts the Docker socket")
    if "CDC_HTTP_AUTH" in (s.get("environment") or {}):
        errs.append(f"{name}: sets CDC_HTTP_AUTH (switches the token off)")

def env(name):
    return svcs.get(name, {}).get("environment") or {}

def cmd(name):
    c = svcs.get(name, {}).get("command") or []
    return c if isinstance(c, list) else c.split()

# Prometheus: no HTTP shutdown/reload.
if any("web.enable-lifecycle" in a for a in cmd("prometheus")):
    errs.append("prometheus: --web.enable-lifecycle is set")

# Elasticsearch: security on, TLS on HTTP and transport, with key and cert.
es = env("elasticsearch")
for k, want in [("xpack.security.enabled", "true"), ("xpack.security.http.ssl.enabled", "true"),
                ("xpack.security.transport.ssl.enabled", "true")]:
    if str(es.get(k)).lower() != want:
        errs.append(f"elasticsearch: {k} is {es.get(k)}, want {want}")
for k in ("xpack.security.http.ssl.key", "xpack.security.http.ssl.certificate",
          "xpack.security.http.ssl.certificate_authorities"):
    if not es.get(k):
        errs.append(f"elasticsearch: {k} unset")

# Every client of Elasticsearch uses https.
for name, key in [("consumer", "CDC_ES_URL"), ("kibana", "ELASTICSEARCH_HOSTS"), ("es-setup", "ES_URL")]:
    if not str(env(name).get(key, "")).startswith("https://"):
        errs.append(f"{name}: {key} is {env(name).get(key)}, want https://")

# The consumer: a non-superuser, secrets from files, a token on its 0.0.0.0
# bind. Its Host check is off ("*") only because it publishes no port and
# Prometheus scrapes its instances by IP: the published `dashboard` proxy
# refuses (421) any Host but 127.0.0.1 and localhost instead.
c = env("consumer")
if c.get("CDC_ES_USERNAME") in (None, "", "elastic") or c.get("CDC_ES_USERNAME") != "cdc_writer":
    errs.append(f"consumer: CDC_ES_USERNAME is {c.get('CDC_ES_USERNAME')}, want cdc_writer (not a superuser)")
if c.get("CDC_ES_API_KEY"):
    errs.append("consumer: CDC_ES_API_KEY set; the stack's user is cdc_writer")
for k in ("CDC_ES_PASSWORD", "CDC_HTTP_TOKEN", "CDC_METRICS_TOKEN"):
    if k in c:
        errs.append(f"consumer: {k} in the environment; use {k}_FILE")
    if not c.get(f"{k}_FILE"):
        errs.append(f"consumer: {k}_FILE unset")
if c.get("CDC_HTTP_ADDR") != "0.0.0.0:3000":
    errs.append(f"consumer: CDC_HTTP_ADDR is {c.get('CDC_HTTP_ADDR')}, want 0.0.0.0:3000 (dashboard proxy, Prometheus)")
hosts = [h.strip() for h in str(c.get("CDC_HTTP_ALLOWED_HOSTS", "")).split(",")]
# (The proxy's 421 is checked with the scaling, below.)
if "*" in hosts:
    if svcs.get("consumer", {}).get("ports"):
        errs.append("consumer: CDC_HTTP_ALLOWED_HOSTS is * on a published port (DNS rebinding)")
elif "consumer" not in hosts or any(":" in h for h in hosts):
    errs.append(f"consumer: CDC_HTTP_ALLOWED_HOSTS {hosts} must name `consumer`, no ports")
if not c.get("CDC_ES_CA_FILE"):
    errs.append("consumer: CDC_ES_CA_FILE unset")

# Grafana and Kibana read Elasticsearch as cdc_reader / kibana_system only.
if env("kibana").get("ELASTICSEARCH_USERNAME") != "kibana_system":
    errs.append("kibana: ELASTICSEARCH_USERNAME is not kibana_system")
if not env("kibana").get("ELASTICSEARCH_SSL_CERTIFICATEAUTHORITIES"):
    errs.append("kibana: ELASTICSEARCH_SSL_CERTIFICATEAUTHORITIES unset")
for name in ("grafana", "kibana"):
    if "ELASTIC_PASSWORD" in env(name):
        errs.append(f"{name}: holds the elastic superuser password")

# TiDB: root password at first bootstrap; seed schema through its own user.
if not any(a.startswith("--initialize-sql-file=") for a in cmd("tidb")):
    errs.append("tidb: no --initialize-sql-file (root would have no password)")
if not env("db-init").get("TIDB_ROOT_PASSWORD") or not env("db-init").get("APPDB_PASSWORD"):
    errs.append("db-init: needs TIDB_ROOT_PASSWORD and APPDB_PASSWORD")
ep = svcs.get("mysql-client", {}).get("entrypoint") or []
if "--user=root" in ep or "--user=app" not in ep:
    errs.append(f"mysql-client: should log in as app, not root: {ep}")

print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "compose: no-new-privileges, cap_drop ALL, memory limits, read-only roots (allowlisted), TLS, least-privilege users" compose_hardened

# Each file a service reads from a secrets volume (CDC_*_FILE, the CA, the
# Prometheus token, TiDB's init SQL) is one that its setup job writes. The
# job runs for real into a scratch dir, with .env.example's values; the path
# the reader names is then followed through the compose volumes to that dir.
secrets_reach_readers() {
  local out="$WORK/secrets-out" certs="$WORK/es-certs" fake="$WORK/fake-es"
  rm -rf "$out" "$certs" "$fake"
  mkdir -p "$out" "$certs/certs" "$certs/ca" "$fake/bin"
  local vars
  mapfile -t vars < <(grep -E '^(TIDB_ROOT_PASSWORD|CDC_HTTP_TOKEN|CDC_METRICS_TOKEN|CDC_ES_WRITER_PASSWORD)=' "$ROOT/.env.example")
  env -i PATH="$PATH" OUT_DIR="$out" "${vars[@]}" bash "$ROOT/deploy/secrets/secrets-init.sh" >/dev/null || return 1
  # A stand-in for elasticsearch-certutil: the same zip layout, made by openssl.
  cat >"$fake/bin/elasticsearch-certutil" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
mode=$1; shift
out= name=elasticsearch
while (($#)); do case "$1" in --out) out=$2; shift ;; --ca-cert) cacert=$2; shift ;; --ca-key) cakey=$2; shift ;; esac; shift; done
d=$(mktemp -d)
if [[ $mode == ca ]]; then
  mkdir -p "$d/ca"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout "$d/ca/ca.key" -out "$d/ca/ca.crt" 2>/dev/null
else
  mkdir -p "$d/$name"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$d/$name/$name.key" -out "$d/req.csr" 2>/dev/null
  openssl x509 -req -in "$d/req.csr" -CA "$cacert" -CAkey "$cakey" -CAcreateserial -days 2 -out "$d/$name/$name.crt" 2>/dev/null
  rm "$d/req.csr"
fi
(cd "$d" && zip -qr "$out" .)
SH
  chmod +x "$fake/bin/elasticsearch-certutil"
  ES_HOME="$fake" CERTS_DIR="$certs/certs" CA_DIR="$certs/ca" bash "$ROOT/deploy/elasticsearch/certs.sh" >/dev/null || return 1
  cp "$certs/certs/ca/ca.crt" "$WORK/ca-first.crt"
  ES_HOME="$fake" CERTS_DIR="$certs/certs" CA_DIR="$certs/ca" bash "$ROOT/deploy/elasticsearch/certs.sh" >/dev/null || return 1
  cmp -s "$WORK/ca-first.crt" "$certs/certs/ca/ca.crt" || { echo "es-certs replaced an existing CA"; return 1; }
  openssl verify -CAfile "$certs/ca/ca.crt" "$certs/certs/elasticsearch/elasticsearch.crt" >/dev/null \
    || { echo "node certificate not signed by the CA in es-ca"; return 1; }
  python3 - "$WORK/compose.resolved.yml" "$ROOT" "$out" "$certs" <<'PY'
import os, stat, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
root, out, certs = sys.argv[2:5]
svcs = cfg["services"]
example = dict(l.split("=", 1) for l in open(f"{root}/.env.example").read().splitlines()
               if "=" in l and not l.startswith("#"))
errs = []

def mounts(name):
    res = []
    for v in svcs[name].get("volumes", []):
        if isinstance(v, dict):
            res.append((v.get("source"), v["target"]))
        else:
            parts = v.split(":")
            res.append((parts[0], parts[1]))
    return res

# Where each setup job's mount target lands in the scratch dirs.
written = {}
for src, target in mounts("secrets-init"):
    if target.startswith("/out/"):
        written[src] = os.path.join(out, target[len("/out/"):])
for src, target in mounts("es-certs"):
    written[src] = {"/certs": f"{certs}/certs", "/ca": f"{certs}/ca"}.get(target)

def local(name, path):
    # The scratch path behind `path` inside service `name`, via its volumes.
    for src, target in mounts(name):
        if path.startswith(target.rstrip("/") + "/") and written.get(src):
            return os.path.join(written[src], path[len(target.rstrip("/")) + 1:])
    errs.append(f"{name}: {path} is on no volume that a setup job writes")

def expect(name, path, uid=None, content=None, mode=None):
    p = local(name, path)
    if p is None:
        return
    if not os.path.isfile(p):
        errs.append(f"{name}: {path} -> {p} was not written")
        return
    st = os.stat(p)
    if uid is not None and st.st_uid != uid:
        errs.append(f"{name}: {path} owned by uid {st.st_uid}, want {uid}")
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        errs.append(f"{name}: {path} mode {oct(stat.S_IMODE(st.st_mode))}, want {oct(mode)}")
    if content is not None and open(p).read() != content:
        errs.append(f"{name}: {path} does not hold the .env value (or has a trailing newline)")

# USER in the Dockerfile is the consumer's uid; Prometheus runs as nobody.
uid = int(next(l for l in open(f"{root}/Dockerfile") if "useradd" in l).split("--uid")[1].split()[0])
c = svcs["consumer"]["environment"]
expect("consumer", c["CDC_HTTP_TOKEN_FILE"], uid, example["CDC_HTTP_TOKEN"], 0o400)
expect("consumer", c["CDC_METRICS_TOKEN_FILE"], uid, example["CDC_METRICS_TOKEN"], 0o400)
expect("consumer", c["CDC_ES_PASSWORD_FILE"], uid, example["CDC_ES_WRITER_PASSWORD"], 0o400)
expect("consumer", c["CDC_ES_CA_FILE"], mode=0o644)
prom = yaml.safe_load(open(f"{root}/deploy/prometheus/prometheus.yml"))
job = next(j for j in prom["scrape_configs"] if j["job_name"] == "cdc-monitor")
auth = job.get("authorization") or {}
if auth.get("type") != "Bearer" or not auth.get("credentials_file"):
    errs.append("prometheus: cdc-monitor job has no Bearer credentials_file")
else:
    expect("prometheus", auth["credentials_file"], 65534, example["CDC_METRICS_TOKEN"], 0o400)
init = next(a for a in svcs["tidb"]["command"] if a.startswith("--initialize-sql-file="))
expect("tidb", init.split("=", 1)[1], 0, None, 0o400)
p = local("tidb", init.split("=", 1)[1])
if p and os.path.isfile(p) and example["TIDB_ROOT_PASSWORD"] not in open(p).read():
    errs.append("tidb: init SQL does not set the root password from .env")
expect("kibana", svcs["kibana"]["environment"]["ELASTICSEARCH_SSL_CERTIFICATEAUTHORITIES"], mode=0o644)
expect("es-setup", svcs["es-setup"]["environment"]["ES_CA_FILE"], mode=0o644)
for k in ("http.ssl.key", "http.ssl.certificate", "http.ssl.certificate_authorities", "transport.ssl.key"):
    rel = svcs["elasticsearch"]["environment"][f"xpack.security.{k}"]
    expect("elasticsearch", "/usr/share/elasticsearch/config/" + rel)
expect("elasticsearch", "/usr/share/elasticsearch/config/certs/elasticsearch/elasticsearch.key", mode=0o640)
# The CA key stays where only es-certs and Elasticsearch look, root only.
expect("elasticsearch", "/usr/share/elasticsearch/config/certs/ca/ca.key", mode=0o600)
for name in svcs:
    for src, target in mounts(name):
        if src == "es-certs" and name not in ("es-certs", "elasticsearch"):
            errs.append(f"{name}: mounts es-certs (private keys); mount es-ca instead")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "secrets: secrets-init and es-certs write every file its reader names (owner, mode 0400, value); CA kept on rerun" secrets_reach_readers

secrets_init_refuses() {
  local out
  if out=$(env -i PATH="$PATH" OUT_DIR="$WORK/refuse" TIDB_ROOT_PASSWORD=long-enough-pw \
      CDC_HTTP_TOKEN=same-token-0123456789 CDC_METRICS_TOKEN=same-token-0123456789 CDC_ES_WRITER_PASSWORD=writer-pw \
      bash "$ROOT/deploy/secrets/secrets-init.sh" 2>&1); then
    echo "accepted the same token for the dashboard and Prometheus"
    return 1
  fi
  grep -q 'must differ' <<<"$out" || { echo "$out"; return 1; }
  if out=$(env -i PATH="$PATH" OUT_DIR="$WORK/refuse" TIDB_ROOT_PASSWORD=long-enough-pw \
      CDC_HTTP_TOKEN=short CDC_METRICS_TOKEN=other-token-0123456789 CDC_ES_WRITER_PASSWORD=writer-pw \
      bash "$ROOT/deploy/secrets/secrets-init.sh" 2>&1); then
    echo "accepted a 5-character token"
    return 1
  fi
  grep -q 'CDC_HTTP_TOKEN is shorter than 16' <<<"$out" || { echo "$out"; return 1; }
}
check "secrets-init: refuses a short token and a scrape token equal to the dashboard token" secrets_init_refuses

gitignore_env() {
  git -C "$ROOT" check-ignore -q .env || { echo ".env is not ignored by git"; return 1; }
  ! git -C "$ROOT" check-ignore -q .env.example || { echo ".env.example is ignored"; return 1; }
  grep -qx '.env' "$ROOT/.dockerignore" || { echo ".dockerignore lacks .env"; return 1; }
}
check ".env: ignored by git and by the Docker build context; .env.example is not" gitignore_env

env_example_documents_all() {
  python3 - "$ROOT/docker-compose.yml" "$ROOT/.env.example" <<'PY'
import re, sys
compose = open(sys.argv[1]).read()
# Drop $$ (container-side expansion) before looking for ${VAR}.
used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", compose.replace("$$", "")))
example = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", open(sys.argv[2]).read(), re.M))
errs = []
missing = sorted(used - set(example))
if missing:
    errs.append(f"not in .env.example: {missing}")
# The secrets: every ${VAR:?message} needs a (placeholder) value there, so
# `cp .env.example .env` gives a stack that starts.
required = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*):\?", compose.replace("$$", "")))
empty = sorted(v for v in required if not example.get(v, "").strip())
if empty:
    errs.append(f"required (:?) but empty or absent in .env.example: {empty}")
for v in ("ELASTIC_PASSWORD", "KIBANA_SYSTEM_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "TIDB_ROOT_PASSWORD",
          "APPDB_PASSWORD", "CDC_ES_WRITER_PASSWORD", "CDC_ES_READER_PASSWORD", "CDC_HTTP_TOKEN", "CDC_METRICS_TOKEN"):
    defaulted = re.search(rf"\$\{{{v}(:?-|-)", compose.replace("$$", ""))
    if v not in required or defaulted:
        errs.append(f"{v} has a default in docker-compose.yml; use ${{{v}:?...}} everywhere")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "compose: every \${VAR} documented in .env.example; every secret is \${VAR:?} with a placeholder there" env_example_documents_all

dockerfile_shape() {
  local f="$ROOT/Dockerfile" errs=0
  [[ $(grep -c '^FROM ' "$f") -ge 2 ]] || { echo "not multi-stage"; errs=1; }
  grep -q 'cargo build --release --locked' "$f" || { echo "no cargo build --release --locked"; errs=1; }
  grep -q '^FROM rust:1\.[0-9]*-bookworm' "$f" || { echo "builder is not rust:1.x-bookworm"; errs=1; }
  grep -q '^FROM debian:bookworm-slim' "$f" || { echo "runtime is not debian:bookworm-slim"; errs=1; }
  grep -Eq '^USER +[^r0]' "$f" || { echo "runs as root"; errs=1; }
  grep -q '^EXPOSE 3000' "$f" || { echo "no EXPOSE 3000"; errs=1; }
  grep -q '^HEALTHCHECK.*127\.0\.0\.1:3000/healthz' "$f" || { echo "no HEALTHCHECK on 127.0.0.1:3000/healthz"; errs=1; }
  # The image must not bind beyond loopback by itself: that needs a token,
  # which only the deployment (compose) can supply.
  ! grep -v '^[[:space:]]*#' "$f" | grep -Eq 'CDC_HTTP_ADDR=0\.0\.0\.0|CDC_HTTP_AUTH' \
    || { echo "image binds 0.0.0.0 or switches auth off"; errs=1; }
  grep -qx 'target/' "$ROOT/.dockerignore" || { echo ".dockerignore lacks target/"; errs=1; }
  grep -qx '.git/' "$ROOT/.dockerignore" || { echo ".dockerignore lacks .git/"; errs=1; }
  return $errs
}
check "Dockerfile: multi-stage, --locked build, slim non-root runtime, loopback default, healthcheck; .dockerignore" dockerfile_shape

# --- Prometheus --------------------------------------------------------------------
# promtool stats the credentials_file, which exists only in the container:
# check a copy whose token path points at a scratch file instead.
promtool_config() {
  local dir="$WORK/prometheus"
  mkdir -p "$dir"
  cp "$ROOT"/deploy/prometheus/*.yml "$dir/"
  printf 'token' >"$dir/metrics-token"
  python3 - "$dir" <<'PY' || return 1
import sys, yaml
d = sys.argv[1]
cfg = yaml.safe_load(open(f"{d}/prometheus.yml"))
for job in cfg["scrape_configs"]:
    if (job.get("authorization") or {}).get("credentials_file"):
        job["authorization"]["credentials_file"] = f"{d}/metrics-token"
yaml.safe_dump(cfg, open(f"{d}/prometheus.yml", "w"))
PY
  promtool check config "$dir/prometheus.yml"
}
check "promtool check config deploy/prometheus/prometheus.yml (token file swapped for a scratch one)" promtool_config
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
published = {int(p["published"]) if isinstance(p, dict) else int(str(p).split("/")[0].split(":")[-2])
             for s in svcs.values() for p in s.get("ports", [])}
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
# In-network addresses (for `docker compose run --rm curl`) name services;
# Elasticsearch speaks only https; the consumer's /metrics needs its token;
# Prometheus has no HTTP reload.
for host in set(re.findall(r"https?://([a-z][a-z0-9-]*):\d+", text)) - {"localhost"}:
    if host not in svcs:
        errs.append(f"{host}: no such service")
if re.search(r"http://elasticsearch\b", text):
    errs.append("http://elasticsearch: Elasticsearch serves https only")
# The consumer's port is published by the `dashboard` proxy.
consumer_ports = {int(p["published"]) if isinstance(p, dict) else int(str(p).split("/")[0].split(":")[-2])
                  for p in svcs.get("dashboard", {}).get("ports", [])}
for line in text.splitlines():
    if any(re.search(rf"(localhost|127\.0\.0\.1):{port}/metrics", line) for port in consumer_ports) \
            and 'Authorization: Bearer $CDC_METRICS_TOKEN' not in line:
        errs.append(f"consumer /metrics without the scrape token: {line.strip()}")
if "/-/reload" in text:
    errs.append("/-/reload: Prometheus runs without --web.enable-lifecycle; use docker compose kill -s HUP prometheus")
for sec in ("No events in Elasticsearch", "Metrics not increasing", "Services up but nothing flows"):
    if not re.search(rf"^#+ {sec}$", text, re.M):
        errs.append(f"missing checklist: {sec}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "runbook: checklists present; commands name existing services, published ports, https ES, metrics token" runbook_targets_stack

# docs/stack.md must list each published port with its address and credential.
stack_doc_ports() {
  python3 - "$ROOT" "$WORK/compose.resolved.yml" <<'PY'
import re, sys, yaml
root = sys.argv[1]
cfg = yaml.safe_load(open(sys.argv[2])) or sys.exit("no resolved compose file")
text = open(f"{root}/docs/stack.md").read()
errs = []
for name, s in cfg["services"].items():
    for p in s.get("ports", []):
        port = int(p["published"]) if isinstance(p, dict) else int(str(p).split("/")[0].split(":")[-2])
        row = next((l for l in text.splitlines() if l.startswith(f"| {name} |") and f"`127.0.0.1:{port}`" in l), None)
        if not row:
            errs.append(f"docs/stack.md: no row `| {name} | `127.0.0.1:{port}` ...`")
        elif not re.search(r"PASSWORD|TOKEN", row):
            errs.append(f"docs/stack.md: the row for {name} names no credential")
for v in ("CDC_METRICS_TOKEN", "cp .env.example .env"):
    if v not in text:
        errs.append(f"docs/stack.md does not mention {v}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "docs/stack.md: every published port with its 127.0.0.1 address and credential; how to create .env" stack_doc_ports

# --- Grafana -----------------------------------------------------------------------
# Extracts every PromQL expression from the dashboard into $WORK/exprs.txt.
grafana_files() {
  python3 - "$ROOT" "$WORK/exprs.txt" "$WORK" <<'PY'
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
if es.get("url") != "https://elasticsearch:9200" or es.get("jsonData", {}).get("index") != "cdc-events*" \
        or es.get("jsonData", {}).get("timeField") != "@timestamp":
    errs.append("Elasticsearch data source uid elasticsearch (https, cdc-events*, @timestamp) missing")
# Read-only user, TLS verified against the stack's CA (mounted from es-ca).
cfg = yaml.safe_load(open(f"{sys.argv[3]}/compose.resolved.yml")) or {}
graf = (cfg.get("services") or {}).get("grafana", {})
if es.get("basicAuthUser") != "cdc_reader":
    errs.append(f"Elasticsearch data source logs in as {es.get('basicAuthUser')}, want cdc_reader")
sj = es.get("secureJsonData", {})
pw = sj.get("basicAuthPassword", "")
if not pw.startswith("${") or pw[2:-1] not in (graf.get("environment") or {}):
    errs.append(f"Elasticsearch data source password {pw} is not a variable in grafana's environment")
if not es.get("jsonData", {}).get("tlsAuthWithCACert") or es.get("jsonData", {}).get("tlsSkipVerify"):
    errs.append("Elasticsearch data source does not verify TLS with a CA")
ca = sj.get("tlsCACert", "")
mounts = [str(v).split(":") for v in graf.get("volumes", [])]
if not (ca.startswith("$__file{") and any(m[0] == "es-ca" and ca[len("$__file{"):-1].startswith(m[1] + "/") for m in mounts)):
    errs.append(f"tlsCACert {ca} is not $__file{{...}} under grafana's es-ca mount")
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

# --- scaling: `docker compose up --scale consumer=N` (issue 16) ----------------------
# The consumer service must run as N identical instances: nothing on it that
# only one container can have, the dashboard published by one proxy that
# finds every instance, Prometheus scraping each one, the partition count
# (the ceiling of useful instances) set in one place, and every consumer
# panel in Grafana adding the instances up.
consumer_scales() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT" <<'PY'
import re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
root = sys.argv[2]
svcs = cfg["services"]
c = svcs.get("consumer", {})
errs = []
# A host port or a container name exists once per host: the second
# instance would fail to start.
for key in ("ports", "container_name", "hostname"):
    if c.get(key):
        errs.append(f"consumer: {key} {c[key]} (one per host; --scale needs none)")
if (c.get("deploy") or {}).get("replicas") not in (None, 1):
    errs.append("consumer: deploy.replicas set; scale with --scale instead")
example = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", open(f"{root}/.env.example").read(), re.M))
if example.get("CDC_KAFKA_INSTANCE_ID", ""):
    errs.append("CDC_KAFKA_INSTANCE_ID is set in .env.example: scaled instances would share one static member id")
if (c.get("environment") or {}).get("CDC_KAFKA_INSTANCE_ID"):
    errs.append("consumer: CDC_KAFKA_INSTANCE_ID resolves non-empty")
# The dashboard proxy: published, waits for the consumers, re-resolves them.
d = svcs.get("dashboard", {})
if ((d.get("depends_on") or {}).get("consumer") or {}).get("condition") != "service_healthy":
    errs.append("dashboard: should depend on consumer with service_healthy")
if not d.get("ports"):
    errs.append("dashboard: publishes no port")
conf_path = next((str(v).split(":")[0] for v in d.get("volumes", [])
                  if str(v).split(":")[1:2] == ["/etc/nginx/conf.d/default.conf"]), None)
conf = open(conf_path).read() if conf_path else ""
port = str((c.get("environment") or {}).get("CDC_HTTP_ADDR", "")).rsplit(":", 1)[-1]
# A literal proxy_pass host is resolved once at start: instances added later
# would never get a request. A variable is resolved per request.
if not re.search(r"resolver\s+127\.0\.0\.11\b", conf) \
        or not re.search(rf"set\s+\$(\w+)\s+http://consumer:{port};", conf) \
        or not re.search(r"proxy_pass\s+\$\w+;", conf):
    errs.append(f"dashboard: {conf_path} does not proxy to http://consumer:{port} through a variable "
                "with Docker's resolver (127.0.0.11)")
# The guard against DNS rebinding that the consumer leaves to the proxy.
names = re.findall(r"^\s*server_name\s+([^;]*);", conf, re.M)
if not re.search(r"listen\s+\d+\s+default_server;\s*server_name\s+_;\s*return\s+421;", conf) \
        or sorted(n.split() for n in names) != [["127.0.0.1", "localhost"], ["_"]]:
    errs.append(f"dashboard: {conf_path} does not answer 421 to Hosts other than 127.0.0.1 and localhost "
                f"(server_name {names})")
listen = re.findall(r"listen\s+(\d+)", conf)
published = [str(p["target"]) if isinstance(p, dict) else str(p).split("/")[0].split(":")[-1] for p in d.get("ports", [])]
if not listen or any(p not in listen for p in published):
    errs.append(f"dashboard: publishes {published}, nginx listens on {listen}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "scaling: consumer has no ports/container_name/instance id; dashboard proxy publishes it, re-resolves consumer, 421 to other Hosts" consumer_scales

prometheus_discovers_instances() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
root = sys.argv[2]
prom = yaml.safe_load(open(f"{root}/deploy/prometheus/prometheus.yml"))
errs = []
job = next((j for j in prom["scrape_configs"] if j["job_name"] == "cdc-monitor"), None)
if job is None:
    sys.exit("no cdc-monitor job")
port = int(str(cfg["services"]["consumer"]["environment"]["CDC_HTTP_ADDR"]).rsplit(":", 1)[-1])
if job.get("static_configs"):
    errs.append(f"cdc-monitor job has static_configs {job['static_configs']}: finds one instance only")
sd = job.get("dns_sd_configs") or []
if not any("consumer" in (s.get("names") or []) and s.get("type", "SRV") == "A" and s.get("port") == port
           for s in sd):
    errs.append(f"cdc-monitor job: want dns_sd_configs names [consumer], type A, port {port}; have {sd}")
if "consumer" not in cfg["services"]:
    errs.append("no consumer service for the DNS name")
if not (job.get("authorization") or {}).get("credentials_file"):
    errs.append("cdc-monitor job: no scrape token (authorization.credentials_file)")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "scaling: Prometheus finds every consumer instance (dns_sd_configs on the service name, type A, its port, with the token)" prometheus_discovers_instances

partitions_set_once() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT" <<'PY'
import re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
root = sys.argv[2]
raw = open(f"{root}/docker-compose.yml").read()
example = open(f"{root}/.env.example").read()
errs = []
# One variable sets it, used by topic creation...
if len(re.findall(r"\$\{CDC_TOPIC_PARTITIONS\b", raw)) != 1:
    errs.append("CDC_TOPIC_PARTITIONS should be read once in docker-compose.yml (kafka-init)")
ki = cfg["services"].get("kafka-init", {})
if "--partitions" not in " ".join(ki.get("command") or []) or "$CDC_TOPIC_PARTITIONS" not in " ".join(ki.get("command") or []):
    errs.append("kafka-init does not create the topics with --partitions \"$CDC_TOPIC_PARTITIONS\"")
if not re.fullmatch(r"[1-9][0-9]*", str((ki.get("environment") or {}).get("CDC_TOPIC_PARTITIONS", ""))):
    errs.append(f"kafka-init: CDC_TOPIC_PARTITIONS resolves to {(ki.get('environment') or {}).get('CDC_TOPIC_PARTITIONS')!r}")
# ...and nowhere else: no second count that could disagree with it.
for name, text in [("docker-compose.yml", raw), (".env.example", example)]:
    for m in re.finditer(r"partition-num=\d+|--partitions[ =]+\d+|num\.partitions", text):
        errs.append(f"{name}: {m.group(0)} (a second partition count; TiCDC takes the topic's)")
# ...and documented as the ceiling of useful consumer instances.
doc = re.search(r"((?:^#.*\n)+)CDC_TOPIC_PARTITIONS=", example, re.M)
if not doc or not re.search(r"--scale consumer", doc.group(1)):
    errs.append(".env.example: CDC_TOPIC_PARTITIONS is not documented as the ceiling of --scale consumer=N")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "scaling: the partition count is set once (CDC_TOPIC_PARTITIONS, kafka-init), documented as the ceiling of consumers" partitions_set_once

# Each instance exports its own series; a panel that does not aggregate would
# show one line per instance, or whichever instance came first.
grafana_sums_instances() {
  python3 - "$WORK/exprs.txt" <<'PY'
import re, sys
agg = r"(?:sum|max|min|avg|count|topk|bottomk|quantile)"
head = re.compile(rf"^\s*(?:histogram_quantile\(\s*[0-9.]+\s*,\s*)?{agg}\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(")
errs = []
exprs = [e for e in open(sys.argv[1]).read().splitlines() if e.strip()]
consumer = [e for e in exprs if re.search(r'\bcdc_[a-z0-9_]+|job="cdc-monitor"', e)]
if not consumer:
    errs.append("no consumer queries found")
for e in consumer:
    # Every part of an `or`/`and` must aggregate; vector(0) is a constant.
    for part in re.split(r"\s+(?:or|and|unless)\s+", e):
        if part.strip().startswith("vector("):
            continue
        if not head.match(part):
            errs.append(f"not aggregated over instances: {e}")
            break
    if re.search(r"\bby\s*\([^)]*\binstance\b", e) and "cdc_binlog_" not in e:
        errs.append(f"split by instance: {e}")
print(f"{len(consumer)} consumer queries")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "scaling: every Grafana query on consumer metrics aggregates over instances (sum/max/... by)" grafana_sums_instances

es_index_followed() {
  python3 - "$WORK/compose.resolved.yml" "$ROOT" <<'PY'
import fnmatch, re, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or sys.exit("no resolved compose file")
root = sys.argv[2]
svcs = cfg["services"]
env = lambda n: svcs.get(n, {}).get("environment") or {}
c = env("consumer")
errs = []
if c.get("CDC_ES_MODE") != "data_stream":
    errs.append(f"consumer: CDC_ES_MODE is {c.get('CDC_ES_MODE')!r}, want data_stream")
if c.get("CDC_ES_STATE_INDEX") != "cdc-state":
    errs.append(f"consumer: CDC_ES_STATE_INDEX is {c.get('CDC_ES_STATE_INDEX')!r}, want cdc-state")
# The jobs that grant and view the events and the state get the consumer's names.
for name, key in [("es-setup", "CDC_ES_INDEX"), ("kibana-setup", "CDC_ES_INDEX"), ("es-setup", "CDC_ES_STATE_INDEX")]:
    if env(name).get(key) != c.get(key):
        errs.append(f"{name}: {key} is {env(name).get(key)!r}, the consumer's is {c.get(key)!r}")
# Grafana's literal index pattern covers the data stream (or the routed
# indices: each placeholder of the template a `*`).
ds = yaml.safe_load(open(f"{root}/deploy/grafana/provisioning/datasources/datasources.yml"))
es = next(d for d in ds["datasources"] if d["uid"] == "elasticsearch")
pattern = es["jsonData"]["index"]
events = re.sub(r"\{[^}]*\}", "*", c.get("CDC_ES_INDEX", ""))
if not fnmatch.fnmatchcase(events, pattern) and events != pattern:
    errs.append(f"Grafana's index {pattern} does not cover the consumer's {events}")
if fnmatch.fnmatchcase(c.get("CDC_ES_STATE_INDEX", ""), pattern):
    errs.append(f"Grafana's index {pattern} also matches the state index {c.get('CDC_ES_STATE_INDEX')}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "elasticsearch: consumer in data_stream mode with state index cdc-state; es-setup, Kibana and Grafana follow its index" es_index_followed

# --- db/init.sql on MariaDB ---------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_mariadb() {
  local dir="$WORK/mariadb" port
  mkdir -p "$dir"
  port=$(free_port)
  MARIADB_PORT=$port
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

# db/init.sh as db-init runs it: root with a password, then the user `app`.
# Grant tables are switched on here (FLUSH PRIVILEGES ends --skip-grant-tables),
# and `mysql` on PATH is MariaDB's client on the private socket, so the
# script's own --host/--port are dropped.
db_init_least_privilege() {
  local bin="$WORK/mysql-bin" pw="a'pp\pw\$x" out
  mkdir -p "$bin"
  cat >"$bin/mysql" <<SH
#!/usr/bin/env bash
args=()
for a in "\$@"; do case "\$a" in --host=*|--port=*) ;; *) args+=("\$a") ;; esac; done
exec mariadb --no-defaults --socket="$MARIADB_SOCKET" "\${args[@]}"
SH
  chmod +x "$bin/mysql"
  # Anonymous accounts would shadow app@% for local connections.
  sql -e "FLUSH PRIVILEGES; DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES;
          ALTER USER 'root'@'localhost' IDENTIFIED BY 'root-pw'" || return 1
  if out=$(PATH="$bin:$PATH" TIDB_ROOT_PASSWORD=wrong APPDB_PASSWORD=x bash "$ROOT/db/init.sh" 2>&1); then
    echo "succeeded with a wrong root password"
    return 1
  fi
  grep -q 'first bootstrap' <<<"$out" || { echo "$out"; return 1; }
  for _ in 1 2; do
    PATH="$bin:$PATH" TIDB_ROOT_PASSWORD=root-pw APPDB_PASSWORD="$pw" bash "$ROOT/db/init.sh" >/dev/null || return 1
  done
  app() { MYSQL_PWD="$pw" mariadb --no-defaults --protocol=TCP --host=127.0.0.1 --port="$MARIADB_PORT" --user=app --batch --skip-column-names "$@"; }
  [[ $(app -e "SELECT COUNT(*) FROM appdb.users") == 1 ]] || { echo "app cannot read appdb.users"; return 1; }
  app -e "INSERT INTO appdb.users (username, password, email) VALUES ('t', 'x', 't@example.com');
          UPDATE appdb.users SET email = 'u@example.com' WHERE username = 't';
          DELETE FROM appdb.users WHERE username = 't'" || { echo "app cannot write appdb.users"; return 1; }
  local stmt
  for stmt in "CREATE TABLE appdb.extra (id INT)" "DROP TABLE appdb.users" "SELECT COUNT(*) FROM mysql.user" \
      "CREATE DATABASE other" "CREATE USER 'x'@'%'"; do
    if app -e "$stmt" >/dev/null 2>&1; then
      echo "app may: $stmt"
      return 1
    fi
  done
}
check "db/init.sh: needs the root password; app has SELECT/INSERT/UPDATE/DELETE on appdb only; reruns" db_init_least_privilege

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
    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.startswith("/_security/"):
            return self.do_POST_es(body)
        self.reply(404, {})
    def do_POST_es(self, body):
        # Elasticsearch's security API (password, role, user), for
        # deploy/elasticsearch/setup.sh.
        with open(log, "a") as f:
            f.write(f"ES {self.command} {self.path} auth={self.headers.get('Authorization', '')} {json.dumps(body, sort_keys=True)}\n")
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

kibana_setup_routed() {
  local log="$WORK/kibana-requests.log"
  [[ -n "$KIBANA_STUB_PORT" ]] || { echo "stub not running"; return 1; }
  : >"$log"
  KIBANA_URL="http://127.0.0.1:$KIBANA_STUB_PORT" KIBANA_USERNAME=elastic KIBANA_PASSWORD=test KIBANA_SETUP_TIMEOUT=20 \
    CDC_ES_INDEX='cdc-events-{yyyy.MM.dd}' bash "$ROOT/deploy/kibana/setup.sh" || return 1
  python3 - "$log" <<'PY'
import json, sys
posts = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("POST")]
dv = [json.loads(l.split(" ", 3)[3])["data_view"] for l in posts if l.startswith("POST /api/data_views/data_view ")]
ss = [json.loads(l.split(" ", 3)[3]) for l in posts if l.startswith("POST /api/saved_objects/search/")]
errs = []
if [(v["id"], v["title"]) for v in dv] != [("cdc-events-yyyy.mm.dd", "cdc-events-*")]:
    errs.append(f"data view {dv}, want id cdc-events-yyyy.mm.dd over cdc-events-*")
if not ss or ss[0]["references"][0]["id"] != "cdc-events-yyyy.mm.dd":
    errs.append(f"saved search {ss}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "kibana setup.sh: a routing template's data view is its wildcard (cdc-events-{yyyy.MM.dd} -> cdc-events-*)" kibana_setup_routed

es_setup_users() {
  local log="$WORK/kibana-requests.log"
  [[ -n "$KIBANA_STUB_PORT" ]] || { echo "stub not running"; return 1; }
  : >"$log"
  # A quote and a backslash in a password must arrive intact in the JSON.
  ES_URL="http://127.0.0.1:$KIBANA_STUB_PORT" ES_SETUP_TIMEOUT=10 ELASTIC_PASSWORD=el-pw KIBANA_SYSTEM_PASSWORD=kib-pw \
    CDC_ES_WRITER_PASSWORD='wr"it\er' CDC_ES_READER_PASSWORD=rd-pw CDC_ES_INDEX=cdc-events CDC_ES_STATE_INDEX=cdc-state \
    bash "$ROOT/deploy/elasticsearch/setup.sh" || return 1
  python3 - "$log" "Basic $(printf 'elastic:el-pw' | base64)" <<'PY'
import json, re, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("ES ")]
auth = sys.argv[2]
req = {}
errs = []
for l in lines:
    method, path, a, body = re.match(r"ES (\S+) (\S+) auth=(.*?) (\{.*)$", l).groups()
    if a != auth:
        errs.append(f"{method} {path} not as elastic: {a}")
    req[(method, path)] = json.loads(body)
def get(m, p):
    if (m, p) not in req:
        errs.append(f"no {m} {p}")
        return {}
    return req[(m, p)]
if get("POST", "/_security/user/kibana_system/_password").get("password") != "kib-pw":
    errs.append("kibana_system password not set")
w = get("PUT", "/_security/role/cdc_writer")
# manage_ilm: the data-stream mode's ILM policy.
if set(w.get("cluster", [])) != {"monitor", "manage_index_templates", "manage_ilm"}:
    errs.append(f"cdc_writer cluster privileges {w.get('cluster')}")
wi = (w.get("indices") or [{}])[0]
if set(wi.get("names", [])) != {"cdc-events", "cdc-events-*"} or set(wi.get("privileges", [])) != {"create_doc", "create_index", "auto_configure", "read", "view_index_metadata"}:
    errs.append(f"cdc_writer index privileges {wi}")
# The state index is indexed into and deleted from, one document per row.
ws = (w.get("indices") or [{}, {}])[1:2] or [{}]
if ws[0].get("names") != ["cdc-state"] or set(ws[0].get("privileges", [])) != {"index", "delete", "create_index", "read"}:
    errs.append(f"cdc_writer state index privileges {ws[0]}")
if len(w.get("indices") or []) != 2:
    errs.append(f"cdc_writer has {len(w.get('indices') or [])} index entries, want events and state")
r = get("PUT", "/_security/role/cdc_reader")
ri = (r.get("indices") or [{}])[0]
if set(r.get("cluster", [])) != {"monitor"} or set(ri.get("privileges", [])) != {"read", "view_index_metadata"}:
    errs.append(f"cdc_reader is not read-only: {r}")
rs = (r.get("indices") or [{}, {}])[1:2] or [{}]
if rs[0].get("names") != ["cdc-state"] or set(rs[0].get("privileges", [])) != {"read", "view_index_metadata"}:
    errs.append(f"cdc_reader state index privileges {rs[0]}")
if any(p not in ("read",) for a in r.get("applications", []) for p in a.get("privileges", [])):
    errs.append(f"cdc_reader has more than read in Kibana: {r.get('applications')}")
u = get("PUT", "/_security/user/cdc_writer")
if u.get("password") != 'wr"it\\er' or u.get("roles") != ["cdc_writer"]:
    errs.append(f"cdc_writer user {u}")
u = get("PUT", "/_security/user/cdc_reader")
if u.get("password") != "rd-pw" or u.get("roles") != ["cdc_reader"]:
    errs.append(f"cdc_reader user {u}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "elasticsearch setup.sh: kibana_system password, roles and users cdc_writer/cdc_reader, as elastic" es_setup_users

es_setup_routed() {
  local log="$WORK/kibana-requests.log"
  [[ -n "$KIBANA_STUB_PORT" ]] || { echo "stub not running"; return 1; }
  : >"$log"
  ES_URL="http://127.0.0.1:$KIBANA_STUB_PORT" ES_SETUP_TIMEOUT=10 ELASTIC_PASSWORD=el-pw KIBANA_SYSTEM_PASSWORD=kib-pw \
    CDC_ES_WRITER_PASSWORD=wr-pw CDC_ES_READER_PASSWORD=rd-pw CDC_ES_INDEX='cdc-{database}-{table}' \
    bash "$ROOT/deploy/elasticsearch/setup.sh" || return 1
  python3 - "$log" <<'PY'
import json, re, sys
roles = {}
for l in open(sys.argv[1]).read().splitlines():
    m = re.match(r"ES PUT /_security/role/(\S+) auth=.*? (\{.*)$", l)
    if m:
        roles[m.group(1)] = json.loads(m.group(2))
errs = [f"{name}: {r}" for name, r in roles.items()
        if not {"cdc-*-*"} <= set(r["indices"][0]["names"]) or any("{" in n for n in r["indices"][0]["names"])]
if set(roles) != {"cdc_writer", "cdc_reader"}:
    errs.append(f"roles {sorted(roles)}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check "elasticsearch setup.sh: a routing template's roles name its wildcard (cdc-{database}-{table} -> cdc-*-*)" es_setup_routed
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
# Grafana on free ports. The consumer, Kibana and Grafana get the published
# *_HOST_PORT variables in the env file. TiCDC, Elasticsearch and Prometheus
# are reachable only as the stack has them: through `compose run curl`, which
# the stand-in turns into the host's curl with --connect-to their stub ports
# and --cacert a test CA (the curl service's entrypoint), Elasticsearch over
# TLS with a certificate for `elasticsearch`. The stubs check the tokens and
# passwords from the env file. The stand-in records each compose call and,
# for each SQL statement, marks that op as "replicated" so the stubs start
# reporting it.
E2E_STUB_PID=
start_e2e_stubs() {
  local dir="$WORK/e2e" deadline=$((SECONDS + 20)) name
  mkdir -p "$dir/bin" "$dir/tls"
  : >"$dir/docker.log"
  : >"$dir/replicated"
  : >"$dir/es-queries.log"
  {
    grep -v -E '^(CONSUMER|KIBANA|GRAFANA)_HOST_PORT=' "$ROOT/.env.example"
    for name in CONSUMER KIBANA GRAFANA; do
      echo "${name}_HOST_PORT=$(free_port)"
    done
  } >"$dir/e2e.env"
  for name in TICDC ES PROMETHEUS; do
    echo "${name}_PORT=$(free_port)"
  done >"$dir/ports"
  (
    cd "$dir/tls" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=e2e-test-ca -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj /CN=elasticsearch -keyout es.key -out es.csr
    printf 'subjectAltName=DNS:elasticsearch\n' >es.ext
    openssl x509 -req -in es.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile es.ext -out es.crt
  ) >"$dir/tls.log" 2>&1 || { cat "$dir/tls.log"; return 1; }
  cat >"$dir/bin/docker" <<'SH'
#!/usr/bin/env bash
# Stand-in for `docker`: logs the call. `compose ... up` keeps a copy of the
# env file (and fails if told to); `run ... curl ARGS` is the host's curl
# pointed at the stubs; `run ... mysql-client ... -e SQL` marks the op
# replicated.
dir=$(dirname "$(dirname "$0")")
echo "docker $*" >>"$dir/docker.log"
[[ "$1" == compose ]] || exit 1
args=("$@")
env_file= verb= service= i=0
for ((i = 1; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --env-file) env_file=${args[i + 1]}; i=$((i + 1)) ;;
    --project-directory | --project-name | -f) i=$((i + 1)) ;;
    -*) ;;
    *) verb=${args[i]}; break ;;
  esac
done
if [[ "$verb" == up ]]; then
  cp "$env_file" "$dir/up.env"
  [[ -f "$dir/fail-up" ]] && exit 1
  exit 0
fi
[[ "$verb" == run ]] || exit 0
for ((i = i + 1; i < ${#args[@]}; i++)); do
  [[ "${args[i]}" == -* ]] || { service=${args[i]}; break; }
done
rest=("${args[@]:i+1}")
if [[ "$service" == curl ]]; then
  port() { grep "^$1_PORT=" "$dir/ports" | cut -d= -f2; }
  exec curl --cacert "$dir/tls/ca.crt" \
    --connect-to "ticdc:8300:127.0.0.1:$(port TICDC)" \
    --connect-to "elasticsearch:9200:127.0.0.1:$(port ES)" \
    --connect-to "prometheus:9090:127.0.0.1:$(port PROMETHEUS)" "${rest[@]}"
fi
sql=
for ((i = 0; i < ${#rest[@]}; i++)); do
  [[ "${rest[i]}" == -e ]] && sql=${rest[i + 1]}
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
import base64, json, re, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
d = sys.argv[1]
def kv(path):
    return dict(l.split("=", 1) for l in open(path).read().splitlines() if "=" in l and not l.startswith("#"))
env, ports = kv(f"{d}/e2e.env"), kv(f"{d}/ports")
elastic = "Basic " + base64.b64encode(f"elastic:{env['ELASTIC_PASSWORD']}".encode()).decode()
scrape = {f"Bearer {env['CDC_METRICS_TOKEN']}", f"Bearer {env['CDC_HTTP_TOKEN']}"}
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
            if role == "es" and self.headers.get("Authorization") != elastic: return self.reply(401, {})
            if role == "es" and p == "/_cluster/health": return self.reply(200, {"status": "green"})
            if role == "consumer" and p == "/readyz": return self.reply(200, {"status": "ready"})
            if role == "consumer" and p == "/metrics":
                if self.headers.get("Authorization") not in scrape: return self.reply(401, "a token is required\n", "text/plain")
                return self.reply(200, 'cdc_build_info{version="0.1.0"} 1\n', "text/plain")
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
            if role == "es" and self.headers.get("Authorization") != elastic: return self.reply(401, {})
            if role == "es" and self.path.startswith("/cdc-events/_search"):
                with open(f"{d}/es-queries.log", "a") as f: f.write(json.dumps(json.loads(body)) + "\n")
                terms = {k: v for t in json.loads(body)["query"]["bool"]["filter"] for k, v in t["term"].items()}
                n = int(terms.get("table") == "users" and terms.get("pk.id") == "42" and terms.get("op") in replicated())
                return self.reply(200, {"hits": {"total": {"value": n}}})
            self.reply(404, {})
    return H
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(f"{d}/tls/es.crt", f"{d}/tls/es.key")
for role, port in [("consumer", env["CONSUMER_HOST_PORT"]), ("kibana", env["KIBANA_HOST_PORT"]),
                   ("grafana", env["GRAFANA_HOST_PORT"]), ("ticdc", ports["TICDC_PORT"]),
                   ("es", ports["ES_PORT"]), ("prometheus", ports["PROMETHEUS_PORT"])]:
    srv = ThreadingHTTPServer(("127.0.0.1", int(port)), handler(role))
    if role == "es":
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
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
  env PATH="$dir/bin:$PATH" E2E_ENV_FILE="${1:-$dir/e2e.env}" timeout 120 bash "$ROOT/scripts/e2e-compose.sh"
}

e2e_passes_on_fakes() {
  local dir="$WORK/e2e" out
  [[ -n "$E2E_STUB_PID" ]] || { echo "stubs not running"; return 1; }
  rm -f "$dir/drop-delete" "$dir/fail-up"
  out=$(run_e2e_fake 2>&1) || { echo "$out"; return 1; }
  grep -q 'PASS: insert, update and delete' <<<"$out" || { echo "$out"; return 1; }
  grep -q 'compose .*up -d --build --wait' "$dir/docker.log" || { echo "no up --wait"; return 1; }
  grep -q 'compose .*down -v' "$dir/docker.log" || { echo "no down -v"; return 1; }
  for op in insert update delete; do
    grep -q "\"op\": \"$op\"" "$dir/es-queries.log" || { echo "never asked ES for $op"; return 1; }
  done
  grep -q 'refuses a request without the token: ok' <<<"$out" || { echo "never checked /metrics without a token"; return 1; }
  for url in http://ticdc:8300/ https://elasticsearch:9200/ http://prometheus:9090/; do
    grep -q "compose .* run --rm -T curl .*$url" "$dir/docker.log" || { echo "never reached $url through the curl service"; return 1; }
  done
}
e2e_fails_on_missing_change() {
  local dir="$WORK/e2e" out start=$SECONDS
  [[ -n "$E2E_STUB_PID" ]] || { echo "stubs not running"; return 1; }
  rm -f "$dir/fail-up"
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
# Without an env file the script writes its own from .env.example: every
# secret replaced by a fresh value (the stand-in's `up` keeps a copy, then
# fails, so nothing else runs), everything else unchanged.
e2e_generates_secrets() {
  local dir="$WORK/e2e" out
  rm -f "$dir/up.env"
  touch "$dir/fail-up"
  if out=$(run_e2e_fake "$dir/absent.env" 2>&1); then
    rm -f "$dir/fail-up"
    echo "passed although compose up failed"
    return 1
  fi
  rm -f "$dir/fail-up"
  [[ -f "$dir/up.env" ]] || { echo "$out"; echo "compose up was not called with an env file"; return 1; }
  python3 - "$ROOT/.env.example" "$dir/up.env" <<'PY'
import re, sys
def parse(p):
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", open(p).read(), re.M))
example, got = parse(sys.argv[1]), parse(sys.argv[2])
secrets = ("ELASTIC_PASSWORD", "KIBANA_SYSTEM_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "TIDB_ROOT_PASSWORD",
           "APPDB_PASSWORD", "CDC_ES_WRITER_PASSWORD", "CDC_ES_READER_PASSWORD", "CDC_HTTP_TOKEN", "CDC_METRICS_TOKEN")
errs = []
for v in secrets:
    if got.get(v, example[v]) == example[v]:
        errs.append(f"{v} kept the placeholder")
    elif len(got[v]) < 16 or not re.fullmatch(r"[A-Za-z0-9]+", got[v]):
        errs.append(f"{v}={got[v]!r}: want 16 or more letters and digits")
if len({got.get(v) for v in secrets}) != len(secrets):
    errs.append("two secrets have the same value")
for k in example:
    if k not in secrets and got.get(k) != example[k]:
        errs.append(f"{k} changed: {got.get(k)!r}")
print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
}
check_here "e2e stubs: fake docker and stub services started" start_e2e_stubs
check "e2e-compose.sh: passes against fakes; up --wait, ES queried per op, in-network services via curl, down -v" e2e_passes_on_fakes
check "e2e-compose.sh: fails within 10s budget when a change never reaches ES, still tears down" e2e_fails_on_missing_change
check "e2e-compose.sh: without an env file, a fresh random value for each of the nine secrets" e2e_generates_secrets
[[ -n "$E2E_STUB_PID" ]] && kill "$E2E_STUB_PID" 2>/dev/null && wait "$E2E_STUB_PID" 2>/dev/null
E2E_STUB_PID=

# --- shell scripts ---------------------------------------------------------------------------
shell_scripts() {
  local f errs=0 files
  mapfile -t files < <(find "$ROOT/scripts" "$ROOT/deploy" "$ROOT/db" -type f -name '*.sh' | sort)
  ((${#files[@]})) || { echo "no scripts found"; return 1; }
  for f in "${files[@]}"; do
    bash -n "$f" || errs=1
    shellcheck -x "$f" || errs=1
  done
  return $errs
}
check "scripts: bash -n and shellcheck on every script under scripts/, deploy/ and db/" shell_scripts

echo "stack: $PASSED passed, $FAILED failed"
((FAILED == 0))

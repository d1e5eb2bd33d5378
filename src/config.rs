//! One typed `Config`, built once from flags > `CDC_*` environment > TOML file > defaults.
//!
//! Every value is parsed here, at load time, into its final type; an error
//! names the key as the user wrote it (`--es-url`, `CDC_ES_URL` or `es.url` in
//! the file) and the value, and nothing has been started yet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::index_route::IndexRoute;

/// A configuration key: its TOML path, environment variable and flag.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Path in the TOML file, `section.name`.
    pub path: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Clap argument id (the flag is `--` + id with `_` as `-`).
    pub id: &'static str,
    /// Value when no layer sets one.
    pub default: Option<&'static str>,
}

macro_rules! keys {
    ($($id:ident => $path:literal, $env:literal, [$($default:literal)?], $help:literal;)*) => {
        /// Every key `run` accepts.
        pub const KEYS: &[Key] = &[$(Key { path: $path, env: $env, id: stringify!($id), default: keys!(@opt $($default)?) },)*];

        /// The configuration flags, each also read from its `CDC_*` variable.
        #[derive(Debug, Default, clap::Args)]
        pub struct ConfigArgs {
            $(
                #[arg(long, env = $env, hide_env_values = true, value_name = "VALUE",
                      help = concat!($help $(, " [default: ", $default, "]")?))]
                pub $id: Option<String>,
            )*
        }
    };
    (@opt) => { None };
    (@opt $d:literal) => { Some($d) };
}

keys! {
    source => "source", "CDC_SOURCE", ["kafka"], "Where changes come from: kafka (canal-json) or binlog (MySQL/MariaDB replication)";
    sink => "sink", "CDC_SINK", [], "Where changes go: elasticsearch, sqlite (embedded store) or kafka (canal-json producer); default elasticsearch when CDC_ES_URL is set, else sqlite";
    data_dir => "data_dir", "CDC_DATA_DIR", ["./cdc-data"], "Directory for the embedded store, binlog positions and dead letters without Kafka";
    mysql_url => "mysql.url", "CDC_MYSQL_URL", [], "Binlog source: mysql://USER:PASSWORD@HOST:PORT (secret); with the Kafka source, the upstream database (TiDB, MySQL, MariaDB) that reconcile reads";
    mysql_url_file => "mysql.url_file", "CDC_MYSQL_URL_FILE", [], "File holding CDC_MYSQL_URL";
    mysql_server_id => "mysql.server_id", "CDC_MYSQL_SERVER_ID", ["5799"], "Binlog source: replica server id, unique among the server's replicas";
    tables => "binlog.tables", "CDC_TABLES", ["*.*"], "Binlog source: tables to capture, comma-separated DB.TABLE patterns with * (system schemas are never captured); with the Kafka source, the tables reconcile compares";
    tables_exclude => "binlog.tables_exclude", "CDC_TABLES_EXCLUDE", [], "Binlog source: tables to skip, same patterns as CDC_TABLES";
    binlog_start => "binlog.start", "CDC_BINLOG_START", ["current"], "Binlog source, first start only: current (from now) or earliest (oldest binlog the server keeps)";
    snapshot => "snapshot.mode", "CDC_SNAPSHOT", ["initial"], "Binlog source, first start only: initial (read every captured table's existing rows, then stream from the matching binlog position) or never (stream only, from CDC_BINLOG_START)";
    binlog_ha => "binlog.ha", "CDC_BINLOG_HA", ["none"], "Binlog source with the Elasticsearch or Kafka sink: none (one instance), or kafka (instances sharing CDC_KAFKA_GROUP_ID elect one capturer through Kafka's group protocol; the others stand by and take over within CDC_KAFKA_SESSION_TIMEOUT)";
    binlog_position_topic => "binlog.position_topic", "CDC_BINLOG_POSITION_TOPIC", ["cdc-binlog-positions"], "With CDC_BINLOG_HA=kafka: compacted one-partition topic (created if absent) that holds the capture position and through whose partition the capturer is elected";
    snapshot_chunk_rows => "snapshot.chunk_rows", "CDC_SNAPSHOT_CHUNK_ROWS", ["10000"], "Binlog source snapshot: rows read per chunk (by primary key); progress is stored after each chunk";
    mysql_ssl_mode => "mysql.ssl_mode", "CDC_MYSQL_SSL_MODE", [], "TLS to CDC_MYSQL_URL (binlog source, or the Kafka source's upstream), as MySQL's --ssl-mode: disabled, preferred (TLS when the server offers it, certificate unchecked), required (TLS, certificate unchecked), verify_ca or verify_identity (default: verify_identity with CDC_MYSQL_SSL_CA, else preferred)";
    mysql_ssl_ca => "mysql.ssl_ca", "CDC_MYSQL_SSL_CA", [], "CDC_MYSQL_URL: PEM CA certificate(s) to verify the server with (default mode then verify_identity)";
    mysql_ssl_cert => "mysql.ssl_cert", "CDC_MYSQL_SSL_CERT", [], "CDC_MYSQL_URL: PEM client certificate (chain) for a user created REQUIRE X509; needs CDC_MYSQL_SSL_KEY";
    mysql_ssl_key => "mysql.ssl_key", "CDC_MYSQL_SSL_KEY", [], "CDC_MYSQL_URL: PEM private key of CDC_MYSQL_SSL_CERT";
    store_retention => "store.retention", "CDC_STORE_RETENTION", ["7d"], "Embedded store: events older than this are deleted";
    store_max_bytes => "store.max_bytes", "CDC_STORE_MAX_BYTES", ["1GiB"], "Embedded store: oldest events are deleted so that events.db and its WAL stay within this size on disk";
    reconcile_interval => "reconcile.interval", "CDC_RECONCILE_INTERVAL", ["off"], "Compare the source database (binlog source, or the Kafka source with CDC_MYSQL_URL) with the captured state every interval inside run (e.g. 6h), exporting cdc_reconcile_rows and cdc_reconcile_last_success_timestamp_seconds; off by default";
    state_tombstone_retention => "state.tombstone_retention", "CDC_STATE_TOMBSTONE_RETENTION", ["7d"], "Current state: how long a deleted row's tombstone (its version) is kept, so a late replay of an older change cannot bring it back";
    kafka_brokers => "kafka.brokers", "CDC_KAFKA_BROKERS", ["kafka:9092"], "Kafka bootstrap servers, comma-separated";
    kafka_topics => "kafka.topics", "CDC_KAFKA_TOPICS", ["tidb-cdc"], "Topics to consume, comma-separated";
    kafka_group_id => "kafka.group_id", "CDC_KAFKA_GROUP_ID", ["cdc-consumer-group"], "Consumer group id";
    kafka_instance_id => "kafka.instance_id", "CDC_KAFKA_INSTANCE_ID", [], "group.instance.id for static membership (restarts in place keep their partitions)";
    kafka_auto_offset_reset => "kafka.auto_offset_reset", "CDC_KAFKA_AUTO_OFFSET_RESET", ["earliest"], "Where a group with no committed offset starts: earliest or latest";
    kafka_session_timeout => "kafka.session_timeout", "CDC_KAFKA_SESSION_TIMEOUT", ["10s"], "Group session timeout; a crashed member's partitions move after this";
    kafka_commit_interval => "kafka.commit_interval", "CDC_KAFKA_COMMIT_INTERVAL", ["1s"], "How often acknowledged offsets are committed";
    kafka_fetch_wait_max => "kafka.fetch_wait_max", "CDC_KAFKA_FETCH_WAIT_MAX", ["100ms"], "Longest time a fetch waits at the broker for data (latency when traffic is low)";
    kafka_queue_max_kbytes => "kafka.queue_max_kbytes", "CDC_KAFKA_QUEUE_MAX_KBYTES", [], "librdkafka prefetch queue cap per partition, in KiB (default: a quarter of CDC_PIPELINE_MAX_BYTES)";
    kafka_message_max_bytes => "kafka.message_max_bytes", "CDC_KAFKA_MESSAGE_MAX_BYTES", ["10MiB"], "Largest message taken from Kafka and produced to it (the dead-letter and canal-json producers' message.max.bytes follow it)";
    kafka_security_protocol => "kafka.security_protocol", "CDC_KAFKA_SECURITY_PROTOCOL", [], "security.protocol: plaintext, ssl, sasl_plaintext, sasl_ssl";
    kafka_sasl_mechanism => "kafka.sasl_mechanism", "CDC_KAFKA_SASL_MECHANISM", [], "sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512";
    kafka_sasl_username => "kafka.sasl_username", "CDC_KAFKA_SASL_USERNAME", [], "sasl.username";
    kafka_sasl_password => "kafka.sasl_password", "CDC_KAFKA_SASL_PASSWORD", [], "sasl.password (secret)";
    kafka_sasl_password_file => "kafka.sasl_password_file", "CDC_KAFKA_SASL_PASSWORD_FILE", [], "File holding CDC_KAFKA_SASL_PASSWORD";
    kafka_ssl_ca_location => "kafka.ssl_ca_location", "CDC_KAFKA_SSL_CA_LOCATION", [], "ssl.ca.location: CA bundle for TLS to the brokers";
    kafka_properties => "kafka.properties", "CDC_KAFKA_PROPERTIES", [], "Extra librdkafka properties, key=value,key=value (TOML: [kafka.properties] table)";
    dlq_topic => "kafka.dlq_topic", "CDC_DLQ_TOPIC", ["tidb-cdc-dlq"], "Dead-letter topic for messages that cannot be decoded or stored";
    mask_columns => "mask.columns", "CDC_MASK_COLUMNS", ["*.*.*password*,*.*.*passwd*,*.*.*secret*,*.*.*token*"], "Columns whose values are replaced by a keyed hash before any sink, comma-separated DB.TABLE.COLUMN patterns with * (column names match case-insensitively); empty turns masking off";
    mask_key => "mask.key", "CDC_MASK_KEY", [], "Key of the masking hash (HMAC-SHA256), at least 16 bytes; default: a random key generated once and kept in DATA_DIR/mask.key (secret)";
    mask_key_file => "mask.key_file", "CDC_MASK_KEY_FILE", [], "File holding CDC_MASK_KEY";
    dlq_keep_original => "kafka.dlq_keep_original", "CDC_DLQ_KEEP_ORIGINAL", [], "Dead letters keep the source message's original bytes, masked columns in the clear (true or false; default true for the Kafka source, which has them; binlog letters are always the masked row)";
    es_url => "es.url", "CDC_ES_URL", [], "Elasticsearch URL, or several nodes' URLs comma-separated (requests spread over the healthy ones); when unset, events go to the embedded store";
    es_index => "es.index", "CDC_ES_INDEX", ["cdc-events"], "Elasticsearch index, or a template routing each event by {database}, {table} and its commit day {yyyy.MM.dd} (or month {yyyy.MM}, UTC), e.g. cdc-{database}-{table}; names are lowercased, other characters than a-z 0-9 _ - . become _; must start with a fixed prefix";
    es_username => "es.username", "CDC_ES_USERNAME", [], "Elasticsearch basic-auth user";
    es_password => "es.password", "CDC_ES_PASSWORD", [], "Elasticsearch basic-auth password (secret)";
    es_password_file => "es.password_file", "CDC_ES_PASSWORD_FILE", [], "File holding CDC_ES_PASSWORD";
    es_api_key => "es.api_key", "CDC_ES_API_KEY", [], "Elasticsearch API key, base64 id:key as Elasticsearch returns it (secret)";
    es_api_key_file => "es.api_key_file", "CDC_ES_API_KEY_FILE", [], "File holding CDC_ES_API_KEY";
    es_ca_file => "es.ca_file", "CDC_ES_CA_FILE", [], "PEM CA certificate to trust for Elasticsearch TLS";
    es_client_cert => "es.client_cert", "CDC_ES_CLIENT_CERT", [], "PEM client certificate (chain) for Elasticsearch mutual TLS; needs CDC_ES_CLIENT_KEY";
    es_client_key => "es.client_key", "CDC_ES_CLIENT_KEY", [], "PEM PKCS#8 private key of CDC_ES_CLIENT_CERT (unencrypted: keep the file owner-only)";
    es_timeout => "es.timeout", "CDC_ES_TIMEOUT", ["30s"], "Timeout of one Elasticsearch request";
    es_compression => "es.compression", "CDC_ES_COMPRESSION", ["gzip"], "Compression of Elasticsearch request bodies: gzip or none";
    es_state_index => "es.state_index", "CDC_ES_STATE_INDEX", [], "Elasticsearch index keeping each row's current state (one document per row, external versions, deletes delete); off when unset";
    es_mode => "es.mode", "CDC_ES_MODE", ["index"], "How events are kept in Elasticsearch: index (plain indices) or data_stream (a data stream with an ILM policy: rollover and retention)";
    es_rollover_size => "es.rollover_size", "CDC_ES_ROLLOVER_SIZE", ["50GB"], "Data-stream mode: roll over to a new backing index when a primary shard reaches this size";
    es_rollover_age => "es.rollover_age", "CDC_ES_ROLLOVER_AGE", ["1d"], "Data-stream mode: roll over to a new backing index at this age";
    es_retention => "es.retention", "CDC_ES_RETENTION", ["30d"], "Data-stream mode: delete a backing index this long after its rollover";
    batch_max_events => "batch.max_events", "CDC_BATCH_MAX_EVENTS", ["2000"], "Most events in one bulk request";
    batch_max_bytes => "batch.max_bytes", "CDC_BATCH_MAX_BYTES", ["5MiB"], "Most bytes in one bulk request (e.g. 5MiB)";
    batch_linger => "batch.linger", "CDC_BATCH_LINGER", ["5ms"], "Longest wait to fill a batch";
    sink_concurrency => "sink.concurrency", "CDC_SINK_CONCURRENCY", ["4"], "Bulk requests in flight at once";
    retry_initial_backoff => "sink.retry_initial_backoff", "CDC_RETRY_INITIAL_BACKOFF", ["100ms"], "First retry delay (doubles each attempt, with jitter)";
    retry_max_backoff => "sink.retry_max_backoff", "CDC_RETRY_MAX_BACKOFF", ["30s"], "Longest retry delay";
    channel_capacity => "pipeline.channel_capacity", "CDC_CHANNEL_CAPACITY", ["4096"], "Messages buffered between the source and the sink";
    pipeline_max_bytes => "pipeline.max_bytes", "CDC_PIPELINE_MAX_BYTES", ["64MiB"], "Most message bytes read and not yet stored (channel, batches and writes in flight together)";
    metrics_max_tables => "metrics.max_tables", "CDC_METRICS_MAX_TABLES", ["1000"], "Most database/table label pairs in cdc_events_total; the rest count under table=\"_other\"";
    http_addr => "http.addr", "CDC_HTTP_ADDR", ["127.0.0.1:3000"], "Address of the dashboard, /api, /metrics, /healthz and /readyz; a non-loopback address needs CDC_HTTP_TOKEN";
    http_auth => "http.auth", "CDC_HTTP_AUTH", ["token"], "token (the dashboard, /api and /metrics need CDC_HTTP_TOKEN when one is set, and one must be set off loopback) or none (no authentication: logs a warning)";
    http_token => "http.token", "CDC_HTTP_TOKEN", [], "Token for the dashboard, /api and /metrics: Authorization: Bearer TOKEN, or basic auth with the token as password (secret)";
    http_token_file => "http.token_file", "CDC_HTTP_TOKEN_FILE", [], "File holding CDC_HTTP_TOKEN";
    http_allowed_hosts => "http.allowed_hosts", "CDC_HTTP_ALLOWED_HOSTS", [], "Host header names served, comma-separated, * for any (default: the bind address, localhost, 127.0.0.1, ::1); others get 421";
    metrics_token => "metrics.token", "CDC_METRICS_TOKEN", [], "A token of its own for /metrics (Prometheus' authorization), besides CDC_HTTP_TOKEN (secret)";
    metrics_token_file => "metrics.token_file", "CDC_METRICS_TOKEN_FILE", [], "File holding CDC_METRICS_TOKEN";
    log_format => "log.format", "CDC_LOG_FORMAT", ["text"], "Log format: text or json";
    log_level => "log.level", "CDC_LOG_LEVEL", ["info"], "Log filter, e.g. info or cdc_monitor=debug";
    shutdown_timeout => "shutdown.timeout", "CDC_SHUTDOWN_TIMEOUT", ["30s"], "Longest graceful shutdown (flush and commit) on SIGTERM";
}

/// Room above `message_max_bytes` in a dead letter for its headers (the
/// reason, the error text, where it came from).
pub const DLQ_HEADROOM: usize = 64 << 10;

/// A bad configuration: names the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {error}")]
    Toml { path: PathBuf, error: String },
    #[error("unknown key `{key}` in {origin}")]
    UnknownKey { key: String, origin: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// Where a raw value came from, as the user would name it.
#[derive(Debug, Clone)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
}

/// Raw string values by TOML path, before parsing.
#[derive(Debug, Default)]
pub struct Layers {
    values: BTreeMap<String, (String, Origin)>,
}

impl Layers {
    /// Reads the TOML file; later `set` calls (env, flags) override it.
    pub fn from_file(path: &Path) -> Result<Layers, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Layers::from_toml(&text, path)
    }

    /// Parses TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Layers, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Toml {
                path: path.to_owned(),
                error: e.to_string(),
            })?;
        let mut layers = Layers::default();
        let origin = Origin::File(path.to_owned());
        for (section, value) in &table {
            let toml::Value::Table(inner) = value else {
                // Top-level keys: `source`, `sink`, `data_dir`.
                if !KEYS.iter().any(|k| k.path == section) {
                    return Err(unknown(section, path));
                }
                layers
                    .values
                    .insert(section.clone(), (scalar(value), origin.clone()));
                continue;
            };
            for (name, value) in inner {
                let key = format!("{section}.{name}");
                if key == "kafka.properties" {
                    // Free-form librdkafka properties, passed through unchecked.
                    let toml::Value::Table(props) = value else {
                        return Err(invalid(&key, &value.to_string(), "expected a table"));
                    };
                    for (k, v) in props {
                        layers
                            .values
                            .insert(format!("kafka.properties.{k}"), (scalar(v), origin.clone()));
                    }
                    continue;
                }
                if !KEYS.iter().any(|k| k.path == key) {
                    return Err(unknown(&key, path));
                }
                layers.values.insert(key, (scalar(value), origin.clone()));
            }
        }
        Ok(layers)
    }

    /// Overrides a value (from the environment or a flag).
    pub fn set(&mut self, path: &str, value: String, origin: Origin) {
        self.values.insert(path.to_owned(), (value, origin));
    }

    fn raw(&self, path: &str) -> Option<(&str, String)> {
        self.values.get(path).map(|(v, origin)| {
            let name = match origin {
                Origin::Flag(id) => format!("--{}", id.replace('_', "-")),
                Origin::Env(env) => (*env).to_owned(),
                Origin::File(file) => format!("`{path}` in {}", file.display()),
            };
            (v.as_str(), name)
        })
    }

    /// How the user would name `path`'s key: where it was set, else its
    /// environment variable.
    fn name(&self, path: &str) -> String {
        match self.raw(path) {
            Some((_, name)) => name,
            None => KEYS
                .iter()
                .find(|k| k.path == path)
                .map_or_else(|| path.to_owned(), |k| k.env.to_owned()),
        }
    }

    fn get<T>(
        &self,
        path: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        // Every key read with `get` has a default in KEYS; the unit tests load
        // an empty config, which walks each of them.
        let default = KEYS
            .iter()
            .find(|k| k.path == path)
            .and_then(|k| k.default)
            .unwrap_or("");
        match self.raw(path) {
            Some((v, name)) => parse(v).map_err(|reason| ConfigError::Invalid {
                key: name,
                value: shown(path, v),
                reason,
            }),
            None => parse(default).map_err(|reason| invalid(path, default, &reason)),
        }
    }

    fn opt<T>(
        &self,
        path: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(path) {
            Some(("", _)) => Ok(None),
            Some(_) => self.get(path, parse).map(Some),
            None => Ok(None),
        }
    }
}

/// Keys whose values are, or may contain, secrets: an error never echoes
/// them. Each but `kafka.properties` also reads from a file, `<key>_file`.
const SECRET_KEYS: [&str; 8] = [
    "mysql.url",
    "kafka.sasl_password",
    "kafka.properties",
    "es.password",
    "es.api_key",
    "http.token",
    "metrics.token",
    "mask.key",
];

impl Layers {
    /// The layers with each secret's `<key>_file` read into the secret
    /// itself, so that a secret need not sit in the environment, a flag
    /// (`ps` shows it) or the TOML file. Setting both forms is an error;
    /// the file's trailing newline is dropped, and an empty file is an
    /// error rather than a secret turned off.
    fn with_secret_files(&self) -> Result<Layers, ConfigError> {
        let mut out = Layers {
            values: self.values.clone(),
        };
        for key in SECRET_KEYS {
            let file_key = format!("{key}_file");
            let Some((path, file_name)) = self.raw(&file_key) else {
                continue;
            };
            if path.trim().is_empty() {
                continue;
            }
            if let Some((_, name)) = self.raw(key) {
                return Err(invalid(
                    &file_name,
                    path,
                    &format!("{name} is set too: set one of them"),
                ));
            }
            let text = std::fs::read_to_string(path.trim())
                .map_err(|e| invalid(&file_name, path, &format!("cannot read it: {e}")))?;
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.trim().is_empty() {
                return Err(invalid(&file_name, path, "the file is empty"));
            }
            let origin = self.values[&file_key].1.clone();
            out.values
                .insert(key.to_owned(), (secret.to_owned(), origin));
        }
        Ok(out)
    }
}

/// A value as an error may show it: a secret key's value is withheld, a URL
/// is shown without its password.
fn shown(path: &str, value: &str) -> String {
    if !SECRET_KEYS.contains(&path) {
        // Any URL may carry a password (`CDC_ES_URL=http://user:pw@…`).
        return match Url::parse(value.trim()) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            Ok(_) => value.to_owned(),
            // Unparseable, yet it may still hold `user:password@`.
            Err(_) if value.contains('@') => "<withheld: may hold a password>".to_owned(),
            Err(_) => value.to_owned(),
        };
    }
    match Url::parse(value.trim()) {
        Ok(mut url) if url.has_host() => {
            if url.password().is_some() {
                // A URL with a host can always take a password.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        _ => "<withheld: secret>".to_owned(),
    }
}

fn unknown(key: &str, path: &Path) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin: path.display().to_string(),
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 5s or 2m".to_owned())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a non-negative duration".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "is too long".to_owned())
}

/// Parses `1048576`, `512KiB`, `5MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| "expected a size such as 5MiB".to_owned())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_owned())
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v: T = s.trim().parse().map_err(|e: T::Err| e.to_string())?;
    if v <= T::default() {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

fn http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("scheme must be http or https, not {other}")),
    }
}

/// A comma-separated list of http(s) URLs, e.g. one per Elasticsearch node.
fn http_urls(s: &str) -> Result<Vec<Url>, String> {
    list(s)?.iter().map(|u| http_url(u)).collect()
}

fn list(s: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = s
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if items.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(items)
}

fn text(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.trim().to_owned())
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// Kafka consumer and dead-letter producer settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// `group.instance.id`: static membership for restarts in place.
    pub instance_id: Option<String>,
    pub auto_offset_reset: OffsetReset,
    pub session_timeout: Duration,
    pub commit_interval: Duration,
    /// `fetch.wait.max.ms`: bounds latency at low traffic on brokers that hold fetches.
    pub fetch_wait_max: Duration,
    /// Caps librdkafka's prefetch queue so a stalled sink bounds memory.
    pub queue_max_kbytes: usize,
    /// The largest message consumed or produced; the producers' `message.max.bytes`.
    pub message_max_bytes: usize,
    pub dlq_topic: String,
    /// librdkafka properties passed through (security, SASL, TLS, tuning).
    pub properties: BTreeMap<String, String>,
    pub sasl_password: Option<SecretString>,
}

/// Elasticsearch sink settings.
#[derive(Debug, Clone)]
pub struct EsConfig {
    /// One URL per node, without userinfo; never empty.
    pub urls: Vec<Url>,
    /// The index, or the template routing each event to one.
    pub index: IndexRoute,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub api_key: Option<SecretString>,
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and PKCS#8 key presented for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub timeout: Duration,
    pub compression: EsCompression,
    /// The current-state index (`CDC_ES_STATE_INDEX`); `None`: off.
    pub state_index: Option<String>,
    /// How long the state index keeps a deleted row's version (`index.gc_deletes`).
    pub tombstone_retention: Duration,
    /// Plain indices or a data stream with its lifecycle.
    pub mode: EsMode,
}

/// How events are kept in Elasticsearch (`CDC_ES_MODE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsMode {
    /// Plain indices that grow until someone deletes them.
    Index,
    /// A data stream whose ILM policy rolls it over and deletes old backing indices.
    DataStream(Lifecycle),
}

/// The ILM policy of data-stream mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Rollover at this primary shard size, in bytes.
    pub rollover_size: u64,
    /// Rollover at this age of the write index.
    pub rollover_age: Duration,
    /// A backing index is deleted this long after its rollover.
    pub retention: Duration,
}

/// How Elasticsearch request bodies are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsCompression {
    /// `Content-Encoding: gzip`, which Elasticsearch always accepts.
    Gzip,
    None,
}

/// Batching, concurrency, retry and memory settings between source and sink.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub concurrency: usize,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub channel_capacity: usize,
    /// Most message bytes between the source and the sink's acknowledgement.
    pub max_buffered_bytes: usize,
}

/// Where changes come from, with the settings only that source uses.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// canal-json from a consumer group (`Config::kafka`); `upstream` is
    /// the database the changes come from (TiDB, or MySQL/MariaDB through
    /// Canal), read over the MySQL protocol by `reconcile` only, when
    /// CDC_MYSQL_URL is set.
    Kafka { upstream: Option<Box<MysqlConfig>> },
    /// MySQL/MariaDB replication.
    Binlog(MysqlConfig),
}

impl SourceConfig {
    /// True for binlog capturers that elect one of them (`CDC_BINLOG_HA`).
    pub fn binlog_ha(&self) -> bool {
        matches!(self, SourceConfig::Binlog(m) if m.ha != BinlogHa::None)
    }
}

impl SourceConfig {
    /// The source database `reconcile` compares with: the binlog source's,
    /// or the Kafka source's upstream when configured.
    pub fn upstream(&self) -> Option<&MysqlConfig> {
        match self {
            SourceConfig::Kafka { upstream } => upstream.as_deref(),
            SourceConfig::Binlog(m) => Some(m),
        }
    }
}

/// Where changes go, with the settings only that sink uses.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Boxed: its URLs, credentials and TLS files dwarf the other kinds.
    Elasticsearch(Box<EsConfig>),
    /// The embedded store under `Config::data_dir`.
    Sqlite(StoreConfig),
    /// canal-json to one topic, through `Config::kafka`'s brokers.
    Kafka { topic: String },
}

impl SinkConfig {
    /// The sink's name, as `CDC_SINK` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Elasticsearch(_) => "elasticsearch",
            SinkConfig::Sqlite(_) => "sqlite",
            SinkConfig::Kafka { .. } => "kafka",
        }
    }
}

/// What a binlog source without a stored position does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Reads every captured table's rows, then streams from the matching position.
    Initial,
    /// Streams only, from `CDC_BINLOG_START`.
    Never,
}

/// Where a binlog source without a stored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinlogStart {
    Current,
    Earliest,
}

/// A `db.table` pattern with `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    pub database: String,
    pub table: String,
}

impl TablePattern {
    /// Parses `appdb.*`, `*.users` or `appdb.users`.
    pub fn parse(s: &str) -> Result<TablePattern, String> {
        let (database, table) = s
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("{s:?} is not DB.TABLE (use * as a wildcard, e.g. appdb.*)"))?;
        if database.is_empty() || table.is_empty() {
            return Err(format!("{s:?} is not DB.TABLE"));
        }
        Ok(TablePattern {
            database: database.to_owned(),
            table: table.to_owned(),
        })
    }

    /// True when `database.table` matches.
    pub fn matches(&self, database: &str, table: &str) -> bool {
        glob(&self.database, database) && glob(&self.table, table)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, after)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    // `*` is the only wildcard, so the leftmost match of each middle piece
    // leaves the most room for the next: no backtracking needed. Masking
    // runs this for every column of every event.
    let mut window = &text[first.len()..text.len() - last.len()];
    for piece in middle.split('*').filter(|p| !p.is_empty()) {
        match window.find(piece) {
            Some(i) => window = &window[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Which tables the binlog source captures.
#[derive(Debug, Clone)]
pub struct TableFilter {
    pub include: Vec<TablePattern>,
    pub exclude: Vec<TablePattern>,
}

impl TableFilter {
    /// The tables a comma-separated list of `database.table` globs names
    /// (`appdb.users,shop.order*`), nothing excluded.
    pub fn parse_list(s: &str) -> Result<TableFilter, String> {
        let include = list(s)?
            .iter()
            .map(|p| TablePattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TableFilter {
            include,
            exclude: Vec::new(),
        })
    }

    /// Schemas that hold the server's own state, never captured.
    pub const SYSTEM: [&'static str; 4] =
        ["mysql", "sys", "information_schema", "performance_schema"];

    /// True when changes of `database.table` are captured.
    pub fn accepts(&self, database: &str, table: &str) -> bool {
        !Self::SYSTEM.contains(&database)
            && self.include.iter().any(|p| p.matches(database, table))
            && !self.exclude.iter().any(|p| p.matches(database, table))
    }

    /// True when some table of `database` may be captured (DDL filtering).
    pub fn accepts_database(&self, database: &str) -> bool {
        !Self::SYSTEM.contains(&database)
            && self.include.iter().any(|p| glob(&p.database, database))
    }
}

/// A `db.table.column` pattern with `*` wildcards. Database and table
/// match as `TablePattern` does; the column matches case-insensitively, as
/// MySQL compares column names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    pub table: TablePattern,
    /// Lower-case.
    pub column: String,
}

impl ColumnPattern {
    /// Parses `appdb.users.password`, `*.*.*token*` or `appdb.*.ssn`.
    pub fn parse(s: &str) -> Result<ColumnPattern, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        match parts.as_slice() {
            [database, table, column]
                if !database.is_empty() && !table.is_empty() && !column.is_empty() =>
            {
                Ok(ColumnPattern {
                    table: TablePattern {
                        database: (*database).to_owned(),
                        table: (*table).to_owned(),
                    },
                    column: column.to_lowercase(),
                })
            }
            _ => Err(format!(
                "{s:?} is not DB.TABLE.COLUMN (use * as a wildcard, e.g. *.*.*password*)"
            )),
        }
    }

    /// True when the pattern may match columns of `database.table`.
    pub fn matches_table(&self, database: &str, table: &str) -> bool {
        self.table.matches(database, table)
    }

    /// True when `column`, already lower-cased, matches.
    pub fn matches_column(&self, lowercase_column: &str) -> bool {
        glob(&self.column, lowercase_column)
    }
}

/// Column masking: `[mask]` and `kafka.dlq_keep_original`.
#[derive(Debug, Clone)]
pub struct MaskConfig {
    /// Columns whose values are replaced by their keyed hash; empty: masking is off.
    pub columns: Vec<ColumnPattern>,
    /// The HMAC key; `None`: generated once and kept in `DATA_DIR/mask.key`.
    pub key: Option<SecretString>,
    /// Dead letters carry the source message's original bytes (masked
    /// columns in the clear) rather than the masked decoded events.
    pub dlq_keep_original: bool,
}

/// Binlog source settings.
#[derive(Debug, Clone)]
pub struct MysqlConfig {
    /// `mysql://USER:PASSWORD@HOST:PORT`; holds the password.
    pub url: SecretString,
    pub server_id: u32,
    pub tables: TableFilter,
    pub start: BinlogStart,
    /// Whether a first start reads the tables' existing rows.
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk (`CDC_SNAPSHOT_CHUNK_ROWS`).
    pub snapshot_chunk_rows: usize,
    pub tls: MysqlTls,
    /// `CDC_BINLOG_HA`: one instance, or a group electing its capturer.
    pub ha: BinlogHa,
}

/// Who captures the binlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinlogHa {
    /// This instance alone; its position in the data directory or the store.
    None,
    /// The instances of `CDC_KAFKA_GROUP_ID` elect one through the group
    /// protocol on `position_topic`, which also keeps the position.
    Kafka { position_topic: String },
}

/// How the binlog source secures its connection: MySQL's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlSslMode {
    /// Plaintext; chosen by name only, and logged as a warning.
    Disabled,
    /// TLS when the server offers it, else plaintext with a warning; the
    /// certificate is not checked (MySQL's own client default).
    Preferred,
    /// TLS or no connection; the certificate is not checked.
    Required,
    /// TLS with a certificate signed by a trusted CA, whatever its name.
    VerifyCa,
    /// TLS with a trusted certificate naming the host connected to.
    VerifyIdentity,
}

impl MysqlSslMode {
    /// The mode as `CDC_MYSQL_SSL_MODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            MysqlSslMode::Disabled => "disabled",
            MysqlSslMode::Preferred => "preferred",
            MysqlSslMode::Required => "required",
            MysqlSslMode::VerifyCa => "verify_ca",
            MysqlSslMode::VerifyIdentity => "verify_identity",
        }
    }

    fn parse(s: &str) -> Result<MysqlSslMode, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "disabled" => Ok(MysqlSslMode::Disabled),
            "preferred" => Ok(MysqlSslMode::Preferred),
            "required" => Ok(MysqlSslMode::Required),
            "verify_ca" => Ok(MysqlSslMode::VerifyCa),
            "verify_identity" => Ok(MysqlSslMode::VerifyIdentity),
            _ => Err("must be disabled, preferred, required, verify_ca or verify_identity".into()),
        }
    }

    /// True when the server's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, MysqlSslMode::VerifyCa | MysqlSslMode::VerifyIdentity)
    }
}

/// TLS to MySQL/MariaDB: `mysql.ssl_mode`, `mysql.ssl_ca`, or mysql_async's
/// own `require_ssl`/`verify_ca`/`verify_identity` URL parameters.
#[derive(Debug, Clone)]
pub struct MysqlTls {
    pub mode: MysqlSslMode,
    /// Trusted in addition to the system's CAs.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key, for servers that ask for one.
    pub identity: Option<ClientIdentity>,
}

/// A client certificate and its key as one PKCS#12 archive (no password),
/// the form the MySQL driver's TLS stack takes. Made at load time, so a
/// bad file is an exit-2 error naming its key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub pkcs12: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds a private key.
        f.write_str("ClientIdentity(<withheld>)")
    }
}

impl ClientIdentity {
    /// From a PEM certificate (its chain may follow) and a PEM private key.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<ClientIdentity, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut certs = openssl::x509::X509::stack_from_pem(&read(cert)?)
            .map_err(|e| format!("{}: not a PEM certificate: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", cert.display()));
        }
        let leaf = certs.remove(0);
        let key_pem = read(key)?;
        let pkey = openssl::pkey::PKey::private_key_from_pem(&key_pem).map_err(|_| {
            format!(
                "{}: not a PEM private key (without a password)",
                key.display()
            )
        })?;
        let mut chain = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
        for c in certs {
            chain.push(c).map_err(|e| e.to_string())?;
        }
        let archive = openssl::pkcs12::Pkcs12::builder()
            .name("cdc-monitor")
            .pkey(&pkey)
            .cert(&leaf)
            .ca(chain)
            .build2("")
            .and_then(|p| p.to_der())
            .map_err(|e| {
                format!(
                    "{} and {} do not make an identity: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(ClientIdentity {
            pkcs12: archive.into(),
        })
    }
}

/// Embedded store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub retention: Duration,
    pub max_bytes: u64,
    /// How long the state keeps a deleted row's tombstone.
    pub tombstone_retention: Duration,
}

/// Who may use the HTTP port: `[http]` and `metrics.token`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// None: `CDC_HTTP_AUTH=none`, or loopback without a token.
    pub token: Option<SecretString>,
    /// Also accepted on `/metrics`.
    pub metrics_token: Option<SecretString>,
    /// Host header names served; `None` serves any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Set when `CDC_HTTP_AUTH=none` turned authentication off.
    pub auth_disabled: bool,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub data_dir: PathBuf,
    /// Kafka client settings: the consumer, the dead-letter producer, the Kafka sink.
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub http: HttpConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    /// Most database/table label pairs in `cdc_events_total`.
    pub metrics_max_tables: usize,
    /// Column masking before any sink and the dead letters.
    pub mask: MaskConfig,
    /// Scheduled reconcile inside `run` (a source database is configured); `None`: off.
    pub reconcile_interval: Option<Duration>,
}

impl Config {
    /// Parses and checks every value: each section by its own loader.
    pub fn from_layers(l: &Layers) -> Result<Config, ConfigError> {
        let l = &l.with_secret_files()?;
        let pipeline = pipeline_section(l)?;
        let kafka = kafka_section(l, pipeline.max_buffered_bytes)?;
        let source = source_section(l)?;
        let sink = sink_section(l, &source, &kafka)?;
        let mask = mask_section(l, &source)?;
        let reconcile_interval = reconcile_section(l, &source)?;
        Ok(Config {
            source,
            sink,
            data_dir: l.get("data_dir", |s| Ok(PathBuf::from(text(s)?)))?,
            kafka,
            pipeline,
            http: http_section(l)?,
            log_format: l.get("log.format", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("must be text or json".into()),
            })?,
            log_level: l.get("log.level", |s| {
                tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
                Ok(s.to_owned())
            })?,
            shutdown_timeout: l.get("shutdown.timeout", parse_duration)?,
            metrics_max_tables: l.get("metrics.max_tables", positive)?,
            reconcile_interval,
            mask,
        })
    }

    /// True when Kafka is part of the pipeline (then dead letters go to a topic).
    pub fn uses_kafka(&self) -> bool {
        matches!(self.source, SourceConfig::Kafka { .. })
            || matches!(self.sink, SinkConfig::Kafka { .. })
    }

    /// True when binlog capturers elect one of them (`CDC_BINLOG_HA`).
    pub fn binlog_ha(&self) -> bool {
        self.source.binlog_ha()
    }
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

/// The shortest masking key accepted: HMAC's strength is its key's.
pub const MASK_KEY_MIN_BYTES: usize = 16;

/// `[mask]` and `kafka.dlq_keep_original`. An explicitly empty
/// `mask.columns` turns masking off (the default list applies only when
/// the key is not set at all).
fn mask_section(l: &Layers, source: &SourceConfig) -> Result<MaskConfig, ConfigError> {
    Ok(MaskConfig {
        // `get`, not `opt`: `opt` reads "" as unset, which would bring the
        // default list back instead of turning masking off.
        columns: l.get("mask.columns", |s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(ColumnPattern::parse)
                .collect::<Result<Vec<_>, _>>()
        })?,
        key: l.opt("mask.key", |s| {
            if s.len() < MASK_KEY_MIN_BYTES {
                return Err(format!("must be at least {MASK_KEY_MIN_BYTES} bytes"));
            }
            Ok(SecretString::from(s.to_owned()))
        })?,
        dlq_keep_original: l
            .opt("kafka.dlq_keep_original", |s| match s.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err("must be true or false".into()),
            })?
            // Only the Kafka source has original bytes to keep.
            .unwrap_or(matches!(source, SourceConfig::Kafka { .. })),
    })
}

/// `[http]`: the address, and who may ask. Off loopback a token is
/// required unless authentication is turned off by name.
fn http_section(l: &Layers) -> Result<HttpConfig, ConfigError> {
    let addr = l.get("http.addr", |s| {
        s.trim()
            .parse::<SocketAddr>()
            .map_err(|e| format!("{e}; expected HOST:PORT such as 127.0.0.1:3000"))
    })?;
    let auth_disabled = l.get("http.auth", |s| match s.trim() {
        "token" => Ok(false),
        "none" => Ok(true),
        _ => Err("must be token or none".into()),
    })?;
    let mut token = l.opt("http.token", secret)?;
    let mut metrics_token = l.opt("metrics.token", secret)?;
    if auth_disabled {
        token = None;
        metrics_token = None;
    } else if token.is_none() && !addr.ip().is_loopback() {
        return Err(invalid(
            &l.name("http.addr"),
            &addr.to_string(),
            "serving a non-loopback address needs a token: set CDC_HTTP_TOKEN or \
             CDC_HTTP_TOKEN_FILE (or CDC_HTTP_AUTH=none to serve every captured row \
             to anyone who reaches the port)",
        ));
    }
    let allowed_hosts = match l.opt("http.allowed_hosts", list)? {
        Some(hosts) if hosts.iter().any(|h| h == "*") => None,
        Some(hosts) => Some(hosts.iter().map(|h| h.to_ascii_lowercase()).collect()),
        None => {
            let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
            if !addr.ip().is_unspecified() && !hosts.contains(&addr.ip().to_string()) {
                hosts.push(addr.ip().to_string());
            }
            Some(hosts)
        }
    };
    Ok(HttpConfig {
        addr,
        token,
        metrics_token,
        allowed_hosts,
        auth_disabled,
    })
}

/// `[kafka]`: client, consumer and dead-letter settings.
fn kafka_section(l: &Layers, pipeline_max_bytes: usize) -> Result<KafkaConfig, ConfigError> {
    Ok(KafkaConfig {
        brokers: l.get("kafka.brokers", text)?,
        topics: l.get("kafka.topics", list)?,
        group_id: l.get("kafka.group_id", text)?,
        instance_id: l.opt("kafka.instance_id", text)?,
        auto_offset_reset: l.get("kafka.auto_offset_reset", |s| match s {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            _ => Err("must be earliest or latest".into()),
        })?,
        session_timeout: l.get("kafka.session_timeout", |s| {
            let d = parse_duration(s)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) {
                return Err("must be between 1s and 300s".into());
            }
            Ok(d)
        })?,
        commit_interval: l.get("kafka.commit_interval", parse_duration)?,
        fetch_wait_max: l.get("kafka.fetch_wait_max", parse_duration)?,
        queue_max_kbytes: match l.opt("kafka.queue_max_kbytes", positive)? {
            Some(kb) => kb,
            // librdkafka's prefetch sits outside the pipeline's budget:
            // a quarter of it keeps the whole within about 1.25 times.
            None => (pipeline_max_bytes / 4 / 1024).max(1),
        },
        message_max_bytes: l.get("kafka.message_max_bytes", |s| {
            let n = parse_bytes(s)?;
            // librdkafka's own bounds of message.max.bytes.
            if !(1000..=1_000_000_000 - DLQ_HEADROOM).contains(&n) {
                return Err("must be between 1000 bytes and about 999MB".into());
            }
            Ok(n)
        })?,
        dlq_topic: l.get("kafka.dlq_topic", text)?,
        properties: kafka_properties(l)?,
        sasl_password: l.opt("kafka.sasl_password", secret)?,
    })
}

/// librdkafka properties: `[kafka.properties]`, `CDC_KAFKA_PROPERTIES` and
/// the named security keys, in that order of precedence (last wins).
fn kafka_properties(l: &Layers) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut properties = BTreeMap::new();
    for (path, (value, _)) in l.values.range("kafka.properties.".to_owned()..) {
        let Some(k) = path.strip_prefix("kafka.properties.") else {
            break;
        };
        properties.insert(k.to_owned(), value.clone());
    }
    if let Some((raw, name)) = l.raw("kafka.properties") {
        for (i, pair) in raw.split(',').filter(|p| !p.trim().is_empty()).enumerate() {
            let Some((k, v)) = pair.split_once('=') else {
                // The pair may be a password typed without its key: not echoed.
                return Err(ConfigError::Invalid {
                    key: name,
                    value: shown("kafka.properties", raw),
                    reason: format!("item {} is not key=value", i + 1),
                });
            };
            properties.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    for (key, path) in [
        ("security.protocol", "kafka.security_protocol"),
        ("sasl.mechanism", "kafka.sasl_mechanism"),
        ("sasl.username", "kafka.sasl_username"),
        ("ssl.ca.location", "kafka.ssl_ca_location"),
    ] {
        if let Some(v) = l.opt(path, text)? {
            properties.insert(key.to_owned(), v);
        }
    }
    Ok(properties)
}

/// `source` and, for the binlog source, `[mysql]` and `[binlog]`.
fn source_section(l: &Layers) -> Result<SourceConfig, ConfigError> {
    match l
        .get("source", |s| match s.trim() {
            "kafka" | "binlog" => Ok(s.trim().to_owned()),
            _ => Err("must be kafka or binlog".into()),
        })?
        .as_str()
    {
        "binlog" => Ok(SourceConfig::Binlog(mysql_section(l)?)),
        // Only `reconcile` reads it: the Kafka source runs without.
        _ => Ok(SourceConfig::Kafka {
            upstream: match l.raw("mysql.url") {
                Some((url, _)) if !url.trim().is_empty() => Some(Box::new(mysql_section(l)?)),
                _ => None,
            },
        }),
    }
}

fn mysql_section(l: &Layers) -> Result<MysqlConfig, ConfigError> {
    let patterns = |s: &str| {
        list(s)?
            .iter()
            .map(|p| TablePattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(MysqlConfig {
        url: l
            .opt("mysql.url", |s| {
                let url = Url::parse(s.trim()).map_err(|e| e.to_string())?;
                if url.scheme() != "mysql" {
                    return Err(format!(
                        "scheme must be mysql, not {}; expected mysql://USER:PASSWORD@HOST:PORT",
                        url.scheme()
                    ));
                }
                Ok(SecretString::from(s.trim().to_owned()))
            })?
            .ok_or_else(|| {
                invalid(
                    "CDC_MYSQL_URL",
                    "",
                    "CDC_SOURCE=binlog needs mysql://USER:PASSWORD@HOST:PORT",
                )
            })?,
        server_id: l.get("mysql.server_id", positive)?,
        tables: TableFilter {
            include: l.get("binlog.tables", patterns)?,
            exclude: l
                .opt("binlog.tables_exclude", patterns)?
                .unwrap_or_default(),
        },
        start: l.get("binlog.start", |s| match s.trim() {
            "current" => Ok(BinlogStart::Current),
            "earliest" => Ok(BinlogStart::Earliest),
            _ => Err("must be current or earliest".into()),
        })?,
        snapshot: l.get("snapshot.mode", |s| match s.trim() {
            "initial" => Ok(SnapshotMode::Initial),
            "never" => Ok(SnapshotMode::Never),
            _ => Err("must be initial or never".into()),
        })?,
        snapshot_chunk_rows: l.get("snapshot.chunk_rows", positive)?,
        tls: mysql_tls(l)?,
        ha: match l.get("binlog.ha", |s| match s.trim() {
            "none" => Ok(false),
            "kafka" => Ok(true),
            _ => Err("must be none or kafka".into()),
        })? {
            false => BinlogHa::None,
            true => BinlogHa::Kafka {
                position_topic: l.get("binlog.position_topic", text)?,
            },
        },
    })
}

/// The binlog source's TLS. Secure by default within what works
/// everywhere: with a CA the certificate and host name are verified; without
/// one TLS is used whenever the server offers it (`preferred`, the mysql
/// client's default), and plaintext only by name (`disabled`) or, with a
/// warning, when the server has no TLS at all.
fn mysql_tls(l: &Layers) -> Result<MysqlTls, ConfigError> {
    let ca_file = l.opt("mysql.ssl_ca", existing_file)?;
    let named = l.opt("mysql.ssl_mode", MysqlSslMode::parse)?;
    let in_url = l
        .raw("mysql.url")
        .and_then(|(url, _)| Url::parse(url.trim()).ok())
        .and_then(|url| url_ssl_mode(&url).transpose())
        .transpose()
        .map_err(|reason| invalid("CDC_MYSQL_URL", "<withheld: secret>", &reason))?;
    let mode = match (named, in_url) {
        (Some(named), Some(url)) if named != url => {
            return Err(invalid(
                &l.name("mysql.ssl_mode"),
                named.name(),
                &format!(
                "CDC_MYSQL_URL's require_ssl/verify_ca/verify_identity mean {}: set one of them",
                url.name()
            ),
            ))
        }
        (Some(mode), _) | (None, Some(mode)) => mode,
        (None, None) if ca_file.is_some() => MysqlSslMode::VerifyIdentity,
        (None, None) => MysqlSslMode::Preferred,
    };
    if let (Some(ca), false) = (&ca_file, mode.verifies()) {
        return Err(invalid(
            &l.name("mysql.ssl_ca"),
            &ca.display().to_string(),
            &format!(
                "a CA is only used to verify the server: CDC_MYSQL_SSL_MODE is {}, not verify_ca or verify_identity",
                mode.name()
            ),
        ));
    }
    let identity = match (
        l.opt("mysql.ssl_cert", existing_file)?,
        l.opt("mysql.ssl_key", existing_file)?,
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            if mode == MysqlSslMode::Disabled {
                return Err(invalid(
                    &l.name("mysql.ssl_cert"),
                    &cert.display().to_string(),
                    "a client certificate needs TLS: CDC_MYSQL_SSL_MODE is disabled",
                ));
            }
            Some(ClientIdentity::from_pem(&cert, &key).map_err(|reason| {
                invalid(
                    &l.name("mysql.ssl_cert"),
                    &cert.display().to_string(),
                    &reason,
                )
            })?)
        }
        (Some(_), None) => {
            return Err(invalid(
                "CDC_MYSQL_SSL_KEY",
                "",
                "CDC_MYSQL_SSL_CERT needs its private key",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "CDC_MYSQL_SSL_CERT",
                "",
                "CDC_MYSQL_SSL_KEY needs its certificate",
            ))
        }
    };
    Ok(MysqlTls {
        mode,
        ca_file,
        identity,
    })
}

/// The mode mysql_async's URL parameters ask for: `require_ssl=true` with
/// `verify_ca` and `verify_identity` (each `true` unless set).
fn url_ssl_mode(url: &Url) -> Result<Option<MysqlSslMode>, String> {
    let flag = |name: &str| -> Result<Option<bool>, String> {
        match url.query_pairs().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => match v.as_ref() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(format!("{name} must be true or false")),
            },
        }
    };
    let (verify_ca, verify_identity) = (flag("verify_ca")?, flag("verify_identity")?);
    Ok(match flag("require_ssl")? {
        None => None,
        Some(false) => Some(MysqlSslMode::Disabled),
        Some(true) if verify_ca == Some(false) => Some(MysqlSslMode::Required),
        Some(true) if verify_identity == Some(false) => Some(MysqlSslMode::VerifyCa),
        Some(true) => Some(MysqlSslMode::VerifyIdentity),
    })
}

/// A path that names a file.
fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s.trim());
    if !p.is_file() {
        return Err("file not found".into());
    }
    Ok(p)
}

/// `sink` and the section of the sink it names. Without `sink`, a set
/// `CDC_ES_URL` means Elasticsearch, else the embedded store.
fn sink_section(
    l: &Layers,
    source: &SourceConfig,
    kafka: &KafkaConfig,
) -> Result<SinkConfig, ConfigError> {
    let es_url = l.opt("es.url", http_urls)?;
    let name = l.opt("sink", |s| match s.trim() {
        "elasticsearch" | "sqlite" | "kafka" => Ok(s.trim().to_owned()),
        _ => Err("must be elasticsearch, sqlite or kafka".into()),
    })?;
    match (name.as_deref(), es_url) {
        (Some("elasticsearch") | None, Some(urls)) => {
            Ok(SinkConfig::Elasticsearch(Box::new(es_section(l, urls)?)))
        }
        (Some("elasticsearch"), None) => Err(invalid(
            "CDC_ES_URL",
            "",
            "CDC_SINK=elasticsearch needs an Elasticsearch URL",
        )),
        (Some("kafka"), _) => {
            if matches!(source, SourceConfig::Kafka { .. }) {
                return Err(invalid(
                    "CDC_SINK",
                    "kafka",
                    "the Kafka sink publishes captured changes: it needs CDC_SOURCE=binlog",
                ));
            }
            match kafka.topics.as_slice() {
                [topic] => Ok(SinkConfig::Kafka {
                    topic: topic.clone(),
                }),
                _ => Err(invalid(
                    "CDC_KAFKA_TOPICS",
                    &kafka.topics.join(","),
                    "the Kafka sink publishes to exactly one topic",
                )),
            }
        }
        _ => {
            if source.binlog_ha() {
                return Err(invalid(
                    "CDC_BINLOG_HA",
                    "kafka",
                    "a standby cannot take over a store on another machine's disk: \
                     set CDC_SINK=elasticsearch or kafka, or CDC_BINLOG_HA=none",
                ));
            }
            Ok(SinkConfig::Sqlite(store_section(l)?))
        }
    }
}

/// `[es]`. Credentials written into the URL move to `username` and
/// `password`, so the URL itself (in logs and errors) never holds them.
fn es_section(l: &Layers, mut urls: Vec<Url>) -> Result<EsConfig, ConfigError> {
    // Each node's userinfo moves out; nodes of one cluster share one user.
    let mut in_url: Option<(String, Option<SecretString>)> = None;
    for url in &mut urls {
        if url.username().is_empty() {
            continue;
        }
        let user = url.username().to_owned();
        let password = url.password().map(|p| SecretString::from(p.to_owned()));
        // An http(s) URL always takes userinfo, so neither can fail.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if let Some((first_user, first_password)) = &in_url {
            let same_password = match (first_password, &password) {
                (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                (None, None) => true,
                _ => false,
            };
            if *first_user != user || !same_password {
                return Err(invalid(
                    &l.name("es.url"),
                    url.as_str(),
                    "the nodes' URLs name different users or passwords: the nodes of one cluster share one",
                ));
            }
        }
        in_url = Some((user, password));
    }
    let mut es = EsConfig {
        urls,
        index: l.get("es.index", |s| IndexRoute::parse(text(s)?.as_str()))?,
        username: l.opt("es.username", text)?,
        password: l.opt("es.password", secret)?,
        api_key: l.opt("es.api_key", secret)?,
        ca_file: l.opt("es.ca_file", existing_file)?,
        client_cert: l.opt("es.client_cert", existing_file)?,
        client_key: l.opt("es.client_key", existing_file)?,
        timeout: l.get("es.timeout", parse_duration)?,
        compression: l.get("es.compression", |s| match s.trim() {
            "gzip" => Ok(EsCompression::Gzip),
            "none" => Ok(EsCompression::None),
            _ => Err("must be gzip or none".into()),
        })?,
        state_index: l.opt("es.state_index", |s| {
            let name = text(s)?;
            // A fixed name: the same rules as a fixed CDC_ES_INDEX.
            let route = IndexRoute::parse(&name)?;
            if !route.is_fixed() {
                return Err("must be a fixed index name, without placeholders".into());
            }
            Ok(name)
        })?,
        tombstone_retention: l.get("state.tombstone_retention", parse_duration)?,
        mode: es_mode(l)?,
    };
    if let Some(state) = &es.state_index {
        if index_pattern_matches(&es.index, state) {
            return Err(invalid(
                &l.name("es.state_index"),
                state,
                "is covered by CDC_ES_INDEX's own index pattern: name the state index apart (e.g. cdc-state)",
            ));
        }
    }
    if es.mode != EsMode::Index && es.index.has_date() {
        return Err(invalid(
            &l.name("es.index"),
            &es.index.to_string(),
            "a date placeholder makes no sense with CDC_ES_MODE=data_stream: the data stream rolls over by itself; drop {yyyy.MM.dd} or {yyyy.MM}, or set CDC_ES_MODE=index",
        ));
    }
    if let Some((user, password)) = in_url {
        if es.username.is_some() || es.password.is_some() {
            return Err(invalid(
                &l.name("es.url"),
                es.urls[0].as_str(),
                "has a user name, and CDC_ES_USERNAME or CDC_ES_PASSWORD is set too: set one of them",
            ));
        }
        es.username = Some(user);
        es.password = password;
    }
    if es.client_cert.is_some() != es.client_key.is_some() {
        let key = if es.client_cert.is_some() {
            "CDC_ES_CLIENT_KEY"
        } else {
            "CDC_ES_CLIENT_CERT"
        };
        return Err(invalid(
            key,
            "",
            "mutual TLS needs both CDC_ES_CLIENT_CERT and CDC_ES_CLIENT_KEY",
        ));
    }
    if es.username.is_some() != es.password.is_some() {
        let key = if es.username.is_some() {
            "CDC_ES_PASSWORD"
        } else {
            "CDC_ES_USERNAME"
        };
        return Err(invalid(
            key,
            "",
            "basic authentication needs both CDC_ES_USERNAME and CDC_ES_PASSWORD",
        ));
    }
    Ok(es)
}

/// `es.mode` and, for a data stream, its lifecycle.
fn es_mode(l: &Layers) -> Result<EsMode, ConfigError> {
    let data_stream = l.get("es.mode", |s| match s.trim() {
        "index" => Ok(false),
        "data_stream" => Ok(true),
        _ => Err("must be index or data_stream".into()),
    })?;
    if !data_stream {
        return Ok(EsMode::Index);
    }
    let nonzero = |s: &str| {
        let d = parse_duration(s)?;
        if d < Duration::from_secs(1) {
            return Err("must be at least 1s".to_owned());
        }
        Ok(d)
    };
    Ok(EsMode::DataStream(Lifecycle {
        rollover_size: l.get("es.rollover_size", |s| {
            let n = parse_bytes(s)?;
            if n < (1 << 20) {
                return Err("must be at least 1MiB".into());
            }
            Ok(n as u64)
        })?,
        rollover_age: l.get("es.rollover_age", nonzero)?,
        retention: l.get("es.retention", nonzero)?,
    }))
}

/// True when `name` falls under the index patterns of `route`'s template.
fn index_pattern_matches(route: &IndexRoute, name: &str) -> bool {
    let pattern = route.pattern();
    if route.is_fixed() {
        return name == pattern || name.starts_with(&format!("{pattern}-"));
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    name.starts_with(first) && name.len() >= first.len() + last.len() && name.ends_with(last)
}

/// `[reconcile]`: the scheduled comparison inside `run`; it needs the source database.
fn reconcile_section(l: &Layers, source: &SourceConfig) -> Result<Option<Duration>, ConfigError> {
    let interval = l.get("reconcile.interval", |s| match s.trim() {
        "off" | "" => Ok(None),
        other => match parse_duration(other)? {
            d if d < Duration::from_secs(1) => Err("must be at least 1s, or off".into()),
            d => Ok(Some(d)),
        },
    })?;
    if interval.is_some() && source.upstream().is_none() {
        return Err(invalid(
            &l.name("reconcile.interval"),
            &l.raw("reconcile.interval").map(|(v, _)| v.to_owned()).unwrap_or_default(),
            "reconcile reads the source database: with CDC_SOURCE=kafka set CDC_MYSQL_URL to the upstream (TiDB, MySQL or MariaDB), or leave it off",
        ));
    }
    Ok(interval)
}

/// `[store]`: the embedded store.
fn store_section(l: &Layers) -> Result<StoreConfig, ConfigError> {
    Ok(StoreConfig {
        retention: l.get("store.retention", parse_duration)?,
        max_bytes: l.get("store.max_bytes", |s| {
            let n = parse_bytes(s)?;
            if n < (1 << 20) {
                return Err("must be at least 1MiB".into());
            }
            Ok(n as u64)
        })?,
        tombstone_retention: l.get("state.tombstone_retention", parse_duration)?,
    })
}

/// `[batch]`, `[sink]` and `[pipeline]`: batching, retries and memory.
fn pipeline_section(l: &Layers) -> Result<PipelineConfig, ConfigError> {
    let p = PipelineConfig {
        max_events: l.get("batch.max_events", positive)?,
        max_bytes: l.get("batch.max_bytes", |s| {
            let n = parse_bytes(s)?;
            if n == 0 {
                return Err("must be greater than 0".into());
            }
            Ok(n)
        })?,
        linger: l.get("batch.linger", parse_duration)?,
        concurrency: l.get("sink.concurrency", positive)?,
        retry_initial_backoff: l.get("sink.retry_initial_backoff", parse_duration)?,
        retry_max_backoff: l.get("sink.retry_max_backoff", parse_duration)?,
        channel_capacity: l.get("pipeline.channel_capacity", positive)?,
        max_buffered_bytes: l.get("pipeline.max_bytes", |s| {
            let n = parse_bytes(s)?;
            if !(1 << 20..=u32::MAX as usize).contains(&n) {
                return Err("must be between 1MiB and 4GiB".into());
            }
            Ok(n)
        })?,
    };
    if p.retry_max_backoff < p.retry_initial_backoff {
        return Err(invalid(
            "CDC_RETRY_MAX_BACKOFF",
            &format!("{:?}", p.retry_max_backoff),
            "must not be below CDC_RETRY_INITIAL_BACKOFF",
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_with_star_anywhere() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("users", "users", true),
            ("users", "user", false),
            ("a*", "a", true),
            ("*a*a*", "aa", true),
            ("*a*a*", "a", false),
            ("ab*b", "ab", false),
            ("ab*b", "abb", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("*token*", "access_token_x", true),
            ("*password*", "passwd", false),
            ("é*ü", "éaü", true),
            ("**", "x", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob(pattern, text), want, "{pattern:?} {text:?}");
        }
    }

    fn load(toml: &str, overrides: &[(&str, &str, Origin)]) -> Result<Config, ConfigError> {
        let mut l = Layers::from_toml(toml, Path::new("cdc.toml"))?;
        for (path, v, o) in overrides {
            l.set(path, (*v).to_owned(), o.clone());
        }
        Config::from_layers(&l)
    }

    #[test]
    fn defaults_are_the_compose_service_names() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.kafka.topics, ["tidb-cdc"]);
        assert_eq!(c.kafka.group_id, "cdc-consumer-group");
        assert_eq!(c.kafka.dlq_topic, "tidb-cdc-dlq");
        assert!(matches!(c.sink, SinkConfig::Sqlite(_)));
        assert!(matches!(c.source, SourceConfig::Kafka { upstream: None }));
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:3000");
        let c = load("[es]\nurl = \"http://elasticsearch:9200\"\n", &[]).unwrap();
        let SinkConfig::Elasticsearch(es) = c.sink else {
            panic!("{:?}", c.sink)
        };
        assert_eq!(es.urls[0].as_str(), "http://elasticsearch:9200/");
        assert_eq!(es.compression, EsCompression::Gzip);
        assert_eq!(es.index.to_string(), "cdc-events");
        assert!(c.kafka.session_timeout <= Duration::from_secs(30));
    }

    #[test]
    fn table_patterns_match_with_wildcards_and_never_system_schemas() {
        let p = |s| TablePattern::parse(s).unwrap();
        let f = TableFilter {
            include: vec![p("appdb.*"), p("shop.order*")],
            exclude: vec![p("appdb.tmp_*")],
        };
        assert!(f.accepts("appdb", "users"));
        assert!(f.accepts("shop", "orders"));
        assert!(!f.accepts("shop", "users"));
        assert!(!f.accepts("appdb", "tmp_1"));
        let all = TableFilter {
            include: vec![p("*.*")],
            exclude: vec![],
        };
        assert!(all.accepts("x", "y"));
        assert!(!all.accepts("mysql", "user"));
        assert!(TablePattern::parse("appdb").is_err());
    }

    #[test]
    fn binlog_source_needs_a_mysql_url_and_kafka_sink_needs_binlog() {
        let e = load("source = \"binlog\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("CDC_MYSQL_URL"), "{e}");
        let e = load("sink = \"kafka\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("CDC_SINK") && e.contains("binlog"), "{e}");
        let c = load(
            "source = \"binlog\"\nsink = \"kafka\"\n[mysql]\nurl = \"mysql://root:pw@127.0.0.1:3306\"\n[binlog]\ntables = \"appdb.*\"\n",
            &[],
        )
        .unwrap();
        let SourceConfig::Binlog(m) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(m.server_id, 5799);
        assert_eq!(m.start, BinlogStart::Current);
        assert_eq!(m.snapshot, SnapshotMode::Initial);
        assert_eq!(m.snapshot_chunk_rows, 10_000);
        assert!(m.tables.accepts("appdb", "users") && !m.tables.accepts("other", "t"));
        let e = load("source = \"binlog\"\n[mysql]\nurl = \"http://x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mysql.url") && e.contains("scheme"), "{e}");
    }

    #[test]
    fn binlog_ha_keeps_its_topic_and_refuses_the_store_sink() {
        let binlog = "source = \"binlog\"\n[mysql]\nurl = \"mysql://root:pw@127.0.0.1:3306\"\n";
        let ha = |value: &str, sink: &str| {
            let toml = format!("{binlog}[binlog]\nha = \"{value}\"\n{sink}");
            load(&toml, &[])
        };
        let c = ha("kafka", "[es]\nurl = \"http://es:9200\"\n").unwrap();
        let SourceConfig::Binlog(m) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(
            m.ha,
            BinlogHa::Kafka {
                position_topic: "cdc-binlog-positions".into()
            }
        );
        // A store on one machine's disk cannot be taken over.
        let e = ha("kafka", "").unwrap_err().to_string();
        assert!(e.contains("CDC_BINLOG_HA") && e.contains("CDC_SINK"), "{e}");
        let e = ha("zookeeper", "").unwrap_err().to_string();
        assert!(
            e.contains("binlog.ha") || e.contains("CDC_BINLOG_HA"),
            "{e}"
        );
        assert!(e.contains("none or kafka"), "{e}");
        let c = ha("none", "").unwrap();
        assert!(matches!(c.source, SourceConfig::Binlog(m) if m.ha == BinlogHa::None));
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let toml =
            "[kafka]\nbrokers = \"file:1\"\ntopics = [\"a\", \"b\"]\n[batch]\nmax_events = 10\n";
        let c = load(
            toml,
            &[("kafka.brokers", "env:1", Origin::Env("CDC_KAFKA_BROKERS"))],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "env:1");
        assert_eq!(c.kafka.topics, ["a", "b"]);
        assert_eq!(c.pipeline.max_events, 10);
        let c = load(
            toml,
            &[
                ("kafka.brokers", "env:1", Origin::Env("CDC_KAFKA_BROKERS")),
                ("kafka.brokers", "flag:1", Origin::Flag("kafka_brokers")),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "flag:1");
    }

    #[test]
    fn errors_never_echo_a_secret() {
        let secret = "S3cret-Pa55";
        let cases: [(&str, String, &str); 5] = [
            (
                "mysql.url",
                format!("mariadb://cdc:{secret}@db:3306"),
                "CDC_MYSQL_URL",
            ),
            (
                "mysql.url",
                format!("mysql//cdc:{secret}@db"),
                "CDC_MYSQL_URL",
            ),
            (
                "kafka.properties",
                format!("sasl.username=u,{secret}"),
                "CDC_KAFKA_PROPERTIES",
            ),
            (
                "kafka.properties",
                format!("sasl.password:{secret}"),
                "CDC_KAFKA_PROPERTIES",
            ),
            ("mysql.server_id", "0".to_owned(), "CDC_MYSQL_SERVER_ID"),
        ];
        for (path, value, env) in cases {
            let err = load(
                "source = \"binlog\"\n",
                &[
                    (
                        "mysql.url",
                        "mysql://u:pw@db:3306",
                        Origin::Env("CDC_MYSQL_URL"),
                    ),
                    (path, value.as_str(), Origin::Env(env)),
                ],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(env), "{err}");
            assert!(!err.contains(secret), "{path}: {err}");
        }
        // The Kafka source reads it too (the upstream `reconcile` compares with).
        let err = load(
            "",
            &[(
                "mysql.url",
                "mariadb://cdc:pw@db",
                Origin::Env("CDC_MYSQL_URL"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mariadb://cdc:***@db"), "{err}");
        let c = load(
            "",
            &[(
                "mysql.url",
                "mysql://cdc:pw@tidb:4000",
                Origin::Env("CDC_MYSQL_URL"),
            )],
        )
        .unwrap();
        assert_eq!(
            c.source
                .upstream()
                .map(|m| m.url.expose_secret().to_owned()),
            Some("mysql://cdc:pw@tidb:4000".to_owned())
        );
        let err = load(
            "source = \"binlog\"\n",
            &[(
                "mysql.url",
                "mariadb://cdc:pw@db",
                Origin::Env("CDC_MYSQL_URL"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mariadb://cdc:***@db"), "{err}");
    }

    #[test]
    fn es_url_takes_several_nodes_with_their_userinfo_moved_out() {
        let env = Origin::Env("CDC_ES_URL");
        let urls = "http://u:s3cret@es1:9200, http://u:s3cret@es2:9200/";
        let c = load("", &[("es.url", urls, env.clone())]).unwrap();
        let SinkConfig::Elasticsearch(es) = c.sink else {
            panic!("{:?}", c.sink)
        };
        let urls: Vec<&str> = es.urls.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://es1:9200/", "http://es2:9200/"]);
        assert_eq!(es.username.as_deref(), Some("u"));
        assert_eq!(es.password.as_ref().unwrap().expose_secret(), "s3cret");
        for bad in [
            "http://u:s3cret@es1:9200,http://u:other@es2:9200",
            "http://u:s3cret@es1:9200,ftp://es2",
        ] {
            let err = load("", &[("es.url", bad, env.clone())])
                .unwrap_err()
                .to_string();
            assert!(err.contains("CDC_ES_URL"), "{err}");
            assert!(!err.contains("s3cret") && !err.contains("other"), "{err}");
        }
        let err = load(
            "",
            &[
                ("es.url", "http://es1:9200", env),
                ("es.compression", "zstd", Origin::Env("CDC_ES_COMPRESSION")),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CDC_ES_COMPRESSION"), "{err}");
    }

    #[test]
    fn an_index_template_needs_a_fixed_prefix() {
        let es_at = |index: &str| {
            load(
                "",
                &[
                    ("es.url", "http://es:9200", Origin::Env("CDC_ES_URL")),
                    ("es.index", index, Origin::Env("CDC_ES_INDEX")),
                ],
            )
        };
        let c = es_at("cdc-{database}-{table}").unwrap();
        let SinkConfig::Elasticsearch(es) = &c.sink else {
            panic!("{:?}", c.sink)
        };
        assert_eq!(es.index.pattern(), "cdc-*-*");
        let err = es_at("{table}-cdc").unwrap_err().to_string();
        assert!(
            err.contains("CDC_ES_INDEX") && err.contains("fixed prefix"),
            "{err}"
        );
    }

    #[test]
    fn the_state_index_and_data_stream_mode_are_read_and_checked() {
        let es_with = |pairs: &[(&'static str, &str, &'static str)]| {
            let mut layers = vec![("es.url", "http://es:9200", Origin::Env("CDC_ES_URL"))];
            layers.extend(pairs.iter().map(|(k, v, env)| (*k, *v, Origin::Env(env))));
            load("", &layers).map(|c| match c.sink {
                SinkConfig::Elasticsearch(es) => *es,
                other => panic!("{other:?}"),
            })
        };
        let es = es_with(&[]).unwrap();
        assert_eq!((es.state_index, es.mode), (None, EsMode::Index));
        assert_eq!(es.tombstone_retention, Duration::from_secs(7 * 86_400));
        let es = es_with(&[
            ("es.state_index", "cdc-state", "CDC_ES_STATE_INDEX"),
            ("es.mode", "data_stream", "CDC_ES_MODE"),
        ])
        .unwrap();
        assert_eq!(es.state_index.as_deref(), Some("cdc-state"));
        assert_eq!(
            es.mode,
            EsMode::DataStream(Lifecycle {
                rollover_size: 50_000_000_000,
                rollover_age: Duration::from_secs(86_400),
                retention: Duration::from_secs(30 * 86_400),
            })
        );
        let err = |pairs| es_with(pairs).unwrap_err().to_string();
        let e = err(&[
            ("es.index", "cdc-{yyyy.MM.dd}", "CDC_ES_INDEX"),
            ("es.mode", "data_stream", "CDC_ES_MODE"),
        ]);
        assert!(
            e.contains("CDC_ES_INDEX") && e.contains("CDC_ES_MODE"),
            "{e}"
        );
        let e = err(&[("es.state_index", "cdc-events-state", "CDC_ES_STATE_INDEX")]);
        assert!(
            e.contains("CDC_ES_STATE_INDEX") && e.contains("pattern"),
            "{e}"
        );
        let e = err(&[("es.state_index", "State", "CDC_ES_STATE_INDEX")]);
        assert!(e.contains("CDC_ES_STATE_INDEX"), "{e}");
        let e = err(&[("es.mode", "stream", "CDC_ES_MODE")]);
        assert!(
            e.contains("CDC_ES_MODE") && e.contains("data_stream"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let err = load("", &[("es.url", "htp:/x y", Origin::Env("CDC_ES_URL"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CDC_ES_URL") && err.contains("htp:/x y"),
            "{err}"
        );
        let err = load("[batch]\nmax_events = \"ten\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch.max_events") && err.contains("ten"),
            "{err}"
        );
        let err = load("[kafka]\nbrokerz = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.brokerz"), "{err}");
        let err = load(
            "",
            &[("batch.max_events", "0", Origin::Flag("batch_max_events"))],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--batch-max-events"), "{err}");
        let err = load("", &[("http.addr", "nope", Origin::Env("CDC_HTTP_ADDR"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CDC_HTTP_ADDR") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn kafka_properties_pass_through() {
        let c = load(
            "[kafka.properties]\n\"fetch.wait.max.ms\" = 20\n",
            &[
                (
                    "kafka.properties",
                    "socket.keepalive.enable=true",
                    Origin::Env("CDC_KAFKA_PROPERTIES"),
                ),
                (
                    "kafka.security_protocol",
                    "SASL_SSL",
                    Origin::Env("CDC_KAFKA_SECURITY_PROTOCOL"),
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["fetch.wait.max.ms"], "20");
        assert_eq!(c.kafka.properties["socket.keepalive.enable"], "true");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn mysql_tls_is_verified_with_a_ca_preferred_without_and_never_contradictory() {
        let binlog = "source = \"binlog\"\n[mysql]\nurl = \"mysql://u:pw@db:3306\"\n";
        let mode = |toml: &str, overrides: &[(&str, &str, Origin)]| {
            let c = load(toml, overrides)?;
            let SourceConfig::Binlog(m) = c.source else {
                panic!("{:?}", c.source)
            };
            Ok::<_, ConfigError>(m.tls.mode)
        };
        assert_eq!(mode(binlog, &[]).unwrap(), MysqlSslMode::Preferred);
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca_path = ca.path().display().to_string();
        let with_ca = (
            "mysql.ssl_ca",
            ca_path.as_str(),
            Origin::Env("CDC_MYSQL_SSL_CA"),
        );
        assert_eq!(
            mode(binlog, std::slice::from_ref(&with_ca)).unwrap(),
            MysqlSslMode::VerifyIdentity
        );
        let disabled = (
            "mysql.ssl_mode",
            "disabled",
            Origin::Env("CDC_MYSQL_SSL_MODE"),
        );
        let err = mode(binlog, &[with_ca, disabled]).unwrap_err().to_string();
        assert!(err.contains("CDC_MYSQL_SSL_CA"), "{err}");
        let url = |u: &str| {
            format!("source = \"binlog\"\n[mysql]\nurl = \"mysql://u:S3cret@db:3306?{u}\"\n")
        };
        assert_eq!(
            mode(&url("require_ssl=true"), &[]).unwrap(),
            MysqlSslMode::VerifyIdentity
        );
        assert_eq!(
            mode(&url("require_ssl=true&verify_ca=false"), &[]).unwrap(),
            MysqlSslMode::Required
        );
        assert_eq!(
            mode(&url("require_ssl=true&verify_identity=false"), &[]).unwrap(),
            MysqlSslMode::VerifyCa
        );
        let err = mode(
            &url("require_ssl=false"),
            &[(
                "mysql.ssl_mode",
                "verify-ca",
                Origin::Env("CDC_MYSQL_SSL_MODE"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CDC_MYSQL_SSL_MODE") && !err.contains("S3cret"),
            "{err}"
        );
        let err = mode(
            binlog,
            &[(
                "mysql.ssl_ca",
                "/nonexistent.pem",
                Origin::Env("CDC_MYSQL_SSL_CA"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CDC_MYSQL_SSL_CA") && err.contains("file not found"),
            "{err}"
        );
    }

    #[test]
    fn a_mysql_client_certificate_needs_its_key_and_must_be_pem() {
        let binlog = "source = \"binlog\"\n[mysql]\nurl = \"mysql://u:pw@db:3306\"\n";
        let cert = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(cert.path(), "not a certificate").unwrap();
        let cert_path = cert.path().display().to_string();
        let with_cert = (
            "mysql.ssl_cert",
            cert_path.as_str(),
            Origin::Env("CDC_MYSQL_SSL_CERT"),
        );
        let err = load(binlog, std::slice::from_ref(&with_cert))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CDC_MYSQL_SSL_KEY"), "{err}");
        let with_key = (
            "mysql.ssl_key",
            cert_path.as_str(),
            Origin::Env("CDC_MYSQL_SSL_KEY"),
        );
        let err = load(binlog, &[with_cert, with_key])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CDC_MYSQL_SSL_CERT") && err.contains("no certificate in it"),
            "{err}"
        );
    }

    #[test]
    fn es_client_certificate_needs_its_key() {
        let cert = tempfile::NamedTempFile::new().unwrap();
        let err = load(
            "[es]\nurl = \"https://es:9200\"\n",
            &[(
                "es.client_cert",
                &cert.path().display().to_string(),
                Origin::Env("CDC_ES_CLIENT_CERT"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CDC_ES_CLIENT_KEY"), "{err}");
    }

    #[test]
    fn masking_is_on_by_default_and_an_empty_list_turns_it_off() {
        let c = load("", &[]).unwrap();
        let columns: Vec<&str> = c.mask.columns.iter().map(|p| p.column.as_str()).collect();
        assert_eq!(columns, ["*password*", "*passwd*", "*secret*", "*token*"]);
        assert!(c.mask.columns[0].matches_table("any", "table"));
        assert!(c.mask.key.is_none());
        assert!(c.mask.dlq_keep_original, "the Kafka source keeps its bytes");
        for (toml, overrides) in [
            (
                "",
                vec![("mask.columns", "", Origin::Env("CDC_MASK_COLUMNS"))],
            ),
            ("[mask]\ncolumns = []\n", vec![]),
            ("[mask]\ncolumns = \"\"\n", vec![]),
        ] {
            let c = load(toml, &overrides).unwrap();
            assert!(c.mask.columns.is_empty(), "{toml:?}");
        }
        let c = load(
            "[mask]\ncolumns = [\"appdb.users.SSN\", \"*.*.card_*\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.mask.columns.len(), 2);
        assert!(c.mask.columns[0].matches_column("ssn"));
        let err = load(
            "",
            &[("mask.columns", "users.ssn", Origin::Env("CDC_MASK_COLUMNS"))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CDC_MASK_COLUMNS") && err.contains("DB.TABLE.COLUMN"),
            "{err}"
        );
    }

    #[test]
    fn a_mask_key_is_secret_long_enough_and_may_come_from_a_file() {
        let short = "short-key";
        let err = load("", &[("mask.key", short, Origin::Env("CDC_MASK_KEY"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CDC_MASK_KEY") && err.contains("16 bytes"),
            "{err}"
        );
        assert!(!err.contains(short), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "a key of sixteen bytes or more\n").unwrap();
        let c = load(
            "",
            &[(
                "mask.key_file",
                file.to_str().unwrap(),
                Origin::Env("CDC_MASK_KEY_FILE"),
            )],
        )
        .unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            c.mask.key.unwrap().expose_secret(),
            "a key of sixteen bytes or more"
        );
    }

    #[test]
    fn dead_letters_keep_original_bytes_by_default_only_for_the_kafka_source() {
        let binlog = "source = \"binlog\"\n[mysql]\nurl = \"mysql://u:p@db:3306\"\n";
        assert!(!load(binlog, &[]).unwrap().mask.dlq_keep_original);
        let c = load(
            "",
            &[(
                "kafka.dlq_keep_original",
                "false",
                Origin::Env("CDC_DLQ_KEEP_ORIGINAL"),
            )],
        )
        .unwrap();
        assert!(!c.mask.dlq_keep_original);
        let err = load("[kafka]\ndlq_keep_original = \"yes\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.dlq_keep_original"), "{err}");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_bytes("5MiB").unwrap(), 5 << 20);
        assert!(parse_bytes("lots").is_err());
    }
}

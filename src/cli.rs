//! Command line: `run`, `setup`, `quickstart`, `changefeed ensure`, `bench`,
//! `snapshot`, `reconcile`, `doctor`.
//!
//! Configuration flags double as `CDC_*` environment variables (clap's `env`);
//! both are layered over the TOML file in `config::Layers`.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ConfigArgs, ConfigError, Layers, Origin, KEYS};
pub use crate::ticdc::ChangefeedArgs;

/// Watches every database change: TiCDC canal-json from Kafka into
/// Elasticsearch and Prometheus.
#[derive(Debug, Parser)]
#[command(name = "cdc-monitor", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume canal-json from Kafka into Elasticsearch, serving metrics.
    Run(Box<RunArgs>),
    /// Try it on this machine: MariaDB, capture and dashboard in one command.
    ///
    /// Starts a private MariaDB (installing it on Debian when absent) with
    /// the demo database appdb, captures its binlog into the embedded store
    /// and serves the dashboard. Takes no CDC_* variables; `run` is the
    /// configurable form.
    Quickstart(crate::quickstart::QuickstartArgs),
    /// Manage the TiCDC changefeed.
    Changefeed {
        #[command(subcommand)]
        command: ChangefeedCommand,
    },
    /// Measure throughput and latency; prints numbers.
    Bench(BenchArgs),
    /// Ask a running binlog capture to re-read tables while it streams on.
    ///
    /// Their rows arrive as `snapshot` events and set the current state
    /// where no newer change did. Returns once the snapshot started.
    Snapshot(SnapshotArgs),
    /// Compare the source database with the captured state (and repair it).
    ///
    /// Reads the captured tables in key chunks and the current state of the
    /// configured sink (embedded store or CDC_ES_STATE_INDEX), and reports
    /// per table the rows missing, changed and extra. Takes the same
    /// configuration as `run`; with the Kafka source it reads the upstream
    /// at CDC_MYSQL_URL (TiDB as of --as-of or --url's checkpoint TSO).
    /// Exit 0 equal, 1 differences, 2 error.
    Reconcile(Box<ReconcileArgs>),
    /// Install what the sink needs (Elasticsearch: ILM policy and index
    /// templates, each unless present), then exit; takes `run`'s settings.
    Setup(Box<RunArgs>),
    /// Check each hop of the pipeline `run` would build and name the first broken one.
    ///
    /// Takes `run`'s settings (flags, CDC_* variables, --config). In order:
    /// configuration, source (Kafka brokers, topics, group lag; or the binlog
    /// preflight), the TiCDC changefeed when CDC_TICDC_URL is set, the sink
    /// (Elasticsearch health, write blocks, disk; or the embedded store's
    /// directory, file and free space), and a running instance with --url.
    /// Exit 0 healthy, 1 a hop broken, 2 the configuration does not load.
    Doctor(Box<DoctorArgs>),
}

/// `reconcile` options, beside `run`'s configuration.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// `run`'s configuration; its `--tables` (CDC_TABLES) chooses the
    /// tables compared, e.g. `--tables 'appdb.users'`.
    #[command(flatten)]
    pub run: RunArgs,
    /// Write the events that make the state equal the database.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows per database read (a range scan on the key).
    #[arg(long, default_value_t = 10_000)]
    pub chunk_rows: usize,
    /// Most rows read from the database per second (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_rows_per_sec: u64,
    /// How long rows that differ are re-read before they count (changes in flight), seconds.
    #[arg(long, default_value_t = 30)]
    pub settle_seconds: u64,
    /// Keys listed per kind of difference and table.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Kafka source with a TiDB upstream: read TiDB as of this TSO (every
    /// change up to it must be stored), instead of --url's checkpoint.
    #[arg(long, value_name = "TSO")]
    pub as_of: Option<u64>,
    /// Kafka source with a TiDB upstream: the running instance whose
    /// checkpoint TSO (GET /api/checkpoint, with CDC_HTTP_TOKEN) TiDB is
    /// read as of, e.g. http://127.0.0.1:3000. Without --as-of or --url,
    /// the current data is read and rows that differ are re-read.
    #[arg(long, value_name = "URL", value_parser = parse_instance_url, conflicts_with = "as_of")]
    pub url: Option<url::Url>,
}

/// `doctor` options, besides `run`'s.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Print `{"healthy": bool, "hops": [{"hop", "ok", "detail", "fix"}]}`.
    #[arg(long)]
    pub json: bool,
    /// A running instance to check too (its /readyz and /metrics), e.g.
    /// http://127.0.0.1:3000 (HOST:PORT alone means http://).
    #[arg(long, value_name = "URL", value_parser = parse_instance_url)]
    pub url: Option<url::Url>,
    /// Longest wait for each server.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,
    /// Also write a row into the canary table through CDC_MYSQL_URL (needs
    /// CREATE, INSERT, UPDATE there) and time its arrival at --url.
    #[arg(long, requires = "url")]
    pub canary: bool,
    /// The canary table, DATABASE.TABLE; created when absent, one row.
    #[arg(
        long,
        env = "CDC_DOCTOR_CANARY_TABLE",
        value_name = "DB.TABLE",
        default_value = "cdc_canary.heartbeat",
        value_parser = parse_canary_table
    )]
    pub canary_table: (String, String),
    /// Longest wait for the canary row to arrive.
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    pub canary_timeout: std::time::Duration,
}

/// An http(s) URL, or `HOST:PORT` as CDC_HTTP_ADDR spells it.
fn parse_instance_url(s: &str) -> Result<url::Url, String> {
    let s = s.trim();
    let full = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = url::Url::parse(&full).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("expected http:// or https://, not {other}://")),
    }
}

/// `DATABASE.TABLE`, each a plain identifier (it is quoted into SQL).
fn parse_canary_table(s: &str) -> Result<(String, String), String> {
    let plain = |p: &str| {
        !p.is_empty() && p.len() <= 64 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match s.trim().split_once('.') {
        Some((db, table)) if plain(db) && plain(table) => Ok((db.to_owned(), table.to_owned())),
        _ => Err("expected DATABASE.TABLE of letters, digits and _".into()),
    }
}

impl DoctorArgs {
    /// What doctor checks besides the configuration; the changefeed from
    /// the same CDC_TICDC_* / CDC_CHANGEFEED_* variables as `changefeed
    /// ensure`, when CDC_TICDC_URL is set.
    /// The canary writes through CDC_MYSQL_URL and its TLS settings (with
    /// the Kafka source, the upstream database: TiDB, MySQL or MariaDB).
    pub fn options(&self, cfg: &Config) -> Result<crate::doctor::Options, clap::Error> {
        #[derive(Parser)]
        struct TicdcEnv {
            #[command(flatten)]
            args: ChangefeedArgs,
        }
        let ticdc = match std::env::var_os("CDC_TICDC_URL") {
            Some(_) => Some(TicdcEnv::try_parse_from(["doctor"])?.args),
            None => None,
        };
        let canary = if self.canary {
            let Some(upstream) = cfg.source.upstream() else {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--canary writes its row through CDC_MYSQL_URL (or CDC_MYSQL_URL_FILE): set it\n",
                ));
            };
            let (mysql_url, tls) = (upstream.url.clone(), upstream.tls.clone());
            Some(crate::doctor::Canary {
                database: self.canary_table.0.clone(),
                table: self.canary_table.1.clone(),
                mysql_url,
                tls,
                timeout: self.canary_timeout,
            })
        } else {
            None
        };
        Ok(crate::doctor::Options {
            url: self.url.clone(),
            ticdc,
            timeout: self.timeout,
            canary,
        })
    }
}

/// `snapshot` options.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Tables to re-read: database.table globs, comma-separated (among CDC_MYSQL_TABLES).
    #[arg(long, value_name = "GLOBS")]
    pub tables: String,
    /// The running instance's HTTP address.
    #[arg(long, env = "CDC_HTTP_ADDR", default_value = "127.0.0.1:3000")]
    pub http_addr: String,
    /// Its bearer token, when it has one.
    #[arg(long, env = "CDC_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(long, env = "CDC_HTTP_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl SnapshotArgs {
    /// The base URL: the address, with an unspecified host as loopback.
    pub fn base_url(&self) -> String {
        let addr = self.http_addr.trim();
        if addr.starts_with("http://") || addr.starts_with("https://") {
            return addr.to_owned();
        }
        let addr = addr
            .strip_prefix("0.0.0.0:")
            .map(|port| format!("127.0.0.1:{port}"))
            .or_else(|| {
                addr.strip_prefix("[::]:")
                    .map(|port| format!("[::1]:{port}"))
            })
            .unwrap_or_else(|| addr.to_owned());
        format!("http://{addr}")
    }

    /// The token, from `--token` or the file.
    pub fn token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| format!("CDC_HTTP_TOKEN_FILE {}: {e}", path.display())),
            (None, None) => Ok(None),
        }
    }
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (flags and CDC_* variables override it).
    #[arg(long, env = "CDC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ConfigArgs,
}

/// `bench` options; the `cdc-bench` program that measures takes the same.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Events for the decode + encode measurement.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// Backlog size for the end-to-end and peak-RSS measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: usize,
    /// Steady rate for the latency measurement, events/s.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Duration of the latency measurement in seconds (0 skips it).
    #[arg(long, default_value_t = 20)]
    pub latency_seconds: u64,
    /// Use this broker instead of starting Tansu.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Tansu binary to start (memory engine).
    #[arg(long, default_value = "tansu")]
    pub tansu: String,
    /// Row changes for the binlog capture measurement (0 skips it; needs MariaDB).
    #[arg(long, default_value_t = 300_000)]
    pub binlog_rows: usize,
    /// Existing rows the initial-snapshot measurement reads into the embedded
    /// store (0 skips it; needs MariaDB).
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_rows: usize,
    /// Events in the embedded store for its measurement (0 skips it; ~750 MiB of disk per million).
    #[arg(long, default_value_t = 1_000_000)]
    pub store_events: usize,
    /// Messages of the large-message backlog, the byte budget's measurement
    /// (0 skips it; kept by a Tansu on disk: about this many MiB).
    #[arg(long, default_value_t = 20_000)]
    pub large_messages: usize,
    /// Bytes of the one wide text column of each large message.
    #[arg(long, default_value_t = 1 << 20)]
    pub large_message_bytes: usize,
    /// Tansu storage engine for the large-message backlog: on disk by
    /// default; `memory://tansu/` is faster but keeps the whole backlog in RAM.
    #[arg(long, default_value = "sqlite://tansu.db")]
    pub large_engine: String,
}

/// `changefeed` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChangefeedCommand {
    /// Wait for TiCDC, then create the changefeed unless it exists and is healthy.
    Ensure(ChangefeedArgs),
}

/// Parses the process arguments, keeping the raw matches for value sources.
pub fn parse() -> (Cli, ArgMatches) {
    let matches = Cli::command().get_matches();
    // The matches came from this very command definition.
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, matches)
}

/// Every `CDC_*` variable some subcommand reads.
fn known_env() -> Vec<String> {
    fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().into_owned());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out
}

/// Builds the `run` configuration: file, then env, then flags.
pub fn run_config(args: &RunArgs, matches: &ArgMatches) -> Result<Config, ConfigError> {
    let known = known_env();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        // CDC_TEST_* belong to the test suite, not to the product.
        if name.starts_with("CDC_")
            && !name.starts_with("CDC_TEST_")
            && !known.iter().any(|k| k == &name)
        {
            return Err(ConfigError::UnknownKey {
                key: name.into_owned(),
                origin: "the environment".into(),
            });
        }
    }
    let mut layers = match &args.config {
        Some(path) => Layers::from_file(path)?,
        None => Layers::default(),
    };
    for key in KEYS {
        let source = matches.value_source(key.id);
        let origin = match source {
            Some(ValueSource::CommandLine) => Origin::Flag(key.id),
            Some(ValueSource::EnvVariable) => Origin::Env(key.env),
            _ => continue,
        };
        if let Some(v) = matches.get_one::<String>(key.id) {
            layers.set(key.path, v.clone(), origin);
        }
    }
    Config::from_layers(&layers)
}

//! Command line: `run`, `setup`, `quickstart`, `changefeed ensure`, `bench`.
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
    /// Install what the sink needs (Elasticsearch: ILM policy and index
    /// templates, each unless present), then exit; takes `run`'s settings.
    Setup(Box<RunArgs>),
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

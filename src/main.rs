//! The `cdc-monitor` binary: CLI → telemetry → config → app.
//!
//! Also what the library leaves to a program: installing MariaDB for
//! `quickstart`, and handing `bench` to the `cdc-bench` program.

use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::Context;
use cdc_monitor::cli::{self, ChangefeedCommand, Command};
use cdc_monitor::quickstart::mariadb::{self, MariaDbError, PACKAGES};
use cdc_monitor::{app::App, config::LogFormat, telemetry};

/// Exit status for bad configuration or input, as with clap's usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let (cli, matches) = cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run").expect("run was parsed");
            let cfg = match cli::run_config(&args, run_matches) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(cfg.log_format, &cfg.log_level);
            match runtime.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "cdc-monitor failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Setup(args) => {
            let setup_matches = matches
                .subcommand_matches("setup")
                .expect("setup was parsed");
            let cfg = match cli::run_config(&args, setup_matches) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(cfg.log_format, &cfg.log_level);
            match runtime.block_on(cdc_monitor::app::setup(&cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "setup failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Quickstart(args) => {
            telemetry::init(LogFormat::Text, "info");
            let ready = |r: &cdc_monitor::quickstart::Ready| println!("{r}");
            match runtime.block_on(cdc_monitor::quickstart::run(
                &args,
                install_mariadb,
                shutdown_signal(),
                ready,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "quickstart failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Changefeed {
            command: ChangefeedCommand::Ensure(args),
        } => {
            telemetry::init(LogFormat::Text, "info");
            match runtime.block_on(cdc_monitor::ticdc::ensure(&args)) {
                Ok(outcome) => {
                    tracing::info!(changefeed = %args.changefeed_id, %outcome, "changefeed ready");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(changefeed = %args.changefeed_id, error = %e, "changefeed ensure failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reconcile(args) => {
            let sub = matches
                .subcommand_matches("reconcile")
                .expect("reconcile was parsed");
            let cfg = match cli::run_config(&args.run, sub) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            telemetry::init(cfg.log_format, "warn");
            match runtime.block_on(reconcile(cfg, &args)) {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        print!("{}", report.text());
                    }
                    if report.differences() == 0 || args.repair {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Snapshot(args) => {
            let token = match args.token() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let base = args.base_url();
            match runtime.block_on(cdc_monitor::control::request_over_http(
                &base,
                token.as_deref(),
                &args.tables,
            )) {
                Ok(started) => {
                    println!(
                        "snapshot started at {}: {}",
                        started.position,
                        started.tables.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor(args) => {
            let matches = matches
                .subcommand_matches("doctor")
                .expect("doctor was parsed");
            doctor(&args, matches, &runtime)
        }
        // Parsed here for `--help` and early usage errors; measured by the
        // sibling program, which keeps the bench out of this one.
        Command::Bench(_) => {
            let error = exec_bench();
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cdc-monitor reconcile`: the configured sink's state against the database.
async fn reconcile(
    cfg: cdc_monitor::config::Config,
    args: &cli::ReconcileArgs,
) -> anyhow::Result<cdc_monitor::reconcile::Report> {
    use cdc_monitor::reconcile::Options;
    let kafka = matches!(cfg.source, cdc_monitor::config::SourceConfig::Kafka { .. });
    if !kafka && (args.as_of.is_some() || args.url.is_some()) {
        anyhow::bail!(
            "--as-of and --url choose the TSO TiDB is read at (CDC_SOURCE=kafka); \
             the binlog source reads at a binlog position of its own"
        );
    }
    let as_of = match (args.as_of, &args.url) {
        (Some(tso), _) => Some(tso),
        (None, Some(url)) => {
            use secrecy::ExposeSecret;
            let token = cfg
                .http
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_owned());
            let answer = cdc_monitor::control::checkpoint_over_http(url.as_str(), token.as_deref())
                .await
                .map_err(anyhow::Error::msg)
                .context("reading the checkpoint TSO from --url")?;
            if answer.tso.is_none() {
                tracing::warn!(url = %url, "the instance has no checkpoint TSO yet (no TiCDC watermark stored): reading the current data");
            }
            answer.tso
        }
        (None, None) => None,
    };
    let metrics = cdc_monitor::metrics::Metrics::new();
    let sink = cdc_monitor::sink::build(&cfg, &metrics)?;
    sink.prepare().await?;
    let masker = cdc_monitor::mask::Masker::build(&cfg.mask, &cfg.data_dir)?;
    let opts = Options {
        // `--tables` is the configuration's CDC_TABLES: the captured tables.
        tables: None,
        repair: args.repair,
        chunk_rows: args.chunk_rows.max(1),
        max_rows_per_sec: Some(args.max_rows_per_sec).filter(|n| *n > 0),
        settle: std::time::Duration::from_secs(args.settle_seconds),
        samples: args.samples,
        as_of,
    };
    Ok(cdc_monitor::reconcile::reconcile(&cfg, &sink, masker.as_ref(), &opts, &metrics).await?)
}

/// `doctor`: the report on stdout; exit 0 healthy, 1 a hop broken, 2 the
/// configuration does not load (its hop is the one reported).
fn doctor(
    args: &cli::DoctorArgs,
    matches: &clap::ArgMatches,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    use cdc_monitor::doctor::{diagnose, Report};
    // No log subscriber: stdout is the report, and the clients' own retry
    // warnings would only repeat what the broken hop says.
    let report = match cli::run_config(&args.run, matches) {
        Ok(cfg) => match args.options(&cfg) {
            Ok(opts) => runtime.block_on(diagnose(&cfg, &opts)),
            // A usage error: clap prints it and exits 2.
            Err(e) => e.exit(),
        },
        Err(e) => Report::config_error(&e),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    ExitCode::from(report.exit_code())
}

/// Replaces this process with `cdc-bench` next to it, given the arguments
/// after `bench`; returns only on failure.
fn exec_bench() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let bench = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("cdc-bench"),
        Err(e) => return anyhow::Error::new(e).context("locating this executable"),
    };
    if !bench.is_file() {
        return anyhow::anyhow!(
            "{} not found: `bench` runs it, and it is built beside cdc-monitor (cargo build --release --bins)",
            bench.display()
        );
    }
    // No global options: `bench` is the first argument, its options follow.
    let args = std::env::args_os().skip(2);
    let error = std::process::Command::new(&bench).args(args).exec();
    anyhow::Error::new(error).context(format!("running {}", bench.display()))
}

/// Installs MariaDB for quickstart: apt-get as root on Debian; elsewhere
/// the error says what to install. apt-get's output goes to stderr.
fn install_mariadb(missing: &'static str) -> Result<(), MariaDbError> {
    let debian = Path::new("/etc/debian_version").exists();
    let apt = mariadb::find_program(&["apt-get"]);
    let (true, Some(apt), true) = (debian, apt, mariadb::is_root()) else {
        return Err(MariaDbError::NotInstalled {
            missing,
            hint: format!(
                "install the {} package (on Debian or Ubuntu: sudo apt-get install {}), then run this again",
                PACKAGES[0],
                PACKAGES.join(" ")
            ),
        });
    };
    tracing::info!(
        packages = PACKAGES.join(" "),
        "MariaDB not found: installing it with apt-get (the package may also start the system service on port 3306, which is not used here)"
    );
    run_apt(&apt, &["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(PACKAGES);
    run_apt(&apt, &install)
}

fn run_apt(apt: &Path, args: &[&str]) -> Result<(), MariaDbError> {
    let command = format!("apt-get {}", args.join(" "));
    tracing::info!(command, "running");
    let status = std::process::Command::new(apt)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        // stdout is the user's: quickstart prints its ready lines there.
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .status()
        .map_err(|e| MariaDbError::Install {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(MariaDbError::Install {
            command,
            detail: status.to_string(),
        });
    }
    Ok(())
}

async fn run(cfg: cdc_monitor::config::Config) -> anyhow::Result<()> {
    let app = App::build(cfg).await.context("starting")?;
    app.run_until(shutdown_signal()).await.context("running")?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

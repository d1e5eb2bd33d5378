//! `cdc-monitor quickstart`: everything on one machine, in one directory.
//!
//! Installs MariaDB when it is absent (with the installer the binary
//! passes: apt-get, as root on Debian), starts a private server with the
//! binlog on, applies `db/init.sql` (the demo `appdb`), captures `appdb.*`
//! from the binlog into the embedded store and serves the dashboard.
//! Stopping it stops the pipeline gracefully, then the server; starting it
//! again reuses the directory, so the captured events and the binlog
//! position survive.

pub mod mariadb;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::{App, AppError};
use crate::config::{Config, ConfigError, Layers, Origin};
use mariadb::{Binaries, MariaDb, MariaDbError};

/// The demo schema and its seed row.
const INIT_SQL: &str = include_str!("../../db/init.sql");

/// The demo application's account: what the printed insert command logs in as.
const APP_USER: &str = "app";
const APP_GRANTS: &str = "ALL PRIVILEGES ON appdb.*";

/// A row for `appdb.users` that can be inserted again and again: the
/// username is unique per run of the statement. No `$` or `!`, which an
/// interactive shell would expand inside double quotes.
const INSERT_SQL: &str = "INSERT INTO users (username, password, email) VALUES (CONCAT('demo_', LEFT(UUID(), 8)), 'not-a-real-hash', 'demo@example.com')";

/// `quickstart` options.
#[derive(Debug, Clone, clap::Args)]
pub struct QuickstartArgs {
    /// Directory for everything quickstart writes: MariaDB's datadir and
    /// binlog, its log and passwords, client.cnf and the event store.
    /// Reused on later starts.
    #[arg(long, value_name = "DIR", default_value = "./cdc-data")]
    pub data_dir: PathBuf,
    /// Address of the dashboard, the API, /metrics and /healthz.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:3000")]
    pub http_addr: SocketAddr,
    /// Port of the private MariaDB on 127.0.0.1; 3307 keeps clear of a
    /// system MySQL or MariaDB on 3306.
    #[arg(long, value_name = "PORT", default_value_t = 3307)]
    pub mysql_port: u16,
}

/// Why quickstart could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("MariaDB: {0}")]
    MariaDb(#[from] MariaDbError),
    #[error("applying db/init.sql: {0}")]
    InitSql(MariaDbError),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
}

/// What the user needs once everything runs.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The dashboard, e.g. `http://127.0.0.1:3000/`.
    pub dashboard_url: String,
    /// A shell command that inserts a row into `appdb.users`.
    pub insert_command: String,
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// The MariaDB port on 127.0.0.1.
    pub mysql_port: u16,
}

impl std::fmt::Display for Ready {
    /// The lines quickstart prints; tests find the `Dashboard:` and `Insert a row:` lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cdc-monitor is capturing appdb.* from MariaDB on 127.0.0.1:{}.",
            self.mysql_port
        )?;
        writeln!(f, "Dashboard: {}", self.dashboard_url)?;
        writeln!(f, "Insert a row: {}", self.insert_command)?;
        write!(
            f,
            "Ctrl-C stops it; running quickstart again keeps what {} holds.",
            self.data_dir.display()
        )
    }
}

/// Installs MariaDB's programs when quickstart finds them missing: given
/// the missing program, returns once they are installed, or
/// `MariaDbError::NotInstalled` with a hint when it cannot install them.
/// Runs on a blocking thread, for as long as a package manager takes.
pub type Install = fn(&'static str) -> Result<(), MariaDbError>;

/// Runs quickstart until `shutdown` resolves, calling `install` when
/// MariaDB is missing; calls `on_ready` once the dashboard is bound and
/// the binlog streams (after the snapshot of the existing rows).
pub async fn run(
    args: &QuickstartArgs,
    install: Install,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), QuickstartError> {
    // Watch for the signal from the start: a stop during setup must still
    // stop the server (dropping it does), not kill us before the handler exists.
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let (db, app, ready) = tokio::select! {
        r = setup(args, install) => r?,
        _ = stop.cancelled() => {
            info!("stopped during setup");
            return Ok(());
        }
    };
    // Ready once the binlog streams: the rows appdb held are then in the
    // snapshot, and a row the user inserts after the printed command is a
    // change (inserted before the snapshot's point it would be a snapshot row).
    let metrics = app.metrics().clone();
    let run = app.run_until(stop.cancelled_owned());
    tokio::pin!(run);
    let streaming = async {
        while metrics.binlog_position.get() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let early = tokio::select! {
        r = &mut run => Some(r),
        _ = tokio::time::timeout(STREAMING_WAIT, streaming) => None,
    };
    let result = match early {
        Some(r) => r,
        None => {
            on_ready(&ready);
            run.await
        }
    };
    db.stop().await;
    info!("MariaDB stopped");
    Ok(result?)
}

/// How long the ready message waits for the binlog to stream (a slow
/// snapshot only delays it).
const STREAMING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts MariaDB, applies the demo schema and builds the pipeline.
async fn setup(
    args: &QuickstartArgs,
    install: Install,
) -> Result<(MariaDb, App, Ready), QuickstartError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| QuickstartError::Io { path, error }
    };
    // Private when made here: it holds the event store and client.cnf.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.data_dir)
        .map_err(io(&args.data_dir))?;
    let data_dir = std::fs::canonicalize(&args.data_dir).map_err(io(&args.data_dir))?;

    // An installer may run for minutes: off the async threads.
    tokio::task::spawn_blocking(move || find_or_install(install))
        .await
        .map_err(|e| QuickstartError::Io {
            path: data_dir.clone(),
            error: std::io::Error::other(e),
        })??;
    let db = MariaDb::start(&data_dir, args.mysql_port).await?;
    apply_init_sql(&db)
        .await
        .map_err(QuickstartError::InitSql)?;
    let app_password = db.ensure_user(APP_USER, APP_GRANTS).await?;
    let client_cnf = data_dir.join("client.cnf");
    mariadb::write_private(
        &client_cnf,
        &client_cnf_text(APP_USER, &app_password, args.mysql_port),
    )?;

    let cfg = config(&data_dir, args.http_addr, &db.capture_url())?;
    let app = App::build(cfg).await?;
    let client = if mariadb::find_program(&["mariadb"]).is_some() {
        "mariadb"
    } else {
        "mysql"
    };
    let ready = Ready {
        dashboard_url: dashboard_url(app.http_addr()),
        insert_command: insert_command(client, &client_cnf),
        data_dir,
        mysql_port: args.mysql_port,
    };
    Ok((db, app, ready))
}

/// `Binaries::find`, after `install` when a program is missing.
fn find_or_install(install: Install) -> Result<Binaries, MariaDbError> {
    match Binaries::find() {
        Err(MariaDbError::NotInstalled { missing, .. }) => {
            install(missing)?;
            Binaries::find()
        }
        found => found,
    }
}

/// Applies `db/init.sql` unless `appdb.users` exists.
///
/// Once is enough: the script is idempotent, but its `CREATE ... IF NOT
/// EXISTS` statements are written to the binlog every time and would show up
/// as schema changes on every start. A seed row the user deleted stays deleted.
async fn apply_init_sql(db: &MariaDb) -> Result<(), MariaDbError> {
    let mut conn = db.root_conn().await?;
    let present: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'appdb' AND TABLE_NAME = 'users'",
        )
        .await?;
    if present == Some(1) {
        info!("appdb.users exists; db/init.sql not applied again");
    } else {
        info!("applying db/init.sql: the appdb schema and its seed row");
        conn.query_drop(INIT_SQL).await?;
    }
    conn.disconnect().await?;
    Ok(())
}

/// The `run` configuration quickstart stands for: binlog → embedded store.
fn config(data_dir: &Path, http_addr: SocketAddr, mysql_url: &str) -> Result<Config, ConfigError> {
    let mut l = Layers::default();
    let mut set = |path: &str, value: String, flag: &'static str| {
        l.set(path, value, Origin::Flag(flag));
    };
    set("source", "binlog".into(), "source");
    set("sink", "sqlite".into(), "sink");
    set("data_dir", data_dir.display().to_string(), "data_dir");
    set("http.addr", http_addr.to_string(), "http_addr");
    set("mysql.url", mysql_url.to_owned(), "mysql_port");
    set("binlog.tables", "appdb.*".into(), "tables");
    // The private server listens on loopback only and has no certificate.
    set("mysql.ssl_mode", "disabled".into(), "mysql_ssl_mode");
    // Only without a stored position, i.e. on the first start: the rows
    // appdb already holds (the seed row init.sql inserted) arrive as
    // snapshot events, then the binlog streams from the snapshot's position,
    // so the seed row is never also replayed as an insert. Later starts
    // resume where the store's position says.
    set("snapshot.mode", "initial".into(), "snapshot");
    Config::from_layers(&l)
}

/// A MySQL option file for the `[client]` group (mariadb, mysql, mysqldump).
fn client_cnf_text(user: &str, password: &str, port: u16) -> String {
    // Generated passwords are alphanumeric: no quoting needed.
    format!(
        "# Written by cdc-monitor quickstart: the demo application's account.\n\
         # Use with: mariadb --defaults-file=THIS_FILE appdb\n\
         [client]\n\
         user={user}\n\
         password={password}\n\
         host=127.0.0.1\n\
         port={port}\n"
    )
}

/// The command that inserts a row, ready to paste into a POSIX shell.
fn insert_command(client: &str, client_cnf: &Path) -> String {
    format!(
        "{client} {} appdb -e \"{INSERT_SQL}\"",
        shell_quote(&format!("--defaults-file={}", client_cnf.display()))
    )
}

/// Quotes `s` for a POSIX shell unless it needs none.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `http://ADDR/`, with a wildcard address shown as loopback (a browser
/// cannot open 0.0.0.0).
fn dashboard_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SinkConfig, SnapshotMode, SourceConfig};
    use secrecy::ExposeSecret;

    #[test]
    fn client_cnf_is_a_client_group_with_tcp_to_loopback() {
        let text = client_cnf_text("app", "pw123", 3307);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "[client]",
                "user=app",
                "password=pw123",
                "host=127.0.0.1",
                "port=3307"
            ]
        );
    }

    #[test]
    fn insert_command_quotes_the_path_only_when_needed() {
        assert_eq!(
            insert_command("mariadb", Path::new("/srv/cdc-data/client.cnf")),
            format!("mariadb --defaults-file=/srv/cdc-data/client.cnf appdb -e \"{INSERT_SQL}\"")
        );
        let cmd = insert_command("mysql", Path::new("/home/me/my data/it's/client.cnf"));
        assert!(
            cmd.starts_with(r"mysql '--defaults-file=/home/me/my data/it'\''s/client.cnf' appdb"),
            "{cmd}"
        );
        for c in ['$', '!', '`', '"', '\\'] {
            assert!(
                !INSERT_SQL.contains(c),
                "{c} would be expanded by the shell"
            );
        }
        assert!(INSERT_SQL.starts_with("INSERT INTO users (username, password, email)"));
        // The columns exist in the schema quickstart applies.
        for col in ["username", "password", "email"] {
            assert!(INIT_SQL.contains(&format!("    {col} ")), "{col}");
        }
    }

    #[test]
    fn dashboard_url_shows_loopback_for_a_wildcard_address() {
        let url = |s: &str| dashboard_url(s.parse().unwrap());
        assert_eq!(url("127.0.0.1:3000"), "http://127.0.0.1:3000/");
        assert_eq!(url("0.0.0.0:3000"), "http://127.0.0.1:3000/");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080/");
        assert_eq!(url("10.0.0.5:80"), "http://10.0.0.5:80/");
    }

    #[test]
    fn config_is_binlog_into_the_embedded_store_for_appdb() {
        let c = config(
            Path::new("/d"),
            "127.0.0.1:3999".parse().unwrap(),
            "mysql://cdc:pw@127.0.0.1:3307",
        )
        .unwrap();
        assert!(matches!(c.sink, SinkConfig::Sqlite(_)));
        assert_eq!(c.data_dir, Path::new("/d"));
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:3999");
        let SourceConfig::Binlog(m) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(m.url.expose_secret(), "mysql://cdc:pw@127.0.0.1:3307");
        assert_eq!(m.snapshot, SnapshotMode::Initial);
        assert!(m.tables.accepts("appdb", "users") && !m.tables.accepts("other", "t"));
    }

    #[test]
    fn shell_quote_leaves_plain_words_alone() {
        assert_eq!(
            shell_quote("--defaults-file=/a/b.cnf"),
            "--defaults-file=/a/b.cnf"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
    }
}

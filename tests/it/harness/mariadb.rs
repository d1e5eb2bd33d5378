//! A MariaDB server of one test's own: the product's launcher
//! (`cdc_monitor::quickstart::mariadb`) on a port of its own in a fresh temporary
//! directory, with the binlog on (ROW, full images and metadata), killed on
//! drop. Each test starts its own, so tests run in parallel; a start takes
//! well under two seconds, a restart on the same directory well under one.

use std::path::Path;
use std::time::Instant;

use cdc_monitor::quickstart::mariadb::{self as launcher, MariaDbError};
use mysql_async::prelude::{FromRow, Queryable};

/// A running server and its directory.
pub struct MariaDb {
    server: Option<launcher::MariaDb>,
    port: u16,
    dir: tempfile::TempDir,
    /// Server options beyond the launcher's, kept for restarts.
    extra_args: Vec<String>,
}

impl MariaDb {
    /// Starts a fresh server on a port of its own.
    pub async fn start() -> MariaDb {
        MariaDb::start_with_args(Vec::new()).await
    }

    /// Starts a fresh server with `extra_args` (e.g. `--ssl-cert=...`)
    /// after the launcher's own options.
    pub async fn start_with_args(extra_args: Vec<String>) -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let (server, port) = start_on_own_port_with(dir.path(), &extra_args).await;
        MariaDb {
            server: Some(server),
            port,
            dir,
            extra_args,
        }
    }

    /// The launcher's server (socket, log, pid, `ensure_user`...).
    pub fn server(&self) -> &launcher::MariaDb {
        self.server.as_ref().expect("running")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (datadir under `mysql/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `mysql://cdc:PASSWORD@127.0.0.1:PORT`: replication and SELECT on everything.
    pub fn capture_url(&self) -> String {
        self.server().capture_url()
    }

    /// Environment of `cdc-monitor run` capturing `tables` (`db.*`) from this
    /// server's oldest binlog into the embedded store in `data_dir`; tests
    /// add or override keys for other sinks.
    pub fn capture_env(&self, tables: &str, data_dir: &Path) -> Vec<(String, String)> {
        [
            ("CDC_SOURCE", "binlog".to_owned()),
            ("CDC_MYSQL_URL", self.capture_url()),
            ("CDC_TABLES", tables.to_owned()),
            ("CDC_BINLOG_START", "earliest".to_owned()),
            // These tests capture changes from the binlog; tests/it/snapshot.rs
            // switches the initial snapshot back on.
            ("CDC_SNAPSHOT", "never".to_owned()),
            ("CDC_DATA_DIR", data_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Runs `sql` as root; several statements are allowed. Panics on error.
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.server().exec(sql).await {
            panic!("{sql}: {e}\n{}", self.log_tail());
        }
    }

    /// Rows of `sql` as root, e.g. `query::<(i64, String)>("SELECT id, name FROM d.t")`.
    pub async fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let mut conn = self.server().root_conn().await.unwrap();
        let rows = conn
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.disconnect().await.unwrap();
        rows
    }

    /// The first column of the first row of `sql`.
    pub async fn scalar<T: mysql_async::prelude::FromValue + Send + 'static>(
        &self,
        sql: &str,
    ) -> T {
        let rows: Vec<(T,)> = self.query(sql).await;
        rows.into_iter()
            .next()
            .unwrap_or_else(|| panic!("{sql}: no rows"))
            .0
    }

    /// Creates a database named after `prefix` that no other test uses; returns its name.
    pub async fn create_database(&self, prefix: &str) -> String {
        // Letters, digits and `_` only: no quoting needed in test SQL.
        let name = super::unique(prefix).replace('-', "_");
        assert!(name.len() <= 64, "database name too long: {name}");
        self.exec(&format!("CREATE DATABASE {name}")).await;
        name
    }

    /// A user with SELECT on everything but no replication privilege; its URL.
    pub async fn user_without_replication(&self) -> String {
        self.user_with("SELECT ON *.*").await
    }

    /// A fresh user with `grants` (`PRIVILEGES ON db.*`); its `mysql://` URL.
    pub async fn user_with(&self, grants: &str) -> String {
        let user = super::unique("u")
            .replace('-', "_")
            .chars()
            .take(32)
            .collect::<String>();
        let password = self
            .server()
            .ensure_user(&user, grants)
            .await
            .unwrap_or_else(|e| panic!("create user {user}: {e}"));
        self.server().user_url(&user, &password)
    }

    /// Stops the server gracefully and starts it again on the same directory
    /// and port (nothing of this run takes the port meanwhile; see `ports::candidate`).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        self.server = Some(
            launcher::MariaDb::start_with_args(self.dir.path(), self.port, &self.extra_args)
                .await
                .unwrap_or_else(|e| panic!("restart MariaDB: {e}")),
        );
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// Starts a killed or stopped server again.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.server = Some(
            launcher::MariaDb::start_with_args(self.dir.path(), self.port, &self.extra_args)
                .await
                .unwrap_or_else(|e| panic!("start MariaDB again: {e}")),
        );
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("mariadbd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // SIGKILL: the directory is deleted next, nothing to keep.
        self.kill();
    }
}

/// Starts on a port of its own, trying another when the port is taken
/// (another test run on this machine; see `ports::candidate`).
pub async fn start_on_own_port(dir: &Path) -> (launcher::MariaDb, u16) {
    start_on_own_port_with(dir, &[]).await
}

/// `start_on_own_port` with server options beyond the launcher's.
pub async fn start_on_own_port_with(dir: &Path, extra_args: &[String]) -> (launcher::MariaDb, u16) {
    const ATTEMPTS: usize = 5;
    let started = Instant::now();
    let mut taken = Vec::new();
    while taken.len() < ATTEMPTS {
        let port = super::ports::candidate();
        match launcher::MariaDb::start_with_args(dir, port, extra_args).await {
            Ok(server) => {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!(
                        "MariaDB on 127.0.0.1:{port} in {} started in {:?}",
                        dir.display(),
                        started.elapsed()
                    );
                }
                return (server, port);
            }
            // The launcher reads this from mariadbd's own log: its bind failed.
            Err(MariaDbError::PortInUse { .. }) => taken.push(port),
            Err(e) => panic!("start MariaDB: {e}"),
        }
    }
    panic!("start MariaDB: ports {taken:?} were each taken by another process")
}

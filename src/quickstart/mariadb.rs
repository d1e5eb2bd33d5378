//! A private MariaDB server with the binlog on: `quickstart` runs one, and
//! the integration tests run one per test.
//!
//! Everything lives under one directory:
//!
//! ```text
//! DIR/mysql/            datadir, initialised once; binlog.NNNNNN inside
//! DIR/mariadbd.sock     root's only way in (see below)
//! DIR/mariadbd.pid
//! DIR/mariadbd.log      the server's error log (startup failures show here)
//! DIR/install.log       mariadb-install-db output, first start only
//! DIR/tmp/              the server's temporary files
//! DIR/root.password     generated, 0600
//! DIR/<user>.password   one per `ensure_user`, generated, 0600
//! ```
//!
//! Root logs in over the socket with the generated password in
//! `root.password`; the TCP root accounts `mariadb-install-db` creates are
//! dropped, so the port only admits the users made here. Passwords live in
//! 0600 files rather than relying on the directory's mode, because the
//! directory may be one the user already had (say `--data-dir .`).
//!
//! The server runs in its own process group: Ctrl-C in a terminal reaches the
//! whole foreground group, and the server must outlive the pipeline's
//! graceful stop, then be stopped by us.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use rand::Rng;
use tracing::{debug, info, warn};

/// Longest wait for the server to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a graceful stop (SIGTERM) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// `sun_path` holds 108 bytes on Linux, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;
/// Debian's package names, for an installer and the error message.
pub const PACKAGES: [&str; 2] = ["mariadb-server", "mariadb-client"];
/// The capture user `start` creates.
pub const CAPTURE_USER: &str = "cdc";
/// What the capture user may do: read the binlog and the schema, nothing else.
pub const CAPTURE_GRANTS: &str = "REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.*";

/// Why the server could not be installed, started or reached.
#[derive(Debug, thiserror::Error)]
pub enum MariaDbError {
    #[error(
        "MariaDB is not installed ({missing} not found in PATH, /usr/sbin or /usr/bin); {hint}"
    )]
    NotInstalled { missing: &'static str, hint: String },
    /// A command of the installer quickstart was given failed.
    #[error("`{command}` failed: {detail}")]
    Install { command: String, detail: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("socket path {path} is {len} bytes, more than the {MAX_SOCKET_PATH} a Unix socket allows; use a shorter directory")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("mariadb-install-db failed ({status}); its output:\n{output}")]
    InitDb { status: String, output: String },
    #[error("port {port} on 127.0.0.1 is already in use")]
    PortInUse { port: u16 },
    #[error("mariadbd {reason}; the end of {log}:\n{tail}")]
    Start {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("root cannot log in with the password in {path}: it does not belong to this datadir (was it replaced?)")]
    RootPassword { path: PathBuf },
    #[error("SQL as root: {0}")]
    Sql(#[from] mysql_async::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MariaDbError + '_ {
    move |error| MariaDbError::Io {
        path: path.to_owned(),
        error,
    }
}

/// The two programs the launcher runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
}

impl Binaries {
    /// Finds `mariadbd` and `mariadb-install-db` in PATH, /usr/sbin or /usr/bin.
    pub fn find() -> Result<Binaries, MariaDbError> {
        let hint = || format!("install the {} package", PACKAGES[0]);
        Ok(Binaries {
            mariadbd: find_program(&["mariadbd", "mysqld"]).ok_or_else(|| {
                MariaDbError::NotInstalled {
                    missing: "mariadbd",
                    hint: hint(),
                }
            })?,
            install_db: find_program(&["mariadb-install-db", "mysql_install_db"]).ok_or_else(
                || MariaDbError::NotInstalled {
                    missing: "mariadb-install-db",
                    hint: hint(),
                },
            )?,
        })
    }
}

/// True when this process's effective user is root.
pub fn is_root() -> bool {
    // /proc/self belongs to the process's effective uid; no libc needed.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// PATH's directories, then the sbin and bin directories a non-root PATH lacks.
fn search_dirs(path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
    ] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The first of `names` found in PATH or the usual bin and sbin directories.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    find_in(&search_dirs(std::env::var_os("PATH").as_deref()), names)
}

/// The first of `names` (in order of preference) that is a file in one of `dirs`.
fn find_in(dirs: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
}

/// A generated password: 24 alphanumerics, so it needs no quoting in a URL,
/// an option file or SQL.
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Reads the password in `path`, or generates one and writes it there (0600).
fn load_or_create_password(path: &Path) -> Result<String, MariaDbError> {
    match fs::read_to_string(path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let password = generate_password();
    write_private(path, &format!("{password}\n"))?;
    Ok(password)
}

/// Writes `text` to `path` with mode 0600, replacing it atomically.
pub fn write_private(path: &Path, text: &str) -> Result<(), MariaDbError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Sends `signal` (a name such as TERM) to `pid`.
fn signal(pid: u32, signal: &str) {
    // The shell's builtin kill: std has no way to send SIGTERM, and
    // /bin/kill (procps) is missing from slim Debian images.
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running MariaDB server; stopped (SIGTERM, then SIGKILL) on `stop` or drop.
pub struct MariaDb {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    root_password: String,
    capture_password: String,
}

impl std::fmt::Debug for MariaDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDb")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl MariaDb {
    /// Starts a server on 127.0.0.1:`port` with its data in `dir`, which is
    /// created and initialised on first use and reused afterwards. Returns
    /// once the server accepts connections and the capture user exists.
    pub async fn start(dir: &Path, port: u16) -> Result<MariaDb, MariaDbError> {
        MariaDb::start_with_args(dir, port, &[]).await
    }

    /// `start` with `extra` server options after the launcher's own (a
    /// later option wins), e.g. `--ssl-cert=...` for a server with TLS.
    pub async fn start_with_args(
        dir: &Path,
        port: u16,
        extra: &[String],
    ) -> Result<MariaDb, MariaDbError> {
        let started = Instant::now();
        let bins = Binaries::find()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
        let socket = dir.join("mariadbd.sock");
        check_socket_path(&socket)?;
        let tmp = dir.join("tmp");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io_err(&tmp))?;
        let root_password = load_or_create_password(&dir.join("root.password"))?;
        stop_leftover(&dir).await;
        {
            // Not cancellable: a start dropped midway (Ctrl-C during setup)
            // lets the bootstrap finish rather than orphan its mariadbd
            // half-way through the system tables; it takes about a second.
            let (b, d) = (bins.clone(), dir.clone());
            tokio::task::spawn_blocking(move || initialise(&b, &d))
                .await
                .map_err(|e| io_err(&bins.install_db)(std::io::Error::other(e)))??;
        }

        let log = dir.join("mariadbd.log");
        // The error log is appended to by every start: cut it at this start
        // so a failure's tail shows this attempt.
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&bins.mariadbd);
        cmd.args(server_args(&dir, port, is_root()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd.spawn().map_err(io_err(&bins.mariadbd))?;
        // From here on, dropping `db` (an error, or a cancelled start) stops the server.
        let mut db = MariaDb {
            dir,
            port,
            child: Some(child),
            root_password,
            capture_password: String::new(),
        };
        db.wait_ready(log_start).await?;
        db.secure_root().await?;
        db.capture_password = db.ensure_user(CAPTURE_USER, CAPTURE_GRANTS).await?;
        info!(
            port,
            pid = db.pid(),
            dir = %db.dir.display(),
            elapsed = ?started.elapsed(),
            "MariaDB ready"
        );
        Ok(db)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the datadir, socket, log and passwords.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Unix socket root connects through.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }

    /// The server's error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("mariadbd.log")
    }

    /// The directory of the binlog files (the datadir).
    pub fn datadir(&self) -> PathBuf {
        self.dir.join("mysql")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `mysql://cdc:PASSWORD@127.0.0.1:PORT`: the capture user, with
    /// replication and SELECT privileges.
    pub fn capture_url(&self) -> String {
        self.user_url(CAPTURE_USER, &self.capture_password)
    }

    /// `mysql://USER:PASSWORD@127.0.0.1:PORT` for this server.
    pub fn user_url(&self, user: &str, password: &str) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Connection options for root over the socket.
    pub fn root_opts(&self) -> Opts {
        root_opts(&self.socket(), Some(&self.root_password))
    }

    /// A root connection over the socket.
    pub async fn root_conn(&self) -> Result<Conn, MariaDbError> {
        Ok(Conn::new(self.root_opts()).await?)
    }

    /// Runs `sql` as root (several statements are allowed).
    pub async fn exec(&self, sql: &str) -> Result<(), MariaDbError> {
        let mut conn = self.root_conn().await?;
        conn.query_drop(sql).await?;
        conn.disconnect().await?;
        Ok(())
    }

    /// Creates `user`@127.0.0.1 unless it exists, with the password in
    /// `DIR/<user>.password` (generated on first use), and grants `grants`
    /// (`PRIVILEGES ON db.*`). Returns the password. Kept out of the binlog:
    /// account changes are not data changes.
    pub async fn ensure_user(&self, user: &str, grants: &str) -> Result<String, MariaDbError> {
        let password = load_or_create_password(&self.dir.join(format!("{user}.password")))?;
        let account = format!("'{user}'@'127.0.0.1'");
        let sql = format!(
            "SET SESSION sql_log_bin = 0;\
             CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}';\
             ALTER USER {account} IDENTIFIED BY '{password}';\
             GRANT {grants} TO {account};"
        );
        self.exec(&sql).await?;
        Ok(password)
    }

    /// Stops the server: SIGTERM, then SIGKILL after 30 s. Returns once it has exited.
    pub async fn stop(mut self) {
        let child = self.child.take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(c) = child {
                stop_child(c, STOP_TIMEOUT);
            }
        })
        .await;
    }

    /// Kills the server at once (SIGKILL): what a crash would leave behind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Polls until root can connect, failing early when the server exits.
    async fn wait_ready(&mut self, log_start: u64) -> Result<(), MariaDbError> {
        let deadline = Instant::now() + START_TIMEOUT;
        // Before `secure_root` on a fresh datadir, root has no password yet.
        let candidates = [
            root_opts(&self.socket(), Some(&self.root_password)),
            root_opts(&self.socket(), None),
        ];
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let tail = log_tail(&self.log_path(), log_start, 30);
                if tail.contains("Address already in use") {
                    return Err(MariaDbError::PortInUse { port: self.port });
                }
                return Err(MariaDbError::Start {
                    reason: format!("exited during startup ({status})"),
                    log: self.log_path(),
                    tail,
                });
            }
            if self.socket().exists() {
                let mut denied = 0;
                for opts in &candidates {
                    match Conn::new(opts.clone()).await {
                        Ok(conn) => {
                            let _ = conn.disconnect().await;
                            return Ok(());
                        }
                        Err(mysql_async::Error::Server(e)) if e.code == ER_ACCESS_DENIED => {
                            denied += 1;
                        }
                        Err(e) => debug!(error = %e, "MariaDB not ready yet"),
                    }
                }
                if denied == candidates.len() {
                    // Up, but neither password works: waiting will not help.
                    return Err(MariaDbError::RootPassword {
                        path: self.dir.join("root.password"),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(MariaDbError::Start {
                    reason: format!("did not accept connections within {START_TIMEOUT:?}"),
                    log: self.log_path(),
                    tail: log_tail(&self.log_path(), log_start, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives root@localhost the generated password and drops root's TCP
    /// accounts. Idempotent: on later starts the password already works.
    async fn secure_root(&self) -> Result<(), MariaDbError> {
        let conn = match Conn::new(self.root_opts()).await {
            Ok(c) => c,
            Err(mysql_async::Error::Server(e)) if e.code == ER_ACCESS_DENIED => {
                // A fresh datadir: root has the empty password mariadb-install-db gave it.
                let mut c = Conn::new(root_opts(&self.socket(), None)).await?;
                c.query_drop(format!(
                    "SET SESSION sql_log_bin = 0;\
                     ALTER USER 'root'@'localhost' IDENTIFIED BY '{}';",
                    self.root_password
                ))
                .await?;
                c
            }
            Err(e) => return Err(e.into()),
        };
        let mut conn = conn;
        let hosts: Vec<String> = conn
            .query("SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")
            .await?;
        for host in hosts {
            conn.query_drop(format!(
                "SET SESSION sql_log_bin = 0; DROP USER IF EXISTS 'root'@'{}'",
                host.replace('\'', "''")
            ))
            .await?;
        }
        conn.disconnect().await?;
        Ok(())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, STOP_TIMEOUT);
        }
    }
}

/// MySQL's ER_ACCESS_DENIED_ERROR.
const ER_ACCESS_DENIED: u16 = 1045;

fn root_opts(socket: &Path, password: Option<&str>) -> Opts {
    OptsBuilder::default()
        .socket(Some(socket.to_string_lossy()))
        .user(Some("root"))
        .pass(password)
        .prefer_socket(false)
        .into()
}

/// SIGTERM, wait at most `timeout`, then SIGKILL.
fn stop_child(mut child: Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "TERM");
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                debug!(%status, "MariaDB stopped");
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                warn!(
                    pid = child.id(),
                    ?timeout,
                    "MariaDB did not stop on SIGTERM: killing it"
                );
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// mariadbd's arguments; `--no-defaults` first so no my.cnf on the machine applies.
fn server_args(dir: &Path, port: u16, as_root: bool) -> Vec<String> {
    let d = dir.display();
    let mut args = vec!["--no-defaults".to_owned()];
    if as_root {
        // mariadbd refuses to run as root unless told to.
        args.push("--user=root".to_owned());
    }
    args.extend([
        format!("--datadir={d}/mysql"),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--socket={d}/mariadbd.sock"),
        format!("--pid-file={d}/mariadbd.pid"),
        format!("--log-error={d}/mariadbd.log"),
        format!("--log-bin={d}/mysql/binlog"),
        "--binlog-format=ROW".to_owned(),
        "--binlog-row-image=FULL".to_owned(),
        // Column names in the binlog: the source needs no schema lookups.
        "--binlog-row-metadata=FULL".to_owned(),
        "--server-id=1".to_owned(),
        "--skip-name-resolve".to_owned(),
        format!("--tmpdir={d}/tmp"),
    ]);
    args
}

fn check_socket_path(socket: &Path) -> Result<(), MariaDbError> {
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(MariaDbError::SocketPathTooLong {
            path: socket.to_owned(),
            len,
        });
    }
    Ok(())
}

/// Creates the datadir with `mariadb-install-db` unless it exists.
fn initialise(bins: &Binaries, dir: &Path) -> Result<(), MariaDbError> {
    let datadir = dir.join("mysql");
    if datadir.join("mysql").is_dir() {
        return Ok(());
    }
    // Initialise aside and rename: an interrupted first start leaves no
    // half-made datadir that later starts would take for a good one.
    let partial = dir.join("mysql.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    info!(datadir = %datadir.display(), "initialising the MariaDB datadir");
    let mut cmd = Command::new(&bins.install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", partial.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        // A private tmpdir: parallel bootstraps sharing /tmp fail now and
        // then with "Could not remove temporary table" (seen 1 in 6 here).
        .arg(format!("--tmpdir={}", dir.join("tmp").display()));
    if is_root() {
        cmd.arg("--user=root");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(&bins.install_db))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let install_log = dir.join("install.log");
    fs::write(&install_log, &output).map_err(io_err(&install_log))?;
    if !out.status.success() {
        return Err(MariaDbError::InitDb {
            status: out.status.to_string(),
            output: last_lines(&output, 30),
        });
    }
    fs::rename(&partial, &datadir).map_err(io_err(&datadir))
}

/// Stops a server a killed earlier run left behind on this directory.
async fn stop_leftover(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join("mariadbd.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    // Only a mariadbd on this very datadir: the pid may since have been reused.
    let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let needle = format!("--datadir={}/mysql", dir.display());
        c.split(|b| *b == 0).any(|arg| arg == needle.as_bytes())
    });
    if !ours {
        return;
    }
    warn!(
        pid,
        "stopping the MariaDB an earlier run left running on this directory"
    );
    signal(pid, "TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// True while `pid` runs. A zombie has exited: in a container without an
/// init, an orphan's zombie may never be reaped.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// The last `n` lines of `path` from byte `from` on.
fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    last_lines(&String::from_utf8_lossy(&bytes[start..]), n)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_in_sbin_even_without_it_in_path() {
        let dirs = search_dirs(Some(std::ffi::OsStr::new("/nonexistent")));
        assert_eq!(dirs[0], PathBuf::from("/nonexistent"));
        assert!(dirs.contains(&PathBuf::from("/usr/sbin")));
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("mysqld"), "").unwrap();
        let dirs = vec![tmp.path().to_owned()];
        assert_eq!(
            find_in(&dirs, &["mariadbd", "mysqld"]),
            Some(tmp.path().join("mysqld"))
        );
        fs::write(tmp.path().join("mariadbd"), "").unwrap();
        assert_eq!(
            find_in(&dirs, &["mariadbd", "mysqld"]),
            Some(tmp.path().join("mariadbd"))
        );
        assert_eq!(find_in(&dirs, &["nothing"]), None);
    }

    #[test]
    fn server_args_keep_everything_in_the_directory_and_log_full_rows() {
        let args = server_args(Path::new("/d"), 3307, true);
        assert_eq!(args[0], "--no-defaults");
        assert!(args.contains(&"--user=root".to_owned()));
        for a in [
            "--datadir=/d/mysql",
            "--socket=/d/mariadbd.sock",
            "--pid-file=/d/mariadbd.pid",
            "--log-error=/d/mariadbd.log",
            "--log-bin=/d/mysql/binlog",
            "--port=3307",
            "--bind-address=127.0.0.1",
            "--tmpdir=/d/tmp",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
        ] {
            assert!(args.contains(&a.to_owned()), "{a} missing from {args:?}");
        }
        assert!(!server_args(Path::new("/d"), 1, false)
            .iter()
            .any(|a| a.starts_with("--user")));
    }

    #[test]
    fn passwords_are_alphanumeric_and_kept_across_starts() {
        let p = generate_password();
        assert_eq!(p.len(), 24);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.password");
        let first = load_or_create_password(&path).unwrap();
        assert_eq!(load_or_create_password(&path).unwrap(), first);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn long_socket_paths_are_refused_before_starting() {
        assert!(check_socket_path(Path::new("/tmp/x/mariadbd.sock")).is_ok());
        let long = PathBuf::from(format!("/{}/mariadbd.sock", "a".repeat(100)));
        let e = check_socket_path(&long).unwrap_err().to_string();
        assert!(e.contains("shorter directory"), "{e}");
    }

    #[test]
    fn alive_is_false_for_missing_processes() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn log_tail_starts_at_this_start() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("l");
        fs::write(&log, "old\nrun\nnew 1\nnew 2\n").unwrap();
        assert_eq!(log_tail(&log, 8, 10), "new 1\nnew 2");
        assert_eq!(log_tail(&log, 0, 1), "new 2");
        assert_eq!(log_tail(&tmp.path().join("missing"), 5, 3), "");
    }
}

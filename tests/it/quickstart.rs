//! `cdc-monitor quickstart` as a user runs it, and the MariaDB launcher under it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::eventually;
use crate::harness::mariadb::MariaDb;
use crate::harness::ports;

/// `quickstart` as a child process with its stdout read line by line.
struct Quickstart {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    data_dir: PathBuf,
    log: PathBuf,
}

/// What quickstart printed once ready.
struct ReadyLines {
    dashboard: String,
    insert_command: String,
}

impl Quickstart {
    /// Starts quickstart with a fresh MariaDB port of its own (another when
    /// the port turns out to be taken) and waits until it is ready.
    fn start_ready(
        data_dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> (Quickstart, ReadyLines, u16) {
        let mut taken = Vec::new();
        while taken.len() < 5 {
            let mysql_port = ports::candidate();
            let mut qs = Quickstart::spawn(data_dir, mysql_port, log);
            match qs.wait_ready_or_exit(timeout) {
                Ok(ready) => return (qs, ready, mysql_port),
                Err(_) if says_port_taken(&qs.log_tail(), mysql_port) => taken.push(mysql_port),
                Err(status) => panic!(
                    "quickstart exited before it was ready ({status}); log:\n{}",
                    qs.log_tail()
                ),
            }
        }
        panic!("quickstart: MariaDB ports {taken:?} were each taken by another process")
    }

    /// Starts quickstart, its dashboard on a port the kernel picks (the
    /// `Dashboard:` line says which).
    fn spawn(data_dir: &Path, mysql_port: u16, log: &Path) -> Quickstart {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CDC_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["quickstart", "--data-dir"])
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--mysql-port", &mysql_port.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(std::fs::File::create(log).unwrap());
        }
        let mut child = cmd.spawn().expect("spawn cdc-monitor quickstart");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Quickstart {
            child: Some(child),
            lines,
            data_dir: data_dir.to_owned(),
            log: log.to_owned(),
        }
    }

    /// Waits for the `Dashboard:` and `Insert a row:` lines.
    fn wait_ready(&mut self, timeout: Duration) -> ReadyLines {
        match self.wait_ready_or_exit(timeout) {
            Ok(ready) => ready,
            Err(status) => panic!(
                "quickstart not ready within {timeout:?} (exit: {status}); log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The ready lines, or how quickstart exited (or that it still runs).
    fn wait_ready_or_exit(&mut self, timeout: Duration) -> Result<ReadyLines, String> {
        let deadline = Instant::now() + timeout;
        let (mut dashboard, mut insert_command) = (None, None);
        while dashboard.is_none() || insert_command.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("Dashboard: ") {
                        dashboard = Some(url.trim().to_owned());
                    } else if let Some(cmd) = line.strip_prefix("Insert a row: ") {
                        insert_command = Some(cmd.trim().to_owned());
                    }
                }
                Err(_) => {
                    // Stdout closes at exit: wait for the status to show.
                    let status = self.child.as_mut().and_then(|c| {
                        let until = Instant::now() + Duration::from_secs(5);
                        loop {
                            match c.try_wait() {
                                Ok(Some(s)) => return Some(s),
                                Ok(None) if Instant::now() < until => {
                                    std::thread::sleep(Duration::from_millis(50))
                                }
                                _ => return None,
                            }
                        }
                    });
                    return Err(match status {
                        Some(s) => s.to_string(),
                        None => "still running".into(),
                    });
                }
            }
        }
        Ok(ReadyLines {
            dashboard: dashboard.unwrap(),
            insert_command: insert_command.unwrap(),
        })
    }

    /// The pid of the mariadbd quickstart started.
    fn mariadbd_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.data_dir.join("mariadbd.pid"))
            .expect("mariadbd.pid in the data dir");
        text.trim().parse().unwrap()
    }

    /// SIGTERM and wait for exit (at most `timeout`).
    fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        match crate::harness::terminate_child(&mut c, timeout) {
            Some(status) => status,
            None => panic!(
                "quickstart did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log_tail()
            ),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        // A failed test must not leave quickstart or its server behind.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(text) = std::fs::read_to_string(self.data_dir.join("mariadbd.pid")) {
            let pid = text.trim();
            let dir = self
                .data_dir
                .canonicalize()
                .unwrap_or(self.data_dir.clone());
            if is_mariadbd_of(pid, &dir) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

/// What quickstart logs when its MariaDB port is taken.
fn says_port_taken(log: &str, port: u16) -> bool {
    log.contains(&format!("port {port}")) && log.contains("in use")
}

/// True when `pid` is a live mariadbd on `data_dir`.
fn is_mariadbd_of(pid: &str, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = format!("--datadir={}/mysql", data_dir.display());
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    running && cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes())
}

/// Every event `/api/events` returns (one page; these tests hold few).
async fn events(dashboard: &str) -> Vec<Value> {
    let url = format!("{}api/events?limit=1000", dashboard);
    let Ok(resp) = reqwest::get(&url).await else {
        return Vec::new();
    };
    if !resp.status().is_success() {
        return Vec::new();
    }
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Insert events on appdb.users whose `column` is `value`.
fn inserts_where(events: &[Value], column: &str, value: &str) -> usize {
    ops_where(events, "insert", column, value)
}

/// Events of `op` on appdb.users whose `column` is `value`.
fn ops_where(events: &[Value], op: &str, column: &str, value: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e["database"] == "appdb"
                && e["table"] == "users"
                && e["op"] == op
                && e["data"][column] == value
        })
        .count()
}

fn sh(command: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_snapshots_the_seed_row_captures_the_printed_insert_and_keeps_events_across_restarts(
) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("cdc-data");
    let log = tmp.path().join("quickstart.log");

    let (mut qs, ready, mysql_port) =
        Quickstart::start_ready(&data_dir, &log, Duration::from_secs(120));
    // The address it bound, not the `:0` it was given.
    let dashboard = ready
        .dashboard
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|port| port.parse::<u16>().ok());
    assert!(
        dashboard.is_some_and(|port| port != 0),
        "{}",
        ready.dashboard
    );
    let out = sh(&ready.insert_command);
    assert!(
        out.status.success(),
        "{}: {}",
        ready.insert_command,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = eventually(Duration::from_secs(30), || async {
        let ev = events(&ready.dashboard).await;
        inserts_where(&ev, "email", "demo@example.com") == 1
            && ops_where(&ev, "snapshot", "username", "admin") == 1
    })
    .await;
    assert!(
        seen,
        "inserted and seed rows not both in /api/events: {:?}; log:\n{}",
        events(&ready.dashboard).await,
        qs.log_tail()
    );

    let mariadbd = qs.mariadbd_pid();
    assert!(is_mariadbd_of(
        &mariadbd.to_string(),
        &data_dir.canonicalize().unwrap()
    ));
    let status = qs.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{}", qs.log_tail());
    assert!(
        !is_mariadbd_of(&mariadbd.to_string(), &data_dir.canonicalize().unwrap()),
        "mariadbd {mariadbd} still running after quickstart exited"
    );
    drop(qs);

    // The same MariaDB port, as a user runs it again; nothing of this run
    // takes it meanwhile (see `ports::candidate`).
    let mut qs = Quickstart::spawn(&data_dir, mysql_port, &log);
    let again = qs.wait_ready(Duration::from_secs(60));
    assert_eq!(again.insert_command, ready.insert_command);
    // A second insert proves capture resumed; then the counts must hold.
    let out = sh(&again.insert_command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = eventually(Duration::from_secs(30), || async {
        inserts_where(&events(&again.dashboard).await, "email", "demo@example.com") == 2
    })
    .await;
    let ev = events(&again.dashboard).await;
    assert!(
        resumed,
        "second insert not captured: {ev:?}; log:\n{}",
        qs.log_tail()
    );
    // The seed row is a snapshot row, once: never also replayed as an insert.
    assert_eq!(
        (
            ops_where(&ev, "snapshot", "username", "admin"),
            inserts_where(&ev, "username", "admin")
        ),
        (1, 0),
        "seed row duplicated: {ev:?}"
    );
    let status = qs.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{}", qs.log_tail());
}

#[test]
fn quickstart_fails_clearly_when_the_mysql_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("d");
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .args(["quickstart", "--data-dir"])
        .arg(&data_dir)
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--mysql-port", &port.to_string()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(says_port_taken(&stderr, port), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed ready lines: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn quickstart_help_documents_its_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"))
        .args(["quickstart", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--data-dir",
        "./cdc-data",
        "--http-addr",
        "127.0.0.1:3000",
        "--mysql-port",
        "3307",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_keeps_its_data_across_restarts_and_root_has_no_tcp_account() {
    let mut db = MariaDb::start().await;
    let name = db.create_database("keep").await;
    db.exec(&format!(
        "CREATE TABLE {name}.t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO {name}.t VALUES (1, 'a')"
    ))
    .await;
    let started = Instant::now();
    db.restart().await;
    let restart = started.elapsed();
    let rows: Vec<(i32, String)> = db.query(&format!("SELECT id, v FROM {name}.t")).await;
    assert_eq!(rows, [(1, "a".to_owned())]);
    assert!(
        restart < Duration::from_secs(10),
        "restart took {restart:?}"
    );

    let root_tcp =
        mysql_async::Conn::from_url(format!("mysql://root@127.0.0.1:{}", db.port())).await;
    assert!(
        root_tcp.is_err(),
        "root logged in over TCP without a password"
    );
    let hosts: Vec<(String,)> = db
        .query("SELECT Host FROM mysql.user WHERE User = 'root'")
        .await;
    assert_eq!(hosts, [("localhost".to_owned(),)]);

    let settings: Vec<(String, String, String)> = db
        .query("SELECT @@binlog_format, @@binlog_row_image, @@binlog_row_metadata")
        .await;
    assert_eq!(settings, [("ROW".into(), "FULL".into(), "FULL".into())]);

    db.kill();
    db.start_again().await;
    let n: i64 = db.scalar(&format!("SELECT COUNT(*) FROM {name}.t")).await;
    assert_eq!(n, 1, "row lost after a crash");
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_user_reads_the_binlog_and_a_plain_user_cannot() {
    use mysql_async::prelude::Queryable;
    let db = MariaDb::start().await;
    let mut cdc = mysql_async::Conn::from_url(db.capture_url()).await.unwrap();
    let logs: Vec<mysql_async::Row> = cdc.query("SHOW BINARY LOGS").await.unwrap();
    assert!(!logs.is_empty());
    // Its account changes are kept out of the binlog.
    let created: Vec<mysql_async::Row> = cdc
        .query("SHOW BINLOG EVENTS")
        .await
        .unwrap()
        .into_iter()
        .filter(|r: &mysql_async::Row| {
            r.get::<String, _>("Info")
                .is_some_and(|i| i.contains("CREATE USER"))
        })
        .collect();
    assert!(created.is_empty(), "account statements in the binlog");
    cdc.disconnect().await.unwrap();

    let url = db.user_without_replication().await;
    let mut plain = mysql_async::Conn::from_url(url).await.unwrap();
    let err = plain
        .query_drop("SHOW BINARY LOGS")
        .await
        .expect_err("SHOW BINARY LOGS without REPLICATION CLIENT");
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1227, "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_servers_start_in_parallel_within_seconds() {
    let started = Instant::now();
    let dbs = futures::future::join_all((0..3).map(|_| MariaDb::start())).await;
    let elapsed = started.elapsed();
    let ports: std::collections::BTreeSet<u16> = dbs.iter().map(MariaDb::port).collect();
    assert_eq!(ports.len(), 3);
    for db in &dbs {
        let one: i64 = db.scalar("SELECT 1").await;
        assert_eq!(one, 1);
    }
    assert!(
        elapsed < Duration::from_secs(20),
        "3 parallel starts took {elapsed:?}"
    );
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("3 MariaDB servers started in parallel in {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_left_running_by_a_killed_run_is_stopped_and_replaced() {
    use cdc_monitor::quickstart::mariadb::MariaDb as Launcher;
    let dir = tempfile::tempdir().unwrap();
    let (first, port) = crate::harness::mariadb::start_on_own_port(dir.path()).await;
    let old_pid = first.pid().unwrap().to_string();
    // As when quickstart is SIGKILLed: nothing stops the server.
    std::mem::forget(first);
    let canonical = dir.path().canonicalize().unwrap();
    assert!(is_mariadbd_of(&old_pid, &canonical));
    let second = Launcher::start(dir.path(), port).await.unwrap();
    assert!(
        !is_mariadbd_of(&old_pid, &canonical),
        "the old server still runs"
    );
    let n: Vec<(i64,)> = {
        use mysql_async::prelude::Queryable;
        let mut c = second.root_conn().await.unwrap();
        c.query("SELECT 1").await.unwrap()
    };
    assert_eq!(n, [(1,)]);
}

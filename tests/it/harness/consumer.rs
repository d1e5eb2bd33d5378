//! `cdc-monitor run` as a child process, what every consumer shows the
//! tests (`Consumer`), and the names of one test's pipeline.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Names one test's pipeline: its own topic, group, DLQ topic and index.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub topic: String,
    pub group: String,
    pub dlq: String,
    pub index: String,
    pub brokers: String,
    pub es_url: String,
    pub partitions: i32,
}

impl Pipeline {
    /// Whether the group's committed offsets on the shared broker add up to
    /// `n` within `timeout` (every message of an `n`-message topic).
    pub async fn all_committed(&self, n: usize, timeout: Duration) -> bool {
        super::eventually(timeout, || async {
            super::kafka::broker()
                .committed(&self.group, &self.topic, self.partitions)
                .iter()
                .sum::<i64>()
                == n as i64
        })
        .await
    }

    /// Fresh names with `prefix`.
    pub fn new(prefix: &str, brokers: &str, es_url: &str, partitions: i32) -> Pipeline {
        let id = super::unique(prefix);
        Pipeline {
            topic: format!("{id}-cdc"),
            group: format!("{id}-group"),
            dlq: format!("{id}-dlq"),
            index: format!("{id}-events"),
            brokers: brokers.to_owned(),
            es_url: es_url.to_owned(),
            partitions,
        }
    }

    /// Environment for a consumer of this pipeline.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("CDC_KAFKA_BROKERS", self.brokers.as_str()),
            ("CDC_KAFKA_TOPICS", self.topic.as_str()),
            ("CDC_KAFKA_GROUP_ID", self.group.as_str()),
            ("CDC_DLQ_TOPIC", self.dlq.as_str()),
            ("CDC_ES_URL", self.es_url.as_str()),
            ("CDC_ES_INDEX", self.index.as_str()),
            ("CDC_KAFKA_SESSION_TIMEOUT", "6s"),
            ("CDC_RETRY_MAX_BACKOFF", "2s"),
            ("CDC_LOG_LEVEL", "info,librdkafka=warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Environment for a consumer of this pipeline into the embedded store in `data_dir`.
    pub fn store_env(&self, data_dir: &std::path::Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("CDC_ES_"))
            .collect();
        env.push(("CDC_SINK".into(), "sqlite".into()));
        env.push(("CDC_DATA_DIR".into(), data_dir.display().to_string()));
        env
    }
}

/// What the tests read from a running consumer, whether it runs as a child
/// process ([`ConsumerProcess`]) or in this one (`super::app::InProcessApp`).
pub trait Consumer {
    /// The address of its `/metrics`, `/healthz`, `/readyz` and `/api`.
    fn http(&self) -> SocketAddr;

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String;

    /// Waits until `/healthz` answers.
    async fn wait_healthy(&self) {
        self.healthy_by(Instant::now() + Duration::from_secs(30))
            .await;
    }

    /// Waits until `/healthz` answers; fails the test at `deadline`.
    async fn healthy_by(&self, deadline: Instant) {
        let url = format!("http://{}/healthz", self.http());
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "consumer not healthy; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/metrics` text ("" when unreachable).
    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.http())).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sum of every sample of `name` whose labels contain each of `labels` (`k="v"`).
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }
}

/// `cdc-monitor run` as a child process, for the tests that signal it or
/// check how the binary exits.
pub struct ConsumerProcess {
    child: Option<Child>,
    /// Where the child said it serves HTTP, once read from its log.
    http: OnceLock<SocketAddr>,
    pub log: PathBuf,
    echo: Option<LogEcho>,
    _dir: tempfile::TempDir,
}

impl ConsumerProcess {
    /// Starts `cdc-monitor run` with `env` (and no other CDC_* variable),
    /// serving HTTP on a port the kernel picks (`CDC_HTTP_ADDR=127.0.0.1:0`).
    pub fn spawn(env: &[(String, String)]) -> ConsumerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("consumer.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
        cmd.arg("run");
        for (k, _) in std::env::vars() {
            if k.starts_with("CDC_") {
                cmd.env_remove(k);
            }
        }
        // Its own data directory (the masking key, dead letters without
        // Kafka) unless the test names one: never ./cdc-data.
        if !env.iter().any(|(k, _)| k == "CDC_DATA_DIR") {
            cmd.env("CDC_DATA_DIR", dir.path().join("data"));
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Bound by the child itself and read back from its log: a port
        // picked here and released before the child binds it could be
        // taken by anything in between.
        cmd.env("CDC_HTTP_ADDR", "127.0.0.1:0");
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // The log always goes to the file: the harness reads the address there.
        cmd.stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawn cdc-monitor");
        let echo = std::env::var_os("TEST_LOG")
            .is_some()
            .then(|| LogEcho::start(log.clone()));
        ConsumerProcess {
            child: Some(child),
            http: OnceLock::new(),
            log,
            echo,
            _dir: dir,
        }
    }

    /// The HTTP address from the log, once the child has written it.
    fn reported_http(&self) -> Option<SocketAddr> {
        if let Some(addr) = self.http.get() {
            return Some(*addr);
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let addr = text.lines().find_map(http_addr_in)?;
        Some(*self.http.get_or_init(|| addr))
    }

    /// Waits until the log contains `line` (at most `timeout`); fails the
    /// test with the log's tail if it never does.
    pub async fn wait_for_log(&self, line: &str, timeout: Duration) {
        let seen = super::eventually(timeout, || async {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(line)
        })
        .await;
        assert!(seen, "never logged {line:?}; log:\n{}", self.log_tail());
    }

    /// Waits for the process to exit by itself, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "should have stopped within {timeout:?}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status once the process has exited by itself.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL, no chance to flush or commit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// SIGTERM and wait for exit (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        match super::terminate_child(&mut c, timeout) {
            Some(status) => status,
            None => panic!(
                "consumer did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log_tail()
            ),
        }
    }

    fn exited(&self) -> bool {
        // `try_wait` needs `&mut`; /proc tells without reaping.
        match &self.child {
            None => true,
            Some(c) => std::fs::read_to_string(format!("/proc/{}/stat", c.id()))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        }
    }
}

/// SIGKILLs `consumer` `times` times, each a random 0.5–3 s after it owns
/// every one of `partitions`, and starts it again with `env`; the last
/// instance. It kills only an owner of every partition: Tansu 0.6 does not
/// always expire a member killed in the middle of a rebalance, and stacked
/// dead members would then keep partitions forever.
pub async fn kill_owner_repeatedly(
    mut consumer: ConsumerProcess,
    env: &[(String, String)],
    partitions: usize,
    times: usize,
) -> ConsumerProcess {
    use rand::Rng;
    for _ in 0..times {
        let owns_all = super::eventually(Duration::from_secs(90), || async {
            consumer
                .metrics()
                .await
                .matches("cdc_consumer_lag_records{")
                .count()
                == partitions
        })
        .await;
        assert!(
            owns_all,
            "restarted consumer never got every partition:\n{}",
            consumer.log_tail()
        );
        let wait = rand::rng().random_range(500..3_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        consumer.kill();
        if std::env::var_os("CDC_TEST_KAFKA_BROKERS").is_none() {
            // Restart once the broker has expired the killed member (6 s
            // session timeout): Tansu 0.6 sometimes never expires a dead
            // member once a new one has joined beside it, leaving its
            // partitions unowned. A supervisor's restart backoff looks the same.
            tokio::time::sleep(Duration::from_secs(8)).await;
        }
        consumer = ConsumerProcess::spawn(env);
    }
    consumer
}

impl Consumer for ConsumerProcess {
    /// Waits (blocking, at most 30 s) for the child to log its address.
    fn http(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.reported_http() {
                return addr;
            }
            // One more look: the line may have been written just before the exit.
            let gone = self.exited();
            if let Some(addr) = self.reported_http() {
                return addr;
            }
            assert!(
                !gone && Instant::now() < deadline,
                "the consumer {} without logging where it serves HTTP (`http_addr`); log:\n{}",
                if gone { "exited" } else { "ran for 30 s" },
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        super::ports::tail(&self.log, 40)
    }

    async fn wait_healthy(&self) {
        // The address without blocking the runtime, then `/healthz`.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.reported_http().is_none() {
            assert!(
                !self.exited() || self.reported_http().is_some(),
                "the consumer exited before serving HTTP; log:\n{}",
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "the consumer did not log where it serves HTTP within 30 s; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.healthy_by(deadline).await;
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        self.kill();
        drop(self.echo.take());
    }
}

/// The address in `cdc-monitor`'s "serving /metrics, /healthz and /readyz"
/// line: its `http_addr` field, in the text or the JSON format, colours or
/// not. A port of 0 is the configured address, not the bound one.
pub fn http_addr_in(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    let rest = &line[line.find("http_addr")? + "http_addr".len()..];
    let value = rest.trim_start_matches(['=', '"', ':', ' ']);
    let end = value
        .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
        .unwrap_or(value.len());
    let addr: SocketAddr = value[..end].parse().ok()?;
    (addr.port() != 0).then_some(addr)
}

/// `s` without ANSI escape sequences (tracing colours field names on a terminal).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// With `TEST_LOG` set, copies a child's log file to stderr as it grows.
struct LogEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogEcho {
    fn start(path: PathBuf) -> LogEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut offset = 0;
                loop {
                    // Read once more after the stop: the child's last lines.
                    let last = stop.load(Ordering::Relaxed);
                    if let Ok(bytes) = std::fs::read(&path) {
                        if bytes.len() > offset {
                            // Straight to the process's stderr, as the child's
                            // own stderr was before: not the test's captured output.
                            let _ = std::io::stderr().write_all(&bytes[offset..]);
                            offset = bytes.len();
                        }
                    }
                    if last {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        LogEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LogEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sums samples of `name` (exact metric name) matching `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name && labels.iter().all(|lab| l.contains(lab))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

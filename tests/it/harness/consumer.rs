//! The real `cdc-monitor run` binary as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A running consumer.
pub struct ConsumerProcess {
    child: Option<Child>,
    pub http: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsumerProcess {
    /// Starts `cdc-monitor run` with `env` (and no other CDC_* variable).
    pub fn spawn(env: &[(String, String)]) -> ConsumerProcess {
        let port = super::free_port();
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("consumer.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-monitor"));
        cmd.arg("run");
        for (k, _) in std::env::vars() {
            if k.starts_with("CDC_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.env("CDC_HTTP_ADDR", http.to_string());
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if std::env::var_os("TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(std::fs::File::create(&log).unwrap());
        }
        let child = cmd.spawn().expect("spawn cdc-monitor");
        ConsumerProcess {
            child: Some(child),
            http,
            log,
            _dir: dir,
        }
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self) {
        let url = format!("http://{}/healthz", self.http);
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// `/metrics` text ("" when unreachable).
    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.http)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sum of every sample of `name` whose labels contain each of `labels` (`k="v"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        self.kill();
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

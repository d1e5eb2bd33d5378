//! A real Prometheus (Debian's package) scraping one target every second.

use std::process::{Child, Command, Stdio};

/// Starts `bin` with `config`, its data under `dir`, on 127.0.0.1:`port`,
/// logging to `log`.
pub fn spawn(
    bin: &str,
    config: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    log: &std::path::Path,
) -> Child {
    Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (Debian's prometheus package): {e}"))
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`); None when it is not installed.
    pub fn start(target: &str) -> Option<Prometheus> {
        Prometheus::start_scraping(target, None)
    }

    /// `start`, sending the token in `credentials_file` as a Bearer token,
    /// as the compose stack's Prometheus does.
    pub fn start_scraping(
        target: &str,
        credentials_file: Option<&std::path::Path>,
    ) -> Option<Prometheus> {
        let bin = ["/usr/bin/prometheus", "prometheus"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cdc-monitor\n    static_configs:\n      - targets: ['{target}']\n{}",
                credentials_file.map_or_else(String::new, |f| format!(
                    "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                    f.display()
                ))
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let (child, port) =
            super::ports::spawn_listening("prometheus", std::slice::from_ref(&log), |port| {
                spawn(bin, &config, dir.path(), port, &log)
            });
        let url = format!("http://127.0.0.1:{port}");
        Some(Prometheus {
            child,
            url,
            _dir: dir,
        })
    }

    /// Runs an instant query; the sum of the result's values.
    pub async fn query_sum(&self, promql: &str) -> Option<f64> {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/query", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "query={}",
                url::form_urlencoded::byte_serialize(promql.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.is_empty() {
            return None;
        }
        Some(
            result
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

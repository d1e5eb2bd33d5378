//! Headless Chromium over WebDriver: Debian's `chromedriver` on a port of its own,
//! one browser per test with its own profile, both killed on drop.
//! `CHROMEDRIVER` and `CHROMIUM` override the binaries' paths.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::json;

/// A WebDriver session on headless Chromium.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn binary(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Where tests leave screenshots: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a browser with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let out = profile.path().join("chromedriver.out");
        let driver_bin = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let spawn = {
            let (log, out, driver_bin) = (log.clone(), out.clone(), driver_bin.clone());
            move |port: u16| {
                Command::new(&driver_bin)
                    .arg(format!("--port={port}"))
                    .arg(format!("--log-path={}", log.display()))
                    .stdin(Stdio::null())
                    // "IPv4 port not available" goes to stdout.
                    .stdout(std::fs::File::create(&out).unwrap())
                    .stderr(Stdio::null())
                    // Its own process group: the browsers it starts are killed with it.
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot start {driver_bin} ({e}); install chromium and chromium-driver"
                        )
                    })
            }
        };
        let logs = [log.clone(), out];
        // Waiting for the port blocks: off the async threads.
        let (driver, port) = tokio::task::spawn_blocking(move || {
            super::ports::spawn_listening("chromedriver", &logs, spawn)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let client = match Self::connect(port, &profile, width, height).await {
            Ok(c) => c,
            Err(e) => {
                kill_group(driver.id());
                panic!(
                    "cannot start a WebDriver session on {driver_bin}: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let browser = Browser {
            client,
            driver,
            _profile: profile,
        };
        browser
            .client
            .set_window_size(width, height)
            .await
            .unwrap_or_else(|e| panic!("set window size: {e}"));
        browser
    }

    async fn connect(
        port: u16,
        profile: &tempfile::TempDir,
        width: u32,
        height: u32,
    ) -> Result<Client, String> {
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary("CHROMIUM", "/usr/bin/chromium"),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().join("chromium").display()),
                ]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = ClientBuilder::native()
                .capabilities(caps.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(c) => return Ok(c),
                // chromedriver takes a moment to listen after it starts.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a PNG of the window as `target/test-artifacts/NAME`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session (the browser quits); drop then stops chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
    }
}

/// SIGKILL to the process group `pgid` (chromedriver and its browsers).
fn kill_group(pgid: u32) {
    // `-s KILL --` before the negative id: procps-ng 4.0's kill reads
    // `kill -KILL -21497` as `kill(-2, SIGKILL)`, only the first digit, so
    // a group id starting with 1 would become -1: every process there is.
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.driver.id());
        // Should the group kill have failed, `wait` must still not hang.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

//! `cdc_monitor::app::App` in this test process, for the pipeline tests that
//! send no signal: built from the same `CDC_*` pairs a child would get, run
//! until the test stops or drops it, HTTP on a port the kernel picks.
//!
//! Its log goes to the test's captured output (shown when the test fails);
//! with `TEST_LOG` set, to stderr as it happens.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use cdc_monitor::app::{App, AppError};
use cdc_monitor::config::{Config, Layers, Origin, KEYS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::consumer::Consumer;

/// Longest wait for a dropped app to stop: the default shutdown timeout
/// (30 s), leaving the group (5 s) and some room.
const DROP_TIMEOUT: Duration = Duration::from_secs(45);

/// `pairs` (`CDC_*` variable, value) as configuration layers, each named
/// after its variable in errors, as `cdc-monitor run` would read them from
/// its environment. Panics on a variable `run` does not know.
pub fn layers(pairs: &[(String, String)]) -> Layers {
    let mut layers = Layers::default();
    for (env, value) in pairs {
        let key = KEYS
            .iter()
            .find(|k| k.env == env)
            .unwrap_or_else(|| panic!("{env} is not a variable of `cdc-monitor run`"));
        layers.set(key.path, value.clone(), Origin::Env(key.env));
    }
    layers
}

/// A running in-process app.
pub struct InProcessApp {
    http: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
}

impl InProcessApp {
    /// Builds and starts the app of `pairs` (`CDC_*` variable, value), like
    /// `ConsumerProcess::spawn` with the same pairs.
    pub async fn spawn(pairs: &[(String, String)]) -> InProcessApp {
        InProcessApp::start(layers(pairs)).await
    }

    /// Builds and starts the app of `layers`; its HTTP address is replaced
    /// by `127.0.0.1:0`, and [`Consumer::http`] is where it was bound.
    pub async fn start(mut layers: Layers) -> InProcessApp {
        init_log();
        let http = KEYS
            .iter()
            .find(|k| k.env == "CDC_HTTP_ADDR")
            .expect("CDC_HTTP_ADDR is a key");
        layers.set(http.path, "127.0.0.1:0".into(), Origin::Env(http.env));
        let cfg = Config::from_layers(&layers).unwrap_or_else(|e| panic!("configuration: {e}"));
        let app = App::build(cfg)
            .await
            .unwrap_or_else(|e| panic!("App::build: {e}"));
        let http = app.http_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // A dropped sender stops the app too.
        let task = tokio::spawn(app.run_until(async move {
            let _ = stop_rx.await;
        }));
        InProcessApp {
            http,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    /// False once `run_until` has returned by itself (a write it gave up on).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops it as SIGTERM stops the binary (stop reading, flush, commit,
    /// leave the group) and returns what `run_until` returned.
    pub async fn stop(mut self) -> Result<(), AppError> {
        drop(self.stop_tx.take());
        let task = self.task.take().expect("running");
        task.await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

impl Consumer for InProcessApp {
    fn http(&self) -> SocketAddr {
        self.http
    }

    fn log_tail(&self) -> String {
        "(the app runs in the test process: its log is in this test's captured output; \
         TEST_LOG=1 prints it as it happens)"
            .into()
    }
}

impl Drop for InProcessApp {
    /// Stops the app and waits for it, as a test that drops a child process
    /// also has it gone: the next app of the test, or of the next test, must
    /// not share a consumer group or a store with a half-stopped one.
    fn drop(&mut self) {
        drop(self.stop_tx.take());
        let Some(mut task) = self.task.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // `block_in_place` needs the multi-thread runtime, which every
            // pipeline test uses.
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| {
                    rt.block_on(async {
                        if tokio::time::timeout(DROP_TIMEOUT, &mut task).await.is_err() {
                            task.abort();
                        }
                    })
                });
            }
            _ => task.abort(),
        }
    }
}

/// Installs the log subscriber for in-process apps, once per test process.
fn init_log() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,librdkafka=warn,rdkafka=warn",
            ))
            .with_ansi(false)
            .with_writer(|| CapturedLog)
            .try_init();
    });
}

/// Writes a log line where the test that runs the app collects its output.
///
/// libtest captures output per test thread, and threads spawned from it
/// (the test's tokio workers) inherit the capture; `print!` writes there.
/// librdkafka's own threads are not Rust's and belong to no test: their
/// lines would land in the middle of the test summary, so they are dropped
/// unless `TEST_LOG` is set.
struct CapturedLog;

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        } else if std::thread::current().name().is_some() {
            print!("{}", String::from_utf8_lossy(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! Test harness: real servers (Tansu, Prometheus, MariaDB) and protocol
//! stubs (Elasticsearch, TiCDC) on ports of their own (`ports`), each test
//! with its own names, everything killed on drop. The pipeline runs in
//! process (`app`) unless a test signals it or checks how the binary exits
//! (`consumer`). Quiet unless `TEST_LOG` is set.
#![allow(dead_code)] // each scenario uses a different part of the harness

pub mod app;
pub mod browser;
pub mod canal;
pub mod consumer;
pub mod es;
pub mod kafka;
pub mod mariadb;
pub mod ports;
pub mod prometheus;
pub mod ticdc;
pub mod tls;
pub mod tmpfs;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// SIGTERM to `child` and waits for its exit, at most `timeout`; `None`
/// (after a SIGKILL) when it did not exit in time.
pub fn terminate_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A name no other test in this run (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

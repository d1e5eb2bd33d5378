//! Ports without races.
//!
//! Binding port 0, reading the port and closing the socket before a server
//! binds it leaves a window in which anything else can take the port: two
//! tests, or an outgoing connection, which gets its local port from the
//! same ephemeral range. So:
//!
//! - `cdc-monitor` (child or in process) binds `127.0.0.1:0` itself and the
//!   harness reads the port it reports.
//! - A server that must be given its port (Tansu, MariaDB, Prometheus,
//!   chromedriver) gets a [`candidate`] below the ephemeral range, never
//!   handed out twice in this run, and [`spawn_listening`] starts it again
//!   on another one when the port turns out to be taken (another test run
//!   on this machine), checking that the listener on the port is the
//!   child's own and not someone else's.
//! - A port where nothing listens is a [`ClosedPort`], held for as long as
//!   the test needs it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// Starts of one server before giving up on finding a free port.
const ATTEMPTS: usize = 5;

/// Ports already handed out in this test run: two servers of this run never
/// get the same one, even when one of them stops and starts again.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Where the kernel takes ports for `bind(0)` and outgoing connections.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port for a server that must be told its port: outside the
/// ephemeral range, not handed out before in this run, free right now.
/// Free now is no promise; [`spawn_listening`] checks who got it.
pub fn candidate() -> u16 {
    let (lo, hi) = ephemeral_range();
    let range = if lo > 11_000 {
        10_000..lo
    } else if hi < 64_000 {
        hi + 1..65_535
    } else {
        // No room outside the ephemeral range: the retries must do.
        1024..65_535
    };
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(range.clone());
        if !HANDED_OUT.lock().unwrap().insert(port) {
            continue;
        }
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A loopback port where nothing listens, and nothing can while this lives:
/// connecting to it is refused.
///
/// A TCP socket bound to the port but never `listen()`ed holds it. It does
/// not set `SO_REUSEADDR`, so nobody else can bind the port (Linux lets a
/// second socket share a port only when both set `SO_REUSEADDR` and neither
/// listens), neither `bind(0)` nor an outgoing connection picks it, and a
/// SYN to it finds no listener and is answered with a reset.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    /// Binds a fresh one.
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        ClosedPort {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// How a started server stands with its port.
enum Bound {
    /// The child (or one of its descendants) listens on it.
    Listening,
    /// Someone else has it: the child exited saying so, or another
    /// process listens there while the child does not.
    Taken,
}

/// Starts a server with `spawn(port)` on a [`candidate`] port, and on
/// another one when the port was taken; returns once the child itself
/// listens. `logs` are the child's output files, where it says why it
/// exited. Panics after a few taken ports, or when the child fails otherwise.
pub fn spawn_listening(
    what: &str,
    logs: &[PathBuf],
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    let mut taken = Vec::new();
    for _ in 0..ATTEMPTS {
        let port = candidate();
        let mut child = spawn(port);
        match wait_bound(what, &mut child, port, logs, Duration::from_secs(60)) {
            Bound::Listening => return (child, port),
            Bound::Taken => {
                kill_tree(&mut child);
                taken.push(port);
            }
        }
    }
    panic!(
        "{what}: ports {taken:?} were each taken by another process; last log:\n{}",
        tails(logs)
    )
}

/// Waits until `child` listens on `port`, which it was told to use and
/// cannot change (a restart on the same port); panics when it does not.
pub fn wait_listening(what: &str, child: &mut Child, port: u16, logs: &[PathBuf]) {
    if let Bound::Taken = wait_bound(what, child, port, logs, Duration::from_secs(60)) {
        kill_tree(child);
        panic!(
            "{what}: port {port} was taken by another process while it was stopped; log:\n{}",
            tails(logs)
        );
    }
}

fn wait_bound(
    what: &str,
    child: &mut Child,
    port: u16,
    logs: &[PathBuf],
    timeout: Duration,
) -> Bound {
    let started = Instant::now();
    // A server may retry its bind for a while: only a listener of someone
    // else's that stays this long counts as the port being taken.
    let patience = Duration::from_secs(10);
    loop {
        let listeners = listening_inodes(port);
        if !listeners.is_empty() {
            let ours = socket_inodes_of_tree(child.id());
            if listeners.iter().any(|i| ours.contains(i)) {
                return Bound::Listening;
            }
            if started.elapsed() > patience {
                return Bound::Taken;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = tails(logs);
            if says_port_taken(&log) {
                return Bound::Taken;
            }
            panic!("{what} exited ({status}) before listening on port {port}; log:\n{log}");
        }
        if started.elapsed() > timeout {
            kill_tree(child);
            panic!(
                "{what} did not listen on port {port} within {timeout:?}; log:\n{}",
                tails(logs)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What Tansu, Prometheus, chromedriver and MariaDB print when their port is taken.
fn says_port_taken(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    [
        "address already in use",
        "address in use",
        "port not available",
    ]
    .iter()
    .any(|s| log.contains(s))
}

/// The inodes of the TCP sockets listening on `port` (any address).
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = f.get(1) else { continue };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN.
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9).and_then(|i| i.parse().ok()) {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

/// `pid` and its descendants (a server may be started through a shell).
fn tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        all.push(pid);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                pending.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    all
}

/// SIGKILL to `child` and its descendants, which a shell in between would
/// otherwise leave running.
fn kill_tree(child: &mut Child) {
    for pid in tree(child.id()).into_iter().skip(1) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The socket inodes open in `pid` and its descendants.
fn socket_inodes_of_tree(pid: u32) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for pid in tree(pid) {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse().ok())
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

/// The ends of `logs`, for failure messages.
fn tails(logs: &[PathBuf]) -> String {
    logs.iter()
        .map(|p| format!("{}:\n{}", p.display(), tail(p, 30)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of the file at `path` ("" when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

//! The processes the bench starts, and what it reads from them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when this is dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `cdc-monitor` executable beside this one.
pub fn monitor_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("cdc-monitor");
    anyhow::ensure!(
        exe.is_file(),
        "{} not found: the bench runs `cdc-monitor run` from beside cdc-bench (cargo build --release --bins)",
        exe.display()
    );
    Ok(exe)
}

/// `cdc-monitor run`, logging at `CDC_LOG_LEVEL` (warn unless set) to our
/// stderr; the caller sets the rest of its `CDC_*` configuration.
pub fn monitor_run() -> anyhow::Result<Command> {
    let mut cmd = Command::new(monitor_exe()?);
    cmd.arg("run")
        .env(
            "CDC_LOG_LEVEL",
            std::env::var("CDC_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// Peak resident set size of `pid` in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / per_second.max(1) as f64)
}

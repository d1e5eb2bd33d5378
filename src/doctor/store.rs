//! The embedded store's hop: DATA_DIR writable, events.db opens, free disk
//! for `CDC_STORE_MAX_BYTES`.

use std::path::{Path, PathBuf};

use super::{broken, Broken};
use crate::config::StoreConfig;

/// DATA_DIR is writable, events.db opens, and the disk has room for
/// `CDC_STORE_MAX_BYTES`.
pub(super) fn store(data_dir: &Path, cfg: &StoreConfig) -> Result<String, Broken> {
    let shown = data_dir.display();
    // Before the first run DATA_DIR may not exist: `run` creates it in the
    // nearest existing ancestor, which must then be writable.
    let existing = data_dir
        .ancestors()
        .find(|p| p.as_os_str().is_empty() || p.exists())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    if !existing.is_dir() {
        return Err(broken(
            format!("{} is not a directory", existing.display()),
            "set CDC_DATA_DIR to a directory",
        ));
    }
    let probe = existing.join(format!(".cdc-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        return Err(broken(
            format!("cannot write in {}: {e}", existing.display()),
            format!(
                "give the user running cdc-monitor write access (`chown -R $(id -u) {}`) or set CDC_DATA_DIR elsewhere",
                existing.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(&probe);
    let db = data_dir.join("events.db");
    let mut used = 0u64;
    let opened = if db.exists() {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let checked = rusqlite::Connection::open_with_flags(&db, flags).and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        if let Err(e) = checked {
            return Err(broken(
                format!("{} does not open: {e}", db.display()),
                format!(
                    "stop cdc-monitor, move it aside (`mv {0} {0}.broken`) and start again: the store starts empty",
                    db.display()
                ),
            ));
        }
        for suffix in ["", "-wal"] {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            used += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        }
        format!("events.db opens ({})", bytes(used))
    } else {
        "events.db not created yet".to_owned()
    };
    let room = match free_bytes(&existing) {
        Ok(free) => {
            let needed = cfg.max_bytes.saturating_sub(used);
            if free < needed {
                return Err(broken(
                    format!(
                        "{shown}: {} free, but the store may grow by {} more (CDC_STORE_MAX_BYTES {})",
                        bytes(free),
                        bytes(needed),
                        bytes(cfg.max_bytes)
                    ),
                    format!(
                        "free disk space, or set CDC_STORE_MAX_BYTES below {}",
                        bytes(free + used)
                    ),
                ));
            }
            format!("{} free", bytes(free))
        }
        Err(e) => format!("free space unknown ({e})"),
    };
    Ok(format!(
        "store {shown}: writable, {opened}, {room} for CDC_STORE_MAX_BYTES {}",
        bytes(cfg.max_bytes)
    ))
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is
    // read only after statvfs returned 0, having filled it.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // c_ulong and fsblkcnt_t are u32 on some targets
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

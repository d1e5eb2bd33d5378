//! A small tmpfs of the test's own: the embedded store's file system, which
//! the test fills (the next writes fail with SQLITE_FULL, for real) and then
//! frees again. Needs root (mount), as CI and the test command have.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on a new temporary directory.
    pub fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN): {status:?}"
        );
        let filler = dir.path().join("filler");
        Tmpfs { dir, filler }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every free byte with a file of its own: the next write that
    /// needs a new block fails with ENOSPC.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.filler).unwrap();
        let block = vec![0x5a_u8; 64 << 10];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        // Smaller writes take the last partial block.
        while f.write_all(&[0x5a]).is_ok() {}
    }

    /// Gives the space back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process the test killed may still be closing its files.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

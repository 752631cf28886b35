//! A small tmpfs mounted for one test: a disk that really fills up (ENOSPC).
//! Mounting needs root (CI runs as root); the test fails saying so otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    pub fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).expect("the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "pulse-test"])
            .arg(&path)
            .output()
            .expect("the mount command");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs failed (this disk-fault test needs root, as in .ci/run): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { _dir: dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the disk with a file until no byte is left; returns its path.
    pub fn fill(&self) -> PathBuf {
        self.fill_as("filler")
    }

    pub fn fill_as(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join(name);
        let mut f = std::fs::File::create(&filler).expect("the filler file");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Then byte by byte, so that not even a small write fits.
        while f.write_all(&[0]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

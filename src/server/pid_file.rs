//! The optional pid file (`server.pid_file`): nginx's `pid`, HAProxy's
//! `pidfile`. Written when Levee starts serving, removed on a clean exit, so
//! that `kill -HUP $(cat /run/levee.pid)` and logrotate's `postrotate` find
//! the process. A crash leaves the file behind, as nginx's does; the next
//! start overwrites it.

use std::io::Write;
use std::path::{Path, PathBuf};

pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id (and a newline) to `path`. Written to a
    /// temporary file beside it and renamed, so a reader never sees a
    /// half-written number.
    pub fn create(path: &Path) -> std::io::Result<PidFile> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only ours: a newer Levee may have taken the path over.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("levee.pid");
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid);
        assert!(!path.exists());
        // Another process's file is left alone.
        let pid = PidFile::create(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid);
        assert!(path.exists());
        assert!(PidFile::create(&dir.path().join("no/such/dir/levee.pid")).is_err());
    }
}

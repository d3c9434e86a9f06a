//! The routes' SLO counts in a file, so that a restart keeps the budget.
//!
//! Written crash-safely: to a temporary file beside it, fsynced, renamed
//! over the old one, and the directory fsynced, so a crash leaves the old
//! file or the new one, never half of one. A missing, unreadable or corrupt
//! file is logged and the counts start fresh: it must never stop Levee from
//! starting.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Saved;
use super::window::Counts;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct File {
    pub version: u32,
    /// Unix seconds when written.
    pub saved_at: u64,
    pub routes: BTreeMap<String, RouteState>,
}

/// Buckets as `[start, requests, bad]`.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct RouteState {
    pub minutes: Vec<[u64; 3]>,
    pub hours: Vec<[u64; 3]>,
}

pub fn encode(saved: &Saved) -> Vec<[u64; 3]> {
    saved.iter().map(|(at, c)| [*at, c.total, c.bad]).collect()
}

pub fn decode(rows: &[[u64; 3]]) -> Saved {
    rows.iter()
        .map(|[at, total, bad]| {
            (
                *at,
                Counts {
                    total: *total,
                    // A file edited by hand cannot make more bad than total.
                    bad: (*bad).min(*total),
                },
            )
        })
        .collect()
}

/// Writes `file` to `path` crash-safely.
pub fn save(path: &Path, file: &File) -> std::io::Result<()> {
    let text = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "slo".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the file; `Err` says why it cannot be used (the caller logs it and
/// starts fresh). A missing file is `Ok(None)`.
pub fn load(path: &Path) -> Result<Option<File>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let file: File = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not an SLO state file: {e}", path.display()))?;
    if file.version != VERSION {
        return Err(format!(
            "{} has version {}, this Levee reads version {VERSION}",
            path.display(),
            file.version
        ));
    }
    Ok(Some(file))
}

pub fn new_file(saved_at: u64) -> File {
    File {
        version: VERSION,
        saved_at,
        routes: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slo.json");
        assert_eq!(load(&path), Ok(None));
        let mut f = new_file(42);
        f.routes.insert(
            "api".into(),
            RouteState {
                minutes: vec![[60, 10, 1]],
                hours: vec![[0, 10, 1]],
            },
        );
        save(&path, &f).unwrap();
        assert_eq!(load(&path), Ok(Some(f)));
        std::fs::write(&path, b"{\"version\": 1, \"routes\": ").unwrap();
        assert!(load(&path).unwrap_err().contains("not an SLO state file"));
        std::fs::write(&path, b"{\"version\": 9, \"saved_at\": 0, \"routes\": {}}").unwrap();
        assert!(load(&path).unwrap_err().contains("version 9"));
        assert_eq!(decode(&[[0, 1, 5]])[0].1, Counts { total: 1, bad: 1 });
    }
}

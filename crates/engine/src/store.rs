//! The run directory (DESIGN.md, "Run directory"): creation, the journal of completed
//! stages, metrics, and crash-safe writes.
//!
//! Every file is written to a temporary name, synced and renamed; `journal.jsonl` and
//! `metrics.jsonl` are appended and synced. A journal line is written only after its stage's
//! files are in place, and records how long `metrics.jsonl` was then, so a resumed run cuts
//! off whatever a killed stage had begun to log and replays the stage.

use crate::{Error, Result};
use autodidact_core::fs::write_atomic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Version of the run-directory layout; a newer one is refused with a hint.
pub const RUN_FORMAT_VERSION: u32 = 1;

pub const CONFIG_FILE: &str = "config.toml";
pub const RUN_FILE: &str = "run.json";
pub const JOURNAL_FILE: &str = "journal.jsonl";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Whether a run has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Complete,
    /// Ended early by the controller (a `stop` alarm or early stopping; the last round's
    /// manifest says why).
    Stopped,
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format_version: u32,
    pub autodidact_version: String,
    pub seed: u64,
    /// Worker threads the run was started with (results are reproducible for a fixed count).
    pub threads: usize,
    pub status: RunStatus,
}

/// One completed stage (a line of `journal.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub stage: String,
    pub round: u32,
    /// Wall-clock seconds the stage took (kept out of `metrics.jsonl`, which is reproducible).
    pub seconds: f64,
    /// Length of `metrics.jsonl` when the stage completed.
    pub metrics_bytes: u64,
}

/// An open run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| autodidact_core::Error::io(op, path, e).into()
}

fn append_synced(path: &Path, line: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("opening", path))?;
    f.write_all(line.as_bytes())
        .map_err(io("appending to", path))?;
    f.sync_all().map_err(io("syncing", path))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl RunDir {
    /// Creates a run directory at `root` holding `config.toml` and `run.json`. `root` must not
    /// exist or be empty: the directory is assembled under a temporary name and renamed into
    /// place, so a kill leaves either nothing or a complete new run.
    pub fn create(root: &Path, config_toml: &str, info: &RunInfo) -> Result<Self> {
        if root.exists() {
            let empty = std::fs::read_dir(root)
                .map_err(io("reading", root))?
                .next()
                .is_none();
            if !empty {
                let msg = if root.join(RUN_FILE).exists() {
                    "already holds a run; continue it with `autodidact resume` or choose another --out"
                } else {
                    "exists and is not empty; choose another --out"
                };
                return Err(Error::run(root, msg));
            }
        }
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io("creating directory", &parent))?;
        let name = root
            .file_name()
            .ok_or_else(|| Error::run(root, "is not a directory name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{name}.creating-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("removing stale", &tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io("creating directory", &tmp))?;
        write_atomic(&tmp.join(CONFIG_FILE), config_toml.as_bytes())?;
        write_atomic(&tmp.join(JOURNAL_FILE), b"")?;
        write_atomic(&tmp.join(METRICS_FILE), b"")?;
        let json = serde_json::to_vec_pretty(info).expect("RunInfo serializes");
        write_atomic(&tmp.join(RUN_FILE), &json)?;
        std::fs::rename(&tmp, root).map_err(io("renaming into place", root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing run, checking its format version.
    pub fn open(root: &Path) -> Result<(Self, RunInfo)> {
        let path = root.join(RUN_FILE);
        if !path.exists() {
            return Err(Error::run(
                root,
                format!("has no {RUN_FILE}: it is not an autodidact run (start one with `autodidact run --out DIR`)"),
            ));
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        let info: RunInfo = dir.read_json(RUN_FILE)?;
        if info.format_version > RUN_FORMAT_VERSION {
            return Err(Error::run(
                root,
                format!(
                    "was written in run format {} by autodidact {}; this is autodidact {} (format {RUN_FORMAT_VERSION}): upgrade autodidact to resume it",
                    info.format_version,
                    info.autodidact_version,
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        Ok((dir, info))
    }

    /// Removes what a killed process left half-written: temporary files and directories
    /// (`.NAME.tmp-PID`, `.NAME.old-PID`) beside the run's files. Returns how many.
    pub fn remove_leftovers(&self) -> Result<usize> {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).map_err(io("reading", &d))? {
                let path = entry.map_err(io("reading", &d))?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let leftover =
                    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"));
                if leftover {
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path).map_err(io("removing", &path))?;
                    } else {
                        std::fs::remove_file(&path).map_err(io("removing", &path))?;
                    }
                    removed += 1;
                } else if path.is_dir() {
                    dirs.push(path);
                }
            }
        }
        Ok(removed)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn round_dir(round: u32) -> String {
        format!("rounds/r{round:04}")
    }

    pub fn checkpoint_dir(round: u32) -> String {
        format!("checkpoints/r{round:04}")
    }

    /// Writes `value` as pretty JSON to `rel`, atomically.
    pub fn write_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).expect("run files serialize");
        bytes.push(b'\n');
        self.write_bytes(rel, &bytes)
    }

    /// Writes one JSON object per line to `rel`, atomically.
    pub fn write_jsonl<T: Serialize>(&self, rel: &str, items: &[T]) -> Result<()> {
        let mut bytes = Vec::new();
        for item in items {
            serde_json::to_writer(&mut bytes, item).expect("run files serialize");
            bytes.push(b'\n');
        }
        self.write_bytes(rel, &bytes)
    }

    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating directory", parent))?;
        }
        Ok(write_atomic(&path, bytes)?)
    }

    pub fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Result<T> {
        let path = self.path(rel);
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("is not what autodidact wrote: {e}")))
    }

    pub fn read_jsonl<T: DeserializeOwned>(&self, rel: &str) -> Result<Vec<T>> {
        let path = self.path(rel);
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::file(
                        &path,
                        format!("line {} is not what autodidact wrote: {e}", i + 1),
                    )
                })
            })
            .collect()
    }

    /// The completed stages. A last line cut short by a kill is dropped from the file.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let path = self.path(JOURNAL_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            truncate(&path, complete as u64)?;
        }
        text[..complete]
            .lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::file(&path, format!("line {} is not a journal entry: {e}", i + 1))
                })
            })
            .collect()
    }

    pub fn append_journal(&self, entry: &JournalEntry) -> Result<()> {
        let mut line = serde_json::to_string(entry).expect("journal entries serialize");
        line.push('\n');
        append_synced(&self.path(JOURNAL_FILE), &line)
    }

    pub fn append_metrics(&self, value: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(value).expect("metrics serialize");
        line.push('\n');
        append_synced(&self.path(METRICS_FILE), &line)
    }

    pub fn metrics_bytes(&self) -> Result<u64> {
        let path = self.path(METRICS_FILE);
        Ok(std::fs::metadata(&path)
            .map_err(io("reading", &path))?
            .len())
    }

    /// Cuts `metrics.jsonl` back to `len` bytes (what the last journaled stage left).
    pub fn truncate_metrics(&self, len: u64) -> Result<()> {
        let path = self.path(METRICS_FILE);
        if std::fs::metadata(&path)
            .map_err(io("reading", &path))?
            .len()
            < len
        {
            return Err(Error::file(&path, format!("is shorter than the {len} bytes the journal records: it was modified or truncated")));
        }
        truncate(&path, len)
    }

    pub fn metrics(&self) -> Result<Vec<serde_json::Value>> {
        self.read_jsonl(METRICS_FILE)
    }

    pub fn set_status(&self, info: &mut RunInfo, status: RunStatus) -> Result<()> {
        info.status = status;
        self.write_json(RUN_FILE, info)
    }
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("opening", path))?;
    f.set_len(len).map_err(io("truncating", path))?;
    f.sync_all().map_err(io("syncing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            format_version: RUN_FORMAT_VERSION,
            autodidact_version: "test".into(),
            seed: 1,
            threads: 1,
            status: RunStatus::Running,
        }
    }

    #[test]
    fn refuses_a_directory_holding_another_run_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        RunDir::create(&root, "a = 1", &info()).unwrap();
        let before = std::fs::read(root.join(CONFIG_FILE)).unwrap();
        let err = RunDir::create(&root, "b = 2", &info())
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a run"), "{err}");
        assert_eq!(std::fs::read(root.join(CONFIG_FILE)).unwrap(), before);
        std::fs::create_dir(tmp.path().join("other")).unwrap();
        std::fs::write(tmp.path().join("other/x"), "x").unwrap();
        let err = RunDir::create(&tmp.path().join("other"), "", &info())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        RunDir::create(&tmp.path().join("empty"), "", &info()).unwrap();
    }

    #[test]
    fn a_torn_journal_line_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::create(&tmp.path().join("r"), "", &info()).unwrap();
        let e = JournalEntry {
            stage: "seed".into(),
            round: 0,
            seconds: 1.0,
            metrics_bytes: 0,
        };
        dir.append_journal(&e).unwrap();
        append_synced(&dir.path(JOURNAL_FILE), "{\"stage\":\"ev").unwrap();
        assert_eq!(dir.journal().unwrap(), vec![e.clone()]);
        dir.append_journal(&e).unwrap();
        assert_eq!(dir.journal().unwrap().len(), 2);
    }

    #[test]
    fn newer_format_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut i = info();
        i.format_version = RUN_FORMAT_VERSION + 1;
        RunDir::create(&tmp.path().join("r"), "", &i).unwrap();
        let err = RunDir::open(&tmp.path().join("r")).unwrap_err().to_string();
        assert!(err.contains("upgrade autodidact"), "{err}");
    }
}

//! The run directory (docs/design.md, "Run directory"): creation, exclusive access, the
//! journal of completed stages, metrics, crash-safe writes and integrity checks.
//!
//! Every file is written to a temporary name, synced and renamed; `journal.jsonl` and
//! `metrics.jsonl` are appended and synced. A journal line is written only after its stage's
//! files are in place, and records how long `metrics.jsonl` was then and the SHA-256 of that
//! prefix, so a resumed run cuts off whatever a killed stage had begun to log, replays the
//! stage, and notices a committed line that was changed since.
//!
//! A round's `manifest.json` is written by each of the round's stages. A stage writes it as
//! `manifest.pending.json`; the journal line records the pending file's SHA-256, and only
//! then is it renamed over `manifest.json`. So `manifest.json` always matches the last
//! journal line of its round, and [`RunDir::settle_pending`] finishes (or drops) a rename that
//! a kill interrupted.
//!
//! A process that works on a run holds [`RunLock`], an advisory lock on `run.lock`, for as
//! long as it runs; a second one fails at once and names the holder.

use crate::{Error, Result};
use autodidact_core::fs::{rename_durable, write_atomic};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Version of the run-directory layout; a newer one is refused with a hint. Format 2 added
/// the lock, the config hash in `run.json`, the hashes in journal lines and pending manifests;
/// format 3 each journal line's own SHA-256 (an older run gets them when it resumes). A
/// format-1 run resumes with the checks its files allow.
pub const RUN_FORMAT_VERSION: u32 = 3;

pub const CONFIG_FILE: &str = "config.toml";
pub const RUN_FILE: &str = "run.json";
pub const JOURNAL_FILE: &str = "journal.jsonl";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOCK_FILE: &str = "run.lock";
const MANIFEST_FILE: &str = "manifest.json";
const PENDING_MANIFEST_FILE: &str = "manifest.pending.json";

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

/// `run.json`. Unknown keys are refused: a key whose name was damaged would otherwise read
/// as a hash never recorded, and the check it carries would be skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    pub format_version: u32,
    pub autodidact_version: String,
    pub seed: u64,
    /// Worker threads the run was started with (results are reproducible for a fixed count).
    pub threads: usize,
    pub status: RunStatus,
    /// SHA-256 of `config.toml`: a config edited after the run started is refused on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// SHA-256 of the run's problems (labeled, unlabeled and held-out, as JSON lines): a task
    /// file edited after the run started is refused on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems_sha256: Option<String>,
    /// [`crate::rm::digest`] of the `[reward]` model: a reward model changed after the run
    /// started is refused on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_sha256: Option<String>,
    /// Files that differed from what the run recorded and were accepted by `resume --force`,
    /// with the SHA-256 accepted (a file that still has it is not reported again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accepted: BTreeMap<String, String>,
}

/// One completed stage (a line of `journal.jsonl`). Each line written ends with
/// `"line_sha256"`, the SHA-256 of the line's bytes before it (closed with `}`): the journal
/// is what every other file is checked against, so it is checked itself, and a byte changed
/// in it is named as the journal's, not blamed on the file whose hash it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    pub stage: String,
    pub round: u32,
    /// Wall-clock seconds the stage took (kept out of `metrics.jsonl`, which is reproducible).
    pub seconds: f64,
    /// Length of `metrics.jsonl` when the stage completed.
    pub metrics_bytes: u64,
    /// SHA-256 of those first `metrics_bytes` bytes (absent in format-1 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_sha256: Option<String>,
    /// SHA-256 of the round's `manifest.json` as the stage left it (absent in format-1 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

/// Exclusive access to a run directory: an advisory lock (`flock`) on `run.lock`, which holds
/// the holder's PID. The kernel releases the lock when its process ends, however it ends, so
/// a lock left by a killed process is taken over by the next one; the PID left in the file
/// says whose it was.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// The PID a previous holder left in the file when it did not end cleanly (`kill -9`,
    /// a crash), if any.
    pub stale_holder: Option<u32>,
}

impl RunLock {
    /// Takes the lock of the run directory `root`, or fails naming the process holding it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_pid(&mut file)
                    .map_or("another process".to_string(), |p| format!("process {p}"));
                return Err(Error::run(
                    root,
                    format!("is in use by {holder}, which holds its lock ({LOCK_FILE}); wait for it to finish or stop it, then `autodidact resume` it"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", &path)(e)),
        }
        let stale_holder = read_pid(&mut file).filter(|&p| p != std::process::id());
        let mut lock = Self { file, stale_holder };
        lock.write_pid(Some(std::process::id()))
            .map_err(io("writing", &path))?;
        Ok(lock)
    }

    fn write_pid(&mut self, pid: Option<u32>) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        if let Some(pid) = pid {
            writeln!(self.file, "{pid}")?;
        }
        self.file.sync_all()
    }
}

impl Drop for RunLock {
    /// A clean release empties the file, so the next holder knows nothing was left behind.
    fn drop(&mut self) {
        let _ = self.write_pid(None);
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
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

/// A journal line for `entry`: its JSON, then its own SHA-256 as `line_sha256`.
fn journal_line(entry: &JournalEntry) -> String {
    let body = serde_json::to_string(entry).expect("journal entries serialize");
    format!(
        "{}{LINE_CHECK}{}\"}}\n",
        &body[..body.len() - 1],
        sha256_bytes(body.as_bytes())
    )
}

/// What comes before a journal line's own SHA-256.
const LINE_CHECK: &str = ",\"line_sha256\":\"";

/// The entry of a journal line that ends with its `line_sha256` (the line's bytes before it,
/// closed with `}`): `Ok` when the hash matches, `Err` when not; `None` for a line without
/// one.
fn checked_body(line: &str) -> Option<std::result::Result<String, ()>> {
    let at = line.rfind(LINE_CHECK)?;
    let stated = line[at + LINE_CHECK.len()..].strip_suffix("\"}");
    let body = format!("{}}}", &line[..at]);
    Some(match stated {
        Some(h) if h == sha256_bytes(body.as_bytes()) => Ok(body),
        _ => Err(()),
    })
}

/// SHA-256 of a file, hex.
/// The lines of the JSON-lines file at `path` (blank ones skipped); a line that does not
/// parse is an error naming the file and line, saying it `complaint`.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path, complaint: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::file(path, format!("line {} {complaint}: {e}", i + 1)))
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_prefix(path, u64::MAX)
}

/// SHA-256 of the first `len` bytes of a file (all of it when shorter), hex.
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String> {
    let f = File::open(path).map_err(io("opening", path))?;
    let mut f = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of bytes in memory, hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl RunDir {
    /// Creates a run directory at `root` holding `config.toml` and `run.json`, and takes its
    /// lock. `root` must not exist or be empty: the directory is assembled under a temporary
    /// name (the lock taken there, so no other process can slip in after the rename) and
    /// renamed into place, so a kill leaves either nothing or a complete new run.
    pub fn create(root: &Path, config_toml: &str, info: &RunInfo) -> Result<(Self, RunLock)> {
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
        let lock = RunLock::acquire(&tmp)?;
        std::fs::rename(&tmp, root).map_err(io("renaming into place", root))?;
        Ok((
            Self {
                root: root.to_path_buf(),
            },
            lock,
        ))
    }

    /// Takes this run's lock (see [`RunLock`]).
    pub fn lock(&self) -> Result<RunLock> {
        RunLock::acquire(&self.root)
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

    /// `rounds/rNNNN/manifest.json`.
    pub fn manifest_rel(round: u32) -> String {
        format!("{}/{MANIFEST_FILE}", Self::round_dir(round))
    }

    fn pending_manifest_rel(round: u32) -> String {
        format!("{}/{PENDING_MANIFEST_FILE}", Self::round_dir(round))
    }

    /// The round's manifest as the running stage sees it: the pending one its stage wrote,
    /// else the committed one, else `None`.
    pub fn current_manifest_rel(&self, round: u32) -> Option<String> {
        [Self::pending_manifest_rel(round), Self::manifest_rel(round)]
            .into_iter()
            .find(|rel| self.path(rel).exists())
    }

    /// Writes the running stage's manifest of `round` (as the pending manifest).
    pub fn write_manifest<T: Serialize>(&self, round: u32, manifest: &T) -> Result<()> {
        self.write_json(&Self::pending_manifest_rel(round), manifest)
    }

    /// SHA-256 of the round's manifest as the running stage leaves it, for its journal line.
    pub fn current_manifest_sha256(&self, round: u32) -> Result<Option<String>> {
        self.current_manifest_rel(round)
            .map(|rel| sha256_file(&self.path(&rel)))
            .transpose()
    }

    /// After a stage's journal line is written: renames the stage's pending manifest over
    /// `manifest.json`.
    pub fn commit_manifest(&self, round: u32) -> Result<()> {
        let pending = self.path(&Self::pending_manifest_rel(round));
        if pending.exists() {
            rename_durable(&pending, &self.path(&Self::manifest_rel(round)))?;
        }
        Ok(())
    }

    /// Finishes what a kill interrupted between a stage's journal line and the rename of its
    /// manifest: a pending manifest whose hash the last journal line records is committed;
    /// any other was written by a stage that did not complete (it will be replayed) and is
    /// removed. Returns how many were removed.
    ///
    /// A pending manifest that must be the last stage's (the round's committed manifest is
    /// still the one before it) but has another hash has changed since it was written: that
    /// is refused, naming it, and it is left in place.
    pub fn settle_pending(&self, journal: &[JournalEntry]) -> Result<usize> {
        let mut removed = 0;
        let rounds = self.path("rounds");
        if !rounds.exists() {
            return Ok(0);
        }
        for entry in std::fs::read_dir(&rounds).map_err(io("reading", &rounds))? {
            let dir = entry.map_err(io("reading", &rounds))?.path();
            let pending = dir.join(PENDING_MANIFEST_FILE);
            if !pending.exists() {
                continue;
            }
            let journaled = journal.last().filter(|last| {
                dir.ends_with(Self::round_dir(last.round))
                    && last.manifest_sha256.as_deref() == sha256_file(&pending).ok().as_deref()
            });
            if let Some(last) = journaled {
                self.commit_manifest(last.round)?;
            } else if let Some(last) = self.uncommitted(journal, &dir) {
                return Err(Error::integrity(
                    &pending,
                    format!(
                        "is the manifest of stage {} of round {}, which the run stopped while putting in place, but its SHA-256 is not the one the journal records for it: it has changed since; restore the run directory from a copy",
                        last.stage, last.round
                    ),
                ));
            } else {
                std::fs::remove_file(&pending).map_err(io("removing", &pending))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The last journal line, if it is of the round in `dir` and that round's committed
    /// manifest is still the one before it (the one the round's previous line records, or
    /// none): its manifest was never put in place, so a pending manifest must be it.
    fn uncommitted<'j>(&self, journal: &'j [JournalEntry], dir: &Path) -> Option<&'j JournalEntry> {
        let last = journal.last()?;
        if !dir.ends_with(Self::round_dir(last.round)) || last.manifest_sha256.is_none() {
            return None;
        }
        let before = journal[..journal.len() - 1]
            .iter()
            .rev()
            .find(|e| e.round == last.round)
            .and_then(|e| e.manifest_sha256.clone());
        let committed = sha256_file(&dir.join(MANIFEST_FILE)).ok();
        (committed == before && committed != last.manifest_sha256).then_some(last)
    }

    /// Checks every file a completed stage recorded against what the run recorded of it: the
    /// config's hash in `run.json`, the journaled length and hash of `metrics.jsonl`, each
    /// round's `manifest.json` against its last journal line, and every file a manifest lists
    /// against its SHA-256 there. A file whose current hash `info.accepted` holds is not
    /// reported. Returns what differs; an empty list means everything checked out.
    pub fn verify(&self, info: &RunInfo, journal: &[JournalEntry]) -> Result<Vec<Finding>> {
        let mut found = Vec::new();
        if let Some(want) = &info.config_sha256 {
            self.compare(
                CONFIG_FILE,
                u64::MAX,
                want,
                "changed since the run started (its SHA-256 is recorded in run.json)",
                &mut found,
            )?;
        }
        if let Some(last) = journal.last() {
            if let Some(want) = &last.metrics_sha256 {
                let path = self.path(METRICS_FILE);
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < last.metrics_bytes {
                    found.push(Finding {
                        file: METRICS_FILE.into(),
                        problem: format!(
                            "is {len} bytes long but the journal records {} bytes of completed stages",
                            last.metrics_bytes
                        ),
                        sha256: sha256_file(&path).ok(),
                    });
                } else {
                    self.compare(
                        METRICS_FILE,
                        last.metrics_bytes,
                        want,
                        "its completed lines changed since they were journaled",
                        &mut found,
                    )?;
                }
            }
        }
        let mut last_of_round: BTreeMap<u32, &JournalEntry> = BTreeMap::new();
        for e in journal {
            last_of_round.insert(e.round, e);
        }
        for (&round, entry) in &last_of_round {
            let rel = Self::manifest_rel(round);
            if !self.path(&rel).exists() {
                found.push(Finding {
                    file: rel,
                    problem: format!(
                        "is missing, but the journal records stage {} of round {round} as complete",
                        entry.stage
                    ),
                    sha256: None,
                });
                continue;
            }
            if let Some(want) = &entry.manifest_sha256 {
                let before = found.len();
                self.compare(
                    &rel,
                    u64::MAX,
                    want,
                    &format!(
                        "changed since stage {} of round {round} recorded it in the journal",
                        entry.stage
                    ),
                    &mut found,
                )?;
                if found.len() > before && !info.accepted.contains_key(&rel) {
                    continue; // its file list cannot be trusted either
                }
            }
            match self.read_json::<ManifestFiles>(&rel) {
                Ok(m) => self.compare_listed(&rel, &m.files, "", &mut found)?,
                Err(e) => found.push(Finding {
                    file: rel.clone(),
                    problem: e.to_string(),
                    sha256: sha256_file(&self.path(&rel)).ok(),
                }),
            }
        }
        found.retain(|f| !f.is_accepted(&info.accepted));
        Ok(found)
    }

    /// Checks the files that the committed manifest of `round` lists under `prefix` (a file,
    /// or a directory such as a checkpoint's) against their recorded SHA-256, before they are
    /// loaded. Files the manifest does not list are not checked.
    pub fn check_recorded(
        &self,
        round: u32,
        prefix: &str,
        accepted: &BTreeMap<String, String>,
    ) -> Result<()> {
        let rel = Self::manifest_rel(round);
        if !self.path(&rel).exists() {
            return Ok(());
        }
        let files = self.read_json::<ManifestFiles>(&rel)?.files;
        let mut found = Vec::new();
        self.compare_listed(&rel, &files, prefix, &mut found)?;
        match found.into_iter().find(|f| !f.is_accepted(accepted)) {
            Some(f) => Err(Error::integrity(self.path(&f.file), f.problem)),
            None => Ok(()),
        }
    }

    /// Compares every file of `files` (the list of the manifest `rel`) under `prefix` with
    /// its recorded SHA-256.
    fn compare_listed(
        &self,
        rel: &str,
        files: &BTreeMap<String, String>,
        prefix: &str,
        found: &mut Vec<Finding>,
    ) -> Result<()> {
        let problem = format!("differs from the SHA-256 recorded in {rel}");
        for (file, want) in files.iter().filter(|(f, _)| f.starts_with(prefix)) {
            self.compare(file, u64::MAX, want, &problem, found)?;
        }
        Ok(())
    }

    /// Pushes a finding unless the first `len` bytes of `rel` hash to `want`.
    fn compare(
        &self,
        rel: &str,
        len: u64,
        want: &str,
        problem: &str,
        found: &mut Vec<Finding>,
    ) -> Result<()> {
        let path = self.path(rel);
        if !path.exists() {
            found.push(Finding {
                file: rel.into(),
                problem: "is missing".into(),
                sha256: None,
            });
            return Ok(());
        }
        let got = sha256_prefix(&path, len)?;
        if got != want {
            found.push(Finding {
                file: rel.into(),
                problem: problem.into(),
                sha256: Some(got),
            });
        }
        Ok(())
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
        read_jsonl(&self.path(rel), "is not what autodidact wrote")
    }

    /// The completed stages. A last line cut short by a kill is dropped from the file.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let path = self.path(JOURNAL_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            truncate(&path, complete as u64)?;
        }
        let lines: Vec<&str> = text[..complete].lines().collect();
        // Runs from before the check (format 2 and older) have it on no line; once one line
        // has it, every line must.
        let checked = lines.iter().any(|l| l.contains(LINE_CHECK));
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let n = i + 1;
                let body = match checked_body(l) {
                    Some(Ok(body)) => body,
                    Some(Err(())) => {
                        return Err(Error::integrity(
                            &path,
                            format!("line {n} was changed after it was written (its line_sha256 does not match it)"),
                        ))
                    }
                    None if checked => {
                        return Err(Error::integrity(
                            &path,
                            format!("line {n} has no line_sha256, as every line of this journal must"),
                        ))
                    }
                    None => l.to_string(),
                };
                serde_json::from_str(&body).map_err(|e| {
                    Error::file(&path, format!("line {n} is not a journal entry: {e}"))
                })
            })
            .collect()
    }

    pub fn append_journal(&self, entry: &JournalEntry) -> Result<()> {
        append_synced(&self.path(JOURNAL_FILE), &journal_line(entry))
    }

    /// Writes the journal anew (atomically) with `entries`, each with its line_sha256: how a
    /// run from before format 3 gets the check once its files have been verified.
    pub fn rewrite_journal(&self, entries: &[JournalEntry]) -> Result<()> {
        let text: String = entries.iter().map(journal_line).collect();
        write_atomic(&self.path(JOURNAL_FILE), text.as_bytes()).map_err(Error::from)
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

/// What `accepted` holds for a file that was missing when `--force` accepted it.
pub const MISSING: &str = "missing";

/// A file that differs from what the run recorded of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Path relative to the run directory.
    pub file: String,
    pub problem: String,
    /// SHA-256 the file has now (`None`: it is missing).
    pub sha256: Option<String>,
}

impl Finding {
    /// What `run.json`'s `accepted` holds for the file as it is now.
    pub fn current(&self) -> &str {
        self.sha256.as_deref().unwrap_or(MISSING)
    }

    /// Whether `resume --force` accepted the file as it is now.
    pub fn is_accepted(&self, accepted: &BTreeMap<String, String>) -> bool {
        accepted.get(&self.file).map(String::as_str) == Some(self.current())
    }
}

/// The file list of a manifest (the rest of it is the engine's business).
#[derive(Deserialize)]
struct ManifestFiles {
    #[serde(default)]
    files: BTreeMap<String, String>,
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
        crate::testutil::run_info()
    }

    #[test]
    fn refuses_a_directory_holding_another_run_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let first = RunDir::create(&root, "a = 1", &info()).unwrap();
        drop(first);
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
        let (dir, _lock) = RunDir::create(&tmp.path().join("r"), "", &info()).unwrap();
        let e = JournalEntry {
            stage: "seed".into(),
            round: 0,
            seconds: 1.0,
            metrics_bytes: 0,
            metrics_sha256: None,
            manifest_sha256: None,
        };
        dir.append_journal(&e).unwrap();
        append_synced(&dir.path(JOURNAL_FILE), "{\"stage\":\"ev").unwrap();
        assert_eq!(dir.journal().unwrap(), vec![e.clone()]);
        dir.append_journal(&e).unwrap();
        assert_eq!(dir.journal().unwrap().len(), 2);
    }

    #[test]
    fn issue17_a_byte_changed_in_the_journal_is_named_as_the_journals() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _lock) = RunDir::create(&tmp.path().join("r"), "", &info()).unwrap();
        let e = JournalEntry {
            stage: "seed".into(),
            round: 0,
            seconds: 1.5,
            metrics_bytes: 71,
            metrics_sha256: Some("ab".repeat(32)),
            manifest_sha256: Some("cd".repeat(32)),
        };
        dir.append_journal(&e).unwrap();
        dir.append_journal(&e).unwrap();
        assert_eq!(dir.journal().unwrap(), vec![e.clone(), e.clone()]);
        let path = dir.path(JOURNAL_FILE);
        let good = std::fs::read(&path).unwrap();
        // Every single-byte change of the first line (but its newline) is refused, naming the
        // journal and the line; none reads as a different entry.
        let first = good.iter().position(|&b| b == b'\n').unwrap();
        for at in 0..first {
            for flip in [0x01u8, 0x20] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                std::fs::write(&path, &bad).unwrap();
                match dir.journal() {
                    Ok(entries) => assert_eq!(entries, vec![e.clone(), e.clone()], "byte {at}"),
                    Err(err) => {
                        let msg = err.to_string();
                        assert!(
                            msg.contains("journal.jsonl") && msg.contains("line 1"),
                            "{msg}"
                        );
                    }
                }
            }
        }
        // A journal from before format 3 reads without the check, and gets it when rewritten.
        let old = serde_json::to_string(&e).unwrap() + "\n";
        std::fs::write(&path, old.repeat(2)).unwrap();
        let entries = dir.journal().unwrap();
        assert_eq!(entries, vec![e.clone(), e.clone()]);
        dir.rewrite_journal(&entries).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }

    #[test]
    fn issue17_a_damaged_key_in_run_json_is_refused_not_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut i = info();
        i.problems_sha256 = Some("ab".repeat(32));
        drop(RunDir::create(&tmp.path().join("r"), "", &i).unwrap());
        let path = tmp.path().join("r").join(RUN_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("problems_sha256", "prnblems_sha256")).unwrap();
        let err = RunDir::open(&tmp.path().join("r")).unwrap_err().to_string();
        assert!(
            err.contains("run.json") && err.contains("prnblems_sha256"),
            "{err}"
        );
    }

    #[test]
    fn newer_format_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut i = info();
        i.format_version = RUN_FORMAT_VERSION + 1;
        drop(RunDir::create(&tmp.path().join("r"), "", &i).unwrap());
        let err = RunDir::open(&tmp.path().join("r")).unwrap_err().to_string();
        assert!(err.contains("upgrade autodidact"), "{err}");
    }

    #[test]
    fn issue11_a_second_process_is_refused_while_the_lock_is_held_and_a_stale_one_is_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        let (dir, lock) = RunDir::create(&root, "", &info()).unwrap();
        // Within one process a second open file description conflicts like another process.
        let err = dir.lock().unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by process {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        // A clean release leaves no holder behind.
        let again = dir.lock().unwrap();
        assert_eq!(again.stale_holder, None);
        drop(again);
        // A killed holder leaves its PID in the file but not the lock.
        std::fs::write(root.join(LOCK_FILE), "4194000\n").unwrap();
        let taken = dir.lock().unwrap();
        assert_eq!(taken.stale_holder, Some(4_194_000));
        let pid = std::fs::read_to_string(root.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    fn stage(round: u32, dir: &RunDir) -> JournalEntry {
        let bytes = dir.metrics_bytes().unwrap();
        JournalEntry {
            stage: "eval".into(),
            round,
            seconds: 0.0,
            metrics_bytes: bytes,
            metrics_sha256: Some(sha256_prefix(&dir.path(METRICS_FILE), bytes).unwrap()),
            manifest_sha256: dir.current_manifest_sha256(round).unwrap(),
        }
    }

    #[test]
    fn issue11_a_pending_manifest_is_committed_only_if_its_stage_was_journaled() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _lock) = RunDir::create(&tmp.path().join("r"), "", &info()).unwrap();
        dir.write_manifest(0, &serde_json::json!({"v": 1})).unwrap();
        let e = stage(0, &dir);
        dir.append_journal(&e).unwrap();
        // Killed between the journal line and the rename: the rename is finished.
        dir.settle_pending(&dir.journal().unwrap()).unwrap();
        let m: serde_json::Value = dir.read_json(&RunDir::manifest_rel(0)).unwrap();
        assert_eq!(m["v"], 1);
        // Killed before the journal line: the stage's manifest is dropped, the old one stays.
        dir.write_manifest(0, &serde_json::json!({"v": 2})).unwrap();
        assert_eq!(dir.settle_pending(&dir.journal().unwrap()).unwrap(), 1);
        let m: serde_json::Value = dir.read_json(&RunDir::manifest_rel(0)).unwrap();
        assert_eq!(m["v"], 1);
        assert!(dir
            .verify(&info(), &dir.journal().unwrap())
            .unwrap()
            .is_empty());
    }

    /// Found by the torture: a byte changed in the pending manifest of a stage the journal
    /// records as complete (killed before the rename) made `settle_pending` remove it as a
    /// stage's that never completed; `resume` then blamed the missing `manifest.json`.
    #[test]
    fn issue17_a_changed_pending_manifest_of_a_journaled_stage_is_named_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _lock) = RunDir::create(&tmp.path().join("r"), "", &info()).unwrap();
        for later in [false, true] {
            if later {
                // A round whose earlier stage was committed: its manifest is the one before.
                dir.write_manifest(1, &serde_json::json!({"v": 1})).unwrap();
                dir.append_journal(&stage(1, &dir)).unwrap();
                dir.commit_manifest(1).unwrap();
            }
            let round = if later { 1 } else { 0 };
            dir.write_manifest(round, &serde_json::json!({"v": 2}))
                .unwrap();
            dir.append_journal(&stage(round, &dir)).unwrap();
            let pending = dir.path(&RunDir::pending_manifest_rel(round));
            let mut bytes = std::fs::read(&pending).unwrap();
            bytes[3] ^= 0x20;
            std::fs::write(&pending, &bytes).unwrap();
            let e = dir.settle_pending(&dir.journal().unwrap()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("manifest.pending.json"), "{text}");
            assert!(text.contains("has changed since"), "{text}");
            assert!(pending.exists(), "the evidence was removed");
            std::fs::remove_file(&pending).unwrap();
        }
    }

    #[test]
    fn issue11_verify_names_each_changed_or_missing_file_and_accepted_ones_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let mut i = info();
        i.config_sha256 = Some(sha256_bytes(b"seed = 0\n"));
        let (dir, _lock) = RunDir::create(&tmp.path().join("r"), "seed = 0\n", &i).unwrap();
        dir.write_bytes("rounds/r0000/samples.jsonl", b"{}\n")
            .unwrap();
        let files = BTreeMap::from([(
            "rounds/r0000/samples.jsonl".to_string(),
            sha256_file(&dir.path("rounds/r0000/samples.jsonl")).unwrap(),
        )]);
        dir.write_manifest(0, &serde_json::json!({ "files": files }))
            .unwrap();
        dir.append_metrics(&serde_json::json!({"round": 0}))
            .unwrap();
        dir.append_journal(&stage(0, &dir)).unwrap();
        dir.commit_manifest(0).unwrap();
        let journal = dir.journal().unwrap();
        assert_eq!(dir.verify(&i, &journal).unwrap(), vec![]);
        let flip = |rel: &str| {
            let p = dir.path(rel);
            let mut b = std::fs::read(&p).unwrap();
            b[0] ^= 1;
            std::fs::write(&p, b).unwrap();
        };
        for rel in [
            CONFIG_FILE,
            METRICS_FILE,
            "rounds/r0000/samples.jsonl",
            "rounds/r0000/manifest.json",
        ] {
            flip(rel);
            let found = dir.verify(&i, &journal).unwrap();
            assert_eq!(found.len(), 1, "{rel}: {found:?}");
            assert_eq!(found[0].file, rel);
            // Accepting the file as it is (`--force`) silences it.
            let mut accepted = i.clone();
            accepted
                .accepted
                .insert(rel.into(), found[0].sha256.clone().unwrap());
            assert!(dir.verify(&accepted, &journal).unwrap().is_empty(), "{rel}");
            flip(rel);
        }
        std::fs::remove_file(dir.path("rounds/r0000/samples.jsonl")).unwrap();
        let err = dir
            .check_recorded(0, "rounds/r0000/", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("samples.jsonl: is missing"), "{err}");
        std::fs::remove_file(dir.path("rounds/r0000/manifest.json")).unwrap();
        let found = dir.verify(&i, &journal).unwrap();
        assert_eq!(found[0].file, "rounds/r0000/manifest.json");
        assert!(found[0].problem.contains("is missing"), "{found:?}");
    }
}

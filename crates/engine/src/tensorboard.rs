//! TensorBoard event files of a run, so that `tensorboard --logdir runs/` shows every run:
//! each journaled line of `metrics.jsonl` as scalars (a round's metrics at step = round, the
//! seed stage's at step = `seed/step`), and `config.toml` as text (tag `config`, step 0).
//!
//! The format is TensorFlow's record file: each record is its length (u64, little-endian),
//! the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data; the
//! data is a protobuf `Event` (`tensorflow/core/util/event.proto`), the first one carrying
//! `file_version = "brain.Event:2"`. The few messages needed are encoded by hand here rather
//! than through a protobuf crate: the one Rust writer there is (`tensorboard-rs`) is no longer
//! maintained and brings protobuf 2 and an image library with it.
//!
//! The file (`tensorboard/events.out.tfevents.<start>.autodidact`) is rewritten whole, atomically,
//! from `metrics.jsonl` after every journaled stage, so a killed or resumed run never leaves
//! duplicate or torn events. Its contents are deterministic: the wall time of each event is
//! the run's start (the modification time of `config.toml`) plus the journaled seconds of the
//! stages up to the one that wrote it. Earlier events therefore keep their bytes, and a
//! TensorBoard that is watching reads only what each rewrite appends.

use crate::store::{RunDir, CONFIG_FILE, METRICS_FILE};
use crate::Result;
use autodidact_core::fs::write_atomic;
use std::path::PathBuf;

/// The run directory's folder of event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// CRC-32C (Castagnoli), reflected, as TFRecord frames use it.
pub fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    const TABLE: [u32; 256] = table();
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The CRC a record stores: rotated and offset, so that a CRC of data holding CRCs stays
/// well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// `data` framed as one record.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of an event file, each checked against its CRCs; None at the first torn or
/// corrupt record.
pub fn records(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len_bytes = bytes.get(..8)?;
        let len = u64::from_le_bytes(len_bytes.try_into().ok()?) as usize;
        let crc = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if crc(bytes.get(8..12)?) != masked_crc(len_bytes) {
            return None;
        }
        let data = bytes.get(12..12usize.checked_add(len)?)?;
        if crc(bytes.get(12 + len..16 + len)?) != masked_crc(data) {
            return None;
        }
        out.push(data);
        bytes = &bytes[16 + len..];
    }
    Some(out)
}

/// Protobuf encoding of the fields used here.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, ((field as u64) << 3) | wire as u64);
    }
    // Scalars at their default (0) are left out, as proto3 writes them.
    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        if v == 0.0 {
            return;
        }
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u32, v: f32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn int(out: &mut Vec<u8>, field: u32, v: i64) {
        if v == 0 {
            return;
        }
        key(out, field, 0);
        varint(out, v as u64);
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(out, field, 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// An `Event` with `wall_time` and `step` and, inside, either `file_version` or a summary.
fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    pb::double(&mut e, 1, wall_time);
    pb::int(&mut e, 2, step);
    body(&mut e);
    e
}

/// The first event of a file: `file_version = "brain.Event:2"`.
pub fn version_event(wall_time: f64) -> Vec<u8> {
    event(wall_time, 0, |e| pb::bytes(e, 3, b"brain.Event:2"))
}

/// A summary event of scalars `(tag, value)` (`Summary.Value.simple_value`).
pub fn scalars_event(wall_time: f64, step: i64, values: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        pb::bytes(&mut value, 1, tag.as_bytes());
        pb::float(&mut value, 2, *v);
        pb::bytes(&mut summary, 1, &value);
    }
    event(wall_time, step, |e| pb::bytes(e, 5, &summary))
}

/// A summary event of one text (the text plugin: a scalar string tensor).
pub fn text_event(wall_time: f64, step: i64, tag: &str, text: &str) -> Vec<u8> {
    let mut plugin = Vec::new();
    pb::bytes(&mut plugin, 1, b"text");
    let mut metadata = Vec::new();
    pb::bytes(&mut metadata, 1, &plugin);
    let mut tensor = Vec::new();
    pb::int(&mut tensor, 1, 7); // DT_STRING
    pb::bytes(&mut tensor, 2, &[]); // a scalar: no dimensions
    pb::bytes(&mut tensor, 8, text.as_bytes());
    let mut value = Vec::new();
    pb::bytes(&mut value, 1, tag.as_bytes());
    pb::bytes(&mut value, 8, &tensor);
    pb::bytes(&mut value, 9, &metadata);
    let mut summary = Vec::new();
    pb::bytes(&mut summary, 1, &value);
    event(wall_time, step, |e| pb::bytes(e, 5, &summary))
}

/// The step and scalars of one metrics line: a round's (step = `round`) or the seed stage's
/// (step = `seed/step`); other lines and non-numeric values give none.
fn scalars_of(line: &serde_json::Value) -> Option<(i64, Vec<(&str, f32)>)> {
    let obj = line.as_object()?;
    let step_key = ["round", "seed/step"]
        .into_iter()
        .find(|k| obj.contains_key(*k))?;
    let step = obj.get(step_key)?.as_f64()? as i64;
    let values = obj
        .iter()
        .filter(|(k, _)| k.as_str() != step_key)
        .filter_map(|(k, v)| Some((k.as_str(), v.as_f64()? as f32)))
        .collect();
    Some((step, values))
}

/// Rewrites the run's event file from its journaled metrics and its config; returns its path.
pub fn write_events(dir: &RunDir) -> Result<PathBuf> {
    let config_path = dir.path(CONFIG_FILE);
    let config = std::fs::read_to_string(&config_path)
        .map_err(|e| autodidact_core::Error::io("reading", &config_path, e))?;
    let start = std::fs::metadata(&config_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let metrics_path = dir.path(METRICS_FILE);
    let text = std::fs::read_to_string(&metrics_path)
        .map_err(|e| autodidact_core::Error::io("reading", &metrics_path, e))?;
    // (end of the stage's metrics in bytes, wall time at the stage's end).
    let mut elapsed = 0.0;
    let stages: Vec<(u64, f64)> = dir
        .journal()?
        .iter()
        .map(|j| {
            elapsed += j.seconds;
            (j.metrics_bytes, start + elapsed)
        })
        .collect();
    let mut out = record(&version_event(start));
    out.extend(record(&text_event(start, 0, "config", &config)));
    let mut at = 0u64;
    for line in text.split_inclusive('\n') {
        at += line.len() as u64;
        // Only what a journaled stage wrote: a line after the last one is from a stage that
        // did not finish, and a resume truncates it.
        let Some(&(_, wall)) = stages.iter().find(|(bytes, _)| *bytes >= at) else {
            break;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some((step, values)) = scalars_of(&v) {
            out.extend(record(&scalars_event(wall, step, &values)));
        }
    }
    let path = dir.path(&format!(
        "{TENSORBOARD_DIR}/events.out.tfevents.{}.autodidact",
        start as u64
    ));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| autodidact_core::Error::io("creating", parent, e))?;
    }
    write_atomic(&path, &out)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue19_crc32c_matches_the_castagnoli_check_value() {
        // The standard check value of CRC-32C, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn issue19_records_read_back_and_corruption_is_caught() {
        let mut file = record(&version_event(3.0));
        file.extend(record(&text_event(3.0, 0, "config", "seed = 0")));
        let read = records(&file).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], &version_event(3.0)[..]);
        for i in [0, 9, 14, file.len() - 1] {
            let mut bad = file.clone();
            bad[i] ^= 1;
            assert!(records(&bad).is_none(), "a flipped byte at {i} passed");
        }
        assert!(
            records(&file[..file.len() - 2]).is_none(),
            "a torn record passed"
        );
    }

    /// Byte for byte what TensorBoard's own writer (tensorboardX 2.6.5, protobuf) writes for
    /// the same events: `tests/reference/tensorboard_records.py` printed these.
    #[test]
    fn issue19_records_match_tensorboards_writer() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&record(&version_event(1.5))),
            super::reference::VERSION_1_5
        );
        assert_eq!(
            hex(&record(&scalars_event(2.25, 7, &[("eval/pass@1", 0.375)]))),
            super::reference::SCALAR_2_25_STEP_7
        );
    }
}

#[cfg(test)]
#[path = "../tests/reference/tensorboard_records.rs"]
mod reference;

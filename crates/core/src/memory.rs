//! Memory guards: how much memory this process may still use, and a check that refuses a
//! setting whose estimated memory does not fit, naming the setting.
//!
//! The estimate of a workload comes from whoever allocates it (the native model knows its
//! activation and KV-cache buffers, the engine its sample groups); this module only compares
//! it with what the machine has. What the machine has is the smallest of the kernel's
//! `MemAvailable`, the room left under the cgroup's `memory.max`, and the environment variable
//! `AUTODIDACT_MEMORY_LIMIT` (bytes, or with a `K`/`M`/`G`/`T` suffix), which lets a user cap a
//! run below the machine's size.

use crate::{Error, Result};

/// Environment variable that caps the memory a run may plan for.
pub const LIMIT_VAR: &str = "AUTODIDACT_MEMORY_LIMIT";

/// Share of the available memory a single workload may be planned to take: the rest is for
/// the buffers the estimates leave out and for the rest of the machine.
pub const USABLE_SHARE: f64 = 0.8;

/// Bytes this process may still allocate, or `None` when the platform does not say (then
/// nothing is refused).
pub fn available() -> Result<Option<u64>> {
    let mut best: Option<u64> = None;
    let mut take = |v: u64| best = Some(best.map_or(v, |b| b.min(v)));
    if let Some(b) = proc_bytes("/proc/meminfo", "MemAvailable:") {
        take(b);
    }
    let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let current = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok();
    if let (Some(max), Some(current)) = (max, current) {
        if let (Ok(max), Ok(current)) = (max.trim().parse::<u64>(), current.trim().parse::<u64>()) {
            take(max.saturating_sub(current));
        }
    }
    if let Ok(raw) = std::env::var(LIMIT_VAR) {
        take(parse_bytes(&raw).ok_or_else(|| {
            Error::invalid(
                LIMIT_VAR,
                format!(
                    "{raw:?} is not a size; give bytes or a number with K, M, G or T (e.g. 8G)"
                ),
            )
        })?);
    }
    Ok(best)
}

/// High-water mark of this process's resident memory (Linux `VmHWM`), if the platform
/// reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_bytes("/proc/self/status", "VmHWM:")
}

/// Resets the high-water mark of [`peak_rss_bytes`] to the current resident memory (Linux
/// `clear_refs`), so that the next reading is the peak of what runs after; whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `KEY: N kB` line of a `/proc` file, in bytes.
fn proc_bytes(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `123`, `512M`, `8G`, `1.5T` (powers of 1024) as bytes.
pub fn parse_bytes(raw: &str) -> Option<u64> {
    let s = raw.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], s[i..].trim_end_matches(['b', 'B', 'i'])),
        None => (s, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let n: f64 = num.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * scale as f64) as u64)
}

/// `1536 MiB`, `2.3 GiB`.
pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", (b / (1u64 << 20) as f64).ceil())
    }
}

/// Refuses a workload estimated at `need` bytes when it does not fit in [`USABLE_SHARE`] of
/// `available` bytes: the error names `setting`, what the memory is for, the estimate and
/// what is available.
pub fn check_fits(setting: &str, need: u64, what: &str, available: Option<u64>) -> Result<()> {
    check_fits_or(setting, need, what, available, &format!("lower {setting}"))
}

/// [`check_fits`] whose message ends with `remedy` (what to change) instead of "lower SETTING".
pub fn check_fits_or(
    setting: &str,
    need: u64,
    what: &str,
    available: Option<u64>,
    remedy: &str,
) -> Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    let usable = (avail as f64 * USABLE_SHARE) as u64;
    if need <= usable {
        return Ok(());
    }
    Err(Error::invalid(
        setting,
        format!(
            "needs about {} of memory for {what}, but this machine has {} available (a run plans for at most {:.0}% of it; {LIMIT_VAR} lowers the cap); {remedy}",
            format_bytes(need),
            format_bytes(avail),
            100.0 * USABLE_SHARE
        ),
    ))
}

/// [`check_fits`] against what this machine has now ([`available`]).
pub fn check(setting: &str, need: u64, what: &str) -> Result<()> {
    check_fits(setting, need, what, available()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Some(1536));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes("3X"), None);
    }

    #[test]
    fn a_workload_over_the_usable_share_is_refused_naming_the_setting() {
        let gib = 1u64 << 30;
        assert!(check_fits("star.sampling.samples", 7 * gib, "samples", Some(10 * gib)).is_ok());
        let err = check_fits(
            "star.sampling.samples",
            9 * gib,
            "the round's samples",
            Some(10 * gib),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("star.sampling.samples: needs about 9.0 GiB of memory for the round's samples, but this machine has 10.0 GiB available")
                && err.ends_with("lower star.sampling.samples"),
            "{err}"
        );
        assert!(check_fits("x", u64::MAX, "y", None).is_ok());
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if std::path::Path::new("/proc/meminfo").exists() && std::env::var(LIMIT_VAR).is_err() {
            assert!(available().unwrap().unwrap() > 0);
        }
    }
}

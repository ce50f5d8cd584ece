//! Pointing the servers at a checkpoint (`[model.openai] reload`), and checking which one
//! each serves: how a run that trains a served model samples each round from its new
//! weights.

use autodidact_core::{Error, OpenAiConfig, Reload, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Makes every server of `cfg` serve the checkpoint `dir` (the original weights,
/// `cfg.weights`, when `dir` holds none: a round-0 record of the served model). Servers
/// already serving it are left alone; the others are reloaded as `cfg.reload` says and asked
/// again.
pub fn sync(cfg: &OpenAiConfig, dir: &Path) -> Result<()> {
    let Some(weights) = &cfg.weights else {
        return Ok(());
    };
    let target = if dir.join("config.json").exists() {
        dir.to_path_buf()
    } else {
        weights.clone()
    };
    let target = std::path::absolute(&target).map_err(|e| Error::io("resolving", &target, e))?;
    let admin = Admin::new(cfg)?;
    let stale: Vec<&String> = cfg
        .base_urls
        .iter()
        .filter(|u| !admin.serves(u, &target).unwrap_or(false))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    match &cfg.reload {
        Reload::None => {
            return Err(Error::invalid(
                "model.openai.reload",
                format!(
                "{} serve{} another checkpoint than {}; set reload so the run can point them at it",
                stale
                    .iter()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if stale.len() == 1 { "s" } else { "" },
                target.display()
            ),
            ))
        }
        Reload::UpdateWeightsFromDisk => {
            for url in &stale {
                admin.update_weights(url, &target)?;
            }
        }
        Reload::Command(args) => run_command(args, &target)?,
    }
    for url in &cfg.base_urls {
        match admin.serves(url, &target) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::invalid(
                    "model.openai.reload",
                    format!(
                        "{url} still serves another checkpoint than {} after the reload",
                        target.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(Error::invalid(
                    "model.openai.reload",
                    format!("cannot tell which checkpoint {url} serves after the reload: {e}"),
                ))
            }
        }
    }
    Ok(())
}

/// Administrative calls to the servers (outside `/v1`).
struct Admin {
    agent: ureq::Agent,
    key: Option<String>,
}

impl Admin {
    fn new(cfg: &OpenAiConfig) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_secs)))
            .http_status_as_error(false)
            .build()
            .into();
        let key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::invalid("model.openai.api_key_env", format!("{var} is unset"))
            })?),
            None => None,
        };
        Ok(Self { agent, key })
    }

    /// `url` without its `/v1`: where the administrative routes live.
    fn root(url: &str) -> &str {
        url.trim_end_matches('/').trim_end_matches("/v1")
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> std::result::Result<(u16, String), String> {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let reply = match body {
            None => {
                let mut r = self.agent.get(url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            Some(b) => {
                let mut r = self
                    .agent
                    .post(url)
                    .header("content-type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send(b)
            }
        };
        let mut reply = reply.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = reply.status().as_u16();
        let text = reply
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: {e}"))?;
        Ok((status, text))
    }

    /// Whether the server at `url` reports serving `target`: `model_path` of
    /// `/get_model_info` (autodidact serve, SGLang), else `root` in `/v1/models` (vLLM).
    fn serves(&self, url: &str, target: &Path) -> std::result::Result<bool, String> {
        let json =
            |t: &str| serde_json::from_str::<serde_json::Value>(t).map_err(|e| e.to_string());
        let info = format!("{}/get_model_info", Self::root(url));
        let reported = match self.call("GET", &info, None)? {
            (200, t) => json(&t)?
                .get("model_path")
                .and_then(|p| p.as_str())
                .map(PathBuf::from),
            _ => {
                let models = format!("{}/models", url.trim_end_matches('/'));
                match self.call("GET", &models, None)? {
                    (200, t) => json(&t)?
                        .pointer("/data/0/root")
                        .and_then(|p| p.as_str())
                        .map(PathBuf::from),
                    (s, t) => return Err(format!("GET {models}: {s} {t}")),
                }
            }
        };
        Ok(reported.is_some_and(|p| same_path(&p, target)))
    }

    fn update_weights(&self, url: &str, target: &Path) -> Result<()> {
        let route = format!("{}/update_weights_from_disk", Self::root(url));
        let body = serde_json::json!({"model_path": target}).to_string();
        let fail = |m: String| {
            Error::invalid(
                "model.openai.reload",
                format!("{url} did not load {}: {m}", target.display()),
            )
        };
        match self.call("POST", &route, Some(&body)).map_err(fail)? {
            (200, _) => Ok(()),
            (s, t) => Err(fail(format!(
                "{s} {}",
                autodidact_core::error::clip(&t, 400)
            ))),
        }
    }
}

/// Paths that name the same directory (as given, or once resolved where both exist here).
fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Runs the reload command with `{checkpoint}` filled in; fails unless it exits 0.
fn run_command(args: &[String], target: &Path) -> Result<()> {
    let filled: Vec<String> = args
        .iter()
        .map(|a| a.replace("{checkpoint}", &target.display().to_string()))
        .collect();
    let out = std::process::Command::new(&filled[0])
        .args(&filled[1..])
        .output()
        .map_err(|e| {
            Error::invalid(
                "model.openai.reload",
                format!("could not run {:?}: {e}", filled[0]),
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::invalid(
            "model.openai.reload",
            format!(
                "{:?} failed ({}): {}",
                filled[0],
                out.status,
                autodidact_core::error::clip(err.trim(), 400)
            ),
        ));
    }
    Ok(())
}

//! Pointing the servers at a checkpoint (`[model.openai] reload`), and checking which one
//! each serves: how a run that trains a served model samples each round from its new
//! weights.

use autodidact_core::{holds_weights, Error, OpenAiConfig, Reload, Result};
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
    let target = if holds_weights(dir) {
        dir.to_path_buf()
    } else {
        weights.clone()
    };
    let target = std::path::absolute(&target).map_err(|e| Error::io("resolving", &target, e))?;
    let admin = Admin::new(cfg, Duration::from_secs_f64(cfg.timeout_secs))?;
    let stale: Vec<&String> = cfg
        .base_urls
        .iter()
        .filter(|u| !admin.serves(u, &cfg.model, &target).unwrap_or(false))
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
        Reload::LoadLoraAdapter => {
            for url in &stale {
                admin.load_lora(url, &cfg.model, &target)?;
            }
        }
        Reload::Command(args) => run_command(args, &target, cfg.timeout_secs)?,
    }
    for url in &cfg.base_urls {
        match admin.serves(url, &cfg.model, &target) {
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

/// Calls to the servers outside the sampling requests: which model and checkpoint they
/// serve, and reloads.
pub(crate) struct Admin {
    agent: ureq::Agent,
    key: Option<String>,
}

impl Admin {
    /// Calls of at most `timeout` each, with `cfg`'s API key.
    pub(crate) fn new(cfg: &OpenAiConfig, timeout: Duration) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let key = cfg
            .api_key_env
            .as_deref()
            .map(crate::policy::api_key)
            .transpose()?;
        Ok(Self { agent, key })
    }

    /// `url` without its `/v1`: where the administrative routes live.
    fn root(url: &str) -> &str {
        url.trim_end_matches('/').trim_end_matches("/v1")
    }

    /// `method` `url` (with `body` as JSON, if any): the status and the reply's text.
    pub(crate) fn call(
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
    /// `/get_model_info` (autodidact serve, SGLang), else the `root` of `model` in
    /// `/v1/models` (vLLM, whose LoRA adapters are listed there with their path), or of the
    /// first model listed when none is `model`.
    fn serves(&self, url: &str, model: &str, target: &Path) -> std::result::Result<bool, String> {
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
                    (200, t) => {
                        let v = json(&t)?;
                        let listed = v.get("data").and_then(|d| d.as_array());
                        listed
                            .and_then(|d| {
                                d.iter()
                                    .find(|m| m.get("id").and_then(|i| i.as_str()) == Some(model))
                                    .or_else(|| d.first())
                            })
                            .and_then(|m| m.get("root"))
                            .and_then(|p| p.as_str())
                            .map(PathBuf::from)
                    }
                    (s, t) => return Err(format!("GET {models}: {s} {t}")),
                }
            }
        };
        Ok(reported.is_some_and(|p| same_path(&p, target)))
    }

    /// Replaces the adapters `url` serves as `name` with those in `target` (vLLM's runtime
    /// LoRA routes): unloads the old ones (a server that has none answers an error, which is
    /// ignored), then loads the new ones.
    fn load_lora(&self, url: &str, name: &str, target: &Path) -> Result<()> {
        let base = url.trim_end_matches('/');
        let fail = |m: String| {
            Error::invalid(
                "model.openai.reload",
                format!(
                    "{url} did not load the adapters {} as {name:?}: {m}",
                    target.display()
                ),
            )
        };
        let unload = serde_json::json!({"lora_name": name}).to_string();
        self.call(
            "POST",
            &format!("{base}/unload_lora_adapter"),
            Some(&unload),
        )
        .map_err(fail)?;
        let load = serde_json::json!({"lora_name": name, "lora_path": target}).to_string();
        match self
            .call("POST", &format!("{base}/load_lora_adapter"), Some(&load))
            .map_err(fail)?
        {
            (200, _) => Ok(()),
            (s, t) => Err(fail(format!(
                "{s} {} (vLLM loads adapters at run time only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)",
                autodidact_core::error::clip(&t, 400)
            ))),
        }
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

/// Runs the reload command with `{checkpoint}` filled in; fails unless it exits 0 within
/// `timeout_secs` (the requests' timeout).
fn run_command(args: &[String], target: &Path, timeout_secs: f64) -> Result<()> {
    let filled: Vec<String> = args
        .iter()
        .map(|a| a.replace("{checkpoint}", &target.display().to_string()))
        .collect();
    let fail = |m: String| Error::invalid("model.openai.reload", format!("{:?} {m}", filled[0]));
    let mut child = std::process::Command::new(&filled[0])
        .args(&filled[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    // Its error output, read as it comes (a full pipe would stall it); the last 64 KiB kept.
    let mut pipe = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            let over = kept.len().saturating_sub(64 << 10);
            kept.drain(..over);
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "ran past {timeout_secs} s (timeout_secs) and was stopped"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(fail(format!("could not be waited for: {e}"))),
        }
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!(
            "failed ({status}): {}",
            autodidact_core::error::clip(text.trim(), 400)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<String>>>;

    /// A server answering each request with `handle(route, body)`; it records the routes.
    fn listen(
        handle: impl Fn(&str, &[u8]) -> (&'static str, String) + Send + 'static,
    ) -> (String, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let route = line.split_whitespace().nth(1).unwrap().to_string();
                seen.lock().unwrap().push(route.clone());
                let (status, reply) = handle(&route, &body);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        (url, log)
    }

    /// A server that reports serving `path` and, on `update_weights_from_disk`, serves what
    /// it is told (unless `refuse`).
    fn server(path: &str, refuse: bool) -> (String, Log) {
        let served = Mutex::new(path.to_string());
        listen(move |route, body| match route {
            "/get_model_info" => (
                "200 OK",
                format!(r#"{{"model_path":{:?}}}"#, served.lock().unwrap()),
            ),
            "/update_weights_from_disk" if refuse => (
                "400 Bad Request",
                r#"{"success":false,"message":"no such file"}"#.into(),
            ),
            "/update_weights_from_disk" => {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                *served.lock().unwrap() = v["model_path"].as_str().unwrap().into();
                ("200 OK", r#"{"success":true}"#.into())
            }
            _ => ("404 Not Found", "{}".into()),
        })
    }

    /// vLLM with runtime LoRA updating: it serves its base model, and adapters by name
    /// (`adapter` as "m" at the start), listed in `/v1/models` with their path; loading a
    /// name that is loaded fails, as vLLM's does.
    fn vllm(adapter: Option<&str>) -> (String, Log) {
        let loaded = Mutex::new(adapter.map(|a| ("m".to_string(), a.to_string())));
        listen(move |route, body| {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let mut loaded = loaded.lock().unwrap();
            match route {
                "/v1/models" => {
                    let mut data = vec![serde_json::json!({"id": "base", "root": "/models/base"})];
                    if let Some((name, path)) = &*loaded {
                        data.push(serde_json::json!({"id": name, "root": path, "parent": "base"}));
                    }
                    ("200 OK", serde_json::json!({"data": data}).to_string())
                }
                "/v1/unload_lora_adapter" => match loaded.take() {
                    Some(_) => ("200 OK", "Success".into()),
                    None => ("404 Not Found", r#"{"message":"not found"}"#.into()),
                },
                "/v1/load_lora_adapter" if loaded.is_some() => (
                    "400 Bad Request",
                    r#"{"message":"The lora adapter 'm' has already been loaded."}"#.into(),
                ),
                "/v1/load_lora_adapter" => {
                    let name = v["lora_name"].as_str().unwrap().to_string();
                    *loaded = Some((name, v["lora_path"].as_str().unwrap().into()));
                    ("200 OK", "Success".into())
                }
                _ => ("404 Not Found", "{}".into()),
            }
        })
    }

    fn cfg(urls: Vec<String>, weights: &Path, reload: Reload) -> OpenAiConfig {
        OpenAiConfig {
            base_urls: urls,
            model: "m".into(),
            weights: Some(weights.to_path_buf()),
            reload,
            timeout_secs: 10.0,
            ..OpenAiConfig::default()
        }
    }

    /// Issue 16: servers are pointed at a round's checkpoint only when they serve another,
    /// each is checked after, and a server that cannot be pointed stops the run by name.
    #[test]
    fn issue16_servers_are_pointed_at_the_checkpoint_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let (weights, round) = (tmp.path().join("base"), tmp.path().join("r0001"));
        for d in [&weights, &round] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        let (a, log_a) = server(weights.to_str().unwrap(), false);
        let (b, log_b) = server(round.to_str().unwrap(), false);
        let c = cfg(
            vec![a.clone(), b.clone()],
            &weights,
            Reload::UpdateWeightsFromDisk,
        );
        sync(&c, &round).unwrap();
        // a was reloaded; b already served the round and was only asked.
        assert!(log_a
            .lock()
            .unwrap()
            .contains(&"/update_weights_from_disk".to_string()));
        assert!(!log_b
            .lock()
            .unwrap()
            .contains(&"/update_weights_from_disk".to_string()));
        // A round-0 record (no weights in it) points them back at the served weights.
        let record = tmp.path().join("r0000");
        std::fs::create_dir_all(&record).unwrap();
        sync(&c, &record).unwrap();
        assert_eq!(
            log_b
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.contains("update"))
                .count(),
            1
        );

        let (stale, _) = server("/elsewhere", false);
        let e = sync(&cfg(vec![stale.clone()], &weights, Reload::None), &round)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.openai.reload") && e.contains(&stale),
            "{e}"
        );
        let (refusing, _) = server("/elsewhere", true);
        let e = sync(
            &cfg(
                vec![refusing.clone()],
                &weights,
                Reload::UpdateWeightsFromDisk,
            ),
            &round,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("did not load") && e.contains("no such file"),
            "{e}"
        );
        // A command that does not point the server at it is caught by the check after.
        let (unmoved, _) = server("/elsewhere", false);
        let e = sync(
            &cfg(
                vec![unmoved],
                &weights,
                Reload::Command(vec!["true".into()]),
            ),
            &round,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("still serves another checkpoint"), "{e}");
        let (moved, _) = server("/elsewhere", false);
        let fails = Reload::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo no fleet >&2; exit 3".into(),
        ]);
        let e = sync(&cfg(vec![moved.clone()], &weights, fails), &round)
            .unwrap_err()
            .to_string();
        assert!(e.contains("failed") && e.contains("no fleet"), "{e}");
        let mut slow = cfg(
            vec![moved],
            &weights,
            Reload::Command(vec!["sleep".into(), "30".into()]),
        );
        slow.timeout_secs = 0.5;
        let e = sync(&slow, &round).unwrap_err().to_string();
        assert!(e.contains("ran past 0.5 s"), "{e}");
        let e = sync(
            &cfg(vec![a], &weights, Reload::Command(vec!["false".into()])),
            &weights.join("none"),
        )
        .err();
        assert!(
            e.is_none(),
            "a server already on the weights needs no command: {e:?}"
        );
    }

    /// Issue 16: vLLM's runtime LoRA routes replace the adapters served as `model`, and the
    /// check reads the adapter's path from `/v1/models`.
    #[test]
    fn issue16_vllm_serves_each_rounds_adapters() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, round) = (tmp.path().join("adapters"), tmp.path().join("r0001"));
        for d in [&first, &round] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(autodidact_core::ADAPTER_CONFIG), "{}").unwrap();
        }
        let (a, log) = vllm(first.to_str());
        let (b, _) = vllm(None);
        let c = cfg(vec![a, b], &first, Reload::LoadLoraAdapter);
        sync(&c, &round).unwrap();
        let routes = log.lock().unwrap().clone();
        let unload = routes.iter().position(|r| r == "/v1/unload_lora_adapter");
        let load = routes.iter().position(|r| r == "/v1/load_lora_adapter");
        assert!(unload.is_some() && unload < load, "{routes:?}");
        // The round-0 record points them back at the first adapters; a server on them is
        // left alone.
        let record = tmp.path().join("r0000");
        std::fs::create_dir_all(&record).unwrap();
        sync(&c, &record).unwrap();
        let (on_first, log) = vllm(first.to_str());
        sync(
            &cfg(vec![on_first], &first, Reload::LoadLoraAdapter),
            &record,
        )
        .unwrap();
        assert!(!log.lock().unwrap().iter().any(|r| r.contains("load_lora")));
        // A server without the routes (no VLLM_ALLOW_RUNTIME_LORA_UPDATING) stops the run.
        let (plain, _) = server("/elsewhere", false);
        let e = sync(&cfg(vec![plain], &first, Reload::LoadLoraAdapter), &round)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("did not load the adapters")
                && e.contains("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
            "{e}"
        );
    }
}

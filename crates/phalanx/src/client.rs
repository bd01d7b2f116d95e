//! The API client used by the CLI, the demo and the process tests: bearer-token requests to a
//! node's `/v1/` API, with answers decoded or turned into errors that carry the server's reason.

use anyhow::{anyhow, Context, Result};
use phalanx_core::config::Config;
use phalanx_node::{ClusterKey, StatusReport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    token: String,
}

/// Where a config's key file is: relative paths are relative to the config file's folder.
pub fn key_path(config_path: &Path, config: &Config) -> PathBuf {
    let k = Path::new(&config.cluster.key_file);
    if k.is_absolute() {
        k.to_path_buf()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(k)
    }
}

/// Read and parse a config file, rendering every error as FILE:LINE:COL.
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    phalanx_core::config::parse(&text).map_err(|e| anyhow!("{}", e.render(&path.display().to_string())))
}

impl Client {
    pub fn new(key: &ClusterKey) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_millis(500))
                .build()
                // Invariant: a plain HTTP client without TLS always builds.
                .expect("building the HTTP client"),
            token: key.api_token(),
        }
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.http = reqwest::Client::builder()
            .timeout(t)
            .connect_timeout(t.min(Duration::from_millis(500)))
            .build()
            .expect("building the HTTP client");
        self
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(text);
            return Err(anyhow!("{status}: {reason}"));
        }
        serde_json::from_str(&text).with_context(|| format!("decoding the answer: {text}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, api: &str, path: &str) -> Result<T> {
        self.send(self.http.get(format!("http://{api}{path}"))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, api: &str, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("http://{api}{path}")).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, api: &str, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(format!("http://{api}{path}")).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, api: &str, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("http://{api}{path}"))).await
    }

    pub async fn status(&self, api: &str) -> Result<StatusReport> {
        self.get(api, "/v1/status").await
    }

    pub async fn metrics(&self, api: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!("http://{api}/metrics"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok(resp.error_for_status()?.text().await?)
    }

    /// The first of `apis` that answers a status request.
    pub async fn first_answering(&self, apis: &[String]) -> Result<(String, StatusReport)> {
        let mut last = anyhow!("no API address to ask");
        for a in apis {
            match self.status(a).await {
                Ok(s) => return Ok((a.clone(), s)),
                Err(e) => last = e.context(format!("asking {a}")),
            }
        }
        Err(last)
    }
}

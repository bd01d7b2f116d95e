//! The API client used by the CLI, the demo and the process tests: bearer-token requests to a
//! node's `/v1/` API over the client `phalanx_node::transport` builds, with answers decoded or
//! turned into an [`ApiFailure`] that carries the server's `{error, reason}`. Every request
//! names its caller (`user@host`, [`caller`]) in the `x-phalanx-operator` header, which the
//! cluster records with the moves and bans it makes.

use anyhow::{anyhow, Context, Result};
use phalanx_core::config::Config;
use phalanx_node::{transport, ClusterKey, StatusReport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An error answer of the API: its HTTP status, its kind (`unavailable`, `refused`...) and the
/// server's reason; `retry_after` when the server asked to retry (503).
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: u16,
    pub kind: Option<String>,
    pub reason: String,
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}", self.reason, self.status)?;
        if let Some(r) = self.retry_after {
            write!(f, ", retry in {} s", r.as_secs())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    fn from_answer(status: reqwest::StatusCode, retry_after: Option<&str>, text: &str) -> Self {
        let v = serde_json::from_str::<serde_json::Value>(text).ok();
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)?.as_str().map(str::to_string));
        let reason = field("reason")
            .or_else(|| field("error"))
            .unwrap_or_else(|| match text.trim() {
                "" => status.canonical_reason().unwrap_or("no reason given").to_string(),
                t => t.to_string(),
            });
        ApiFailure {
            status: status.as_u16(),
            kind: field("reason").and(field("error")),
            reason,
            retry_after: retry_after
                .and_then(|r| r.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }
}

/// How long the CLI's writes are retried while the cluster answers "retry later" (503: no leader
/// right now): an election (a node coming back under load) lasts well under this.
pub const RETRY_WRITES: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    tls: transport::Tls,
    token: String,
    /// Sent as `x-phalanx-operator` (see [`caller`]).
    who: String,
}

/// Who runs this client, as `user@host`: `$USER` (else the name of the uid), at the host name.
pub fn caller() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// Where a config's key file is: relative paths are relative to the config file's folder (the
/// rule is `phalanx_node::key::key_path`'s, which `config check` and `init` use too).
pub fn key_path(config_path: &Path, config: &Config) -> PathBuf {
    phalanx_node::key::key_path(config_path, &config.cluster.key_file)
}

/// Write `contents` to `path` readable by its owner only (mode 0600), through a temporary file
/// beside it renamed over it, so that a crash never leaves half a file under that name
/// (`phalanx_node::pki::write`).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(contents).context("a private file holds text")?;
    Ok(phalanx_node::pki::write(path, text, 0o600)?)
}

/// Read and parse a config file, rendering every error as FILE:LINE:COL.
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    phalanx_core::config::parse(&text).map_err(|e| anyhow!("{}", e.render(&path.display().to_string())))
}

/// Make the cluster CA beside `key_file` unless it is there (`ca.crt`, `ca.key`; see
/// `phalanx_node::pki`); true when it made one.
pub fn ensure_ca(key_file: &Path, cluster: &str) -> Result<bool> {
    let paths = phalanx_node::pki::Paths::beside(key_file);
    if paths.ca_cert().exists() {
        return Ok(false);
    }
    phalanx_node::pki::create_ca(&paths, cluster, std::time::SystemTime::now())?;
    Ok(true)
}

/// The operator's TLS for the cluster whose key file is `key_file`: trusting the cluster CA's
/// certificate beside it (`ca.crt`, made by `phalanx init`).
pub fn operator_tls(key_file: &Path) -> Result<transport::Tls> {
    let paths = phalanx_node::pki::Paths::beside(key_file);
    let mut ca = phalanx_node::pki::load_ca_cert(&paths)?;
    // Mid-rotation (`phalanx ca rotate`), the next CA too: members may present either.
    if let Ok(next) = std::fs::read_to_string(paths.next_ca_cert()) {
        ca.push_str(&next);
    }
    Ok(transport::Tls::client(&ca)?)
}

impl Client {
    /// A client with the API token of `key`, over `tls`; requests end within 5 s.
    pub fn new(key: &ClusterKey, tls: transport::Tls) -> Result<Self> {
        Ok(Client {
            http: transport::api_client(&tls, Duration::from_secs(5))?,
            tls,
            token: key.api_token(),
            who: caller(),
        })
    }

    /// The same client presenting `token` instead (an API token of `phalanx token create`).
    pub fn with_token(mut self, token: String) -> Self {
        self.token = token;
        self
    }

    /// The same client naming its caller `who` (`x-phalanx-operator`) instead of [`caller`].
    pub fn with_caller(mut self, who: String) -> Self {
        self.who = who;
        self
    }

    /// The token it presents.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same client trusting `tls` instead (a CA rotation trusts the old and the new).
    pub fn with_tls(mut self, tls: transport::Tls) -> Result<Self> {
        self.http = transport::api_client(&tls, Duration::from_secs(5))?;
        self.tls = tls;
        Ok(self)
    }

    /// The same client with requests bounded by `t` instead.
    pub fn with_timeout(mut self, t: Duration) -> Result<Self> {
        self.http = transport::api_client(&self.tls, t)?;
        Ok(self)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .header(phalanx_node::api::operator::OPERATOR_HEADER, &self.who)
            .send()
            .await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(ApiFailure::from_answer(status, retry_after.as_deref(), &text).into());
        }
        serde_json::from_str(&text).with_context(|| format!("decoding the answer: {text}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, api: &str, path: &str) -> Result<T> {
        self.send(self.http.get(transport::url(api, path))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, api: &str, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(transport::url(api, path)).json(body)).await
    }

    /// [`post`](Self::post), retried while the cluster answers "retry later" (503: no leader
    /// right now, say just after the leader stopped), for at most `within`. A write the cluster
    /// refused or rejected is not retried.
    pub async fn post_retrying<B: Serialize, T: DeserializeOwned>(
        &self,
        api: &str,
        path: &str,
        body: &B,
        within: Duration,
    ) -> Result<T> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.post(api, path, body).await {
                Err(e) if std::time::Instant::now() < deadline => {
                    let Some(wait) = e.downcast_ref::<ApiFailure>().and_then(|f| f.retry_after) else {
                        return Err(e);
                    };
                    tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                }
                r => return r,
            }
        }
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, api: &str, path: &str, body: &B) -> Result<T> {
        self.send(self.http.put(transport::url(api, path)).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, api: &str, path: &str) -> Result<T> {
        self.send(self.http.delete(transport::url(api, path))).await
    }

    pub async fn status(&self, api: &str) -> Result<StatusReport> {
        self.get(api, "/v1/status").await
    }

    /// Open a stream (Server-Sent Events) at `path`: the response, its body still to read.
    pub async fn stream(&self, api: &str, path: &str) -> Result<reqwest::Response> {
        let resp = transport::stream_client(&self.tls)?
            .get(transport::url(api, path))
            .bearer_auth(&self.token)
            .header(phalanx_node::api::operator::OPERATOR_HEADER, &self.who)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ApiFailure::from_answer(status, None, &text).into());
        }
        Ok(resp)
    }

    pub async fn metrics(&self, api: &str) -> Result<String> {
        let resp = self
            .http
            .get(transport::url(api, "/metrics"))
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

#[cfg(test)]
mod tests {
    use super::ApiFailure;
    use reqwest::StatusCode;

    #[test]
    fn the_failure_carries_the_servers_reason() {
        let f = ApiFailure::from_answer(
            StatusCode::CONFLICT,
            None,
            r#"{"error":"refused","reason":"node \"n2\" already exists"}"#,
        );
        assert_eq!(f.kind.as_deref(), Some("refused"));
        assert_eq!(f.to_string(), "node \"n2\" already exists (HTTP 409)");
        let f = ApiFailure::from_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("1"),
            r#"{"error":"unavailable","reason":"no leader is known right now"}"#,
        );
        assert_eq!(f.to_string(), "no leader is known right now (HTTP 503, retry in 1 s)");
        let f = ApiFailure::from_answer(StatusCode::BAD_GATEWAY, None, "");
        assert_eq!(f.to_string(), "Bad Gateway (HTTP 502)");
    }
}

//! `phalanx token create NAME --role read|operate|admin [--ttl 30d] [--save]`, `token list`,
//! `token revoke NAME` (issue 17's tokens for people and scripts), and which token the CLI
//! presents: `PHALANX_TOKEN` if set, else the token saved for this config (`--save`: a 0600
//! file under `$PHALANX_TOKEN_DIR`, default `~/.config/phalanx/tokens`, named by a hash of the
//! config's path), else the cluster key's token (which opens the API only until an admin token
//! exists). The CLI draws a new token's secret itself (32 random bytes, hex) and sends only its
//! SHA-256: the secret is printed once and never crosses the network. `token create NAME --role
//! admin --break-glass` makes an admin token with a proof of the cluster key instead of a token
//! (when every admin token is lost).

use crate::client::Client;
use anyhow::{bail, Context, Result};
use phalanx_core::tokens::Role;
use phalanx_node::api::tokens::{BreakGlass, NewToken, TokenView, BREAK_GLASS_PATH};
use phalanx_node::ClusterKey;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The environment variable holding the token to present.
pub const TOKEN_ENV: &str = "PHALANX_TOKEN";
/// The environment variable naming the folder of saved tokens.
pub const TOKEN_DIR_ENV: &str = "PHALANX_TOKEN_DIR";

/// Where the token saved for the config at `config` lives.
pub fn saved_path(config: &Path) -> Result<PathBuf> {
    let dir = match std::env::var_os(TOKEN_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
                .context("no $HOME to keep a saved token under (set PHALANX_TOKEN_DIR)")?;
            base.join("phalanx").join("tokens")
        }
    };
    let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let id = phalanx_node::api::token_hash(&abs.display().to_string());
    Ok(dir.join(format!("{}.token", &id[..16])))
}

/// Where the CLI's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    Saved,
    Key,
}

/// The token the CLI presents for the config at `config`, and where it came from.
pub fn resolve(config: &Path, key: &ClusterKey) -> (String, Source) {
    if let Some(t) = std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return (t, Source::Env);
    }
    if let Some(t) = saved_path(config)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return (t, Source::Saved);
    }
    (key.api_token(), Source::Key)
}

/// A saved token is never replaced unasked: it may be the only copy of an admin's secret.
fn refuse_overwrite(config: &Path) -> Result<()> {
    let p = saved_path(config)?;
    if p.exists() {
        bail!(
            "a token is saved for this config already ({}): it may be the only copy of its secret; --force replaces it",
            p.display()
        );
    }
    Ok(())
}

/// A new secret: 32 random bytes, in hex.
fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Write `secret` to `path`, readable by its owner only (the folder too).
fn save(path: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::client::write_private(path, format!("{secret}\n").as_bytes())
}

/// What `token create` made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub name: String,
    pub role: Role,
    pub ttl_ms: Option<u64>,
    /// When it expires (unix ms, this machine's clock).
    pub expires_ms: Option<u64>,
    /// The secret: shown this once.
    pub token: String,
    /// Where it was saved for this config (None: not saved).
    pub saved: Option<PathBuf>,
}

/// `token create`: draw a secret, record its hash, save it when asked (or when this CLI used
/// the cluster key's token and makes an admin token: that token stops opening the API now).
/// With `break_glass` (the cluster key): an admin token made with a proof of the key instead of
/// a token, for when every admin token is lost; it is saved for this config.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    client: &Client,
    apis: &[String],
    config: &Path,
    source: Source,
    name: &str,
    role: &str,
    ttl: Option<std::time::Duration>,
    save_it: bool,
    force: bool,
    break_glass: Option<&ClusterKey>,
) -> Result<Created> {
    let Some(role) = Role::parse(role) else {
        bail!("--role {role:?}: one of read, operate, admin");
    };
    if break_glass.is_some() && (role != Role::Admin || ttl.is_some()) {
        bail!("--break-glass makes an admin token that never expires: give --role admin and no --ttl (revoke it once you made a proper one)");
    }
    if !phalanx_core::tokens::name_ok(name) {
        bail!("token name {name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'");
    }
    let ttl_ms = ttl.map(|t| t.as_millis() as u64);
    if ttl_ms == Some(0) {
        bail!("--ttl must be longer than 0");
    }
    let save_it = save_it || (source == Source::Key && role == Role::Admin) || break_glass.is_some();
    if save_it && !force {
        refuse_overwrite(config)?;
    }
    let secret = new_secret();
    let hash = phalanx_node::api::token_hash(&secret);
    let (api, _) = client.first_answering(apis).await?;
    let _: serde_json::Value = match break_glass {
        Some(key) => {
            let at_ms = phalanx_node::mesh::unix_ms();
            let body = BreakGlass {
                name: name.to_string(),
                proof: key.break_glass_proof(name, &hash, at_ms),
                hash,
                at_ms,
            };
            client.post(&api, BREAK_GLASS_PATH, &body).await?
        }
        None => {
            let body = NewToken {
                name: name.to_string(),
                role,
                hash,
                ttl_ms,
            };
            client.post(&api, "/v1/tokens", &body).await?
        }
    };
    let saved = if save_it {
        let p = saved_path(config)?;
        save(&p, &secret)?;
        Some(p)
    } else {
        None
    };
    Ok(Created {
        name: name.to_string(),
        role,
        ttl_ms,
        expires_ms: ttl_ms.map(|t| phalanx_node::mesh::unix_ms() + t),
        token: secret,
        saved,
    })
}

pub fn render_created(c: &Created) -> String {
    let expiry = c.expires_ms.map_or("never expires".to_string(), |e| {
        format!("expires at {}", phalanx_node::events::rfc3339(e))
    });
    let mut s = format!(
        "Token {} created (role {}, {expiry}). Its secret, shown only now:\n\n  {}\n\n",
        c.name, c.role, c.token
    );
    match &c.saved {
        Some(p) => s.push_str(&format!(
            "Saved for this config in {} (0600): this CLI presents it from now on.\n",
            p.display()
        )),
        None => s.push_str(&format!(
            "Give it to its user: {TOKEN_ENV}=<secret> phalanx status, or `phalanx token save` it on their machine.\n"
        )),
    }
    s
}

pub async fn list(client: &Client, apis: &[String]) -> Result<Vec<TokenView>> {
    let (api, _) = client.first_answering(apis).await?;
    client.get(&api, "/v1/tokens").await
}

pub fn render_list(tokens: &[TokenView]) -> String {
    if tokens.is_empty() {
        return "No tokens: the cluster key's token opens the API (make an admin token: phalanx token create NAME --role admin).\n".into();
    }
    let mut s = format!(
        "{:<24} {:<8} {:<26} {:<24} {}\n",
        "NAME", "ROLE", "CREATED", "BY", "EXPIRES"
    );
    for t in tokens {
        let expires = match (t.expires_ms, t.expired) {
            (None, _) => "never".to_string(),
            (Some(e), true) => format!("{} (expired)", phalanx_node::events::rfc3339(e)),
            (Some(e), false) => phalanx_node::events::rfc3339(e),
        };
        s.push_str(&format!(
            "{:<24} {:<8} {:<26} {:<24} {}\n",
            t.name,
            t.role,
            phalanx_node::events::rfc3339(t.created_ms),
            t.created_by,
            expires
        ));
    }
    s
}

pub async fn revoke(client: &Client, apis: &[String], name: &str) -> Result<()> {
    let (api, _) = client.first_answering(apis).await?;
    let _: serde_json::Value = client.delete(&api, &format!("/v1/tokens/{name}")).await?;
    Ok(())
}

/// `token save`: keep a token given by an admin for this config (read from stdin or
/// `PHALANX_TOKEN`), checked against the cluster first.
pub async fn save_given(client: &Client, apis: &[String], config: &Path, secret: &str, force: bool) -> Result<PathBuf> {
    if !force {
        refuse_overwrite(config)?;
    }
    let secret = secret.trim();
    if secret.len() != 64 || !secret.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("a token is 64 hex digits");
    }
    let probe = client.clone().with_token(secret.to_string());
    probe
        .first_answering(apis)
        .await
        .context("the cluster does not accept this token")?;
    let p = saved_path(config)?;
    save(&p, secret)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_token_is_not_replaced_unasked() {
        let dir = tempfile::tempdir().unwrap();
        // The one test of this binary that reads the variable.
        std::env::set_var(TOKEN_DIR_ENV, dir.path().join("tokens"));
        let config = dir.path().join("cluster.toml");
        assert!(refuse_overwrite(&config).is_ok(), "nothing saved yet");
        let p = saved_path(&config).unwrap();
        save(&p, &"ab".repeat(32)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(p.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let e = refuse_overwrite(&config).unwrap_err().to_string();
        assert!(
            e.contains("a token is saved for this config already") && e.contains("--force"),
            "{e}"
        );
        // Another config has its own file.
        assert!(refuse_overwrite(&dir.path().join("other.toml")).is_ok());
    }
}

//! The cluster key: 32 random bytes kept hex-encoded in a 0600 file beside the config. It signs
//! heartbeats (HMAC-SHA256) and derives the API bearer token, so one secret file is all a node
//! needs to join the cluster's traffic.

use phalanx_core::diag::Severity;
use ring::hmac;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the cluster key {path}: {source} (create one with `phalanx init`)")]
    Read { path: String, source: std::io::Error },
    #[error("the cluster key {path} is not 64+ hex characters (create one with `phalanx init`)")]
    Malformed { path: String },
    #[error("writing the cluster key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a cluster key (remove it first)")]
    Exists { path: String },
    #[error("the cluster key {path} is readable by group or others (mode {mode:04o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
}

/// Refuse a file holding a secret that its group or others may read (mode & 0o077).
pub fn private_mode(path: &Path) -> Result<(), u32> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(m.permissions().mode() & 0o7777),
        _ => Ok(()),
    }
}

/// The shared secret of a cluster.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: Vec<u8>,
    hmac: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        ClusterKey {
            bytes: bytes.to_vec(),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Load a key file (hex, surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed { path: p.clone() })?;
        if bytes.len() < 32 {
            return Err(KeyError::Malformed { path: p });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// [`ClusterKey::load`], refusing a key file that its group or others may read (what a
    /// daemon loads at start).
    pub fn load_private(path: &Path) -> Result<Self, KeyError> {
        private_mode(path).map_err(|mode| KeyError::Exposed {
            path: path.display().to_string(),
            mode,
        })?;
        Self::load(path)
    }

    /// Write a new random key to `path` with mode 0600; never overwrites.
    pub fn generate(path: &Path) -> Result<Self, KeyError> {
        use rand::RngCore;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists { path: p.clone() }
                } else {
                    KeyError::Write {
                        path: p.clone(),
                        source,
                    }
                }
            })?;
        writeln!(f, "{}", hex::encode(bytes)).map_err(|source| KeyError::Write { path: p, source })?;
        Ok(Self::from_bytes(&bytes))
    }

    pub fn sign(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.hmac, data)
    }

    /// Constant-time check of a tag.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.hmac, data, tag).is_ok()
    }

    fn break_glass_message(name: &str, hash: &str, at_ms: u64) -> String {
        format!("phalanx break-glass v1\n{name}\n{hash}\n{at_ms}")
    }

    /// The proof that whoever asks for admin token `name` (secret hashing to `hash`) at unix ms
    /// `at_ms` holds the cluster key: HMAC(key, those three), hex (`token create --break-glass`).
    pub fn break_glass_proof(&self, name: &str, hash: &str, at_ms: u64) -> String {
        hex::encode(self.sign(Self::break_glass_message(name, hash, at_ms).as_bytes()))
    }

    /// Whether `proof` is [`ClusterKey::break_glass_proof`]'s for these (constant time).
    pub fn verify_break_glass(&self, name: &str, hash: &str, at_ms: u64, proof: &str) -> bool {
        hex::decode(proof).is_ok_and(|tag| self.verify(Self::break_glass_message(name, hash, at_ms).as_bytes(), &tag))
    }

    /// The API bearer token: HMAC(key, "phalanx api token v1"), hex.
    pub fn api_token(&self) -> String {
        hex::encode(hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.bytes),
            b"phalanx api token v1",
        ))
    }
}

/// Where a config's key file is: `key_file` as written in the config, relative to the config
/// file's folder unless absolute.
pub fn key_path(config: &Path, key_file: &str) -> PathBuf {
    let k = Path::new(key_file);
    if k.is_absolute() {
        k.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(k)
    }
}

/// What stops the daemon, run by this user, from using the key file at `path` (errors), and a
/// mode that lets other users read it (a warning): for `config check`.
pub fn check_key_file(path: &Path) -> Vec<(Severity, String)> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display();
    const NEEDS: &str = "it must be readable by the user that runs the daemon (owned by it, mode 0600 or 0400)";
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![(
                Severity::Error,
                format!(
                    "key file {p} does not exist: create it with `phalanx --config FILE init` (mode 0600), or copy the cluster's key here; {NEEDS}"
                ),
            )]
        }
        Err(e) => return vec![(Severity::Error, format!("key file {p} cannot be read ({e}): {NEEDS}"))],
    };
    if !meta.is_file() {
        return vec![(Severity::Error, format!("key file {p} is not a regular file: {NEEDS}"))];
    }
    match ClusterKey::load(path) {
        Err(KeyError::Read { source, .. }) => {
            return vec![(
                Severity::Error,
                format!("key file {p} cannot be read ({source}): {NEEDS}"),
            )]
        }
        Err(e) => return vec![(Severity::Error, e.to_string())],
        Ok(_) => {}
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return vec![(
            Severity::Warning,
            format!("key file {p} has mode {mode:04o}: other users can read the cluster key (chmod 0600 {p})"),
        )];
    }
    Vec::new()
}

/// Constant-time comparison of two tokens.
pub fn token_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = ClusterKey::generate(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let l = ClusterKey::load(&p).unwrap();
        assert_eq!(k.api_token(), l.api_token());
        assert!(matches!(ClusterKey::generate(&p), Err(KeyError::Exists { .. })));
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(matches!(
            ClusterKey::load(&dir.path().join("bad")),
            Err(KeyError::Malformed { .. })
        ));
        assert!(token_eq("abc", "abc") && !token_eq("abc", "abd") && !token_eq("abc", "ab"));
    }
}

//! The cluster key: 32 random bytes kept hex-encoded in a 0600 file beside the config. It signs
//! heartbeats (HMAC-SHA256) and derives the API bearer token, so one secret file is all a node
//! needs to join the cluster's traffic. [`Keys`] is what a running node holds: the key file's,
//! and during `phalanx key rotate` the next one (`KEYFILE.next`), of which the replicated trust
//! record says which are accepted and which signs.

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

    /// The key's public name: HMAC(key, "phalanx key id v1"), the first 8 bytes in hex (what
    /// the replicated trust record and `phalanx key rotate` call it).
    pub fn id(&self) -> String {
        hex::encode(&self.sign(b"phalanx key id v1").as_ref()[..8])
    }

    /// Write this key to `path` (mode 0600, replacing what is there atomically).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        crate::pki::write(path, &format!("{}\n", hex::encode(&self.bytes)), 0o600).map_err(|e| KeyError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The key as hex (what a key file holds, and what `key rotate` pushes to the nodes).
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// A key from the hex of [`ClusterKey::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() >= 32)
            .map(|b| Self::from_bytes(&b))
    }

    /// The API bearer token: HMAC(key, "phalanx api token v1"), hex.
    pub fn api_token(&self) -> String {
        hex::encode(hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.bytes),
            b"phalanx api token v1",
        ))
    }
}

/// What signs and checks heartbeats: one key ([`ClusterKey`]) or a node's ring ([`Keys`]).
pub trait Signer {
    fn sign(&self, data: &[u8]) -> hmac::Tag;
    /// Constant-time check of a tag.
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool;
}

impl Signer for ClusterKey {
    fn sign(&self, data: &[u8]) -> hmac::Tag {
        ClusterKey::sign(self, data)
    }
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        ClusterKey::verify(self, data, tag)
    }
}

/// Where the next key of a rotation waits beside the key file `key_file`.
pub fn next_path(key_file: &Path) -> PathBuf {
    let mut p = key_file.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

/// A node's heartbeat keys (cheap to clone, shared): every key it holds, those the cluster
/// accepts now (tags of any verify) and the one it signs with (and whose API token it sends).
/// Before any rotation: the key file's alone.
#[derive(Clone, Debug)]
pub struct Keys(std::sync::Arc<std::sync::RwLock<KeySet>>);

#[derive(Debug)]
struct KeySet {
    held: Vec<ClusterKey>,
    accept: Vec<ClusterKey>,
    send: ClusterKey,
    /// The tokens of `accept` and of `send` (computed once per change, not per request).
    tokens: Vec<String>,
    send_token: String,
}

impl From<ClusterKey> for Keys {
    fn from(k: ClusterKey) -> Self {
        Keys(std::sync::Arc::new(std::sync::RwLock::new(KeySet {
            held: vec![k.clone()],
            tokens: vec![k.api_token()],
            accept: vec![k.clone()],
            send_token: k.api_token(),
            send: k,
        })))
    }
}

impl Keys {
    /// The key file's key and, when a rotation left one there, the next (both refused when
    /// group or others may read them).
    pub fn load(key_file: &Path) -> Result<Keys, KeyError> {
        let keys = Keys::from(ClusterKey::load_private(key_file)?);
        let next = next_path(key_file);
        if next.exists() {
            keys.hold(ClusterKey::load_private(&next)?);
        }
        Ok(keys)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `key` too (pushed by `phalanx key rotate`); accepted once the trust record says.
    pub fn hold(&self, key: ClusterKey) {
        let mut s = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !s.held.iter().any(|k| k.id() == key.id()) {
            s.held.push(key);
        }
    }

    /// Accept the keys of ids `accept` (empty: the first held, the key file's) and sign with
    /// `send` (None: the first accepted). Ids this node does not hold are returned (it keeps
    /// what it has of the rest; with none of them, it keeps its current keys).
    pub fn apply(&self, accept: &[String], send: Option<&str>) -> Vec<String> {
        let mut s = self.0.write().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<String> = accept
            .iter()
            .filter(|id| !s.held.iter().any(|k| &k.id() == *id))
            .cloned()
            .collect();
        let chosen: Vec<ClusterKey> = if accept.is_empty() {
            s.held.first().cloned().into_iter().collect()
        } else {
            s.held.iter().filter(|k| accept.contains(&k.id())).cloned().collect()
        };
        if chosen.is_empty() {
            return missing;
        }
        let send = send
            .and_then(|id| chosen.iter().find(|k| k.id() == id))
            .unwrap_or(&chosen[0])
            .clone();
        s.tokens = chosen.iter().map(ClusterKey::api_token).collect();
        s.accept = chosen;
        s.send_token = send.api_token();
        s.send = send;
        missing
    }

    /// The token this node sends to its peers (the signing key's).
    pub fn token(&self) -> String {
        self.read().send_token.clone()
    }

    /// Whether `presented` is the token of an accepted key (constant time per key).
    pub fn token_ok(&self, presented: &str) -> bool {
        self.read()
            .tokens
            .iter()
            .fold(false, |ok, t| token_eq(presented, t) | ok)
    }

    /// [`ClusterKey::verify_break_glass`] with any accepted key.
    pub fn verify_break_glass(&self, name: &str, hash: &str, at_ms: u64, proof: &str) -> bool {
        self.read()
            .accept
            .iter()
            .any(|k| k.verify_break_glass(name, hash, at_ms, proof))
    }

    /// The ids of the keys held, accepted, and the signing key's.
    pub fn ids(&self) -> (Vec<String>, Vec<String>, String) {
        let s = self.read();
        (
            s.held.iter().map(ClusterKey::id).collect(),
            s.accept.iter().map(ClusterKey::id).collect(),
            s.send.id(),
        )
    }
}

impl Signer for Keys {
    fn sign(&self, data: &[u8]) -> hmac::Tag {
        self.read().send.sign(data)
    }
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.read().accept.iter().any(|k| k.verify(data, tag))
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

    /// The three steps of a rotation: a tag of either key is good while both are accepted, the
    /// new one signs from the second step, the old one is refused after the third.
    #[test]
    fn keys_accept_both_then_send_with_the_new_then_drop_the_old() {
        let (old, new) = (ClusterKey::from_bytes(&[1; 32]), ClusterKey::from_bytes(&[2; 32]));
        let keys = Keys::from(old.clone());
        let other = Keys::from(new.clone());
        let msg = b"heartbeat";
        assert!(!keys.verify(msg, other.sign(msg).as_ref()));
        assert_eq!(keys.apply(&[old.id(), new.id()], Some(&old.id())), vec![new.id()]);
        keys.hold(new.clone());
        assert!(keys.apply(&[old.id(), new.id()], Some(&old.id())).is_empty());
        assert!(keys.verify(msg, other.sign(msg).as_ref()));
        assert!(keys.verify(msg, old.sign(msg).as_ref()));
        assert_eq!(keys.sign(msg).as_ref(), old.sign(msg).as_ref());
        assert!(keys.token_ok(&new.api_token()) && keys.token_ok(&old.api_token()));
        keys.apply(&[old.id(), new.id()], Some(&new.id()));
        assert_eq!(keys.sign(msg).as_ref(), new.sign(msg).as_ref());
        assert_eq!(keys.token(), new.api_token());
        keys.apply(&[new.id()], Some(&new.id()));
        assert!(!keys.verify(msg, old.sign(msg).as_ref()));
        assert!(!keys.token_ok(&old.api_token()));
        assert_eq!(keys.ids().1, vec![new.id()]);
        // Told to accept only keys it lacks, it keeps what it had.
        assert_eq!(keys.apply(&["ffff".into()], None), vec!["ffff".to_string()]);
        assert!(keys.verify(msg, new.sign(msg).as_ref()));
        assert_eq!(ClusterKey::from_hex(&new.to_hex()).map(|k| k.id()), Some(new.id()));
        assert!(ClusterKey::from_hex("abcd").is_none());
    }

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

//! A node's side of `phalanx ca rotate` and `phalanx key rotate`. From every applied entry on it
//! follows the replicated trust record (`phalanx_core::state::Trust`): it trusts exactly its
//! CAs (and writes them to `ca.crt`, so that a restart trusts the same), accepts and signs with
//! its heartbeat keys, wakes the certificate renewal when the issuing CA changes, and once a
//! rotation dropped the old CA or key, puts the new one's files where the old ones were. It
//! keeps what the CLI pushes before a step (the next CA, the next key) and reports what it
//! trusts, holds and presents ([`TrustView`], `GET /v1/trust`).

use crate::key::{next_path, ClusterKey};
use crate::node::Node;
use crate::pki::{self, Paths};
use phalanx_core::state::Trust;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// What one node trusts, holds and presents now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustView {
    pub node: String,
    /// Key ids of the CAs its TLS trusts.
    pub trusted: Vec<String>,
    /// Key id of the CA that issued the certificate it presents.
    pub presenting: Option<String>,
    /// Key ids of the CAs whose key this node holds (it issues and signs with them).
    pub ca_keys: Vec<String>,
    /// Ids of the heartbeat keys it holds, accepts, and signs with.
    pub keys_held: Vec<String>,
    pub keys_accepted: Vec<String>,
    pub key_sending: String,
}

/// Follow the replicated trust record from each applied entry on (see the module's comment).
pub(crate) async fn watch(node: Arc<Node>) {
    let mut applied = node.applied();
    let mut current: Option<Trust> = None;
    loop {
        let t = node.with_state(|sm| sm.cluster.trust.clone());
        if current.as_ref() != Some(&t) {
            follow(&node, &t);
            current = Some(t);
            node.trust_changed.send_modify(|g| *g += 1);
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Take the record `t` in: TLS trust, keys, and this machine's files.
pub(crate) fn follow(node: &Node, t: &Trust) {
    if !t.cas.is_empty() {
        match node.tls.set_trust(&t.cas, &[]) {
            Ok(()) => tracing::info!(cas = ?ids(&t.cas), "trusting the cluster's CAs"),
            Err(e) => tracing::error!(error = %e, "the replicated CA certificates could not be trusted"),
        }
    }
    let missing = node.key.apply(&t.keys, t.send_key_id());
    if !missing.is_empty() {
        tracing::error!(
            ?missing,
            "the cluster accepts heartbeat keys this node does not hold: `phalanx key rotate` pushes them"
        );
    }
    if let Some(paths) = &node.pki {
        if let Err(e) = settle_files(paths, t) {
            tracing::error!(error = %e, "updating the CA and key files after a trust change");
        }
    }
}

/// The key ids of CA certificates.
pub fn ids(cas: &[String]) -> Vec<String> {
    cas.iter()
        .map(|c| pki::ca_id(c).unwrap_or_else(|| "?".into()))
        .collect()
}

/// Bring the files at `paths` in line with `t`: `ca.crt` holds exactly the trusted CAs; once
/// one CA is left, its key (pushed as `ca-next.key`) becomes `ca.key` and a key of a CA no
/// longer trusted is deleted; once one heartbeat key is left and it is the `.next` one, it
/// replaces the key file. Safe when several processes share the folder (a playground): every
/// replacement is a rename, and a key is deleted only once no rename can bring it back.
pub fn settle_files(paths: &Paths, t: &Trust) -> Result<(), pki::PkiError> {
    if !t.cas.is_empty() {
        let bundle: String = t.cas.concat();
        if std::fs::read_to_string(paths.ca_cert()).ok().as_deref() != Some(bundle.as_str()) {
            pki::write(&paths.ca_cert(), &bundle, 0o644)?;
        }
    }
    if let [only] = t.cas.as_slice() {
        let next_key = std::fs::read_to_string(paths.next_ca_key()).ok();
        if next_key.as_deref().is_some_and(|k| pki::key_matches(only, k)) {
            rename(&paths.next_ca_key(), &paths.ca_key());
            tracing::info!(path = %paths.ca_key().display(), "the new CA's key is the CA key now");
        }
        if !paths.next_ca_key().exists() {
            let _ = std::fs::remove_file(paths.next_ca_cert());
            if let Ok(k) = std::fs::read_to_string(paths.ca_key()) {
                if !pki::key_matches(only, &k) {
                    let _ = std::fs::remove_file(paths.ca_key());
                    tracing::warn!(path = %paths.ca_key().display(), "deleted the key of a CA the cluster no longer trusts");
                }
            }
        }
    }
    if let [only] = t.keys.as_slice() {
        let next = next_path(paths.key_file());
        if ClusterKey::load(&next).is_ok_and(|k| &k.id() == only) {
            rename(&next, paths.key_file());
            tracing::info!(path = %paths.key_file().display(), "the new heartbeat key is the key file now");
        }
    }
    Ok(())
}

/// Rename `from` to `to`; another process of the same folder having done it first is fine.
fn rename(from: &Path, to: &Path) {
    if let Err(e) = std::fs::rename(from, to) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(error = %e, from = %from.display(), to = %to.display(), "renaming");
        }
    }
}

/// What `node` trusts, holds and presents now.
pub fn view(node: &Node) -> TrustView {
    let (held, accepted, sending) = node.key.ids();
    TrustView {
        node: node.name.clone(),
        trusted: ids(&node.tls.trusted()),
        presenting: node.tls.presented_issuer(),
        ca_keys: node
            .pki
            .as_ref()
            .map(|p| {
                pki::issuers(p)
                    .iter()
                    .filter_map(|ca| pki::ca_id(&ca.cert_pem))
                    .collect()
            })
            .unwrap_or_default(),
        keys_held: held,
        keys_accepted: accepted,
        key_sending: sending,
    }
}

/// Keep the next CA of a rotation (pushed by `phalanx ca rotate` to a node that holds the CA
/// key, so that it issues with the new one from the second step on).
pub fn keep_next_ca(paths: &Paths, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let info = pki::inspect_pem(cert_pem)?;
    if !info.is_ca {
        return Err("not a CA certificate".into());
    }
    if !pki::key_matches(cert_pem, key_pem) {
        return Err("the key is not the certificate's".into());
    }
    pki::write(&paths.next_ca_key(), key_pem, 0o600).map_err(|e| e.to_string())?;
    pki::write(&paths.next_ca_cert(), cert_pem, 0o644).map_err(|e| e.to_string())
}

/// Keep the next heartbeat key (pushed by `phalanx key rotate`): written beside the key file
/// (0600) and held, accepted once the trust record says.
pub fn keep_next_key(node: &Node, key: ClusterKey) -> Result<(), String> {
    if let Some(paths) = &node.pki {
        key.write(&next_path(paths.key_file())).map_err(|e| e.to_string())?;
    }
    node.key.hold(key);
    let t = node.with_state(|sm| sm.cluster.trust.clone());
    follow(node, &t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// The files after the third step: the new CA alone in `ca.crt`, its key as `ca.key`, the
    /// old key gone; the new heartbeat key as the key file. Twice (another process of the same
    /// folder) changes nothing more.
    #[test]
    fn the_last_step_puts_the_new_files_where_the_old_were() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("phalanx.key");
        let paths = Paths::beside(&key_file);
        let now = SystemTime::now();
        let old = pki::generate_ca("demo", now).unwrap();
        let new = pki::generate_next_ca("demo", now).unwrap();
        pki::write(&paths.ca_cert(), &format!("{}{}", old.cert_pem, new.cert_pem), 0o644).unwrap();
        pki::write(&paths.ca_key(), &old.key_pem, 0o600).unwrap();
        keep_next_ca(&paths, &new.cert_pem, &new.key_pem).unwrap();
        assert!(keep_next_ca(&paths, &new.cert_pem, &old.key_pem).is_err());
        let (k_old, k_new) = (ClusterKey::from_bytes(&[1; 32]), ClusterKey::from_bytes(&[2; 32]));
        k_old.write(&key_file).unwrap();
        k_new.write(&next_path(&key_file)).unwrap();
        assert_eq!(pki::issuers(&paths).len(), 2);
        // The second step changes no file.
        let both = Trust {
            cas: vec![old.cert_pem.clone(), new.cert_pem.clone()],
            issuer: 1,
            keys: vec![k_old.id(), k_new.id()],
            send_key: 1,
        };
        settle_files(&paths, &both).unwrap();
        assert!(paths.next_ca_key().exists() && next_path(&key_file).exists());
        let done = Trust {
            cas: vec![new.cert_pem.clone()],
            issuer: 0,
            keys: vec![k_new.id()],
            send_key: 0,
        };
        for _ in 0..2 {
            settle_files(&paths, &done).unwrap();
            assert_eq!(std::fs::read_to_string(paths.ca_cert()).unwrap(), new.cert_pem);
            assert!(pki::key_matches(
                &new.cert_pem,
                &std::fs::read_to_string(paths.ca_key()).unwrap()
            ));
            assert!(!paths.next_ca_key().exists() && !paths.next_ca_cert().exists());
            assert_eq!(ClusterKey::load(&key_file).unwrap().id(), k_new.id());
            assert!(!next_path(&key_file).exists());
        }
        let issuers = pki::issuers(&paths);
        assert_eq!(issuers.len(), 1);
        assert_eq!(pki::ca_id(&issuers[0].cert_pem), pki::ca_id(&new.cert_pem));
    }
}

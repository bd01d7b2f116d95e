//! `phalanx ca rotate` and `phalanx key rotate`: replace the cluster CA, or the heartbeat key,
//! while the cluster runs, in three steps committed through Raft, each waited for on every
//! member (the nodes and the witness) before the next: trust (or accept) the old and the new →
//! issue (or sign) with the new → drop the old. Nothing restarts and no connection or heartbeat
//! is refused on the way: at every moment, what any member presents or signs with is accepted
//! by every member. The new CA or key is made here (`ca-next.*`, `KEYFILE.next`, 0600) and
//! pushed over TLS to the members that need it (the ones holding the CA key; every member for
//! the heartbeat key). Each step is a compare-and-set of the replicated record, so a rotation
//! interrupted (or raced by another operator) is resumed by running the command again.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::state::Trust;
use phalanx_node::api::trust::{NextCa, NextKey, TrustReport, TrustStep};
use phalanx_node::key::{next_path, ClusterKey};
use phalanx_node::pki::{self, Paths};
use phalanx_node::rotation::{self, TrustView};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a rotation did, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ca` or `key`.
    pub what: &'static str,
    pub old: String,
    pub new: String,
    pub members: Vec<String>,
    /// Each step, and how long until every member had taken it in (ms; 0: done before).
    pub steps: Vec<(String, u64)>,
}

pub fn render(r: &Report) -> String {
    let what = if r.what == "ca" { "CA" } else { "heartbeat key" };
    let mut out = format!(
        "Rotated the cluster {what}: {} -> {} on {} member(s) ({}).\n",
        r.old,
        r.new,
        r.members.len(),
        r.members.join(", ")
    );
    for (step, ms) in &r.steps {
        out.push_str(&format!("  {step:<44} every member within {ms} ms\n"));
    }
    out
}

/// Every member to wait for: name → API address (the nodes of the replicated state, and the
/// witness of the config).
async fn members(client: &Client, apis: &[String], config: &phalanx_core::Config) -> Result<BTreeMap<String, String>> {
    let mut last = anyhow!("no API address to ask");
    for a in apis {
        match client
            .get::<BTreeMap<String, phalanx_core::NodeRecord>>(a, "/v1/nodes")
            .await
        {
            Ok(nodes) => {
                let mut m: BTreeMap<String, String> = nodes.into_iter().map(|(n, r)| (n, r.api)).collect();
                if let Some(w) = &config.witness {
                    m.insert(phalanx_node::raft::WITNESS_NAME.into(), w.address.to_string());
                }
                return Ok(m);
            }
            Err(e) => last = e.context(format!("asking {a}")),
        }
    }
    Err(last)
}

async fn record(client: &Client, members: &BTreeMap<String, String>) -> Result<TrustReport> {
    let mut last = anyhow!("no member to ask");
    for api in members.values() {
        match client.get::<TrustReport>(api, "/v1/trust").await {
            Ok(r) => return Ok(r),
            Err(e) => last = e.context(format!("asking {api}")),
        }
    }
    Err(last)
}

/// Commit one step through any member (the leader, or a node forwarding to it).
async fn commit(client: &Client, members: &BTreeMap<String, String>, from: &Trust, to: &Trust) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let step = TrustStep {
        expected: from.clone(),
        trust: to.clone(),
    };
    let mut last = anyhow!("no member to ask");
    for api in members.values() {
        match client.post::<_, phalanx_core::Outcome>(api, "/v1/trust", &step).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                // A refusal is the cluster's answer, not this member's trouble.
                if e.downcast_ref::<crate::client::ApiFailure>()
                    .is_some_and(|f| (400..500).contains(&f.status))
                {
                    return Err(e);
                }
                last = e.context(format!("asking {api}"));
            }
        }
    }
    Err(last)
}

/// Wait until every member's view passes `done` (polled; each member's own answer).
async fn wait_all(
    client: &Client,
    members: &BTreeMap<String, String>,
    step: &str,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
    done: impl Fn(&TrustView) -> bool,
) -> Result<u64> {
    let start = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for (name, api) in members {
            match client.get::<TrustReport>(api, "/v1/trust").await {
                Ok(r) if done(&r.node) => {}
                Ok(r) => waiting.push(format!(
                    "{name} (trusts {:?}, presents {:?}, keys {:?} signing with {})",
                    r.node.trusted, r.node.presenting, r.node.keys_accepted, r.node.key_sending
                )),
                Err(e) => waiting.push(format!("{name} ({e:#})")),
            }
        }
        if waiting.is_empty() {
            return Ok(start.elapsed().as_millis() as u64);
        }
        bar.set_message(format!("{step}: waiting for {}", waiting.len()));
        if start.elapsed() > timeout {
            bail!(
                "{step}: not every member took it in within {} s: {}. The steps done stay done; run the command again once they are back (a member down through a whole rotation needs `phalanx cert issue` and the new files by hand)",
                timeout.as_secs(),
                waiting.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The record's CAs, or before any rotation, `ca.crt`'s.
fn current_cas(rec: &Trust, paths: &Paths) -> Result<Vec<String>> {
    if !rec.cas.is_empty() {
        return Ok(rec.cas.clone());
    }
    Ok(pki::split(&pki::load_ca_cert(paths)?))
}

/// `phalanx ca rotate`.
pub async fn ca(
    client: &Client,
    apis: &[String],
    config: &phalanx_core::Config,
    paths: &Paths,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<Report> {
    let members = members(client, apis, config).await?;
    let rec = record(client, &members).await?.record;
    let cas = current_cas(&rec, paths)?;
    // Resuming: the record holds [old, new]; starting: one CA, and the next one made here.
    let (old, new) = match cas.as_slice() {
        [old, new] => (old.clone(), new.clone()),
        [old] => {
            let mut next = pki::next_ca(paths, &config.cluster.name, std::time::SystemTime::now())?;
            if pki::ca_id(&next.cert_pem) == pki::ca_id(old) {
                // A finished rotation's files, left behind: a new one.
                let _ = std::fs::remove_file(paths.next_ca_key());
                next = pki::next_ca(paths, &config.cluster.name, std::time::SystemTime::now())?;
            }
            (old.clone(), next.cert_pem)
        }
        other => bail!(
            "the cluster trusts {} CAs: expected one (or two, mid-rotation)",
            other.len()
        ),
    };
    let (old_id, new_id) = (
        pki::ca_id(&old).unwrap_or_default(),
        pki::ca_id(&new).unwrap_or_default(),
    );
    // From here on this client trusts both (the members present certificates of either).
    let client = client
        .clone()
        .with_tls(phalanx_node::transport::Tls::client(&format!("{old}{new}"))?)?;
    let mut steps = Vec::new();

    bar.set_message("1/3 trust the old and the new CA");
    let both = Trust {
        cas: vec![old.clone(), new.clone()],
        issuer: 0,
        ..rec.clone()
    };
    if rec.cas.len() < 2 {
        commit(&client, &members, &rec, &both).await?;
    }
    let ms = wait_all(&client, &members, "1/3 trust both", timeout, bar, |v| {
        v.trusted.contains(&old_id) && v.trusted.contains(&new_id)
    })
    .await?;
    steps.push(("1/3 trust the old and the new CA".into(), ms));

    // The new CA's key, to every member that issues (holds a CA key) and lacks it.
    let views = views_of(&client, &members).await?;
    let holders: Vec<&String> = views
        .iter()
        .filter(|(_, v)| !v.ca_keys.is_empty() && !v.ca_keys.contains(&new_id))
        .map(|(n, _)| n)
        .collect();
    if !holders.is_empty() {
        let key = std::fs::read_to_string(paths.next_ca_key())
            .ok()
            .filter(|k| pki::key_matches(&new, k))
            .with_context(|| {
                format!(
                    "{} hold the CA key and need the new one's, which is not on this machine ({}): run the command where the rotation began",
                    holders.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    paths.next_ca_key().display()
                )
            })?;
        for name in &holders {
            let body = NextCa {
                cert: new.clone(),
                key: key.clone(),
            };
            client
                .put::<_, TrustView>(&members[*name], "/v1/trust/ca-next", &body)
                .await
                .with_context(|| format!("giving {name} the new CA"))?;
        }
    }
    let views = views_of(&client, &members).await?;
    if !views.values().any(|v| v.ca_keys.contains(&new_id)) {
        bail!("no member holds the new CA's key, so none can issue from it: keep the CA key on at least one node (see `phalanx cert`)");
    }

    bar.set_message("2/3 issue from the new CA");
    let rec = record(&client, &members).await?.record;
    let issuing = Trust {
        issuer: 1,
        ..both.clone()
    };
    commit(&client, &members, &rec, &issuing).await?;
    let ms = wait_all(&client, &members, "2/3 issue from the new CA", timeout, bar, |v| {
        v.presenting.as_deref() == Some(new_id.as_str())
    })
    .await?;
    steps.push(("2/3 every member presents a new certificate".into(), ms));

    bar.set_message("3/3 drop the old CA");
    let rec = record(&client, &members).await?.record;
    let done = Trust {
        cas: vec![new.clone()],
        issuer: 0,
        ..issuing.clone()
    };
    commit(&client, &members, &rec, &done).await?;
    let ms = wait_all(&client, &members, "3/3 drop the old CA", timeout, bar, |v| {
        v.trusted == [new_id.clone()]
    })
    .await?;
    steps.push(("3/3 drop the old CA".into(), ms));
    rotation::settle_files(paths, &done)?;
    Ok(Report {
        what: "ca",
        old: old_id,
        new: new_id,
        members: members.keys().cloned().collect(),
        steps,
    })
}

async fn views_of(client: &Client, members: &BTreeMap<String, String>) -> Result<BTreeMap<String, TrustView>> {
    let mut out = BTreeMap::new();
    for (name, api) in members {
        let r = client
            .get::<TrustReport>(api, "/v1/trust")
            .await
            .with_context(|| format!("asking {name} what it holds"))?;
        out.insert(name.clone(), r.node);
    }
    Ok(out)
}

/// `phalanx key rotate`. A client presenting the key file's token (no API token yet) moves to
/// the new key's before the old one is dropped.
pub async fn key(
    client: &Client,
    apis: &[String],
    config: &phalanx_core::Config,
    key_file: &std::path::Path,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<Report> {
    let members = members(client, apis, config).await?;
    let rec = record(client, &members).await?.record;
    let mine = ClusterKey::load(key_file)?;
    let next_file = next_path(key_file);
    let (old, new) = match rec.keys.as_slice() {
        [] | [_] => {
            let old = rec.keys.first().cloned().unwrap_or_else(|| mine.id());
            // Created exclusively: two `key rotate` at once in one folder share one new key.
            let new = match ClusterKey::generate(&next_file) {
                Ok(k) => k,
                Err(phalanx_node::key::KeyError::Exists { .. }) => match ClusterKey::load(&next_file) {
                    Ok(k) if k.id() != old => k,
                    Ok(_) => {
                        // A finished rotation's file, left behind: a new one.
                        std::fs::remove_file(&next_file)?;
                        ClusterKey::generate(&next_file)?
                    }
                    Err(_) => bail!(
                        "{} is there but unreadable (another `key rotate` writing it?): run the command again in a moment; if none runs, remove it",
                        next_file.display()
                    ),
                },
                Err(e) => return Err(e.into()),
            };
            (old, new)
        }
        [old, new_id] => {
            let new = ClusterKey::load(&next_file)
                .ok()
                .filter(|k| &k.id() == new_id)
                .ok_or_else(|| anyhow!("a key rotation to {new_id} is under way and its key is not on this machine ({}): run the command where it began", next_file.display()))?;
            (old.clone(), new)
        }
        other => bail!(
            "the cluster accepts {} heartbeat keys: expected one (or two, mid-rotation)",
            other.len()
        ),
    };
    let new_id = new.id();
    if mine.id() != old && mine.id() != new_id {
        bail!(
            "the key file {} is not the cluster's (key {} here, {old} in the cluster)",
            key_file.display(),
            mine.id()
        );
    }
    let mut steps = Vec::new();

    // Every member gets the new key first: it accepts it once the record says.
    for (name, api) in &members {
        client
            .put::<_, TrustView>(api, "/v1/trust/key-next", &NextKey { key: new.to_hex() })
            .await
            .with_context(|| format!("giving {name} the new key"))?;
    }
    bar.set_message("1/3 accept the old and the new key");
    let both = Trust {
        keys: vec![old.clone(), new_id.clone()],
        send_key: 0,
        ..rec.clone()
    };
    if rec.keys.len() < 2 {
        commit(client, &members, &rec, &both).await?;
    }
    let ms = wait_all(client, &members, "1/3 accept both", timeout, bar, |v| {
        v.keys_accepted.contains(&old) && v.keys_accepted.contains(&new_id)
    })
    .await?;
    steps.push(("1/3 accept the old and the new key".into(), ms));

    bar.set_message("2/3 sign with the new key");
    let rec = record(client, &members).await?.record;
    let sending = Trust {
        send_key: 1,
        ..both.clone()
    };
    commit(client, &members, &rec, &sending).await?;
    let ms = wait_all(client, &members, "2/3 sign with the new key", timeout, bar, |v| {
        v.key_sending == new_id
    })
    .await?;
    steps.push(("2/3 every member signs with the new key".into(), ms));

    let client = if client.token() == mine.api_token() {
        client.clone().with_token(new.api_token())
    } else {
        client.clone()
    };
    bar.set_message("3/3 drop the old key");
    let rec = record(&client, &members).await?.record;
    let done = Trust {
        keys: vec![new_id.clone()],
        send_key: 0,
        ..sending.clone()
    };
    commit(&client, &members, &rec, &done).await?;
    let ms = wait_all(&client, &members, "3/3 drop the old key", timeout, bar, |v| {
        v.keys_accepted == [new_id.clone()]
    })
    .await?;
    steps.push(("3/3 drop the old key".into(), ms));
    let paths = Paths::beside(key_file);
    rotation::settle_files(&paths, &done)?;
    Ok(Report {
        what: "key",
        old,
        new: new_id,
        members: members.keys().cloned().collect(),
        steps,
    })
}

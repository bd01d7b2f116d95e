//! `phalanx backup FILE` and `phalanx restore FILE --new-cluster | --apply-state`: the cluster's
//! committed config, its membership and the operator's part of the replicated state in one
//! versioned JSON file, and a new cluster bootstrapped from it (disaster recovery).
//!
//! The backup is read from the leader's replicated state (`GET /v1/state`), so config and
//! membership come from one consistent read. The file is one JSON object: `format` (1),
//! `phalanx` (the version that wrote it), `cluster`, `created`, the committed `config` (text,
//! version, author), `members`, `maintenance`, the `operator` moves and bans, the whole
//! replicated state for the record (`state`, without the config texts: what ran where, fence
//! records, the plan; never restored), and `sha256`: the SHA-256 of the object without that
//! key, as compact JSON with sorted keys. The cluster key is not in the replicated state, so it is never in a backup.
//!
//! Restoring is two steps, because a new cluster is bootstrapped from a local config file:
//! `--new-cluster` writes the backup's config text as the new cluster's config file (and a new
//! key beside it unless one is there); its daemons start from that file and the first leader
//! commits it as version 1, as for any new cluster. Once it runs, `--apply-state` brings back
//! what an operator made: nodes added with `node add`, standby flags, node attributes,
//! maintenance (cluster and node) and the moves and bans that have not expired. Runtime state
//! (liveness, what runs where, fail counts, fence records, the plan) is the new cluster's own.

use crate::client::{key_path, Client};
use anyhow::{anyhow, bail, Context, Result};
use phalanx_core::state::{ConfigRecord, NodeRecord, OperatorOrigin};
use phalanx_core::ClusterState;
use phalanx_node::ClusterKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `phalanx restore`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`phalanx backup FILE`).
    pub file: PathBuf,
    /// Write the backup's config as the config file of a new cluster (--config, or DIR/cluster.toml
    /// with --dir) and a new key beside it; its daemons then bootstrap from it.
    #[arg(long, required_unless_present = "apply_state", conflicts_with = "apply_state")]
    pub new_cluster: bool,
    /// On the new cluster, once it runs: bring back added nodes, standby, attributes,
    /// maintenance, and the moves and bans not expired.
    #[arg(long)]
    pub apply_state: bool,
    /// With --new-cluster: write DIR/cluster.toml (and the key in DIR) instead of --config
    /// (`phalanx playground up --dir DIR` starts it on loopback).
    #[arg(long, requires = "new_cluster")]
    pub dir: Option<PathBuf>,
}

/// The format this version writes and reads.
pub const FORMAT: u64 = 1;

/// A member as the backup records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub links: Vec<String>,
    pub api: String,
    pub standby: bool,
    pub maintenance: bool,
    /// The operator's node attributes (internal ones, named `#...`, are left out).
    pub attrs: BTreeMap<String, String>,
}

/// A kept config version, without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub author: String,
    pub time_ms: u64,
    pub sha256: String,
}

/// An operator move (`prefer`) or ban, with who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorItem {
    pub rsc: String,
    pub node: String,
    pub prefer: bool,
    pub expires_ms: Option<u64>,
    pub by: Option<String>,
    pub at_ms: Option<u64>,
}

/// The backup file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub format: u64,
    pub phalanx: String,
    pub cluster: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub created_unix_ms: u64,
    /// The leader it was read from.
    pub taken_from: String,
    /// The committed config: its text, version, digest, author and time.
    pub config: ConfigRecord,
    /// Every kept version (without text), for the record.
    pub config_history: Vec<VersionInfo>,
    pub members: BTreeMap<String, Member>,
    /// Cluster-wide maintenance.
    pub maintenance: bool,
    pub operator: Vec<OperatorItem>,
    /// The replicated state when the backup was taken, without the config texts, for the
    /// record (liveness, what ran where, fail counts, fence records, the plan): never restored.
    pub state: Value,
    pub sha256: String,
}

/// The SHA-256 of a backup object without its `sha256` key, as compact JSON (serde_json's maps
/// are sorted: the same object always gives the same text).
fn checksum(v: &Value) -> Result<String> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("sha256");
    }
    Ok(phalanx_node::config_watch::sha256(&serde_json::to_string(&v)?))
}

/// Build a backup from the replicated state read on `leader`.
pub fn build(state: &ClusterState, leader: &str, now_ms: u64) -> Result<Backup> {
    let mut config = state
        .current_config()
        .cloned()
        .ok_or_else(|| anyhow!("the cluster has no committed config yet: nothing to back up"))?;
    // No secret leaves the cluster in a backup: inline ones as "***" (the digest is then the
    // redacted text's; `restore --new-cluster` says what to fill in).
    let redacted = phalanx_core::config::secrets::redact(&config.text);
    if redacted != config.text {
        config.sha256 = phalanx_node::config_watch::sha256(&redacted);
        config.text = redacted;
    }
    let cluster = phalanx_core::config::parse(&config.text)
        .map(|c| c.cluster.name)
        .map_err(|e| anyhow!("the committed config does not parse here: {}", e.render("config")))?;
    let members = state
        .nodes
        .iter()
        .map(|(name, n): (&String, &NodeRecord)| {
            let attrs = n
                .attrs
                .iter()
                .filter(|(k, _)| !k.starts_with('#'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (
                name.clone(),
                Member {
                    id: n.id,
                    links: n.links.clone(),
                    api: n.api.clone(),
                    standby: n.standby,
                    maintenance: n.maintenance,
                    attrs,
                },
            )
        })
        .collect();
    let origin = |rsc: &str, node: &str| -> Option<&OperatorOrigin> {
        state.operator_origin.iter().find(|o| o.rsc == rsc && o.node == node)
    };
    let operator = state
        .operator
        .iter()
        .map(|o| OperatorItem {
            rsc: o.rsc.clone(),
            node: o.node.clone(),
            prefer: o.prefer,
            expires_ms: o.expires_ms,
            by: origin(&o.rsc, &o.node).map(|x| x.by.clone()),
            at_ms: origin(&o.rsc, &o.node).map(|x| x.at_ms),
        })
        .collect();
    // The rest of the state, for the record: without the config texts (the current one is
    // above; older ones may hold what an operator since removed).
    let mut rest = serde_json::to_value(state)?;
    if let Some(o) = rest.as_object_mut() {
        o.remove("configs");
        o.remove("tokens");
    }
    let created = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(now_ms)).to_string();
    let mut b = Backup {
        format: FORMAT,
        phalanx: env!("CARGO_PKG_VERSION").to_string(),
        cluster,
        created,
        created_unix_ms: now_ms,
        taken_from: leader.to_string(),
        config_history: state
            .configs
            .iter()
            .map(|c| VersionInfo {
                version: c.version,
                author: c.author.clone(),
                time_ms: c.time_ms,
                sha256: c.sha256.clone(),
            })
            .collect(),
        config,
        members,
        maintenance: state.maintenance,
        operator,
        state: rest,
        sha256: String::new(),
    };
    b.sha256 = checksum(&serde_json::to_value(&b)?)?;
    Ok(b)
}

/// Read and check a backup file: a format this version knows, an intact checksum, the fields
/// it needs. Any problem is an error that says which.
pub fn read(path: &Path) -> Result<Backup> {
    let name = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{name} is not a phalanx backup: it is not JSON ({e})"))?;
    let format = match v.get("format") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| anyhow!("{name}: unknown backup format {n}"))?,
        Some(other) => bail!("{name}: unknown backup format {other}"),
        None => bail!("{name} is not a phalanx backup (no \"format\")"),
    };
    if format > FORMAT {
        bail!(
            "{name} is backup format {format}, newer than this phalanx ({}) reads (format {FORMAT}): it was written by phalanx {}; restore it with that version or a newer one",
            env!("CARGO_PKG_VERSION"),
            v.get("phalanx").and_then(Value::as_str).unwrap_or("(unknown)")
        );
    }
    if format != FORMAT {
        bail!("{name}: unknown backup format {format} (this phalanx reads format {FORMAT})");
    }
    let Some(stated) = v.get("sha256").and_then(Value::as_str) else {
        bail!("{name} has no sha256: it cannot be checked, so it is not restored");
    };
    let actual = checksum(&v)?;
    if actual != stated {
        bail!("{name} is corrupted: its content's sha256 is {actual}, the file says {stated}");
    }
    let b: Backup = serde_json::from_value(v).map_err(|e| anyhow!("{name}: malformed backup ({e})"))?;
    if phalanx_node::config_watch::sha256(&b.config.text) != b.config.sha256 {
        bail!("{name}: the config text does not match its recorded sha256");
    }
    Ok(b)
}

/// Write `b` to `path` (mode 0600: the config may name fence credentials), through a temporary
/// file renamed over it, so a crash never leaves half a backup under that name.
fn write(path: &Path, b: &Backup) -> Result<()> {
    crate::client::write_private(path, format!("{}\n", serde_json::to_string_pretty(b)?).as_bytes())
}

/// `phalanx backup FILE`: read the state on the leader, write the file. (JSON, human, code)
pub async fn backup(client: &Client, apis: &[String], file: &Path) -> Result<(Value, String, i32)> {
    let (_, st) = client.first_answering(apis).await?;
    let leader = st
        .leader
        .clone()
        .ok_or_else(|| anyhow!("the cluster has no leader now: a backup is read on the leader (its committed state); try again once it has one"))?;
    let api = st
        .nodes
        .iter()
        .find(|n| n.name == leader)
        .map(|n| n.api.clone())
        .ok_or_else(|| anyhow!("the leader {leader} is not among the members"))?;
    let state: ClusterState = client
        .get(&api, "/v1/state")
        .await
        .with_context(|| format!("reading the state on the leader {leader} ({api})"))?;
    let b = build(&state, &leader, phalanx_node::mesh::unix_ms())?;
    write(file, &b)?;
    let live = b
        .operator
        .iter()
        .filter(|o| o.expires_ms.is_none_or(|e| e > b.created_unix_ms))
        .count();
    let v = json!({
        "file": file, "format": b.format, "phalanx": b.phalanx, "cluster": b.cluster,
        "created": b.created, "config_version": b.config.version, "members": b.members.len(),
        "operator_constraints": b.operator.len(), "sha256": b.sha256,
    });
    let human = format!(
        "Wrote {} (format {}, sha256 {}): cluster {}, config version {} by {}, {} members ({}), {} operator move(s)/ban(s) ({} not expired), read on the leader {leader}.",
        file.display(),
        b.format,
        &b.sha256[..16],
        b.cluster,
        b.config.version,
        b.config.author,
        b.members.len(),
        b.members.keys().cloned().collect::<Vec<_>>().join(", "),
        b.operator.len(),
        live
    );
    Ok((v, human, 0))
}

/// `phalanx restore FILE --new-cluster`: write the backup's config as the config file of a new
/// cluster at `config_path` (never over an existing file), and a new key beside it unless its
/// `key_file` is there already. (JSON, human, code)
pub fn new_cluster(file: &Path, config_path: &Path, playground: Option<&Path>) -> Result<(Value, String, i32)> {
    let b = read(file)?;
    let config = phalanx_core::config::parse(&b.config.text).map_err(|e| {
        anyhow!(
            "the backup's config does not parse with this phalanx: {}",
            e.render("config")
        )
    })?;
    if config_path.exists() {
        bail!(
            "{} exists: restore writes the config of a new cluster and never overwrites one (move it away, or give another --config/--dir)",
            config_path.display()
        );
    }
    if let Some(d) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let key = key_path(config_path, &config);
    let key_existed = key.exists();
    if key_existed {
        ClusterKey::load(&key).with_context(|| format!("the key file {} is there but unusable", key.display()))?;
    }
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(config_path)
            .with_context(|| format!("writing {}", config_path.display()))?;
        f.write_all(b.config.text.as_bytes())?;
        f.sync_all()?;
    }
    if !key_existed {
        ClusterKey::generate(&key)?;
    }
    crate::client::ensure_ca(&key, &b.cluster)?;
    let redacted = b.config.text.matches(phalanx_core::config::secrets::REDACTED).count();
    let added: Vec<&String> = b.members.keys().filter(|n| config.node(n).is_none()).collect();
    let cfg_arg = config_path.display();
    let mut human = format!(
        "Wrote {cfg_arg}: the config of cluster {} as committed in version {} (by {}), from a backup of {}.\n{} {}.\n\nNext, on each node ({}):\n  1. copy {cfg_arg} and {} there (the same key on every node);\n  2. start it with an empty data dir: phalanx daemon --config {cfg_arg} --node NAME\n     (the first leader commits this config as version 1 of the new cluster);\n  3. then, once: phalanx --config {cfg_arg} restore {} --apply-state\n     (nodes added with `node add`, standby, attributes, maintenance, moves and bans).\n",
        b.cluster,
        b.config.version,
        b.config.author,
        b.created,
        if key_existed { "Kept the existing key" } else { "Wrote a new cluster key" },
        key.display(),
        config.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
        key.display(),
        file.display()
    );
    if let Some(d) = playground {
        human += &format!(
            "On this machine's loopback instead (a playground): phalanx playground up --dir {}, then step 3.\n",
            d.display()
        );
    }
    if !added.is_empty() {
        human += &format!(
            "Nodes not in the config file, added by --apply-state: {} (start them after it).\n",
            added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if redacted > 0 {
        human += &format!(
            "The backup holds no secret: {redacted} value(s) of {cfg_arg} are \"***\" (inline passwords and tokens): \
             write them in before step 2, or move them to secret_files.\n"
        );
    }
    let v = json!({
        "config": config_path, "key_file": key, "key": if key_existed { "existing" } else { "generated" },
        "cluster": b.cluster, "config_version": b.config.version, "config_sha256": b.config.sha256,
        "nodes": config.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        "added_by_apply_state": added,
        "redacted_secrets": redacted,
    });
    Ok((v, human, 0))
}

/// One step of `--apply-state`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Wait (with a spinner) until the cluster has a leader with quorum and a committed config.
async fn wait_ready(client: &Client, apis: &[String], json: bool) -> Result<(String, ClusterState)> {
    let pb = crate::demo::spinner(json);
    pb.set_message("waiting for the new cluster: a leader with quorum and its first config version");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = anyhow!("no answer yet");
    loop {
        match client.first_answering(apis).await {
            Ok((api, st)) if st.quorum && st.leader.is_some() && st.running_config_version > 0 => {
                match client.get::<ClusterState>(&api, "/v1/state").await {
                    Ok(state) => {
                        pb.finish_and_clear();
                        return Ok((api, state));
                    }
                    Err(e) => last = e,
                }
            }
            Ok((_, st)) => {
                last = anyhow!(
                    "leader {:?}, quorum {}, config version {}",
                    st.leader,
                    st.quorum,
                    st.running_config_version
                )
            }
            Err(e) => last = e,
        }
        if std::time::Instant::now() > deadline {
            pb.finish_and_clear();
            return Err(last.context("the cluster is not ready after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `phalanx restore FILE --apply-state`: on the cluster restored from `file` (it must run the
/// backup's config text), bring back the operator's state. Each step is reported; what is
/// there already is left alone. Exit code 1 if a step failed.
pub async fn apply_state(client: &Client, apis: &[String], file: &Path, json: bool) -> Result<(Value, String, i32)> {
    let b = read(file)?;
    let (api, state) = wait_ready(client, apis, json).await?;
    let current = state
        .current_config()
        .ok_or_else(|| anyhow!("the cluster has no committed config"))?;
    if current.sha256 != b.config.sha256 {
        bail!(
            "this cluster runs config version {} (sha256 {}), not the backup's (sha256 {}): --apply-state is for the cluster restored from this backup",
            current.version,
            &current.sha256[..16],
            &b.config.sha256[..16]
        );
    }
    let mut steps = Vec::new();
    let mut step = |what: String, r: Result<Value>| {
        steps.push(Step {
            what,
            ok: r.is_ok(),
            error: r.err().map(|e| format!("{e:#}")),
        });
    };
    // Members added after the bootstrap (the config file's nodes are there already), as the
    // old cluster had them: it accepted them, so the fence check is not made again (the config
    // is the same; a node added there with --no-fence-check would be refused here otherwise).
    for (name, m) in &b.members {
        if state.nodes.contains_key(name) {
            continue;
        }
        let r = client
            .post(
                &api,
                "/v1/nodes",
                &json!({ "name": name, "links": m.links, "api": m.api, "no_fence_check": true }),
            )
            .await;
        step(
            format!("add node {name} (links {}, api {})", m.links.join(" "), m.api),
            r,
        );
    }
    // Moves and bans that have not expired, with the lifetime they had left.
    let now = phalanx_node::mesh::unix_ms();
    for o in &b.operator {
        let there = state.operator.iter().any(|c| {
            c.rsc == o.rsc && c.node == o.node && c.prefer == o.prefer && c.expires_ms.is_none_or(|e| e > now)
        });
        let lifetime_ms = match o.expires_ms {
            _ if there => continue,
            Some(e) if e <= now => continue,
            Some(e) => Some(e - now),
            None => None,
        };
        let (op, kind) = if o.prefer { ("move", "move") } else { ("ban", "ban") };
        let r = client
            .post(
                &api,
                &format!("/v1/resources/{}/{op}", o.rsc),
                &json!({ "node": o.node, "lifetime_ms": lifetime_ms }),
            )
            .await;
        let until = match lifetime_ms {
            Some(l) => format!(
                " for {}",
                phalanx_core::config::format_duration(Duration::from_millis(l))
            ),
            None => String::new(),
        };
        step(
            format!(
                "{kind} {} {} {}{until} (made by {})",
                o.rsc,
                if o.prefer { "to" } else { "from" },
                o.node,
                o.by.as_deref().unwrap_or("?")
            ),
            r,
        );
    }
    for (name, m) in &b.members {
        let now_rec = state.nodes.get(name);
        if m.standby && !now_rec.is_some_and(|n| n.standby) {
            let r = client
                .post(&api, &format!("/v1/nodes/{name}/standby"), &json!({ "standby": true }))
                .await;
            step(format!("standby {name}"), r);
        }
        for (k, v) in &m.attrs {
            if now_rec.and_then(|n| n.attrs.get(k)) == Some(v) {
                continue;
            }
            let r = client
                .put(&api, &format!("/v1/nodes/{name}/attrs/{k}"), &json!({ "value": v }))
                .await;
            step(format!("attribute {name}: {k}={v}"), r);
        }
        if m.maintenance && !now_rec.is_some_and(|n| n.maintenance) {
            let r = client
                .post(&api, "/v1/maintenance", &json!({ "node": name, "on": true }))
                .await;
            step(format!("maintenance on {name}"), r);
        }
    }
    if b.maintenance && !state.maintenance {
        let r = client
            .post(&api, "/v1/maintenance", &json!({ "node": null, "on": true }))
            .await;
        step("maintenance on (cluster-wide)".to_string(), r);
    }
    let extra: Vec<&String> = state.nodes.keys().filter(|n| !b.members.contains_key(*n)).collect();
    let failed = steps.iter().filter(|s| !s.ok).count();
    let mut human = format!(
        "Applied the state of the backup of cluster {} ({}) to the cluster at {api}:\n",
        b.cluster, b.created
    );
    if steps.is_empty() {
        human += "  nothing to do: every added node, standby, attribute, maintenance, move and ban of the backup is there already.\n";
    }
    for s in &steps {
        match &s.error {
            None => human += &format!("  ok      {}\n", s.what),
            Some(e) => human += &format!("  FAILED  {}: {e}\n", s.what),
        }
    }
    if !extra.is_empty() {
        human += &format!(
            "Members the backup does not have (left as they are): {}\n",
            extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    human += "Not restored (runtime state, the new cluster's own): liveness, what runs where, fail counts, fence records, the plan, older config versions.";
    let v = json!({
        "cluster": b.cluster, "api": api, "steps": steps, "failed": failed,
        "members_not_in_backup": extra,
    });
    Ok((v, human, if failed == 0 { 0 } else { 1 }))
}

/// Where `restore --new-cluster` writes the config: `DIR/cluster.toml` with `--dir` (the
/// playground's name for it: `playground up --dir DIR` then starts that cluster), else the
/// `--config` path.
pub fn target_config(dir: Option<&Path>, config: &Path) -> PathBuf {
    match dir {
        Some(d) => d.join(crate::playground::CONFIG_FILE),
        None => config.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[cluster]\nname = \"shop\"\n\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7400\"]\napi = \"127.0.0.1:7480\"\n";

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.configs.push(ConfigRecord {
            version: 3,
            text: TEXT.into(),
            sha256: phalanx_node::config_watch::sha256(TEXT),
            author: "me@here".into(),
            time_ms: 5,
        });
        s.nodes.insert(
            "n1".into(),
            NodeRecord {
                id: 1,
                links: vec!["127.0.0.1:7400".into()],
                api: "127.0.0.1:7480".into(),
                standby: true,
                liveness: Default::default(),
                liveness_since_ms: 0,
                attrs: [
                    ("rack".to_string(), "a".to_string()),
                    ("#shutdown-lock".to_string(), "x".to_string()),
                ]
                .into(),
                maintenance: false,
                fence: Default::default(),
                online_since_plan: 0,
            },
        );
        s
    }

    fn written(b: &Backup) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.json");
        write(&p, b).unwrap();
        (dir, p)
    }

    #[test]
    fn a_backup_round_trips_and_leaves_internal_attributes_and_old_texts_out() {
        let b = build(&state(), "n1", 1_700_000_000_000).unwrap();
        assert_eq!(b.cluster, "shop");
        assert_eq!(b.config.version, 3);
        assert_eq!(b.members["n1"].attrs.len(), 1);
        assert!(b.state.get("configs").is_none());
        let (_d, p) = written(&b);
        assert_eq!(read(&p).unwrap(), b);
    }

    #[test]
    fn a_changed_byte_a_newer_format_and_an_unknown_one_are_refused() {
        let b = build(&state(), "n1", 1).unwrap();
        let (_d, p) = written(&b);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("127.0.0.1:7480", "127.0.0.1:7481")).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("corrupted"), "edited");
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["format"] = json!(2);
        std::fs::write(&p, v.to_string()).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("newer"));
        v["format"] = json!(0);
        std::fs::write(&p, v.to_string()).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("unknown backup format"));
        std::fs::write(&p, "{\"hello\": 1}").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not a phalanx backup"));
        std::fs::write(&p, &text[..text.len() / 2]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not JSON"));
    }
}

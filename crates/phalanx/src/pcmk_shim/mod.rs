//! Pacemaker's command-line tools, as much of them as OCF agents call (`crm_attribute`,
//! `crm_master`, `attrd_updater`, `crm_node`, `crm_resource --meta --get-parameter` and
//! `--ban`, `crm_mon -1` ([`crm_mon`]), `pacemakerd -$`), so that agents written for Pacemaker —
//! PAF's `pgsqlms` and Debian's `pgsql`, say — run unchanged. The daemon puts links named after them to its own binary in a folder first on
//! the agents' `PATH` and in `HA_SBIN_DIR` ([`install`]); started under one of those names the
//! binary runs [`dispatch`] instead of its CLI. Node attributes (every lifetime, private ones
//! too) are the cluster's replicated node attributes, read and written through the node's own
//! API (`GET /v1/status`, `PUT`/`DELETE /v1/nodes/{name}/attrs/{key}`), so a value written is
//! what every node reads once it is committed; meta parameters are the calling agent's own
//! (`OCF_RESKEY_CRM_meta_*`, which it inherits). Written by hand: these are Pacemaker's
//! interfaces, no crate provides them. Options follow Pacemaker 2.1's; output and exit codes
//! are what the agents parse (a missing attribute: exit 105, "No such device or address").

pub mod crm_mon;

use crate::client::{key_path, load_config, Client};
use anyhow::{anyhow, bail, Context, Result};
use phalanx_node::ClusterKey;
use std::path::Path;

/// The tools provided, by the name an agent calls.
pub const TOOLS: [&str; 7] = [
    "crm_attribute",
    "crm_mon",
    "crm_master",
    "attrd_updater",
    "crm_node",
    "crm_resource",
    "pacemakerd",
];

/// The environment the daemon gives agents for the shims: its config and API, and its name.
pub const CONFIG_ENV: &str = "PHALANX_SHIM_CONFIG";
pub const API_ENV: &str = "PHALANX_SHIM_API";
pub const NODE_ENV: &str = "PHALANX_SHIM_NODE";

/// Pacemaker's exit code for "no such attribute" (CRM_EX_NOSUCH).
const NOSUCH: i32 = 105;

/// The version agents compare against (Debian 12's Pacemaker).
const PACEMAKER_VERSION: &str = "2.1.5";

/// Put a link per tool to `exe` in `dir` (replacing stale ones): the folder agents get first
/// on their `PATH` and as `HA_SBIN_DIR`.
pub fn install(dir: &Path, exe: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for t in TOOLS {
        let link = dir.join(t);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// The tool this process was started as, if any.
pub fn invoked_as() -> Option<&'static str> {
    let arg0 = std::env::args_os().next()?;
    let name = Path::new(&arg0).file_name()?.to_str()?.to_string();
    TOOLS.iter().copied().find(|t| *t == name)
}

/// Run `tool` with this process's arguments: its exit code (output printed).
pub fn dispatch(tool: &str) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{tool}: {e}");
            return 1;
        }
    };
    match rt.block_on(run(tool, &args)) {
        Ok((code, out)) => {
            if !out.is_empty() {
                println!("{out}");
            }
            code
        }
        Err(e) => {
            eprintln!("{tool}: {e:#}");
            1
        }
    }
}

/// The parsed options of an attribute tool.
#[derive(Debug, Default, PartialEq)]
struct AttrArgs {
    node: Option<String>,
    name: Option<String>,
    value: Option<String>,
    query: bool,
    delete: bool,
    quiet: bool,
}

/// Parse Pacemaker-style options: `-N X`, `--node X`, `--node=X`; flags without values.
fn parse_attr_args(args: &[String]) -> Result<AttrArgs> {
    let mut a = AttrArgs::default();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{what} needs a value"))
        };
        match flag.as_str() {
            "-N" | "--node" => a.node = Some(value("--node")?),
            "-n" | "--name" | "--attr-name" => a.name = Some(value("--name")?),
            "-v" | "-U" | "--update" | "--value" => a.value = Some(value("--update")?),
            "-G" | "-Q" | "--query" | "--get-value" => a.query = true,
            "-D" | "--delete" => a.delete = true,
            "-q" | "--quiet" => a.quiet = true,
            // Lifetimes and scopes: every attribute is a replicated node attribute.
            "-l" | "--lifetime" | "-t" | "--type" | "-z" | "-d" | "--default" => {
                value(&flag)?;
            }
            "-p" | "--private" | "-A" | "--all" => {}
            other => bail!("unsupported option {other}"),
        }
    }
    Ok(a)
}

/// The node this runs for.
fn me() -> Result<String> {
    std::env::var(NODE_ENV)
        .or_else(|_| std::env::var("OCF_RESKEY_CRM_meta_on_node"))
        .map_err(|_| anyhow!("not run by a phalanx agent call ({NODE_ENV} is not set)"))
}

/// A client of the daemon that runs this agent, and its API first (then every node's).
fn client() -> Result<(Client, Vec<String>)> {
    let path = std::env::var_os(CONFIG_ENV).ok_or_else(|| anyhow!("{CONFIG_ENV} is not set"))?;
    let path = Path::new(&path);
    let config = load_config(path)?;
    let key = ClusterKey::load(&key_path(path, &config))?;
    let (token, _) = crate::token_cmd::resolve(path, &key);
    let tls = crate::client::operator_tls(&key_path(path, &config))?;
    let mut apis: Vec<String> = std::env::var(API_ENV).into_iter().collect();
    apis.extend(config.nodes.iter().map(|n| n.api.to_string()));
    // Writes are recorded as this agent's (the event history's `by`), not as an operator's.
    let who = format!(
        "agent {} ({} on {})",
        std::env::var("OCF_RESOURCE_TYPE").unwrap_or_else(|_| "?".into()),
        std::env::var("OCF_RESOURCE_INSTANCE").unwrap_or_else(|_| "?".into()),
        me().unwrap_or_else(|_| "?".into())
    );
    Ok((Client::new(&key, tls)?.with_token(token).with_caller(who), apis))
}

async fn run(tool: &str, args: &[String]) -> Result<(i32, String)> {
    match tool {
        "pacemakerd" => Ok((0, format!("Pacemaker {PACEMAKER_VERSION}\nWritten by phalanx (a shim)"))),
        "crm_node" => crm_node(args).await,
        "crm_resource" => crm_resource(args).await,
        "crm_mon" => crm_mon(args).await,
        "crm_master" => attribute(promotion_score(None, args)?, false).await,
        "crm_attribute" if args.iter().any(|a| a == "-p" || a.starts_with("--promotion")) => {
            // `crm_attribute -p [RSC]` (Pacemaker 2.1, what ocf_promotion_score calls for
            // feature sets from 3.10): crm_master's promotion score.
            let (rsc, rest) = split_promotion(args);
            attribute(promotion_score(rsc, &rest)?, false).await
        }
        "attrd_updater" => attribute(parse_attr_args(args)?, true).await,
        _ => attribute(parse_attr_args(args)?, false).await,
    }
}

/// `crm_attribute`'s arguments without `-p [RSC]`/`--promotion[=RSC]`, and RSC if given.
fn split_promotion(args: &[String]) -> (Option<String>, Vec<String>) {
    let mut rest = Vec::new();
    let mut rsc = None;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" | "--promotion" => {
                if it.peek().is_some_and(|v| !v.starts_with('-')) {
                    rsc = it.next().cloned();
                }
            }
            a if a.starts_with("--promotion=") => rsc = Some(a["--promotion=".len()..].to_string()),
            _ => rest.push(a.clone()),
        }
    }
    (rsc, rest)
}

/// The options of an attribute tool acting on the promotion score (`master-RSC`) of `rsc`, by
/// default the calling resource.
fn promotion_score(rsc: Option<String>, args: &[String]) -> Result<AttrArgs> {
    let rsc = match rsc {
        Some(r) => r,
        None => std::env::var("OCF_RESOURCE_INSTANCE").map_err(|_| anyhow!("OCF_RESOURCE_INSTANCE is not set"))?,
    };
    let mut a = parse_attr_args(args)?;
    a.name = Some(format!("master-{}", rsc.split(':').next().unwrap_or(&rsc)));
    Ok(a)
}

/// `crm_node -n` (this node's name), `-p`/`--partition` (the online members, space-separated),
/// `-l`/`--list` (`ID NAME STATE` per member), `-q` (1: this partition has quorum).
async fn crm_node(args: &[String]) -> Result<(i32, String)> {
    let a = args.first().map(String::as_str).unwrap_or("-n");
    if matches!(a, "-n" | "--name") {
        return Ok((0, me()?));
    }
    let (c, apis) = client()?;
    let (_, st) = c.first_answering(&apis).await?;
    match a {
        "-p" | "--partition" => {
            let online: Vec<&str> = st
                .nodes
                .iter()
                .filter(|n| n.state == "online" || n.state == "standby")
                .map(|n| n.name.as_str())
                .collect();
            Ok((0, online.join(" ")))
        }
        "-l" | "--list" => Ok((
            0,
            st.nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} {} {}",
                        n.id,
                        n.name,
                        if n.state == "offline" { "lost" } else { "member" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        "-q" | "--quorum" => Ok((0, if st.quorum { "1" } else { "0" }.into())),
        other => bail!("unsupported option {other}"),
    }
}

/// `crm_resource --resource R --meta --get-parameter P`: the calling instance's own meta
/// parameter (what it was called with). `crm_resource --ban --resource R --node N`: an operator
/// ban of R (its clone or group, if it is in one) from N, as Debian's `pgsql` agent asks for a
/// node whose data is newer than the one being promoted.
async fn crm_resource(args: &[String]) -> Result<(i32, String)> {
    let mut param = None;
    let mut meta = false;
    let mut ban = false;
    let mut rsc = None;
    let mut node = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-g" | "--get-parameter" => param = it.next().cloned(),
            "-m" | "--meta" => meta = true,
            "-r" | "--resource" => rsc = it.next().cloned(),
            "-B" | "--ban" => ban = true,
            "-N" | "--node" => node = it.next().cloned(),
            "-Q" | "--quiet" => {}
            other => bail!("unsupported option {other} (only --meta --get-parameter P, and --ban)"),
        }
    }
    if ban {
        let rsc = rsc.ok_or_else(|| anyhow!("--ban needs --resource"))?;
        let rsc = rsc.split(':').next().unwrap_or(&rsc).to_string();
        let node = match node {
            Some(n) => n,
            None => me()?,
        };
        let (c, apis) = client()?;
        let (api, st) = c.first_answering(&apis).await?;
        // Bans apply to what is placed: the clone or group the primitive is in.
        let target = st
            .resources
            .iter()
            .find(|r| r.id == rsc)
            .and_then(|r| r.parent.clone())
            .unwrap_or(rsc);
        let _: serde_json::Value = c
            .post_retrying(
                &api,
                &format!("/v1/resources/{target}/ban"),
                &serde_json::json!({ "node": node, "lifetime_ms": null }),
                crate::client::RETRY_WRITES,
            )
            .await?;
        return Ok((0, String::new()));
    }
    let (Some(p), true) = (param, meta) else {
        bail!("only --resource R --meta --get-parameter P and --ban are provided");
    };
    match std::env::var(format!("OCF_RESKEY_CRM_meta_{}", p.replace('-', "_"))) {
        Ok(v) => Ok((0, v)),
        Err(_) => {
            eprintln!("Error performing operation: No such device or address");
            Ok((NOSUCH, String::new()))
        }
    }
}

/// `crm_mon -1` (any invocation is one-shot): text, or XML with `--output-as=xml`,
/// `--output-as xml`, `--as-xml` or `-X`. Groups and clones come from the committed config
/// (the node's file until there is one).
async fn crm_mon(args: &[String]) -> Result<(i32, String)> {
    let mut xml = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--output-as=xml" | "--as-xml" | "-X" => xml = true,
            "--output-as=text" => xml = false,
            "--output-as" => xml = it.next().map(String::as_str) == Some("xml"),
            "-1"
            | "--one-shot"
            | "-r"
            | "--inactive"
            | "-A"
            | "--show-node-attributes"
            | "-f"
            | "--failcounts"
            | "-n"
            | "--group-by-node"
            | "-Q"
            | "--quiet" => {}
            other => bail!("unsupported option {other}"),
        }
    }
    let (c, apis) = client()?;
    let (api, st) = c.first_answering(&apis).await?;
    let committed: Option<String> = c
        .get::<phalanx_node::api::config::ConfigView>(&api, "/v1/config")
        .await
        .ok()
        .and_then(|v| v.text);
    let config = match committed.map(|t| phalanx_core::config::parse(&t)) {
        Some(Ok(c)) => c,
        _ => {
            let path = std::env::var_os(CONFIG_ENV).ok_or_else(|| anyhow!("{CONFIG_ENV} is not set"))?;
            load_config(Path::new(&path))?
        }
    };
    let mon = crm_mon::Mon::of(&st, &config.resources);
    Ok((0, if xml { mon.xml() } else { mon.text() }))
}

/// `crm_attribute`/`attrd_updater`: query, update or delete node attribute `name` of the node
/// given (default: this one). A query prints the value (`-q`), else Pacemaker's line
/// (`attrd_updater`: `name="N" host="H" value="V"`).
async fn attribute(a: AttrArgs, attrd: bool) -> Result<(i32, String)> {
    let name = a.name.clone().ok_or_else(|| anyhow!("give the attribute's --name"))?;
    let node = match &a.node {
        Some(n) => n.clone(),
        None => me()?,
    };
    if a.value.is_none() && !a.delete && !a.query && !attrd {
        bail!("give --query, --update VALUE or --delete");
    }
    let (c, apis) = client()?;
    // This node's own daemon (it runs the agent calling), which forwards writes to the leader.
    let api = apis.first().cloned().ok_or_else(|| anyhow!("no API to ask"))?;
    // Read from the leader: it has applied every write acknowledged so far (this agent's last
    // one too), so the value compared with is not a stale one (just after a change of leader it
    // may be; then a write is skipped that the agent's next monitor makes again).
    let (_, mut st) = c.first_answering(&apis).await?;
    let leader_api = st
        .leader
        .as_ref()
        .filter(|l| **l != st.node)
        .and_then(|l| st.nodes.iter().find(|n| &n.name == l))
        .map(|n| n.api.clone());
    if let Some(l) = leader_api {
        st = c.status(&l).await?;
    }
    let n = st
        .nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| anyhow!("no node named {node}"))?;
    let current = n.attrs.get(&name);
    let path = format!("/v1/nodes/{node}/attrs/{name}");
    // A write that changes nothing is not made (agents set their scores at every monitor, as
    // Pacemaker's attribute manager does not propagate an unchanged value): no Raft entry, no
    // event. Deleting an attribute that is not there is no error (Pacemaker's behaviour).
    if let Some(v) = &a.value {
        if current != Some(v) {
            let _: serde_json::Value = c.put(&api, &path, &serde_json::json!({ "value": v })).await?;
        }
        return Ok((0, String::new()));
    }
    if a.delete {
        if current.is_some() {
            let _: serde_json::Value = c.delete(&api, &path).await?;
        }
        return Ok((0, String::new()));
    }
    match current {
        Some(v) if attrd => Ok((0, format!("name=\"{name}\" host=\"{node}\" value=\"{v}\""))),
        Some(v) if a.quiet => Ok((0, v.clone())),
        Some(v) => Ok((0, format!("scope=nodes  name={name} value={v}"))),
        None if attrd => Ok((0, format!("name=\"{name}\" host=\"{node}\" value=\"\""))),
        None => {
            eprintln!("Error performing operation: No such device or address");
            Ok((NOSUCH, String::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_options_agents_pass_are_read() {
        let a = parse_attr_args(&args("--node n2 --quiet --get-value")).unwrap();
        assert_eq!(a.node.as_deref(), Some("n2"));
        assert!(a.quiet && a.query && a.value.is_none());
        let a = parse_attr_args(&args("--private --lifetime reboot --name lsn-pg --update 0/3000")).unwrap();
        assert_eq!(
            (a.name.as_deref(), a.value.as_deref()),
            (Some("lsn-pg"), Some("0/3000"))
        );
        let a = parse_attr_args(&args("-N n1 -n master-pg -l forever -v 1001")).unwrap();
        assert_eq!((a.node.as_deref(), a.value.as_deref()), (Some("n1"), Some("1001")));
        let a = parse_attr_args(&args("--node=n3 -D -n x")).unwrap();
        assert!(a.delete && a.node.as_deref() == Some("n3"));
        assert!(parse_attr_args(&args("--frobnicate")).is_err());
        assert!(parse_attr_args(&args("--node")).is_err(), "a value is missing");
    }

    /// `crm_attribute -p -v -INFINITY` (ocf_promotion_score) and `-p RSC`: the promotion
    /// score of the calling resource, or of RSC.
    #[test]
    fn crm_attribute_promotion_is_the_promotion_score() {
        let (rsc, rest) = split_promotion(&args("-p -v -INFINITY"));
        let a = promotion_score(Some(rsc.unwrap_or_else(|| "pgsql:1".into())), &rest).unwrap();
        assert_eq!(
            (a.name.as_deref(), a.value.as_deref()),
            (Some("master-pgsql"), Some("-INFINITY"))
        );
        let (rsc, rest) = split_promotion(&args("-N n2 --promotion=db -G -q"));
        assert_eq!(rsc.as_deref(), Some("db"));
        let a = promotion_score(rsc, &rest).unwrap();
        assert!(a.query && a.quiet && a.name.as_deref() == Some("master-db") && a.node.as_deref() == Some("n2"));
        assert_eq!(split_promotion(&args("-p pg -D")).0.as_deref(), Some("pg"));
    }
}

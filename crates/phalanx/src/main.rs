//! `phalanx`: the one binary. Parses the command line (clap) and runs the command; every command
//! prints human output, or JSON with `--json`.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use phalanx::client::{key_path, load_config, Client, RETRY_WRITES};
use phalanx::{daemon, demo, render, simulate};
use phalanx_core::config::{check, parse_duration, Severity};
use phalanx_core::lb::AdminState;
use phalanx_node::api::operator::WeightReq;
use phalanx_node::{logging, ClusterKey};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// mimalloc instead of glibc's malloc: the scheduler allocates many small strings (reasons,
/// explanations), and glibc's free-list consolidation was a third of its time at 10,000
/// primitives (`tests/bench/scheduler`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "phalanx", version, about = "A high-availability cluster manager for Linux")]
struct Cli {
    /// The cluster's config file.
    #[arg(
        long,
        global = true,
        env = "PHALANX_CONFIG",
        default_value = "/etc/phalanx/phalanx.toml"
    )]
    config: PathBuf,
    /// Talk to this node's API (IP:PORT; several, comma-separated, are tried in order) instead
    /// of the nodes listed in the config.
    #[arg(long, global = true, env = "PHALANX_API")]
    api: Option<String>,
    /// Print JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// How to log on stderr: text, or json (one object per line). Default: text, or straight to
    /// the journal with structured fields when systemd connected stderr to it.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum CertCmd {
    /// Issue a node's certificate (90 days) with the cluster CA, into `certs/` beside the key:
    /// for a node whose machine does not hold the CA key (nodes that do issue their own).
    /// Its addresses default to the node's links, API and metrics address in the config.
    Issue {
        /// The node's name (`witness` for the witness).
        node: String,
        /// An address the certificate names, instead of the config's (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Replace a certificate of the node that has not expired.
        #[arg(long)]
        force: bool,
    },
    /// The cluster CA and every certificate in `certs/`: names, addresses, expiry, renewal.
    List,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Replace the cluster CA while the cluster runs, in three steps each waited for on every
    /// member: trust the old and the new → issue every node's certificate from the new → drop
    /// the old. Run it where `ca.key` is; run it again to resume an interrupted rotation.
    Rotate {
        /// How long to wait for every member at each step.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Replace the heartbeat key (the cluster key) while the cluster runs, in three steps each
    /// waited for on every member: accept the old and the new → sign with the new → drop the
    /// old. The new key is pushed to every member over TLS; run it again to resume.
    Rotate {
        /// How long to wait for every member at each step.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// A new API token (its secret printed once; the cluster keeps its hash): read sees,
    /// operate also acts (standby, move, ban, drain, drills), admin also changes the cluster
    /// (config, nodes, tokens).
    Create {
        name: String,
        #[arg(long, value_parser = ["read", "operate", "admin"])]
        role: String,
        /// It expires after this long (default: never).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Keep it for this config (0600): this CLI presents it from now on.
        #[arg(long)]
        save: bool,
        /// Replace the token saved for this config.
        #[arg(long)]
        force: bool,
        /// When every admin token is lost: make an admin token with a proof of the cluster key
        /// (this machine's key file) instead of a token; recorded in the event history. It is
        /// saved for this config.
        #[arg(long)]
        break_glass: bool,
    },
    /// Every token: name, role, who made it, when it expires (never a secret).
    List,
    /// Revoke a token: refused on every node once applied there.
    Revoke { name: String },
    /// Keep a token you were given (read from stdin, or PHALANX_TOKEN) for this config.
    Save {
        /// Replace the token saved for this config.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PgCmd {
    /// Every pgsql resource: its primary, synchronous standby, and per node the role,
    /// timeline, LSN and lag behind the primary.
    Status,
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// The leader, items, bytes, evictions, hit ratio, ops/s, commit latency, and each node's
    /// lag behind the leader's log.
    Status,
}

#[derive(Subcommand)]
enum BalancerCmd {
    /// Each balancer's backends: address, state, operator state, effective weight, connections
    /// in flight and in all, errors, the cluster's check verdict and which node checks it.
    Status { id: Option<String> },
    /// Take no new clients on a backend; open and sticky ones finish (held in the cluster
    /// state until `ready`: it survives leader changes, config applies and restarts).
    Drain(BackendArgs),
    /// Put a drained or maintained backend back in rotation.
    Ready(BackendArgs),
    /// Take a backend out of service: no traffic at all.
    Maint(BackendArgs),
    /// Set a backend's weight (0..=256), or `config` for the config's again.
    Weight {
        backend: String,
        /// A number 0..=256, or `config`.
        weight: String,
        /// The balancer (needed only when several have a backend of this name).
        #[arg(long)]
        balancer: Option<String>,
    },
}

#[derive(clap::Args)]
struct BackendArgs {
    /// A static server's name, or RESOURCE@NODE for a discovered instance.
    backend: String,
    /// The balancer (needed only when several have a backend of this name).
    #[arg(long)]
    balancer: Option<String>,
    /// Then wait until the balancer holds no connection to it (`ready`: until it is back in
    /// rotation).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "5m", value_parser = duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a local cluster on loopback, kill its leader and show the failover (no root needed).
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Heartbeat interval of the demo cluster.
        #[arg(long, default_value = "100ms", value_parser = duration)]
        heartbeat: Duration,
        /// Keep the scratch folder (config, key, logs, data) afterwards.
        #[arg(long)]
        keep: bool,
        /// Moved: the lab demo is `phalanx-lab demo` (the test rig), not part of the product.
        #[arg(long, hide = true)]
        lab: bool,
    },
    /// Write a new cluster key (0600) and the cluster CA (`ca.crt`, `ca.key` 0600) beside the
    /// config; never overwrites either (on an existing cluster it adds the missing CA).
    Init {
        /// Where to write it (default: the key_file of --config, relative to the config's
        /// folder; phalanx.key there when the config does not exist yet or names none).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Run a node.
    Daemon {
        /// This node's name (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// Where the node keeps its Raft log and state (default /var/lib/phalanx/CLUSTER/NODE).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the cluster's witness: a tie-breaking vote for two-node clusters (`[witness] address`
    /// in the config). It stores the Raft log and votes, runs no resources, and backs exactly
    /// one side of a split.
    Witness {
        /// Where to listen (TCP for Raft, UDP for heartbeats); default: `[witness] address`.
        #[arg(long)]
        listen: Option<String>,
        /// Where the witness keeps its Raft log (default /var/lib/phalanx/CLUSTER/witness).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Show the cluster like crm_mon: quorum, maintenance, nodes, fence devices, resources, fail
    /// counts, operator constraints, failed actions, fence history.
    Status {
        /// Redraw in place every --interval, like crm_mon (Ctrl-C to stop); with --json, one
        /// report per line.
        #[arg(long)]
        watch: bool,
        /// How often --watch redraws.
        #[arg(long, default_value = "2s", value_parser = duration, requires = "watch")]
        interval: Duration,
        /// Nagios-style check: one line `PHALANX OK|WARNING|CRITICAL - ...`, exit 0 healthy,
        /// 1 degraded (a node offline or lost and not fenced, a resource failed or stopped, a
        /// fence device unreachable), 2 critical (no quorum, cluster unreachable), 3 unknown
        /// (the check cannot run: no config or key here).
        #[arg(long, conflicts_with = "watch")]
        check: bool,
    },
    /// The cluster's event history (the same on every node), oldest first.
    Events {
        /// From this sequence number, time (2026-12-01T10:00:00Z) or duration ago (10m).
        #[arg(long)]
        since: Option<String>,
        /// Only events of this resource (or clone instance of it).
        #[arg(long)]
        resource: Option<String>,
        /// Only events about (or reported by) this node.
        #[arg(long)]
        node: Option<String>,
        /// Only these kinds, comma-separated (node_lost,fence_failed…).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many, the newest.
        #[arg(long)]
        limit: Option<usize>,
        /// Keep streaming new events (from another node when this one goes away).
        #[arg(long)]
        follow: bool,
    },
    /// Per resource, from the event history: time up and down (unplanned, planned), failures,
    /// MTBF, MTTR, availability and its nines, error budget and burn-rate alerts.
    Availability {
        /// From this time (2026-12-01T10:00:00Z) or duration ago (7d); default: the whole
        /// history the cluster holds.
        #[arg(long)]
        since: Option<String>,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// The objective, in percent.
        #[arg(long, default_value_t = 99.95)]
        slo: f64,
        /// Predict the availability from a mean time between failures (`--mtbf`) and the MTTR
        /// measured in the window.
        #[arg(long, requires = "mtbf")]
        predict: bool,
        /// With --predict: the mean time between failures to assume (2000h).
        #[arg(long, requires = "predict")]
        mtbf: Option<String>,
    },
    /// How reliable the heartbeat links are: per node, peer and link, loss, round trip, jitter
    /// and reorders over S seconds, from the heartbeats themselves; a verdict against the loss
    /// threshold and how often the timing would declare a link or node dead at that loss.
    /// Exits 1 if a link fails.
    /// The web dashboard's address on a node (every node serves it at /ui), with the API token
    /// in the link's #fragment (which a browser never sends): open it, or paste the token.
    Ui {
        /// The node whose dashboard to open (default: the first in the config).
        #[arg(long)]
        node: Option<String>,
    },
    LinkCheck {
        /// Only this node's view of its links (default: every online node's).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The highest loss a link may show and pass, in percent (0.1: the seeds' 99.9 %).
        #[arg(long, default_value_t = phalanx_core::linkcheck::DEFAULT_MAX_LOSS_PCT)]
        max_loss: f64,
    },
    /// A failover drill against the live cluster, measured from a client's side (RTO, failed
    /// probes, and RPO with a session writer when the session store runs), recorded in the
    /// event history, each run against its RTO bound.
    Drill {
        /// switchover, kill-node, kill-service, pause-node, cut-link, fence-fail,
        /// lb-backend-down.
        scenario: String,
        /// The resource (lb-backend-down: the balancer).
        #[arg(long)]
        resource: String,
        /// The node to act on: the move's target (switchover), the node to kill, pause or cut
        /// off (default: where the resource runs); lb-backend-down: the node whose backend
        /// instance goes down (default: one on another node than the balancer's).
        #[arg(long)]
        node: Option<String>,
        /// What a client reaches: http://…, https://…, tcp://IP:PORT or memcached://IP:PORT;
        /// several, comma-separated, for a client that tries each.
        #[arg(long)]
        probe: String,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// How long a run may take to settle before it is aborted (its move cleared).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
        /// Draw every run's probes over time, with detection, fence and start marked, as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// fence-fail: how many fence operations fail on each surviving node before the devices
        /// heal.
        #[arg(long, default_value_t = 1)]
        fence_failures: u32,
    },
    /// Change cluster membership and node flags.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Move, ban, clear or clean up a resource.
    Resource {
        #[command(subcommand)]
        cmd: ResourceCmd,
    },
    /// Stop managing resources (they keep running), cluster-wide or on one node.
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Why a resource runs where it runs: every node's score and what made it.
    Why { resource: String },
    /// The load balancers: where each runs, its backends and their health.
    Balancer {
        #[command(subcommand)]
        cmd: BalancerCmd,
    },
    /// The cluster CA's certificates: `cert issue NODE`, `cert list`.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// The cluster CA: `ca rotate` replaces it while the cluster runs.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// The heartbeat key: `key rotate` replaces it while the cluster runs.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// API tokens for people and scripts, with roles (read, operate, admin).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// PostgreSQL run by the built-in pgsql agent: `phalanx pg status`.
    Pg {
        #[command(subcommand)]
        cmd: PgCmd,
    },
    /// The replicated session store (memcached protocol): `phalanx sessions status`.
    Sessions {
        #[command(subcommand)]
        cmd: SessionsCmd,
    },
    /// Administratively disable or enable one heartbeat link of a node.
    Link {
        #[command(subcommand)]
        cmd: LinkCmd,
    },
    /// Show the plan the scheduler would make for a config and a state, with what-ifs.
    Simulate {
        /// The observed state (TOML like a scenario's [input], or JSON); default: nothing runs.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Pretend this node is lost (repeatable).
        #[arg(long = "node-down")]
        node_down: Vec<String>,
        /// Pretend RESOURCE failed its monitor on NODE (RESOURCE@NODE; repeatable).
        #[arg(long)]
        fail: Vec<String>,
        /// Also print every node's score for every resource, and why.
        #[arg(long)]
        explain: bool,
        /// Take the state from the running cluster (`GET /v1/state`) and run the leader's own
        /// controller on it, what-ifs applied (like `crm_simulate -L`).
        #[arg(long, conflicts_with = "state")]
        live: bool,
    },
    /// An HTTP power switch for test machines (the built-in `http-switch` fence device's API):
    /// cutting an outlet freezes and kills everything that machine runs.
    PowerSwitch {
        #[arg(long)]
        listen: String,
        /// NAME=pid:FILE (that process and its descendants) or NAME=netns:NS (every process
        /// in that network namespace). Repeatable.
        #[arg(long, required = true)]
        outlet: Vec<String>,
        /// NAME=COMMAND run (in the namespace, for netns outlets) when the outlet is turned on.
        #[arg(long)]
        boot: Vec<String>,
        /// Append every action to this file as `UNIX_MS PLUG ACTION`.
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// A local cluster that keeps running (real daemons on loopback, a sample config), to try
    /// every command on: `up`, `status`, `down`.
    Playground {
        #[command(subcommand)]
        cmd: phalanx::playground::PlaygroundCmd,
    },
    /// Write the committed config, the membership and the operator's state (no secrets) to
    /// FILE: one versioned, checksummed JSON file.
    Backup { file: PathBuf },
    /// Bootstrap a new cluster from a backup (--new-cluster), then bring back its operator
    /// state once it runs (--apply-state).
    Restore(phalanx::backup::RestoreArgs),
    /// A playground node's machine: runs COMMAND (its daemon) and adopts what the daemon
    /// started once the daemon is gone, so that the power switch's outlet takes it all.
    #[command(hide = true)]
    Machine {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// The demo's HTTP service (answers with its node name).
    #[command(hide = true)]
    DemoService {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a config file: every problem (syntax, schema, semantics, and on this machine: OCF
    /// agents and their params, fence-agents programs, the key file) as FILE:LINE:COL, all in
    /// one run; exit 2 on errors.
    Check {
        file: PathBuf,
        /// OCF agents, their params and fence-agents programs missing here are warnings, not
        /// errors (to check a config on a machine without them).
        #[arg(long)]
        allow_missing_agents: bool,
    },
    /// Make FILE the cluster's config: validate it, show what it changes (and the plan), then
    /// commit it as the next version; every node switches to it without a restart.
    Apply {
        file: PathBuf,
        /// Apply only if the cluster still runs this version (else refused: someone changed it).
        #[arg(long)]
        expect_version: Option<u64>,
        /// Show what it would change; apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Print the committed config (the running version, or --version V).
    Show {
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every kept version: when, by whom, its digest.
    History,
    /// What version V2 changes against V1.
    Diff { v1: u64, v2: u64 },
    /// Apply version V's text again, as a new version.
    Rollback {
        version: u64,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add a member (then start its daemon with --node NAME).
    Add {
        name: String,
        /// A heartbeat link address (IP:PORT); repeat for redundant links.
        #[arg(long = "link", required = true)]
        links: Vec<String>,
        /// Its API address (default: the first link's IP, port 7480).
        #[arg(long = "node-api")]
        node_api: Option<String>,
        /// Add it although no fence device covers it (with fencing required, what it holds could
        /// then never be recovered if it is lost).
        #[arg(long)]
        no_fence_check: bool,
    },
    /// Remove a member.
    Remove {
        name: String,
        /// It is down and not fenced: confirm that it is really off (it may still run resources).
        #[arg(long)]
        confirm_down: bool,
    },
    /// Put a node in standby (it stays a member but should host nothing).
    Standby {
        name: String,
        /// Then wait (up to this long, default 120s) until nothing runs there any more and the
        /// plan is done.
        #[arg(long, num_args = 0..=1, default_missing_value = "120s", value_parser = duration)]
        wait: Option<Duration>,
    },
    /// Take a node out of standby.
    Unstandby { name: String },
    /// Set (or with --delete, remove) a node attribute.
    Attr {
        name: String,
        key: String,
        value: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// List members as replicated.
    List,
    /// Stop a node cleanly (default: the node the CLI talks to): it is marked leaving, what it
    /// runs moves away, then its daemon exits. It is not fenced; status shows it STOPPED.
    Stop {
        name: Option<String>,
        /// Exit at once, whatever still runs there (it will be fenced to recover that).
        #[arg(long)]
        now: bool,
        /// Stop it even if the voters left would be too few for quorum.
        #[arg(long)]
        force: bool,
        /// Return once the stop is asked, without waiting for the node to be stopped.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum ResourceCmd {
    /// Move it to --to NODE (or away from where it runs); expires after --lifetime.
    Move {
        resource: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_parser = duration)]
        lifetime: Option<Duration>,
    },
    /// Keep it off --node NODE; expires after --lifetime.
    Ban {
        resource: String,
        #[arg(long)]
        node: String,
        #[arg(long, value_parser = duration)]
        lifetime: Option<Duration>,
    },
    /// Remove the operator's moves and bans of it, of its group or clone and of their members.
    Clear { resource: String },
    /// List every operator move and ban: who made it, when, and when it expires.
    Constraints,
    /// Forget its failures, bans and fatal errors (it may run where it failed again).
    Cleanup { resource: String },
    /// Hand a pgsql primary over cleanly (demote, then promote the synchronous standby or
    /// --to NODE), then bring the old primary back as a replica.
    Switchover {
        resource: String,
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the new primary.
        #[arg(long, value_parser = duration, default_value = "120s")]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum LinkCmd {
    /// Stop sending and receiving heartbeats on link INDEX of node --node.
    Disable {
        index: usize,
        #[arg(long)]
        node: String,
    },
    /// Resume link INDEX of node --node.
    Enable {
        index: usize,
        #[arg(long)]
        node: String,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Set up logging (`phalanx_node::logging`): the daemon and the witness log at info (openraft
/// at warn), other commands only warnings; `RUST_LOG` overrides either.
fn init_logging(cli: &Cli) -> Option<logging::Logging> {
    let daemon = matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::Witness { .. });
    let format = match cli.log_format.as_deref() {
        Some("json") => Some(logging::LogFormat::Json),
        Some(_) => Some(logging::LogFormat::Text),
        None => None,
    };
    logging::init(logging::LogOptions {
        format,
        default_filter: if daemon { "info,openraft=warn" } else { "warn" }.to_string(),
        interval: Some(logging::DEFAULT_INTERVAL),
    })
    .map_err(|e| eprintln!("phalanx: {e}"))
    .ok()
}

/// Print `v` as JSON, or `human(v)` as text.
fn output<T: serde::Serialize>(json: bool, v: &T, human: impl Fn(&T) -> String) -> Result<()> {
    if json {
        print_json(v)
    } else {
        print!("{}", human(v));
        Ok(())
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `v` as JSON with `--json`, else `human`.
fn print_either(json: bool, v: &serde_json::Value, human: &str) -> Result<()> {
    if json {
        print_json(v)
    } else {
        println!("{}", human.trim_end());
        Ok(())
    }
}

fn main() {
    // Started as one of Pacemaker's tools (a link the daemon made for agents).
    if let Some(tool) = phalanx::pcmk_shim::invoked_as() {
        std::process::exit(phalanx::pcmk_shim::dispatch(tool));
    }
    let cli = Cli::parse();
    let logging = init_logging(&cli);
    // A node's work is small and latency-bound: one thread avoids the idle wake-ups of a
    // work-stealing pool (idle CPU per node ~1.1% -> ~0.8%, README). Other commands use two.
    let mut builder = if matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::Witness { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phalanx: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Some(l) = logging.filter(|_| matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::Witness { .. })) {
        // Says how many repeated lines the rate limit held back, once their interval is over.
        rt.spawn(l.report_forever());
    }
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("phalanx: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The API addresses to try: --api, else every node of the config.
/// `config apply|show|history|diff|rollback` (`check` needs no cluster).
async fn config_cmd(cli: &Cli, cmd: &ConfigCmd) -> Result<i32> {
    use phalanx::config_cmd as cc;
    let (client, apis) = apis(cli)?;
    let (api, _) = client.first_answering(&apis).await?;
    let (json, human, code) = match cmd {
        ConfigCmd::Check { .. } => unreachable!("handled without a cluster"),
        ConfigCmd::Apply {
            file,
            expect_version,
            dry_run,
            yes,
        } => {
            let o = cc::apply_file(&client, &api, file, *expect_version, *dry_run, *yes || cli.json).await?;
            (o.json, o.human, o.code)
        }
        ConfigCmd::Rollback { version, dry_run, yes } => {
            let o = cc::rollback(&client, &api, *version, *dry_run, *yes || cli.json).await?;
            (o.json, o.human, o.code)
        }
        ConfigCmd::Show { version } => {
            let v = cc::show(&client, &api, *version).await?;
            let human = format!(
                "# version {} by {} at {} (sha256 {})\n{}",
                v.version,
                v.author,
                v.time,
                v.sha256,
                v.text.as_deref().unwrap_or_default().trim_end()
            );
            (serde_json::to_value(&v)?, human, 0)
        }
        ConfigCmd::History => {
            let h = cc::history(&client, &api).await?;
            (serde_json::to_value(&h)?, cc::render_history(&h), 0)
        }
        ConfigCmd::Diff { v1, v2 } => {
            let d = cc::diff(&client, &api, *v1, *v2).await?;
            let human = if d.is_empty() {
                format!("No change from version {v1} to {v2}.")
            } else {
                d.join("\n")
            };
            (json!({ "from": v1, "to": v2, "diff": d }), human, 0)
        }
    };
    if cli.json {
        print_json(&json)?;
    } else {
        println!("{human}");
    }
    Ok(code)
}

/// Wait until nothing runs on `node` and no plan is pending, as the first answering node sees
/// it; how long that took, or an error naming what still runs there after `within`.
async fn wait_emptied(client: &Client, apis: &[String], node: &str, within: Duration) -> Result<Duration> {
    let began = std::time::Instant::now();
    loop {
        let still: Vec<String> = match client.first_answering(apis).await {
            Ok((_, st)) => {
                let here: Vec<String> = st
                    .resources
                    .iter()
                    .filter(|r| r.running.contains_key(node))
                    .map(|r| r.id.clone())
                    .collect();
                if here.is_empty() && st.plan_pending == 0 {
                    return Ok(began.elapsed());
                }
                here
            }
            Err(_) => vec!["(no node answers)".into()],
        };
        if began.elapsed() > within {
            bail!(
                "{node} still runs {} after {} s (see `phalanx status` and `phalanx events --node {node}`)",
                if still.is_empty() {
                    "a pending plan".to_string()
                } else {
                    still.join(", ")
                },
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn apis(cli: &Cli) -> Result<(Client, Vec<String>)> {
    let config = load_config(&cli.config)?;
    let key = ClusterKey::load(&key_path(&cli.config, &config))?;
    let apis = match &cli.api {
        Some(a) => a
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect(),
        None => config.nodes.iter().map(|n| n.api.to_string()).collect(),
    };
    let (token, _) = phalanx::token_cmd::resolve(&cli.config, &key);
    let tls = phalanx::client::operator_tls(&key_path(&cli.config, &config))?;
    Ok((Client::new(&key, tls)?.with_token(token), apis))
}

async fn run(cli: Cli) -> Result<i32> {
    let exe = std::env::current_exe().context("locating the phalanx binary")?;
    match &cli.cmd {
        Cmd::Demo { lab: true, .. } => {
            bail!("the lab demo moved to the test rig: run `cargo build --release && target/release/phalanx-lab demo` (root)")
        }
        Cmd::Demo {
            nodes, heartbeat, keep, ..
        } => {
            let report = demo::run(
                demo::DemoArgs {
                    nodes: *nodes,
                    heartbeat: *heartbeat,
                    json: cli.json,
                    keep: *keep,
                },
                exe,
            )
            .await?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "Summary: {} nodes, heartbeat {} ms: detection {} ms, leader failover {} ms, quorum after failure: {}, rejoined: {}, service outage {} ms ({} -> {}); sessions: {} writes acknowledged, {} lost, longest without an acknowledged write {} ms",
                    report.nodes,
                    report.heartbeat_interval_ms,
                    report.detection_ms,
                    report.leader_failover_ms,
                    report.quorum_after_failure,
                    report.rejoined,
                    report.service_outage_ms,
                    report.service_node_before,
                    report.service_node_after,
                    report.session_writes_acked,
                    report.session_writes_lost,
                    report.session_outage_ms
                );
            }
            Ok(
                if report.quorum_after_failure && report.rejoined && report.session_writes_lost == 0 {
                    0
                } else {
                    1
                },
            )
        }
        Cmd::Init { key } => {
            let path = match key {
                Some(k) => k.clone(),
                None => init_key_path(&cli.config),
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let paths = phalanx_node::pki::Paths::beside(&path);
            let key_made = match ClusterKey::generate(&path) {
                Ok(_) => true,
                Err(phalanx_node::key::KeyError::Exists { .. }) if !paths.ca_cert().exists() => false,
                Err(e) => return Err(e.into()),
            };
            let cluster = init_cluster_name(&cli.config);
            phalanx::client::ensure_ca(&path, &cluster)?;
            if cli.json {
                print_json(&json!({
                    "key_file": path, "mode": "0600", "key": if key_made { "generated" } else { "existing" },
                    "ca_cert": paths.ca_cert(), "ca_key": paths.ca_key(), "ca_domain": phalanx_node::pki::domain(&cluster),
                }))?;
            } else {
                if key_made {
                    println!("Wrote a new cluster key to {} (mode 0600).", path.display());
                } else {
                    println!("Kept the cluster key {}.", path.display());
                }
                println!(
                    "Wrote the cluster CA: {} and {} (mode 0600; ECDSA P-256, 10 years, for {}).\n\
                     Copy the key and ca.crt to every node, and ca.key to the nodes that may issue their own certificates\n\
                     (a node without it needs `phalanx cert issue NODE` run where it is, and the two files it writes).",
                    paths.ca_cert().display(),
                    paths.ca_key().display(),
                    phalanx_node::pki::domain(&cluster)
                );
            }
            Ok(0)
        }
        Cmd::Daemon { node, data_dir } => {
            let node = match node {
                Some(n) => n.clone(),
                None => nix::unistd::gethostname()?
                    .into_string()
                    .map_err(|_| anyhow!("the host name is not UTF-8; pass --node"))?,
            };
            daemon::run(daemon::DaemonArgs {
                config: cli.config.clone(),
                node,
                data_dir: data_dir.clone(),
            })
            .await?;
            Ok(0)
        }
        Cmd::Witness { listen, data_dir } => {
            daemon::run_witness(&cli.config, listen.as_deref(), data_dir.clone()).await?;
            Ok(0)
        }
        Cmd::Config {
            cmd: ConfigCmd::Check {
                file,
                allow_missing_agents,
            },
        } => config_check(file, *allow_missing_agents, cli.json).await,
        Cmd::Config { cmd } => config_cmd(&cli, cmd).await,
        Cmd::Status { watch, interval, check } => {
            if *check {
                return status_check(&cli).await;
            }
            let (client, apis) = apis(&cli)?;
            if *watch {
                return status_watch(&client, &apis, *interval, cli.json).await;
            }
            let (_, st) = client.first_answering(&apis).await?;
            if cli.json {
                print_json(&st)?;
            } else {
                print!("{}", render::status(&st));
            }
            Ok(0)
        }
        Cmd::Events {
            since,
            resource,
            node,
            kind,
            limit,
            follow,
        } => {
            let (client, apis) = apis(&cli)?;
            let q = phalanx::events_cmd::Query {
                since: since.clone(),
                resource: resource.clone(),
                node: node.clone(),
                kind: kind.clone(),
                limit: *limit,
                follow: *follow,
            };
            phalanx::events_cmd::run(&client, &apis, &q, cli.json).await
        }
        Cmd::Availability {
            since,
            resource,
            slo,
            predict: _,
            mtbf,
        } => {
            let (client, apis) = apis(&cli)?;
            let q = phalanx::availability_cmd::Query {
                since: since.clone(),
                resource: resource.clone(),
                slo: *slo,
                predict_mtbf: mtbf.clone(),
            };
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let a = phalanx::availability_cmd::run(&client, &apis, &q, now_ms).await?;
            if cli.json {
                print_json(&a)?;
            } else {
                print!("{}", phalanx::availability_cmd::render(&a));
            }
            Ok(0)
        }
        Cmd::Ui { node } => {
            let config = load_config(&cli.config)?;
            let key = ClusterKey::load(&key_path(&cli.config, &config))?;
            let n = match node {
                Some(name) => config.nodes.iter().find(|n| &n.name == name).ok_or_else(|| {
                    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
                    anyhow!("no node named {name:?} in the config (nodes: {})", names.join(", "))
                })?,
                None => config
                    .nodes
                    .first()
                    .ok_or_else(|| anyhow!("the config lists no node"))?,
            };
            let url = format!("https://{}/ui", n.api);
            let (token, _) = phalanx::token_cmd::resolve(&cli.config, &key);
            let link = format!("{url}#token={token}");
            if cli.json {
                print_json(&json!({ "node": n.name, "url": url, "link": link }))?;
            } else {
                println!("{link}");
            }
            Ok(0)
        }
        Cmd::LinkCheck {
            node,
            seconds,
            max_loss,
        } => {
            let (client, apis) = apis(&cli)?;
            let a = phalanx::linkcheck_cmd::Args {
                node: node.clone(),
                seconds: *seconds,
                max_loss_pct: *max_loss,
            };
            let pb = phalanx::demo::spinner(cli.json);
            pb.set_message(format!("measuring the links for {seconds} s"));
            let r = phalanx::linkcheck_cmd::run(&client, &apis, &a).await;
            pb.finish_and_clear();
            let r = r?;
            if cli.json {
                print_json(&r)?;
            } else {
                print!("{}", phalanx::linkcheck_cmd::render(&r));
            }
            Ok(if phalanx::linkcheck_cmd::all_pass(&r) { 0 } else { 1 })
        }
        Cmd::Drill {
            scenario,
            resource,
            node,
            probe,
            runs,
            settle,
            plot,
            fence_failures,
        } => {
            let a = phalanx::drill_cmd::Args {
                scenario: scenario.clone(),
                resource: resource.clone(),
                node: node.clone(),
                probe: probe.clone(),
                runs: *runs,
                settle: *settle,
                fence_failures: *fence_failures,
            };
            phalanx::drill_cmd::check(&a)?;
            let (client, apis) = apis(&cli)?;
            let pb = phalanx::demo::spinner(cli.json);
            let r = phalanx::drill_cmd::run(&client, &apis, &a, &pb).await;
            pb.finish_and_clear();
            let r = r?;
            if let Some(path) = plot {
                phalanx::drill_cmd::plot(&r, path)?;
            }
            if cli.json {
                print_json(&r)?;
            } else {
                print!("{}", phalanx::drill_cmd::render(&r));
                if let Some(path) = plot {
                    println!("Plot: {}", path.display());
                }
            }
            Ok(0)
        }
        Cmd::Node { cmd } => node_cmd(&cli, cmd).await,
        Cmd::PowerSwitch {
            listen,
            outlet,
            boot,
            events,
        } => {
            let outlets = outlet
                .iter()
                .map(|o| phalanx::power_switch::parse_outlet(o))
                .collect::<Result<Vec<_>>>()?;
            let mut boots = std::collections::BTreeMap::new();
            for b in boot {
                let Some((n, cmd)) = b.split_once('=') else {
                    bail!("--boot {b:?}: write NAME=COMMAND");
                };
                boots.insert(n.to_string(), cmd.to_string());
            }
            phalanx::power_switch::serve(listen, outlets, boots, events.clone()).await?;
            Ok(0)
        }
        Cmd::Machine { command } => phalanx::power_switch::machine(command).await,
        Cmd::DemoService { listen, name } => {
            phalanx::service::serve(listen, name).await?;
            Ok(0)
        }
        Cmd::Resource {
            cmd: ResourceCmd::Constraints,
        } => {
            let (client, apis) = apis(&cli)?;
            let (api, _) = client.first_answering(&apis).await?;
            let list: Vec<phalanx_core::state::OperatorEntry> = client.get(&api, "/v1/constraints").await?;
            if cli.json {
                print_json(&list)?;
            } else {
                print!("{}", render::constraints(&list, phalanx_node::mesh::unix_ms()));
            }
            Ok(0)
        }
        Cmd::Resource {
            cmd: ResourceCmd::Switchover { resource, to, timeout },
        } => {
            let (client, apis) = apis(&cli)?;
            let progress = phalanx::demo::spinner(cli.json);
            let r = phalanx::pg_cmd::switchover(&client, &apis, resource, to.as_deref(), *timeout, &progress).await;
            progress.finish_and_clear();
            let r = r?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!(
                    "{}: switched over from {} to {} in {:.1} s; {}",
                    r.resource,
                    r.from,
                    r.to,
                    r.seconds,
                    if r.rejoined {
                        format!("{} is back as a replica", r.from)
                    } else {
                        format!("{} is not back as a replica yet (see `phalanx pg status`)", r.from)
                    }
                );
            }
            Ok(0)
        }
        Cmd::Resource { cmd } => {
            let (client, apis) = apis(&cli)?;
            let (api, _) = client.first_answering(&apis).await?;
            let (rsc, op, body, human) = match cmd {
                ResourceCmd::Move { resource, to, lifetime } => (
                    resource,
                    "move",
                    json!({ "node": to, "lifetime_ms": lifetime.map(|l| l.as_millis() as u64) }),
                    match to {
                        Some(n) => format!("{resource} will move to {n}"),
                        None => format!("{resource} will move away from where it runs"),
                    },
                ),
                ResourceCmd::Ban {
                    resource,
                    node,
                    lifetime,
                } => (
                    resource,
                    "ban",
                    json!({ "node": node, "lifetime_ms": lifetime.map(|l| l.as_millis() as u64) }),
                    format!("{resource} is banned from {node}"),
                ),
                ResourceCmd::Clear { resource } => (resource, "clear", json!({}), String::new()),
                ResourceCmd::Cleanup { resource } => (
                    resource,
                    "cleanup",
                    json!({}),
                    format!("{resource}: failures cleaned up"),
                ),
                ResourceCmd::Constraints | ResourceCmd::Switchover { .. } => {
                    bail!("resource {} is handled above", "constraints/switchover")
                }
            };
            // Every one of these is idempotent: retried while the cluster answers "no leader right
            // now" (503), as during an election when a node comes back.
            let v: serde_json::Value = client
                .post_retrying(&api, &format!("/v1/resources/{rsc}/{op}"), &body, RETRY_WRITES)
                .await?;
            if cli.json {
                print_json(&v)?;
            } else if op == "clear" {
                let cleared: Vec<phalanx_core::state::OperatorEntry> =
                    serde_json::from_value(v["cleared"].clone()).context("decoding what clear cleared")?;
                println!("{}", render::cleared(rsc, &cleared));
            } else {
                println!("{human}.");
            }
            Ok(0)
        }
        Cmd::Maintenance { state, node } => {
            let (client, apis) = apis(&cli)?;
            let (api, _) = client.first_answering(&apis).await?;
            let on = state == "on";
            let v: serde_json::Value = client
                .post_retrying(
                    &api,
                    "/v1/maintenance",
                    &json!({ "node": node, "on": on }),
                    RETRY_WRITES,
                )
                .await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "Maintenance {state}{}.",
                    node.as_ref().map(|n| format!(" on {n}")).unwrap_or_default()
                );
            }
            Ok(0)
        }
        Cmd::Playground { cmd } => phalanx::playground::run(cmd, cli.json, exe).await,
        Cmd::Backup { file } => {
            let (client, apis) = apis(&cli)?;
            let (v, human, code) = phalanx::backup::backup(&client, &apis, file).await?;
            print_either(cli.json, &v, &human)?;
            Ok(code)
        }
        Cmd::Restore(args) => {
            let (v, human, code) = if args.apply_state {
                let (client, apis) = apis(&cli)?;
                phalanx::backup::apply_state(&client, &apis, &args.file, cli.json).await?
            } else {
                let target = phalanx::backup::target_config(args.dir.as_deref(), &cli.config);
                phalanx::backup::new_cluster(&args.file, &target, args.dir.as_deref())?
            };
            print_either(cli.json, &v, &human)?;
            Ok(code)
        }
        Cmd::Balancer {
            cmd: BalancerCmd::Drain(a) | BalancerCmd::Ready(a) | BalancerCmd::Maint(a),
        } => {
            let want = match &cli.cmd {
                Cmd::Balancer {
                    cmd: BalancerCmd::Drain(_),
                } => AdminState::Drain,
                Cmd::Balancer {
                    cmd: BalancerCmd::Maint(_),
                } => AdminState::Maint,
                _ => AdminState::Ready,
            };
            let (client, apis) = apis(&cli)?;
            let (api, st) = client.first_answering(&apis).await?;
            let id = phalanx::balancer_cmd::resolve(&client, &api, &st, &a.backend, a.balancer.as_deref()).await?;
            let answer = phalanx::balancer_cmd::set(
                &client,
                &api,
                &id,
                &a.backend,
                phalanx::balancer_cmd::Change::Admin(want),
            )
            .await?;
            let mut human = format!("{id}/{}: {}.", a.backend, want.as_str());
            let mut waited = None;
            if a.wait {
                let took =
                    phalanx::balancer_cmd::wait(&client, &apis, &id, &a.backend, want, a.timeout, cli.json).await?;
                waited = Some(took.as_secs_f64());
                human = match want {
                    AdminState::Ready => format!("{id}/{}: back in rotation ({:.1} s).", a.backend, took.as_secs_f64()),
                    _ => format!(
                        "{id}/{}: {}, no connection left ({:.1} s).",
                        a.backend,
                        want.as_str(),
                        took.as_secs_f64()
                    ),
                };
            }
            let v = json!({ "balancer": id, "backend": a.backend, "admin": want.as_str(), "outcome": answer, "waited_s": waited });
            print_either(cli.json, &v, &human)?;
            Ok(0)
        }
        Cmd::Balancer {
            cmd:
                BalancerCmd::Weight {
                    backend,
                    weight,
                    balancer,
                },
        } => {
            let w = match weight.as_str() {
                "config" => WeightReq::Config("config".into()),
                n => match n.parse::<u16>() {
                    Ok(w) if w <= phalanx_core::lb::MAX_WEIGHT => WeightReq::Set(w),
                    _ => bail!("weight {n:?}: give a number 0..=256, or `config`"),
                },
            };
            let (client, apis) = apis(&cli)?;
            let (api, st) = client.first_answering(&apis).await?;
            let id = phalanx::balancer_cmd::resolve(&client, &api, &st, backend, balancer.as_deref()).await?;
            let answer =
                phalanx::balancer_cmd::set(&client, &api, &id, backend, phalanx::balancer_cmd::Change::Weight(w))
                    .await?;
            let v = json!({ "balancer": id, "backend": backend, "weight": weight, "outcome": answer });
            print_either(cli.json, &v, &format!("{id}/{backend}: weight {weight}."))?;
            Ok(0)
        }
        Cmd::Balancer {
            cmd: BalancerCmd::Status { id },
        } => {
            let (client, apis) = apis(&cli)?;
            let (_, st) = client.first_answering(&apis).await?;
            let found = phalanx::balancer_cmd::status(&client, &st, id.as_deref()).await?;
            if cli.json {
                print_json(&found)?;
            } else {
                print!("{}", phalanx::balancer_cmd::render(&found));
            }
            Ok(0)
        }
        Cmd::Cert { cmd } => {
            let config = load_config(&cli.config)?;
            let key_file = key_path(&cli.config, &config);
            let paths = phalanx_node::pki::Paths::beside(&key_file);
            match cmd {
                CertCmd::Issue { node, ips, force } => {
                    if let Ok(pem) = std::fs::read_to_string(paths.node_cert(node)) {
                        let now = std::time::SystemTime::now();
                        match phalanx_node::pki::inspect_pem(&pem) {
                            Ok(old) if old.not_after > now && !force => bail!(
                                "{} holds {node}'s certificate, valid until {} (its node may be using it): --force replaces it",
                                paths.node_cert(node).display(),
                                humantime::format_rfc3339_seconds(old.not_after)
                            ),
                            _ => {}
                        }
                    }
                    let ips = if !ips.is_empty() {
                        ips.clone()
                    } else if node == phalanx_node::raft::WITNESS_NAME {
                        let witness = config.witness.iter().map(|w| w.address.ip());
                        phalanx_node::pki::addresses(&config, node, witness)
                    } else {
                        let n = config.node(node).ok_or_else(|| {
                            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
                            anyhow!(
                                "no node named {node:?} in the config (nodes: {}; a node added with `node add`: give its addresses with --ip)",
                                names.join(", ")
                            )
                        })?;
                        phalanx_node::pki::addresses(&config, node, n.links.iter().chain([&n.api]).map(|a| a.ip()))
                    };
                    let issued = phalanx_node::pki::issue_to_files(&paths, node, &ips, std::time::SystemTime::now())?;
                    let info = phalanx_node::pki::inspect_pem(&issued.cert_pem).map_err(|e| anyhow!(e))?;
                    let (cert, keyp) = (paths.node_cert(node), paths.node_key(node));
                    if cli.json {
                        print_json(&json!({
                            "node": node, "cert": cert, "key": keyp, "dns": info.dns, "ips": info.ips,
                            "not_after": humantime::format_rfc3339_seconds(info.not_after).to_string(),
                        }))?;
                    } else {
                        println!(
                            "Issued {node}'s certificate: {} and {} (mode 0600), for {} and {}, valid until {}.\n\
                             Copy both to {} on {node}; it renews itself at 2/3 of its life where the CA key is.",
                            cert.display(),
                            keyp.display(),
                            info.dns.join(", "),
                            info.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                            humantime::format_rfc3339_seconds(info.not_after),
                            paths.cert_dir().display()
                        );
                    }
                    Ok(0)
                }
                CertCmd::List => {
                    let rows = phalanx::cert_cmd::rows(&paths, std::time::SystemTime::now())?;
                    if cli.json {
                        print_json(&rows)?;
                    } else {
                        print!("{}", phalanx::cert_cmd::render(&rows));
                    }
                    Ok(0)
                }
            }
        }
        Cmd::Ca {
            cmd: CaCmd::Rotate { timeout },
        } => {
            let (client, apis) = apis(&cli)?;
            let config = load_config(&cli.config)?;
            let paths = phalanx_node::pki::Paths::beside(&key_path(&cli.config, &config));
            let bar = phalanx::demo::spinner(cli.json);
            let r = phalanx::rotate_cmd::ca(&client, &apis, &config, &paths, *timeout, &bar).await;
            bar.finish_and_clear();
            output(cli.json, &r?, phalanx::rotate_cmd::render)?;
            Ok(0)
        }
        Cmd::Key {
            cmd: KeyCmd::Rotate { timeout },
        } => {
            let (client, apis) = apis(&cli)?;
            let config = load_config(&cli.config)?;
            let key_file = key_path(&cli.config, &config);
            let bar = phalanx::demo::spinner(cli.json);
            let r = phalanx::rotate_cmd::key(&client, &apis, &config, &key_file, *timeout, &bar).await;
            bar.finish_and_clear();
            output(cli.json, &r?, phalanx::rotate_cmd::render)?;
            Ok(0)
        }
        Cmd::Token { cmd } => {
            let (client, apis) = apis(&cli)?;
            match cmd {
                TokenCmd::Create {
                    name,
                    role,
                    ttl,
                    save,
                    force,
                    break_glass,
                } => {
                    let config = load_config(&cli.config)?;
                    let key = ClusterKey::load(&key_path(&cli.config, &config))?;
                    let (_, source) = phalanx::token_cmd::resolve(&cli.config, &key);
                    let c = phalanx::token_cmd::create(
                        &client,
                        &apis,
                        &cli.config,
                        source,
                        name,
                        role,
                        *ttl,
                        *save,
                        *force,
                        break_glass.then_some(&key),
                    )
                    .await?;
                    output(cli.json, &c, phalanx::token_cmd::render_created)?;
                }
                TokenCmd::List => {
                    let l = phalanx::token_cmd::list(&client, &apis).await?;
                    output(cli.json, &l, |l| phalanx::token_cmd::render_list(l))?;
                }
                TokenCmd::Revoke { name } => {
                    phalanx::token_cmd::revoke(&client, &apis, name).await?;
                    output(cli.json, &json!({ "revoked": name }), |_| {
                        format!("Token {name} revoked.\n")
                    })?;
                }
                TokenCmd::Save { force } => {
                    let secret = match std::env::var(phalanx::token_cmd::TOKEN_ENV) {
                        Ok(t) if !t.trim().is_empty() => t,
                        _ => {
                            let mut line = String::new();
                            std::io::stdin().read_line(&mut line)?;
                            line
                        }
                    };
                    let p = phalanx::token_cmd::save_given(&client, &apis, &cli.config, &secret, *force).await?;
                    output(cli.json, &json!({ "saved": p }), |_| {
                        format!(
                            "Saved for this config in {} (0600): this CLI presents it from now on.\n",
                            p.display()
                        )
                    })?;
                }
            }
            Ok(0)
        }
        Cmd::Pg { cmd: PgCmd::Status } => {
            let (client, apis) = apis(&cli)?;
            let all = phalanx::pg_cmd::status(&client, &apis).await?;
            if cli.json {
                print_json(&all)?;
            } else {
                print!("{}", phalanx::pg_cmd::render(&all));
            }
            Ok(0)
        }
        Cmd::Sessions {
            cmd: SessionsCmd::Status,
        } => {
            let (client, apis) = apis(&cli)?;
            let report = phalanx::sessions_cmd::status(&client, &apis).await;
            if cli.json {
                print_json(&report)?;
            } else {
                print!("{}", phalanx::sessions_cmd::render(&report));
            }
            Ok(if report.nodes.iter().any(|n| n.status.is_some()) {
                0
            } else {
                1
            })
        }
        Cmd::Why { resource } => {
            let (client, apis) = apis(&cli)?;
            let (api, _) = client.first_answering(&apis).await?;
            let v: serde_json::Value = client.get(&api, &format!("/v1/why/{resource}")).await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "{resource} (placed as {}): {}",
                    v["unit"].as_str().unwrap_or(""),
                    v["explain"]["verdict"].as_str().unwrap_or("")
                );
                if let Some(scores) = v["explain"]["scores"].as_object() {
                    for (n, sc) in scores {
                        let parts: Vec<&str> = sc[1]
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                            .unwrap_or_default();
                        println!("  {n:<8} {:>10}  {}", sc[0], parts.join("; "));
                    }
                    println!("  (any other node: 0, no constraint)");
                }
                if let Some(rec) = v["record"].as_object() {
                    if let Some(e) = rec.get("last_error").and_then(|e| e.as_str()) {
                        println!("  last error: {e}");
                    }
                }
                for l in v["next"].as_array().into_iter().flatten() {
                    println!("  next: {}", l.as_str().unwrap_or(""));
                }
            }
            Ok(0)
        }
        Cmd::Simulate {
            state,
            node_down,
            fail,
            explain,
            live,
        } => {
            let config = load_config(&cli.config)?;
            let args = simulate::SimulateArgs {
                state: state.as_deref(),
                node_down,
                fail,
            };
            if *live {
                let (client, apis) = apis(&cli)?;
                let (api, st) = client.first_answering(&apis).await?;
                let leader = st
                    .leader
                    .clone()
                    .ok_or_else(|| anyhow!("the cluster has no leader now"))?;
                let cluster: phalanx_core::ClusterState = client.get(&api, "/v1/state").await?;
                let live = simulate::run_live(&config, cluster, &leader, &args)?;
                if cli.json {
                    print_json(
                        &json!({ "waits_for_plan": live.waits_for, "unchanged": live.unchanged, "plan": live.plan }),
                    )?;
                } else {
                    if let Some(id) = live.waits_for {
                        println!(
                            "Wait: the leader holds this plan back until the starts in flight of plan {id} report."
                        );
                    }
                    if live.unchanged {
                        println!("The current plan already does this: the leader commits nothing new.");
                    }
                    print!("{}", simulate::render(&live.plan, *explain));
                }
                return Ok(0);
            }
            let (_, plan) = simulate::run(&config, &args)?;
            if cli.json {
                print_json(&plan)?;
            } else {
                print!("{}", simulate::render(&plan, *explain));
            }
            Ok(0)
        }
        Cmd::Link { cmd } => {
            let (client, apis) = apis(&cli)?;
            let (index, node, enabled) = match cmd {
                LinkCmd::Disable { index, node } => (*index, node, false),
                LinkCmd::Enable { index, node } => (*index, node, true),
            };
            let (_, st) = client.first_answering(&apis).await?;
            let target = st
                .nodes
                .iter()
                .find(|n| &n.name == node)
                .ok_or_else(|| anyhow!("no node named {node}"))?;
            let v: serde_json::Value = client
                .post(
                    &target.api,
                    &format!("/v1/links/{index}"),
                    &json!({ "enabled": enabled }),
                )
                .await?;
            if cli.json {
                print_json(&v)?;
            } else {
                println!(
                    "Link {index} of {node} is now {}.",
                    if enabled { "enabled" } else { "disabled" }
                );
            }
            Ok(0)
        }
    }
}

/// The cluster's name for `init`'s CA: the config's, as far as it can be read, else `cluster`.
fn init_cluster_name(config: &Path) -> String {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|src| check(&src).draft)
        .map(|c| c.cluster.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "cluster".to_string())
}

/// Where `init` writes the key: the config's `key_file` (even from a config with errors, as
/// far as it can be read), else `phalanx.key`, relative to the config's folder, whether the
/// config exists yet or not.
fn init_key_path(config: &Path) -> PathBuf {
    let key_file = std::fs::read_to_string(config)
        .ok()
        .and_then(|src| check(&src).draft)
        .map(|c| c.cluster.key_file)
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "phalanx.key".to_string());
    phalanx_node::key::key_path(config, &key_file)
}

async fn config_check(file: &Path, allow_missing_agents: bool, as_json: bool) -> Result<i32> {
    let name = file.display().to_string();
    let src = std::fs::read_to_string(file).with_context(|| format!("reading {name}"))?;
    let mut checked = check(&src);
    // This machine: OCF agents installed here are asked for their meta-data (params, default
    // timeouts), fence-agents programs looked up, the key file read.
    phalanx_node::agents::Runner::new("config-check")
        .check_machine(&mut checked, &src, file, allow_missing_agents)
        .await;
    let errors = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = checked.diagnostics.len() - errors;
    if as_json {
        let diags: Vec<_> = checked
            .diagnostics
            .iter()
            .map(|d| {
                json!({
                    "severity": if d.severity == Severity::Error { "error" } else { "warning" },
                    "line": d.line, "col": d.col, "message": d.message,
                    "rendered": d.render(&name),
                })
            })
            .collect();
        print_json(
            &json!({ "file": name, "ok": errors == 0, "errors": errors, "warnings": warnings, "diagnostics": diags }),
        )?;
    } else {
        let fancy = std::io::stdout().is_terminal();
        for d in &checked.diagnostics {
            println!("{}", d.render(&name));
            if fancy {
                let report = miette::Report::new(
                    miette::MietteDiagnostic::new(d.message.clone())
                        .with_severity(if d.severity == Severity::Error {
                            miette::Severity::Error
                        } else {
                            miette::Severity::Warning
                        })
                        .with_label(miette::LabeledSpan::at(d.span.clone(), "here")),
                )
                .with_source_code(miette::NamedSource::new(name.clone(), src.clone()));
                println!("{report:?}");
            }
        }
        if errors == 0 {
            println!("{name}: OK ({warnings} warning(s))");
            if let Some(cfg) = checked.config.as_ref().filter(|c| !c.fence.devices.is_empty()) {
                println!("Fencing ({}), how each node is fenced:", cfg.cluster.fencing);
                for n in &cfg.nodes {
                    println!("  {}", phalanx_core::fencing::describe(&cfg.fence, &n.name));
                }
            }
        } else {
            println!("{name}: {errors} error(s), {warnings} warning(s)");
        }
    }
    Ok(if errors > 0 { 2 } else { 0 })
}

/// `phalanx status --check`: one Nagios line and its exit code (see `render::check`); a cluster
/// no node of which answers is CRITICAL; a check that cannot even ask (no config or key here)
/// is UNKNOWN (3), as Nagios plugins say.
async fn status_check(cli: &Cli) -> Result<i32> {
    let (code, line) = match apis(cli) {
        Err(e) => (3, format!("PHALANX UNKNOWN - cannot ask the cluster: {e:#}")),
        Ok((client, apis)) => match client.first_answering(&apis).await {
            Ok((_, st)) => render::check(&st),
            Err(e) => (2, format!("PHALANX CRITICAL - cluster unreachable: {e:#}")),
        },
    };
    if cli.json {
        let state = ["ok", "warning", "critical", "unknown"][code as usize];
        print_json(&json!({ "state": state, "code": code, "summary": line }))?;
    } else {
        println!("{line}");
    }
    Ok(code)
}

/// `phalanx status --watch`: clear the screen and redraw every `interval`, like crm_mon (JSON:
/// one report per line, no clearing). A node that stops answering is reported in place and
/// asked again at the next round.
async fn status_watch(client: &Client, apis: &[String], interval: Duration, json: bool) -> Result<i32> {
    use std::io::Write;
    loop {
        let answer = client.first_answering(apis).await;
        let mut out = std::io::stdout().lock();
        match (answer, json) {
            (Ok((_, st)), true) => writeln!(out, "{}", serde_json::to_string(&st)?)?,
            (Ok((api, st)), false) => write!(
                out,
                "\x1b[H\x1b[2J{}\nEvery {}: asked {api}. Ctrl-C to stop.\n",
                render::status(&st),
                phalanx_core::duration::format_duration(interval)
            )?,
            (Err(e), true) => writeln!(out, "{}", json!({ "error": format!("{e:#}") }))?,
            (Err(e), false) => write!(
                out,
                "\x1b[H\x1b[2JNo node answers: {e:#}\nRetrying every {}. Ctrl-C to stop.\n",
                phalanx_core::duration::format_duration(interval)
            )?,
        }
        out.flush()?;
        drop(out);
        tokio::time::sleep(interval).await;
    }
}

/// `phalanx node stop`: ask, then (unless `no_wait`) follow the node until the cluster records
/// it stopped, through the other nodes.
async fn node_stop(
    client: &Client,
    apis: &[String],
    api: &str,
    name: Option<&str>,
    now: bool,
    force: bool,
    no_wait: bool,
) -> Result<(serde_json::Value, String)> {
    let status: phalanx_node::StatusReport = client.get(api, "/v1/status").await?;
    let name = name.unwrap_or(&status.node).to_string();
    let Some(target) = status.nodes.iter().find(|n| n.name == name) else {
        bail!(
            "no node named {name:?} (members: {})",
            status
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // --now acts on the node that receives it.
    let to = if now { target.api.clone() } else { api.to_string() };
    // Retried while the cluster answers "no leader right now" (503: nothing committed), as `node
    // add` is: a rolling restart once asked just as the previous node's return moved the leader.
    let v: serde_json::Value = client
        .post_retrying(
            &to,
            &format!("/v1/nodes/{name}/stop"),
            &json!({ "now": now, "force": force }),
            RETRY_WRITES,
        )
        .await?;
    if no_wait {
        return Ok((v, format!("{name}: stop requested.")));
    }
    let others: Vec<String> = apis.iter().filter(|a| **a != target.api).cloned().collect();
    let bar = indicatif::ProgressBar::new_spinner().with_message(format!("{name}: leaving"));
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if std::time::Instant::now() > deadline {
            bar.finish_and_clear();
            bail!("{name} is not stopped after 5 minutes: see `phalanx status`");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok((other, _)) = client.first_answering(&others).await else {
            continue;
        };
        let Ok(s) = client.get::<phalanx_node::StatusReport>(&other, "/v1/status").await else {
            continue;
        };
        let Some(n) = s.nodes.iter().find(|n| n.name == name) else {
            continue;
        };
        let here: Vec<&str> = s
            .resources
            .iter()
            .filter(|r| r.running.contains_key(&name))
            .map(|r| r.id.as_str())
            .collect();
        bar.set_message(format!(
            "{name}: {}, still running here: {}",
            n.state,
            if here.is_empty() {
                "nothing".to_string()
            } else {
                here.join(", ")
            }
        ));
        // Decided by what the leader recorded (the replicated liveness), not by this node's
        // heartbeat view: a node that just exited looks offline here before the leader records
        // it Stopped, and reading that as "went down before it was done" was wrong (a flaky
        // `node_stop_leaves_cleanly_and_refuses_to_break_quorum`).
        let recorded = match n.liveness {
            phalanx_core::Liveness::Stopped => "stopped",
            phalanx_core::Liveness::Offline => "offline",
            _ => "",
        };
        match recorded {
            "stopped" => {
                bar.finish_and_clear();
                let v = json!({ "node": name, "state": "stopped", "fenced": false });
                return Ok((
                    v,
                    format!("{name} stopped cleanly: it held nothing when it left; not fenced."),
                ));
            }
            "offline" => {
                bar.finish_and_clear();
                let v = json!({ "node": name, "state": "offline", "fenced": n.fence.fenced });
                let why = if now {
                    "stopped at once (--now)"
                } else {
                    "went down before it was done leaving"
                };
                return Ok((
                    v,
                    format!("{name} {why}: the cluster treats it as lost and fences it before what it held runs elsewhere (see `phalanx status`)."),
                ));
            }
            _ => {}
        }
    }
}

/// After `node add`: issue the new node's certificate for its links and API address where this
/// machine holds the CA key (as `cert issue` would; an unexpired one is kept), else say where
/// to. What to tell the operator, either way (never a failure: the node is added).
fn add_node_certificate(cli: &Cli, name: &str, links: &[String], node_api: Option<&str>) -> String {
    let Ok(config) = load_config(&cli.config) else {
        return String::new();
    };
    let paths = phalanx_node::pki::Paths::beside(&key_path(&cli.config, &config));
    let mut ips: Vec<std::net::IpAddr> = links
        .iter()
        .chain(node_api.map(str::to_string).as_ref())
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .collect();
    ips = phalanx_node::pki::addresses(&config, name, ips);
    let ip_args: String = ips.iter().map(|i| format!(" --ip {i}")).collect();
    let now = std::time::SystemTime::now();
    let current = std::fs::read_to_string(paths.node_cert(name)).ok();
    if let Some(ca) = phalanx_node::pki::load_ca_cert(&paths)
        .ok()
        .filter(|_| paths.ca_key().exists())
    {
        if current.is_some_and(|c| phalanx_node::pki::unfit(&c, &ca, name, &ips, now).is_none()) {
            return format!("Its certificate {} will do as it is.", paths.node_cert(name).display());
        }
        return match phalanx_node::pki::issue_to_files(&paths, name, &ips, now) {
            Ok(_) => format!(
                "Issued its certificate: {} and {} (copy both to its machine's {} unless it shares this folder).",
                paths.node_cert(name).display(),
                paths.node_key(name).display(),
                paths.cert_dir().display()
            ),
            Err(e) => format!("Its certificate could not be issued here ({e}): run `phalanx cert issue {name}{ip_args}` where the CA key is."),
        };
    }
    format!("The CA key is not on this machine: run `phalanx cert issue {name}{ip_args}` where it is, and copy the two files to its machine.")
}

/// What to warn an operator of when no online node may host anything any more (every one in
/// standby or down): the resources that stop. None while one may, or when nothing is configured.
fn nowhere_to_run(st: &phalanx_node::node::StatusReport) -> Option<String> {
    let hosts = st.nodes.iter().any(|n| n.state == "online" && !n.standby);
    if hosts || st.resources.is_empty() {
        return None;
    }
    let ids: Vec<&str> = st.resources.iter().map(|r| r.id.as_str()).collect();
    Some(format!(
        "no online node is out of standby: {} can run nowhere and stop (`phalanx node unstandby NAME` brings one back)",
        ids.join(", ")
    ))
}

async fn node_cmd(cli: &Cli, cmd: &NodeCmd) -> Result<i32> {
    let (client, apis) = apis(cli)?;
    let (api, _) = client.first_answering(&apis).await?;
    let (v, human): (serde_json::Value, String) = match cmd {
        NodeCmd::Add {
            name,
            links,
            node_api,
            no_fence_check,
        } => {
            // Retried while the cluster answers "no leader right now, retry" (503: nothing was
            // committed), as `config apply` is: an election under load once failed this command.
            let v = client
                .post_retrying(
                    &api,
                    "/v1/nodes",
                    &json!({ "name": name, "links": links, "api": node_api, "no_fence_check": no_fence_check }),
                    RETRY_WRITES,
                )
                .await?;
            let cert = add_node_certificate(cli, name, links, node_api.as_deref());
            (
                v,
                format!("Added {name}. {cert}\nStart it with: phalanx daemon --config FILE --node {name}"),
            )
        }
        NodeCmd::Remove { name, confirm_down } => {
            let path = match confirm_down {
                true => format!("/v1/nodes/{name}?confirm_down=true"),
                false => format!("/v1/nodes/{name}"),
            };
            (client.delete(&api, &path).await?, format!("Removed {name}."))
        }
        NodeCmd::Standby { name, wait } => {
            let answer = client
                .post_retrying(
                    &api,
                    &format!("/v1/nodes/{name}/standby"),
                    &json!({ "standby": true }),
                    RETRY_WRITES,
                )
                .await?;
            let mut human = match wait {
                None => format!("{name} is in standby."),
                Some(within) => {
                    let waited = wait_emptied(&client, &apis, name, *within).await?;
                    format!(
                        "{name} is in standby; nothing runs there any more ({:.1} s).",
                        waited.as_secs_f64()
                    )
                }
            };
            // The node that answered has applied the standby (see `Node::write_by`).
            // On stderr with --json: the answer on stdout keeps its shape.
            if let Some(w) = client.status(&api).await.ok().as_ref().and_then(nowhere_to_run) {
                match cli.json {
                    true => eprintln!("warning: {w}"),
                    false => human.push_str(&format!("\nWarning: {w}")),
                }
            }
            (answer, human)
        }
        NodeCmd::Unstandby { name } => (
            client
                .post_retrying(
                    &api,
                    &format!("/v1/nodes/{name}/standby"),
                    &json!({ "standby": false }),
                    RETRY_WRITES,
                )
                .await?,
            format!("{name} is out of standby."),
        ),
        NodeCmd::Attr {
            name,
            key,
            value,
            delete,
        } => match (value, delete) {
            (Some(v), false) => (
                client
                    .put(&api, &format!("/v1/nodes/{name}/attrs/{key}"), &json!({ "value": v }))
                    .await?,
                format!("{name}: {key}={v}"),
            ),
            (None, true) => (
                client.delete(&api, &format!("/v1/nodes/{name}/attrs/{key}")).await?,
                format!("{name}: {key} removed"),
            ),
            _ => bail!("give a VALUE, or --delete without one"),
        },
        NodeCmd::Stop {
            name,
            now,
            force,
            no_wait,
        } => node_stop(&client, &apis, &api, name.as_deref(), *now, *force, *no_wait).await?,
        NodeCmd::List => {
            let v: serde_json::Value = client.get(&api, "/v1/nodes").await?;
            let mut human = String::new();
            if let Some(m) = v.as_object() {
                for (n, r) in m {
                    human += &format!(
                        "{n}: id {} api {} links {} standby {} liveness {}\n",
                        r["id"], r["api"], r["links"], r["standby"], r["liveness"]
                    );
                }
            }
            (v, human.trim_end().to_string())
        }
    };
    if cli.json {
        print_json(&v)?;
    } else {
        println!("{human}");
    }
    Ok(0)
}

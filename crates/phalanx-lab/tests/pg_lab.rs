//! PostgreSQL lab tests (issue 18; network namespaces and Debian's PostgreSQL 15, root: CI runs
//! as root, `PHALANX_NO_LAB=1` skips them saying so). Three lab nodes run phalanx with the
//! built-in `pgsql` agent and a write VIP; a writer in the client namespace commits one row per
//! transaction through the VIP and records every acknowledged commit; a sampler in every node
//! namespace fails the test if two nodes ever hold the write VIP at once.

use phalanx_lab::lab::{lab_or_skip, Lab, Watch, VIP};
use phalanx_lab::pg_lab::{lost_commits, primaries, sql_primary, wait_primary, PhalanxPg, Writer, PG_PORT};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn exe() -> std::path::PathBuf {
    phalanx_lab::lab::phalanx_exe().expect("the phalanx binary")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The cluster's events of `kinds` as (kind, node, time_ms).
fn events(pg: &PhalanxPg, kinds: &str) -> Vec<(String, String, u64)> {
    let (code, out, err) = pg.cluster.cli(&["events", "--kind", kinds, "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["node"].as_str().unwrap_or_default().to_string(),
                e["time_ms"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// A started lab cluster with `sync`, its primary with two streaming replicas (one
/// synchronous), and the writer's table.
async fn serving(lab: &Lab, sync: &str) -> (PhalanxPg, usize) {
    let pg = PhalanxPg::start(lab, &exe(), sync).await.unwrap();
    let p = wait_primary(lab, 2, sync != "off", T).unwrap();
    sql_primary(
        lab,
        &PhalanxPg::write_hosts(),
        &["create table acks (id bigint primary key)"],
    )
    .unwrap();
    (pg, p)
}

/// A writer committing one row per transaction through `hosts`, once 50 are acknowledged.
fn writing(lab: &Lab, hosts: &[String]) -> Writer {
    let w = Writer::start(lab, hosts.to_vec(), 0);
    w.wait_acked_after(Instant::now(), 50, T).unwrap();
    w
}

/// Sync on, the primary's node crashes under the writer: its node is fenced before a replica is
/// promoted, the write VIP follows (never two holders), every acknowledged commit is on the
/// new primary (RPO = 0), and once the node is back its PostgreSQL rejoins as a replica by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_node_crashes_and_every_acknowledged_commit_survives_then_it_rejoins() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (mut pg, p) = serving(&lab, "on").await;
    let hosts = PhalanxPg::write_hosts();
    let watch = Watch::start(&lab, &[1, 2, 3], VIP.parse().unwrap(), PG_PORT);
    let w = writing(&lab, &hosts);
    let crash_at = Instant::now();
    let crash_ms = unix_ms();
    lab.crash(p).unwrap();
    let old = format!("n{p}");
    pg.cluster.reap(&old).unwrap();
    w.wait_recovered(crash_at, 20, T).unwrap();
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &hosts, &log).unwrap();
    let acked = log.iter().filter(|o| o.acked.is_some()).count();
    eprintln!(
        "crash of {old}: write outage {:?}, {acked} acknowledged commits, {} lost",
        phalanx_lab::pg_lab::write_outage(&log, crash_at),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");

    // Fence, then promote.
    let ev = events(&pg, "fence_succeeded,resource_promoted");
    let fenced_at = ev
        .iter()
        .find(|(k, n, t)| k == "fence_succeeded" && *n == old && *t >= crash_ms)
        .unwrap_or_else(|| panic!("{old} was not fenced: {ev:?}"))
        .2;
    let promotions: Vec<u64> = ev
        .iter()
        .filter(|(k, n, t)| k == "resource_promoted" && *n != old && *t >= crash_ms)
        .map(|e| e.2)
        .collect();
    assert!(!promotions.is_empty(), "no replica promoted: {ev:?}");
    assert!(
        promotions.iter().all(|t| *t >= fenced_at),
        "a replica was promoted before {old} was fenced: {ev:?}"
    );

    // The old primary's node back: its PostgreSQL rejoins as a replica of the new primary, and
    // `phalanx status` says so while it does — rewinding, or copying afresh when the rewind
    // fails (a crashed primary's own recovery can remove the WAL the rewind needs: the rewind
    // then fails within tens of ms, and a copy took 0.4 s once, shorter than the rewind's note
    // stays in view between two status calls).
    lab.revive(p).unwrap();
    pg.cluster.start(&old).unwrap();
    let deadline = Instant::now() + T;
    let notes = [format!("{old}: rejoining (pg_rewind)"), format!("{old}: copying from ")];
    loop {
        let (_, out, _) = pg.cluster.cli(&["status"]).unwrap();
        if notes.iter().any(|n| out.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "status never said {notes:?}:\n{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = wait_primary(&lab, 2, true, T).unwrap();
    assert_ne!(now, p, "the old primary came back as the primary");
    let seen = watch.finish().unwrap();
    assert!(
        seen.violations.is_empty(),
        "two holders of the write VIP: {:?}",
        seen.violations
    );
}

/// A partition isolates the primary (sync on): the isolated node loses quorum and stops taking
/// writes (no commit is acknowledged there after the majority moves on: with its synchronous
/// standby gone, nothing commits), the majority fences it and promotes, and every commit the
/// writer saw acknowledged, on either side, is on the new primary: nothing lost, nothing forked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_isolating_the_primary_loses_and_forks_nothing() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (pg, p) = serving(&lab, "on").await;
    let hosts = PhalanxPg::write_hosts();
    let watch = Watch::start(&lab, &[1, 2, 3], VIP.parse().unwrap(), PG_PORT);
    let w = writing(&lab, &hosts);
    let others: Vec<usize> = (1..=3).filter(|i| *i != p).collect();
    let cut_at = Instant::now();
    lab.partition(&[p], &others, false).unwrap();
    w.wait_recovered(cut_at, 20, T).unwrap();
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &hosts, &log).unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let now = primaries(&lab).unwrap();
    assert!(now.len() == 1 && now[0] != p, "primaries after the partition: {now:?}");
    let old = format!("n{p}");
    let ev = events(&pg, "fence_succeeded");
    assert!(ev.iter().any(|(_, n, _)| *n == old), "{old} was not fenced: {ev:?}");
    lab.heal_network().unwrap();
    let seen = watch.finish().unwrap();
    assert!(
        seen.violations.is_empty(),
        "two holders of the write VIP: {:?}",
        seen.violations
    );
}

/// Asynchronous replication, one replica's stream stalled (its TCP to the primary's PostgreSQL
/// dropped while heartbeats flow) while the primary writes more than `max_lag_bytes` (1 MiB):
/// when the primary's node crashes, the up-to-date replica is promoted, never the lagging one
/// (chosen as the replica a tie would favour: the lower node number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_never_promoted_while_an_up_to_date_one_is_reachable() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (mut pg, p) = serving(&lab, "off").await;
    let hosts = PhalanxPg::write_hosts();
    let replicas: Vec<usize> = (1..=3).filter(|i| *i != p).collect();
    let (lagging, fresh) = (replicas[0], replicas[1]);
    lab.block_tcp(lagging, p, PG_PORT).unwrap();
    // 4 MiB of rows the lagging replica does not receive.
    sql_primary(
        &lab,
        &hosts,
        &["create table filler as select g, repeat('x', 1000) as pad from generate_series(1, 4000) g"],
    )
    .unwrap();
    // Both replicas' positions published (monitor every second): the fresh one's moved past
    // the lagging one's by more than max_lag_bytes.
    let deadline = Instant::now() + T;
    loop {
        let st = pg.cluster.statuses().await;
        let pos = |i: usize| -> Option<u64> {
            let s = st.values().next()?;
            let n = s.nodes.iter().find(|n| n.name == format!("n{i}"))?;
            let v = n.attrs.get("pgsql-position-pg")?;
            v.split(':').nth(1)?.parse().ok()
        };
        if let (Some(a), Some(b)) = (pos(lagging), pos(fresh)) {
            if b > a + 2 * 1024 * 1024 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "positions not published: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lab.crash(p).unwrap();
    pg.cluster.reap(&format!("n{p}")).unwrap();
    let deadline = Instant::now() + T;
    let now = loop {
        if let [n] = primaries(&lab).unwrap()[..] {
            break n;
        }
        assert!(Instant::now() < deadline, "no new primary");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(now, fresh, "n{lagging} (lagging) was promoted instead of n{fresh}");
    // The write VIP follows the promotion (it starts after it).
    let rows = loop {
        match sql_primary(&lab, &hosts, &["select count(*) from filler"]) {
            Ok(rows) => break rows,
            Err(e) => assert!(Instant::now() < deadline, "the write VIP reaches no primary: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows, vec!["4000".to_string()]);
    lab.heal_network().unwrap();
}

/// `phalanx drill kill-node --resource db --probe postgres://…` (sync on): the drill powers off
/// the primary's node through the cluster's fence device, probes the write VIP with new
/// connections to a primary, commits through it meanwhile, and reports the RTO and the
/// acknowledged commits lost (none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_node_drill_reports_the_rto_and_no_lost_commit() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (pg, p) = serving(&lab, "on").await;
    let url = format!("postgres://postgres@{VIP}:{PG_PORT}/postgres");
    let (code, out, err) = pg
        .cluster
        .cli(&[
            "drill",
            "kill-node",
            "--resource",
            "db",
            "--probe",
            &url,
            "--settle",
            "60s",
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = &r["runs"][0];
    assert_eq!(
        run["from"],
        format!("n{p}"),
        "the primary's node is the one taken out: {r:#}"
    );
    assert!(run["rto_ms"].as_u64().is_some(), "the write address came back: {r:#}");
    let acked = run["session_writes_acked"].as_u64().unwrap_or(0);
    assert!(acked > 0, "commits acknowledged: {r:#}");
    assert_eq!(r["rpo_writes"], 0, "no acknowledged commit lost: {r:#}");
    eprintln!(
        "drill kill-node of n{p}: RTO {} ms, {acked} commits acknowledged, 0 lost",
        run["rto_ms"]
    );
    let (code, human, _) = pg.cluster.cli(&["events", "--kind", "drill_ended"]).unwrap();
    assert_eq!(code, 0);
    assert!(!human.trim().is_empty(), "the drill's end is in the history");
}

/// PAF (`ocf:heartbeat:pgsqlms` from Debian's resource-agents-paf, written for Pacemaker) runs
/// unchanged: it calls Pacemaker's tools (`crm_node`, `crm_master`, `attrd_updater`,
/// `crm_resource`), which the daemon provides (`phalanx::pcmk_shim`), and needs clone
/// notifications. The instance that was a primary when shut down sets its promotion score and
/// is promoted; the others start as its replicas through the write VIP; monitors answer 8 and
/// 0. Then the primary's node crashes: after the fence PAF's notifications elect the replica
/// with the highest LSN, it is promoted, and every acknowledged commit is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paf_runs_unchanged_starts_promotes_and_fails_over() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut paf = phalanx_lab::pg_lab::PafPg::start(&lab, &exe()).await.unwrap();
    let p = wait_primary(&lab, 2, false, T).unwrap_or_else(|e| {
        let (_, out, _) = paf.cluster.cli(&["status"]).unwrap();
        panic!("{e:#}\n{}\n{out}", phalanx_lab::pg_lab::replication_report(&lab))
    });
    assert_eq!(p, 1, "the instance that was the primary is promoted");
    let hosts = PhalanxPg::write_hosts();
    sql_primary(&lab, &hosts, &["create table acks (id bigint primary key)"]).unwrap();
    // PAF's own promotion scores, written through the shims: the replicas' by the primary's
    // monitor.
    let deadline = Instant::now() + T;
    loop {
        let st = paf.cluster.statuses().await;
        let scored = st.values().next().is_some_and(|s| {
            s.nodes
                .iter()
                .filter(|n| n.attrs.get("master-pgsqld").is_some_and(|v| v.parse::<i64>().is_ok()))
                .count()
                == 3
        });
        if scored {
            break;
        }
        assert!(Instant::now() < deadline, "PAF set no promotion scores: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let w = writing(&lab, &hosts);
    let crash_at = Instant::now();
    lab.crash(p).unwrap();
    paf.cluster.reap(&format!("n{p}")).unwrap();
    w.wait_recovered(crash_at, 20, T).unwrap();
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &hosts, &log).unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let now = primaries(&lab).unwrap();
    assert!(now.len() == 1 && now[0] != p, "primaries after the crash: {now:?}");
    eprintln!(
        "PAF: n{p} crashed, n{} promoted, write outage {:?}",
        now[0],
        phalanx_lab::pg_lab::write_outage(&log, crash_at)
    );
}

/// Debian's `ocf:heartbeat:pgsql` (resource-agents, written for Pacemaker) runs unchanged with
/// `rep_mode = "sync"`: it reads `crm_mon -1 --output-as=xml` and writes node attributes and
/// promotion scores with `crm_attribute` (the daemon's shims). Every instance starts as a hot
/// standby; the agent's monitors compare WAL positions and give the newest the promotion score
/// 1000; phalanx promotes it and moves the write VIP there; the others stream from it through
/// the VIP and the agent makes one of them synchronous (score 100, the other -INFINITY).
/// Monitors answer 8 and 0 (`pgsql-status` PRI and HS:sync). Then the primary's node crashes:
/// after the fence the synchronous standby is promoted (never the asynchronous one: its
/// -INFINITY holds) and every acknowledged commit is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_pgsql_agent_runs_unchanged_starts_promotes_and_fails_over() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut ra = phalanx_lab::pg_lab::OcfPgsql::start(&lab, &exe()).await.unwrap();
    let report = |cluster: &phalanx::harness::LocalCluster| {
        let (_, out, _) = cluster.cli(&["status"]).unwrap();
        format!("{}\n{out}", phalanx_lab::pg_lab::replication_report(&lab))
    };
    let p = wait_primary(&lab, 2, true, T).unwrap_or_else(|e| panic!("{e:#}\n{}", report(&ra.cluster)));
    let hosts = PhalanxPg::write_hosts();
    sql_primary(&lab, &hosts, &["create table acks (id bigint primary key)"]).unwrap();
    // The agent's own view, through the shims: the primary PRI, one replica HS:sync with
    // score 100, the other HS:async with -INFINITY.
    let deadline = Instant::now() + T;
    let sync_standby = loop {
        let st = ra.cluster.statuses().await;
        let attr = |n: &str, k: &str| -> String {
            st.values()
                .next()
                .and_then(|s| s.nodes.iter().find(|x| x.name == n)?.attrs.get(k).cloned())
                .unwrap_or_default()
        };
        let others: Vec<String> = (1..=3).filter(|i| *i != p).map(|i| format!("n{i}")).collect();
        let sync: Vec<&String> = others.iter().filter(|n| attr(n, "pgsql-status") == "HS:sync").collect();
        let asyn: Vec<&String> = others
            .iter()
            .filter(|n| attr(n, "pgsql-status") == "HS:async")
            .collect();
        if attr(&format!("n{p}"), "pgsql-status") == "PRI"
            && sync.len() == 1
            && asyn.len() == 1
            && attr(sync[0], "master-pgsql") == "100"
            && attr(asyn[0], "master-pgsql") == "-INFINITY"
        {
            break sync[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the agent's attributes never settled: {:?}",
            st.values()
                .next()
                .map(|s| s.nodes.iter().map(|n| (&n.name, &n.attrs)).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let w = writing(&lab, &hosts);
    let crash_at = Instant::now();
    lab.crash(p).unwrap();
    ra.cluster.reap(&format!("n{p}")).unwrap();
    w.wait_recovered(crash_at, 20, T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", report(&ra.cluster)));
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &hosts, &log).unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let now = primaries(&lab).unwrap();
    assert_eq!(
        now.iter().map(|i| format!("n{i}")).collect::<Vec<_>>(),
        std::slice::from_ref(&sync_standby),
        "the synchronous standby is the new primary"
    );
    eprintln!(
        "ocf:heartbeat:pgsql: n{p} crashed, {sync_standby} promoted, write outage {:?}",
        phalanx_lab::pg_lab::write_outage(&log, crash_at)
    );
    // The crashed primary's `PGSQL.lock` (the agent's, by design: "my data may be
    // inconsistent") refuses its start when the node is back: the refusal and its reason show
    // in status, nothing else moves, and no healthy node is fenced for it.
    let old = format!("n{p}");
    let fenced_before = ra.cluster.fence_events().len();
    lab.revive(p).unwrap();
    ra.cluster.start(&old).unwrap();
    let reason = ra
        .cluster
        .wait_for(T, "the old primary's start refused", |st| {
            let s = st.get(&sync_standby)?;
            let r = s.resources.iter().find(|r| r.id == "pgsql")?;
            let e = r.last_error.clone()?;
            (r.failures.get(&old).copied().unwrap_or(0) > 0 && e.contains("PGSQL.lock")).then_some(e)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", report(&ra.cluster)));
    eprintln!("ocf:heartbeat:pgsql on {old} after its crash: {reason}");
    assert_eq!(primaries(&lab).unwrap(), now, "the primary stays");
    assert_eq!(ra.cluster.fence_events().len(), fenced_before, "no node fenced for it");
}

/// HAProxy configured as Patroni documents it (`option httpchk OPTIONS /primary`, `/replica`
/// for reads, each server checked on its node's health port) routes through phalanx
/// unchanged: writes reach the primary and reads a replica; the primary's node crashes under
/// the writer (which connects through HAProxy only), HAProxy's checks follow the promotion,
/// and every acknowledged commit is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_configured_for_patroni_routes_writes_and_reads_across_a_failover() {
    use phalanx_lab::pg_lab::{in_recovery_at, PatroniHaproxy, HAPROXY_PRIMARY, HAPROXY_REPLICAS};
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (mut pg, p) = serving(&lab, "on").await;
    let _haproxy = PatroniHaproxy::start(&lab, &pg.dirs.root).unwrap();
    let haproxy_log = pg.dirs.root.join("haproxy.log");
    let routed = |host: &str, replica: bool| {
        let deadline = Instant::now() + T;
        loop {
            let got = in_recovery_at(&lab, host).unwrap();
            if got == Some(replica) {
                return;
            }
            let log = std::fs::read_to_string(&haproxy_log).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "{host}: {got:?}, not in recovery = {replica}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    routed(HAPROXY_PRIMARY, false);
    routed(HAPROXY_REPLICAS, true);
    let hosts = vec![HAPROXY_PRIMARY.to_string()];
    let w = writing(&lab, &hosts);
    let crash_at = Instant::now();
    lab.crash(p).unwrap();
    pg.cluster.reap(&format!("n{p}")).unwrap();
    w.wait_recovered(crash_at, 20, T).unwrap();
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &PhalanxPg::write_hosts(), &log).unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    routed(HAPROXY_REPLICAS, true);
    eprintln!(
        "HAProxy (Patroni's checks, inter 500ms fall 3 rise 2): n{p} crashed, write outage through it {:?}",
        phalanx_lab::pg_lab::write_outage(&log, crash_at)
    );
}

/// `phalanx resource switchover db` under write load (sync on): the primary moves to the
/// synchronous standby, nothing acknowledged is lost, and the writer sees one pause (a single
/// run of failed attempts: the write VIP leaves before the demotion and comes back after the
/// promotion), whose length is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_write_load_loses_nothing_and_pauses_once() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (pg, p) = serving(&lab, "on").await;
    let hosts = PhalanxPg::write_hosts();
    let w = writing(&lab, &hosts);
    let at = Instant::now();
    let (code, out, err) = pg.cluster.cli(&["resource", "switchover", "db"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    w.wait_acked_after(Instant::now(), 20, T).unwrap();
    let log = w.finish().unwrap();
    let lost = lost_commits(&lab, &hosts, &log).unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let after: Vec<bool> = log.iter().filter(|o| o.sent >= at).map(|o| o.acked.is_some()).collect();
    let pauses = after.windows(2).filter(|w| w[0] && !w[1]).count() + usize::from(after.first() == Some(&false));
    assert!(pauses <= 1, "the writer paused {pauses} times: {after:?}");
    let now = primaries(&lab).unwrap();
    assert!(now.len() == 1 && now[0] != p, "primaries after the switchover: {now:?}");
    eprintln!(
        "switchover n{p} -> n{}: {}; write pause {:?}",
        now[0],
        out.trim(),
        phalanx_lab::pg_lab::write_outage(&log, at)
    );
}

//! Which instances of a promotable clone may be promoted, best first: the current primary (it
//! stays), then by data position for the built-in `pgsql` agent (the highest timeline and LSN
//! its monitor published), then by promotion score (the node attribute `master-<rsc>`, as
//! Pacemaker's agents set it; negative: never), then placement score, then name.
//!
//! Never the wrong replica (issue 18): once any placed `pgsql` instance has published a
//! position, only those within `max_lag_bytes` of the most advanced position known (every
//! placed instance's and the old primary's last one), on its timeline, are candidates. A
//! published position is never ahead of the truth, so a stale one can only hold a promotion
//! back, never let a lagging replica through. With `sync = "on"|"strict"`, the synchronous
//! standby the last primary recorded (the record of the highest timeline) is the only
//! candidate.
//!
//! Without a recorded synchronous standby (`sync = "off"`), the most advanced *known* position
//! may still be behind the truth: a monitor publishes what its replica received at its last
//! run. So after the loss of a node, while no instance is promoted on an online node, nobody is
//! promoted until 1.5 monitor intervals have passed since the loss: by then every replica's
//! monitor has run since the primary went silent and published the last position it received
//! (what it receives cannot grow after that). A resource without a monitor is not held.

use super::context::Ctx;
use crate::model::Role;
use crate::pgsql;
use crate::resources::{params_on, AgentSpec, CloneSpec};
use std::collections::BTreeMap;

/// A node's promotion score for `rsc` (`master-<rsc>`, `-INFINITY` and `INFINITY` as Pacemaker
/// reads them; 0 when unset or unreadable).
fn promotion_score(ctx: &Ctx, node: &str, rsc: &str) -> i64 {
    ctx.node(node)
        .attrs
        .get(&format!("master-{rsc}"))
        .and_then(|v| crate::model::parse_score(v))
        .unwrap_or(0)
}

/// The position `node` published for `rsc`.
fn position(ctx: &Ctx, node: &str, rsc: &str) -> Option<(u32, u64)> {
    ctx.node(node)
        .attrs
        .get(&pgsql::position_attr(rsc))
        .and_then(|v| pgsql::parse_position(v))
}

/// Until when (unix ms) promotion waits for the replicas' positions, and the node whose loss
/// it follows (see the module comment); `None`: it need not wait.
fn positions_due(ctx: &Ctx, rsc: &str, current: &BTreeMap<String, Role>) -> Option<(u64, String)> {
    let interval = ctx.cfg.resources.primitives.get(rsc)?.monitor?.interval.as_millis() as u64;
    if current.iter().any(|(n, r)| *r == Role::Promoted && ctx.node(n).online) {
        return None;
    }
    // An offline node's `online_since_ms` is when it was lost.
    let (lost, at) = ctx
        .nodes
        .iter()
        .filter(|n| !ctx.node(n).online)
        .map(|n| (n, ctx.node(n).online_since_ms))
        .max_by_key(|(_, at)| *at)?;
    let due = at.saturating_add(interval.saturating_mul(3) / 2);
    (ctx.input.now_ms < due).then(|| (due, lost.clone()))
}

/// The chosen nodes that may be promoted, best first, and why others may not (a notice).
pub(super) fn candidates(
    ctx: &Ctx,
    clone: &CloneSpec,
    current: &BTreeMap<String, Role>,
    chosen: &[String],
    score_of: &dyn Fn(&String) -> i64,
) -> (Vec<String>, Option<String>) {
    let rsc = clone.resource.as_str();
    let prim = ctx.cfg.resources.primitives.get(rsc);
    let pg = prim.filter(|p| p.agent == AgentSpec::Pgsql);
    let is_primary = |n: &String| current.get(n) == Some(&Role::Promoted);
    let mut refused: Vec<String> = Vec::new();
    let mut ok: Vec<&String> = chosen
        .iter()
        .filter(|n| {
            let s = promotion_score(ctx, n, rsc);
            if s < 0 && !is_primary(n) {
                refused.push(format!("{n} (promotion score {s})"));
            }
            s >= 0 || is_primary(n)
        })
        .collect();
    // With `sync = "on"|"strict"`, the last primary's recorded synchronous standby holds
    // every acknowledged commit: it alone may replace it (whatever its published position,
    // which may be stale), and nobody while it is unreachable.
    // `sync` and `max_lag_bytes` as the nodes read them (a param may be given per node only,
    // `pgdata@n1`: the first node whose params are whole).
    let params = pg.and_then(|p| {
        ctx.nodes
            .iter()
            .find_map(|n| pgsql::Params::parse(&params_on(&p.params, n)).ok())
    });
    let recorded = params.as_ref().filter(|x| x.sync != pgsql::Sync::Off).and_then(|_| {
        let key = pgsql::sync_attr(rsc);
        ctx.nodes
            .iter()
            .filter_map(|n| ctx.node(n).attrs.get(&key).and_then(|v| pgsql::parse_sync(v)))
            .max_by_key(|(tl, _)| *tl)
            .map(|(_, n)| n.to_string())
            .filter(|n| !n.is_empty())
    });
    if let Some(r) = &recorded {
        ok.retain(|n| {
            let keep = is_primary(n) || *n == r;
            if !keep {
                refused.push(format!("{n} (not the synchronous standby, {r})"));
            }
            keep
        });
    } else if let Some((due, lost)) = pg.and(positions_due(ctx, rsc, current)) {
        let wait = due - ctx.input.now_ms;
        return (
            Vec::new(),
            Some(format!(
                "waiting {wait} ms for the replicas' positions after {lost}'s loss"
            )),
        );
    } else if pg.is_some() {
        let max_lag = params
            .as_ref()
            .map_or(pgsql::DEFAULT_MAX_LAG_BYTES, |x| x.max_lag_bytes);
        let known: Vec<(u32, u64)> = chosen
            .iter()
            .chain(current.iter().filter(|(_, r)| **r == Role::Promoted).map(|(n, _)| n))
            .filter_map(|n| position(ctx, n, rsc))
            .collect();
        if let Some(best) = known.iter().max().copied() {
            ok.retain(|n| {
                if is_primary(n) {
                    return true;
                }
                match position(ctx, n, rsc) {
                    Some((tl, lsn)) if tl == best.0 && best.1 - lsn <= max_lag => true,
                    Some((tl, lsn)) if tl == best.0 => {
                        refused.push(format!("{n} ({} behind)", pgsql::human_bytes(best.1 - lsn)));
                        false
                    }
                    Some((tl, _)) => {
                        refused.push(format!("{n} (timeline {tl}, not {})", best.0));
                        false
                    }
                    None => {
                        refused.push(format!("{n} (no position known)"));
                        false
                    }
                }
            });
        }
    }
    ok.sort_by(|a, b| {
        is_primary(b)
            .cmp(&is_primary(a))
            .then_with(|| match pg {
                Some(_) => position(ctx, b, rsc).cmp(&position(ctx, a, rsc)),
                None => std::cmp::Ordering::Equal,
            })
            .then_with(|| promotion_score(ctx, b, rsc).cmp(&promotion_score(ctx, a, rsc)))
            .then_with(|| score_of(b).cmp(&score_of(a)))
            .then_with(|| a.cmp(b))
    });
    let note = (!refused.is_empty()).then(|| format!("not promotable: {}", refused.join(", ")));
    (ok.into_iter().cloned().collect(), note)
}

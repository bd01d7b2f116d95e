//! Unit tests of the health state machine (properties are in `tests/lb_props.rs`).

use super::*;
use crate::lb::agent::AgentReply;

fn cfg() -> HealthConfig {
    HealthConfig {
        rise: 2,
        fall: 3,
        interval_ms: 1000,
        fast_interval_ms: 200,
        down_interval_ms: 5000,
        slowstart_ms: 10_000,
        error_limit: 4,
    }
}

const UP: BackendState = BackendState::Up;
const DOWN: BackendState = BackendState::Down;

#[test]
fn fall_failures_take_it_down_rise_successes_bring_it_up() {
    let c = cfg();
    let mut h = Health::new(true);
    assert_eq!(h.record_check(&c, CheckResult::Fail, 1), None);
    assert_eq!(h.record_check(&c, CheckResult::Fail, 2), None);
    assert_eq!(
        h.record_check(&c, CheckResult::Fail, 3),
        Some(Transition { from: UP, to: DOWN })
    );
    assert_eq!(h.record_check(&c, CheckResult::Pass, 4), None);
    assert_eq!(
        h.record_check(&c, CheckResult::Fail, 5),
        None,
        "a failure resets the rise streak"
    );
    assert_eq!(h.record_check(&c, CheckResult::Pass, 6), None);
    assert_eq!(
        h.record_check(&c, CheckResult::Pass, 7),
        Some(Transition { from: DOWN, to: UP })
    );
}

#[test]
fn a_success_resets_the_fall_streak() {
    let c = cfg();
    let mut h = Health::new(true);
    for t in 0..10 {
        assert_eq!(h.record_check(&c, CheckResult::Fail, t * 3), None);
        assert_eq!(h.record_check(&c, CheckResult::Fail, t * 3 + 1), None);
        assert_eq!(h.record_check(&c, CheckResult::Pass, t * 3 + 2), None);
    }
    assert_eq!(h.state(), UP);
}

#[test]
fn intervals_follow_the_state() {
    let c = cfg();
    let mut h = Health::new(true);
    assert_eq!(h.next_check_at(&c, 50), 50, "first check at once");
    h.record_check(&c, CheckResult::Pass, 100);
    assert_eq!(h.next_check_at(&c, 100), 1100);
    h.record_check(&c, CheckResult::Fail, 1100);
    assert_eq!(h.next_check_at(&c, 1100), 1300, "going down: fast");
    h.record_check(&c, CheckResult::Fail, 1300);
    h.record_check(&c, CheckResult::Fail, 1500);
    assert_eq!(h.state(), DOWN);
    assert_eq!(h.next_check_at(&c, 1500), 6500, "down: slow");
    h.record_check(&c, CheckResult::Pass, 6500);
    assert_eq!(h.next_check_at(&c, 6500), 6700, "going up: fast");
    h.record_check(&c, CheckResult::Pass, 6700);
    assert_eq!(h.next_check_at(&c, 6700), 7700);
    h.observe(&c, Observation::ServerError, 7000);
    assert_eq!(h.next_check_at(&c, 7000), 6900, "passive errors: fast (and overdue)");
}

#[test]
fn passive_errors_mark_it_down_until_rise_checks_pass() {
    let c = cfg();
    let mut h = Health::new(true);
    for t in 0..3 {
        assert_eq!(h.observe(&c, Observation::ConnError, t), None);
    }
    assert_eq!(
        h.observe(&c, Observation::Success, 3),
        None,
        "a success resets the count"
    );
    for t in 4..7 {
        assert_eq!(h.observe(&c, Observation::ServerError, t), None);
    }
    assert_eq!(
        h.observe(&c, Observation::ConnError, 7),
        Some(Transition { from: UP, to: DOWN })
    );
    assert_eq!(
        h.observe(&c, Observation::Success, 8),
        None,
        "live success does not bring it back"
    );
    h.record_check(&c, CheckResult::Pass, 9);
    assert_eq!(
        h.record_check(&c, CheckResult::Pass, 10),
        Some(Transition { from: DOWN, to: UP })
    );
    let off = HealthConfig {
        error_limit: 0,
        ..cfg()
    };
    let mut h = Health::new(true);
    assert!((0..100).all(|t| h.observe(&off, Observation::ConnError, t).is_none()));
}

#[test]
fn operator_and_agent_states_combine_by_severity() {
    let c = cfg();
    let mut h = Health::new(true);
    let agent = |l: &str| AgentReply::parse(l).unwrap();
    assert_eq!(
        h.set_operator(AdminState::Drain, 1),
        Some(Transition {
            from: UP,
            to: BackendState::Drain
        })
    );
    assert_eq!(
        h.record_agent(&agent("ready"), 2),
        None,
        "the agent's ready does not lift the operator's drain"
    );
    assert_eq!(h.record_agent(&agent("maint"), 3).unwrap().to, BackendState::Maint);
    assert_eq!(h.set_operator(AdminState::Ready, 4), None, "still maint by the agent");
    assert_eq!(h.record_agent(&agent("ready"), 5).unwrap().to, UP);
    assert_eq!(h.record_agent(&agent("down"), 6).unwrap().to, DOWN);
    assert_eq!(
        h.set_operator(AdminState::Maint, 7).unwrap().to,
        BackendState::Maint,
        "maint beats down"
    );
    assert_eq!(
        h.set_operator(AdminState::Drain, 8).unwrap().to,
        DOWN,
        "down beats drain"
    );
    for t in 0..5 {
        h.record_check(&c, CheckResult::Pass, 9 + t);
    }
    assert_eq!(h.state(), DOWN, "checks cannot override the agent's down");
    assert_eq!(h.record_agent(&agent("up"), 20).unwrap().to, BackendState::Drain);
    assert_eq!(h.operator(), AdminState::Drain);
    assert!(h.checks_up());
}

#[test]
fn agent_percentage_scales_the_weight() {
    let c = HealthConfig {
        slowstart_ms: 0,
        ..cfg()
    };
    let mut h = Health::new(true);
    assert_eq!(h.effective_weight(&c, 10, 0), 160);
    h.record_agent(&AgentReply::parse("50%").unwrap(), 0);
    assert_eq!(h.effective_weight(&c, 10, 0), 80);
    h.record_agent(&AgentReply::parse("0%").unwrap(), 0);
    assert_eq!(h.effective_weight(&c, 10, 0), 0);
    assert_eq!(h.effective_weight(&c, 1000, 0), 0);
    h.record_agent(&AgentReply::parse("100%").unwrap(), 0);
    assert_eq!(h.effective_weight(&c, 1000, 0), 4096, "capped at 256 units");
}

#[test]
fn slowstart_ramps_after_coming_back_not_at_start() {
    let c = cfg();
    let mut h = Health::new(true);
    assert_eq!(h.effective_weight(&c, 1, 0), 16, "no ramp at start-up");
    for t in 0..3 {
        h.record_check(&c, CheckResult::Fail, t);
    }
    h.record_check(&c, CheckResult::Pass, 100);
    h.record_check(&c, CheckResult::Pass, 1000);
    assert_eq!(h.effective_weight(&c, 1, 1000), 1, "starts at the minimum");
    assert_eq!(h.effective_weight(&c, 1, 1001), 1);
    assert_eq!(h.effective_weight(&c, 1, 6000), 8, "half way");
    assert_eq!(h.effective_weight(&c, 1, 10_999), 16);
    assert_eq!(h.effective_weight(&c, 1, 11_000), 16);
    assert_eq!(h.effective_weight(&c, 0, 6000), 0);
    let b = h.view(&c, BackendId(7), 100, 3, 6000);
    assert_eq!((b.weight, b.in_flight, b.state), (800, 3, UP));
    // Leaving maint ramps too; drain → ready does not.
    h.set_operator(AdminState::Maint, 20_000);
    h.set_operator(AdminState::Ready, 30_000);
    assert_eq!(h.effective_weight(&c, 1, 30_000), 1);
    h.set_operator(AdminState::Drain, 50_000);
    h.set_operator(AdminState::Ready, 50_001);
    assert_eq!(h.effective_weight(&c, 1, 50_001), 16);
}

#[test]
fn config_validation_and_serde() {
    assert_eq!(HealthConfig::default().validate(), Ok(()));
    let bad = HealthConfig {
        fall: 0,
        ..HealthConfig::default()
    };
    assert_eq!(bad.validate(), Err(HealthError::Zero { field: "fall" }));
    assert_eq!(bad.validate().unwrap_err().to_string(), "fall must be at least 1");
    let mut h = Health::new(false);
    h.set_operator(AdminState::Drain, 5);
    let json = serde_json::to_string(&h).unwrap();
    assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
}

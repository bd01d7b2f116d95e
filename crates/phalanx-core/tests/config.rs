//! Config validation: one test per kind of problem, each checking the reported line and column.

use phalanx_core::config::{check, parse};
use phalanx_core::diag::Severity;
use phalanx_core::duration::{format_duration, parse_duration};
use std::time::Duration;

const GOOD: &str = r#"[cluster]
name = "shop"
heartbeat_interval = "100ms"
dead_after = 3
no_quorum_policy = "stop"

[[node]]
name = "n1"
links = ["127.0.0.1:7401", "127.0.1.1:7401"]
api = "127.0.0.1:8401"

[[node]]
name = "n2"
links = ["127.0.0.1:7402", "127.0.1.1:7402"]

[[node]]
name = "n3"
links = ["127.0.0.1:7403", "127.0.1.1:7403"]
api = "127.0.0.1:8403"
"#;

/// The single error of `src` as (line, col, message).
fn one_error(src: &str) -> (usize, usize, String) {
    let c = check(src);
    let errs: Vec<_> = c.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    assert_eq!(errs.len(), 1, "expected one error, got {:#?}", c.diagnostics);
    assert!(c.config.is_none());
    (errs[0].line, errs[0].col, errs[0].message.clone())
}

#[test]
fn a_good_config_parses_with_defaults() {
    let c = check(GOOD);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let cfg = c.config.unwrap();
    assert_eq!(cfg.cluster.name, "shop");
    assert_eq!(cfg.cluster.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(cfg.cluster.detection_time(), Duration::from_millis(300));
    assert_eq!(cfg.cluster.key_file, "phalanx.key");
    assert_eq!(cfg.nodes.len(), 3);
    assert_eq!(
        cfg.nodes[1].api.to_string(),
        "127.0.0.1:7480",
        "default api port on the first link's IP"
    );
    assert_eq!(cfg.nodes[0].links.len(), 2);
}

#[test]
fn syntax_error_is_located() {
    let src = "[cluster]\nname = \"shop\nheartbeat_interval = \"100ms\"\n";
    let (line, col, msg) = one_error(src);
    assert_eq!(line, 2, "{msg}");
    assert!(col >= 8, "col {col}: {msg}");
}

#[test]
fn unknown_key_is_located() {
    let src = GOOD.replace("dead_after = 3", "dead_after = 3\nheartbeat_intervall = \"1s\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (5, 1), "{msg}");
    assert!(msg.contains("heartbeat_intervall"), "{msg}");
}

#[test]
fn unknown_key_in_a_node_is_located() {
    // (api kept: with it gone, n3's default api would collide with n2's, a second error.)
    let src = GOOD.replace("api = \"127.0.0.1:8403\"", "adress = \"x\"\napi = \"127.0.0.1:8403\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (19, 1), "{msg}");
    assert!(msg.contains("adress"), "{msg}");
}

#[test]
fn a_node_may_not_be_called_witness() {
    let src = GOOD.replace("name = \"n3\"", "name = \"witness\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (17, 8), "{msg}");
    assert!(msg.contains("reserved for the [witness]"), "{msg}");
}

#[test]
fn duplicate_node_name() {
    let src = GOOD.replace("name = \"n3\"", "name = \"n1\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (17, 8), "{msg}");
    assert!(
        msg.contains("duplicate node name \"n1\"") && msg.contains("line 8"),
        "{msg}"
    );
}

#[test]
fn duplicate_link_address() {
    let src = GOOD.replace("\"127.0.0.1:7403\"", "\"127.0.0.1:7402\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (18, 10), "{msg}");
    assert!(msg.contains("127.0.0.1:7402") && msg.contains("n2"), "{msg}");
}

#[test]
fn api_colliding_with_a_link() {
    let src = GOOD.replace("api = \"127.0.0.1:8403\"", "api = \"127.0.0.1:7401\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (19, 7), "{msg}");
    assert!(msg.contains("n1"), "{msg}");
}

#[test]
fn bad_duration() {
    let src = GOOD.replace("\"100ms\"", "\"100 parsecs\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (3, 22), "{msg}");
    assert!(msg.contains("not a duration"), "{msg}");
}

#[test]
fn heartbeat_outside_bounds() {
    for bad in ["5ms", "11s"] {
        let src = GOOD.replace("\"100ms\"", &format!("\"{bad}\""));
        let (line, col, msg) = one_error(&src);
        assert_eq!((line, col), (3, 22), "{msg}");
        assert!(msg.contains("outside the allowed 10ms..10s"), "{msg}");
    }
    for ok in ["10ms", "10s"] {
        let src = GOOD.replace("\"100ms\"", &format!("\"{ok}\""));
        assert!(parse(&src).is_ok(), "{ok} is allowed");
    }
}

#[test]
fn bad_dead_after_and_policy() {
    let (line, col, _) = one_error(&GOOD.replace("dead_after = 3", "dead_after = 0"));
    assert_eq!((line, col), (4, 14));
    let (line, col, msg) = one_error(&GOOD.replace("\"stop\"", "\"panic\""));
    assert_eq!((line, col), (5, 20));
    assert!(msg.contains("stop, freeze, demote, ignore"), "{msg}");
}

#[test]
fn node_without_links() {
    let src = GOOD.replace("links = [\"127.0.0.1:7402\", \"127.0.1.1:7402\"]\n", "");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (12, 1), "{msg}");
    assert!(msg.contains("node n2 has no `links`"), "{msg}");
    let src = GOOD.replace("links = [\"127.0.0.1:7402\", \"127.0.1.1:7402\"]", "links = []");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (14, 9), "{msg}");
}

#[test]
fn bad_link_address() {
    let src = GOOD.replace("\"127.0.1.1:7402\"", "\"localhost\"");
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (14, 28), "{msg}");
    assert!(msg.contains("not an IP:PORT"), "{msg}");
}

#[test]
fn bad_node_name() {
    let (line, col, msg) = one_error(&GOOD.replace("name = \"n2\"", "name = \"n 2\""));
    assert_eq!((line, col), (13, 8), "{msg}");
}

#[test]
fn missing_cluster_section() {
    let (line, col, msg) = one_error("[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:1\"]\n");
    assert_eq!((line, col), (1, 1));
    assert!(msg.contains("[cluster]"), "{msg}");
}

#[test]
fn two_nodes_without_witness_is_a_warning_that_explains_the_split() {
    let two = GOOD.split("[[node]]\nname = \"n3\"").next().unwrap();
    let c = check(two);
    assert!(c.config.is_some(), "a warning is not an error: {:?}", c.diagnostics);
    assert_eq!(c.diagnostics.len(), 1);
    let d = &c.diagnostics[0];
    assert_eq!((d.severity, d.line, d.col), (Severity::Warning, 1, 1));
    assert!(
        d.message.contains("witness") && d.message.contains("neither side"),
        "{}",
        d.message
    );
    let with_witness = format!("{two}\n[witness]\naddress = \"127.0.0.1:7499\"\n");
    assert!(check(&with_witness).diagnostics.is_empty());
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let src = GOOD
        .replace("\"100ms\"", "\"fast\"")
        .replace("name = \"n3\"", "name = \"n1\"")
        .replace("\"stop\"", "\"nope\"");
    let c = check(&src);
    let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    let lines: Vec<usize> = errors.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 5, 17], "{:#?}", c.diagnostics);
    let rendered = errors[0].render("shop.toml");
    assert!(rendered.starts_with("shop.toml:3:22: error: "), "{rendered}");
}

#[test]
fn fence_devices_and_levels_are_validated() {
    let src = format!(
        "{GOOD}\n[[fence_device]]\nname = \"pdu\"\nagent = \"fence_apc\"\nparams = {{ ip = \"10.0.0.9\" }}\nsecret_files = {{ password = \"/etc/phalanx/pdu.pass\" }}\nhost_map = {{ n1 = \"1\", n2 = 2 }}\n\n[[fence_level]]\ntarget = \"n1\"\nlevel = 1\ndevices = [\"pdu\"]\n"
    );
    let c = check(&src);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let cfg = c.config.expect("valid");
    let pdu = cfg.fence.device("pdu").expect("device");
    assert_eq!(pdu.plug("n2"), "2");
    assert_eq!(pdu.secret_files["password"], "/etc/phalanx/pdu.pass");
    assert!(cfg.fence.can_fence("n1") && !cfg.fence.can_fence("n3"));

    let bad = format!(
        "{GOOD}\n[[fence_device]]\nname = \"pdu\"\nagent = \"rm -rf\"\n\n[[fence_device]]\nname = \"sw\"\nagent = \"http-switch\"\nparams = {{ action = \"off\" }}\nhost_map = {{ n9 = \"1\" }}\n\n[[fence_level]]\ntarget = \"n1\"\nlevel = 1\ndevices = [\"nope\"]\n"
    );
    let c = check(&bad);
    let msgs: Vec<String> = c.diagnostics.iter().map(|d| d.render("f")).collect();
    for want in [
        "is not a fence-agents program",
        "is set by phalanx for each call",
        "needs params.url",
        "host_map names \"n9\", which is not a [[node]]",
        "no [[fence_device]] is named \"nope\"",
    ] {
        assert!(msgs.iter().any(|m| m.contains(want)), "{want} not in {msgs:#?}");
    }
}

#[test]
fn fencing_is_required_for_resources_unless_turned_off() {
    let rsc = "\n[[resource]]\nid = \"web\"\nagent = \"exec\"\nparams = { start = \"true\", stop = \"true\", monitor = \"true\" }\n";
    let c = check(&format!("{GOOD}{rsc}"));
    assert!(c.config.is_none());
    let msg = c
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .map(|d| d.message.clone());
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("nothing can fence n1, n2, n3")),
        "{msg:?}"
    );
    // A device for every node, the watchdog lease, or fencing off (warned) each make it valid.
    let device =
        "\n[[fence_device]]\nname = \"sw\"\nagent = \"http-switch\"\nparams = { url = \"http://127.0.0.1:7500\" }\n";
    assert!(check(&format!("{GOOD}{rsc}{device}")).config.is_some());
    let watchdog = GOOD.replace("[cluster]\n", "[cluster]\nfencing = \"watchdog\"\n");
    assert!(check(&format!("{watchdog}{rsc}")).config.is_some());
    let off = GOOD.replace("[cluster]\n", "[cluster]\nfencing = \"off\"\n");
    let c = check(&format!("{off}{rsc}"));
    assert!(c.config.is_some());
    assert!(c
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Warning && d.message.contains("split-brain")));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    for bad in [
        "",
        "100",
        "ms",
        "1..5s",
        ".5s",
        "5.s",
        "1e3ms",
        "-1s",
        "99999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
    }
    for d in ["100ms", "2s", "1.5s", "20ms"] {
        assert_eq!(format_duration(parse_duration(d).unwrap()), d);
    }
}

mod fuzz {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Arbitrary text never panics the parser, and every diagnostic has a valid position.
        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,300}") {
            let c = phalanx_core::config::check(&src);
            for d in &c.diagnostics {
                prop_assert!(d.line >= 1 && d.col >= 1);
            }
        }

        /// Mutations of a valid config never panic either.
        #[test]
        fn mutated_config_never_panics(cut in 0usize..400, insert in "[\\[\\]=\"a-z0-9 .:\\n]{0,12}") {
            let mut src = super::GOOD.to_string();
            let mut at = cut.min(src.len());
            while !src.is_char_boundary(at) { at -= 1; }
            src.insert_str(at, &insert);
            let _ = phalanx_core::config::check(&src);
        }
    }
}

#[test]
fn priority_fence_delay_and_watchdog_keys() {
    let src = GOOD.replace(
        "no_quorum_policy = \"stop\"",
        "no_quorum_policy = \"stop\"\nfencing = \"watchdog\"\npriority_fence_delay = \"5s\"\nwatchdog = \"/dev/watchdog\"\nwatchdog_timeout = \"10s\"",
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.cluster.priority_fence_delay, Duration::from_secs(5));
    assert_eq!(c.cluster.watchdog.as_deref(), Some("/dev/watchdog"));
    assert_eq!(
        c.cluster.lost_node_hold(),
        Some(Duration::from_secs(20)),
        "SBD's msgwait: twice the timeout"
    );
    let c = parse(GOOD).unwrap();
    assert_eq!(
        (c.cluster.priority_fence_delay, c.cluster.watchdog.clone()),
        (Duration::ZERO, None)
    );
    let (line, col, msg) = one_error(&GOOD.replace("dead_after = 3", "dead_after = 3\nwatchdog_timeout = \"500ms\""));
    assert_eq!((line, col), (5, 20), "{msg}");
    assert!(msg.contains("at least 1s"), "{msg}");
    let (line, _, msg) = one_error(&GOOD.replace("dead_after = 3", "dead_after = 3\npriority_fence_delay = \"soon\""));
    assert_eq!(line, 5, "{msg}");
}

/// Schema errors (an unknown key, a value of the wrong type) and semantic errors of every section
/// come out of one check, each at its own line and column: fixing one never reveals the next.
#[test]
fn schema_and_semantic_errors_come_together() {
    let src = GOOD
        .replace("dead_after = 3", "dead_after = \"three\"\nheartbeat = \"1s\"")
        .replace("\"stop\"", "\"nope\"")
        .replace("name = \"n3\"", "name = \"n1\"")
        .replace("api = \"127.0.0.1:8401\"", "api = \"127.0.0.1:8401\"\nport = 7")
        + "\n[[resource]]\nid = \"web\"\nagent = \"exec\"\ncolour = \"red\"\nmonitor = 5\n\n[widget]\nx = 1\n";
    let c = check(&src);
    assert!(c.config.is_none());
    let errors: Vec<(usize, usize, &str)> = c
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    let at = |line: usize, col: usize, text: &str| {
        assert!(
            errors
                .iter()
                .any(|(l, c, m)| (*l, *c) == (line, col) && m.contains(text)),
            "no error at {line}:{col} containing {text:?} in {errors:#?}"
        );
    };
    at(4, 14, "invalid type");
    at(5, 1, "unknown field `heartbeat`");
    at(6, 20, "no_quorum_policy \"nope\"");
    at(12, 1, "unknown field `port`");
    at(19, 8, "duplicate node name \"n1\"");
    at(26, 1, "unknown field `colour`");
    at(27, 11, "invalid type");
    at(29, 2, "unknown field `widget`");
}

#[test]
fn on_fail_lists_every_allowed_value() {
    let rsc = "\n[[resource]]\nid = \"web\"\nagent = \"exec\"\non_fail = \"reboot\"\n";
    let src = GOOD.replace("[cluster]\n", "[cluster]\nfencing = \"watchdog\"\n") + rsc;
    let (_, _, msg) = one_error(&src);
    for v in ["restart", "ban", "stop", "ignore", "fence"] {
        assert!(msg.contains(v), "{v} missing from: {msg}");
    }
}

/// The checks of this machine (fence programs, OCF agents, the key file) run on a config with
/// other errors too, so that their errors come in the same run; `allow_missing_agents` turns
/// the agent checks (not the key file's) into warnings.
#[test]
fn machine_checks_come_with_the_other_errors() {
    use phalanx_core::config::{check_machine, Machine};
    use phalanx_core::ocf::AgentMeta;
    use phalanx_core::resources::AgentSpec;
    struct Bare;
    impl Machine for Bare {
        fn ocf_meta(&mut self, _: &AgentSpec) -> Option<Result<AgentMeta, String>> {
            None
        }
        fn fence_program(&mut self, program: &str) -> Option<String> {
            Some(format!("{program} is not installed on this machine"))
        }
        fn key_file(&mut self, key_file: &str) -> Vec<(Severity, String)> {
            vec![(Severity::Error, format!("key file {key_file} does not exist"))]
        }
    }
    let src = GOOD.replace("\"stop\"", "\"nope\"")
        + "\n[[fence_device]]\nname = \"pdu\"\nagent = \"fence_nosuch\"\n\n[[resource]]\nid = \"d\"\nagent = \"ocf:heartbeat:Dumy\"\n";
    for allow in [false, true] {
        let mut c = check(&src);
        check_machine(&mut c, &src, &mut Bare, allow);
        assert!(c.config.is_none());
        let found: Vec<(Severity, usize, usize)> = c.diagnostics.iter().map(|d| (d.severity, d.line, d.col)).collect();
        let agents = if allow { Severity::Warning } else { Severity::Error };
        assert_eq!(
            found,
            vec![
                (Severity::Error, 1, 1), // the key file, not written: at [cluster]
                (Severity::Error, 5, 20),
                (agents, 23, 9),
                (agents, 27, 9)
            ],
            "{:#?}",
            c.diagnostics
        );
    }
}

/// A key set aside for its schema error is not reported again as missing.
#[test]
fn a_key_of_the_wrong_type_is_one_error_not_two() {
    let (line, col, msg) = one_error(&GOOD.replace("name = \"n2\"", "name = 2"));
    assert_eq!((line, col), (13, 8), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn alerts_parse_with_defaults_and_pacemakers_selects() {
    let src = format!(
        "{GOOD}\n[[alert]]\npath = \"/usr/share/pacemaker/alerts/alert_file.sh\"\nrecipient = \"/var/log/alerts.log\"\nselect_nodes = true\nselect_fencing = true\n\n[[alert]]\nid = \"pager\"\nwebhook = \"https://pager.example/hook\"\ntimeout = \"5s\"\nretries = 0\nkinds = [\"quorum\"]\n"
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.alerts.len(), 2);
    assert_eq!(c.alerts[0].id, "alert-1");
    assert_eq!(c.alerts[0].timeout, Duration::from_secs(30));
    assert_eq!(c.alerts[0].retries, 2);
    assert_eq!(
        c.alerts[0].kinds.iter().map(String::as_str).collect::<Vec<_>>(),
        ["fencing", "node"]
    );
    assert_eq!(c.alerts[1].id, "pager");
    assert_eq!(c.alerts[1].timeout, Duration::from_secs(5));
    assert_eq!(c.cluster.event_history, 10_000);
}

#[test]
fn alert_mistakes_are_located() {
    let base = GOOD.lines().count();
    let (line, _, msg) = one_error(&format!("{GOOD}\n[[alert]]\npath = \"alert.sh\"\n"));
    assert_eq!((line, msg.contains("absolute")), (base + 3, true), "{msg}");
    let (line, _, msg) = one_error(&format!("{GOOD}\n[[alert]]\npath = \"/a\"\nkinds = [\"nodes\"]\n"));
    assert_eq!(line, base + 4);
    assert!(msg.contains("\"nodes\" is not one of node, fencing"), "{msg}");
    let (_, _, msg) = one_error(&format!("{GOOD}\n[[alert]]\nrecipient = \"x\"\n"));
    assert!(msg.contains("needs a `path`"), "{msg}");
    let (line, _, msg) = one_error(&format!("{GOOD}\n[[alert]]\npath = \"/a\"\nwebhook = \"http://x\"\n"));
    assert_eq!((line, msg.contains("not both")), (base + 4, true), "{msg}");
    let (_, _, msg) = one_error(&GOOD.replace("dead_after = 3", "dead_after = 3\nevent_history = 5"));
    assert!(msg.contains("event_history 5 is outside"), "{msg}");
}

#[test]
fn the_slo_is_a_percentage_and_located_when_it_is_not() {
    let c = phalanx_core::config::parse(&GOOD.replace("dead_after = 3", "dead_after = 3\nslo = 99.95")).unwrap();
    assert_eq!(c.cluster.slo(), Some(99.95));
    assert_eq!(phalanx_core::config::parse(GOOD).unwrap().cluster.slo(), None);
    let at = GOOD.lines().position(|l| l.contains("dead_after = 3")).unwrap() + 2;
    for bad in ["100", "0", "-1", "150.5"] {
        let (line, _, msg) = one_error(&GOOD.replace("dead_after = 3", &format!("dead_after = 3\nslo = {bad}")));
        assert_eq!(line, at, "{msg}");
        assert!(msg.contains("is not a percentage above 0 and below 100"), "{msg}");
    }
}

#[test]
fn metrics_listen_is_an_address_of_its_own() {
    let with = |v: &str| {
        GOOD.replace(
            "api = \"127.0.0.1:8401\"\n",
            &format!("api = \"127.0.0.1:8401\"\nmetrics_listen = \"{v}\"\n"),
        )
    };
    let cfg = parse(&with("127.0.0.1:9664")).unwrap();
    assert_eq!(
        cfg.nodes[0].metrics_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9664")
    );
    assert_eq!(cfg.nodes[1].metrics_listen, None);
    let (line, _, msg) = one_error(&with("nowhere"));
    assert_eq!(line, 11, "{msg}");
    assert!(
        msg.contains("metrics_listen \"nowhere\" is not an IP:PORT address"),
        "{msg}"
    );
    let (_, _, msg) = one_error(&with("127.0.0.1:8403"));
    assert!(msg.contains("127.0.0.1:8403 is already used by node n1"), "{msg}");
}

#[test]
fn a_process_resource_needs_a_command_and_a_literal_check_tcp() {
    let src = format!(
        "{}\n[[resource]]\nid = \"api\"\nagent = \"process\"\nparams = {{ command = \"srv\", check_tcp = \"127.0.10.${{NODE}}:47000\" }}\n",
        GOOD.replace("[cluster]", "[cluster]\nfencing = \"off\"")
    );
    let (line, col, msg) = one_error(&src);
    assert_eq!((line, col), (22, 1), "{msg}");
    assert!(msg.contains("check_tcp") && msg.contains("no variables"), "{msg}");
    let src = format!(
        "{}\n[[resource]]\nid = \"api\"\nagent = \"process\"\n",
        GOOD.replace("[cluster]", "[cluster]\nfencing = \"off\"")
    );
    let (_, _, msg) = one_error(&src);
    assert!(msg.contains("needs a `command`"), "{msg}");
}

#[test]
fn the_sessions_section_has_defaults_and_located_mistakes() {
    let base = GOOD.replace("[cluster]", "[cluster]\nfencing = \"off\"");
    let c = check(&format!("{base}\n[sessions]\n")).config.expect("valid");
    let s = c.sessions.expect("on");
    assert_eq!((s.port, s.memory_limit, s.max_item_size), (11211, 64 << 20, 1 << 20));
    assert!(s.voters.is_empty() && s.listen.is_empty() && s.vip.is_none());
    let c = check(&format!(
        "{base}\n[sessions]\nport = 11300\nmemory_limit = \"1GiB\"\nmax_item_size = 2097152\nvoters = [\"n1\", \"n2\", \"n3\"]\nlisten = {{ n2 = \"127.0.0.9:11211\" }}\n"
    ))
    .config
    .expect("valid");
    let s = c.sessions.unwrap();
    assert_eq!((s.port, s.memory_limit, s.max_item_size), (11300, 1 << 30, 2 << 20));
    assert_eq!(s.voters, ["n1", "n2", "n3"]);
    assert_eq!(s.listen["n2"].to_string(), "127.0.0.9:11211");
    assert!(check(&base).config.unwrap().sessions.is_none(), "off unless written");

    let (line, col, msg) = one_error(&format!("{base}\n[sessions]\nmemory_limit = \"64 MB\"\n"));
    assert_eq!((line, col), (23, 16), "{msg}");
    assert!(msg.contains("not one of B, KiB, MiB, GiB"), "{msg}");
    let (_, _, msg) = one_error(&format!("{base}\n[sessions]\nvoters = [\"n1\", \"n9\"]\n"));
    assert!(msg.contains("\"n9\" is not a [[node]]"), "{msg}");
    let (_, _, msg) = one_error(&format!("{base}\n[sessions]\nvip = \"nope\"\n"));
    assert!(msg.contains("not a [[resource]] with agent = \"vip\""), "{msg}");
    let (_, _, msg) = one_error(&format!(
        "{base}\n[sessions]\nmemory_limit = \"1MiB\"\nmax_item_size = \"2MiB\"\n"
    ));
    assert!(msg.contains("above memory_limit"), "{msg}");
    let (_, _, msg) = one_error(&format!("{base}\n[sessions]\nport = 0\n"));
    assert!(msg.contains("outside 1..65535"), "{msg}");
    let (_, _, msg) = one_error(&format!("{base}\n[sessions]\nlisten = {{ n1 = \"localhost\" }}\n"));
    assert!(msg.contains("not an IP:PORT"), "{msg}");
}

//! The `[[balancer]]` section: defaults, the primitive it runs as, and every kind of problem
//! with its line and column.

use phalanx_core::config::{check, BalancerMode, RetryOn};
use phalanx_core::diag::Severity;
use phalanx_core::lb::Algorithm;
use phalanx_core::resources::AgentSpec;
use std::time::Duration;

const BASE: &str = r#"[cluster]
name = "shop"
fencing = "off"

[[node]]
name = "n1"
links = ["127.0.0.1:7401"]
api = "127.0.0.1:8401"

[[node]]
name = "n2"
links = ["127.0.0.2:7401"]

[[resource]]
id = "web"
agent = "process"
params = { command = "sleep 100" }

[[clone]]
id = "webs"
resource = "web"
"#;

/// The errors of `BASE` + `extra`, as (line within `extra`, col, message).
fn errors(extra: &str) -> Vec<(usize, usize, String)> {
    let offset = BASE.lines().count();
    let c = check(&format!("{BASE}{extra}"));
    let errs: Vec<_> = c
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line - offset, d.col, d.message.clone()))
        .collect();
    if !errs.is_empty() {
        assert!(c.config.is_none());
    }
    errs
}

fn one_error(extra: &str) -> (usize, usize, String) {
    let errs = errors(extra);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs[0].clone()
}

#[test]
fn a_tcp_balancer_parses_with_defaults_and_runs_as_a_primitive() {
    let src = format!(
        "{BASE}
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
backends = \"webs\"
port = 8080
addresses = {{ n2 = \"10.0.0.2\" }}
servers = [{{ name = \"static-1\", address = \"127.0.0.9:80\", weight = 3 }}]
max_conn = 100

[[resource]]
id = \"ip\"
agent = \"vip\"
params = {{ address = \"10.0.0.100/24\" }}

[[group]]
id = \"front\"
members = [\"ip\", \"lb\"]
"
    );
    let c = check(&src);
    assert!(
        !c.diagnostics.iter().any(|d| d.severity == Severity::Error),
        "{:#?}",
        c.diagnostics
    );
    let cfg = c.config.unwrap();
    let b = cfg.balancer("lb").unwrap();
    assert_eq!(b.mode, BalancerMode::Tcp);
    assert_eq!(b.algorithm(), Algorithm::P2c, "p2c by default");
    assert_eq!(b.backends.as_deref(), Some("webs"));
    assert_eq!(b.port, Some(8080));
    assert_eq!(b.addresses["n2"].to_string(), "10.0.0.2");
    assert_eq!(b.servers[0].weight, 3);
    assert_eq!(b.max_conn, Some(100));
    assert_eq!(b.check.kind, "tcp");
    assert_eq!(b.check.health.rise, 2);
    assert_eq!(b.check.health.fall, 3);
    assert_eq!(
        b.check.timeout,
        Duration::from_secs(2),
        "the timeout defaults to the interval"
    );
    let p = &cfg.resources.primitives["lb"];
    assert_eq!(p.agent, AgentSpec::Balancer);
    assert_eq!(p.params["listen"], "127.0.0.1:9000");
    assert_eq!(p.params["mode"], "tcp");
    assert!(p.monitor.is_some());
    assert_eq!(cfg.resources.groups["front"].members, ["ip", "lb"]);
}

#[test]
fn check_settings_and_algorithm_are_read() {
    let src = format!(
        "{BASE}
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\", \"[::1]:9000\"]
algorithm = \"source\"
consistent = true
servers = [{{ name = \"a\", address = \"127.0.0.9:80\" }}]
check = {{ kind = \"tcp\", interval = \"200ms\", fast_interval = \"100ms\", rise = 1, fall = 2, timeout = \"50ms\" }}
"
    );
    let cfg = check(&src).config.expect("valid");
    let b = &cfg.balancers[0];
    assert_eq!(b.listen.len(), 2);
    assert!(b.algorithm().hash().unwrap().consistent);
    let h = &b.check.health;
    assert_eq!((h.interval_ms, h.fast_interval_ms, h.down_interval_ms), (200, 100, 200));
    assert_eq!((h.rise, h.fall), (1, 2));
    assert_eq!(b.check.timeout, Duration::from_millis(50));
    assert_eq!(b.servers[0].weight, 1, "weight 1 by default");
}

#[test]
fn http_mode_takes_its_timeouts_limits_retries_queue_checks_and_sticky_cookie() {
    let src = format!(
        "{BASE}
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
mode = \"http\"
servers = [{{ name = \"a\", address = \"127.0.0.9:80\" }}]
request_timeout = \"3s\"
server_timeout = \"1s\"
max_header_size = 8192
retries = 1
retry_on = \"connect\"
queue = 10
queue_timeout = \"200ms\"
sticky = {{ cookie = \"SRV\", max_idle = \"30m\", max_life = \"8h\", secure = true }}
check = {{ kind = \"http\", http_path = \"/health\", expect = \"200-299\", host = \"web\", agent_port = 9999 }}
"
    );
    let c = check(&src);
    let cfg = c.config.expect("valid");
    let b = &cfg.balancers[0];
    assert_eq!(b.mode, BalancerMode::Http);
    assert!(
        !c.diagnostics.iter().any(|d| d.message.contains("http")),
        "{:#?}",
        c.diagnostics
    );
    let h = &b.http;
    assert_eq!(h.request_timeout, Duration::from_secs(3));
    assert_eq!(h.server_timeout, Duration::from_secs(1));
    assert_eq!(h.idle_timeout, Duration::from_secs(4), "default");
    assert_eq!((h.max_header_size, h.retries, h.queue), (8192, 1, 10));
    assert_eq!(h.retry_on, RetryOn::Connect);
    assert_eq!(h.queue_timeout, Duration::from_millis(200));
    let s = h.sticky.as_ref().unwrap();
    assert_eq!(
        (s.name.as_str(), s.max_idle_s, s.max_life_s),
        ("SRV", Some(1800), Some(8 * 3600))
    );
    assert!(s.secure && s.httponly);
    assert_eq!(b.check.kind, "http");
    assert_eq!((b.check.http_path.as_str(), b.check.expect), ("/health", (200, 299)));
    assert_eq!((b.check.host.as_deref(), b.check.agent_port), (Some("web"), Some(9999)));

    let errs = errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }]
queue = 3
",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (6, 9), "at the value");
    assert!(errs[0].2.contains("belong to mode = \"http\""), "{}", errs[0].2);

    let errs = errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
mode = \"http\"
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }]
request_timeout = \"0s\"
retry_on = \"always\"
max_header_size = 10
sticky = { cookie = \"a b\", max_idle = \"10ms\" }
check = { expect = \"200-99\", http_path = \"health\" }
",
    );
    let msgs: Vec<&str> = errs.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(errs.len(), 8, "{msgs:#?}");
    assert!(msgs[7].contains("belong to kind = \"http\""), "{msgs:#?}");
    let at: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert!(
        msgs.iter().any(|m| m.contains("request_timeout must be above 0")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("retry_on \"always\"")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("max_header_size 10 is outside")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("sticky cookie \"a b\"")), "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("max_idle must be at least 1s")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("expect \"200-99\"")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("http_path \"health\"")), "{msgs:#?}");
    assert!(at.contains(&(7, 19)) && at.contains(&(10, 21)), "{at:?}");
}

#[test]
fn unknown_backends_are_located() {
    let (line, col, msg) = one_error(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
backends = \"nope\"
port = 80
",
    );
    assert_eq!((line, col), (5, 12), "{msg}");
    assert!(msg.contains("\"nope\" is not a [[resource]] or a [[clone]]"), "{msg}");
}

#[test]
fn a_balancer_id_must_not_clash_with_a_resource() {
    let (line, col, msg) = one_error(
        "
[[balancer]]
id = \"web\"
listen = [\"127.0.0.1:9000\"]
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }]
",
    );
    assert_eq!((line, col), (3, 6), "{msg}");
    assert!(msg.contains("duplicate id \"web\""), "{msg}");
}

#[test]
fn two_balancers_with_one_id_are_refused() {
    let errs = errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }]

[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9001\"]
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }]
",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].0, errs[0].1), (8, 6));
}

#[test]
fn bad_addresses_are_located() {
    let errs = errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1\", \"127.0.0.1:0\"]
servers = [{ name = \"a\", address = \"127.0.0.9:80\" }, { name = \"a\", address = \"127.0.0.8:80\" }, { name = \"b\", address = \"x:80\" }]
backends = \"web\"
port = 80
addresses = { n9 = \"10.0.0.1\", n1 = \"ten\" }
",
    );
    let at: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(at, [(4, 11), (4, 24), (5, 63), (5, 120), (8, 20), (8, 37)], "{errs:#?}");
    assert!(errs[0].2.contains("not IP:PORT"));
    assert!(errs[2].2.contains("used twice"));
    assert!(errs[3].2.contains("not IP:PORT"));
    assert!(errs[4].2.contains("\"n9\" is not a [[node]]"));
    assert!(errs[5].2.contains("not an IP address"));
}

#[test]
fn a_balancer_needs_backends_and_valid_settings() {
    let (line, col, msg) = one_error(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
",
    );
    assert_eq!((line, col), (2, 1), "{msg}");
    assert!(msg.contains("has no backends"), "{msg}");

    let errs = errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
mode = \"udp\"
algorithm = \"random\"
backends = \"web\"
check = { kind = \"http\", rise = 0, interval = \"soon\" }
max_conn = 0
",
    );
    let msgs: Vec<&str> = errs.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(errs.len(), 6, "{msgs:#?}");
    assert!(msgs[0].contains("mode \"udp\""));
    assert!(msgs[1].contains("unknown balancing algorithm"));
    assert!(msgs[2].contains("needs a `port`"));
    assert!(msgs[3].contains("rise 0 is outside"));
    assert!(msgs[4].contains("check interval"));
    assert!(msgs[5].contains("max_conn 0"));
}

#[test]
fn source_stickiness_is_read_and_its_mistakes_are_located() {
    let src = format!(
        "{BASE}
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
servers = [{{ name = \"a\", address = \"127.0.0.1:1\" }}]
sticky = {{ source = true, max_idle = \"30m\", capacity = 500 }}
"
    );
    let c = check(&src).config.expect("valid");
    let st = c.balancers[0].sticky.as_ref().expect("sticky");
    assert!(st.source);
    assert_eq!(st.table.max_idle_ms, Some(30 * 60 * 1000));
    assert_eq!((st.table.max_life_ms, st.table.capacity), (None, 500));

    let bad = "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
servers = [{ name = \"a\", address = \"127.0.0.1:1\" }]
sticky = { max_idle = \"30m\" }
";
    let (line, col, msg) = one_error(bad);
    assert_eq!((line, col), (6, 10), "{msg}");
    assert!(msg.contains("source = true"), "{msg}");
    let bad = bad.replace(
        "{ max_idle = \"30m\" }",
        "{ source = true, capacity = 0, max_life = \"soon\" }",
    );
    let errs = errors(&bad);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs.iter().any(|e| e.2.contains("sticky capacity 0")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.2.contains("sticky max_life")), "{errs:#?}");
}

#[test]
fn request_hashing_needs_http_mode() {
    let (line, col, msg) = one_error(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
algorithm = \"uri\"
servers = [{ name = \"a\", address = \"127.0.0.1:1\" }]
",
    );
    assert_eq!((line, col), (5, 13), "{msg}");
    assert!(msg.contains("needs mode = \"http\""), "{msg}");
    assert!(errors(
        "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
algorithm = \"source\"
servers = [{ name = \"a\", address = \"127.0.0.1:1\" }]
"
    )
    .is_empty());
}

#[test]
fn a_sticky_table_is_either_by_source_or_a_cookie() {
    let section = |mode: &str, sticky: &str| {
        format!(
            "
[[balancer]]
id = \"lb\"
listen = [\"127.0.0.1:9000\"]
mode = \"{mode}\"
servers = [{{ name = \"a\", address = \"127.0.0.1:1\" }}]
sticky = {sticky}
"
        )
    };
    let (_, _, msg) = one_error(&section("http", "{ source = true, cookie = \"X\" }"));
    assert!(msg.contains("not both"), "{msg}");
    let (_, _, msg) = one_error(&section("tcp", "{ cookie = \"X\" }"));
    assert!(msg.contains("sticky = { source = true }"), "{msg}");
    let (_, _, msg) = one_error(&section("http", "{ cookie = \"X\", capacity = 5 }"));
    assert!(msg.contains("capacity"), "{msg}");
    let c = check(&format!("{BASE}{}", section("http", "{ source = true }")))
        .config
        .expect("source affinity in http mode");
    assert!(c.balancers[0].sticky.is_some() && c.balancers[0].http.sticky.is_none());
}

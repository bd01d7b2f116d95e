//! Validation of the resource sections: one test per kind of problem, each checking where it is
//! reported (line:col), plus what a valid model looks like once parsed.

use phalanx_core::config::check;
use phalanx_core::diag::Severity;
use phalanx_core::model::INFINITY;
use phalanx_core::resources::{AgentSpec, Constraint, Failback, OnFail};
use std::time::Duration;

// (The watchdog lease stands in for fence devices, which these tests are not about.)
const HEAD: &str = "cluster = { name = \"c\", fencing = \"watchdog\" }\n# resources\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:1\"]\n[[node]]\nname = \"n2\"\nlinks = [\"127.0.0.2:1\"]\n[[node]]\nname = \"n3\"\nlinks = [\"127.0.0.3:1\"]\n";
// HEAD is 11 lines; resource text starts on line 12.

fn errors(body: &str) -> Vec<(usize, usize, String)> {
    let c = check(&format!("{HEAD}{body}"));
    c.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.col, d.message.clone()))
        .collect()
}

fn one(body: &str) -> (usize, usize, String) {
    let e = errors(body);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn a_full_model_parses() {
    let body = r#"[[resource]]
id = "web-ip"
agent = "vip"
params = { address = "10.77.0.100/24" }

[[resource]]
id = "web"
agent = "ocf:heartbeat:nginx"
monitor = { interval = "2s", timeout = "5s" }
failback = "delayed:30s"
migration_threshold = 3
failure_timeout = "10m"
stickiness = 100
on_fail = "ban"

[[resource]]
id = "pg"
agent = "ocf:heartbeat:pgsql"

[[group]]
id = "stack"
members = ["web-ip", "web"]

[[clone]]
id = "db"
resource = "pg"
promotable = true
promoted_max = 1

[[constraint]]
location = "stack"
node = "n1"
score = 100

[[constraint]]
colocate = "web-ip"
with = "web"

[[constraint]]
order = ["db", "stack"]
kind = "optional"
"#;
    let c = check(&format!("{HEAD}{body}"));
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let r = c.config.unwrap().resources;
    let web = &r.primitives["web"];
    assert_eq!(
        web.agent,
        AgentSpec::Ocf {
            provider: "heartbeat".into(),
            kind: "nginx".into()
        }
    );
    assert_eq!(web.meta.failback, Failback::Delayed(Duration::from_secs(30)));
    assert_eq!(web.meta.migration_threshold, Some(3));
    assert_eq!(web.meta.failure_timeout, Some(Duration::from_secs(600)));
    assert_eq!(web.meta.stickiness, 100);
    assert_eq!(web.on_fail, OnFail::Ban);
    assert_eq!(web.monitor.unwrap().interval, Duration::from_secs(2));
    assert_eq!(r.primitives["web-ip"].params["address"], "10.77.0.100/24");
    assert_eq!(r.groups["stack"].members, vec!["web-ip", "web"]);
    assert!(r.clones["db"].promotable);
    assert_eq!(r.constraints.len(), 3);
    assert_eq!(
        r.constraints[1],
        Constraint::Colocation {
            rsc: "web-ip".into(),
            with: "web".into(),
            score: INFINITY,
            with_promoted: false,
        }
    );
    assert_eq!(
        r.constraints[2],
        Constraint::Order {
            first: "db".into(),
            then: "stack".into(),
            mandatory: false
        }
    );
}

#[test]
fn unknown_agent() {
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"lsb:nginx\"\n");
    assert_eq!((l, c), (14, 9), "{m}");
    assert!(m.contains("unknown agent \"lsb:nginx\""), "{m}");
}

#[test]
fn unknown_key_in_a_resource() {
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\nmonitr = { interval = \"1s\" }\n");
    assert_eq!((l, c), (15, 1), "{m}");
    assert!(m.contains("monitr"), "{m}");
}

#[test]
fn duplicate_ids_across_kinds() {
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\n[[group]]\nid = \"w\"\nmembers = [\"w\"]\n");
    assert_eq!((l, c), (16, 6), "{m}");
    assert!(m.contains("duplicate id \"w\"") && m.contains("line 13"), "{m}");
}

#[test]
fn dangling_references() {
    let (l, c, m) =
        one("[[resource]]\nid = \"w\"\nagent = \"exec\"\n[[group]]\nid = \"g\"\nmembers = [\"w\", \"nope\"]\n");
    assert_eq!((l, c), (17, 17), "{m}");
    assert!(m.contains("\"nope\" is not a [[resource]]"), "{m}");
    let (l, c, m) = one("[[clone]]\nid = \"c\"\nresource = \"ghost\"\n");
    assert_eq!((l, c), (14, 12), "{m}");
    let (l, c, m) =
        one("[[resource]]\nid = \"w\"\nagent = \"exec\"\n[[constraint]]\ncolocate = \"w\"\nwith = \"ghost\"\n");
    assert_eq!((l, c), (17, 8), "{m}");
    assert!(m.contains("\"ghost\" is not a resource, group or clone"), "{m}");
    let (l, c, m) =
        one("[[resource]]\nid = \"w\"\nagent = \"exec\"\n[[constraint]]\nlocation = \"w\"\nnode = \"n9\"\nscore = 1\n");
    assert_eq!((l, c), (17, 8), "{m}");
    assert!(m.contains("\"n9\", which is not a [[node]]"), "{m}");
}

#[test]
fn ordering_cycle() {
    let body = "[[resource]]\nid = \"a\"\nagent = \"exec\"\n[[resource]]\nid = \"b\"\nagent = \"exec\"\n[[constraint]]\norder = [\"a\", \"b\"]\n[[constraint]]\norder = [\"b\", \"a\"]\n";
    let (l, c, m) = one(body);
    assert_eq!((l, c), (20, 1), "{m}");
    assert!(m.contains("dependency cycle in ordering constraints: b -> a"), "{m}");
}

#[test]
fn colocation_cycle() {
    let body = "[[resource]]\nid = \"a\"\nagent = \"exec\"\n[[resource]]\nid = \"b\"\nagent = \"exec\"\n[[resource]]\nid = \"x\"\nagent = \"exec\"\n[[constraint]]\ncolocate = \"a\"\nwith = \"b\"\n[[constraint]]\ncolocate = \"b\"\nwith = \"x\"\n[[constraint]]\ncolocate = \"x\"\nwith = \"a\"\n";
    let (l, _, m) = one(body);
    assert_eq!(l, 27, "{m}");
    assert!(m.contains("dependency cycle in colocation"), "{m}");
}

#[test]
fn impossible_constraints() {
    let r = "[[resource]]\nid = \"a\"\nagent = \"exec\"\n";
    let (l, c, m) = one(&format!("{r}[[constraint]]\ncolocate = \"a\"\nwith = \"a\"\n"));
    assert_eq!((l, c), (17, 8), "{m}");
    assert!(m.contains("colocated with itself"), "{m}");
    let (l, c, m) = one(&format!(
        "{r}[[constraint]]\nlocation = \"a\"\nnode = \"n1\"\nscore = \"INFINITY\"\n[[constraint]]\nlocation = \"a\"\nnode = \"n1\"\nscore = \"-INFINITY\"\n"
    ));
    assert_eq!((l, c), (22, 9), "{m}");
    assert!(m.contains("both required on and forbidden from n1"), "{m}");
    let two = "[[resource]]\nid = \"a\"\nagent = \"exec\"\n[[resource]]\nid = \"b\"\nagent = \"exec\"\n";
    let (l, _, m) = one(&format!(
        "{two}[[constraint]]\nlocation = \"a\"\nnode = \"n1\"\n[[constraint]]\nlocation = \"b\"\nnode = \"n1\"\nscore = \"-INFINITY\"\n[[constraint]]\ncolocate = \"a\"\nwith = \"b\"\n"
    ));
    assert_eq!(l, 25, "{m}");
    assert!(
        m.contains("impossible: a must run on n1 and with b, which is forbidden there"),
        "{m}"
    );
}

#[test]
fn bad_meta_values() {
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\nfailback = \"later\"\n");
    assert_eq!((l, c), (15, 12), "{m}");
    assert!(m.contains("delayed:DURATION"), "{m}");
    let (l, c, _) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\nstickiness = \"lots\"\n");
    assert_eq!((l, c), (15, 14));
    let (l, c, _) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\nmigration_threshold = 0\n");
    assert_eq!((l, c), (15, 23));
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\nmonitor = { interval = \"soon\" }\n");
    assert_eq!((l, c), (15, 24), "{m}");
    let (l, c, m) = one("[[resource]]\nid = \"w\"\nagent = \"exec\"\non_fail = \"explode\"\n");
    assert_eq!((l, c), (15, 11), "{m}");
}

#[test]
fn clone_rules() {
    let r = "[[resource]]\nid = \"a\"\nagent = \"exec\"\n";
    let (l, c, m) = one(&format!(
        "{r}[[clone]]\nid = \"c\"\nresource = \"a\"\nclone_max = 2\npromotable = true\npromoted_max = 3\n"
    ));
    assert_eq!((l, c), (20, 16), "{m}");
    assert!(m.contains("promoted_max 3 is more than clone_max 2"), "{m}");
    let (l, c, m) = one(&format!(
        "{r}[[group]]\nid = \"g\"\nmembers = [\"a\"]\n[[clone]]\nid = \"c\"\nresource = \"a\"\n"
    ));
    assert_eq!((l, c), (20, 12), "{m}");
    assert!(m.contains("clone the group instead"), "{m}");
}

#[test]
fn every_resource_error_at_once() {
    let body = "[[resource]]\nid = \"w\"\nagent = \"nope\"\n[[resource]]\nid = \"v\"\nagent = \"exec\"\nfailback = \"x\"\n[[constraint]]\norder = [\"v\", \"ghost\"]\n";
    assert_eq!(errors(body).len(), 3, "{:#?}", errors(body));
}

#[test]
fn agent_meta_data_fills_timeouts_and_checks_params() {
    use phalanx_core::config::check_agents;
    use phalanx_core::ocf::{AgentMeta, ParamMeta};
    let body = r#"[[resource]]
id = "a"
agent = "ocf:x:A"
params = { needed = "1", typo = "2" }
start_timeout = "7s"
monitor = { interval = "10s" }
[[resource]]
id = "b"
agent = "ocf:x:A"
"#;
    let src = format!("{HEAD}{body}");
    let mut checked = check(&src);
    let meta = AgentMeta {
        parameters: vec![
            ParamMeta {
                name: "needed".into(),
                required: true,
                unique: false,
                reloadable: false,
            },
            ParamMeta {
                name: "other".into(),
                required: false,
                unique: false,
                reloadable: false,
            },
        ],
        timeouts: [("start", 90), ("stop", 120), ("monitor", 30)]
            .into_iter()
            .map(|(a, s)| (a.to_string(), Duration::from_secs(s)))
            .collect(),
    };
    // Without errors, the adopted config is kept: check `a` alone first.
    let mut only_a = check(&format!(
        "{HEAD}{}",
        &body[..body.find("[[resource]]\nid = \"b\"").unwrap()]
    ));
    check_agents(&mut only_a, &src, &mut |_| Some(Ok(meta.clone())));
    let a = &only_a.config.as_ref().expect("no errors for a").resources.primitives["a"];
    assert_eq!(a.start_timeout, Duration::from_secs(7), "written: kept");
    assert_eq!(a.stop_timeout, Duration::from_secs(120), "not written: the agent's");
    assert_eq!(a.monitor.unwrap().timeout, Duration::from_secs(30));
    let warn = &only_a.diagnostics[0];
    assert_eq!((warn.severity, warn.line, warn.col), (Severity::Warning, 14, 9));
    assert!(warn.message.contains("has no parameter \"typo\""), "{}", warn.message);

    check_agents(&mut checked, &src, &mut |_| Some(Ok(meta.clone())));
    let errs: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        errs,
        vec![(
            20,
            9,
            "resource b: agent ocf:x:A requires the parameter \"needed\" (add it to `params`)"
        )]
    );
    assert!(checked.config.is_none(), "an error leaves no config");

    // An agent not installed here, or with unreadable meta-data: warnings, timeouts unchanged.
    let text = src.replace("needed = \"1\", ", "");
    let mut c = check(&text);
    check_agents(&mut c, &text, &mut |_| None);
    assert!(c.diagnostics.iter().all(|d| d.severity == Severity::Warning));
    assert_eq!(
        c.config.unwrap().resources.primitives["b"].stop_timeout,
        Duration::from_secs(20)
    );
}

#[test]
fn clone_node_max_above_one_needs_clone_max_and_a_primitive() {
    let base = "[[resource]]\nid = \"w\"\nagent = \"exec\"\n[[clone]]\nid = \"ws\"\nresource = \"w\"\n";
    assert_eq!(
        one(&format!("{base}clone_node_max = 2\n")),
        (
            18,
            18,
            "clone ws: clone_node_max > 1 needs clone_max (the number of instances to run)".into()
        )
    );
    assert_eq!(
        one(&format!("{base}clone_max = 4\nclone_node_max = 2\npromotable = true\n")),
        (
            19,
            18,
            "clone ws: clone_node_max > 1 is not supported for promotable clones".into()
        )
    );
    let c = check(&format!("{HEAD}{base}clone_max = 4\nclone_node_max = 2\n"));
    let r = c.config.expect("valid").resources;
    let ids: Vec<String> = r.instances().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec!["w:0", "w:1", "w:2", "w:3"]);
    assert_eq!(r.primitive_of("w:3").map(|p| p.id.as_str()), Some("w"));
    assert!(r.primitive_of("w:4").is_none() && r.primitive_of("w:x").is_none());
}

/// The built-in `pgsql` agent's params are checked as each node reads them: a `name@node`
/// override is that node's value (and its problems are reported once), typos and bad values
/// are errors at the resource.
#[test]
fn pgsql_params_are_checked_per_node() {
    let ok =
        "[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\nparams = { pgdata = \"/srv/pg\", \"port@n2\" = \"5433\" }\n";
    assert_eq!(errors(ok), vec![]);
    let e = errors(
        "[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\nparams = { pgdata = \"/srv/pg\", sync = \"sometimes\", \"port@n2\" = \"x\", \"port@n3\" = \"y\", \"port@n9\" = \"1\", pgdta = \"/x\" }\n",
    );
    let msgs: Vec<&str> = e.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(e.len(), 5, "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.contains("names no configured node (n9)")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("sync \"sometimes\"")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("port \"x\"")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("port \"y\"")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.contains("unknown param \"pgdta\"")), "{msgs:#?}");
    assert!(e.iter().all(|x| x.0 == 12), "at the resource: {e:#?}");
    let e = one("[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\n");
    assert!(e.2.contains("needs `pgdata`"), "{e:?}");
    // Given on every node by overrides, none is needed for all.
    let per_node = "[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\nparams = { \"pgdata@n1\" = \"/a\", \"pgdata@n2\" = \"/b\", \"pgdata@n3\" = \"/c\" }\n";
    assert_eq!(errors(per_node), vec![]);
    let e = one("[[resource]]\nid = \"pg\"\nagent = \"pgsql\"\nparams = { \"pgdata@n1\" = \"/a\" }\n");
    assert!(e.2.contains("needs `pgdata`"), "n2 and n3 have none, said once: {e:?}");
    assert!(e.2.contains("on n2, n3: "), "naming the nodes that lack it: {e:?}");
    assert!(
        msgs.iter().any(|m| m.contains("on n2: ") && m.contains("port \"x\"")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .all(|m| !m.contains("sync \"sometimes\"") || !m.contains(" on n")),
        "an error of every node names none: {msgs:#?}"
    );
}

#[test]
fn a_params_override_is_that_nodes_value() {
    let p: std::collections::BTreeMap<String, String> = [("port", "5432"), ("port@n2", "5433"), ("pgdata", "/a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let on = |n: &str| phalanx_core::resources::params_on(&p, n);
    assert_eq!(on("n1")["port"], "5432");
    assert_eq!(on("n2")["port"], "5433");
    assert_eq!(on("n2").len(), 2, "other overrides are dropped: {:?}", on("n2"));
}

//! `crm_mon -1`, as agents written for Pacemaker read it: Debian's `ocf:heartbeat:pgsql` greps
//! its XML (`crm_mon -1 --output-as=xml`) for `<node name="N" … online="true"` and
//! `<resource id="R" … role="Promoted"`. [`Mon`] is what it shows (nodes, then primitives,
//! groups and clones with where each instance runs in which role), built from a status report
//! and the committed config's resources; [`Mon::xml`] and [`Mon::text`] render it with
//! Pacemaker 2.1's element and attribute names, in its order (agents match with regular
//! expressions, so the order of attributes matters). Written by hand: Pacemaker's format, no
//! crate provides it.

use phalanx_core::resources::Resources;
use phalanx_core::scheduler::Role;
use phalanx_node::StatusReport;
use std::collections::BTreeMap;

/// One node as crm_mon lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonNode {
    pub name: String,
    pub id: u64,
    /// In the membership (online or in standby).
    pub online: bool,
    pub standby: bool,
    pub maintenance: bool,
    /// Left cleanly (phalanx's "stopped").
    pub shutdown: bool,
    pub attrs: BTreeMap<String, String>,
}

/// One primitive: where it runs and in which role.
#[derive(Debug, Clone, PartialEq)]
pub struct MonRsc {
    pub id: String,
    /// `class:provider:type` (phalanx's built-in agents: `phalanx:NAME`).
    pub agent: String,
    pub running: Vec<(String, Role)>,
}

/// A top-level entry of the resource list.
#[derive(Debug, Clone, PartialEq)]
pub enum MonEntry {
    Primitive(MonRsc),
    Group { id: String, members: Vec<MonRsc> },
    Clone { id: String, promotable: bool, rsc: MonRsc },
}

/// What `crm_mon -1` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mon {
    /// The leader (Pacemaker's designated controller).
    pub dc: Option<String>,
    pub quorum: bool,
    pub nodes: Vec<MonNode>,
    pub entries: Vec<MonEntry>,
}

impl Mon {
    /// From a status report and the resources of the config it runs (for groups and clones).
    pub fn of(st: &StatusReport, res: &Resources) -> Mon {
        let nodes = st
            .nodes
            .iter()
            .map(|n| MonNode {
                name: n.name.clone(),
                id: n.id,
                online: n.state == "online" || n.state == "standby",
                standby: n.standby,
                maintenance: n.maintenance,
                shutdown: n.state == "stopped",
                attrs: n.attrs.clone(),
            })
            .collect();
        let rsc = |id: &str| -> MonRsc {
            let s = st.resources.iter().find(|r| r.id == id);
            MonRsc {
                id: id.to_string(),
                agent: s
                    .map(|s| match s.agent.contains(':') {
                        true => s.agent.clone(),
                        false => format!("phalanx:{}", s.agent),
                    })
                    .unwrap_or_default(),
                running: s
                    .map(|s| s.running.iter().map(|(n, r)| (n.clone(), *r)).collect())
                    .unwrap_or_default(),
            }
        };
        let mut entries = Vec::new();
        for r in &st.resources {
            let in_group = res.groups.values().find(|g| g.members.contains(&r.id));
            let in_clone = res.clones.values().find(|c| c.resource == r.id);
            match (in_group, in_clone) {
                // A group is listed once, at its first member.
                (Some(g), _) if g.members.first() == Some(&r.id) => entries.push(MonEntry::Group {
                    id: g.id.clone(),
                    members: g.members.iter().map(|m| rsc(m)).collect(),
                }),
                (Some(_), _) => {}
                (None, Some(c)) => entries.push(MonEntry::Clone {
                    id: c.id.clone(),
                    promotable: c.promotable,
                    rsc: rsc(&r.id),
                }),
                (None, None) => entries.push(MonEntry::Primitive(rsc(&r.id))),
            }
        }
        Mon {
            dc: st.leader.clone(),
            quorum: st.quorum,
            nodes,
            entries,
        }
    }

    fn node_id(&self, name: &str) -> u64 {
        self.nodes.iter().find(|n| n.name == name).map_or(0, |n| n.id)
    }

    /// `crm_mon -1 --output-as=xml`.
    pub fn xml(&self) -> String {
        let mut o = String::from("<?xml version=\"1.0\"?>\n<pacemaker-result api-version=\"2.25\" request=\"crm_mon -1 --output-as=xml\">\n  <summary>\n    <stack type=\"phalanx\"/>\n");
        match &self.dc {
            Some(dc) => {
                o += &format!(
                    "    <current_dc present=\"true\" version=\"{}\" name=\"{}\" id=\"{}\" with_quorum=\"{}\"/>\n",
                    super::PACEMAKER_VERSION,
                    esc(dc),
                    self.node_id(dc),
                    self.quorum
                )
            }
            None => o += "    <current_dc present=\"false\"/>\n",
        }
        o += &format!(
            "    <nodes_configured number=\"{}\"/>\n    <resources_configured number=\"{}\" disabled=\"0\" blocked=\"0\"/>\n  </summary>\n  <nodes>\n",
            self.nodes.len(),
            self.primitives().count()
        );
        for n in &self.nodes {
            let running = self
                .primitives()
                .filter(|r| r.running.iter().any(|(on, _)| *on == n.name))
                .count();
            o += &format!(
                "    <node name=\"{}\" id=\"{}\" online=\"{}\" standby=\"{}\" standby_onfail=\"false\" maintenance=\"{}\" pending=\"false\" unclean=\"false\" shutdown=\"{}\" expected_up=\"{}\" is_dc=\"{}\" resources_running=\"{running}\" type=\"member\"/>\n",
                esc(&n.name),
                n.id,
                n.online,
                n.standby,
                n.maintenance,
                n.shutdown,
                !n.shutdown,
                self.dc.as_deref() == Some(n.name.as_str()),
            );
        }
        o += "  </nodes>\n  <resources>\n";
        for e in &self.entries {
            match e {
                MonEntry::Primitive(r) => o += &self.xml_rsc(r, None, "    "),
                MonEntry::Group { id, members } => {
                    o += &format!(
                        "    <group id=\"{}\" number_resources=\"{}\" maintenance=\"false\" managed=\"true\" disabled=\"false\">\n",
                        esc(id),
                        members.len()
                    );
                    for m in members {
                        o += &self.xml_rsc(m, None, "      ");
                    }
                    o += "    </group>\n";
                }
                MonEntry::Clone { id, promotable, rsc } => {
                    o += &format!(
                        "    <clone id=\"{}\" multi_state=\"{promotable}\" unique=\"false\" maintenance=\"false\" managed=\"true\" disabled=\"false\" failed=\"{}\" failure_ignored=\"false\">\n",
                        esc(id),
                        rsc.running.iter().any(|(_, r)| *r == Role::Failed)
                    );
                    o += &self.xml_rsc(rsc, Some(*promotable), "      ");
                    o += "    </clone>\n";
                }
            }
        }
        o += "  </resources>\n  <node_attributes>\n";
        for n in self.nodes.iter().filter(|n| !n.attrs.is_empty()) {
            o += &format!("    <node name=\"{}\">\n", esc(&n.name));
            for (k, v) in &n.attrs {
                o += &format!("      <attribute name=\"{}\" value=\"{}\"/>\n", esc(k), esc(v));
            }
            o += "    </node>\n";
        }
        o + "  </node_attributes>\n  <status code=\"0\" message=\"OK\"/>\n</pacemaker-result>"
    }

    /// A primitive's `<resource>` elements: one per instance of a clone (`promotable` Some),
    /// else one listing the nodes it runs on (a stopped one: role Stopped, no node).
    fn xml_rsc(&self, r: &MonRsc, promotable: Option<bool>, indent: &str) -> String {
        let element = |role: &str, failed: bool, on: &[&str]| {
            let mut s = format!(
                "{indent}<resource id=\"{}\" resource_agent=\"{}\" role=\"{role}\" active=\"{}\" orphaned=\"false\" blocked=\"false\" maintenance=\"false\" managed=\"true\" failed=\"{failed}\" failure_ignored=\"false\" nodes_running_on=\"{}\"",
                esc(&r.id),
                esc(&r.agent),
                !on.is_empty(),
                on.len()
            );
            if on.is_empty() {
                return s + "/>\n";
            }
            s += ">\n";
            for n in on {
                s += &format!(
                    "{indent}  <node name=\"{}\" id=\"{}\" cached=\"true\"/>\n",
                    esc(n),
                    self.node_id(n)
                );
            }
            s + &format!("{indent}</resource>\n")
        };
        match promotable {
            Some(promotable) if !r.running.is_empty() => r
                .running
                .iter()
                .map(|(n, role)| element(role_name(*role, promotable), *role == Role::Failed, &[n]))
                .collect(),
            _ => {
                let on: Vec<&str> = r.running.iter().map(|(n, _)| n.as_str()).collect();
                let failed = r.running.iter().any(|(_, role)| *role == Role::Failed);
                let role = match r.running.first() {
                    None => "Stopped",
                    Some((_, role)) => role_name(*role, false),
                };
                element(role, failed, &on)
            }
        }
    }

    fn primitives(&self) -> impl Iterator<Item = &MonRsc> {
        self.entries.iter().flat_map(|e| match e {
            MonEntry::Primitive(r) | MonEntry::Clone { rsc: r, .. } => std::slice::from_ref(r).iter(),
            MonEntry::Group { members, .. } => members.iter(),
        })
    }

    /// `crm_mon -1`: Pacemaker 2.1's text layout.
    pub fn text(&self) -> String {
        let mut o = String::from("Cluster Summary:\n  * Stack: phalanx\n");
        o += &match &self.dc {
            Some(dc) => format!(
                "  * Current DC: {dc} - partition {}quorum\n",
                if self.quorum { "with " } else { "WITHOUT " }
            ),
            None => "  * Current DC: NONE\n".into(),
        };
        o += &format!(
            "  * {} nodes configured\n  * {} resource instances configured\n\nNode List:\n",
            self.nodes.len(),
            self.primitives().count()
        );
        let list = |pred: &dyn Fn(&MonNode) -> bool| -> Vec<&str> {
            self.nodes.iter().filter(|n| pred(n)).map(|n| n.name.as_str()).collect()
        };
        for (label, names) in [
            ("Online", list(&|n| n.online && !n.standby)),
            ("Node standby", list(&|n| n.online && n.standby)),
            ("OFFLINE", list(&|n| !n.online)),
        ] {
            if !names.is_empty() {
                o += &format!("  * {label}: [ {} ]\n", names.join(" "));
            }
        }
        o += "\nFull List of Resources:\n";
        let line = |r: &MonRsc, indent: &str| -> String {
            match r.running.first() {
                None => format!("{indent}* {}\t({}):\t Stopped\n", r.id, r.agent),
                Some((n, role)) => format!("{indent}* {}\t({}):\t {} {n}\n", r.id, r.agent, role_name(*role, false)),
            }
        };
        for e in &self.entries {
            match e {
                MonEntry::Primitive(r) => o += &line(r, "  "),
                MonEntry::Group { id, members } => {
                    o += &format!("  * Resource Group: {id}:\n");
                    for m in members {
                        o += &line(m, "    ");
                    }
                }
                MonEntry::Clone { id, promotable, rsc } => {
                    o += &format!(
                        "  * Clone Set: {id} [{}]{}:\n",
                        rsc.id,
                        if *promotable { " (promotable)" } else { "" }
                    );
                    let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                    for (n, role) in &rsc.running {
                        by_role.entry(role_name(*role, *promotable)).or_default().push(n);
                    }
                    for (role, on) in by_role {
                        o += &format!("    * {role}: [ {} ]\n", on.join(" "));
                    }
                }
            }
        }
        o
    }
}

/// Pacemaker's name of a role (an instance of a promotable clone that is not promoted:
/// Unpromoted).
fn role_name(role: Role, promotable: bool) -> &'static str {
    match role {
        Role::Promoted => "Promoted",
        Role::Started if promotable => "Unpromoted",
        Role::Started => "Started",
        Role::Failed => "FAILED",
    }
}

/// XML attribute text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u64, online: bool) -> MonNode {
        MonNode {
            name: name.into(),
            id,
            online,
            standby: false,
            maintenance: false,
            shutdown: false,
            attrs: BTreeMap::from([("master-pg".to_string(), "1000".to_string())]),
        }
    }

    fn mon() -> Mon {
        Mon {
            dc: Some("n1".into()),
            quorum: true,
            nodes: vec![node("n1", 1, true), node("n2", 2, true), node("n3", 3, false)],
            entries: vec![
                MonEntry::Clone {
                    id: "db".into(),
                    promotable: true,
                    rsc: MonRsc {
                        id: "pg".into(),
                        agent: "ocf:heartbeat:pgsql".into(),
                        running: vec![("n1".into(), Role::Promoted), ("n2".into(), Role::Started)],
                    },
                },
                MonEntry::Group {
                    id: "stack".into(),
                    members: vec![MonRsc {
                        id: "vip".into(),
                        agent: "ocf:heartbeat:IPaddr2".into(),
                        running: vec![("n1".into(), Role::Started)],
                    }],
                },
                MonEntry::Primitive(MonRsc {
                    id: "off".into(),
                    agent: "phalanx:process".into(),
                    running: vec![],
                }),
            ],
        }
    }

    /// The lines Debian's pgsql agent matches (`grep -E` in its is_node_online, node_exist and
    /// master check) are there, in the attribute order its patterns need.
    #[test]
    fn the_xml_has_what_the_pgsql_agent_greps_for() {
        let x = mon().xml();
        let has = |re: &str| x.lines().any(|l| regex_lite(re, l));
        assert!(has(r#"<node name="n1" .* online="true""#), "{x}");
        assert!(has(r#"<node name="n2" .* online="true""#), "{x}");
        assert!(!has(r#"<node name="n3" .* online="true""#), "{x}");
        assert!(has(r#"<node name="n3" .* online"#), "{x}");
        assert!(has(r#"<resource id="pg" .* role="Promoted""#), "{x}");
        assert!(x.contains(r#"<resource id="pg" resource_agent="ocf:heartbeat:pgsql" role="Unpromoted""#));
        assert!(x.contains(r#"<node name="n2" id="2" cached="true"/>"#));
        assert!(x.contains(r#"<clone id="db" multi_state="true""#));
        assert!(x.contains(r#"<group id="stack" number_resources="1""#));
        assert!(x.contains(r#"<resource id="off" resource_agent="phalanx:process" role="Stopped" active="false""#));
        assert!(x.contains(r#"<attribute name="master-pg" value="1000"/>"#));
        assert!(x.contains(r#"<current_dc present="true" version="2.1.5" name="n1" id="1" with_quorum="true"/>"#));
        // No master once none is promoted.
        let mut m = mon();
        if let MonEntry::Clone { rsc, .. } = &mut m.entries[0] {
            rsc.running = vec![("n2".into(), Role::Started)];
        }
        assert!(!m
            .xml()
            .lines()
            .any(|l| regex_lite(r#"<resource id="pg" .* role="Promoted""#, l)));
    }

    #[test]
    fn the_text_lists_nodes_and_roles() {
        let t = mon().text();
        assert!(t.contains("* Current DC: n1 - partition with quorum"), "{t}");
        assert!(
            t.contains("* Online: [ n1 n2 ]") && t.contains("* OFFLINE: [ n3 ]"),
            "{t}"
        );
        assert!(t.contains("* Clone Set: db [pg] (promotable):"), "{t}");
        assert!(
            t.contains("* Promoted: [ n1 ]") && t.contains("* Unpromoted: [ n2 ]"),
            "{t}"
        );
        assert!(t.contains("* off\t(phalanx:process):\t Stopped"), "{t}");
    }

    #[test]
    fn attribute_text_is_escaped() {
        assert_eq!(esc(r#"a<"b">&'"#), "a&lt;&quot;b&quot;&gt;&amp;&apos;");
    }

    /// The two patterns the agent uses: literal text with `.*` (any run of characters).
    fn regex_lite(pattern: &str, line: &str) -> bool {
        let parts: Vec<&str> = pattern.split(".*").collect();
        let mut at = match line.find(parts[0]) {
            Some(i) => i + parts[0].len(),
            None => return false,
        };
        for p in &parts[1..] {
            match line[at..].find(p) {
                Some(i) => at += i + p.len(),
                None => return false,
            }
        }
        true
    }
}

//! What only the machine that checks a config can tell, as the caller found it there (the node
//! runs the agents and reads the files; this stays pure): OCF primitives against their agents'
//! meta-data (agent installed, required parameters given, no unknown ones; the agents' default
//! timeouts adopted where the config gave none), fence-agents programs installed, and the key
//! file readable. Runs on the draft config, so these problems come with every other one.

use super::Checked;
use crate::diag::{Diagnostic, Severity};
use crate::fencing::FenceAgent;
use crate::ocf::AgentMeta;
use crate::resources::{AgentSpec, ParamProblem};

/// What [`check_machine`] asks the machine it runs on.
pub trait Machine {
    /// An OCF agent's meta-data as installed here (None: the agent is not installed).
    fn ocf_meta(&mut self, agent: &AgentSpec) -> Option<Result<AgentMeta, String>>;
    /// Why the fence-agents program `program` (as written) cannot be run here; None: it can.
    fn fence_program(&mut self, program: &str) -> Option<String>;
    /// What is wrong with the key file `key_file` (as written, relative to the config's
    /// folder): an error when the daemon could not read it, a warning for a loose mode.
    fn key_file(&mut self, key_file: &str) -> Vec<(Severity, String)>;
}

/// Check the draft config against this machine: its OCF agents (see [`check_agents`]), its
/// fence-agents programs and its key file. A missing agent or program, an unknown OCF
/// parameter and unreadable meta-data are errors, or warnings with `allow_missing_agents`
/// (checking a config on a machine without the agents); a missing required parameter and an
/// unreadable key file are always errors. Every diagnostic points at the value it is about.
pub fn check_machine(checked: &mut Checked, source: &str, machine: &mut dyn Machine, allow_missing_agents: bool) {
    let missing = if allow_missing_agents {
        Severity::Warning
    } else {
        Severity::Error
    };
    let mut diags = ocf(checked, source, &mut |a| machine.ocf_meta(a), missing);
    let Some(draft) = checked.draft.as_ref() else {
        checked.add(diags);
        return;
    };
    for d in &draft.fence.devices {
        let FenceAgent::Program(program) = &d.agent else {
            continue;
        };
        if let Some(why) = machine.fence_program(program) {
            let span = checked.fence_agent_spans.get(&d.name).cloned().unwrap_or(0..0);
            diags.push(Diagnostic::at(
                source,
                span,
                missing,
                format!("fence device {}: {why}", d.name),
            ));
        }
    }
    for (severity, message) in machine.key_file(&draft.cluster.key_file) {
        diags.push(Diagnostic::at(source, checked.key_file_span.clone(), severity, message));
    }
    checked.add(diags);
}

/// Check every OCF primitive against its agent's meta-data, as read on this machine by
/// `meta_data` (None: the agent is not installed here), leniently: what the node does with its
/// config at start (a node may run none of those resources). Adopts the agents' default
/// timeouts into the config where it gives none; a missing required parameter is an error, an
/// unknown one a warning, a missing agent or an unreadable meta-data a warning. Diagnostics
/// point at the `agent` value.
pub fn check_agents(
    checked: &mut Checked,
    source: &str,
    meta_data: &mut dyn FnMut(&AgentSpec) -> Option<Result<AgentMeta, String>>,
) {
    let diags = ocf(checked, source, meta_data, Severity::Warning);
    checked.add(diags);
}

/// The OCF checks, with `missing` the severity of an agent not installed, of unreadable
/// meta-data and of an unknown parameter.
fn ocf(
    checked: &mut Checked,
    source: &str,
    meta_data: &mut dyn FnMut(&AgentSpec) -> Option<Result<AgentMeta, String>>,
    missing: Severity,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let Some(config) = checked.draft.as_mut() else {
        return diags;
    };
    for (id, prim) in config.resources.primitives.iter_mut() {
        if !matches!(prim.agent, AgentSpec::Ocf { .. }) {
            continue;
        }
        let span = checked.agent_spans.get(id).cloned().unwrap_or(0..0);
        let at = |severity: Severity, message: String| Diagnostic::at(source, span.clone(), severity, message);
        match meta_data(&prim.agent) {
            None => diags.push(at(
                missing,
                format!(
                    "resource {id}: agent {} is not installed on this machine (its params are not checked)",
                    prim.agent
                ),
            )),
            Some(Err(e)) => diags.push(at(
                missing,
                format!("resource {id}: could not read the meta-data of {}: {e}", prim.agent),
            )),
            Some(Ok(m)) => {
                for p in prim.adopt_agent_meta(&m) {
                    diags.push(match p {
                        ParamProblem::Missing(name) => at(
                            Severity::Error,
                            format!(
                                "resource {id}: agent {} requires the parameter {name:?} (add it to `params`)",
                                prim.agent
                            ),
                        ),
                        ParamProblem::Unknown(name) => at(
                            missing,
                            format!("resource {id}: agent {} has no parameter {name:?}", prim.agent),
                        ),
                    });
                }
            }
        }
    }
    diags
}

//! OCF primitives checked against their agents' meta-data, as read on this machine by the
//! caller (the node runs the agents; this stays pure): missing required parameters, unknown
//! ones, agents not installed, and the agents' default timeouts adopted where the config gave
//! none.

use super::Checked;
use crate::diag::{self, Diagnostic, Severity};
use crate::ocf::AgentMeta;
use crate::resources::{AgentSpec, ParamProblem};

/// Check every OCF primitive against its agent's meta-data, as read on this machine by
/// `meta_data` (None: the agent is not installed here). Adopts the agents' default timeouts
/// into the config where it gives none; a missing required parameter is an error, an unknown
/// one a warning, an unreadable meta-data a warning. Diagnostics point at the `agent` value.
pub fn check_agents(
    checked: &mut Checked,
    source: &str,
    meta_data: &mut dyn FnMut(&AgentSpec) -> Option<Result<AgentMeta, String>>,
) {
    let Some(config) = checked.config.as_mut() else { return };
    let mut diags = Vec::new();
    for (id, prim) in config.resources.primitives.iter_mut() {
        if !matches!(prim.agent, AgentSpec::Ocf { .. }) {
            continue;
        }
        let span = checked.agent_spans.get(id).cloned().unwrap_or(0..0);
        let at = |severity: Severity, message: String| Diagnostic::at(source, span.clone(), severity, message);
        match meta_data(&prim.agent) {
            None => diags.push(at(
                Severity::Warning,
                format!(
                    "resource {id}: agent {} is not installed on this machine (its params are not checked)",
                    prim.agent
                ),
            )),
            Some(Err(e)) => diags.push(at(
                Severity::Warning,
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
                            Severity::Warning,
                            format!("resource {id}: agent {} has no parameter {name:?}", prim.agent),
                        ),
                    });
                }
            }
        }
    }
    checked.diagnostics.extend(diags);
    diag::sort(&mut checked.diagnostics);
    if checked.has_errors() {
        checked.config = None;
    }
}

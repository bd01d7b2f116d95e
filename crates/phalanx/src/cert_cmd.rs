//! `phalanx cert list`: the cluster CA and the certificates in `certs/` beside the cluster key,
//! read from the files (no node is asked): name, addresses, validity, and when each renews.

use anyhow::Result;
use phalanx_node::pki::{self, Paths};
use serde::Serialize;
use std::time::SystemTime;

#[derive(Debug, Serialize)]
pub struct Row {
    pub file: String,
    pub name: String,
    pub ca: bool,
    pub dns: Vec<String>,
    pub ips: Vec<String>,
    pub not_after: String,
    pub days_left: i64,
    /// `ok`, `renew` (past 2/3 of its life), `expired`, or `other-ca` (not issued by this CA).
    pub state: &'static str,
}

/// One row per certificate: the CA first, then `certs/*.crt` by name.
pub fn rows(paths: &Paths, now: SystemTime) -> Result<Vec<Row>> {
    let ca_pem = pki::load_ca_cert(paths)?;
    let ca = pki::inspect_pem(&ca_pem).map_err(|e| anyhow::anyhow!("{}: {e}", paths.ca_cert().display()))?;
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(paths.cert_dir()) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect(),
        Err(_) => vec![],
    };
    files.sort();
    let row = |file: String, info: pki::CertInfo| {
        let left = info
            .not_after
            .duration_since(now)
            .map_or(-1, |d| (d.as_secs() / 86_400) as i64);
        let state = if now >= info.not_after {
            "expired"
        } else if !info.is_ca && ca.key_id.is_some() && info.issuer_key_id != ca.key_id {
            "other-ca"
        } else if !info.is_ca && info.due_for_renewal(now) {
            "renew"
        } else {
            "ok"
        };
        Row {
            file,
            name: info.name,
            ca: info.is_ca,
            dns: if info.is_ca { info.permitted_dns } else { info.dns },
            ips: info.ips.iter().map(|i| i.to_string()).collect(),
            not_after: humantime::format_rfc3339_seconds(info.not_after).to_string(),
            days_left: left,
            state,
        }
    };
    let mut out = vec![row(paths.ca_cert().display().to_string(), ca.clone())];
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        match pki::inspect_pem(&text) {
            Ok(info) => out.push(row(f.display().to_string(), info)),
            Err(e) => anyhow::bail!("{}: {e}", f.display()),
        }
    }
    Ok(out)
}

/// The rows as a table, each column as wide as its widest cell.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                if r.ca {
                    format!("{} (CA)", r.name)
                } else {
                    r.name.clone()
                },
                r.state.to_string(),
                r.dns.join(","),
                if r.ips.is_empty() { "-".into() } else { r.ips.join(",") },
                r.days_left.to_string(),
                r.not_after.clone(),
            ]
        })
        .collect();
    let head = ["NAME", "STATE", "NAMES", "ADDRESSES", "DAYS LEFT", "NOT AFTER"].map(String::from);
    let mut width = head.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    std::iter::once(head)
        .chain(cells)
        .map(|row| {
            let line: Vec<String> = row.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
            line.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

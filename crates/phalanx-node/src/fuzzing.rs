//! The fuzz targets (issue 17): each takes arbitrary bytes and feeds them to one parser that
//! meets input from outside — the heartbeat datagram decoder, the config parser (and its
//! secret redaction), the memcached protocol parser, the API's JSON bodies, OCF meta-data XML
//! and agent output, and the balancer's request path (its cookie handling) — which must answer
//! with an error, never panic or hang. `fuzz/` drives them with AFL (cargo-afl, coverage-guided:
//! `tests/fuzz`), and `crates/phalanx-lab/tests/fuzz_corpus.rs` runs every corpus and regression
//! file through them in every test run.

use crate::mesh::wire;
use crate::ClusterKey;

/// The targets, by name (`fuzz/corpus/NAME`, `fuzz/regressions/NAME`).
pub const TARGETS: [&str; 6] = ["heartbeat", "config", "memcached", "api_json", "ocf", "balancer"];

/// Run target `name` on `data` (false: no such target).
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "heartbeat" => heartbeat(data),
        "config" => config(data),
        "memcached" => memcached(data),
        "api_json" => api_json(data),
        "ocf" => ocf(data),
        "balancer" => balancer(data),
        _ => return false,
    }
    true
}

/// A datagram as it arrives, and the same bytes signed with the cluster's key (so that the
/// fields behind the MAC are parsed too).
pub fn heartbeat(data: &[u8]) {
    let key = ClusterKey::from_bytes(&[7u8; 32]);
    let _ = wire::decode(data, &key);
    let mut signed = data.to_vec();
    signed.extend_from_slice(key.sign(data).as_ref());
    let _ = wire::decode(&signed, &key);
}

/// The heartbeat target's seeds: a datagram of each version as a node sends it, without its
/// MAC (the target signs what it gets), so the fuzzer starts from well-formed fields.
pub fn heartbeat_seeds() -> Vec<Vec<u8>> {
    let key = ClusterKey::from_bytes(&[7u8; 32]);
    let hb = |(echo, lost)| wire::Heartbeat {
        cluster: "demo".into(),
        sender: "n1".into(),
        link: 1,
        incarnation: 1_700_000_000_000,
        seq: 42,
        log_index: 17,
        vote: 0,
        hears: true,
        to: "n2".into(),
        echo,
        lost,
    };
    let echo = Some(wire::Echo { seq: 41, hold_us: 250 });
    [(None, None), (echo, None), (echo, Some(vec!["n3".to_string()]))]
        .into_iter()
        .map(|v| {
            let mut b = wire::encode(&hb(v), &key);
            b.truncate(b.len() - 32);
            b
        })
        .collect()
}

/// A config file: checked (every diagnostic), redacted, and un-redacted against itself.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = phalanx_core::config::check(&text);
    let shown = phalanx_core::config::secrets::redact(&text);
    let _ = phalanx_core::config::secrets::unredact(&shown, &text);
}

/// A client's bytes on the memcached port: requests parsed one after another, as a
/// connection does, each answered by a store.
pub fn memcached(data: &[u8]) {
    use phalanx_core::sessions::protocol::{parse, Limits, Parsed};
    let limits = Limits {
        max_item_size: 4096,
        ..Limits::default()
    };
    let mut store = phalanx_core::sessions::store::Store::new(1 << 20);
    let mut rest = data;
    for _ in 0..10_000 {
        match parse(rest, &limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                let _ = phalanx_core::sessions::engine::answer_request(&mut store, &request, 1_000);
                rest = &rest[consumed.min(rest.len())..];
            }
            Ok(Parsed::Rejected { consumed, .. }) => rest = &rest[consumed.min(rest.len())..],
            Ok(Parsed::Skip { consumed, bytes, .. }) => {
                rest = &rest[(consumed + bytes).min(rest.len())..];
            }
            Ok(Parsed::Incomplete) | Err(_) => return,
        }
        if rest.is_empty() {
            return;
        }
    }
}

/// An API request body, as each JSON route reads it.
pub fn api_json(data: &[u8]) {
    use crate::api;
    let _ = serde_json::from_slice::<api::config::ApplyConfig>(data);
    let _ = serde_json::from_slice::<api::tokens::NewToken>(data);
    let _ = serde_json::from_slice::<api::operator::AddNode>(data);
    let _ = serde_json::from_slice::<api::operator::ResourceOp>(data);
    let _ = serde_json::from_slice::<api::operator::BackendAdminReq>(data);
    let _ = serde_json::from_slice::<api::operator::Pause>(data);
    let _ = serde_json::from_slice::<api::drills::Begin>(data);
    let _ = serde_json::from_slice::<api::drills::Step>(data);
    let _ = serde_json::from_slice::<api::drills::FenceFail>(data);
    let _ = serde_json::from_slice::<phalanx_core::Command>(data);
}

/// An agent's meta-data XML and its stderr.
pub fn ocf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = phalanx_core::ocf::parse_meta_data(&text);
    let _ = phalanx_core::ocf::exit_reason(&text);
}

/// A request's Cookie header as the HTTP balancer reads it: find, strip and decode the sticky
/// cookie.
pub fn balancer(data: &[u8]) {
    use phalanx_core::lb::cookie;
    let header = String::from_utf8_lossy(data);
    let name = "PHALANXID";
    if let Some(v) = cookie::find(&header, name) {
        let _ = cookie::StickyCookie::decode(v, 1_000_000);
    }
    let _ = cookie::strip(&header, name);
    let _ = cookie::valid_name(&header);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_seeds_decode_once_signed() {
        let key = ClusterKey::from_bytes(&[7u8; 32]);
        for seed in heartbeat_seeds() {
            let mut signed = seed.clone();
            signed.extend_from_slice(key.sign(&seed).as_ref());
            assert!(wire::decode(&signed, &key).is_ok());
        }
        assert!(!run("nope", b""));
    }
}

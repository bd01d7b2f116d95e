//! HTTP mode's header rewriting, pure functions over a `HeaderMap` (no IO): the hop-by-hop
//! fields of RFC 9110 §7.6.1 are removed on the way in and out (a WebSocket or other upgrade
//! keeps its `Upgrade` and gets `Connection: upgrade` back), and the client's address is told
//! to the backend in `X-Forwarded-For` (appended), `X-Forwarded-Proto` (set) and `Forwarded`
//! (RFC 7239, appended; IPv6 quoted and bracketed).

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use std::net::IpAddr;

/// The fields that are always hop-by-hop (besides those `Connection` names).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether the message asks to switch protocols: `Connection` lists `upgrade` and there is an
/// `Upgrade` field.
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE) && connection_tokens(h).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The tokens of every `Connection` field.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Remove the hop-by-hop fields: those `Connection` lists, then the fixed ones. With `upgrade`
/// the `Upgrade` field stays and `Connection: upgrade` is set again (the upgrade passes through).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let kept_upgrade = if upgrade { h.get(UPGRADE).cloned() } else { None };
    for name in listed {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    debug_assert!(!h.contains_key(TE) && !h.contains_key(TRAILER) && !h.contains_key(TRANSFER_ENCODING));
    if let Some(u) = kept_upgrade {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The `for=` value of RFC 7239: an IPv4 address as is, an IPv6 one bracketed and quoted.
pub fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("\"[{v6}]\""),
        },
    }
}

/// Tell the backend who the client is: append to `X-Forwarded-For` and `Forwarded`, set
/// `X-Forwarded-Proto` (`proto`: "http").
pub fn add_forwarded(h: &mut HeaderMap, client: IpAddr, proto: &str) {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    append(h, &X_FORWARDED_FOR, &client.to_string());
    if let Ok(v) = HeaderValue::from_str(proto) {
        h.insert(X_FORWARDED_PROTO.clone(), v);
    }
    append(h, &FORWARDED, &format!("for={};proto={proto}", forwarded_node(client)));
}

/// Append `value` to the field `name` as a list element (several fields are joined first).
fn append(h: &mut HeaderMap, name: &HeaderName, value: &str) {
    let old: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    let joined = if old.is_empty() {
        value.to_string()
    } else {
        format!("{}, {value}", old.join(", "))
    };
    // Every part is visible ASCII (addresses, and fields that were valid values).
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_lists_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "X-Sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("host", "shop"),
            ("x-keep", "2"),
        ]);
        assert!(!wants_upgrade(&h), "Connection does not list upgrade");
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "x-keep"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("sec-websocket-key").unwrap(), "k");
        assert!(h.get("keep-alive").is_none());
    }

    #[test]
    fn forwarded_for_is_appended_and_ipv6_is_quoted() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        add_forwarded(&mut h, "192.0.2.7".parse().unwrap(), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h.get("forwarded").unwrap(), "for=10.0.0.1, for=192.0.2.7;proto=http");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");

        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "2001:db8::1".parse().unwrap(), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert_eq!(h.get("forwarded").unwrap(), "for=\"[2001:db8::1]\";proto=http");
        // An IPv4 client on a dual-stack listener is told as IPv4.
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::ffff:192.0.2.9".parse().unwrap(), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.9");
        assert_eq!(h.get("forwarded").unwrap(), "for=192.0.2.9;proto=http");
    }
}

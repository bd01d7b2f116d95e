//! Ports for a process to bind later (the test harnesses' daemons, PostgreSQL, memcached, the
//! agents' services), chosen below the kernel's ephemeral range: a port the kernel hands out
//! for `:0` is free at that moment, but until the other process binds it any outgoing
//! connection may take it as its local port (one CI run: `binding the API on 127.0.0.1:34745:
//! Address already in use`; a full suite: PostgreSQL's `could not bind IPv4 address
//! "127.0.0.1": Address already in use`). Ports are handed out in turn from a per-process
//! starting point, never twice by one process, and only if they are free now.

use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 10_000;
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The next port below the ephemeral range for which `free` holds.
fn pick_port(free: impl Fn(u16) -> bool) -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(FIRST);
    if span < 1_000 {
        // No room below the ephemeral range: whatever the kernel gives.
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let start = (std::process::id() * 7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % span) as u16;
        if free(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port between {FIRST} and {ephemeral_low}"),
    ))
}

/// A TCP port free on 127.0.0.1 (see the module comment).
pub fn free_tcp_port() -> std::io::Result<u16> {
    pick_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A UDP port free on `ip`.
pub fn free_udp_port(ip: &str) -> std::io::Result<u16> {
    pick_port(|p| std::net::UdpSocket::bind(format!("{ip}:{p}")).is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_below_the_ephemeral_range_free_and_never_handed_out_twice() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768);
        let a = super::free_tcp_port().unwrap();
        let b = super::free_tcp_port().unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            if low >= 11_000 {
                assert!((10_000..low).contains(&p), "{p}, ephemeral from {low}");
            }
            assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }
}

//! The built-in `vip` agent: a virtual IP address that moves with its service. Start adds the
//! address through netlink (rtnetlink; IPv6 with duplicate address detection off, so it is usable
//! at once) and announces it: gratuitous ARP on an AF_PACKET socket for IPv4, unsolicited
//! neighbour advertisements (ICMPv6, hop limit 255, override flag) for IPv6, so that switches and
//! clients learn the new MAC. Stop removes it; monitor checks it is present and its link is up.
//! Start and stop are idempotent. Nothing here shells out to `ip` or `arping`.
//!
//! Params: `address = "10.77.0.100/24"` (prefix optional: the prefix of the interface subnet
//! holding it), `interface = "eth0"` (optional: the interface whose subnet contains the address).

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How many announcements, and how far apart (issue 4: 3–5 of each, 50–100 ms apart).
pub const ANNOUNCEMENTS: usize = 4;
pub const ANNOUNCE_GAP: Duration = Duration::from_millis(60);

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The params are wrong (OCF: a configuration error).
    #[error("{0}")]
    Config(String),
    /// Netlink or a socket failed.
    #[error("{0}")]
    Io(String),
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> VipError {
    VipError::Io(format!("{what}: {e}"))
}

/// What the params ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    pub prefix: Option<u8>,
    pub interface: Option<String>,
}

impl Vip {
    pub fn from_params(params: &BTreeMap<String, String>) -> Result<Vip, VipError> {
        let raw = params
            .get("address")
            .ok_or_else(|| VipError::Config("the vip agent needs params.address (e.g. \"10.77.0.100/24\")".into()))?;
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw.as_str(), None),
        };
        let address: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| VipError::Config(format!("address {raw:?} is not an IP address")))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => None,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => Some(n),
                _ => {
                    return Err(VipError::Config(format!(
                        "address {raw:?}: the prefix must be 0..={max}"
                    )))
                }
            },
        };
        Ok(Vip {
            address,
            prefix,
            interface: params.get("interface").cloned(),
        })
    }
}

/// One network interface, as netlink describes it.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    mac: [u8; 6],
    up: bool,
}

/// One address on an interface.
struct Addr {
    index: u32,
    ip: IpAddr,
    prefix: u8,
    msg: AddressMessage,
}

struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    fn open() -> Result<Netlink, VipError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| io("opening netlink", e))?;
        // The connection task ends when the handle is dropped.
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn links(&self) -> Result<Vec<Link>, VipError> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| io("listing links", e))?;
        Ok(msgs
            .into_iter()
            .map(|m| {
                let mut name = String::new();
                let mut mac = [0u8; 6];
                for a in &m.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::Address(b) if b.len() == 6 => mac.copy_from_slice(b),
                        _ => {}
                    }
                }
                Link {
                    index: m.header.index,
                    name,
                    mac,
                    up: m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::LowerUp),
                }
            })
            .collect())
    }

    async fn addresses(&self) -> Result<Vec<Addr>, VipError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| io("listing addresses", e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some(Addr {
                    index: m.header.index,
                    ip,
                    prefix: m.header.prefix_len,
                    msg: m,
                })
            })
            .collect())
    }
}

fn in_subnet(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix.min(32))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix.min(128))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// The interface the address belongs on, and the prefix to give it.
fn choose(vip: &Vip, links: &[Link], addrs: &[Addr]) -> Result<(Link, u8), VipError> {
    let host = if vip.address.is_ipv4() { 32 } else { 128 };
    if let Some(name) = &vip.interface {
        let link = links
            .iter()
            .find(|l| &l.name == name)
            .ok_or_else(|| VipError::Config(format!("no interface named {name:?} on this node")))?;
        let prefix = vip
            .prefix
            .or_else(|| {
                addrs
                    .iter()
                    .find(|a| a.index == link.index && a.ip != vip.address && in_subnet(a.ip, a.prefix, vip.address))
                    .map(|a| a.prefix)
            })
            .unwrap_or(host);
        return Ok((link.clone(), prefix));
    }
    // The interface holding a (non-VIP) address whose subnet contains the VIP.
    let found = addrs
        .iter()
        .filter(|a| a.ip != vip.address && !a.ip.is_loopback())
        .find(|a| in_subnet(a.ip, a.prefix, vip.address))
        .and_then(|a| links.iter().find(|l| l.index == a.index).map(|l| (l.clone(), a.prefix)));
    match found {
        Some((link, p)) => Ok((link, vip.prefix.unwrap_or(p))),
        None => Err(VipError::Config(format!(
            "no interface has a subnet containing {}: set params.interface",
            vip.address
        ))),
    }
}

/// Add the address (if absent) and announce it. Returns once the first announcement is out;
/// the others follow in the background.
pub async fn start(vip: &Vip) -> Result<(), VipError> {
    let nl = Netlink::open()?;
    let (links, addrs) = (nl.links().await?, nl.addresses().await?);
    let (link, prefix) = choose(vip, &links, &addrs)?;
    let present = addrs.iter().any(|a| a.ip == vip.address && a.index == link.index);
    if !present {
        let mut req = nl.handle.address().add(link.index, vip.address, prefix);
        if vip.address.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => {}
            // Added by someone in between: it is there, which is what start wants.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(io(format!("adding {} to {}", vip.address, link.name), e)),
        }
    }
    tracing::info!(address = %vip.address, prefix, interface = %link.name, added = !present, "vip up");
    announce_on(vip.address, &link).await
}

/// Remove the address wherever it is (absent: nothing to do). Announcements still due from its
/// start are cancelled first: one sent after the removal would pull clients back to this MAC
/// while the new holder already announced its own (seen in the lab when a move followed a start
/// within 180 ms).
pub async fn stop(vip: &Vip) -> Result<(), VipError> {
    if let Some(task) = announcers().remove(&vip.address) {
        task.abort();
    }
    let nl = Netlink::open()?;
    for a in nl.addresses().await? {
        if a.ip == vip.address {
            match nl.handle.address().del(a.msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                Err(e) => return Err(io(format!("removing {}", vip.address), e)),
            }
            tracing::info!(address = %vip.address, "vip down");
        }
    }
    Ok(())
}

/// Where the address is: None when absent, else whether its link is up.
pub async fn monitor(vip: &Vip) -> Result<Option<bool>, VipError> {
    let nl = Netlink::open()?;
    let (links, addrs) = (nl.links().await?, nl.addresses().await?);
    Ok(addrs
        .iter()
        .find(|a| a.ip == vip.address)
        .map(|a| links.iter().any(|l| l.index == a.index && l.up)))
}

/// Whether this namespace holds an address, asked over one netlink connection kept open (for
/// samplers that ask every few milliseconds).
pub struct AddressProbe {
    nl: Netlink,
}

impl AddressProbe {
    pub fn new() -> Result<AddressProbe, VipError> {
        Ok(AddressProbe { nl: Netlink::open()? })
    }

    pub async fn holds(&self, address: IpAddr) -> Result<bool, VipError> {
        Ok(self.nl.addresses().await?.iter().any(|a| a.ip == address))
    }
}

/// Announce the address again if it is here (after a membership change: a healed partition must
/// not leave clients on a stale MAC).
pub async fn reannounce(vip: &Vip) -> Result<(), VipError> {
    let nl = Netlink::open()?;
    let (links, addrs) = (nl.links().await?, nl.addresses().await?);
    if let Some(a) = addrs.iter().find(|a| a.ip == vip.address) {
        if let Some(link) = links.iter().find(|l| l.index == a.index) {
            return announce_on(vip.address, link).await;
        }
    }
    Ok(())
}

/// The background announcements of each address held by this process (the `vip` agent runs in
/// the daemon), so that `stop` can cancel them.
fn announcers() -> std::sync::MutexGuard<'static, BTreeMap<IpAddr, tokio::task::AbortHandle>> {
    static ANNOUNCERS: std::sync::OnceLock<std::sync::Mutex<BTreeMap<IpAddr, tokio::task::AbortHandle>>> =
        std::sync::OnceLock::new();
    ANNOUNCERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Send the first announcement now and the rest, `ANNOUNCE_GAP` apart, in the background.
async fn announce_on(ip: IpAddr, link: &Link) -> Result<(), VipError> {
    send_announcement(ip, link)?;
    let link = link.clone();
    let task = tokio::spawn(async move {
        for _ in 1..ANNOUNCEMENTS {
            tokio::time::sleep(ANNOUNCE_GAP).await;
            if let Err(e) = send_announcement(ip, &link) {
                tracing::warn!(address = %ip, error = %e, "vip announcement failed");
            }
        }
    });
    if let Some(old) = announcers().insert(ip, task.abort_handle()) {
        old.abort();
    }
    Ok(())
}

fn send_announcement(ip: IpAddr, link: &Link) -> Result<(), VipError> {
    match ip {
        IpAddr::V4(v4) => send_garp(link, &garp_frame(link.mac, v4.octets())),
        IpAddr::V6(v6) => send_unsolicited_na(link, v6),
    }
}

/// A gratuitous ARP (an ARP announcement: a request for our own address, RFC 5227), broadcast.
pub fn garp_frame(mac: [u8; 6], ip: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip); // sender IP
    f[38..42].copy_from_slice(&ip); // target IP: our own (the target MAC, 32..38, stays zero)
    f
}

/// Send one Ethernet frame on the link through an AF_PACKET socket. libc directly: socket2 has
/// no constructor for `sockaddr_ll`, and this is the one raw call the agent needs.
fn send_garp(link: &Link, frame: &[u8]) -> Result<(), VipError> {
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use and owned by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32) };
    if fd < 0 {
        return Err(io("opening an AF_PACKET socket", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = link.index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the buffer and the address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return Err(io(format!("sending gratuitous ARP on {}", link.name), e));
    }
    Ok(())
}

/// An unsolicited neighbour advertisement body (RFC 4861 §4.4): override flag set, solicited
/// clear, with the target link-layer address option. The kernel fills the ICMPv6 checksum.
pub fn na_message(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136; // neighbour advertisement
    m[4] = 0x20; // O (override)
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // option: target link-layer address
    m[25] = 1; // length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

fn send_unsolicited_na(link: &Link, target: Ipv6Addr) -> Result<(), VipError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |what: &str, e: std::io::Error| VipError::Io(format!("{what} on {}: {e}", link.name));
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|e| err("ICMPv6 socket", e))?;
    // Receivers drop neighbour discovery with any other hop limit.
    s.set_multicast_hops_v6(255).map_err(|e| err("hop limit", e))?;
    s.set_unicast_hops_v6(255).map_err(|e| err("hop limit", e))?;
    s.set_multicast_if_v6(link.index)
        .map_err(|e| err("multicast interface", e))?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, link.index);
    s.send_to(&na_message(link.mac, target), &all_nodes.into())
        .map_err(|e| err("sending unsolicited NA", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn params_parse_and_bad_ones_are_config_errors() {
        let v = Vip::from_params(&params(&[("address", "10.77.0.100/24"), ("interface", "eth1")])).unwrap();
        assert_eq!(v.address, "10.77.0.100".parse::<IpAddr>().unwrap());
        assert_eq!((v.prefix, v.interface.as_deref()), (Some(24), Some("eth1")));
        let v6 = Vip::from_params(&params(&[("address", "fd00:77::100")])).unwrap();
        assert_eq!(v6.prefix, None);
        for bad in ["10.77.0.300/24", "10.77.0.1/33", "fd00::1/129", "web"] {
            assert!(
                matches!(Vip::from_params(&params(&[("address", bad)])), Err(VipError::Config(_))),
                "{bad}"
            );
        }
        assert!(matches!(Vip::from_params(&params(&[])), Err(VipError::Config(_))));
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_subnet(ip("10.77.0.1"), 24, ip("10.77.0.100")));
        assert!(!in_subnet(ip("10.77.0.1"), 24, ip("10.77.1.100")));
        assert!(in_subnet(ip("fd00:77::1"), 64, ip("fd00:77::100")));
        assert!(!in_subnet(ip("fd00:77::1"), 64, ip("10.77.0.1")));
    }

    #[test]
    fn frames_are_laid_out_as_the_rfcs_say() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = garp_frame(mac, [10, 77, 0, 100]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &f[38..42], "sender IP = target IP: gratuitous");
        assert_eq!(&f[22..28], &mac);
        let na = na_message(mac, "fd00:77::100".parse().unwrap());
        assert_eq!((na[0], na[4], na[24], na[25]), (136, 0x20, 2, 1));
        assert_eq!(&na[26..32], &mac);
    }
}

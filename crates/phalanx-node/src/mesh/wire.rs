//! The heartbeat datagram, hand-written because it is 60-odd bytes that must be parsed without
//! trusting a single length before the MAC is checked (no serde format gives that):
//!
//! ```text
//! "PHXH" | version:u8=2|3|4 | link:u8 | incarnation:u64be | seq:u64be | log_index:u64be |
//! vote:u64be | hears:u8 | cluster_len:u8 | cluster | sender_len:u8 | sender | to_len:u8 | to |
//! [version 3: echo_seq:u64be | echo_hold_us:u32be]
//! [version 4: has_echo:u8 | [echo_seq:u64be | echo_hold_us:u32be] | lost_count:u8 |
//!             (name_len:u8 | name) * lost_count] | hmac-sha256(all before):32
//! ```
//! Version 3 adds the echo (`phalanx link-check`): the last `seq` this node received from the
//! recipient on this link and how long ago, so that the recipient measures the round trip with
//! no extra traffic. Version 4 adds `lost`: the peers the sender has stopped reaching both ways
//! (a leader declares a node lost only when a majority of the voters agree, see
//! `quorum::loss_confirmed`). A node sends a peer the newest version that peer has sent it
//! (version 4 until it has heard one; an older node drops what it cannot read), and reads all.
//! Each datagram is addressed (`to`): `hears` says whether the sender hears the recipient, so
//! a link that works one way only is seen from both ends (see `Mesh::two_way_peers`).
//! `log_index` is the sender's last Raft log index: survivors of a leader crash use it to pick
//! the most up-to-date of them to campaign (see `node.rs`). `vote` is the node id whose
//! partition the sender backs: a witness' tie-breaking vote (0 from nodes, and for nobody).
//! Replay protection (incarnation, seq strictly growing per sender and link) is the mesh's job;
//! this module only encodes, authenticates and decodes.

use crate::key::Signer;

const MAGIC: &[u8; 4] = b"PHXH";
const VERSION: u8 = 2;
const VERSION_ECHO: u8 = 3;
const VERSION_LOST: u8 = 4;
/// The newest version this node speaks.
pub const NEWEST: u8 = VERSION_LOST;
const MAC_LEN: usize = 32;
/// The most bytes of names `lost` takes in one datagram: names that do not fit are left out
/// (the recipient then counts fewer peers as agreeing that a node is lost: the safe side).
pub const LOST_BUDGET: usize = 1024;
/// Largest datagram we ever produce or accept.
pub const MAX_LEN: usize =
    4 + 1 + 1 + 8 + 8 + 8 + 8 + 1 + 1 + 255 + 1 + 255 + 1 + 255 + 1 + 8 + 4 + 1 + LOST_BUDGET + 255 + MAC_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub cluster: String,
    pub sender: String,
    pub link: u8,
    pub incarnation: u64,
    pub seq: u64,
    /// The sender's last Raft log index when it sent this.
    pub log_index: u64,
    /// The node id whose partition the sender backs (a witness' vote; 0: none).
    pub vote: u64,
    /// The sender hears the recipient (on some link).
    pub hears: bool,
    /// The recipient.
    pub to: String,
    /// The echo of the recipient's last heartbeat on this link (versions 3 and 4).
    pub echo: Option<Echo>,
    /// The peers the sender no longer reaches both ways (version 4; None: an older sender).
    pub lost: Option<Vec<String>>,
}

impl Heartbeat {
    /// The version this heartbeat is encoded in: 4 with `lost`, else 3 with an echo, else 2.
    pub fn version(&self) -> u8 {
        match (&self.lost, &self.echo) {
            (Some(_), _) => VERSION_LOST,
            (None, Some(_)) => VERSION_ECHO,
            (None, None) => VERSION,
        }
    }
}

/// The last heartbeat a node received from the recipient on the link: its `seq`, and the µs
/// between receiving it and sending this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    pub seq: u64,
    pub hold_us: u32,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram too short or too long")]
    Length,
    #[error("not a phalanx heartbeat")]
    Magic,
    #[error("unsupported heartbeat version")]
    Version,
    #[error("bad signature (another cluster key, or tampered)")]
    Auth,
    #[error("malformed heartbeat fields")]
    Malformed,
}

pub fn encode(hb: &Heartbeat, key: &impl Signer) -> Vec<u8> {
    let cluster = &hb.cluster.as_bytes()[..hb.cluster.len().min(255)];
    let sender = &hb.sender.as_bytes()[..hb.sender.len().min(255)];
    let to = &hb.to.as_bytes()[..hb.to.len().min(255)];
    let mut b = Vec::with_capacity(32 + cluster.len() + sender.len() + MAC_LEN);
    b.extend_from_slice(MAGIC);
    let version = hb.version();
    b.push(version);
    b.push(hb.link);
    b.extend_from_slice(&hb.incarnation.to_be_bytes());
    b.extend_from_slice(&hb.seq.to_be_bytes());
    b.extend_from_slice(&hb.log_index.to_be_bytes());
    b.extend_from_slice(&hb.vote.to_be_bytes());
    b.push(u8::from(hb.hears));
    b.push(cluster.len() as u8);
    b.extend_from_slice(cluster);
    b.push(sender.len() as u8);
    b.extend_from_slice(sender);
    b.push(to.len() as u8);
    b.extend_from_slice(to);
    if version == VERSION_LOST {
        b.push(u8::from(hb.echo.is_some()));
    }
    if let Some(e) = hb.echo {
        b.extend_from_slice(&e.seq.to_be_bytes());
        b.extend_from_slice(&e.hold_us.to_be_bytes());
    }
    if let Some(lost) = &hb.lost {
        // Names too long for one byte of length, past 255 of them or past the budget are left
        // out (see LOST_BUDGET).
        let mut budget = LOST_BUDGET;
        let fit: Vec<&[u8]> = lost
            .iter()
            .map(|n| n.as_bytes())
            .filter(|n| !n.is_empty() && n.len() <= 255)
            .take_while(|n| {
                let ok = n.len() < budget;
                budget = budget.saturating_sub(n.len() + 1);
                ok
            })
            .take(255)
            .collect();
        b.push(fit.len() as u8);
        for n in fit {
            b.push(n.len() as u8);
            b.extend_from_slice(n);
        }
    }
    let tag = key.sign(&b);
    b.extend_from_slice(tag.as_ref());
    b
}

pub fn decode(buf: &[u8], key: &impl Signer) -> Result<Heartbeat, WireError> {
    if buf.len() < 4 + 1 + 1 + 8 + 8 + 8 + 8 + 1 + 1 + 1 + 1 + MAC_LEN || buf.len() > MAX_LEN {
        return Err(WireError::Length);
    }
    if &buf[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let version = buf[4];
    if !(VERSION..=VERSION_LOST).contains(&version) {
        return Err(WireError::Version);
    }
    let (body, mac) = buf.split_at(buf.len() - MAC_LEN);
    if !key.verify(body, mac) {
        return Err(WireError::Auth);
    }
    let mut r = Reader { b: body, at: 5 };
    let link = r.u8()?;
    let incarnation = r.u64()?;
    let seq = r.u64()?;
    let log_index = r.u64()?;
    let vote = r.u64()?;
    let hears = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(WireError::Malformed),
    };
    let cluster = r.string()?;
    let sender = r.string()?;
    let to = r.string()?;
    let has_echo = match version {
        VERSION_LOST => match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Malformed),
        },
        v => v == VERSION_ECHO,
    };
    let echo = if has_echo {
        Some(Echo {
            seq: r.u64()?,
            hold_us: r.u32()?,
        })
    } else {
        None
    };
    let lost = if version == VERSION_LOST {
        let n = r.u8()?;
        let mut names = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let name = r.string()?;
            if name.is_empty() {
                return Err(WireError::Malformed);
            }
            names.push(name);
        }
        Some(names)
    } else {
        None
    };
    if r.at != body.len() || sender.is_empty() || to.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(Heartbeat {
        cluster,
        sender,
        link,
        incarnation,
        seq,
        log_index,
        vote,
        hears,
        to,
        echo,
        lost,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let s = self.b.get(self.at..self.at + n).ok_or(WireError::Malformed)?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ClusterKey;
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(&[7u8; 32])
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            cluster: "shop".into(),
            sender: "n1".into(),
            link: 1,
            incarnation: 42,
            seq: 9,
            log_index: 1234,
            vote: 2,
            hears: true,
            to: "n2".into(),
            echo: None,
            lost: None,
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(&hb(), &key()), &key()), Ok(hb()));
        let echo = Heartbeat {
            echo: Some(Echo { seq: 8, hold_us: 250 }),
            ..hb()
        };
        let b = encode(&echo, &key());
        assert_eq!((b[4], b.len()), (3, encode(&hb(), &key()).len() + 12));
        assert_eq!(decode(&b, &key()), Ok(echo));
        // Version 4: the peers lost, with or without an echo.
        for echo in [None, Some(Echo { seq: 8, hold_us: 250 })] {
            let lost = Heartbeat {
                echo,
                lost: Some(vec!["n3".into(), "witness".into()]),
                ..hb()
            };
            let b = encode(&lost, &key());
            assert_eq!(b[4], 4);
            assert_eq!(decode(&b, &key()), Ok(lost));
        }
    }

    #[test]
    fn lost_names_past_the_budget_are_left_out_not_sent_broken() {
        let many: Vec<String> = (0..40).map(|i| format!("{i:0>60}")).collect();
        let b = encode(
            &Heartbeat {
                lost: Some(many.clone()),
                ..hb()
            },
            &key(),
        );
        assert!(b.len() <= MAX_LEN);
        let got = decode(&b, &key()).unwrap().lost.unwrap();
        assert!(!got.is_empty() && got.len() < many.len());
        assert_eq!(got[..], many[..got.len()]);
    }

    #[test]
    fn other_key_is_refused() {
        let other = ClusterKey::from_bytes(&[8u8; 32]);
        assert_eq!(decode(&encode(&hb(), &other), &key()), Err(WireError::Auth));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let good = encode(&hb(), &key());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b, &key()).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_refused() {
        let good = encode(&hb(), &key());
        for n in 0..good.len() {
            assert!(decode(&good[..n], &key()).is_err());
        }
        assert_eq!(decode(&[0u8; 80], &key()), Err(WireError::Magic));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&b, &key());
        }

        #[test]
        fn arbitrary_signed_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Validly signed garbage after a correct header: exercises the field parser.
            let version = body.first().map_or(2, |x| 2 + x % 3);
            let mut b = b"PHXH".to_vec();
            b.push(version);
            b.extend_from_slice(&body);
            let tag = key().sign(&b);
            b.extend_from_slice(tag.as_ref());
            let _ = decode(&b, &key());
        }

        #[test]
        fn any_heartbeat_round_trips(cluster in "[a-z]{1,40}", sender in "[a-z0-9]{1,40}", link in any::<u8>(), inc in any::<u64>(), seq in any::<u64>(), log_index in any::<u64>(), vote in any::<u64>(), hears in any::<bool>(), to in "[a-z0-9]{1,40}", echo in proptest::option::of((any::<u64>(), any::<u32>())), lost in proptest::option::of(proptest::collection::vec("[a-z0-9]{1,20}", 0..8))) {
            let echo = echo.map(|(seq, hold_us)| Echo { seq, hold_us });
            let h = Heartbeat { cluster, sender, link, incarnation: inc, seq, log_index, vote, hears, to, echo, lost };
            prop_assert_eq!(decode(&encode(&h, &key()), &key()), Ok(h));
        }
    }
}

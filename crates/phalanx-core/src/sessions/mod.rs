//! The session store that speaks memcached (issue 15). For now it owns only the wire protocol:
//! `protocol` turns the bytes a client sent into requests or into memcached's exact error replies,
//! purely, with no socket and no store behind it. The replicated store, its Raft group and the
//! listener come later and build on these types.

pub mod protocol;

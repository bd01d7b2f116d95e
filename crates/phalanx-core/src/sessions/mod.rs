//! The session store that speaks memcached (issue 15), its pure parts: `protocol` turns the
//! bytes a client sent into requests or into memcached's exact error replies, and `store` is the
//! replicated state machine those requests' writes are applied to (items, CAS, expiry on the
//! logged time, eviction in log order), and `engine` answers a text or meta request against a
//! store in memcached's bytes (and says which requests must be logged). The Raft group and the
//! listener come later and build on these types.

pub mod engine;
pub mod protocol;
pub mod store;

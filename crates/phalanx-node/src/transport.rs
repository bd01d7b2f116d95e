//! The one place that builds the HTTP clients and listeners of phalanx: the Raft RPC client
//! (`raft::network`), the client that forwards writes to the leader (`forward`), the session
//! store's (`sessions`), the client of HTTP fence devices (`fence`), the CLI's API client
//! (`phalanx::client`), and the listeners HTTP is served on (`phalanx daemon` and `phalanx
//! witness`: the API and peer routers; the demo's `phalanx power-switch`). Every URL of
//! node-to-node and operator traffic is made by [`url`], and is `https`: nodes and the CLI
//! speak TLS 1.3 only (rustls, ring), trusting the cluster CA alone ([`Tls`], certificates from
//! `pki`); nodes present their certificate as clients too, and a client certificate that is
//! not the cluster's, expired or revoked is refused at the handshake ([`Refused`]). Nothing else
//! in the product calls `reqwest::Client::builder`, binds an HTTP listener or calls
//! `axum::serve` (the demo service, a stand-in for the user's own service, is plain TCP and
//! stays out of it; fence devices and alert webhooks are the user's URLs, as they wrote them).
//! An accepted TLS connection can move to another runtime once a route hands it over
//! ([`Movable`], [`Mover`]: the session store's peer stream).

use axum::serve::ListenerExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Connect timeout of node-to-node traffic: peers are on the cluster network, and a dead peer
/// must not hold replication or forwarding for long.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound of a write forwarded to the leader (it waits for the commit).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections to peers are kept this long (Raft RPCs reuse them).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("building the {purpose} HTTP client: {source}")]
    Client {
        purpose: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn build(purpose: &'static str, b: reqwest::ClientBuilder) -> Result<reqwest::Client, TransportError> {
    b.build().map_err(|source| TransportError::Client { purpose, source })
}

/// The URL of `path` (starting with `/`) on the phalanx endpoint at `addr` (HOST:PORT).
pub fn url(addr: &str, path: &str) -> String {
    let scheme = if plaintext() { "http" } else { "https" };
    format!("{scheme}://{addr}{path}")
}

/// Set to `1` in the environment of every daemon and client of a cluster, this turns TLS off
/// (plain HTTP between nodes and to the CLI, node routes authenticated by the cluster key's
/// token alone). For one thing only: measuring what TLS costs (`phalanx-lab bench failover
/// --tls-cost`, `bench sessions --only phalanx,phalanx_no_tls`). A daemon started with it
/// logs an error saying so; it cannot talk to nodes without it (TLS on one side, plain HTTP on
/// the other), so it fails closed, never half open.
pub const NO_TLS_ENV: &str = "PHALANX_BENCH_NO_TLS";

/// Whether [`NO_TLS_ENV`] is set (read each time, so a benchmark may measure both in one run).
pub fn plaintext() -> bool {
    std::env::var_os(NO_TLS_ENV).is_some_and(|v| v == "1")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key a node presents, swapped in place when it is issued again (new
/// connections use the new one; nothing restarts).
#[derive(Debug)]
struct Identity(RwLock<Arc<CertifiedKey>>);

impl Identity {
    fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// What a node or client trusts: the cluster CA's certificate(s) (two while a CA rolls over) and
/// the revocation list, as verifiers swapped in place when either changes.
#[derive(Debug)]
struct Trust {
    server: RwLock<Arc<rustls::client::WebPkiServerVerifier>>,
    client: RwLock<Arc<dyn ClientCertVerifier>>,
    /// The names a node certificate may carry: the cluster's members, as the replicated state
    /// has them (None: not known yet, before the cluster bootstrapped). A certificate of any
    /// other name — a removed node's — is refused as revoked.
    members: RwLock<Option<Arc<std::collections::BTreeSet<String>>>>,
    /// The CA certificates (PEM, one each) the verifiers trust.
    cas: RwLock<Vec<String>>,
}

fn verifiers(
    cas: &[String],
    crls: &[Vec<u8>],
) -> Result<(Arc<rustls::client::WebPkiServerVerifier>, Arc<dyn ClientCertVerifier>), TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(der.map_err(tls_err)?).map_err(tls_err)?;
        }
    }
    if roots.is_empty() {
        return Err(TransportError::Tls("no CA certificate to trust".into()));
    }
    let roots = Arc::new(roots);
    let crls: Vec<CertificateRevocationListDer<'static>> = crls
        .iter()
        .map(|c| CertificateRevocationListDer::from(c.clone()))
        .collect();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .allow_unknown_revocation_status()
        .build()
        .map_err(tls_err)?;
    // Client certificates are verified when presented, not required: nodes present theirs
    // (the peer routes demand one, see `api`), people and scripts authenticate with tokens
    // (a browser on the dashboard has no client certificate).
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    Ok((server, client))
}

impl Trust {
    /// Refuse a certificate (chain-verified already) whose name is no member's.
    fn admit(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(members) = members else {
            return Ok(());
        };
        let name = crate::pki::inspect(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?
            .name;
        if members.contains(&name) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
        }
    }
    fn server(&self) -> Arc<rustls::client::WebPkiServerVerifier> {
        self.server.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // No membership check here: a node connects out only where Raft sends it, and the
        // leader must reach a node it removed until it leaves the Raft membership, so that the
        // node applies its removal and exits (it can no longer connect in: see `ClientTrust`).
        self.server()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.server().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.server().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.server().supported_verify_schemes()
    }
}

/// The client-certificate side of [`Trust`] (a type of its own: both traits name their methods
/// alike).
#[derive(Debug)]
struct ClientTrust(Arc<Trust>);

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client sends the one certificate it has.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.0.client().verify_client_cert(end_entity, intermediates, now)?;
        self.0.admit(end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.client().supported_verify_schemes()
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TransportError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err)?;
    Ok(Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).map_err(tls_err)?,
    ))
}

/// The TLS side of a node or client: whom it trusts and, for a node, what it presents. Cheap to
/// clone (shared); swapping the identity or the trust takes effect on new connections at once.
#[derive(Debug, Clone)]
pub struct Tls {
    trust: Arc<Trust>,
    identity: Option<Arc<Identity>>,
    server: Option<Arc<rustls::ServerConfig>>,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// A node (or the witness): trusts `ca_pem`, presents `cert_pem`/`key_pem` both ways.
    pub fn node(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Tls, TransportError> {
        Self::build(ca_pem, Some(certified_key(cert_pem, key_pem)?))
    }

    /// An operator's client (the CLI): trusts `ca_pem`, presents no certificate (it
    /// authenticates with a token).
    pub fn client(ca_pem: &str) -> Result<Tls, TransportError> {
        Self::build(ca_pem, None)
    }

    fn build(ca_pem: &str, identity: Option<Arc<CertifiedKey>>) -> Result<Tls, TransportError> {
        let (server_v, client_v) = verifiers(&[ca_pem.to_string()], &[])?;
        let trust = Arc::new(Trust {
            server: RwLock::new(server_v),
            client: RwLock::new(client_v),
            members: RwLock::new(None),
            cas: RwLock::new(crate::pki::split(ca_pem)),
        });
        let identity = identity.map(|k| Arc::new(Identity(RwLock::new(k))));
        let versions = &[&rustls::version::TLS13];
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(trust.clone());
        let client = match &identity {
            Some(id) => client.with_client_cert_resolver(id.clone()),
            None => client.with_no_client_auth(),
        };
        let server = match &identity {
            Some(id) => {
                let mut s = rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(versions)
                    .map_err(tls_err)?
                    .with_client_cert_verifier(Arc::new(ClientTrust(trust.clone())))
                    .with_cert_resolver(id.clone());
                // No session resumption: every connection shows its certificate again, so a
                // revoked or replaced one stops working at once (connections are pooled, so a
                // full handshake is rare).
                s.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                s.send_tls13_tickets = 0;
                Some(Arc::new(s))
            }
            None => None,
        };
        Ok(Tls {
            trust,
            identity,
            server,
            client: Arc::new(client),
        })
    }

    /// Present `cert_pem`/`key_pem` from now on (a renewed certificate).
    pub fn swap_identity(&self, cert_pem: &str, key_pem: &str) -> Result<(), TransportError> {
        let Some(id) = &self.identity else {
            return Err(TransportError::Tls("this client presents no certificate".into()));
        };
        let k = certified_key(cert_pem, key_pem)?;
        *id.0.write().unwrap_or_else(|p| p.into_inner()) = k;
        Ok(())
    }

    /// When the certificate this node presents now expires (None: it presents none).
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        let key = self.identity.as_ref()?.current();
        crate::pki::inspect(key.cert.first()?).ok().map(|i| i.not_after)
    }

    /// From now on, admit client certificates of these names only (the cluster's members;
    /// None: any name the CA signed). A removed node's certificate is refused at the handshake
    /// as revoked when it connects.
    pub fn set_members(&self, members: Option<std::collections::BTreeSet<String>>) {
        *self.trust.members.write().unwrap_or_else(|p| p.into_inner()) = members.map(Arc::new);
    }

    /// Whether a node certificate named `name` is admitted now (see [`Tls::set_members`]): for
    /// connections opened before a removal.
    pub fn admits(&self, name: &str) -> bool {
        self.trust
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|m| m.contains(name))
    }

    /// Trust exactly the CA certificates `cas` and revoke what `crls` (DER) list, from now on.
    pub fn set_trust(&self, cas: &[String], crls: &[Vec<u8>]) -> Result<(), TransportError> {
        let (s, c) = verifiers(cas, crls)?;
        *self.trust.server.write().unwrap_or_else(|p| p.into_inner()) = s;
        *self.trust.client.write().unwrap_or_else(|p| p.into_inner()) = c;
        *self.trust.cas.write().unwrap_or_else(|p| p.into_inner()) =
            cas.iter().flat_map(|c| crate::pki::split(c)).collect();
        Ok(())
    }

    /// The CA certificates trusted now (PEM, one each).
    pub fn trusted(&self) -> Vec<String> {
        self.trust.cas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key id of the CA that issued the certificate this node presents now.
    pub fn presented_issuer(&self) -> Option<String> {
        let key = self.identity.as_ref()?.current();
        crate::pki::inspect(key.cert.first()?).ok()?.issuer_key_id
    }

    /// A node identity `name` at 127.0.0.1 under one CA made for the whole test process (so that
    /// every in-process node trusts every other): for tests and the seeded simulation.
    #[cfg(any(test, feature = "testing"))]
    pub fn ephemeral(name: &str) -> Tls {
        static CA: std::sync::OnceLock<crate::pki::Issued> = std::sync::OnceLock::new();
        let now = std::time::SystemTime::now();
        let ca = CA.get_or_init(|| crate::pki::generate_ca("test", now).expect("a test CA"));
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let me = crate::pki::issue(ca, name, &[ip], now, crate::pki::NODE_LIFETIME).expect("a test certificate");
        Tls::node(&ca.cert_pem, &me.cert_pem, &me.key_pem).expect("a test TLS context")
    }

    /// An acceptor of TLS 1.3 connections presenting this node's certificate (client
    /// certificates verified when presented): the session store's `[sessions] tls` port.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.server.clone().map(tokio_rustls::TlsAcceptor::from)
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        if plaintext() {
            return reqwest::Client::builder();
        }
        reqwest::Client::builder()
            .use_preconfigured_tls((*self.client).clone())
            .https_only(true)
    }

    /// A client of this TLS for tests and tools that build requests by hand.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, TransportError> {
        build("test", self.builder().timeout(timeout))
    }
}

/// The pooled client of Raft RPCs (each call sets its own deadline from openraft's TTL).
pub fn raft_client(tls: &Tls) -> Result<reqwest::Client, TransportError> {
    build(
        "raft",
        tls.builder()
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .connect_timeout(PEER_CONNECT_TIMEOUT),
    )
}

/// The client a follower forwards writes to the leader with (see `api::peer`).
pub fn forward_client(tls: &Tls) -> Result<reqwest::Client, TransportError> {
    build(
        "forwarding",
        tls.builder()
            .timeout(FORWARD_TIMEOUT)
            .tcp_nodelay(true)
            .connect_timeout(PEER_CONNECT_TIMEOUT),
    )
}

/// The operator's client of a node's API (the CLI, the demo, the process tests): every request
/// ends within `timeout`, and connecting within `timeout` or 500 ms, whichever is shorter.
pub fn api_client(tls: &Tls, timeout: Duration) -> Result<reqwest::Client, TransportError> {
    build(
        "api",
        tls.builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(PEER_CONNECT_TIMEOUT)),
    )
}

/// The operator's client of a long-lived stream (`phalanx events --follow`): no bound on the
/// whole exchange, connecting within 500 ms (a dead node is left for the next one at once).
pub fn stream_client(tls: &Tls) -> Result<reqwest::Client, TransportError> {
    build("api stream", tls.builder().connect_timeout(PEER_CONNECT_TIMEOUT))
}

/// The client of alert webhooks; each delivery sets its recipient's timeout.
pub fn alert_client() -> Result<reqwest::Client, TransportError> {
    build("alert webhook", reqwest::Client::builder())
}

/// The client of HTTP fence devices (power switches); each call sets its device's timeout.
pub fn device_client() -> Result<reqwest::Client, TransportError> {
    build("fence device", reqwest::Client::builder())
}

/// A bound listener for the node's HTTP endpoint (API and peer routes on one port).
pub struct Listener {
    inner: tokio::net::TcpListener,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Bind an HTTP endpoint on `addr` (HOST:PORT): the node's API and peer routes, the witness,
/// the demo's power switch.
pub async fn bind<A: tokio::net::ToSocketAddrs + std::fmt::Display>(addr: A) -> Result<Listener, TransportError> {
    let inner = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    Ok(Listener { inner })
}

/// Serve `app` on `listener` until the process ends (or the listener fails).
pub async fn serve(listener: Listener, app: axum::Router) -> Result<(), TransportError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // TCP_NODELAY on every accepted connection: Raft RPCs and forwarded writes are small
    // request/response exchanges on the failover path, which Nagle's algorithm would hold back.
    let listener = listener.inner.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await
    .map_err(|source| TransportError::Serve { addr, source })
}

/// Who is on the other end of a TLS connection: its address, and the name (CN) of the cluster
/// certificate it presented, verified at the handshake (None: it presented none: an operator's
/// client, which the token authenticates).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: Option<String>,
    /// Moves this connection's socket to the runtime that polls it next ([`Movable`]).
    pub mover: Mover,
}

/// A request that an accepted connection's socket move to the runtime that next polls it:
/// what a route that hands its upgraded connection to another runtime asks once the upgrade is
/// done (the session store's peer stream, served on the store's threads). A tokio socket stays
/// registered with the runtime that accepted it, the API's: without the move, every frame that
/// arrived woke the API's thread, which then woke the store's (2,600 wake-ups a second of the
/// leader's API thread under the session benchmark), and session traffic queued behind the
/// cluster's own work there.
#[derive(Debug, Clone, Default)]
pub struct Mover(Arc<AtomicBool>);

impl Mover {
    /// Ask for the move (done at the connection's next read or write).
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An accepted TCP connection that can move to another runtime when its [`Mover`] asks: its
/// next read or write then deregisters the socket from the runtime it was registered with and
/// registers it with the runtime of the task polling it (nothing is lost: the kernel keeps
/// the socket's data, and the TLS session above it is untouched). Written here because tokio
/// moves a socket only through `into_std` and `from_std`, which need the socket by value under
/// the TLS stream that owns it.
pub struct Movable {
    tcp: Option<tokio::net::TcpStream>,
    mover: Mover,
}

impl Movable {
    fn new(tcp: tokio::net::TcpStream, mover: Mover) -> Self {
        Movable { tcp: Some(tcp), mover }
    }

    /// The socket, moved first if that was asked (and a runtime is polling).
    fn tcp(&mut self) -> std::io::Result<&mut tokio::net::TcpStream> {
        if self.mover.0.load(Ordering::Relaxed)
            && tokio::runtime::Handle::try_current().is_ok()
            && self.mover.0.swap(false, Ordering::SeqCst)
        {
            if let Some(tcp) = self.tcp.take() {
                let std = tcp.into_std()?;
                self.tcp = Some(tokio::net::TcpStream::from_std(std)?);
            }
        }
        // None only after a move failed half way: the connection is lost.
        self.tcp
            .as_mut()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "the socket was lost moving it"))
    }

    /// Poll the socket (moved first if asked) with `f`.
    fn poll_with<T>(
        self: std::pin::Pin<&mut Self>,
        f: impl FnOnce(std::pin::Pin<&mut tokio::net::TcpStream>) -> std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match self.get_mut().tcp() {
            Ok(tcp) => f(std::pin::Pin::new(tcp)),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncRead for Movable {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_with(|tcp| tcp.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Movable {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.poll_with(|tcp| tcp.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.poll_with(|tcp| tcp.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_with(|tcp| tcp.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_with(|tcp| tcp.poll_shutdown(cx))
    }
}

/// A connection refused at the TLS handshake: from where, why (a short class: `unknown-ca` for
/// a certificate of another cluster or none at all, `expired`, `revoked`, `bad-certificate`,
/// `not-tls` for plain HTTP, `incompatible` for TLS below 1.3, `timeout`, `malformed`) and the
/// detail.
#[derive(Debug, Clone)]
pub struct Refused {
    pub from: SocketAddr,
    pub reason: &'static str,
    pub detail: String,
}

/// Every reason a handshake is refused for (each is a series of `phalanx_tls_refused_total`).
pub const REFUSAL_REASONS: [&str; 8] = [
    "unknown-ca",
    "expired",
    "revoked",
    "bad-certificate",
    "not-tls",
    "incompatible",
    "timeout",
    "malformed",
];

fn classify(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            // Signed by another CA (of another cluster, maybe one of the same name).
            C::UnknownIssuer | C::BadSignature => "unknown-ca",
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => "expired",
            C::Revoked => "revoked",
            _ => "bad-certificate",
        },
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::NoCertificatesPresented) => "unknown-ca",
        _ => "malformed",
    }
}

/// A connection closed before its first byte: not reported as a refusal.
const CLOSED: &str = "closed";

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accepted, handshaken connections of a TLS endpoint, for `axum::serve`. Handshakes run in
/// tasks of their own, so a slow or hostile client never holds the next one back.
struct TlsIncoming {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<Movable>, Peer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsIncoming {
    type Io = tokio_rustls::server::TlsStream<Movable>;
    type Addr = Peer;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor ended (its listener failed): nothing more will come.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            cert: None,
            mover: Mover::default(),
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsIncoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsIncoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Answer a client that spoke plain HTTP to a TLS port with a clear 400, then close.
async fn tell_plain_http(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = "this is a phalanx endpoint: it speaks HTTPS only (TLS 1.3, the cluster CA's ca.crt)\n";
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(resp.as_bytes())).await;
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    from: SocketAddr,
) -> Result<(tokio_rustls::server::TlsStream<Movable>, Peer), Refused> {
    let refused = |reason, detail: String| Refused { from, reason, detail };
    // A TLS record starts with 0x16 (handshake); an HTTP request with a method's letter.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            tell_plain_http(tcp).await;
            return Err(refused("not-tls", "a plain HTTP request".into()));
        }
        // Closed before a byte (a TCP health check, a port probe): nothing to refuse.
        Ok(Ok(0)) => return Err(refused(CLOSED, String::new())),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(refused("malformed", e.to_string())),
        Err(_) => return Err(refused("timeout", "no handshake".into())),
    }
    let mover = Mover::default();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Movable::new(tcp, mover.clone()))).await {
        Ok(Ok(s)) => {
            let cert = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|d| crate::pki::inspect(d).ok())
                .map(|i| i.name);
            Ok((
                s,
                Peer {
                    addr: from,
                    cert,
                    mover,
                },
            ))
        }
        Ok(Err(e)) => Err(refused(classify(&e), e.to_string())),
        Err(_) => Err(refused("timeout", "the handshake did not finish".into())),
    }
}

/// Serve `app` over TLS (`tls`, a node's) on `listener` until the process ends (or the listener
/// fails). Each refused handshake is passed to `refused` (metrics, the event log).
pub async fn serve_tls(
    listener: Listener,
    app: axum::Router,
    tls: &Tls,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) -> Result<(), TransportError> {
    let Some(server) = tls.server.clone() else {
        return Err(TransportError::Tls("serving needs a node certificate".into()));
    };
    let local = listener.local_addr().map_err(|source| TransportError::Serve {
        addr: "?".into(),
        source,
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let refused = Arc::new(refused);
    let tcp = listener.inner;
    // The acceptor ends with the server (when this future is dropped, the listener closes).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _acceptor = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (conn, from) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: the next accept may succeed.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // TCP_NODELAY: Raft RPCs and forwarded writes are small request/response exchanges
            // on the failover path, which Nagle's algorithm would hold back.
            let _ = conn.set_nodelay(true);
            let (acceptor, to_serve, refused) = (acceptor.clone(), tx.clone(), refused.clone());
            tokio::spawn(async move {
                match handshake(acceptor, conn, from).await {
                    Ok(c) => {
                        let _ = to_serve.send(c).await;
                    }
                    Err(r) if r.reason == CLOSED => {}
                    Err(r) => {
                        tracing::debug!(from = %r.from, reason = r.reason, detail = %r.detail, "TLS handshake refused");
                        refused(r);
                    }
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    }));
    axum::serve(
        TlsIncoming { rx, local },
        app.into_make_service_with_connect_info::<Peer>(),
    )
    .await
    .map_err(|source| TransportError::Serve {
        addr: local.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted on runtime `a` (a blocking client on its other end).
    fn accepted_on(a: &tokio::runtime::Runtime) -> (Movable, Mover, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let _in = a.enter();
        let mover = Mover::default();
        let tcp = tokio::net::TcpStream::from_std(server).unwrap();
        (Movable::new(tcp, mover.clone()), mover, client)
    }

    #[test]
    fn a_moved_connection_works_on_its_new_runtime_once_the_old_one_is_gone() {
        use std::io::{Read, Write};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let a = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let b = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (mut moved, mover, mut client) = accepted_on(&a);
        let (mut stayed, _, mut other) = accepted_on(&a);
        mover.request();
        // Written before the move: the kernel keeps it for the socket wherever it is registered.
        client.write_all(b"hello").unwrap();
        other.write_all(b"hello").unwrap();
        drop(a);
        b.block_on(async {
            let mut got = [0u8; 5];
            moved.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello");
            moved.write_all(b"world").await.unwrap();
            // The one left registered with the runtime that is gone cannot be read any more.
            assert!(stayed.read_exact(&mut got).await.is_err());
        });
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");
    }

    #[test]
    fn every_client_builds_and_urls_are_https() {
        let tls = Tls::ephemeral("n1");
        raft_client(&tls).unwrap();
        forward_client(&tls).unwrap();
        api_client(&tls, Duration::from_secs(1)).unwrap();
        device_client().unwrap();
        assert_eq!(url("127.0.0.1:7480", "/v1/status"), "https://127.0.0.1:7480/v1/status");
    }

    async fn serve_one(tls: Tls) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Refused>) {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/who",
            axum::routing::get(
                |axum::extract::ConnectInfo(p): axum::extract::ConnectInfo<Peer>| async move {
                    p.cert.unwrap_or_else(|| "-".into())
                },
            ),
        );
        tokio::spawn(async move { serve_tls(l, app, &tls, move |r| drop(tx.send(r))).await });
        (addr, rx)
    }

    #[tokio::test]
    async fn nodes_present_certificates_operators_need_none_and_strangers_are_refused_at_the_handshake() {
        let now = std::time::SystemTime::now();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let ca = crate::pki::generate_ca("c", now).unwrap();
        let node = |name: &str, ca: &crate::pki::Issued, t, life| {
            let me = crate::pki::issue(ca, name, &[ip], t, life).unwrap();
            Tls::node(&ca.cert_pem, &me.cert_pem, &me.key_pem).unwrap()
        };
        let (addr, mut refused) = serve_one(node("n1", &ca, now, crate::pki::NODE_LIFETIME)).await;
        let get = |tls: Tls| async move {
            let c = tls.http_client(Duration::from_secs(5)).unwrap();
            let r = c.get(url(&addr.to_string(), "/who")).send().await?;
            r.text().await
        };
        // Another node: its certificate's name reaches the handler.
        assert_eq!(
            get(node("n2", &ca, now, crate::pki::NODE_LIFETIME)).await.unwrap(),
            "n2"
        );
        // The CLI: no certificate, still TLS (a token authenticates it above this layer).
        assert_eq!(get(Tls::client(&ca.cert_pem).unwrap()).await.unwrap(), "-");
        // Another cluster's node: refused at the handshake, and reported.
        let other = crate::pki::generate_ca("c", now).unwrap();
        let stranger = {
            let me = crate::pki::issue(&other, "n2", &[ip], now, crate::pki::NODE_LIFETIME).unwrap();
            Tls::node(&ca.cert_pem, &me.cert_pem, &me.key_pem).unwrap()
        };
        assert!(get(stranger).await.is_err());
        assert_eq!(refused.recv().await.unwrap().reason, "unknown-ca");
        // An expired certificate of this cluster.
        let old = now - Duration::from_secs(200 * 86_400);
        assert!(get(node("n3", &ca, old, crate::pki::NODE_LIFETIME)).await.is_err());
        assert_eq!(refused.recv().await.unwrap().reason, "expired");
        // A client that trusts another CA refuses this server.
        assert!(get(Tls::client(&other.cert_pem).unwrap()).await.is_err());
        assert_eq!(refused.recv().await.unwrap().reason, "malformed");
        // A connection closed at once (a TCP health check) is no refusal.
        drop(tokio::net::TcpStream::connect(addr).await.unwrap());
        // Plain HTTP gets a clear answer.
        let plain = reqwest::get(format!("http://{addr}/who")).await.unwrap();
        assert_eq!(plain.status(), 400);
        assert!(plain.text().await.unwrap().contains("HTTPS only"));
        assert_eq!(refused.recv().await.unwrap().reason, "not-tls");
        // A renewed certificate is presented by new connections, with nothing restarted.
        let n4 = node("n4", &ca, now, crate::pki::NODE_LIFETIME);
        assert_eq!(get(n4.clone()).await.unwrap(), "n4");
        let renewed = crate::pki::issue(&ca, "n4-renewed", &[ip], now, crate::pki::NODE_LIFETIME).unwrap();
        n4.swap_identity(&renewed.cert_pem, &renewed.key_pem).unwrap();
        assert_eq!(get(n4).await.unwrap(), "n4-renewed");
    }

    #[tokio::test]
    async fn binds_an_ephemeral_port() {
        let l = bind("127.0.0.1:0").await.unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }
}

//! The cluster's certificate authority and the certificates it issues: `phalanx init` makes an
//! ECDSA P-256 CA (10 years, name-constrained to `CLUSTER.phalanx`) beside the cluster key
//! (`ca.crt`, `ca.key`), and each node and the witness gets a certificate of 90 days (CN = its
//! name, SAN = `NAME.CLUSTER.phalanx` and its addresses) in `certs/` there, issued by
//! `phalanx cert issue` or by the node itself at start when it can read the CA key. A
//! certificate past 2/3 of its life, naming other addresses or issued by another CA is issued
//! again. Pure functions of their inputs (time is passed in) plus the few file helpers; the TLS
//! configurations built from these are `transport`'s.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CA's certificate and key, beside the cluster key.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// The next CA of a rotation (`phalanx ca rotate`), beside the current one until it replaces it.
pub const NEXT_CA_CERT: &str = "ca-next.crt";
pub const NEXT_CA_KEY: &str = "ca-next.key";
/// The folder of node certificates, beside the cluster key.
pub const CERT_DIR: &str = "certs";
/// Lifetime of the CA: ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of a node certificate: 90 days.
pub const NODE_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// How far back a new certificate's validity starts (clocks of the cluster differ a little): an
/// hour, or an eighth of a (test's) short lifetime.
fn backdate(lifetime: Duration) -> Duration {
    Duration::from_secs(3600).min(lifetime / 8)
}

/// The environment variable that shortens node certificates' lifetime (a duration, `8s`), so
/// that tests see them renewed while the cluster runs. Unset: [`NODE_LIFETIME`].
pub const LIFETIME_ENV: &str = "PHALANX_CERT_LIFETIME";

/// The lifetime of the node certificates issued here ([`LIFETIME_ENV`], else 90 days).
pub fn node_lifetime() -> Duration {
    std::env::var(LIFETIME_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|d| *d >= Duration::from_secs(2))
        .unwrap_or(NODE_LIFETIME)
}

/// How long a node waits before it looks at its certificate `cert_pem` again: until 2/3 of its
/// life, within 1 s .. 1 h.
pub fn next_check(cert_pem: &str, now: SystemTime) -> Duration {
    let due = inspect_pem(cert_pem).ok().map(|i| {
        let life = i.not_after.duration_since(i.not_before).unwrap_or_default();
        (i.not_before + life * 2 / 3).duration_since(now).unwrap_or_default()
    });
    due.unwrap_or_default()
        .clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("{path} is readable by group or others (mode {mode:04o}): chmod 600 {path}")]
    Exposed { path: String, mode: u32 },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("no cluster CA at {path}: run `phalanx init` (it adds the CA beside an existing cluster key) and copy ca.crt (and ca.key, for nodes that issue their own certificates) to every node")]
    NoCa { path: String },
    #[error("no usable certificate for {name} at {path} ({why}), and the CA key {ca_key} is not here to issue one: run `phalanx cert issue {name}` where it is, and copy the two files to {dir}")]
    NoCert {
        name: String,
        path: String,
        why: String,
        ca_key: String,
        dir: String,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the CA and certificates of the cluster whose key file is `key_file` live: its folder.
#[derive(Debug, Clone)]
pub struct Paths {
    dir: PathBuf,
    key_file: PathBuf,
}

impl Paths {
    pub fn beside(key_file: &Path) -> Self {
        let dir = key_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Paths {
            dir,
            key_file: key_file.to_path_buf(),
        }
    }
    /// The cluster key file these are beside.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }
    /// The next CA of a `phalanx ca rotate` (certificate and key), until it is the only one.
    pub fn next_ca_cert(&self) -> PathBuf {
        self.dir.join(NEXT_CA_CERT)
    }
    pub fn next_ca_key(&self) -> PathBuf {
        self.dir.join(NEXT_CA_KEY)
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY)
    }
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join(CERT_DIR)
    }
    pub fn node_cert(&self, name: &str) -> PathBuf {
        self.cert_dir().join(format!("{name}.crt"))
    }
    pub fn node_key(&self, name: &str) -> PathBuf {
        self.cert_dir().join(format!("{name}.key"))
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { cert_pem, key_pem: *** }")
    }
}

/// What a certificate says, read back (see [`inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name: the node's name (or the CA's).
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// The DNS subtrees a CA is constrained to.
    pub permitted_dns: Vec<String>,
    /// Hex of the serial number.
    pub serial: String,
    /// Hex of the issuer's key identifier (authority key id), else of its own (subject key id).
    pub issuer_key_id: Option<String>,
    pub key_id: Option<String>,
}

impl CertInfo {
    /// Whether `now` is past 2/3 of its lifetime (time to issue it again).
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        now >= self.not_before + life * 2 / 3
    }
}

/// The DNS label a name stands for in certificates: lowercase, anything but letters, digits
/// and `-` becomes `-` (node and cluster names may hold `_` and `.`).
pub fn label(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "x".into()
    } else {
        s
    }
}

/// The DNS domain a cluster's CA is constrained to.
pub fn domain(cluster: &str) -> String {
    format!("{}.phalanx", label(cluster))
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn serial() -> rcgen::SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&b)
}

/// A new CA for the cluster `cluster`, valid from `now` for [`CA_LIFETIME`].
pub fn generate_ca(cluster: &str, now: SystemTime) -> Result<Issued, PkiError> {
    make_ca(cluster, format!("phalanx CA {cluster}"), now)
}

/// A CA to replace the cluster's (`phalanx ca rotate`): as [`generate_ca`], its name telling
/// when it was made (so that the two are told apart in `cert list` and by TLS stacks).
pub fn generate_next_ca(cluster: &str, now: SystemTime) -> Result<Issued, PkiError> {
    let made = humantime::format_rfc3339_seconds(now);
    make_ca(cluster, format!("phalanx CA {cluster} {made}"), now)
}

fn make_ca(cluster: &str, cn: String, now: SystemTime) -> Result<Issued, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(domain(cluster))],
        excluded_subtrees: vec![],
    });
    p.not_before = at(now - backdate(CA_LIFETIME));
    p.not_after = at(now + CA_LIFETIME);
    p.serial_number = Some(serial());
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for the node (or witness) `name` at `ips`, issued by `ca`, valid from `now`
/// for `lifetime`. Its DNS name sits in the CA's permitted domain.
pub fn issue(ca: &Issued, name: &str, ips: &[IpAddr], now: SystemTime, lifetime: Duration) -> Result<Issued, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert_pem = sign(ca, &key, name, ips, now, lifetime)?;
    Ok(Issued {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// A new key of a node that holds no CA key, and its certificate signing request (PEM), for a
/// peer that holds one to sign (see [`issue_for_request`]).
pub fn request(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    Ok((p.serialize_request(&key)?.pem()?, key.serialize_pem()))
}

/// A certificate for `name` at `ips` for the key of the signing request `csr_pem` (its
/// signature checked; the names and addresses it asks for are ignored: the issuer decides).
pub fn issue_for_request(
    ca: &Issued,
    csr_pem: &str,
    name: &str,
    ips: &[IpAddr],
    now: SystemTime,
    lifetime: Duration,
) -> Result<String, PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    sign(ca, &csr.public_key, name, ips, now, lifetime)
}

/// The node certificate of `name` at `ips` for `key`, signed by `ca` (PEM).
fn sign(
    ca: &Issued,
    key: &impl rcgen::PublicKeyData,
    name: &str,
    ips: &[IpAddr],
    now: SystemTime,
    lifetime: Duration,
) -> Result<String, PkiError> {
    let ca_info = inspect_pem(&ca.cert_pem).map_err(|reason| PkiError::Invalid {
        path: CA_CERT.into(),
        reason,
    })?;
    let dom = ca_info
        .permitted_dns
        .first()
        .cloned()
        .unwrap_or_else(|| "phalanx".into());
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(format!("{}.{dom}", label(name)).try_into()?)];
    let mut seen = std::collections::BTreeSet::new();
    for ip in ips.iter().filter(|ip| !ip.is_unspecified()) {
        if seen.insert(*ip) {
            sans.push(SanType::IpAddress(*ip));
        }
    }
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = at(now - backdate(lifetime));
    p.not_after = at(now + lifetime);
    p.serial_number = Some(serial());
    Ok(p.signed_by(key, &issuer)?.pem())
}

fn hex_id(b: &[u8]) -> String {
    hex::encode(b)
}

/// Read back what the first certificate of a PEM text says.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?;
    inspect(&der)
}

/// Read back what a DER certificate says.
pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let name = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut info = CertInfo {
        name,
        dns: vec![],
        ips: vec![],
        not_before: UNIX_EPOCH + Duration::from_secs(x.validity().not_before.timestamp().max(0) as u64),
        not_after: UNIX_EPOCH + Duration::from_secs(x.validity().not_after.timestamp().max(0) as u64),
        is_ca: x.is_ca(),
        permitted_dns: vec![],
        serial: hex_id(x.raw_serial()),
        issuer_key_id: None,
        key_id: None,
    };
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for g in &san.general_names {
                    match g {
                        GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => info.ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                            16 => info
                                .ips
                                .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            ParsedExtension::NameConstraints(nc) => {
                for s in nc.permitted_subtrees.iter().flatten() {
                    if let GeneralName::DNSName(d) = &s.base {
                        info.permitted_dns.push(d.to_string());
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                info.issuer_key_id = a.key_identifier.as_ref().map(|k| hex_id(k.0));
            }
            ParsedExtension::SubjectKeyIdentifier(k) => info.key_id = Some(hex_id(k.0)),
            _ => {}
        }
    }
    Ok(info)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Read a file holding a private key, refusing one its group or others may read.
fn read_private(path: &Path) -> Result<String, PkiError> {
    crate::key::private_mode(path).map_err(|mode| PkiError::Exposed {
        path: path.display().to_string(),
        mode,
    })?;
    read(path)
}

/// Every address node (or witness) `name` serves on, which its certificate names: `bound` (its
/// links and API, or the witness's address), its `metrics_listen` in `config`, and its session
/// store's (`sessions::listener::cert_ips`).
pub fn addresses(config: &phalanx_core::Config, name: &str, bound: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = bound.into_iter().collect();
    ips.extend(config.node(name).and_then(|n| n.metrics_listen).map(|a| a.ip()));
    ips.extend(crate::sessions::listener::cert_ips(config, name));
    ips
}

/// Write `contents` to `path` with `mode` (its folder made if missing), through a temporary
/// file beside it renamed over it, so that a crash never leaves half a file under that name.
pub fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Make the cluster's CA at `paths` (`phalanx init`); never overwrites one.
pub fn create_ca(paths: &Paths, cluster: &str, now: SystemTime) -> Result<(), PkiError> {
    for p in [paths.ca_cert(), paths.ca_key()] {
        if p.exists() {
            return Err(PkiError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let ca = generate_ca(cluster, now)?;
    write(&paths.ca_key(), &ca.key_pem, 0o600)?;
    write(&paths.ca_cert(), &ca.cert_pem, 0o644)
}

/// The next CA of a rotation at `paths` (`ca-next.crt`, `ca-next.key`): the one there when both
/// are there and go together, else a new one. The key file is created exclusively, so two
/// `ca rotate` started at once in one folder never end up with one CA's certificate and the
/// other's key: the second finds the first's (or is told to run again in a moment).
pub fn next_ca(paths: &Paths, cluster: &str, now: SystemTime) -> Result<Issued, PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (cert_p, key_p) = (paths.next_ca_cert(), paths.next_ca_key());
    let busy = || {
        PkiError::Invalid {
        path: key_p.display().to_string(),
        reason: format!(
            "another `phalanx ca rotate` is making the next CA here, or one was interrupted: run the command again in a moment; if none runs, remove {} and {}",
            key_p.display(),
            cert_p.display()
        ),
    }
    };
    if key_p.exists() {
        let key_pem = read_private(&key_p)?;
        let cert_pem = std::fs::read_to_string(&cert_p).unwrap_or_default();
        if key_matches(&cert_pem, &key_pem) {
            return Ok(Issued { cert_pem, key_pem });
        }
        return Err(busy());
    }
    let ca = generate_next_ca(cluster, now)?;
    let err = |source| PkiError::Write {
        path: key_p.display().to_string(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(busy()),
        Err(e) => return Err(err(e)),
    };
    f.write_all(ca.key_pem.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    write(&cert_p, &ca.cert_pem, 0o644)?;
    Ok(ca)
}

/// The CA's certificate (PEM), which every node and the CLI need.
pub fn load_ca_cert(paths: &Paths) -> Result<String, PkiError> {
    let p = paths.ca_cert();
    if !p.exists() {
        return Err(PkiError::NoCa {
            path: p.display().to_string(),
        });
    }
    read(&p)
}

/// The CA with its key, when this machine holds the key (`ca.key`'s; see [`issuer`]).
pub fn load_ca(paths: &Paths) -> Result<Option<Issued>, PkiError> {
    load_ca_cert(paths)?;
    if !paths.ca_key().exists() {
        return Ok(None);
    }
    // Refuse an exposed key file with its error rather than as "no key here".
    read_private(&paths.ca_key())?;
    Ok(issuer(paths, None))
}

/// Issue a certificate for `name` at `ips` with the CA at `paths` and write it to `certs/`
/// (`phalanx cert issue`). Needs the CA key.
pub fn issue_to_files(paths: &Paths, name: &str, ips: &[IpAddr], now: SystemTime) -> Result<Issued, PkiError> {
    let Some(ca) = load_ca(paths)? else {
        return Err(PkiError::Read {
            path: paths.ca_key().display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the CA key is not on this machine"),
        });
    };
    let issued = issue(&ca, name, ips, now, node_lifetime())?;
    store_node(paths, name, &issued)?;
    Ok(issued)
}

/// Write node `name`'s certificate and key to `certs/` (the key 0600).
pub fn store_node(paths: &Paths, name: &str, issued: &Issued) -> Result<(), PkiError> {
    write(&paths.node_key(name), &issued.key_pem, 0o600)?;
    write(&paths.node_cert(name), &issued.cert_pem, 0o644)
}

/// Why the certificate in `cert_pem` will not do for `name` at `ips` under the CA `ca_pem` at
/// `now` (None: it will).
pub fn unfit(cert_pem: &str, ca_pem: &str, name: &str, ips: &[IpAddr], now: SystemTime) -> Option<String> {
    let info = match inspect_pem(cert_pem) {
        Ok(i) => i,
        Err(e) => return Some(e),
    };
    if info.name != name {
        return Some(format!("it names {:?}", info.name));
    }
    if now >= info.not_after {
        return Some("it expired".into());
    }
    if info.due_for_renewal(now) {
        return Some("it is past 2/3 of its lifetime".into());
    }
    if let Some(ip) = ips.iter().find(|ip| !ip.is_unspecified() && !info.ips.contains(ip)) {
        return Some(format!("it does not name {ip}"));
    }
    let cas = split(ca_pem);
    if cas.is_empty() {
        return Some("the CA certificate: none in the file".into());
    }
    let mut known = false;
    for ca in &cas {
        match inspect_pem(ca) {
            Ok(ca) => known |= ca.key_id.is_none() || ca.key_id == info.issuer_key_id,
            Err(e) => return Some(format!("the CA certificate: {e}")),
        }
    }
    (!known).then(|| "another CA issued it".into())
}

/// The certificates of a PEM bundle (`ca.crt` holds two during a rotation), each as PEM.
pub fn split(bundle: &str) -> Vec<String> {
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .filter_map(|p| {
            p.find("-----BEGIN CERTIFICATE-----")
                .map(|at| format!("{}\n", &p[at..]))
        })
        .collect()
}

/// The key identifier of a CA certificate (what node certificates name as their issuer).
pub fn ca_id(pem: &str) -> Option<String> {
    inspect_pem(pem).ok().and_then(|i| i.key_id)
}

/// Whether the private key `key_pem` is the one certificate `cert_pem` was made for.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let (Ok(der), Ok(key)) = (
        CertificateDer::from_pem_slice(cert_pem.as_bytes()),
        KeyPair::from_pem(key_pem),
    ) else {
        return false;
    };
    x509_parser::parse_x509_certificate(&der)
        .is_ok_and(|(_, x)| x.public_key().subject_public_key.data.as_ref() == key.der_bytes())
}

/// Every CA this machine can issue with: the one of `ca.key` (its certificate found in
/// `ca.crt` or `ca-next.crt`) and the next one of a rotation (`ca-next.*`).
pub fn issuers(paths: &Paths) -> Vec<Issued> {
    let mut certs = std::fs::read_to_string(paths.ca_cert())
        .map(|b| split(&b))
        .unwrap_or_default();
    let next = std::fs::read_to_string(paths.next_ca_cert())
        .map(|b| split(&b))
        .unwrap_or_default();
    certs.extend(next.iter().cloned());
    let mut out = Vec::new();
    for (key_path, candidates) in [(paths.ca_key(), &certs), (paths.next_ca_key(), &next)] {
        let Ok(key_pem) = read_private(&key_path) else { continue };
        if let Some(cert_pem) = candidates.iter().find(|c| key_matches(c, &key_pem)) {
            out.push(Issued {
                cert_pem: cert_pem.clone(),
                key_pem,
            });
        }
    }
    out
}

/// The CA to issue with: the one whose certificate is `issuer` (the replicated trust's), or
/// without one, `ca.key`'s; None when this machine does not hold that key.
pub fn issuer(paths: &Paths, issuer: Option<&str>) -> Option<Issued> {
    let all = issuers(paths);
    match issuer.and_then(ca_id) {
        Some(id) => all
            .into_iter()
            .find(|ca| ca_id(&ca.cert_pem).as_deref() == Some(id.as_str())),
        None => all.into_iter().next(),
    }
}

/// The certificate a node (or the witness) `name` at `ips` runs with: the one in `certs/` when
/// it will do, else a new one issued here when this machine holds the CA key (written there),
/// else an error saying what to do. A certificate that will not do only because it is past 2/3
/// of its life is still used when no new one can be issued (it works until it expires).
pub fn node_identity(paths: &Paths, name: &str, ips: &[IpAddr], now: SystemTime) -> Result<Issued, PkiError> {
    node_identity_from(paths, name, ips, now, None)
}

/// [`node_identity`] when the cluster issues from the CA `issuer` (the replicated trust's, in
/// a rotation): a certificate another CA issued is issued again, here if this machine holds
/// that CA's key; if not, it goes on being used while it is valid (a peer holding the key signs
/// its successor: see `phalanx daemon`'s renewal).
pub fn node_identity_from(
    paths: &Paths,
    name: &str,
    ips: &[IpAddr],
    now: SystemTime,
    issuer: Option<&str>,
) -> Result<Issued, PkiError> {
    const OTHER_ISSUER: &str = "the cluster issues from another CA now";
    let ca_pem = load_ca_cert(paths)?;
    let (cert_p, key_p) = (paths.node_cert(name), paths.node_key(name));
    let existing = if cert_p.exists() && key_p.exists() {
        Some(Issued {
            cert_pem: read(&cert_p)?,
            key_pem: read_private(&key_p)?,
        })
    } else {
        None
    };
    let wanted = issuer.and_then(ca_id);
    let why = match &existing {
        Some(e) => match unfit(&e.cert_pem, &ca_pem, name, ips, now).or_else(|| {
            let by = inspect_pem(&e.cert_pem).ok().and_then(|i| i.issuer_key_id);
            (wanted.is_some() && by != wanted).then(|| OTHER_ISSUER.to_string())
        }) {
            None => return Ok(existing.unwrap_or_else(|| unreachable!())),
            Some(why) => why,
        },
        None => "there is none".into(),
    };
    // The key of the CA wanted (or of `ca.key`): refused with its error when exposed.
    if paths.ca_key().exists() {
        read_private(&paths.ca_key())?;
    }
    if let Some(ca) = self::issuer(paths, issuer) {
        tracing::info!(node = name, reason = %why, "issuing this node's certificate with the cluster CA");
        let issued = issue(&ca, name, ips, now, node_lifetime())?;
        store_node(paths, name, &issued)?;
        return Ok(issued);
    }
    if let Some(e) = existing {
        if let Ok(info) = inspect_pem(&e.cert_pem) {
            if (why.contains("2/3") || why == OTHER_ISSUER) && now < info.not_after {
                tracing::warn!(node = name, not_after = ?info.not_after, reason = %why, "this node's certificate is due and the CA key is not here to issue it");
                return Ok(e);
            }
        }
    }
    Err(PkiError::NoCert {
        name: name.into(),
        path: cert_p.display().to_string(),
        why,
        ca_key: paths.ca_key().display().to_string(),
        dir: paths.cert_dir().display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two `ca rotate` in one folder share one next CA: the second finds the first's; a key
    /// without its certificate (one being written) is an error that says what to do.
    #[test]
    fn the_next_ca_is_made_once_per_folder() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::beside(&dir.path().join("k"));
        let a = next_ca(&paths, "c", t0()).unwrap();
        let b = next_ca(&paths, "c", t0()).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        assert!(key_matches(&a.cert_pem, &b.key_pem));
        std::fs::remove_file(paths.next_ca_cert()).unwrap();
        let e = next_ca(&paths, "c", t0()).unwrap_err().to_string();
        assert!(e.contains("run the command again"), "{e}");
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_node_certificate_names_the_node_its_addresses_and_the_cluster_domain() {
        let ca = generate_ca("Prod_1", t0()).unwrap();
        let ca_info = inspect_pem(&ca.cert_pem).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.permitted_dns, vec!["prod-1.phalanx".to_string()]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let n = issue(&ca, "n1", &[ip, ip, "0.0.0.0".parse().unwrap()], t0(), NODE_LIFETIME).unwrap();
        let info = inspect_pem(&n.cert_pem).unwrap();
        assert_eq!(info.name, "n1");
        assert_eq!(info.dns, vec!["n1.prod-1.phalanx".to_string()]);
        assert_eq!(info.ips, vec![ip]);
        assert!(!info.is_ca);
        assert_eq!(info.not_after, t0() + NODE_LIFETIME);
        assert_eq!(info.issuer_key_id, ca_info.key_id);
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n1", &[ip], t0()).is_none());
    }

    #[test]
    fn a_certificate_is_unfit_when_old_elsewhere_or_of_another_ca() {
        let ca = generate_ca("c", t0()).unwrap();
        let other = generate_ca("c", t0()).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let n = issue(&ca, "n1", &[ip], t0(), NODE_LIFETIME).unwrap();
        let day = Duration::from_secs(86_400);
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n1", &[ip], t0() + day * 59).is_none());
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n1", &[ip], t0() + day * 61)
            .unwrap()
            .contains("2/3"));
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n1", &[ip], t0() + day * 91)
            .unwrap()
            .contains("expired"));
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n2", &[ip], t0())
            .unwrap()
            .contains("names"));
        let other_ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(unfit(&n.cert_pem, &ca.cert_pem, "n1", &[other_ip], t0())
            .unwrap()
            .contains("10.0.0.2"));
        assert!(unfit(&n.cert_pem, &other.cert_pem, "n1", &[ip], t0())
            .unwrap()
            .contains("another CA"));
    }

    #[test]
    fn a_signing_request_gets_the_issuers_names_not_its_own() {
        let ca = generate_ca("c", t0()).unwrap();
        let (csr, key) = request("n3").unwrap();
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        let cert = issue_for_request(&ca, &csr, "n3", &[ip], t0(), NODE_LIFETIME).unwrap();
        let info = inspect_pem(&cert).unwrap();
        assert_eq!((info.name.as_str(), info.ips.as_slice()), ("n3", [ip].as_slice()));
        assert!(unfit(&cert, &ca.cert_pem, "n3", &[ip], t0()).is_none());
        // The certificate goes with the requester's key.
        crate::transport::Tls::node(&ca.cert_pem, &cert, &key).unwrap();
        assert!(issue_for_request(&ca, "not a request", "n3", &[ip], t0(), NODE_LIFETIME).is_err());
    }

    #[test]
    fn files_are_private_never_overwritten_and_a_node_issues_its_own_certificate() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::beside(&dir.path().join("phalanx.key"));
        assert!(matches!(
            node_identity(&paths, "n1", &[], t0()),
            Err(PkiError::NoCa { .. })
        ));
        create_ca(&paths, "c", t0()).unwrap();
        assert!(matches!(create_ca(&paths, "c", t0()), Err(PkiError::Exists { .. })));
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(paths.ca_key()), 0o600);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = node_identity(&paths, "n1", &[ip], t0()).unwrap();
        assert_eq!(mode(paths.node_key("n1")), 0o600);
        // Kept while it will do; issued again when the addresses change.
        let b = node_identity(&paths, "n1", &[ip], t0()).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        let c = node_identity(&paths, "n1", &["127.0.0.2".parse().unwrap()], t0()).unwrap();
        assert_ne!(a.cert_pem, c.cert_pem);
        // Without the CA key: the old one while it works, else a clear error.
        std::fs::remove_file(paths.ca_key()).unwrap();
        let day = Duration::from_secs(86_400);
        let d = node_identity(&paths, "n1", &["127.0.0.2".parse().unwrap()], t0() + day * 70).unwrap();
        assert_eq!(c.cert_pem, d.cert_pem);
        let e = node_identity(&paths, "n1", &["127.0.0.2".parse().unwrap()], t0() + day * 91).unwrap_err();
        assert!(e.to_string().contains("phalanx cert issue n1"), "{e}");
        std::fs::set_permissions(paths.node_key("n1"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            node_identity(&paths, "n1", &["127.0.0.2".parse().unwrap()], t0()),
            Err(PkiError::Exposed { .. })
        ));
    }
}

//! Where log lines go, and how many of them. The daemon, the witness and every CLI command set
//! up tracing through [`init`]: text on stderr (ANSI colour only when stderr is a terminal and
//! `NO_COLOR` is unset), JSON lines on stderr (`--log-format json`), or, under systemd when
//! `JOURNAL_STREAM` names our stderr, the journal itself, with every event's fields as journal
//! fields (falling back to stderr when the journal's socket does not answer). Warnings and
//! errors that repeat are rate-limited by [`RateLimit`]: at most one line per (call site, peer)
//! per interval, so a partitioned peer costs a few lines instead of openraft's four errors a
//! second; [`Logging::report`] then says how many were held back. The decisions — [`Limiter`],
//! [`peer_of`], [`journal_stream_matches`], [`choose_output`] — are pure, time passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// What can go wrong setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("setting up logging: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// The target of the lines saying how many lines were held back (never rate-limited).
pub const SUMMARY_TARGET: &str = "phalanx::logging";

/// The interval of the rate limit the daemon runs with.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The format asked for on the command line (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The journal (systemd), with structured fields.
    Journal,
    /// Human text on stderr; `ansi`: with colour.
    Text { ansi: bool },
    /// One JSON object per line on stderr.
    Json,
}

/// The output for a `--log-format` (None: not given), given whether systemd connected stderr to
/// the journal, whether stderr is a terminal and whether `NO_COLOR` is set. An explicit format
/// always writes to stderr (under systemd that is the journal too, as plain lines).
pub fn choose_output(format: Option<LogFormat>, stderr_is_journal: bool, stderr_tty: bool, no_color: bool) -> Output {
    match format {
        Some(LogFormat::Json) => Output::Json,
        None if stderr_is_journal => Output::Journal,
        _ => Output::Text {
            ansi: stderr_tty && !no_color,
        },
    }
}

/// Whether `JOURNAL_STREAM` (systemd's "DEVICE:INODE" of the stream it connected stdout/stderr
/// to) names the file stderr is, given as (device, inode). Anything else — unset, malformed,
/// another file (stderr redirected by a script the unit runs) — is not the journal.
pub fn journal_stream_matches(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(v), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = v.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Whether systemd connected this process's stderr to the journal.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stat = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        .map(|m| (m.dev(), m.ino()));
    journal_stream_matches(std::env::var("JOURNAL_STREAM").ok().as_deref(), stat)
}

/// The fields of an event whose value names the peer it is about, most specific first.
const PEER_FIELDS: [&str; 4] = ["peer", "target", "node", "to"];

/// The peer an event is about, from its fields (name, rendered value): a field named `peer`,
/// `target`, `node` or `to` (openraft names the node it calls `target`), else `target=ID` in
/// any field (openraft's "error replication to target=ID"; our Raft network's errors say
/// `target=ID` too: `raft::network`), else the `ID` of `FROM->ID` in any field (openraft's
/// "timeout after 50ms when AppendEntries 3->1"), else the host:port of the first URL in any
/// field. None: the event names no peer.
pub fn peer_of(fields: &[(&str, String)]) -> Option<String> {
    for name in PEER_FIELDS {
        if let Some((_, v)) = fields.iter().find(|(n, _)| *n == name) {
            return Some(v.clone());
        }
    }
    let target_eq = |v: &String| {
        let at = v.find("target=")?;
        let id: String = v[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        (!id.is_empty()).then_some(id)
    };
    fields
        .iter()
        .find_map(|(_, v)| target_eq(v))
        .or_else(|| fields.iter().find_map(|(_, v)| arrow_target(v)))
        .or_else(|| fields.iter().find_map(|(_, v)| url_host(v)))
}

/// The host:port of the first URL in `text`.
fn url_host(text: &str) -> Option<String> {
    let at = text.find("://")?;
    let host: String = text[at + 3..]
        .chars()
        .take_while(|c| !matches!(c, '/' | ')' | '"' | '\'' | ',' | ' ' | '>'))
        .collect();
    (!host.is_empty()).then_some(host)
}

/// Fields whose value changes from one repeat of a line to the next (an error's text, a request
/// id, a duration): left out of the rate limit's key. Every other field is part of it, so
/// "link down peer=n3 link=0" and "... link=1" are two lines, not a repeat.
const VOLATILE_FIELDS: [&str; 14] = [
    "message",
    "error",
    "err",
    "result",
    "reason",
    "request_id",
    "interval",
    "elapsed",
    "attempt",
    "now",
    "progress",
    "before",
    "took",
    "output",
];

/// The part of the rate limit's key besides the call site and the peer: every other field that
/// is not volatile, rendered `name=value`.
fn identity_of(fields: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        if PEER_FIELDS.contains(name) || VOLATILE_FIELDS.contains(name) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{name}={value}"));
    }
    out
}

/// The `ID` of the first `FROM->ID` (both numbers) in `text`.
fn arrow_target(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(at) = rest.find("->") {
        let before = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_digit());
        let id: String = rest[at + 2..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if before && !id.is_empty() {
            return Some(id);
        }
        rest = &rest[at + 2..];
    }
    None
}

/// One interval of one key: when it opened, how many lines it held back, the first line.
struct Window {
    opened: Instant,
    /// The order windows opened in (report order; instants can tie).
    seq: u64,
    held: u64,
    first: String,
}

/// Lines held back in one closed interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held<K> {
    pub key: K,
    pub count: u64,
    /// How long the interval lasted (from its first line to its end).
    pub over: Duration,
    /// The line that opened the interval (the one that was written).
    pub first: String,
}

/// The rate limit, pure: a key's first line opens an interval and passes; every further line
/// of that key inside the interval is held back and counted. [`Limiter::roll`] closes the
/// intervals that are over and returns those that held lines back. The number of keys is
/// bounded (`MAX_KEYS`): beyond it lines pass uncounted rather than grow the map.
pub struct Limiter<K> {
    interval: Duration,
    open: HashMap<K, Window>,
    /// Intervals that ended before a roll, reopened by a new line of the same key.
    closed: Vec<Held<K>>,
    opened: u64,
}

const MAX_KEYS: usize = 4096;

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(interval: Duration) -> Self {
        Limiter {
            interval,
            open: HashMap::new(),
            closed: Vec::new(),
            opened: 0,
        }
    }

    /// Whether a line of `key` at `now` is written; `first` renders it (called only when it
    /// opens an interval).
    pub fn admit(&mut self, key: &K, now: Instant, first: impl FnOnce() -> String) -> bool {
        match self.open.get_mut(key) {
            Some(w) if now.saturating_duration_since(w.opened) < self.interval => {
                w.held += 1;
                false
            }
            Some(w) => {
                if w.held > 0 {
                    self.closed.push(Held {
                        key: key.clone(),
                        count: w.held,
                        over: now.saturating_duration_since(w.opened),
                        first: std::mem::take(&mut w.first),
                    });
                }
                self.opened += 1;
                *w = Window {
                    opened: now,
                    seq: self.opened,
                    held: 0,
                    first: first(),
                };
                true
            }
            None => {
                if self.open.len() < MAX_KEYS {
                    self.opened += 1;
                    let w = Window {
                        opened: now,
                        seq: self.opened,
                        held: 0,
                        first: first(),
                    };
                    self.open.insert(key.clone(), w);
                }
                true
            }
        }
    }

    /// Close every interval over at `now`; the closed ones that held lines back, oldest first.
    pub fn roll(&mut self, now: Instant) -> Vec<Held<K>> {
        let mut out = std::mem::take(&mut self.closed);
        let interval = self.interval;
        let mut ended = Vec::new();
        self.open.retain(|key, w| {
            let over = now.saturating_duration_since(w.opened);
            if over < interval {
                return true;
            }
            if w.held > 0 {
                let held = Held {
                    key: key.clone(),
                    count: w.held,
                    over: interval,
                    first: std::mem::take(&mut w.first),
                };
                ended.push((w.seq, held));
            }
            false
        });
        ended.sort_by_key(|(seq, _)| *seq);
        out.extend(ended.into_iter().map(|(_, h)| h));
        out
    }
}

/// A call site (by identity: the `Metadata` of one `tracing` macro invocation).
#[derive(Clone, Copy)]
pub struct Site(pub &'static Metadata<'static>);

impl PartialEq for Site {
    fn eq(&self, other: &Self) -> bool {
        self.0.callsite() == other.0.callsite()
    }
}
impl Eq for Site {}
impl Hash for Site {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.callsite().hash(h)
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        match (m.file(), m.line()) {
            (Some(file), Some(line)) => write!(f, "{} ({file}:{line})", m.target()),
            _ => write!(f, "{}", m.target()),
        }
    }
}

/// The rate limit's key: the call site, the peer the line is about, and its other lasting
/// fields (see [`identity_of`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub site: Site,
    pub peer: Option<String>,
    pub identity: String,
}

/// The clock the layer reads (a fake one in tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// An event's fields, rendered.
#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}

impl Fields {
    fn render(&self) -> String {
        let mut s = String::new();
        for (name, value) in &self.0 {
            if !s.is_empty() {
                s.push(' ');
            }
            if *name == "message" {
                s.push_str(value);
            } else {
                s.push_str(&format!("{name}={value}"));
            }
        }
        const MAX: usize = 300;
        if s.len() > MAX {
            let mut cut = MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

/// The tracing layer that holds back repeated warnings and errors (info and below always pass):
/// at most one line per [`Key`] per interval. Its `event_enabled` decides for every layer of
/// the subscriber, so the text, JSON and journal outputs see the same lines.
pub struct RateLimit {
    limiter: Arc<Mutex<Limiter<Key>>>,
    clock: Clock,
}

impl RateLimit {
    pub fn new(limiter: Arc<Mutex<Limiter<Key>>>, clock: Clock) -> Self {
        RateLimit { limiter, clock }
    }
}

fn lock(l: &Mutex<Limiter<Key>>) -> MutexGuard<'_, Limiter<Key>> {
    // A panic while holding it leaves counts, nothing inconsistent: keep going.
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Levels order by verbosity: INFO, DEBUG and TRACE are "greater" than WARN.
        if *meta.level() > Level::WARN || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let key = Key {
            site: Site(meta),
            peer: peer_of(&fields.0),
            identity: identity_of(&fields.0),
        };
        let now = (self.clock)();
        lock(&self.limiter).admit(&key, now, || fields.render())
    }
}

/// What [`Logging::report`] writes in one line: everything held back about one peer, or, for
/// lines about no peer, at one call site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGroup {
    pub peer: Option<String>,
    /// The call sites, in the order their intervals closed.
    pub sites: Vec<String>,
    pub count: u64,
    pub over: Duration,
    /// The first held-back kind of line (the line that opened its interval).
    pub first: String,
    /// Some of the lines were errors (else warnings).
    pub error: bool,
}

/// Group closed intervals by peer (by call site for lines about no peer), in order.
pub fn group_held(held: Vec<Held<Key>>) -> Vec<HeldGroup> {
    let mut out: Vec<HeldGroup> = Vec::new();
    for h in held {
        let site = h.key.site.to_string();
        let error = *h.key.site.0.level() == Level::ERROR;
        let same = |g: &&mut HeldGroup| match &h.key.peer {
            Some(p) => g.peer.as_ref() == Some(p),
            None => g.peer.is_none() && g.sites == [site.clone()],
        };
        match out.iter_mut().find(|g| same(g)) {
            Some(g) => {
                g.count += h.count;
                g.over = g.over.max(h.over);
                g.error |= error;
                if !g.sites.contains(&site) {
                    g.sites.push(site);
                }
            }
            None => out.push(HeldGroup {
                peer: h.key.peer.clone(),
                sites: vec![site],
                count: h.count,
                over: h.over,
                first: h.first,
                error,
            }),
        }
    }
    out
}

/// The installed logging: what [`init`] chose, and the rate limit's counts to report.
#[derive(Clone)]
pub struct Logging {
    pub output: Output,
    limiter: Arc<Mutex<Limiter<Key>>>,
}

impl Logging {
    /// A logging handle over `limiter` (what [`init`] builds; tests build their own).
    pub fn new(output: Output, limiter: Arc<Mutex<Limiter<Key>>>) -> Self {
        Logging { output, limiter }
    }

    /// Say what the closed intervals held back: one line per peer (every call site about it
    /// together), and one per call site for lines that name no peer; at the level of the most
    /// severe line held back.
    pub fn report(&self, now: Instant) {
        let held = lock(&self.limiter).roll(now);
        for g in group_held(held) {
            let (peer, site) = (g.peer.as_deref().unwrap_or("-"), g.sites.join(", "));
            let (count, secs, first) = (g.count, g.over.as_secs_f64(), &g.first);
            if g.error {
                tracing::error!(target: SUMMARY_TARGET, suppressed = count, peer, site,
                    "{count} more lines like this in {secs:.0}s were not logged: {first}");
            } else {
                tracing::warn!(target: SUMMARY_TARGET, suppressed = count, peer, site,
                    "{count} more lines like this in {secs:.0}s were not logged: {first}");
            }
        }
    }

    /// Report held-back lines every second, forever (the daemon spawns it).
    pub async fn report_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.report(Instant::now());
        }
    }
}

/// How to set up logging.
pub struct LogOptions {
    /// `--log-format`; None: the journal under systemd, else text.
    pub format: Option<LogFormat>,
    /// The filter when `RUST_LOG` is unset (EnvFilter syntax).
    pub default_filter: String,
    /// The rate limit's interval (None: no rate limit, e.g. the test rig, whose simulated
    /// nodes run on paused time).
    pub interval: Option<Duration>,
}

/// Install the global tracing subscriber: `RUST_LOG` (else the default filter), the rate limit,
/// and the output [`choose_output`] picks. Once per process.
pub fn init(opts: LogOptions) -> Result<Logging, LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&opts.default_filter));
    let journal_stream = opts.format.is_none() && stderr_is_journal();
    let (journal, journal_error) = if journal_stream {
        match tracing_journald::layer() {
            Ok(l) => (Some(l.with_syslog_identifier("phalanx".into())), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let output = choose_output(
        opts.format,
        journal.is_some(),
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let text = match output {
        Output::Text { ansi } => Some(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        ),
        _ => None,
    };
    let json = (output == Output::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    let limiter = Arc::new(Mutex::new(Limiter::new(opts.interval.unwrap_or_default())));
    let rate_limit = opts
        .interval
        .map(|_| RateLimit::new(limiter.clone(), Arc::new(Instant::now)));
    tracing_subscriber::registry()
        .with(filter)
        .with(rate_limit)
        .with(journal)
        .with(text)
        .with(json)
        .try_init()?;
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "systemd connected stderr to the journal, but the journal's socket does not answer: logging plain lines to stderr");
    }
    Ok(Logging::new(output, limiter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
    }

    #[test]
    fn the_journal_is_recognised_only_by_a_matching_device_and_inode() {
        assert!(journal_stream_matches(Some("8:1234"), Some((8, 1234))));
        assert!(journal_stream_matches(Some("8:1234\n"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1235"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some("9:1234"), Some((8, 1234))));
        assert!(!journal_stream_matches(None, Some((8, 1234))));
        assert!(!journal_stream_matches(Some("8:1234"), None));
        assert!(!journal_stream_matches(Some("garbage"), Some((8, 1234))));
        assert!(!journal_stream_matches(Some(":"), Some((0, 0))));
        // This test's stderr is no journal.
        assert!(!stderr_is_journal() || std::env::var_os("JOURNAL_STREAM").is_some());
    }

    #[test]
    fn colour_only_on_a_terminal_and_the_journal_only_when_not_overridden() {
        assert_eq!(choose_output(None, false, false, false), Output::Text { ansi: false });
        assert_eq!(choose_output(None, false, true, false), Output::Text { ansi: true });
        assert_eq!(choose_output(None, false, true, true), Output::Text { ansi: false });
        assert_eq!(choose_output(None, true, false, false), Output::Journal);
        assert_eq!(choose_output(Some(LogFormat::Json), true, true, false), Output::Json);
        assert_eq!(
            choose_output(Some(LogFormat::Text), true, false, false),
            Output::Text { ansi: false }
        );
    }

    #[test]
    fn the_peer_comes_from_a_field_a_url_or_openraft_target_text() {
        assert_eq!(
            peer_of(&f(&[("message", "timeout"), ("target", "3")])),
            Some("3".into())
        );
        assert_eq!(peer_of(&f(&[("peer", "n2"), ("target", "3")])), Some("n2".into()));
        assert_eq!(
            peer_of(&f(&[
                ("message", "RPCError"),
                (
                    "err",
                    "Unreachable node: error sending request for url (http://10.77.0.3:7480/raft/cluster/append)"
                ),
            ])),
            Some("10.77.0.3:7480".into())
        );
        assert_eq!(
            peer_of(&f(&[("message", "error replication to target=2"), ("error", "boom")])),
            Some("2".into())
        );
        assert_eq!(
            peer_of(&f(&[
                ("message", "RPCError"),
                ("err", "timeout after 50ms when AppendEntries 3->1")
            ])),
            Some("1".into())
        );
        assert_eq!(peer_of(&f(&[("message", "no quorum: not feeding the watchdog")])), None);
        assert_eq!(peer_of(&f(&[("message", "a -> b, x->1")])), None);
        // Our Raft network's errors name the target: the id wins over the URL, so a timeout
        // and a refused connection to one peer are one peer.
        assert_eq!(
            peer_of(&f(&[
                ("message", "RPCError"),
                (
                    "err",
                    "Unreachable node: PeerCallError: target=3 (10.77.0.3:7480): error sending request for url (http://10.77.0.3:7480/raft/cluster/append)"
                ),
            ])),
            Some("3".into())
        );
    }

    #[test]
    fn the_key_keeps_lasting_fields_and_drops_volatile_ones() {
        let a = f(&[("message", "link down"), ("peer", "n3"), ("link", "0"), ("error", "x")]);
        let b = f(&[("message", "link down"), ("peer", "n3"), ("link", "1"), ("error", "y")]);
        assert_eq!(identity_of(&a), "link=0");
        assert_ne!(identity_of(&a), identity_of(&b));
        let r = |id: &str| {
            f(&[
                ("message", "update progress error"),
                ("request_id", id),
                ("result", "timeout"),
            ])
        };
        assert_eq!(
            identity_of(&r("AppendEntries(1)")),
            identity_of(&r("AppendEntries(69)"))
        );
    }

    #[test]
    fn one_line_per_key_per_interval_then_the_count() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Limiter::new(Duration::from_secs(10));
        let line = || "RPCError".to_string();
        assert!(l.admit(&"a", s(0), line));
        assert!(l.admit(&"b", s(10), line), "another key has its own interval");
        for k in 1..40 {
            assert!(!l.admit(&"a", s(250 * k), line));
        }
        assert!(
            l.roll(s(9_999)).is_empty(),
            "nothing closes before the interval is over"
        );
        let held = l.roll(s(10_000));
        assert_eq!(
            held,
            vec![Held {
                key: "a",
                count: 39,
                over: Duration::from_secs(10),
                first: "RPCError".into()
            }],
            "b held nothing back: no line about it"
        );
        // After the roll a new line opens a new interval.
        assert!(l.admit(&"a", s(10_100), line));
        assert!(!l.admit(&"a", s(10_200), line));
        // A line after the interval is over but before a roll passes, and the old interval's
        // count still gets reported.
        assert!(l.admit(&"a", s(20_100), || "second".into()));
        assert!(!l.admit(&"a", s(20_200), line));
        let held = l.roll(s(20_150));
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].count, held[0].over), (1, Duration::from_secs(10)));
        assert_eq!(l.roll(s(30_100))[0].first, "second");
    }

    /// The layer in a subscriber with a fake clock: repeated errors about two peers make two
    /// lines, info lines all pass, and the report names the count held back per peer.
    #[test]
    fn the_layer_holds_back_repeats_per_call_site_and_peer() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let t0 = Instant::now();
        let now = Arc::new(Mutex::new(t0));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().unwrap())
        };
        let limiter = Arc::new(Mutex::new(Limiter::new(Duration::from_secs(10))));
        let logging = Logging::new(Output::Text { ansi: false }, limiter.clone());
        let sink = out.clone();
        let subscriber = tracing_subscriber::registry()
            .with(RateLimit::new(limiter, clock))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || W(sink.clone())),
            );
        tracing::subscriber::with_default(subscriber, || {
            // Two links of one peer going down: two lines, not a repeat.
            tracing::warn!(peer = "n3", link = 0, "link down");
            tracing::warn!(peer = "n3", link = 1, "link down");
            for k in 0..40u64 {
                *now.lock().unwrap() = t0 + Duration::from_millis(250 * k);
                for target in [2, 3] {
                    tracing::error!({ target = target, error = %format!("attempt {k}") }, "timeout");
                    tracing::warn!("error replication to target={target}");
                }
                tracing::info!(round = k, "a round");
            }
            *now.lock().unwrap() = t0 + Duration::from_secs(10);
            logging.report(t0 + Duration::from_secs(10));
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let count = |what: &str| {
            lines
                .iter()
                .filter(|l| l.contains(what) && !l.contains("were not logged"))
                .count()
        };
        assert_eq!(count("link down"), 2, "{text}");
        assert_eq!(count("a round"), 40, "{text}");
        // Each peer: its first timeout and its first replication error, then one summary line
        // for both kinds (39 + 39 held back), at the error level.
        assert_eq!(count("error=attempt 0"), 2, "{text}");
        assert_eq!(count("attempt 1"), 0, "{text}");
        assert_eq!(count("error replication to target="), 2, "{text}");
        let summaries: Vec<&&str> = lines.iter().filter(|l| l.contains("were not logged")).collect();
        assert_eq!(summaries.len(), 2, "{text}");
        // In the order their intervals opened: peer 2's first.
        for (peer, line) in ["2", "3"].iter().zip(&summaries) {
            assert!(line.contains("ERROR"), "{line}");
            assert!(
                line.contains("78 more lines like this in 10s were not logged"),
                "{line}"
            );
            assert!(line.contains(&format!("peer=\"{peer}\"")), "{line}");
        }
        assert!(!text.contains('\x1b'));
    }
}

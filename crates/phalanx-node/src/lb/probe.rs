//! One active check of one backend, as the balancer's `check` says: a TCP connect, or an HTTP
//! `GET http_path` (HTTP/1.1, `Connection: close`) whose status must fall in `expect`; and,
//! with `agent_port`, HAProxy's agent check besides: connect to that port on the backend's
//! host, read one line (`up`, `down`, `drain`, `maint`, `ready`, `NN%`, …; the core's
//! `lb::agent` parser) and hand it back for the health record. Everything within the check's
//! `timeout`; an agent that does not answer, or answers garbage, changes nothing (as HAProxy).

use phalanx_core::config::CheckConfig;
use phalanx_core::lb::{AgentReply, CheckResult};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The most of an HTTP check's response read (its status line is all that matters).
const MAX_HTTP_HEAD: usize = 4096;

/// Check `address` once: the result, its detail ("pass" or why it failed), and the agent's
/// reply if one was asked and answered sensibly.
pub async fn probe(check: &CheckConfig, address: SocketAddr) -> (CheckResult, String, Option<AgentReply>) {
    let limit = check.timeout;
    // Each under its own timeout: a slow agent does not fail the check, nor the reverse.
    let main = async {
        let run = async {
            match check.kind.as_str() {
                "http" => http(check, address).await,
                _ => TcpStream::connect(address)
                    .await
                    .map(|_| "pass".to_string())
                    .map_err(|e| format!("connect: {e}")),
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(detail)) => (CheckResult::Pass, detail),
            Ok(Err(why)) => (CheckResult::Fail, why),
            Err(_) => (CheckResult::Fail, format!("no answer within {} ms", limit.as_millis())),
        }
    };
    let agent = async {
        let port = check.agent_port?;
        match tokio::time::timeout(limit, agent(SocketAddr::new(address.ip(), port))).await {
            Ok(Ok(reply)) => Some(reply),
            Ok(Err(e)) => {
                tracing::debug!(%address, port, error = %e, "agent check gave nothing");
                None
            }
            Err(_) => {
                tracing::debug!(%address, port, "agent check: no answer in time");
                None
            }
        }
    };
    let ((result, detail), reply) = tokio::join!(main, agent);
    (result, detail, reply)
}

/// An HTTP check: Ok("pass") or why it failed.
async fn http(check: &CheckConfig, address: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let host = check.host.clone().unwrap_or_else(|| address.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: phalanx-check\r\nConnection: close\r\n\r\n",
        check.http_path
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    let mut r = BufReader::new(s.take(MAX_HTTP_HEAD as u64));
    r.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
    let status = status_of(&line).ok_or_else(|| format!("not an HTTP response: {:?}", line.trim_end()))?;
    let (lo, hi) = check.expect;
    if (lo..=hi).contains(&status) {
        Ok("pass".into())
    } else {
        Err(format!("HTTP {status} (expected {lo}-{hi})"))
    }
}

/// The status code of an HTTP/1.x status line.
fn status_of(line: &str) -> Option<u16> {
    let mut words = line.split(' ');
    let version = words.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?.trim_end();
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// Ask an agent for its line.
async fn agent(address: SocketAddr) -> Result<AgentReply, String> {
    let s = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let mut line = Vec::new();
    let limit = phalanx_core::lb::agent::MAX_AGENT_LINE as u64 + 2;
    BufReader::new(s.take(limit))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(line).map_err(|_| "not ASCII".to_string())?;
    AgentReply::parse(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_core::lb::{AdminState, Operational};
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A server answering every connection with `answer`, then closing.
    async fn answering(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn http_check(expect: (u16, u16)) -> CheckConfig {
        CheckConfig {
            kind: "http".into(),
            expect,
            timeout: Duration::from_secs(2),
            ..CheckConfig::default()
        }
    }

    #[tokio::test]
    async fn http_checks_pass_on_the_expected_statuses_only() {
        let ok = answering("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = answering("HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
        let junk = answering("SSH-2.0-OpenSSH\r\n").await;
        assert_eq!(probe(&http_check((200, 399)), ok).await.0, CheckResult::Pass);
        let (r, detail, _) = probe(&http_check((200, 399)), bad).await;
        assert_eq!(r, CheckResult::Fail);
        assert_eq!(detail, "HTTP 500 (expected 200-399)");
        assert_eq!(probe(&http_check((500, 500)), bad).await.0, CheckResult::Pass);
        let (r, detail, _) = probe(&http_check((200, 399)), junk).await;
        assert_eq!(r, CheckResult::Fail);
        assert!(detail.contains("not an HTTP response"), "{detail}");
        // Accepts and never answers: fails within the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = http_check((200, 399));
        c.timeout = Duration::from_millis(100);
        let (r, detail, _) = probe(&c, silent.local_addr().unwrap()).await;
        assert_eq!((r, detail.as_str()), (CheckResult::Fail, "no answer within 100 ms"));
    }

    #[tokio::test]
    async fn the_agent_is_asked_besides_the_check() {
        let agent = answering("drain 50%\n").await;
        let main = answering("").await;
        let c = CheckConfig {
            agent_port: Some(agent.port()),
            timeout: Duration::from_secs(2),
            ..CheckConfig::default()
        };
        let (r, _, reply) = probe(&c, main).await;
        assert_eq!(r, CheckResult::Pass);
        let reply = reply.unwrap();
        assert_eq!((reply.admin, reply.weight_pct), (Some(AdminState::Drain), Some(50)));
        let down = answering("down # disk full\n").await;
        let c = CheckConfig {
            agent_port: Some(down.port()),
            ..c
        };
        assert_eq!(probe(&c, main).await.2.unwrap().operational, Some(Operational::Down));
        let garbage = answering("bogus words\n").await;
        let c = CheckConfig {
            agent_port: Some(garbage.port()),
            ..c
        };
        assert_eq!(probe(&c, main).await.2, None, "garbage changes nothing");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of("HTTP/1.0 404\r\n"), Some(404));
        assert_eq!(status_of("HTTP/2 200\r\n"), None);
        assert_eq!(status_of("HTTP/1.1 20 OK"), None);
        assert_eq!(status_of(""), None);
    }

    #[tokio::test]
    async fn an_agent_saying_down_takes_the_backend_down_whatever_the_check_says() {
        use phalanx_core::lb::Health;
        let main = answering("").await;
        let agent = answering("down # maintenance window\n").await;
        let text = format!(
            "[cluster]\nname = \"t\"\nfencing = \"off\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n[[balancer]]\nid = \"lb\"\nlisten = [\"127.0.0.1:9000\"]\nservers = [{{ name = \"a\", address = \"{main}\" }}]\ncheck = {{ interval = \"50ms\", timeout = \"1s\", agent_port = {} }}\n",
            agent.port()
        );
        let cfg = phalanx_core::config::parse(&text).unwrap().balancers.remove(0);
        let (result, detail, reply) = probe(&cfg.check, main).await;
        assert_eq!(
            (result, detail.as_str()),
            (CheckResult::Pass, "pass"),
            "the TCP check itself passes"
        );
        let reply = reply.expect("the agent answered");
        // What the checker does with it (`checker::record`): the verdict says down.
        let mut h = Health::new(true);
        h.record_agent(&reply, 0);
        h.record_check(&cfg.check.health, result, 0);
        assert_eq!(h.state().to_string(), "down");
        assert!(h.verdict().agent_down);
    }
}

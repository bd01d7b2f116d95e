//! `phalanx demo-service`: the demo's HTTP service, a few lines of tokio: it answers every request
//! with `200 OK` and the name of the node it runs on, so a client can see where it is served from.
//! (Hand-written because pulling an HTTP server into the binary for one fixed answer is not
//! worth it; the daemon's own API uses axum.)

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn serve(listen: &str, name: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        let body = format!("{name}\n");
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// One probe: a new TCP connection, a GET, a 200 within `timeout`. Returns who answered.
pub async fn probe(addr: &str, timeout: std::time::Duration) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        text.starts_with("HTTP/1.1 200")
            .then(|| text.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string())
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

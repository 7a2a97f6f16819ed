//! The reverse proxy's upstream side: pooled HTTP/1.1 connections to each upstream origin
//! (plain TCP, or TLS with rustls), with connect and idle timeouts.
//!
//! # Leases, not a client task
//!
//! An upstream connection is *leased* to one request at a time and driven by the task that
//! serves the caller's connection: that task writes the request, reads the response head and
//! streams the body (see `h1::serve`), then gives the connection back. No task is spawned per
//! connection or per request and no request waits on another task. (hyper-util's pooled
//! client ran a task per connection, handed each request to it through a channel and spawned
//! a task per request to return the connection; see BENCHMARKS.md for what that cost.)

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::HeaderValue;
use portcullis_core::error::GatewayError;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;

/// The upstream client: TLS settings, timeouts, and one pool per upstream origin.
pub struct Proxy {
    shared: Arc<Shared>,
    pools: Mutex<Vec<Weak<UpstreamPool>>>,
}

struct Shared {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    websocket_idle: Duration,
    websocket_recheck: Duration,
}

impl Proxy {
    /// Builds the TLS settings; pools are made per origin by [`Proxy::pool`]. Fails (with a
    /// message naming the file) when `ca_file` cannot be read or holds no usable certificate.
    pub fn new(cfg: &ProxyConfig) -> Result<Self, String> {
        Ok(Self {
            shared: Arc::new(Shared {
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls_config(cfg)?)),
                connect_timeout: cfg.connect_timeout,
                timeout: cfg.timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle: cfg.pool_max_idle_per_host,
                websocket_idle: cfg.websocket_idle_timeout,
                websocket_recheck: cfg.websocket_recheck_interval,
            }),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// The pool for `scheme://authority` (one per origin, shared by the routes that name it).
    pub fn pool(
        &self,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
    ) -> Result<Arc<UpstreamPool>, String> {
        let origin = format!("{scheme}://{authority}");
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        if let Some(p) = pools
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| p.origin == origin)
        {
            return Ok(p);
        }
        let tls = match scheme.as_str() {
            "http" => false,
            "https" => true,
            other => return Err(format!("upstream {origin}: unsupported scheme `{other}`")),
        };
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = if tls {
            Some(
                ServerName::try_from(bare.to_owned())
                    .map_err(|e| format!("upstream {origin}: {e}"))?,
            )
        } else {
            None
        };
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("upstream {origin}: {e}"))?;
        let pool = Arc::new(UpstreamPool {
            shared: self.shared.clone(),
            addr: (bare.to_owned(), port),
            server_name,
            host: host_header,
            idle: Mutex::new(Vec::new()),
            origin,
        });
        pools.push(Arc::downgrade(&pool));
        Ok(pool)
    }

    /// Closes idle connections that timed out or that their upstream closed, every few
    /// seconds, for as long as the proxy lives. Call from within the runtime.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let proxy = Arc::downgrade(self);
        let every = (self.shared.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(proxy) = proxy.upgrade() else { return };
                let pools: Vec<_> = lock(&proxy.pools)
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect();
                for p in pools {
                    p.reap();
                }
            }
        })
    }
}

/// TLS to upstreams: the public web PKI roots (unless `public_roots = false`) plus the CAs in
/// `ca_file`, for upstreams with certificates from a private CA.
pub(crate) fn tls_config(cfg: &ProxyConfig) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    if cfg.public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &cfg.ca_file {
        let file = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("proxy.ca_file {file}: cannot read PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "proxy.ca_file {file}: no certificates (expected PEM `BEGIN CERTIFICATE` blocks)"
            ));
        }
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "proxy.ca_file {file}: certificate {} is not a usable CA: {e}",
                    i + 1
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for upstreams: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Idle connections to one upstream origin.
pub struct UpstreamPool {
    shared: Arc<Shared>,
    /// `scheme://authority`, for logs.
    origin: String,
    /// What to dial.
    addr: (String, u16),
    /// `Some` for `https` upstreams: the name the certificate must carry.
    server_name: Option<ServerName<'static>>,
    /// The `Host` header the upstream is sent.
    host: HeaderValue,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// One upstream connection, leased to one request at a time.
pub struct UpstreamConn {
    io: UpstreamIo,
    /// Bytes read from the upstream and not yet used.
    pub buf: BytesMut,
    /// Whether it served a request before (a request that fails on a reused connection before
    /// any response byte may be retried on a fresh one).
    pub reused: bool,
}

impl UpstreamPool {
    /// The `Host` header value for this upstream.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// `scheme://authority`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How long a request may wait for the response head.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// How long an upgraded (WebSocket) connection may stay silent both ways.
    pub fn websocket_idle_timeout(&self) -> Duration {
        self.shared.websocket_idle
    }

    /// How often an upgraded connection's credential is checked again.
    pub fn websocket_recheck_interval(&self) -> Duration {
        self.shared.websocket_recheck
    }

    /// An idle connection that is still open, or a new one (failure or connect timeout →
    /// 502, logged with `request_id`).
    pub async fn lease(&self, request_id: &str) -> Result<UpstreamConn, GatewayError> {
        if let Some(c) = self.checkout() {
            return Ok(c);
        }
        self.connect(request_id).await
    }

    /// A new connection, never a pooled one.
    async fn connect(&self, request_id: &str) -> Result<UpstreamConn, GatewayError> {
        match tokio::time::timeout(self.shared.connect_timeout, self.dial()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                tracing::warn!(request_id, error = %e, upstream = %self.origin, "upstream connect failed");
                Err(GatewayError::UpstreamUnavailable)
            }
            Err(_) => {
                tracing::warn!(request_id, upstream = %self.origin, "upstream connect timed out");
                Err(GatewayError::UpstreamUnavailable)
            }
        }
    }

    /// Connects (and does the TLS handshake), with no time limit of its own.
    async fn dial(&self) -> std::io::Result<UpstreamConn> {
        let tcp = TcpStream::connect((self.addr.0.as_str(), self.addr.1)).await?;
        tcp.set_nodelay(true)?;
        let io = match &self.server_name {
            None => UpstreamIo::Plain(tcp),
            Some(name) => {
                UpstreamIo::Tls(Box::new(self.shared.tls.connect(name.clone(), tcp).await?))
            }
        };
        Ok(UpstreamConn {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            reused: false,
        })
    }

    /// A health check: `GET path` on a new connection (closed after), answered with the
    /// status of the response's status line. The caller bounds the time; the error says
    /// what failed, for the admin API (never more than the address and the system's words).
    pub async fn probe(&self, path: &str) -> Result<u16, String> {
        let mut conn = self
            .dial()
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let mut req = Vec::with_capacity(128 + path.len());
        req.extend_from_slice(b"GET ");
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        req.extend_from_slice(self.host.as_bytes());
        req.extend_from_slice(
            b"\r\nuser-agent: portcullis-health-check\r\naccept: */*\r\nconnection: close\r\n\r\n",
        );
        conn.write_all(&req)
            .await
            .map_err(|e| format!("sending the check failed: {e}"))?;
        // The status line is all a check needs; it is short.
        loop {
            if let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                return status_of(&conn.buf[..end])
                    .ok_or_else(|| "the answer is not an HTTP/1.x status line".to_owned());
            }
            if conn.buf.len() > 1024 {
                return Err("the answer is not an HTTP/1.x status line".into());
            }
            match conn.read_more().await {
                Ok(0) => return Err("the connection closed without an answer".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the answer failed: {e}")),
            }
        }
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<UpstreamConn> {
        loop {
            let idle = lock(&self.idle).pop()?;
            if idle.since.elapsed() >= self.shared.idle_timeout {
                continue; // dropped here, outside the lock
            }
            let mut conn = idle.conn;
            if conn.is_open() {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Puts a connection back after its response was read in full.
    pub fn give_back(&self, conn: UpstreamConn) {
        if self.shared.max_idle == 0 || !conn.buf.is_empty() {
            return; // unasked-for bytes after a response: the connection is out of step
        }
        let evicted = {
            let mut idle = lock(&self.idle);
            let evicted = (idle.len() >= self.shared.max_idle).then(|| idle.remove(0));
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
            evicted
        };
        drop(evicted);
    }

    /// Drops idle connections that timed out or were closed by the upstream.
    fn reap(&self) {
        let taken = std::mem::take(&mut *lock(&self.idle));
        let mut kept = Vec::with_capacity(taken.len());
        for mut i in taken {
            if i.since.elapsed() < self.shared.idle_timeout && i.conn.is_open() {
                kept.push(i);
            }
        }
        let mut idle = lock(&self.idle);
        // Connections given back while we looked are newer: they stay on top.
        kept.append(&mut idle);
        *idle = kept;
    }
}

impl UpstreamConn {
    /// Whether the upstream has neither closed the connection nor sent anything unasked,
    /// without waiting. Usually no system call: the socket's readiness is known.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut scratch = [0u8; 1];
        let mut rb = ReadBuf::new(&mut scratch);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// The connection itself, for bytes that are no longer HTTP (an upgrade): it never goes
    /// back to the pool. Whatever `buf` holds is the caller's to pass on first.
    pub(crate) fn into_io(self) -> UpstreamIo {
        self.io
    }

    /// Reads more from the upstream into `buf`; `Ok(0)` at end of stream.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(data).await?;
        if let UpstreamIo::Tls(t) = &mut self.io {
            t.flush().await?;
        }
        Ok(())
    }
}

/// A connection to an upstream.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (plain pushes and pops).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 204 "), Some(204));
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000 x",
            b"HTTP/1.1 abc",
            b"",
            b"SSH-2.0",
        ] {
            assert_eq!(status_of(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

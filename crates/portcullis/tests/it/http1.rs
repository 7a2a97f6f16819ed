//! HTTP/1.1 on the wire, through a public proxied route: request framing and smuggling
//! guards, pipelining, keep-alive, `Expect: 100-continue`, HEAD / 204 / 304 / chunked /
//! close-delimited responses, size limits, malformed request heads, `Host`, header bytes, and
//! a client that stalls halfway through a request head.
//!
//! Raw TCP on both sides. A client library would normalise these requests, and an upstream
//! built on an HTTP library would hide how the gateway framed what it forwarded; so the
//! upstream here is a small hand-written HTTP/1.1 server that records every request it
//! receives (method, target, raw header lines, framing, decoded body, connection number, and
//! whether the body arrived whole) and answers according to the path.
//!
//! Each test pins the one answer the gateway's own HTTP/1.1 handler (`src/h1/`) gives, also
//! where RFC 9112 would let a server choose: refusals carry their status and JSON error code,
//! and say whether the connection closes. Every read has a time limit, so no test can hang.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Server;

/// The longest any single read waits.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to let a request that should not reach the upstream have the chance to.
const SETTLE: Duration = Duration::from_millis(300);

const MAX_HEADER_BYTES: usize = 2048;
/// The length of `/big` responses.
const BIG_BODY: usize = 32 * 1024 * 1024;
const MAX_BODY_BYTES: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The recording upstream.
// ---------------------------------------------------------------------------------------------

/// How the gateway framed a request body it forwarded.
#[derive(Clone, Debug, PartialEq)]
enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`.
    None,
    Length(usize),
    Chunked,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which upstream connection (numbered from 1) carried it.
    conn: usize,
    method: String,
    target: String,
    /// Header lines as received: name and value bytes (value without surrounding spaces).
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    framing: Framing,
    /// The decoded body.
    body: Vec<u8>,
    /// For a chunked body: each chunk-size line as received (size and any extensions).
    chunk_lines: Vec<Vec<u8>>,
    /// For a chunked body: the trailer field lines.
    trailers: Vec<Vec<u8>>,
    /// The body arrived whole according to its framing (false: the gateway closed mid-body).
    complete: bool,
}

impl Seen {
    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

struct Upstream {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(upstream_connection(stream, n, record.clone()));
            }
        });
        Upstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Paths of the requests that arrived whole, in arrival order.
    fn complete_paths(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| s.complete)
            .map(|s| s.path().to_owned())
            .collect()
    }

    /// Every request (whole or not) whose target contains `needle`.
    fn requests_to(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.contains(needle))
            .collect()
    }

    /// The one request whose target contains `needle`.
    fn only(&self, needle: &str) -> Seen {
        let r = self.requests_to(needle);
        assert_eq!(r.len(), 1, "expected one request to {needle}: {r:#?}");
        r.into_iter().next().unwrap()
    }

    /// After a short pause, asserts the upstream never received a request to `needle`.
    async fn assert_never_saw(&self, needle: &str, why: &str) {
        tokio::time::sleep(SETTLE).await;
        let r = self.requests_to(needle);
        assert!(r.is_empty(), "{why}: the upstream received {r:#?}");
    }

    /// After a short pause, asserts the upstream got no *whole* request to `needle` (a head
    /// followed by a body the gateway cut off is tolerated: the upstream cannot act on it).
    async fn assert_never_complete(&self, needle: &str, why: &str) {
        tokio::time::sleep(SETTLE).await;
        let r: Vec<Seen> = self
            .requests_to(needle)
            .into_iter()
            .filter(|s| s.complete)
            .collect();
        assert!(r.is_empty(), "{why}: the upstream received whole {r:#?}");
    }
}

/// Reads more bytes into `buf`; false at end of stream or on an error.
async fn upstream_read(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16 * 1024];
    match s.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

/// One CRLF-terminated line (without the CRLF), or None at end of stream.
async fn upstream_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Some(line);
        }
        if !upstream_read(s, buf).await {
            return None;
        }
    }
}

/// Exactly `n` bytes, or None at end of stream.
async fn upstream_take(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !upstream_read(s, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

/// Reads a chunked body into `req` (body, size lines, trailers); false if the stream ended or
/// the framing was wrong.
async fn upstream_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, req: &mut Seen) -> bool {
    loop {
        let Some(line) = upstream_line(s, buf).await else {
            return false;
        };
        req.chunk_lines.push(line.clone());
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
        else {
            return false;
        };
        if size == 0 {
            // Trailer fields until the empty line.
            loop {
                match upstream_line(s, buf).await {
                    None => return false,
                    Some(l) if l.is_empty() => return true,
                    Some(l) => req.trailers.push(l),
                }
            }
        }
        let Some(data) = upstream_take(s, buf, size + 2).await else {
            return false;
        };
        if !data.ends_with(b"\r\n") {
            return false;
        }
        req.body.extend_from_slice(&data[..size]);
    }
}

async fn upstream_connection(mut s: TcpStream, conn: usize, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !upstream_read(&mut s, &mut buf).await {
                return;
            }
        };
        let head: Vec<u8> = buf.drain(..head_end).collect();
        let head = &head[..head.len() - 4];
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let headers: Vec<(Vec<u8>, Vec<u8>)> = lines
            .filter_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                Some((l[..colon].to_vec(), l[colon + 1..].trim_ascii().to_vec()))
            })
            .collect();
        let mut req = Seen {
            conn,
            method,
            target,
            headers,
            framing: Framing::None,
            body: Vec::new(),
            chunk_lines: Vec::new(),
            trailers: Vec::new(),
            complete: true,
        };
        if !req.header_values("transfer-encoding").is_empty() {
            req.framing = Framing::Chunked;
            req.complete = upstream_chunked(&mut s, &mut buf, &mut req).await;
        } else if let Some(v) = req.header_values("content-length").first() {
            let n: usize = String::from_utf8_lossy(v).parse().unwrap_or(0);
            req.framing = Framing::Length(n);
            match upstream_take(&mut s, &mut buf, n).await {
                Some(b) => req.body = b,
                None => {
                    req.body = std::mem::take(&mut buf);
                    req.complete = false;
                }
            }
        }
        seen.lock().unwrap().push(req.clone());
        if !req.complete {
            return;
        }
        let close = req.header_values("connection").iter().any(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("close")
        });
        if !upstream_respond(&mut s, &req).await || close {
            return;
        }
    }
}

/// The body the upstream gives a GET of `target` (and whose length HEAD announces).
fn get_body(target: &str) -> String {
    format!("GET {target}")
}

/// A body for close-delimited responses, big enough to need several reads.
fn eof_body() -> Vec<u8> {
    (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn write(s: &mut TcpStream, bytes: Vec<u8>) -> bool {
    s.write_all(&bytes).await.is_ok()
}

/// Answers by path. Returns false when the connection is done (closed by the upstream).
async fn upstream_respond(s: &mut TcpStream, req: &Seen) -> bool {
    let conn = req.conn;
    let path = req.path().to_owned();
    if req.method == "HEAD" {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Conn: {conn}\r\n\r\n",
            get_body(&req.target).len()
        );
        return write(s, head.into_bytes()).await;
    }
    if path.ends_with("/204") {
        return write(
            s,
            format!("HTTP/1.1 204 No Content\r\nX-Conn: {conn}\r\n\r\n").into_bytes(),
        )
        .await;
    }
    if path.ends_with("/304") {
        // A 304 may announce the length of the representation it stands for: it still has
        // no body.
        return write(
            s,
            format!(
                "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 11\r\nX-Conn: {conn}\r\n\r\n"
            )
            .into_bytes(),
        )
        .await;
    }
    if path.ends_with("/chunked") {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Conn: {conn}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(b"6\r\nhello \r\n8;ext=1\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n");
        return write(s, out).await;
    }
    if path.ends_with("/eof") {
        // HTTP/1.0 style: no length; the end of the body is the end of the connection.
        let body = eof_body();
        let _ = s
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            .await;
        for piece in body.chunks(7_000) {
            if s.write_all(piece).await.is_err() {
                return false;
            }
            tokio::task::yield_now().await;
        }
        let _ = s.shutdown().await;
        return false;
    }
    if path.ends_with("/big") {
        // More than the loopback socket buffers between here and a caller hold.
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_BODY}\r\n\r\n").into_bytes();
        out.resize(out.len() + BIG_BODY, b'b');
        return write(s, out).await;
    }
    if path.ends_with("/truncated") {
        // Promises 1000 bytes, sends 500, closes.
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        out.extend_from_slice(&[b't'; 500]);
        let _ = s.write_all(&out).await;
        let _ = s.shutdown().await;
        return false;
    }
    let body = if req.method == "GET" {
        get_body(&req.target)
    } else {
        format!("{} {} body={}", req.method, req.target, req.body.len())
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Conn: {conn}\r\n\r\n{body}",
        body.len()
    );
    write(s, resp.into_bytes()).await
}

// ---------------------------------------------------------------------------------------------
// The raw client.
// ---------------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as the client read it.
#[derive(Debug)]
struct Resp {
    /// `HTTP/1.1`, `HTTP/1.0`.
    version: String,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a read found instead of a response.
#[derive(Debug)]
enum ReadError {
    /// The server closed (or reset) the connection; the bytes of the unfinished response.
    Closed(Vec<u8>),
    /// Nothing more within [`READ_TIMEOUT`]; the bytes so far.
    TimedOut(Vec<u8>),
}

/// A raw client connection to the gateway.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(server: &Server) -> Client {
        let s = TcpStream::connect(&server.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// A client with a small, fixed receive buffer (no autotuning): what it leaves unread
    /// soon fills the path, whatever the machine's TCP buffer limits.
    async fn connect_small_window(server: &Server) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        let s = sock.connect(server.addr.parse().unwrap()).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// Writes `bytes` in one `write_all` (one segment for small requests, which is what
    /// pipelining tests need). An error (the server already closed) is ignored: the reads
    /// that follow say what happened.
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.s.write_all(bytes.as_ref()).await;
    }

    /// Reads more; Ok(0) at end of stream (a reset counts as the end).
    async fn fill(&mut self) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_TIMEOUT, self.s.read(&mut tmp)).await {
            Err(_) => Err(ReadError::TimedOut(self.buf.clone())),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(n)
            }
            Ok(Err(_)) => Ok(0),
        }
    }

    async fn need(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(ReadError::Closed(self.buf.clone()));
            }
        }
        Ok(())
    }

    async fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Closed(self.buf.clone()));
            }
        }
    }

    /// Reads one response to a request with `method`, strictly framed (RFC 9112 §6.3):
    /// no body for HEAD, 1xx, 204 and 304; else chunked, Content-Length, or until the close.
    async fn response(&mut self, method: &str) -> Result<Resp, ReadError> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Closed(self.buf.clone()));
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let head = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut sp = status_line.splitn(3, ' ');
        let version = sp.next().unwrap_or_default().to_owned();
        let status: u16 = sp
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.to_owned(), v.trim().as_bytes().to_vec()))
            })
            .collect();
        let mut resp = Resp {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.line().await?;
                let size = String::from_utf8_lossy(&line);
                let size = size.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    return Ok(resp);
                }
                self.need(size + 2).await?;
                assert_eq!(
                    &self.buf[size..size + 2],
                    b"\r\n",
                    "chunk data ends in CRLF"
                );
                resp.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        } else if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().unwrap_or_else(|_| panic!("bad length {n:?}"));
            self.need(n).await?;
            resp.body = self.buf.drain(..n).collect();
            Ok(resp)
        } else {
            // Close-delimited.
            while self.fill().await? != 0 {}
            resp.body = std::mem::take(&mut self.buf);
            Ok(resp)
        }
    }

    /// Like [`Client::response`], with the failure in the panic message.
    async fn expect_response(&mut self, method: &str, what: &str) -> Resp {
        match self.response(method).await {
            Ok(r) => r,
            Err(e) => panic!("{what}: no response: {e:?}"),
        }
    }

    /// Asserts the server closes the connection (without sending anything more) within
    /// [`READ_TIMEOUT`].
    async fn expect_closed(&mut self, what: &str) {
        loop {
            if !self.buf.is_empty() {
                panic!(
                    "{what}: expected the connection to close, got more bytes: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            match self.fill().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(ReadError::TimedOut(pending) | ReadError::Closed(pending)) => panic!(
                    "{what}: the connection stayed open (pending {:?})",
                    String::from_utf8_lossy(&pending)
                ),
            }
        }
    }
}

/// A gateway whose one public route sends everything to `up`.
fn gateway(up: &Upstream) -> Server {
    Server::start(Some(&format!(
        r#"
[audit]
sink = "none"

[limits]
max_header_bytes = {MAX_HEADER_BYTES}
max_body_bytes = {MAX_BODY_BYTES}

[proxy]
timeout = "3s"

[[routes]]
name = "public"
path_prefix = "/"
upstream = "http://{}"
policy = "public"
"#,
        up.addr
    )))
}

async fn setup() -> (Upstream, Server) {
    let up = Upstream::start().await;
    let s = gateway(&up);
    (up, s)
}

/// Asserts `r` is the gateway's JSON error answer: `status`, `application/json`, and
/// `{"error": code, ...}`.
fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        (r.status, r.version.as_str()),
        (status, "HTTP/1.1"),
        "{what}: {r:?} {:?}",
        r.text()
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "{what}: {r:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: the error body is not JSON ({e}): {:?}", r.text()));
    assert_eq!(body["error"], code, "{what}: {body}");
}

/// Sends `request` on a fresh connection and asserts: the answer is the JSON error `status` /
/// `code`, and the connection is then closed with nothing after it.
async fn expect_refused_and_closed(
    s: &Server,
    request: &[u8],
    status: u16,
    code: &str,
    what: &str,
) {
    let mut c = Client::connect(s).await;
    c.send(request).await;
    let r = c.expect_response("POST", what).await;
    assert_error(&r, status, code, what);
    assert_eq!(
        r.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".into()),
        "{what}: the refusal announces the close: {r:?}"
    );
    c.expect_closed(what).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Request smuggling guards.
// ---------------------------------------------------------------------------------------------

/// `Content-Length` with `Transfer-Encoding: chunked` (RFC 9112 §6.1, §6.3): refused with 400,
/// and the connection closed after the answer. Nothing reaches the upstream: neither the
/// request nor the bytes after the chunked body (a request a CL-reading hop would see).
#[tokio::test]
async fn content_length_then_chunked_is_400_and_the_connection_closes() {
    let (up, s) = setup().await;
    expect_refused_and_closed(
        &s,
        b"POST /smuggle/clte HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 40\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /smuggled/clte HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        400,
        "bad_request",
        "CL + TE",
    )
    .await;
    up.assert_never_saw("/smuggle/clte", "a CL+TE request")
        .await;
    up.assert_never_saw("/smuggled/clte", "bytes after a CL+TE request")
        .await;
}

/// The same with Transfer-Encoding first and a Content-Length that would cover the smuggled
/// request (the TE.CL order).
#[tokio::test]
async fn chunked_then_content_length_is_400_and_the_connection_closes() {
    let (up, s) = setup().await;
    let smuggled = "GET /smuggled/tecl HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let req = format!(
        "POST /smuggle/tecl HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 4\r\n\r\n{body}"
    );
    expect_refused_and_closed(&s, req.as_bytes(), 400, "bad_request", "TE + CL").await;
    up.assert_never_saw("/smuggle/tecl", "a TE+CL request")
        .await;
    up.assert_never_saw("/smuggled/tecl", "a request hidden in a chunked body")
        .await;
}

#[tokio::test]
async fn differing_content_lengths_are_refused() {
    let (up, s) = setup().await;
    expect_refused_and_closed(
        &s,
        b"POST /smuggle/cl2 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\
          Content-Length: 6\r\n\r\nhello!",
        400,
        "bad_request",
        "two different Content-Length values",
    )
    .await;
    // In one field line, as a list: also not a valid length.
    expect_refused_and_closed(
        &s,
        b"POST /smuggle/cl2list HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
        "bad_request",
        "Content-Length: 5, 6",
    )
    .await;
    up.assert_never_saw("/smuggle/cl2", "conflicting lengths")
        .await;
}

#[tokio::test]
async fn content_lengths_that_are_not_plain_digits_are_refused() {
    let (up, s) = setup().await;
    for cl in ["+5", "-1", "0x10", "5.0", "1e2", "5 5", ""] {
        let req = format!(
            "POST /smuggle/badcl HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {cl}\r\n\r\nhello"
        );
        expect_refused_and_closed(
            &s,
            req.as_bytes(),
            400,
            "bad_request",
            &format!("Content-Length: {cl:?}"),
        )
        .await;
    }
    up.assert_never_saw("/smuggle/badcl", "a malformed Content-Length")
        .await;
}

/// In HTTP/1.1, any transfer coding other than a lone `chunked` (RFC 9112 §6.1) is answered
/// 501 `not_implemented`: other codings, `chunked` not last, `chunked` twice (in one line or
/// two), a second Transfer-Encoding line. HTTP/1.0 has no Transfer-Encoding: a request that
/// carries one has faulty framing, 400.
#[tokio::test]
async fn transfer_codings_other_than_a_lone_chunked_are_501_and_in_http10_400() {
    let (up, s) = setup().await;
    for te in [
        "identity",
        "gzip",
        "chunked, identity",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: gzip",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req = format!(
            "POST /smuggle/te HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: {te}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        expect_refused_and_closed(
            &s,
            req.as_bytes(),
            501,
            "not_implemented",
            &format!("TE {te:?}"),
        )
        .await;
    }
    for te in ["chunked", "gzip"] {
        let req = format!(
            "POST /smuggle/te HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: {te}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        expect_refused_and_closed(
            &s,
            req.as_bytes(),
            400,
            "bad_request",
            &format!("HTTP/1.0 with Transfer-Encoding: {te}"),
        )
        .await;
    }
    up.assert_never_saw("/smuggle/te", "an unusable transfer coding")
        .await;
}

/// `Transfer-Encoding: gzip, chunked`: 501, and the connection closes. (A proxy that decoded
/// the chunks and dropped the header would forward a still-gzipped body labelled as
/// nothing.) Neither the request nor the one pipelined after it reaches the upstream.
#[tokio::test]
async fn gzip_then_chunked_is_501_and_the_connection_closes() {
    let (up, s) = setup().await;
    expect_refused_and_closed(
        &s,
        b"POST /smuggle/gzch HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /after/gzch HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        501,
        "not_implemented",
        "gzip, chunked",
    )
    .await;
    up.assert_never_saw("/smuggle/gzch", "gzip, chunked").await;
    up.assert_never_saw("/after/gzch", "a request after a refused one")
        .await;
}

/// A malformed chunked body is answered 400 `bad_request` and the connection closes; the
/// request pipelined after it is never served. The gateway writes the request head upstream
/// before it reads the body (and streams the chunks it already decoded), so the upstream may
/// see a head and part of a body, then the gateway closing that connection: it must never get
/// a whole request.
#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_never_reach_the_upstream_whole() {
    let (up, s) = setup().await;
    let cases: [(&str, &str); 5] = [
        ("badsize", "zz\r\nhello\r\n0\r\n\r\n"),
        ("barelf", "5\nhello\r\n0\r\n\r\n"),
        ("nocrlf", "5\r\nhelloXX0\r\n\r\n"),
        ("toolong", "5\r\nhello world\r\n0\r\n\r\n"),
        ("overflow", "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ];
    for (name, body) in cases {
        let req = format!(
            "POST /badchunk/{name} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             {body}GET /smuggled/{name} HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        );
        expect_refused_and_closed(&s, req.as_bytes(), 400, "bad_request", name).await;
        tokio::time::sleep(SETTLE).await;
        for seen in up.requests_to(&format!("/badchunk/{name}")) {
            assert!(
                !seen.complete && seen.framing == Framing::Chunked,
                "{name}: the upstream may only see a chunked head and a cut-off body: {seen:#?}"
            );
        }
        eprintln!(
            "malformed chunked body {name}: the upstream got {} unfinished request(s)",
            up.requests_to(&format!("/badchunk/{name}")).len()
        );
        up.assert_never_saw(&format!("/smuggled/{name}"), name)
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Pipelining.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send(
        "GET /pipe/1 HTTP/1.1\r\nHost: gw.test\r\n\r\n\
         POST /pipe/2 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc\
         GET /pipe/3 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    let r1 = c.expect_response("GET", "first").await;
    let r2 = c.expect_response("POST", "second").await;
    let r3 = c.expect_response("GET", "third").await;
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 200));
    assert_eq!(r1.text(), get_body("/pipe/1"));
    assert_eq!(r2.text(), "POST /pipe/2 body=3");
    assert_eq!(r3.text(), get_body("/pipe/3"));
    assert_eq!(up.complete_paths(), ["/pipe/1", "/pipe/2", "/pipe/3"]);
    // Still open for a fourth.
    c.send("GET /pipe/4 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    assert_eq!(
        c.expect_response("GET", "fourth").await.text(),
        get_body("/pipe/4")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Keep-alive.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http11_connection_close_gets_the_response_then_the_close() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send(
        "GET /ka/close HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n\
         GET /ka/after-close HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    let r = c.expect_response("GET", "Connection: close").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), get_body("/ka/close"));
    assert_eq!(
        r.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".into())
    );
    c.expect_closed("after Connection: close").await;
    up.assert_never_saw("/ka/after-close", "a request after Connection: close")
        .await;
    // Connection: close is hop-by-hop: not forwarded.
    let seen = up.only("/ka/close");
    assert!(
        seen.header_values("connection")
            .iter()
            .all(|v| !String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("close")),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn http10_without_keep_alive_is_closed_after_the_response() {
    let (_up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send("GET /ka/10 HTTP/1.0\r\nHost: gw.test\r\n\r\n").await;
    let r = c.expect_response("GET", "HTTP/1.0").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), get_body("/ka/10"));
    c.expect_closed("HTTP/1.0 without keep-alive").await;

    // An HTTP/1.0 client cannot read chunked: an upstream's chunked (or close-delimited)
    // body reaches it delimited by the close.
    for path in ["/ka/10/chunked", "/ka/10/eof"] {
        let mut c = Client::connect(&s).await;
        c.send(format!("GET {path} HTTP/1.0\r\nHost: gw.test\r\n\r\n"))
            .await;
        let r = c.expect_response("GET", path).await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("transfer-encoding").is_none(),
            "no chunked to an HTTP/1.0 client: {r:?}"
        );
        let want = if path.ends_with("eof") {
            eof_body()
        } else {
            b"hello chunked world".to_vec()
        };
        assert_eq!(r.body.len(), want.len(), "{path}");
        assert!(r.body == want, "{path}: body differs");
    }
}

#[tokio::test]
async fn http10_keep_alive_keeps_the_connection_for_another_request() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send("GET /ka/10a HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "HTTP/1.0 keep-alive").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), get_body("/ka/10a"));
    assert_eq!(
        r.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("keep-alive".into()),
        "an HTTP/1.0 keep-alive is confirmed: {r:?}"
    );
    c.send("GET /ka/10b HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "second HTTP/1.0 keep-alive").await;
    assert_eq!(r.text(), get_body("/ka/10b"));
    assert_eq!(up.complete_paths(), ["/ka/10a", "/ka/10b"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Expect: 100-continue.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_then_the_answer() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    let body = "x".repeat(1000);
    c.send(format!(
        "POST /expect HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        body.len()
    ))
    .await;
    let interim = c.expect_response("POST", "before the body").await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert_eq!(interim.version, "HTTP/1.1");
    c.send(&body).await;
    let r = c.expect_response("POST", "after the body").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "POST /expect body=1000");
    let seen = up.only("/expect");
    assert!(seen.complete && seen.body == body.as_bytes(), "{seen:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5, 6. Responses without a body, and bodies without a length.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn head_has_the_upstream_headers_and_no_body() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send(
        "HEAD /head/x HTTP/1.1\r\nHost: gw.test\r\n\r\n\
         GET /head/x HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    )
    .await;
    let head = c.expect_response("HEAD", "HEAD").await;
    assert_eq!(head.status, 200);
    let want = get_body("/head/x");
    assert_eq!(
        head.header("content-length"),
        Some(want.len().to_string()),
        "HEAD keeps the GET's length: {head:?}"
    );
    assert_eq!(head.header("content-type").as_deref(), Some("text/plain"));
    assert!(head.header("transfer-encoding").is_none(), "{head:?}");
    // Had HEAD carried body bytes, they would now be in front of the GET's status line.
    let get = c.expect_response("GET", "GET after HEAD").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), want);
    let methods: Vec<String> = up.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test]
async fn bodiless_and_chunked_responses_pass_through_and_close_delimited_ones_are_rechunked() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;

    c.send("GET /r/204 HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    let r = c.expect_response("GET", "204").await;
    assert_eq!(r.status, 204);
    assert!(
        r.header("transfer-encoding").is_none() && r.header("content-length").is_none(),
        "a 204 has no framing (RFC 9110 §8.6): {r:?}"
    );

    c.send("GET /r/304 HTTP/1.1\r\nHost: gw.test\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "304").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");

    c.send("GET /r/chunked HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "chunked").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello chunked world");

    // After each of them the connection is still in step.
    c.send("GET /r/after HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "after").await;
    assert_eq!(r.text(), get_body("/r/after"));

    // An upstream body delimited by the upstream's close (an HTTP/1.0 response without a
    // length): it reaches the HTTP/1.1 client re-framed as chunked, whole, and the client's
    // connection stays open.
    c.send("GET /r/eof HTTP/1.1\r\nHost: gw.test\r\n\r\n").await;
    let r = c.expect_response("GET", "close-delimited").await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200), "{r:?}");
    assert_eq!(
        r.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "{r:?}"
    );
    assert!(r.header("content-length").is_none(), "{r:?}");
    assert!(
        r.header("connection").is_none(),
        "the connection is kept: {r:?}"
    );
    assert_eq!(r.body.len(), eof_body().len());
    assert!(
        r.body == eof_body(),
        "the close-delimited body arrives intact"
    );
    assert!(c.buf.is_empty(), "nothing after the last chunk");
    c.send("GET /r/after-eof HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    let r = c.expect_response("GET", "after close-delimited").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), get_body("/r/after-eof"));
    assert_eq!(
        up.complete_paths(),
        [
            "/r/204",
            "/r/304",
            "/r/chunked",
            "/r/after",
            "/r/eof",
            "/r/after-eof"
        ]
    );
}

/// An upstream that promises more than it sends: the gateway breaks the client's connection
/// (it has committed to the upstream's length), so the client can tell the body is cut off;
/// it never gets a complete response.
#[tokio::test]
async fn a_truncated_upstream_body_breaks_the_client_connection() {
    let (_up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    c.send("GET /r/truncated HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    match c.response("GET").await {
        Err(ReadError::Closed(partial)) => eprintln!(
            "truncated upstream body: the client's connection closed with {} byte(s) of an \
             unfinished response",
            partial.len()
        ),
        Ok(r) => panic!(
            "a truncated upstream body became a complete {} response of {} bytes",
            r.status,
            r.body.len()
        ),
        Err(e) => panic!("the client was left waiting: {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Chunked request bodies.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_chunked_request_body_reaches_the_upstream_rechunked_and_byte_exact() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    let body =
        "4;ext=1\r\nWiki\r\n6\r\npedia \r\nE;name=\"quoted value\"\r\nin \r\n\r\nchunks.\r\n\
                1\r\n\x00\r\n0\r\nX-Trailer: t\r\n\r\n";
    let want = b"Wikipedia in \r\n\r\nchunks.\x00";
    c.send(format!(
        "POST /chunked-in/post HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
         {body}GET /chunked-in/after HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    ))
    .await;
    let r = c.expect_response("POST", "chunked POST").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.text(),
        format!("POST /chunked-in/post body={}", want.len())
    );
    let seen = up.only("/chunked-in/post");
    assert!(seen.complete, "{seen:#?}");
    assert_eq!(seen.body, want, "{seen:#?}");
    // Forwarded chunked, re-encoded by the gateway: `Transfer-Encoding: chunked` alone, no
    // length, size lines without the caller's extensions, no trailer fields.
    assert_eq!(seen.framing, Framing::Chunked, "{seen:#?}");
    assert_eq!(
        seen.header_values("transfer-encoding"),
        [b"chunked".as_slice()],
        "{seen:#?}"
    );
    assert!(
        seen.header_values("content-length").is_empty(),
        "chunked and a length together: {seen:#?}"
    );
    assert!(
        seen.chunk_lines
            .iter()
            .all(|l| !l.is_empty() && l.iter().all(u8::is_ascii_hexdigit)),
        "re-encoded size lines carry no extensions: {seen:#?}"
    );
    assert_eq!(
        seen.chunk_lines.last().map(Vec::as_slice),
        Some(b"0".as_slice())
    );
    assert!(seen.trailers.is_empty(), "{seen:#?}");
    let r = c.expect_response("GET", "after the chunked POST").await;
    assert_eq!(r.text(), get_body("/chunked-in/after"));
}

// ---------------------------------------------------------------------------------------------
// 8. Size limits.
// ---------------------------------------------------------------------------------------------

/// A head over `max_header_bytes` is 431. One the server still read whole (it reads up to
/// `max_header_bytes` + 8 KiB) is refused after parsing, with no body left unread, so the
/// connection stays usable; one past what the server reads is refused mid-head and the
/// connection closes.
#[tokio::test]
async fn header_blocks_over_the_limit_are_431() {
    let (up, s) = setup().await;
    // Over max_header_bytes (2048) but within what the server reads: one big field, or many
    // small fields adding up past the limit.
    let big = format!(
        "GET /limits/headers HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "h".repeat(MAX_HEADER_BYTES + 500)
    );
    let many: String = (0..60)
        .map(|i| format!("X-F{i}: {}\r\n", "v".repeat(40)))
        .collect();
    let many = format!("GET /limits/headers HTTP/1.1\r\nHost: gw.test\r\n{many}\r\n");
    for (what, req) in [("one big field", big), ("many fields", many)] {
        let mut c = Client::connect(&s).await;
        c.send(&req).await;
        let r = c.expect_response("GET", what).await;
        assert_error(&r, 431, "request_header_fields_too_large", what);
        assert!(r.header("connection").is_none(), "{what}: kept: {r:?}");
        c.send("GET /limits/after-431 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            .await;
        let r = c.expect_response("GET", "after a 431").await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(r.text(), get_body("/limits/after-431"));
    }
    // Far over both: refused before the head ends, and closed.
    let req = format!(
        "GET /limits/headers HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "h".repeat(40_000)
    );
    expect_refused_and_closed(
        &s,
        req.as_bytes(),
        431,
        "request_header_fields_too_large",
        "40000-byte header",
    )
    .await;
    up.assert_never_saw("/limits/headers", "oversized headers")
        .await;
    // Just under the limit passes.
    let mut c = Client::connect(&s).await;
    c.send(format!(
        "GET /limits/ok HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "h".repeat(MAX_HEADER_BYTES / 2)
    ))
    .await;
    let r = c.expect_response("GET", "under the limit").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), get_body("/limits/ok"));
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_without_reaching_the_upstream() {
    let (up, s) = setup().await;
    let n = MAX_BODY_BYTES + 1;
    // Head first: the answer comes from the announced length, before any body byte, and the
    // connection closes after it: the body sent after the refusal (which looks like a
    // request) is never taken for the next request.
    let mut c = Client::connect(&s).await;
    c.send(format!(
        "POST /limits/body HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {n}\r\n\r\n"
    ))
    .await;
    let r = c
        .expect_response("POST", "Content-Length over the limit")
        .await;
    assert_error(
        &r,
        413,
        "payload_too_large",
        "Content-Length over the limit",
    );
    let smuggled = "GET /smuggled/413 HTTP/1.1\r\nHost: gw.test\r\nX-Pad: ";
    let body = format!("{smuggled}{}\r\n\r\n", "p".repeat(n - smuggled.len() - 4));
    assert_eq!(body.len(), n);
    c.send(format!(
        "{body}GET /limits/after-413 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    ))
    .await;
    c.expect_closed("after a 413 for an announced length").await;
    up.assert_never_saw("/limits/body", "an oversized body")
        .await;
    up.assert_never_saw("/smuggled/413", "a refused body's bytes")
        .await;

    // With Expect: 100-continue, the refusal comes instead of the 100.
    let mut c = Client::connect(&s).await;
    c.send(format!(
        "POST /limits/expect HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {n}\r\n\
         Expect: 100-continue\r\n\r\n"
    ))
    .await;
    let r = c
        .expect_response("POST", "Expect with a body over the limit")
        .await;
    assert_error(
        &r,
        413,
        "payload_too_large",
        "the final answer, not 100 Continue",
    );
    c.expect_closed("after a 413 instead of 100 Continue").await;
    up.assert_never_saw("/limits/expect", "an oversized body")
        .await;

    // Chunked, with no length announced: refused once the limit is passed; the upstream
    // never gets it whole.
    let mut c = Client::connect(&s).await;
    let chunk = format!("400\r\n{}\r\n", "c".repeat(0x400));
    c.send(format!(
        "POST /limits/chunked HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(MAX_BODY_BYTES / 0x400 + 2)
    ))
    .await;
    let r = c
        .expect_response("POST", "chunked body over the limit")
        .await;
    assert_error(&r, 413, "payload_too_large", "chunked body over the limit");
    c.expect_closed("after a 413 for a chunked body").await;
    up.assert_never_complete("/limits/chunked", "an oversized chunked body")
        .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Malformed request heads.
// ---------------------------------------------------------------------------------------------

/// Malformed heads are 400 `bad_request`; a well-formed request line naming a version other
/// than HTTP/1.0 and HTTP/1.1 is 505 `http_version_not_supported` (a version token that is
/// not `HTTP/d.d`, like `http/1.1`, makes the line malformed: 400). The connection closes.
#[tokio::test]
async fn malformed_request_heads_are_400_and_unsupported_versions_505() {
    let (up, s) = setup().await;
    let cases: [(&str, &str); 7] = [
        ("garbage request line", "GARBAGE\r\n\r\n"),
        (
            "obs-fold",
            "GET /bad/fold HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n  continued\r\n\r\n",
        ),
        (
            "space before the colon",
            "GET /bad/space HTTP/1.1\r\nHost : gw.test\r\n\r\n",
        ),
        (
            "space before the colon of Transfer-Encoding",
            "POST /bad/tespace HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bare CR in a value",
            "GET /bad/cr HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n",
        ),
        (
            "NUL in a value",
            "GET /bad/nul HTTP/1.1\r\nHost: gw.test\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "space in the target",
            "GET /bad/a b HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        expect_refused_and_closed(&s, req.as_bytes(), 400, "bad_request", what).await;
    }
    for version in ["HTTP/1.2", "HTTP/3.0", "HTTP/2.0", "HTTP/0.9"] {
        let req = format!("GET /bad/version {version}\r\nHost: gw.test\r\n\r\n");
        expect_refused_and_closed(
            &s,
            req.as_bytes(),
            505,
            "http_version_not_supported",
            version,
        )
        .await;
    }
    expect_refused_and_closed(
        &s,
        b"GET /bad/version http/1.1\r\nHost: gw.test\r\n\r\n",
        400,
        "bad_request",
        "lowercase http/1.1",
    )
    .await;
    up.assert_never_saw("/bad/", "a malformed request head")
        .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Host.
// ---------------------------------------------------------------------------------------------

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is 400, and the
/// connection closes.
#[tokio::test]
async fn host_missing_or_repeated_is_400() {
    let (up, s) = setup().await;
    expect_refused_and_closed(
        &s,
        b"GET /host/none HTTP/1.1\r\n\r\n",
        400,
        "bad_request",
        "no Host",
    )
    .await;
    expect_refused_and_closed(
        &s,
        b"GET /host/two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
        "bad_request",
        "two Host lines",
    )
    .await;
    up.assert_never_saw("/host/", "a request with no Host or two")
        .await;
}

/// A gateway whose one public route, for requests to `host`, sends everything to `up`.
fn gateway_for_host(up: &Upstream, host: &str) -> Server {
    Server::start(Some(&format!(
        r#"
[audit]
sink = "none"

[[routes]]
name = "only-{}"
host = "{host}"
path_prefix = "/"
upstream = "http://{}"
policy = "public"
"#,
        host.replace('.', "-"),
        up.addr
    )))
}

/// An absolute-form target is routed by its authority, not by `Host` (RFC 9112 §3.2.2), and
/// the upstream is told that host (`X-Forwarded-Host`) with an origin-form target.
#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority_not_by_host() {
    // Only a route for a.test: a target naming b.test finds none, whatever Host says.
    let up = Upstream::start().await;
    let s = gateway_for_host(&up, "a.test");
    let mut c = Client::connect(&s).await;
    c.send("GET http://b.test/absform HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let r = c
        .expect_response(
            "GET",
            "absolute-form for b.test, Host a.test, route for a.test",
        )
        .await;
    assert_error(
        &r,
        404,
        "no_route",
        "absolute-form for b.test on an a.test route",
    );
    up.assert_never_saw("/absform", "no route for b.test").await;
    // And the reverse: the target names the route's host, Host another.
    let mut c = Client::connect(&s).await;
    c.send("GET http://a.test/absform2 HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    let r = c
        .expect_response(
            "GET",
            "absolute-form for a.test, Host b.test, route for a.test",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), get_body("/absform2"));
    let seen = up.only("/absform2");
    assert_eq!(seen.target, "/absform2", "origin-form upstream: {seen:#?}");
    assert_eq!(
        seen.header_values("x-forwarded-host"),
        [b"a.test".as_slice()],
        "{seen:#?}"
    );

    // A route for b.test: the same b.test target with Host a.test is served there.
    let up = Upstream::start().await;
    let s = gateway_for_host(&up, "b.test");
    let mut c = Client::connect(&s).await;
    c.send("GET http://b.test/absform3 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let r = c
        .expect_response(
            "GET",
            "absolute-form for b.test, Host a.test, route for b.test",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), get_body("/absform3"));
    let seen = up.only("/absform3");
    assert_eq!(seen.target, "/absform3", "origin-form upstream: {seen:#?}");
    assert_eq!(
        seen.header_values("x-forwarded-host"),
        [b"b.test".as_slice()],
        "{seen:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Header bytes.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn header_values_pass_through_byte_exact() {
    let (up, s) = setup().await;
    let mut c = Client::connect(&s).await;
    let req = b"GET /bytes HTTP/1.1\r\nHost: gw.test\r\nX-MiXeD-CaSe: Some Value\r\n\
        X-Spaces: a  b \t c\r\nX-Obs-Text: caf\xe9 \x80\xff\r\nX-Multi: one\r\nX-Multi: two\r\n\
        X-Trailing-Ows: value \t \r\n\r\n"
        .to_vec();
    c.send(&req).await;
    let r = c.expect_response("GET", "headers").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.only("/bytes");
    let one = |name: &str| -> Vec<u8> {
        let v = seen.header_values(name);
        assert_eq!(v.len(), 1, "{name}: {seen:#?}");
        v[0].to_vec()
    };
    assert_eq!(one("x-mixed-case"), b"Some Value");
    assert_eq!(one("x-spaces"), b"a  b \t c", "internal whitespace is kept");
    assert_eq!(
        one("x-obs-text"),
        b"caf\xe9 \x80\xff",
        "obs-text bytes are kept"
    );
    assert_eq!(
        one("x-trailing-ows"),
        b"value",
        "surrounding OWS is not part of the value"
    );
    assert_eq!(
        seen.header_values("x-multi"),
        [b"one".as_slice(), b"two".as_slice()],
        "repeated fields keep their order"
    );
    // Field names are case-insensitive: the gateway writes them lowercase.
    let name = seen
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"x-mixed-case"))
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .unwrap();
    assert_eq!(name, "x-mixed-case");
}

// ---------------------------------------------------------------------------------------------
// 12. A stalled client.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_partial_request_does_not_block_other_clients() {
    let (up, s) = setup().await;
    // Half a head; and a whole head with half its body.
    let mut stalled_head = Client::connect(&s).await;
    stalled_head
        .send("GET /stall/head HTTP/1.1\r\nHost: gw.te")
        .await;
    let mut stalled_body = Client::connect(&s).await;
    stalled_body
        .send("POST /stall/body HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    for i in 0..3 {
        let mut other = Client::connect(&s).await;
        other
            .send(format!(
                "GET /stall/other{i} HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            ))
            .await;
        let r = other.expect_response("GET", "another client").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), get_body(&format!("/stall/other{i}")));
    }

    // The stalled ones finish and are served.
    stalled_head.send("st\r\n\r\n").await;
    let r = stalled_head.expect_response("GET", "stalled head").await;
    assert_eq!(r.text(), get_body("/stall/head"));
    stalled_body.send("defghij").await;
    let r = stalled_body.expect_response("POST", "stalled body").await;
    assert_eq!(r.text(), "POST /stall/body body=10");
    assert_eq!(up.only("/stall/body").body, b"abcdefghij");
}

#[tokio::test]
async fn silent_and_unreading_callers_are_dropped_after_their_timeouts() {
    let up = Upstream::start().await;
    let s = Server::start(Some(&format!(
        r#"
[audit]
sink = "none"

[limits]
header_timeout = "1s"
send_timeout = "1s"

[[routes]]
name = "public"
path_prefix = "/"
upstream = "http://{}"
policy = "public"
"#,
        up.addr
    )));
    // Silent from the start, or after half a head: closed, without an answer, well within
    // the client's own read timeout.
    let mut silent = Client::connect(&s).await;
    silent.expect_closed("a caller that sends nothing").await;
    let mut half = Client::connect(&s).await;
    half.send("GET /half HTTP/1.1\r\nHost: gw.te").await;
    half.expect_closed("a caller that stops halfway through a head")
        .await;

    // A caller that leaves a response unread past the send timeout is dropped: reading
    // afterwards ends before the whole response.
    let mut lazy = Client::connect_small_window(&s).await;
    lazy.send("GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut total = 0usize;
    loop {
        match lazy.fill().await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("reading the unread response: {e:?}"),
        }
        lazy.buf.clear();
    }
    assert!(total > 0, "part of the response was sent");
    assert!(
        total < BIG_BODY,
        "the connection was dropped before the whole body ({total} bytes read)"
    );

    // The gateway goes on serving.
    let mut next = Client::connect(&s).await;
    next.send("GET /after HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await;
    let r = next
        .expect_response("GET", "a request after the drop")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), get_body("/after"));
}

#[tokio::test]
async fn a_slow_steady_upload_is_not_cut_off_and_a_stalled_one_is() {
    let up = Upstream::start().await;
    let s = Server::start(Some(&format!(
        r#"
[audit]
sink = "none"

[limits]
header_timeout = "1s"

[proxy]
timeout = "1s"

[[routes]]
name = "public"
path_prefix = "/"
upstream = "http://{}"
policy = "public"
"#,
        up.addr
    )));
    // Five pieces 400 ms apart: twice `proxy.timeout` in all, never a second of silence. The
    // upstream's time to answer starts once the body is through.
    let mut steady = Client::connect(&s).await;
    steady
        .send("POST /slow-upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 50\r\n\r\n")
        .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        steady.send([b'u'; 10]).await;
    }
    let r = steady
        .expect_response("POST", "a slow, steady upload")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "POST /slow-upload body=50");

    // A body that stops arriving: 400, the connection closes, the upstream never gets the
    // request whole.
    let mut stalled = Client::connect(&s).await;
    stalled
        .send("POST /stalled-upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 50\r\n\r\n0123456789")
        .await;
    let r = stalled.expect_response("POST", "a stalled upload").await;
    assert_error(&r, 400, "bad_request", "a stalled upload");
    stalled.expect_closed("after a stalled upload").await;
    tokio::time::sleep(SETTLE).await;
    assert!(
        !up.complete_paths().iter().any(|p| p == "/stalled-upload"),
        "{:?}",
        up.complete_paths()
    );
}

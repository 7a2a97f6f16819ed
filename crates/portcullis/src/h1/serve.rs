//! The listener's HTTP/1.1 connections: one task per caller connection reads request heads,
//! asks the gateway what to do with each, and moves bodies between the caller and the
//! upstream connection it leased, writing heads straight from the parsed bytes.
//!
//! Framing decisions are [`super::head`]'s and [`super::chunked`]'s (pure); this file only
//! does IO, timeouts and the order of events. Failure rules:
//! - a malformed or oversized head gets its error response and the connection closes;
//! - a request answered without its body having been read closes the connection after the
//!   answer (the unread body would otherwise be taken for the next request);
//! - an upstream that fails before its response head gets the caller a 502 (504 when it was
//!   too slow); one that fails after it breaks the caller's connection, so the truncation
//!   shows;
//! - a request that fails on a reused upstream connection before any response byte arrived
//!   is sent once more on a fresh connection when that is safe (no body, idempotent method).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use portcullis_core::error::GatewayError;
use portcullis_core::ConnMemo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use super::chunked::{encode_chunk, ChunkedDecoder, Step, LAST_CHUNK};
use super::head::{
    parse_request, parse_response, push_decimal, push_field, push_status_line, HeadError,
    RequestBody, RequestHead, ResponseBody, ResponseHead,
};
use crate::balance::Picked;
use crate::gateway::{Admitted, Plan, REQUEST_ID};
use crate::proxy::UpstreamConn;
use crate::server::App;
use crate::wire::{is_rate_field, push_rate_fields, rate_headers};
use portcullis_core::cors::is_cors_field;

/// Bytes of body moved per write when streaming.
const STREAM_CHUNK: usize = 64 * 1024;

/// Serves one caller connection until it closes, fails, times out, or `stop` is notified
/// while it is idle.
pub async fn serve(io: TcpStream, peer: SocketAddr, app: Arc<App>, stop: Arc<Notify>) {
    let stopped = stop.notified();
    let mut stopped = std::pin::pin!(stopped);
    stopped.as_mut().enable();
    let mut conn = Conn {
        caller: Caller {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
        },
        out: Vec::with_capacity(8 * 1024),
        upstream_head: Vec::with_capacity(1024),
        timer: Deadline::new(),
        peer,
        memo: ConnMemo::default(),
        stop: stop.clone(),
        routes: app.gateway.hold_routes(),
        app,
    };
    loop {
        let head = match conn.read_head(stopped.as_mut()).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                conn.refuse_head(e).await;
                break;
            }
        };
        if !conn.respond(head).await || conn.app.stopping() {
            break;
        }
    }
    conn.caller.linger().await;
}

/// How long a closing connection keeps reading what the caller still sends.
const LINGER: Duration = Duration::from_secs(1);

struct Caller {
    io: TcpStream,
    /// Read from the caller and not yet used.
    buf: BytesMut,
}

impl Caller {
    /// Closes the connection the way that lets the caller read our last response: half-close
    /// first, then read and discard what the caller still sends (an unread body) for a
    /// moment, because closing a socket with unread input makes the kernel reset the
    /// connection, and a reset can destroy the response before the caller read it.
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut sink = [0u8; 8 * 1024];
            let mut total = 0usize;
            while total < 1024 * 1024 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Reads more of a request body; the caller closing mid-body is a bad request.
    async fn read_body_bytes(&mut self) -> Result<(), GatewayError> {
        match self.read_more().await {
            Ok(0) | Err(_) => Err(GatewayError::BadRequest),
            Ok(_) => Ok(()),
        }
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8 * 1024);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

struct Conn {
    caller: Caller,
    /// What goes to the caller next.
    out: Vec<u8>,
    /// The upstream request head the gateway prepares.
    upstream_head: Vec<u8>,
    /// The one timer of this connection: the head-read timeout, then the upstream's.
    timer: Deadline,
    app: Arc<App>,
    peer: SocketAddr,
    /// What this connection's requests leave for the next one (the API key parsed last).
    memo: ConnMemo,
    /// Notified when the server stops (a WebSocket tunnel ends then).
    stop: Arc<Notify>,
    /// The routes this connection's last request matched against.
    routes: crate::gateway::HeldRoutes,
}

/// Why an exchange with the upstream failed.
enum Failed {
    /// The caller's body was malformed, too large, or ended early: the connection closes.
    Caller(GatewayError),
    /// The upstream failed or timed out before its response head.
    Upstream(GatewayError),
}

impl Conn {
    /// The next request head. `Ok(None)`: the caller closed the connection, or it stayed
    /// silent past the header timeout, or the server is stopping and the connection is idle.
    async fn read_head(
        &mut self,
        mut stopped: Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<Option<RequestHead>, HeadError> {
        let limit = self.app.max_head_bytes();
        let mut armed = false;
        loop {
            if !self.caller.buf.is_empty() {
                if let Some(h) = parse_request(
                    &mut self.caller.buf,
                    limit,
                    std::slice::from_ref(&self.app.gateway.api_key_header),
                )? {
                    return Ok(Some(h));
                }
            }
            if !armed {
                self.timer
                    .set(Instant::now() + self.app.limits().header_timeout);
                armed = true;
            }
            let idle = self.caller.buf.is_empty();
            let read = tokio::select! {
                biased;
                r = self.caller.read_more() => r,
                () = self.timer.expired() => return Ok(None),
                () = stopped.as_mut(), if idle => return Ok(None),
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Answers a head that could not be parsed, then the connection closes.
    async fn refuse_head(&mut self, e: HeadError) {
        let ge = match e {
            HeadError::Malformed | HeadError::Framing => GatewayError::BadRequest,
            HeadError::TooLarge => GatewayError::HeadersTooLarge,
            HeadError::UnsupportedCoding => GatewayError::NotImplemented,
            HeadError::Version => GatewayError::VersionNotSupported,
        };
        let resp = self.app.gateway.refuse_gateway(ge, "-");
        self.write_local(resp, false, false, None).await;
    }

    /// Serves one request; `false` when the connection must close afterwards.
    async fn respond(&mut self, head: RequestHead) -> bool {
        let RequestHead {
            parts,
            body,
            keep_alive,
            expect_continue,
            header_bytes,
        } = head;
        let is_head = parts.method == Method::HEAD;
        let http10 = parts.version == Version::HTTP_10;
        if crate::server::is_local(parts.uri.path()) {
            let bytes = match self.read_whole_body(body, expect_continue).await {
                Ok(b) => b,
                Err(e) => {
                    let resp = self.app.gateway.refuse_gateway(e, "-");
                    self.write_local(resp, false, is_head, None).await;
                    return false;
                }
            };
            let req = Request::from_parts(parts, Body::from(bytes));
            let resp = crate::server::local(&self.app, req, self.peer).await;
            return self.write_local(resp, keep_alive, is_head, None).await;
        }

        let id = self.app.next_request_id();
        // Debug level: free unless someone asks for it (`PORTCULLIS_LOG=debug`); warnings on
        // the way carry the id as a field of their own.
        let span = tracing::debug_span!("request", id = id.as_str(), method = %parts.method, path = parts.uri.path());
        let req = Admission {
            body,
            keep_alive,
            expect_continue,
            is_head,
            http10,
            idempotent: parts.method.is_idempotent(),
            header_bytes,
        };
        // Instrumented where it is pinned, not moved into the wrapper (a copy of the whole
        // request's future).
        let served = std::pin::pin!(self.gateway_request(parts, req, id.as_str()));
        served.instrument(span).await
    }

    /// Serves a request for the gateway (not the admin API): the gateway's plan, then the
    /// refusal, the echo, or the exchange with the upstream.
    async fn gateway_request(
        &mut self,
        mut parts: http::request::Parts,
        mut req: Admission,
        id: &str,
    ) -> bool {
        let Admission {
            body,
            keep_alive,
            expect_continue,
            is_head,
            ..
        } = req;
        let app = self.app.clone();
        // The sizes the parser measured, against the configured limits (the head as a whole
        // was already bounded while it was read).
        let limits = app.limits();
        let too_large = if req.header_bytes > limits.max_header_bytes {
            Some(GatewayError::HeadersTooLarge)
        } else if matches!(body, RequestBody::Length(n) if n > limits.max_body_bytes) {
            Some(GatewayError::BodyTooLarge)
        } else {
            None
        };
        if let Some(e) = too_large {
            let resp = app.gateway.refuse_gateway(e, "-");
            let keep = keep_alive && body == RequestBody::Empty;
            return self.write_local(resp, keep, is_head, Some(id)).await;
        }
        let routes = app.gateway.current_routes(&mut self.routes);
        // A route whose schemes sign the body: read it whole (bounded) before the decision;
        // it then goes on from memory, put back in front of whatever the caller sent after.
        let signed_body = match app.gateway.signed_body_limit(&routes, &parts) {
            None => None,
            Some(limit) => match self.read_body_within(body, expect_continue, limit).await {
                Ok(bytes) => {
                    let rest = self.caller.buf.split();
                    self.caller.buf.extend_from_slice(&bytes);
                    self.caller.buf.unsplit(rest);
                    req.body = if bytes.is_empty() {
                        RequestBody::Empty
                    } else {
                        RequestBody::Length(bytes.len() as u64)
                    };
                    req.expect_continue = false;
                    Some(bytes)
                }
                Err(e) => {
                    let resp = app.gateway.refuse_gateway(e, "-");
                    return self.write_local(resp, false, is_head, Some(id)).await;
                }
            },
        };
        let (body, expect_continue) = (req.body, req.expect_continue);
        let plan = app
            .gateway
            .plan(
                &routes,
                &mut parts,
                self.peer,
                &self.memo,
                id,
                &mut self.upstream_head,
                signed_body.as_deref(),
            )
            .await;
        match plan {
            Plan::Respond(resp) => {
                // The body (if any) was not read: the connection cannot go on.
                let keep = keep_alive && body == RequestBody::Empty;
                self.write_local(resp, keep, is_head, Some(id)).await
            }
            Plan::Echo(admitted) => {
                let bytes = match self.read_whole_body(body, expect_continue).await {
                    Ok(b) => b,
                    Err(e) => {
                        let resp = app.gateway.failed(&admitted, &e);
                        self.write_local(resp, false, is_head, Some(id)).await;
                        return false;
                    }
                };
                let mut resp =
                    crate::echo::respond(Request::from_parts(parts, Body::from(bytes))).await;
                if let Some(d) = &admitted.rate {
                    rate_headers(resp.headers_mut(), d);
                }
                crate::gateway::append_fields(resp.headers_mut(), admitted.cors.clone());
                app.gateway.served(&admitted);
                self.write_local(resp, keep_alive, is_head, Some(id)).await
            }
            Plan::Forward(admitted, mut picked) => {
                let ctx = Exchange {
                    req,
                    id,
                    admitted: &admitted,
                };
                self.forward(&mut picked, ctx).await
            }
        }
    }

    /// Proxies one admitted request. `false` when the caller's connection must close.
    async fn forward(&mut self, picked: &mut Picked<'_>, x: Exchange<'_>) -> bool {
        match x.req.body {
            RequestBody::Empty => {}
            RequestBody::Length(n) => {
                self.upstream_head.extend_from_slice(b"content-length: ");
                push_decimal(&mut self.upstream_head, n);
                self.upstream_head.extend_from_slice(b"\r\n");
            }
            RequestBody::Chunked => {
                push_field(&mut self.upstream_head, b"transfer-encoding", b"chunked");
            }
        }
        self.upstream_head.extend_from_slice(b"\r\n");
        if x.req.expect_continue
            && self
                .caller
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return false;
        }
        // Let the other requests that are ready reach this point first, so the upstream is
        // written to in bursts: an upstream on the same machine then wakes once per burst, not
        // once per request (see BENCHMARKS.md). When nothing else is ready it costs one
        // scheduler turn.
        tokio::task::yield_now().await;

        let outcome = if x.req.body == RequestBody::Empty {
            self.exchange_bodiless(picked, &x).await
        } else {
            self.exchange_with_body(picked, &x).await
        };
        let pool = picked.pool();
        let (mut up, rh) = match outcome {
            Ok(v) => {
                picked.answered();
                v
            }
            Err(f) => {
                // Whether the caller's body was read in full is unknown after a timeout or a
                // caller failure: close then.
                let (e, caller_ok) = match f {
                    Failed::Upstream(e) => (e, true),
                    Failed::Caller(e) => (e, false),
                };
                let resp = self.app.gateway.failed(x.admitted, &e);
                let keep = caller_ok && x.req.keep_alive && x.req.body == RequestBody::Empty;
                return self
                    .write_local(resp, keep, x.req.is_head, Some(x.id))
                    .await;
            }
        };
        if rh.status == 101 {
            // Only a WebSocket handshake's answer gets here (see `read_response_head`).
            self.tunnel(pool, &x, up, &rh).await;
            return false;
        }
        match self.respond_upstream(pool, &x, &mut up, &rh).await {
            Ok(keep) => {
                if rh.reusable {
                    pool.give_back(up);
                }
                keep
            }
            Err(()) => false,
        }
    }

    /// A request without a body: the upstream has `proxy.timeout` from here to answer; one
    /// retry on a fresh connection when a reused one turns out closed, and on another target
    /// of the group when one cannot be reached.
    async fn exchange_bodiless(
        &mut self,
        picked: &mut Picked<'_>,
        x: &Exchange<'_>,
    ) -> Result<(UpstreamConn, ResponseHead), Failed> {
        let timeout = x.timeout(picked.pool());
        self.timer.set(Instant::now() + timeout);
        let max_body = self.app.limits().max_body_bytes;
        let max_head = self.app.max_head_bytes();
        let Conn {
            caller,
            out,
            upstream_head,
            timer,
            ..
        } = self;
        let exchange = async {
            let mut retried = false;
            loop {
                let mut up = match picked.pool().lease(x.id).await {
                    Ok(up) => up,
                    Err(_) if picked.retry(upstream_head) => continue,
                    Err(e) => return Err(Failed::Upstream(e)),
                };
                let reused = up.reused;
                let sent = send_request(
                    caller,
                    &mut up,
                    upstream_head,
                    x.req.body,
                    max_body,
                    out,
                    None,
                )
                .await;
                let replayable = reused && !retried && x.req.body == RequestBody::Empty;
                match sent {
                    Ok(()) => {}
                    Err(Failed::Upstream(_)) if replayable => {
                        retried = true;
                        continue;
                    }
                    Err(f) => {
                        if matches!(f, Failed::Upstream(_)) {
                            picked.failed();
                        }
                        return Err(f);
                    }
                }
                match read_response_head(&mut up, x.req.is_head, max_head, x.admitted.websocket)
                    .await
                {
                    Ok(h) => return Ok((up, h)),
                    Err(ReadHead::Closed) if replayable && x.req.idempotent => {
                        retried = true;
                        continue;
                    }
                    Err(e) => {
                        picked.failed();
                        return Err(head_failed(picked.pool(), x.id, &e));
                    }
                }
            }
        };
        // `None`: the time ran out. The exchange (which borrows `picked`) ends with the block.
        let answered = {
            // Pinned where it is: moving the exchange (a large future) into the select costs
            // a copy.
            let mut exchange = std::pin::pin!(exchange);
            tokio::select! {
                biased;
                r = &mut exchange => Some(r),
                () = timer.expired() => None,
            }
        };
        answered.unwrap_or_else(|| {
            picked.failed();
            Err(too_slow(picked.pool(), x.id, timeout))
        })
    }

    /// A request with a body: the body is streamed with idle timeouts on both sides (the
    /// caller's silence bounded by `limits.header_timeout`, an upstream that stops taking it
    /// by `proxy.timeout`); the upstream's `proxy.timeout` to answer starts once the whole
    /// request is sent, so a large upload over a slow link is not cut off for its length.
    async fn exchange_with_body(
        &mut self,
        picked: &mut Picked<'_>,
        x: &Exchange<'_>,
    ) -> Result<(UpstreamConn, ResponseHead), Failed> {
        // Nothing of the body is read before a connection is had: another target of the
        // group may be tried.
        let mut up = loop {
            match picked.pool().lease(x.id).await {
                Ok(up) => break up,
                Err(_) if picked.retry(&mut self.upstream_head) => {}
                Err(e) => return Err(Failed::Upstream(e)),
            }
        };
        let pool = picked.pool();
        let idle = Idle {
            caller: self.app.limits().header_timeout,
            upstream: x.timeout(pool),
        };
        send_request(
            &mut self.caller,
            &mut up,
            &self.upstream_head,
            x.req.body,
            self.app.limits().max_body_bytes,
            &mut self.out,
            Some(idle),
        )
        .await
        .inspect_err(|f| {
            if let Failed::Upstream(e) = f {
                picked.failed();
                if *e == GatewayError::UpstreamTimeout {
                    tracing::warn!(request_id = x.id, upstream = %pool.origin(), "upstream stopped taking the request body");
                }
            }
        })?;
        self.timer.set(Instant::now() + x.timeout(pool));
        let max_head = self.app.max_head_bytes();
        let r = tokio::select! {
            biased;
            r = read_response_head(&mut up, x.req.is_head, max_head, false) => match r {
                Ok(h) => Ok((up, h)),
                Err(e) => Err(head_failed(pool, x.id, &e)),
            },
            () = self.timer.expired() => Err(too_slow(pool, x.id, x.timeout(pool))),
        };
        if r.is_err() {
            picked.failed();
        }
        r
    }

    /// Writes the upstream's response to the caller: `Ok(keep)` when it went out whole
    /// (`keep`: whether the caller's connection may go on), `Err` when either side broke off.
    async fn respond_upstream(
        &mut self,
        pool: &Arc<crate::proxy::UpstreamPool>,
        x: &Exchange<'_>,
        up: &mut UpstreamConn,
        rh: &ResponseHead,
    ) -> Result<bool, ()> {
        // The response head, straight from the upstream's bytes.
        let out = &mut self.out;
        let own_rate = x.admitted.rate.is_some();
        let own_cors = x.admitted.route.cors.is_some();
        let pass_length = rh.body == ResponseBody::Empty;
        push_head_start(out, rh, x.id, |name| {
            (own_rate && is_rate_field(name))
                || (own_cors && is_cors_field(name))
                || (!pass_length && name.eq_ignore_ascii_case(b"content-length"))
        });
        for (name, value) in &x.admitted.cors {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(d) = &x.admitted.rate {
            push_rate_fields(out, d);
        }
        let mut keep = x.req.keep_alive;
        // A body of unknown length goes to an HTTP/1.1 caller chunked, to an HTTP/1.0 caller
        // delimited by closing the connection.
        let rechunk = !x.req.http10;
        match rh.body {
            ResponseBody::Empty => {}
            ResponseBody::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            ResponseBody::Chunked | ResponseBody::UntilClose => {
                if rechunk {
                    push_field(out, b"transfer-encoding", b"chunked");
                } else {
                    keep = false;
                }
            }
        }
        if !keep {
            push_field(out, b"connection", b"close");
        } else if x.req.http10 {
            push_field(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");

        let streamed = match rh.body {
            ResponseBody::Empty => self.flush_out().await,
            ResponseBody::Length(n) => self.stream_length(up, n, x.timeout(pool)).await,
            ResponseBody::Chunked => self.stream_chunked(up, rechunk, x.timeout(pool)).await,
            ResponseBody::UntilClose => self.stream_until_close(up, rechunk, x.timeout(pool)).await,
        };
        self.app.gateway.served(x.admitted);
        streamed.map(|()| keep)
    }

    /// Answers a WebSocket handshake with the upstream's 101, then moves bytes both ways
    /// until either side closes or neither sends anything for `proxy.websocket_idle_timeout`.
    /// The upstream connection is the tunnel's alone, and the caller's ends with it.
    async fn tunnel(
        &mut self,
        pool: &Arc<crate::proxy::UpstreamPool>,
        x: &Exchange<'_>,
        mut up: UpstreamConn,
        rh: &ResponseHead,
    ) {
        let out = &mut self.out;
        push_head_start(out, rh, x.id, |_| false);
        push_field(out, b"connection", b"upgrade");
        push_field(out, b"upgrade", b"websocket");
        out.extend_from_slice(b"\r\n");
        // What the upstream sent right after its answer belongs to the new protocol.
        out.extend_from_slice(&up.buf);
        up.buf.clear();
        if self.flush_out().await.is_err() {
            return;
        }
        self.app.gateway.served(x.admitted);
        let mut upstream = up.into_io();
        // And what the caller sent after its handshake.
        if !self.caller.buf.is_empty() {
            if upstream.write_all(&self.caller.buf).await.is_err()
                || upstream.flush().await.is_err()
            {
                return;
            }
            self.caller.buf.clear();
        }
        // The server's stop ends the tunnel too (the flag is set before the notification).
        let stopped = self.stop.notified();
        let mut stopped = std::pin::pin!(stopped);
        stopped.as_mut().enable();
        // The credential is checked again while the tunnel lasts: revoked, expired or short of
        // the route's scopes, it ends the tunnel (audited by the gate).
        let app = self.app.clone();
        let every = pool.websocket_recheck_interval();
        let recheck = async {
            loop {
                tokio::time::sleep(every).await;
                if !app.gateway.still_admitted(x.admitted, x.id).await {
                    return;
                }
            }
        };
        if !self.app.stopping() {
            let idle = pool.websocket_idle_timeout();
            let copied = tunnel_until_idle(&mut self.caller.io, &mut upstream, idle);
            tokio::select! {
                ended = copied => if !ended {
                    tracing::debug!(request_id = x.id, ?idle, "WebSocket connection closed after being idle");
                },
                () = recheck => {
                    tracing::info!(request_id = x.id, "WebSocket connection closed: its credential no longer admits it");
                }
                () = stopped => {}
            }
        }
        let _ = upstream.shutdown().await;
    }

    /// Writes `out` to the caller. A caller that stops reading gets `limits.send_timeout` to
    /// take the rest before the connection is dropped (it would otherwise hold this task, and an
    /// upstream connection, for ever). The timer is only set when the socket is full.
    async fn flush_out(&mut self) -> Result<(), ()> {
        let sent = match self.caller.io.try_write(&self.out) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(_) => Err(()),
        };
        let done = match sent {
            Ok(n) if n == self.out.len() => true,
            Ok(n) => {
                self.timer
                    .set(Instant::now() + self.app.limits().send_timeout);
                let rest = self.out.get(n..).unwrap_or_default();
                tokio::select! {
                    biased;
                    r = self.caller.io.write_all(rest) => r.is_ok(),
                    () = self.timer.expired() => false,
                }
            }
            Err(()) => false,
        };
        self.out.clear();
        if done {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Waits for more of the upstream's body, at most `timeout` (a stalled upstream must not
    /// hold the caller's connection for ever).
    async fn upstream_read(
        &mut self,
        up: &mut UpstreamConn,
        timeout: Duration,
    ) -> Result<usize, ()> {
        self.timer.set(Instant::now() + timeout);
        tokio::select! {
            biased;
            r = up.read_more() => r.map_err(|_| ()),
            () = self.timer.expired() => Err(()),
        }
    }

    async fn stream_length(
        &mut self,
        up: &mut UpstreamConn,
        n: u64,
        timeout: Duration,
    ) -> Result<(), ()> {
        let mut left = n;
        loop {
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(up.buf.len());
            self.out.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            left -= take as u64;
            // Everything read so far goes out before waiting for more: a slow body streams,
            // and a truncated one still shows the caller what arrived.
            self.flush_out().await?;
            if left == 0 {
                return Ok(());
            }
            if self.upstream_read(up, timeout).await? == 0 {
                return Err(()); // the upstream ended early
            }
        }
    }

    async fn stream_chunked(
        &mut self,
        up: &mut UpstreamConn,
        rechunk: bool,
        timeout: Duration,
    ) -> Result<(), ()> {
        let mut dec = ChunkedDecoder::new();
        loop {
            match dec.decode(&up.buf).map_err(|_| ())? {
                Step::Data {
                    start,
                    end,
                    consumed,
                } => {
                    let data = up.buf.get(start..end).ok_or(())?;
                    if rechunk {
                        encode_chunk(&mut self.out, data);
                    } else {
                        self.out.extend_from_slice(data);
                    }
                    up.buf.advance(consumed);
                    if self.out.len() >= STREAM_CHUNK {
                        self.flush_out().await?;
                    }
                }
                Step::Consumed(n) => up.buf.advance(n),
                Step::NeedMore => {
                    if !self.out.is_empty() {
                        self.flush_out().await?;
                    }
                    if self.upstream_read(up, timeout).await? == 0 {
                        return Err(());
                    }
                }
                Step::Done { consumed } => {
                    up.buf.advance(consumed);
                    if rechunk {
                        self.out.extend_from_slice(LAST_CHUNK);
                    }
                    return self.flush_out().await;
                }
            }
        }
    }

    async fn stream_until_close(
        &mut self,
        up: &mut UpstreamConn,
        rechunk: bool,
        timeout: Duration,
    ) -> Result<(), ()> {
        loop {
            if !up.buf.is_empty() {
                if rechunk {
                    encode_chunk(&mut self.out, &up.buf);
                } else {
                    self.out.extend_from_slice(&up.buf);
                }
                up.buf.clear();
            }
            if !self.out.is_empty() {
                self.flush_out().await?;
            }
            if self.upstream_read(up, timeout).await? == 0 {
                if rechunk {
                    self.out.extend_from_slice(LAST_CHUNK);
                }
                return self.flush_out().await;
            }
        }
    }

    /// Reads a whole request body (for the admin API and the echo), bounded by the body limit,
    /// with the header timeout as the longest silence between reads.
    async fn read_whole_body(
        &mut self,
        body: RequestBody,
        expect_continue: bool,
    ) -> Result<Bytes, GatewayError> {
        let max = self.app.limits().max_body_bytes;
        self.read_body_within(body, expect_continue, max).await
    }

    /// [`Conn::read_whole_body`] with at most `max` bytes.
    async fn read_body_within(
        &mut self,
        body: RequestBody,
        expect_continue: bool,
        max: u64,
    ) -> Result<Bytes, GatewayError> {
        if body == RequestBody::Empty {
            return Ok(Bytes::new());
        }
        if expect_continue {
            self.caller
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| GatewayError::BadRequest)?;
        }
        let mut reader = BodyReader::new(body, max.min(self.app.limits().max_body_bytes))?;
        let mut data = Vec::new();
        // An idle timeout, not a total one: a caller sending steadily (a large import over a
        // slow link) is never cut off; one that stops for `header_timeout` is.
        while reader.take(&mut self.caller.buf, |piece| data.extend_from_slice(piece))?
            == Progress::NeedMore
        {
            self.timer
                .set(Instant::now() + self.app.limits().header_timeout);
            tokio::select! {
                biased;
                r = self.caller.read_body_bytes() => r?,
                () = self.timer.expired() => return Err(GatewayError::BadRequest),
            }
        }
        Ok(Bytes::from(data))
    }

    /// Writes a response made here. `false` when the connection must close afterwards.
    async fn write_local(
        &mut self,
        resp: Response<Body>,
        keep_alive: bool,
        is_head: bool,
        id: Option<&str>,
    ) -> bool {
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "a local response body failed");
                return false;
            }
        };
        let out = &mut self.out;
        out.clear();
        push_status_line(out, parts.status.as_u16());
        for (name, value) in &parts.headers {
            if name == http::header::CONTENT_LENGTH || name == REQUEST_ID {
                continue;
            }
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(id) = id {
            push_field(out, REQUEST_ID.as_str().as_bytes(), id.as_bytes());
        }
        if !parts.headers.contains_key(http::header::DATE) {
            out.extend_from_slice(b"date: ");
            self.app.push_http_date(out);
            out.extend_from_slice(b"\r\n");
        }
        let status = parts.status.as_u16();
        let bodiless = status == 204 || status == 304 || (100..200).contains(&status);
        if !bodiless {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            push_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !is_head && !bodiless {
            out.extend_from_slice(&body);
        }
        self.flush_out().await.is_ok() && keep_alive
    }
}

/// What the parsed head says about how to serve a request.
#[derive(Debug, Clone, Copy)]
struct Admission {
    body: RequestBody,
    keep_alive: bool,
    expect_continue: bool,
    is_head: bool,
    http10: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    idempotent: bool,
    header_bytes: usize,
}

/// What [`Conn::forward`] needs to know about the request.
struct Exchange<'a> {
    req: Admission,
    id: &'a str,
    admitted: &'a Admitted<'a>,
}

impl Exchange<'_> {
    /// How long the upstream may take: the route's `timeout`, else `proxy.timeout`.
    fn timeout(&self, pool: &crate::proxy::UpstreamPool) -> Duration {
        self.admitted
            .route
            .timeout
            .unwrap_or_else(|| pool.timeout())
    }
}

/// Longest silences while a request body is streamed (see [`Conn::exchange_with_body`]).
#[derive(Debug, Clone, Copy)]
struct Idle {
    /// Between reads from the caller.
    caller: Duration,
    /// For the upstream to take what was written.
    upstream: Duration,
}

/// Sends the request head and streams the caller's body after it (a chunked body is chunked
/// anew: sizes only, no extensions, no trailers). With `idle`, each wait on either side is
/// bounded: a caller that stops sending is a bad request, an upstream that stops taking the
/// body a timeout.
async fn send_request(
    caller: &mut Caller,
    up: &mut UpstreamConn,
    head: &[u8],
    body: RequestBody,
    max_body: u64,
    out: &mut Vec<u8>,
    idle: Option<Idle>,
) -> Result<(), Failed> {
    /// `fut`, bounded by `limit` when there is one.
    async fn bounded<T>(
        limit: Option<Duration>,
        fut: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        match limit {
            None => Some(fut.await),
            Some(d) => tokio::time::timeout(d, fut).await.ok(),
        }
    }
    let upstream_gone = |_| Failed::Upstream(GatewayError::UpstreamUnavailable);
    if body == RequestBody::Empty {
        return up.write_all(head).await.map_err(upstream_gone);
    }
    let mut reader = BodyReader::new(body, max_body).map_err(Failed::Caller)?;
    out.clear();
    out.extend_from_slice(head);
    let chunked = body == RequestBody::Chunked;
    loop {
        let progress = reader
            .take(&mut caller.buf, |data| {
                if chunked {
                    encode_chunk(out, data);
                } else {
                    out.extend_from_slice(data);
                }
            })
            .map_err(Failed::Caller)?;
        if progress == Progress::Done && chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        // What was read goes upstream before waiting for more.
        if !out.is_empty() {
            bounded(idle.map(|i| i.upstream), up.write_all(out))
                .await
                .ok_or(Failed::Upstream(GatewayError::UpstreamTimeout))?
                .map_err(upstream_gone)?;
            out.clear();
        }
        if progress == Progress::Done {
            return Ok(());
        }
        bounded(idle.map(|i| i.caller), caller.read_body_bytes())
            .await
            .ok_or(Failed::Caller(GatewayError::BadRequest))?
            .map_err(Failed::Caller)?;
    }
}

/// The failure an unusable response head means, logged.
fn head_failed(pool: &crate::proxy::UpstreamPool, request_id: &str, e: &ReadHead) -> Failed {
    match e {
        ReadHead::Closed | ReadHead::Io => {
            tracing::warn!(request_id, upstream = %pool.origin(), "upstream connection ended without a response");
        }
        ReadHead::Bad(e) => {
            tracing::warn!(request_id, upstream = %pool.origin(), error = %e, "upstream sent a malformed response head");
        }
    }
    Failed::Upstream(GatewayError::UpstreamUnavailable)
}

/// The failure of an upstream that did not answer within its timeout, logged. (The caller's
/// body may be half read: the connection closes.)
fn too_slow(pool: &crate::proxy::UpstreamPool, request_id: &str, timeout: Duration) -> Failed {
    tracing::warn!(request_id, upstream = %pool.origin(), ?timeout, "upstream did not answer in time");
    Failed::Caller(GatewayError::UpstreamTimeout)
}

/// How far [`BodyReader::take`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The body continues in bytes not read yet.
    NeedMore,
    /// The body is complete.
    Done,
}

/// Takes a request body out of the caller's buffer as it arrives: the framing (length or
/// chunked) and the size limit, for every consumer of bodies.
struct BodyReader {
    /// Bytes left of a `Content-Length` body.
    left: u64,
    /// `Some` for a chunked body.
    chunked: Option<ChunkedDecoder>,
    taken: u64,
    max: u64,
}

impl BodyReader {
    fn new(body: RequestBody, max: u64) -> Result<Self, GatewayError> {
        match body {
            RequestBody::Length(n) if n > max => Err(GatewayError::BodyTooLarge),
            RequestBody::Length(n) => Ok(Self {
                left: n,
                chunked: None,
                taken: 0,
                max,
            }),
            RequestBody::Chunked => Ok(Self {
                left: 0,
                chunked: Some(ChunkedDecoder::new()),
                taken: 0,
                max,
            }),
            RequestBody::Empty => Ok(Self {
                left: 0,
                chunked: None,
                taken: 0,
                max,
            }),
        }
    }

    /// Hands each piece of body in `buf` to `data` and removes what it used from `buf`
    /// (bytes after the body stay: they are the next request).
    fn take(
        &mut self,
        buf: &mut BytesMut,
        mut data: impl FnMut(&[u8]),
    ) -> Result<Progress, GatewayError> {
        let Some(dec) = &mut self.chunked else {
            let n = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            if n > 0 {
                data(&buf[..n]);
                buf.advance(n);
                self.left -= n as u64;
            }
            return Ok(if self.left == 0 {
                Progress::Done
            } else {
                Progress::NeedMore
            });
        };
        loop {
            match dec.decode(buf).map_err(|_| GatewayError::BadRequest)? {
                Step::Data {
                    start,
                    end,
                    consumed,
                } => {
                    let piece = buf.get(start..end).ok_or(GatewayError::BadRequest)?;
                    self.taken += piece.len() as u64;
                    if self.taken > self.max {
                        return Err(GatewayError::BodyTooLarge);
                    }
                    data(piece);
                    buf.advance(consumed);
                }
                Step::Consumed(n) => buf.advance(n),
                Step::NeedMore => return Ok(Progress::NeedMore),
                Step::Done { consumed } => {
                    buf.advance(consumed);
                    return Ok(Progress::Done);
                }
            }
        }
    }
}

enum ReadHead {
    /// The upstream closed the connection before sending anything.
    Closed,
    /// Reading failed, or the connection ended inside the head.
    Io,
    /// A malformed head.
    Bad(HeadError),
}

/// Reads the final response head, skipping interim (1xx) responses.
async fn read_response_head(
    up: &mut UpstreamConn,
    is_head: bool,
    max: usize,
    websocket: bool,
) -> Result<super::head::ResponseHead, ReadHead> {
    let mut got_any = false;
    loop {
        if !up.buf.is_empty() {
            got_any = true;
            match parse_response(&mut up.buf, max, is_head) {
                // A switch only to the protocol that was asked for, and only when it was.
                Ok(Some(h)) if h.status == 101 && websocket && h.switches_to_websocket() => {
                    return Ok(h)
                }
                Ok(Some(h)) if h.status == 101 => return Err(ReadHead::Bad(HeadError::Malformed)),
                Ok(Some(h)) if (100..200).contains(&h.status) => continue,
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(ReadHead::Bad(e)),
            }
        }
        match up.read_more().await {
            Ok(0) if !got_any => return Err(ReadHead::Closed),
            Ok(0) | Err(_) if got_any => return Err(ReadHead::Io),
            Err(_) => return Err(ReadHead::Closed),
            Ok(_) => {}
        }
    }
}

/// Starts the caller's response head in `out` (cleared first) from the upstream's: its status
/// line and end-to-end fields, except its `X-Request-Id` and the fields `skip` names, then our
/// request id.
fn push_head_start(
    out: &mut Vec<u8>,
    rh: &ResponseHead,
    request_id: &str,
    skip: impl Fn(&[u8]) -> bool,
) {
    out.clear();
    push_status_line(out, rh.status);
    rh.end_to_end_fields(|name, value| {
        if !(name.eq_ignore_ascii_case(REQUEST_ID.as_str().as_bytes()) || skip(name)) {
            push_field(out, name, value);
        }
    });
    push_field(out, REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
}

/// Copies both ways between `a` and `b` until both directions have ended (`true`), or until
/// `idle` has passed without a byte read from either (`false`). One side's end of stream is
/// passed on as a half-close, as the protocol's own closing handshake expects.
async fn tunnel_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> bool
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let last = Activity {
        start: Instant::now(),
        ms: std::sync::atomic::AtomicU64::new(0),
    };
    let mut a = Watched { io: a, last: &last };
    let mut b = Watched { io: b, last: &last };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let watch = async {
        loop {
            let quiet = last.quiet();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        r = copy => r.is_ok(),
        () = watch => false,
    }
}

/// When a tunnel last read something: milliseconds after `start`.
struct Activity {
    start: Instant,
    ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn note(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last read.
    fn quiet(&self) -> Duration {
        let last = Duration::from_millis(self.ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A stream that notes when it last read something.
struct Watched<'a, S> {
    io: &'a mut S,
    last: &'a Activity,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.note();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// A deadline that moves without touching the timer wheel: the timer is armed for some
/// instant no later than the target, and re-armed when it fires early. Setting a later
/// target (every request) is a store; only an earlier one resets the timer.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    target: Instant,
}

impl Deadline {
    fn new() -> Self {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            target: far,
        }
    }

    fn set(&mut self, target: Instant) {
        if target < self.sleep.deadline() {
            self.sleep.as_mut().reset(target);
        }
        self.target = target;
    }

    /// Completes once the target has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.target {
                return;
            }
            let t = self.target;
            self.sleep.as_mut().reset(t);
        }
    }
}

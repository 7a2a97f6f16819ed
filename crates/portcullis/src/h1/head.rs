//! HTTP/1.1 message heads (RFC 9112), IO-free: parse a request head from what a caller sent,
//! parse a response head from what an upstream sent, decide each message's framing, and write
//! heads. The rules that keep a proxy from being desynchronised from the servers behind it
//! (request smuggling) live here, in one place:
//!
//! - obsolete line folding and whitespace before a header's colon are refused (httparse's
//!   strict defaults); a bare LF ending a head line is accepted as RFC 9112 §2.2 allows, which
//!   is safe because heads are written out anew, with CRLF, never passed on as received;
//! - a request with both `Transfer-Encoding` and `Content-Length`, with `Content-Length`
//!   values that disagree or are not plain digits, or with a transfer coding other than a lone
//!   `chunked`, is refused, and the connection is closed after the refusal;
//! - an HTTP/1.1 request must carry exactly one `Host`.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a well-formed HTTP/1.x head (bad request line, bad header syntax, bad target,
    /// missing or repeated `Host`).
    #[error("malformed message head")]
    Malformed,
    /// More header bytes or fields than allowed.
    #[error("message head too large")]
    TooLarge,
    /// Conflicting or invalid body framing (`Content-Length` / `Transfer-Encoding`).
    #[error("invalid message framing")]
    Framing,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// A protocol version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    Version,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// Exactly this many bytes (never 0: that is `Empty`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and header fields (values share the head's buffer).
    pub parts: http::request::Parts,
    /// The body's framing.
    pub body: RequestBody,
    /// Whether the caller lets the connection stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Size of the header fields as sent (name, value and `: ` + CRLF each), for the
    /// configured header limit.
    pub header_bytes: usize,
}

/// Parses one request head from the start of `buf`. `Ok(None)`: incomplete (read more, unless
/// `buf` already holds `max_bytes`, in which case this returns `TooLarge`). On success the
/// head's bytes are taken from `buf`; what follows (body, next request) stays in it.
///
/// `known`: field names outside the standard set that the gateway reads on most requests (the
/// API-key header); a field with one of these names gets a clone of it instead of a name of
/// its own (a fresh allocation and copy for every non-standard name).
pub fn parse_request(
    buf: &mut BytesMut,
    max_bytes: usize,
    known: &[HeaderName],
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) if is_well_formed_request_line(buf) => {
            return Err(HeadError::Version)
        }
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed)?;
    let target = req.path.unwrap_or_default();
    // origin-form, or absolute-form (RFC 9112 §3.2); `*` and authority-form are for OPTIONS
    // and CONNECT, which a gateway in front of an API does not serve.
    if !(target.starts_with('/') || target.starts_with("http://") || target.starts_with("https://"))
    {
        return Err(HeadError::Malformed);
    }
    // Parsed once: everything is taken from the borrowed bytes now except what must share
    // the head's buffer (the target and the field values), whose places are noted for after
    // the head is split off.
    let place = |part: &[u8]| place(buf, len, part);
    let target = place(target.as_bytes())?;
    let mut fields = Vec::with_capacity(req.headers.len());
    let mut framing = Framing::default();
    let mut hosts = 0usize;
    let mut connection = ConnectionTokens::default();
    let mut expect_continue = false;
    let mut header_bytes = 0usize;
    for h in req.headers.iter() {
        header_bytes += h.name.len() + h.value.len() + 4;
        let name = match known_name(known, h.name.as_bytes()) {
            Some(k) => k.clone(),
            None => HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed)?,
        };
        if name == header::HOST {
            hosts += 1;
        } else if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            framing.add(&name, h.value)?;
        } else if name == header::CONNECTION {
            connection.add(h.value);
        } else if name == header::EXPECT
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        {
            expect_continue = true;
        }
        fields.push((name, place(h.value)?));
    }
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::Malformed);
    }
    let body = match framing.resolve(version == Version::HTTP_10)? {
        BodyFraming::Length(0) | BodyFraming::None => RequestBody::Empty,
        BodyFraming::Length(n) => RequestBody::Length(n),
        BodyFraming::Chunked => RequestBody::Chunked,
        // Requests are never delimited by the connection closing.
        BodyFraming::NotChunked => return Err(HeadError::UnsupportedCoding),
    };
    let keep_alive = connection.keep_alive(version);

    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Malformed)?;
    // Userinfo in an absolute-form target is deprecated (RFC 9110 §4.2.4) and would pass as
    // part of the host.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(HeadError::Malformed);
    }
    let mut map = HeaderMap::with_capacity(fields.len() + 8);
    for (name, value) in fields {
        let value =
            HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| HeadError::Malformed)?;
        map.append(name, value);
    }
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = map;
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue: expect_continue && body != RequestBody::Empty,
        header_bytes,
    }))
}

/// Where `part`, a slice of `buf` that httparse handed out, lies in the first `len` bytes of
/// `buf`: the range to take from the head once it is split off and frozen.
fn place(buf: &[u8], len: usize, part: &[u8]) -> Result<std::ops::Range<usize>, HeadError> {
    if part.is_empty() {
        return Ok(0..0); // wherever an empty slice points, its bytes are none
    }
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let end = start.wrapping_add(part.len());
    (start <= end && end <= len)
        .then_some(start..end)
        .ok_or(HeadError::Malformed)
}

/// The entry of `known` that `name` spells, ignoring ASCII case (what `HeaderName::from_bytes`
/// would make of it: a byte equal to a valid lowercase token byte, ignoring case, is that byte
/// or its uppercase form, both valid).
fn known_name<'k>(known: &'k [HeaderName], name: &[u8]) -> Option<&'k HeaderName> {
    known.iter().find(|k| {
        let k = k.as_str().as_bytes();
        k.len() == name.len() && k.eq_ignore_ascii_case(name)
    })
}

/// Whether the first line is `method SP target SP HTTP/d.d`: a version error in such a line
/// is an unsupported version (505), in any other a malformed request (400).
fn is_well_formed_request_line(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && !target.is_empty()
        && matches!(version, [b'H', b'T', b'T', b'P', b'/', d1, b'.', d2] if d1.is_ascii_digit() && d2.is_ascii_digit())
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head. Header fields stay in `head` and are visited with
/// [`ResponseHead::fields`].
#[derive(Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// The body's framing.
    pub body: ResponseBody,
    /// Whether the upstream connection may carry another request after this response.
    pub reusable: bool,
    head: Bytes,
    /// Where each field's name and value are in `head`.
    fields: Vec<FieldPlace>,
    /// Field names listed in `Connection` (other than `close` / `keep-alive`): hop-by-hop.
    named_in_connection: Vec<HeaderName>,
}

/// A field's name and value as ranges of a head.
#[derive(Debug)]
struct FieldPlace {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// Parses one response head from the start of `buf` (see [`parse_request`] for the buffer
/// contract). `head_request`: the request was `HEAD`, so the response has no body whatever it
/// says. Interim (1xx) responses are returned like any other; the caller skips them.
pub fn parse_response(
    buf: &mut BytesMut,
    max_bytes: usize,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed);
    }
    let http10 = resp.version == Some(0);
    let mut framing = Framing::default();
    let mut connection = ConnectionTokens::default();
    let place = |part: &[u8]| place(buf, len, part);
    let mut fields = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            framing.add(&header::CONTENT_LENGTH, h.value)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            framing.add(&header::TRANSFER_ENCODING, h.value)?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection.add(h.value);
        }
        if !is_field_value(h.value) {
            return Err(HeadError::Malformed);
        }
        fields.push(FieldPlace {
            name: place(h.name.as_bytes())?,
            value: place(h.value)?,
        });
    }
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    // RFC 9112 §6.3: for responses, a transfer coding that does not end in chunked is
    // delimited by the connection closing; TE wins over CL.
    let body = match framing.resolve_response(http10)? {
        _ if no_body => ResponseBody::Empty,
        BodyFraming::None => ResponseBody::UntilClose,
        BodyFraming::Length(0) => ResponseBody::Empty,
        BodyFraming::Length(n) => ResponseBody::Length(n),
        BodyFraming::Chunked => ResponseBody::Chunked,
        BodyFraming::NotChunked => ResponseBody::UntilClose,
    };
    let reusable = connection.keep_alive(if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }) && body != ResponseBody::UntilClose;
    let named_in_connection = connection.named;
    let head = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        status,
        body,
        reusable,
        head,
        fields,
        named_in_connection,
    }))
}

impl ResponseHead {
    /// Calls `f` with each header field that an intermediary passes on: everything except the
    /// hop-by-hop fields (RFC 9110 §7.6.1, including those named in `Connection`, and
    /// `Transfer-Encoding`). `Content-Length` is passed: the caller decides whether the next
    /// hop's framing keeps it.
    pub fn end_to_end_fields(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for p in &self.fields {
            let (Some(name), Some(value)) = (
                self.head.get(p.name.clone()),
                self.head.get(p.value.clone()),
            ) else {
                continue; // places inside the head by construction
            };
            if is_hop_by_hop(name)
                || self
                    .named_in_connection
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
            {
                continue;
            }
            f(name, value);
        }
    }

    /// Whether the response agrees to switch to the WebSocket protocol (RFC 6455 §4.1): status
    /// 101, `Upgrade: websocket` and `upgrade` among the `Connection` options.
    pub fn switches_to_websocket(&self) -> bool {
        let mut upgrade = false;
        for p in &self.fields {
            let (Some(name), Some(value)) = (
                self.head.get(p.name.clone()),
                self.head.get(p.value.clone()),
            ) else {
                continue;
            };
            if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade |= value.trim_ascii().eq_ignore_ascii_case(b"websocket");
            }
        }
        self.status == 101 && upgrade && self.named_in_connection.contains(&header::UPGRADE)
    }
}

/// Whether `name` is a hop-by-hop field (RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and
/// `Proxy-Connection`).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    // Short-circuit on length first: most names are not candidates.
    matches!(name.len(), 2 | 7 | 10 | 16..=19) && NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether `b` may stand in a field value (RFC 9110 §5.5: VCHAR, SP, HTAB, obs-text; no
/// other control character, no DEL) — the rule `HeaderValue` applies.
pub fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Whether `v` is a valid field value, checked without making a `HeaderValue` (which copies).
pub fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| is_field_byte(b))
}

/// `Content-Length` / `Transfer-Encoding` as seen across all lines of a head.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    /// Transfer codings, in order; `Some` once any `Transfer-Encoding` line was seen.
    codings: Option<Codings>,
}

#[derive(Default)]
struct Codings {
    count: usize,
    last_is_chunked: bool,
    chunked_seen: usize,
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Transfer-Encoding present but not ending in a lone `chunked`.
    NotChunked,
}

impl Framing {
    fn add(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), HeadError> {
        if *name == header::CONTENT_LENGTH {
            // RFC 9110 §8.6: a list of identical values may be folded to one; anything but
            // digits is invalid.
            for part in value.split(|&b| b == b',') {
                let n = parse_digits(part.trim_ascii()).ok_or(HeadError::Framing)?;
                match self.length {
                    Some(prev) if prev != n => return Err(HeadError::Framing),
                    _ => self.length = Some(n),
                }
            }
        } else {
            let c = self.codings.get_or_insert_with(Codings::default);
            for part in value.split(|&b| b == b',') {
                let coding = part.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                c.count += 1;
                c.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                c.chunked_seen += usize::from(c.last_is_chunked);
            }
        }
        Ok(())
    }

    /// A request's framing: TE and CL together are refused, TE in HTTP/1.0 is refused.
    fn resolve(&self, http10: bool) -> Result<BodyFraming, HeadError> {
        match (&self.codings, self.length) {
            (Some(_), Some(_)) => Err(HeadError::Framing),
            (Some(_), None) if http10 => Err(HeadError::Framing),
            (Some(c), None) => Ok(c.framing()),
            (None, Some(n)) => Ok(BodyFraming::Length(n)),
            (None, None) => Ok(BodyFraming::None),
        }
    }

    /// A response's framing: TE wins over CL (RFC 9112 §6.3).
    fn resolve_response(&self, http10: bool) -> Result<BodyFraming, HeadError> {
        match (&self.codings, self.length) {
            (Some(_), _) if http10 => Ok(BodyFraming::NotChunked),
            (Some(c), _) => Ok(c.framing()),
            (None, Some(n)) => Ok(BodyFraming::Length(n)),
            (None, None) => Ok(BodyFraming::None),
        }
    }
}

impl Codings {
    fn framing(&self) -> BodyFraming {
        match (self.count, self.chunked_seen, self.last_is_chunked) {
            (0, _, _) => BodyFraming::NotChunked,
            (1, 1, true) => BodyFraming::Chunked,
            _ => BodyFraming::NotChunked,
        }
    }
}

/// `1*DIGIT` as a u64; `None` on anything else or overflow.
fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// The tokens of `Connection`.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    named: Vec<HeaderName>,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for t in value.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if let Ok(n) = HeaderName::from_bytes(t) {
                self.named.push(n);
            }
        }
    }

    fn keep_alive(&self, version: Version) -> bool {
        !self.close && (version != Version::HTTP_10 || self.keep_alive)
    }
}

/// Appends a decimal number.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    // itoa: two digits per step from a table (the rate-limit fields carry three numbers per
    // response).
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `name: value\r\n`.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a response status line (HTTP/1.1, canonical reason phrase).
pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    if let Some(reason) = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        out.extend_from_slice(reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(s.as_bytes());
        parse_request(&mut b, 8192, &[])
    }

    fn resp(s: &str, head: bool) -> Result<Option<ResponseHead>, HeadError> {
        let mut b = BytesMut::from(s.as_bytes());
        parse_response(&mut b, 8192, head)
    }

    #[test]
    fn only_a_101_with_both_upgrade_fields_switches_to_websocket() {
        let switches = |s: &str| resp(s, false).unwrap().unwrap().switches_to_websocket();
        assert!(switches(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n"
        ));
        for no in [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(!switches(no), "{no}");
        }
    }

    #[test]
    fn a_plain_get_parses_and_leaves_what_follows() {
        let mut b =
            BytesMut::from(&b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y: 1\r\n\r\nGET /next"[..]);
        let r = parse_request(&mut b, 8192, &[]).unwrap().unwrap();
        assert_eq!(r.parts.method, Method::GET);
        assert_eq!(r.parts.uri.path(), "/a");
        assert_eq!(r.parts.uri.query(), Some("b=c"));
        assert_eq!(r.parts.headers["x-y"], "1");
        assert_eq!(r.body, RequestBody::Empty);
        assert!(r.keep_alive);
        assert_eq!(&b[..], b"GET /next");
    }

    #[test]
    fn a_known_field_name_parses_as_any_other_in_any_case() {
        let known = [HeaderName::from_static("x-api-key")];
        for name in [
            "x-api-key",
            "X-API-Key",
            "X-API-KEY",
            "x-api-kez",
            "x-api-keys",
            "x-ap-key",
        ] {
            let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: v1\r\nAccept: */*\r\n\r\n");
            let with = parse_request(&mut BytesMut::from(text.as_bytes()), 8192, &known)
                .unwrap()
                .unwrap();
            let without = req(&text).unwrap().unwrap();
            assert_eq!(with.parts.headers, without.parts.headers, "{name}");
            assert_eq!(with.parts.headers[name.to_ascii_lowercase().as_str()], "v1");
        }
        // A name that is not a token is refused whether or not a known name is near it.
        let bad = "GET / HTTP/1.1\r\nHost: x\r\nx-api-ke\x01: v\r\n\r\n";
        assert!(parse_request(&mut BytesMut::from(bad.as_bytes()), 8192, &known).is_err());
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_refused() {
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\nX: aaaaaaaaaa"[..]);
        assert_eq!(
            parse_request(&mut b, 16, &[]).unwrap_err(),
            HeadError::TooLarge
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (head, want) in [
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", HeadError::Framing),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", HeadError::UnsupportedCoding),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Framing),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", HeadError::Malformed),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", HeadError::Malformed),
            ("GET / HTTP/1.1\r\n\r\n", HeadError::Malformed),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::Malformed),
            ("GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", HeadError::Malformed),
            ("GET http://u:p@example.com/ HTTP/1.1\r\nHost: x\r\n\r\n", HeadError::Malformed),
            ("GET / HTTP/1.2\r\nHost: x\r\n\r\n", HeadError::Version),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", HeadError::Version),
            ("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", HeadError::Malformed),
            ("GET / http/1.1\r\nHost: x\r\n\r\n", HeadError::Malformed),
            ("GARBAGE\r\n\r\n", HeadError::Malformed),
        ] {
            assert_eq!(req(head).unwrap_err(), want, "{head:?}");
        }
    }

    #[test]
    fn bodies_are_framed() {
        let r = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().body, RequestBody::Length(5));
        let r = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, RequestBody::Chunked);
        assert!(r.expect_continue);
        let r =
            req("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n");
        let r = r.unwrap().unwrap();
        assert_eq!(r.body, RequestBody::Empty);
        assert!(!r.expect_continue, "nothing to wait for");
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |s: &str| req(s).unwrap().unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka("GET http://h/p HTTP/1.1\r\nHost: h\r\n\r\n"));
    }

    #[test]
    fn header_bytes_count_the_fields_as_sent() {
        let r = req("GET /long/target HTTP/1.1\r\nHost: x\r\nX-Ab:  cd \r\n\r\n")
            .unwrap()
            .unwrap();
        // "Host: x\r\n" and "X-Ab: cd\r\n" (optional whitespace is not the value's)
        assert_eq!(r.header_bytes, 9 + 10);
    }

    #[test]
    fn empty_field_values_are_kept() {
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Blank:   \r\n\r\n",
            "GET / HTTP/1.1\r\nX-Empty:\r\nHost: x\r\n\r\n",
        ] {
            let r = req(head).unwrap().unwrap();
            assert_eq!(r.parts.headers["x-empty"], "", "{head:?}");
        }
        let r = resp(
            "HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut seen = Vec::new();
        r.end_to_end_fields(|n, v| seen.push((n.to_vec(), v.to_vec())));
        assert_eq!(seen[0], (b"X-Empty".to_vec(), Vec::new()));
    }

    #[test]
    fn header_values_share_the_head_and_keep_obs_text() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\nX-V: a  b \xe9\r\n\r\n"[..]);
        let r = parse_request(&mut b, 8192, &[]).unwrap().unwrap();
        assert_eq!(r.parts.headers["x-v"].as_bytes(), b"a  b \xe9");
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let body = |s: &str, head: bool| resp(s, head).unwrap().unwrap().body;
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            ResponseBody::Length(3)
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            ResponseBody::Empty
        );
        assert_eq!(
            body("HTTP/1.1 204 No Content\r\n\r\n", false),
            ResponseBody::Empty
        );
        assert_eq!(
            body(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            ResponseBody::Empty
        );
        assert_eq!(
            body("HTTP/1.1 100 Continue\r\n\r\n", false),
            ResponseBody::Empty
        );
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            ResponseBody::Chunked
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            ResponseBody::UntilClose
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\n\r\n", false),
            ResponseBody::UntilClose
        );
        assert_eq!(
            body("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false),
            ResponseBody::Length(2)
        );
        assert!(resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn response_reuse_and_passed_on_fields() {
        let r = resp("HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: t=1\r\nContent-Length: 0\r\nX-Keep: 2\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!r.reusable);
        let mut seen = Vec::new();
        r.end_to_end_fields(|n, v| {
            seen.push(format!(
                "{}={}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(v)
            ))
        });
        assert_eq!(seen, ["Content-Length=0", "X-Keep=2"]);
        assert!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .reusable
        );
        assert!(
            !resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .reusable
        );
        assert!(
            !resp("HTTP/1.1 200 OK\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .reusable,
            "ends with the connection"
        );
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "transfer-encoding",
            "Upgrade",
            "proxy-authorization",
            "Proxy-Authenticate",
            "proxy-connection",
        ] {
            assert!(is_hop_by_hop(n.as_bytes()), "{n}");
        }
        for n in ["content-length", "x-te", "trailers", "host"] {
            assert!(!is_hop_by_hop(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn writers() {
        let mut out = Vec::new();
        push_status_line(&mut out, 200);
        push_field(&mut out, b"a", b"b");
        push_decimal(&mut out, 0);
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\na: b\r\n018446744073709551615");
    }

    proptest! {
        #[test]
        fn field_values_are_checked_like_header_values(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(is_field_value(&v), HeaderValue::from_bytes(&v).is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), max in 1usize..600) {
            let mut b = BytesMut::from(&data[..]);
            let _ = parse_request(&mut b, max, &[]);
            let mut b = BytesMut::from(&data[..]);
            if let Ok(Some(r)) = parse_response(&mut b, max, false) {
                r.end_to_end_fields(|_, _| {});
            }
        }

        #[test]
        fn mutated_valid_requests_never_panic(pos in 0usize..80, byte in any::<u8>()) {
            let mut data = b"POST /p?q HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: a, b\r\n\r\nabc".to_vec();
            if let Some(slot) = data.get_mut(pos) {
                *slot = byte;
            }
            let mut b = BytesMut::from(&data[..]);
            let _ = parse_request(&mut b, 8192, &[]);
        }
    }
}

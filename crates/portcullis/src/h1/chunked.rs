//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), IO-free.
//!
//! Framing lines are parsed only once complete in `input`; a partial line is checked as far as
//! it goes and against the length limits, so a peer can neither make the caller buffer without
//! bound nor delay an error it already sent. Only CRLF ends a line: a bare CR or LF is an error
//! (parsers disagreeing on line endings is what request smuggling feeds on).
//!
//! A [`Step::Data`] that finishes a chunk also consumes the CRLF after it when that CRLF is
//! already in `input` (`consumed == end + 2`); otherwise `consumed == end` and a later call
//! checks the CRLF. `Data` ranges never cover framing bytes and are never empty.

use super::head::is_field_byte;

/// Why a chunked body was refused. Every variant means "malformed body": the connection must
/// be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// Not 1*HEXDIG, more than 16 hex digits, empty, or a bare CR / LF in the size line.
    #[error("invalid chunk size")]
    Size,
    /// A CTL other than HTAB in a chunk extension.
    #[error("invalid chunk extension")]
    Extension,
    /// Chunk data not followed by exactly CRLF.
    #[error("missing CRLF after chunk data")]
    Crlf,
    /// A trailer line that is not `token ":" field-value CRLF` (this includes obs-fold).
    #[error("invalid trailer section")]
    Trailer,
    /// A size line over 4096 bytes (CRLF excluded) or trailers over 16 KiB in total.
    #[error("chunk line or trailer too long")]
    TooLong,
}

/// What one call to `decode` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `input[start..end]` is body data (part of a chunk's data, never empty). The caller
    /// consumes `consumed` bytes (>= end) and calls again.
    Data {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// Framing bytes only (size line, CRLF, trailer lines) were consumed; no data yet. Call
    /// again with the rest, or with more input.
    Consumed(usize),
    /// Need more input; nothing consumed. (Returned only when input cannot advance the state.)
    NeedMore,
    /// The last chunk and the trailer section are complete: the body ended after `consumed`
    /// bytes of this input. Bytes after that belong to the next message.
    Done { consumed: usize },
}

/// Longest size line (chunk size and extensions, CRLF excluded).
const MAX_LINE: usize = 4096;
/// Longest trailer section (field lines with their CRLFs; the final empty line excluded).
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size: 16 always fit a `u64`.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    SizeLine,
    /// In chunk data; never zero.
    Data(u64),
    DataCrlf,
    /// In the trailer section, after this many bytes of field lines.
    Trailers(usize),
    Done,
}

/// Incremental decoder. Feed it whatever bytes have arrived; it never buffers input itself
/// (a framing line split across reads gives `NeedMore`; the caller keeps it and calls again).
/// After an error the state is unspecified: close the connection.
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes from the start of `input`. `Data` ranges are relative to `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        // `off` only ever grows by lengths of sub-slices of `input`: it cannot overflow.
        let mut off = 0usize;
        loop {
            let rest = input.get(off..).unwrap_or_default();
            match self.state {
                State::Done => return Ok(Step::Done { consumed: off }),
                State::SizeLine => {
                    let (line, complete) = split_line(rest, MAX_LINE, ChunkedError::Size)?;
                    let size = parse_size_line(line, complete)?;
                    if !complete {
                        return Ok(stalled(off));
                    }
                    off = off.saturating_add(line.len()).saturating_add(2);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(stalled(off));
                    }
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    let end = off.saturating_add(take);
                    let left = left.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
                    let consumed = if left > 0 {
                        self.state = State::Data(left);
                        end
                    } else if input.get(end..).is_some_and(|r| r.starts_with(b"\r\n")) {
                        self.state = State::SizeLine;
                        end.saturating_add(2)
                    } else {
                        self.state = State::DataCrlf;
                        end
                    };
                    return Ok(Step::Data {
                        start: off,
                        end,
                        consumed,
                    });
                }
                State::DataCrlf => match rest {
                    [] | [b'\r'] => return Ok(stalled(off)),
                    [b'\r', b'\n', ..] => {
                        off = off.saturating_add(2);
                        self.state = State::SizeLine;
                    }
                    _ => return Err(ChunkedError::Crlf),
                },
                State::Trailers(total) => {
                    let max = MAX_TRAILERS.saturating_sub(total).saturating_sub(2);
                    let (line, complete) = split_line(rest, max, ChunkedError::Trailer)?;
                    if complete && line.is_empty() {
                        self.state = State::Done;
                        return Ok(Step::Done {
                            consumed: off.saturating_add(2),
                        });
                    }
                    check_field_line(line, complete)?;
                    if !complete {
                        return Ok(stalled(off));
                    }
                    let len = line.len().saturating_add(2);
                    off = off.saturating_add(len);
                    self.state = State::Trailers(total.saturating_add(len));
                }
            }
        }
    }
}

#[cfg(test)]
impl ChunkedDecoder {
    /// Whether the terminating chunk and trailers have been seen.
    fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

fn stalled(consumed: usize) -> Step {
    if consumed == 0 {
        Step::NeedMore
    } else {
        Step::Consumed(consumed)
    }
}

/// The line at the start of `buf`: its content (up to the first CR or LF, or all of `buf`) and
/// whether its CRLF is complete. Looks at no more than `max + 2` bytes; content over `max` bytes
/// is `TooLong` even before its end arrived; a CR or LF that is not part of a CRLF is `bare`.
fn split_line(buf: &[u8], max: usize, bare: ChunkedError) -> Result<(&[u8], bool), ChunkedError> {
    let window = buf.get(..max.saturating_add(2)).unwrap_or(buf);
    let Some(pos) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() > max {
            Err(ChunkedError::TooLong)
        } else {
            Ok((buf, false))
        };
    };
    if pos > max {
        return Err(ChunkedError::TooLong);
    }
    let (content, end) = buf.split_at_checked(pos).ok_or(bare)?;
    match end {
        [b'\r', b'\n', ..] => Ok((content, true)),
        [b'\r'] => Ok((content, false)),
        _ => Err(bare),
    }
}

/// Checks `chunk-size [ chunk-ext ]` and returns the size. A partial line (`!complete`) is only
/// checked for what is already wrong; the size returned for it is meaningless.
fn parse_size_line(line: &[u8], complete: bool) -> Result<u64, ChunkedError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at_checked(digits).ok_or(ChunkedError::Size)?;
    if digits > MAX_SIZE_DIGITS || (digits == 0 && (complete || !rest.is_empty())) {
        return Err(ChunkedError::Size);
    }
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match rest.get(ws..).unwrap_or_default() {
        [] if complete && ws > 0 => return Err(ChunkedError::Size),
        [] => {}
        // Loose on purpose: `;name[=value]` pairs are not parsed, only their bytes are checked.
        [b';', ext @ ..] if ext.iter().all(|&b| is_field_byte(b)) => {}
        [b';', ..] => return Err(ChunkedError::Extension),
        _ => return Err(ChunkedError::Size),
    }
    hex.iter()
        .try_fold(0u64, |acc, &b| {
            let digit = char::from(b).to_digit(16)?;
            acc.checked_mul(16)?.checked_add(u64::from(digit))
        })
        .ok_or(ChunkedError::Size)
}

/// Checks a (non-empty when complete) trailer field line: `token ":" field-value`.
fn check_field_line(line: &[u8], complete: bool) -> Result<(), ChunkedError> {
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    match line.get(name..).unwrap_or_default() {
        [] if !complete => Ok(()),
        [b':', value @ ..] if name > 0 && value.iter().all(|&b| is_field_byte(b)) => Ok(()),
        _ => Err(ChunkedError::Trailer),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends one chunk (`{len:x}\r\n{data}\r\n`) to `out`; nothing for empty `data`.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let len = data.len();
    if len == 0 {
        return;
    }
    out.reserve(len.saturating_add(20));
    let digits = usize::BITS.saturating_sub(len.leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        let nibble = len.checked_shr(i.saturating_mul(4)).unwrap_or(0) & 0xf;
        out.push(HEX.get(nibble).copied().unwrap_or(b'0'));
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use ChunkedError::{Crlf, Extension, Size, TooLong, Trailer};

    /// What a caller ends up with: the body, its unconsumed bytes, and `Ok(is_done)` or the error.
    type Outcome = (Vec<u8>, Vec<u8>, Result<bool, ChunkedError>);

    /// Plays the caller: appends each piece to its buffer, decodes as far as possible, and checks
    /// the `Step` contract on the way.
    fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut dec = ChunkedDecoder::new();
        let (mut buf, mut body) = (Vec::new(), Vec::new());
        for piece in pieces {
            buf.extend_from_slice(piece);
            while !dec.is_done() {
                match dec.decode(&buf) {
                    Err(e) => return (body, buf, Err(e)),
                    Ok(Step::NeedMore) => {
                        assert!(buf.len() <= MAX_TRAILERS, "caller buffers {}", buf.len());
                        break;
                    }
                    Ok(Step::Consumed(n)) => {
                        assert!(n > 0 && n <= buf.len());
                        buf.drain(..n);
                    }
                    Ok(Step::Data {
                        start,
                        end,
                        consumed,
                    }) => {
                        assert!(start < end && end <= consumed && consumed <= buf.len());
                        assert!(consumed == end || buf[end..consumed] == *b"\r\n");
                        body.extend_from_slice(&buf[start..end]);
                        buf.drain(..consumed);
                    }
                    Ok(Step::Done { consumed }) => drop(buf.drain(..consumed)),
                }
            }
        }
        (body, buf, Ok(dec.is_done()))
    }

    fn done(body: &[u8], rest: &[u8]) -> Outcome {
        (body.to_vec(), rest.to_vec(), Ok(true))
    }

    fn data(start: usize, end: usize, n: usize) -> Result<Step, ChunkedError> {
        Ok(Step::Data {
            start,
            end,
            consumed: n,
        })
    }

    /// Valid bodies and what they decode to.
    #[rustfmt::skip]
    const VALID: &[(&[u8], &[u8])] = &[
        (b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n", b"Wikipedia in\r\n\r\nchunks."),
        // RFC 9112 §7.1: extensions (token and quoted-string values, BWS), trailers (dropped).
        (b"1a; ext=\"quoted \\\"x\\\"\"\r\nabcdefghijklmnopqrstuvwxyz\r\n10 ;a\t;b=c\r\n\
           1234567890abcdef\r\n0;last\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Empty:\r\n\
           x-b:\t v \xff\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz1234567890abcdef"),
        (b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz"),
        (b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n", b"abcdefghijklmnopqrstuvwxyz"),
        (b"0000000B\r\nhello world\r\nA\r\n0123456789\r\n000\r\n\r\n", b"hello world0123456789"),
        (b"1 ;a=b\t; c = \"d;e\" ;\xff\r\nx\r\n0\t;z\r\n\r\n", b"x"),
        (b"0\r\n\r\n", b""),
    ];

    #[test]
    fn valid_bodies_decode_at_every_split_point() {
        for &(wire, body) in VALID {
            let (wire, expected) = ([wire, b"GET /"].concat(), done(body, b"GET /"));
            let name = String::from_utf8_lossy(&wire);
            for i in 0..=wire.len() {
                let (a, b) = wire.split_at(i);
                assert_eq!(feed([a, b]), expected, "{name:?} at {i}");
            }
            assert_eq!(feed(wire.chunks(1)), expected, "{name:?}");
        }
    }

    /// Malformed bodies (`|`-separated) and the error for the whole input. The first ones lack
    /// their CRLF: refused as soon as the partial line is wrong.
    #[rustfmt::skip]
    const MALFORMED: &[(ChunkedError, &str)] = &[
        (Size, "fffffffffffffffff|-|0x"),
        (Extension, "1;\x1b|1;a\x00\r\nx|1;a=\x7f\r\n"),
        (Size, "-1\r\n|0x10\r\n|\r\nx\r\n0\r\n\r\n| 1\r\n|1 0\r\n|1 \r\n|g\r\n|1_0\r\n|+1\r\n"),
        (Size, "ffffffffffffffffff\r\n|10000000000000000\r\n|00000000000000001\r\n"),
        // Only CRLF ends a line.
        (Size, "1\nx\r\n0\r\n\r\n|1;a\nx\r\n0\r\n\r\n|1\rx\r\n0\r\n\r\n|1\r\nx\r\n0\n\n"),
        (Crlf, "1\r\nx\n0\r\n\r\n|1\r\nx\r0\r\n\r\n"),
        (Trailer, "0\r\n\n|0\r\nA: b\n\r\n|0\r\nA: b\r\r\n"),
        // Data longer or shorter than its size.
        (Crlf, "1\r\nxy\r\n0\r\n\r\n|2\r\nx\r\n\r\n0\r\n\r\n|3\r\nabc0\r\n\r\n"),
        // Leading whitespace / obs-fold, no name, no colon, bad name, CTLs in the value.
        (Trailer, "0\r\n X: a\r\n\r\n|0\r\nA: b\r\n\tc\r\n\r\n|0\r\nX : a\r\n\r\n|0\r\nX\r\n\r\n"),
        (Trailer, "0\r\n: a\r\n\r\n|0\r\nX(: a\r\n\r\n|0\r\nX: a\x00b\r\n\r\n|0\r\nX: \x7f\r\n\r\n"),
    ];

    #[test]
    fn malformed_bodies_rejected_however_split() {
        for &(e, wires) in MALFORMED {
            for wire in wires.split('|') {
                assert_eq!(feed([wire.as_bytes()]).2, Err(e), "{wire:?}");
                for i in 0..=wire.len() {
                    let (a, b) = wire.as_bytes().split_at(i);
                    assert!(feed([a, b]).2.is_err(), "{wire:?} at {i}");
                }
            }
        }
    }

    #[test]
    fn steps_are_exact() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b""), Ok(Step::NeedMore));
        assert_eq!(d.decode(b"3\r"), Ok(Step::NeedMore));
        assert_eq!(d.decode(b"3\r\n"), Ok(Step::Consumed(3)));
        assert_eq!(d.decode(b"ab"), data(0, 2, 2));
        assert_eq!(d.decode(b"c"), data(0, 1, 1));
        assert_eq!(d.decode(b"\r"), Ok(Step::NeedMore));
        assert_eq!(d.decode(b"\r\n2\r\nxy\r\n0\r\n"), data(5, 7, 9));
        assert_eq!(d.decode(b"0\r\nT: v\r\n"), Ok(Step::Consumed(9)));
        assert!(!d.is_done());
        assert_eq!(d.decode(b"\r\nNEXT"), Ok(Step::Done { consumed: 2 }));
        assert!(d.is_done());
        assert_eq!(d.decode(b"NEXT"), Ok(Step::Done { consumed: 0 }));
        // 16 hex digits is the most allowed.
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"ffffffffffffffff\r\nab"), data(18, 20, 20));
    }

    #[test]
    fn long_lines_refused_before_their_end() {
        let cat = |a: &[u8], b: &[u8]| [a, b].concat();
        let line = |len: usize| cat(b"1;", &vec![b'a'; len - 2]);
        let err = |wire: &[u8]| feed([wire]).2;
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(&line(MAX_LINE)), Ok(Step::NeedMore));
        assert_eq!(d.decode(&cat(&line(MAX_LINE), b"\r")), Ok(Step::NeedMore));
        assert_eq!(d.decode(&line(MAX_LINE + 1)), Err(TooLong));
        let ok = cat(&line(MAX_LINE), b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(feed([&ok[..]]), done(b"x", b""));
        assert_eq!(err(&cat(&line(MAX_LINE + 1), b"\r\n")), Err(TooLong));

        // Trailers: 64-byte field lines, 16 KiB in total at most.
        let field = |pad: usize| format!("X-Pad: {}\r\n", "a".repeat(pad)).into_bytes();
        let trailers = |n: usize, end: &[u8]| [b"0\r\n", &field(55).repeat(n)[..], end].concat();
        assert_eq!(feed([&trailers(256, b"\r\n")[..]]), done(b"", b""));
        assert_eq!(err(&trailers(257, b"\r\n")), Err(TooLong));
        assert_eq!(err(&trailers(255, &cat(&field(56), b"\r\n"))), Err(TooLong));
        assert_eq!(err(&trailers(256, b"X")), Err(TooLong));
        assert_eq!(err(&trailers(0, &[b'a'; MAX_TRAILERS + 1])), Err(TooLong));
    }

    #[test]
    fn encoder_output() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"");
        assert!(out.is_empty());
        for (len, head) in [(3, "3"), (15, "f"), (16, "10"), (255, "ff"), (4096, "1000")] {
            out.clear();
            encode_chunk(&mut out, &vec![b'z'; len]);
            assert_eq!(out, format!("{head}\r\n{}\r\n", "z".repeat(len)).as_bytes());
        }
    }

    /// A valid chunked body followed by the start of the next message: `(wire, body, next)`.
    fn message() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
        let pick = |s: &'static str| select(s.split('|').collect::<Vec<_>>());
        let exts = || pick("|;a|;n=v| ;q=\"x; \\\"y\\\"\"|\t; a = b ;c|;\u{e9}");
        let trailers = vec(pick("Expires: 0|X-Empty:|x-b:\t v \t|D: a=b=="), 0..4);
        // Per chunk: data, extension, hex case and leading zeros (`style`: upper if odd, zeros / 2).
        let chunk = (vec(any::<u8>(), 1..300), exts(), 0..6usize);
        let next = vec(any::<u8>(), 0..8);
        (vec(chunk, 0..5), exts(), trailers, next).prop_map(|(chunks, ext, trailers, next)| {
            let (mut wire, mut body) = (Vec::new(), Vec::new());
            for (data, ext, style) in chunks {
                let size = format!("{}{:x}", "0".repeat(style / 2), data.len());
                let upper = style % 2 == 1;
                let size = if upper { size.to_uppercase() } else { size };
                wire.extend(format!("{size}{ext}\r\n").bytes());
                wire.extend_from_slice(&data);
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(&data);
            }
            wire.extend(format!("0{ext}\r\n").bytes());
            for t in trailers {
                wire.extend(format!("{t}\r\n").bytes());
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&next);
            (wire, body, next)
        })
    }

    fn split_at<'a>(wire: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.sort_unstable();
        points.push(wire.len());
        let piece = |prev: &mut usize, p| Some(&wire[std::mem::replace(prev, p)..p]);
        points.into_iter().scan(0, piece).collect()
    }

    /// What must not depend on how the input was split: the body, and unless there was an error,
    /// whether it is done and what is left over.
    fn summary((body, rest, result): Outcome) -> (Vec<u8>, Option<(bool, Vec<u8>)>) {
        (body, result.ok().map(|done| (done, rest)))
    }

    proptest! {
        #[test]
        fn valid_bodies_decode_the_same_however_split(
            (wire, body, next) in message(), cuts in vec(any::<Index>(), 0..8),
        ) {
            let expected = done(&body, &next);
            prop_assert_eq!(&feed([&wire[..]]), &expected);
            prop_assert_eq!(&feed(split_at(&wire, &cuts)), &expected);
            prop_assert_eq!(&feed(wire.chunks(1)), &expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            (valid, _, _) in message(),
            keep in any::<Index>(),
            junk in prop_oneof![
                vec(any::<u8>(), 0..256),
                vec(select(b"0123456789abcdefABCDEF;= \t\r\n:\"xX-\x00\x7f\xff".to_vec()), 0..256),
            ],
            cuts in vec(any::<Index>(), 0..8),
        ) {
            for bytes in [junk.clone(), [&valid[..keep.index(valid.len() + 1)], &junk].concat()] {
                let whole = summary(feed([&bytes[..]]));
                prop_assert_eq!(&summary(feed(split_at(&bytes, &cuts))), &whole);
                prop_assert_eq!(&summary(feed(bytes.chunks(1))), &whole);
            }
        }

        #[test]
        fn encode_then_decode_round_trips(
            chunks in vec(vec(any::<u8>(), 0..600), 0..6), cuts in vec(any::<Index>(), 0..8),
        ) {
            let mut wire = Vec::new();
            chunks.iter().for_each(|c| encode_chunk(&mut wire, c));
            wire.extend_from_slice(LAST_CHUNK);
            prop_assert_eq!(feed(split_at(&wire, &cuts)), done(&chunks.concat(), b""));
        }
    }
}

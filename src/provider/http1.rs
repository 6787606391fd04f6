//! HTTP/1.1 on the wire, for the direct client ([`super::direct`]): a request written from its
//! head (built once for the run), its length and its body in one `writev`, and an answer read
//! whole from the connection into the connection's own buffer: interim (1xx) answers passed
//! over, the body framed by `Content-Length`, chunked transfer coding or the connection's end,
//! and whether the connection can carry the next request.

use super::heard::Heard;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::IoSlice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How many headers an answer may carry.
const MAX_HEADERS: usize = 100;
/// The most an answer's head, or one line of its chunked framing, may take.
const MAX_HEAD: usize = 64 << 10;
/// The least room a read is given in a connection's buffer.
const MIN_READ: usize = 1024;

/// Why no whole answer was read.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The connection ended before the answer did.
    #[error("the connection closed before the whole answer arrived")]
    Closed,
    #[error("malformed HTTP answer: {0}")]
    Malformed(&'static str),
}

/// An answer read whole.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) heard: Heard,
    pub(super) body: Bytes,
    /// The connection may carry another request: the server keeps it open, and nothing of
    /// the answer is left unread.
    pub(super) reusable: bool,
}

/// What reading an answer came to.
pub(super) enum Read {
    Answer(Answer),
    /// The body is over the cap; the connection is not to be used again.
    TooLarge {
        status: u16,
    },
}

/// Writes one POST: `head` (the request line and every header but the length, each line
/// ending in CRLF), `Content-Length`, the blank line and `body`, without copying the body.
pub(super) async fn write_request<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let mut length = [0u8; 48];
    let n = {
        use std::io::Write;
        let mut at = &mut length[..];
        write!(at, "content-length: {}\r\n\r\n", body.len())?;
        48 - at.len()
    };
    let mut parts = [
        IoSlice::new(head),
        IoSlice::new(&length[..n]),
        IoSlice::new(body),
    ];
    let mut left = &mut parts[..];
    while !left.is_empty() {
        let wrote = io.write_vectored(left).await?;
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, wrote);
    }
    Ok(())
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// At the connection's end (no length, no chunks).
    ToEnd,
}

/// An answer's head, parsed.
struct Head {
    /// Its length in the buffer.
    len: usize,
    status: u16,
    heard: Heard,
    framing: Framing,
    keep_alive: bool,
}

/// Reads one answer from `io` (bytes already read sit in `buf`, bytes read past the answer
/// stay there), its body up to `max` bytes.
pub(super) async fn read_answer<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Read, WireError> {
    let head = final_head(io, buf).await?;
    buf.advance(head.len);
    let body = match head.framing {
        Framing::Length(n) if n > max as u64 => None,
        Framing::Length(n) => Some(by_length(io, buf, n as usize).await?),
        Framing::Chunked => by_chunks(io, buf, max).await?,
        Framing::ToEnd => to_end(io, buf, max).await?,
    };
    let Some(body) = body else {
        return Ok(Read::TooLarge {
            status: head.status,
        });
    };
    Ok(Read::Answer(Answer {
        status: head.status,
        heard: head.heard,
        body,
        reusable: head.keep_alive && head.framing != Framing::ToEnd && buf.is_empty(),
    }))
}

/// The answer's head, past any interim (1xx) answers.
async fn final_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Head, WireError> {
    loop {
        match parse_head(buf)? {
            Some(h) if h.status == 101 => return Err(WireError::Malformed("101 not asked for")),
            Some(h) if (100..200).contains(&h.status) => buf.advance(h.len),
            Some(h) => return Ok(h),
            None if buf.len() >= MAX_HEAD => {
                return Err(WireError::Malformed("the headers are over 64 KB"))
            }
            None => fill(io, buf).await?,
        }
    }
}

/// The head at the start of `buf`, if it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    // Uninitialised room: an answer carries a handful of headers, not a hundred to clear.
    let mut room = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut room);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("over 100 headers"))
        }
        Err(_) => return Err(WireError::Malformed("the status line or a header")),
    };
    let status = resp.code.unwrap_or(0);
    let headers = &*resp.headers;
    // The limits' headers are looked up by many names; most answers carry none of them.
    let limits = headers.iter().any(|h| {
        h.name
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-ratelimit-"))
    });
    let value = |name: &str| {
        if !limits && name.starts_with("x-ratelimit-") {
            return None;
        }
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let framing = framing(status, headers)?;
    let keep_alive = match resp.version {
        Some(1) => !has_token("connection", "close"),
        _ => has_token("connection", "keep-alive"),
    };
    Ok(Some(Head {
        len,
        status,
        heard: Heard::of(value),
        framing,
        keep_alive,
    }))
}

/// How the body ends (RFC 9112, 6.3): none for 1xx, 204 and 304; chunked when it is the last
/// transfer coding; else the one `Content-Length`; else the connection's end.
fn framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, WireError> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if let Some(codings) = named("transfer-encoding").next_back() {
        let last = codings.rsplit(|b| *b == b',').next().unwrap_or_default();
        return Ok(match last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            true => Framing::Chunked,
            false => Framing::ToEnd,
        });
    }
    let mut length = None;
    for v in named("content-length") {
        let n = std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(WireError::Malformed("Content-Length is not a number"))?;
        if length.is_some_and(|l| l != n) {
            return Err(WireError::Malformed("two different Content-Lengths"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::ToEnd, Framing::Length))
}

/// Reads more of the answer into `buf`; the connection's end is an error.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<(), WireError> {
    buf.reserve(MIN_READ);
    match io.read_buf(buf).await? {
        0 => Err(WireError::Closed),
        _ => Ok(()),
    }
}

/// A body of `n` bytes: what `buf` holds of it, the rest read straight into the body.
async fn by_length<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    n: usize,
) -> Result<Bytes, WireError> {
    let have = buf.len().min(n);
    let mut body = BytesMut::with_capacity(n);
    body.extend_from_slice(&buf[..have]);
    buf.advance(have);
    while body.len() < n {
        let want = n - body.len();
        if io.read_buf(&mut (&mut body).limit(want)).await? == 0 {
            return Err(WireError::Closed);
        }
    }
    Ok(body.freeze())
}

/// A chunked body, decoded; None when it grows over `max`.
async fn by_chunks<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, WireError> {
    let mut body = BytesMut::new();
    let mut chunks = Chunks::Size;
    loop {
        match chunks.step(buf, &mut body, max)? {
            Step::Done => return Ok(Some(body.freeze())),
            Step::TooLarge => return Ok(None),
            Step::More => fill(io, buf).await?,
        }
    }
}

/// A body that ends with the connection; None when it grows over `max`.
async fn to_end<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, WireError> {
    loop {
        if buf.len() > max {
            return Ok(None);
        }
        buf.reserve(MIN_READ);
        if io.read_buf(buf).await? == 0 {
            return Ok(Some(buf.split().freeze()));
        }
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// At a chunk's size line.
    Size,
    /// Inside a chunk, this many bytes of it left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last (empty) chunk: trailer lines up to a blank one.
    Trailers,
}

/// What a step of decoding needs next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
    TooLarge,
}

impl Chunks {
    /// Decodes what `buf` holds into `body`, as far as it goes.
    fn step(
        &mut self,
        buf: &mut BytesMut,
        body: &mut BytesMut,
        max: usize,
    ) -> Result<Step, WireError> {
        loop {
            match *self {
                Chunks::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let k = (left.min(buf.len() as u64)) as usize;
                    if body.len() + k > max {
                        return Ok(Step::TooLarge);
                    }
                    body.extend_from_slice(&buf[..k]);
                    buf.advance(k);
                    *self = match left - k as u64 {
                        0 => Chunks::DataEnd,
                        rest => Chunks::Data(rest),
                    };
                }
                state => {
                    let Some((text, used)) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    let next = match state {
                        Chunks::Size => match chunk_size(&buf[..text])? {
                            0 => Chunks::Trailers,
                            n if n > max as u64 => return Ok(Step::TooLarge),
                            n => Chunks::Data(n),
                        },
                        Chunks::DataEnd if text == 0 => Chunks::Size,
                        Chunks::DataEnd => {
                            return Err(WireError::Malformed("a chunk longer than its size"))
                        }
                        _ if text == 0 => {
                            buf.advance(used);
                            return Ok(Step::Done);
                        }
                        _ => Chunks::Trailers,
                    };
                    buf.advance(used);
                    *self = next;
                }
            }
        }
    }
}

/// The line at the start of `buf`: its length without the line end, and with it.
fn line(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    match memchr::memchr(b'\n', buf) {
        Some(at) => {
            let text = if at > 0 && buf[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            Ok(Some((text, at + 1)))
        }
        None if buf.len() > MAX_HEAD => Err(WireError::Malformed("a chunk line over 64 KB")),
        None => Ok(None),
    }
}

/// A chunk's size: hexadecimal digits, then perhaps extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let bad = WireError::Malformed("a chunk size");
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad);
    }
    digits.iter().try_fold(0u64, |n, b| {
        let d = (*b as char)
            .to_digit(16)
            .ok_or(WireError::Malformed("a chunk size"))?;
        Ok(n * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A reader that hands out its bytes `step` at a time, then ends.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(out.remaining());
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn read(wire: &str, step: usize, max: usize) -> (Result<Read, WireError>, BytesMut) {
        let mut io = Trickle {
            data: wire.as_bytes().to_vec(),
            at: 0,
            step,
        };
        let mut buf = BytesMut::with_capacity(16);
        let r = read_answer(&mut io, &mut buf, max).await;
        (r, buf)
    }

    async fn answer(wire: &str, step: usize) -> Answer {
        match read(wire, step, 1 << 20).await.0 {
            Ok(Read::Answer(a)) => a,
            Ok(Read::TooLarge { .. }) => panic!("too large"),
            Err(e) => panic!("{e}"),
        }
    }

    const SIZED: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nx-ratelimit-limit-requests: 500\r\n\r\n{\"a\":\"bcd\"}";

    #[tokio::test]
    async fn a_sized_answer_reads_whole_however_it_is_cut() {
        for step in [1, 2, 7, 64, 4096] {
            let a = answer(SIZED, step).await;
            assert_eq!(a.status, 200);
            assert_eq!(&a.body[..], b"{\"a\":\"bcd\"}", "step {step}");
            assert_eq!(a.heard.content_type.as_deref(), Some("application/json"));
            assert_eq!(a.heard.advertised.rpm, Some(500));
            assert!(a.reusable);
        }
    }

    #[tokio::test]
    async fn the_limits_headers_are_read_whatever_their_case_and_place() {
        let wire = "HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 0\r\nX-RateLimit-Limit-Tokens: 9000\r\nX-RATELIMIT-REMAINING-REQUESTS: 0\r\nx-ratelimit-reset-requests: 20s\r\n\r\n";
        let a = answer(wire, 4096).await;
        assert_eq!(a.heard.retry_after.as_deref(), Some("3"));
        assert_eq!(a.heard.advertised.tpm, Some(9000));
        assert_eq!(a.heard.reset_requests.as_deref(), Some("20s"));
        assert_eq!(
            a.heard.quota_exhausted,
            Some(std::time::Duration::from_secs(20))
        );
        let none = answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4096).await;
        assert_eq!(none.heard.advertised.rpm, None);
        assert_eq!(none.heard.retry_after, None);
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_with_extensions_and_trailers() {
        let wire = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=x\r\nhello\r\n7\r\n, world\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 3, 10, 4096] {
            let a = answer(wire, step).await;
            assert_eq!(&a.body[..], b"hello, world0123456789", "step {step}");
            assert!(a.reusable);
        }
    }

    #[tokio::test]
    async fn interim_answers_are_passed_over() {
        let wire = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n{SIZED}"
        );
        let a = answer(&wire, 5).await;
        assert_eq!((a.status, &a.body[..]), (200, &b"{\"a\":\"bcd\"}"[..]));
    }

    #[tokio::test]
    async fn the_connection_is_kept_only_when_the_server_keeps_it() {
        let close = "HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno";
        assert!(!answer(close, 64).await.reusable);
        let old = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(!answer(old, 64).await.reusable);
        let old_kept = "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
        assert!(answer(old_kept, 64).await.reusable);
        // No length: the body is what comes before the end, and the connection is done.
        let to_end = "HTTP/1.1 200 OK\r\n\r\n{\"all\":1}";
        let a = answer(to_end, 3).await;
        assert_eq!((&a.body[..], a.reusable), (&b"{\"all\":1}"[..], false));
        // Bytes past the answer: the connection is not trusted with another request.
        let extra = format!("{SIZED}HTTP/1.1 200 OK\r\n");
        assert!(!answer(&extra, 4096).await.reusable);
        let empty = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(answer(empty, 4096).await.body.len(), 0);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_closed_not_an_answer() {
        let cut = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half\":";
        assert!(matches!(
            read(cut, 4, 1 << 20).await.0,
            Err(WireError::Closed)
        ));
        let chunks_cut = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        assert!(matches!(
            read(chunks_cut, 4, 1 << 20).await.0,
            Err(WireError::Closed)
        ));
        let no_head = "HTTP/1.1 200 OK\r\nContent-Le";
        assert!(matches!(
            read(no_head, 4, 1 << 20).await.0,
            Err(WireError::Closed)
        ));
        assert!(matches!(
            read("", 4, 1 << 20).await.0,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_too_large_by_any_framing() {
        let cap = 5;
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n123456",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n123\r\n3\r\n456\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n",
            "HTTP/1.1 200 OK\r\n\r\n123456",
        ] {
            assert!(
                matches!(read(wire, 2, cap).await.0, Ok(Read::TooLarge { status: 200 })),
                "{wire}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_named() {
        for (wire, what) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                "two different",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok",
                "not a number",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "longer than its size",
            ),
            ("NOT HTTP\r\n\r\n", "status line"),
            ("HTTP/1.1 101 Switching\r\n\r\n", "101"),
        ] {
            match read(wire, 4096, 1 << 20).await.0 {
                Err(e @ WireError::Malformed(_)) => assert!(e.to_string().contains(what), "{e}"),
                Err(e) => panic!("{wire}: {e}"),
                Ok(_) => panic!("{wire}: read as an answer"),
            }
        }
        let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let wire = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
        assert!(matches!(
            read(&wire, 4096, 10).await.0,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_request_is_its_head_its_length_and_its_body() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            b"POST /v1/x HTTP/1.1\r\nhost: h\r\n",
            b"{\"a\":1}",
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            b"POST /v1/x HTTP/1.1\r\nhost: h\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn chunk_sizes_are_hex_with_extensions() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"FF ; ext=1").unwrap(), 255);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"1000000000000000").is_err());
    }
}

//! Turns the bytes of a request head into a `RequestHead` (with httparse), enforcing the header
//! size limit and deciding body framing and keep-alive from the headers.
//!
//! Owns: request-head parsing and header interpretation (Content-Length, Transfer-Encoding,
//! Connection, Expect, the HTTP/1.1 Host requirement).
//! Must never: do I/O, block, allocate beyond the head it was given, or know about routes.

/// Most header lines accepted in one request; more is answered like an oversize head (431).
const MAX_HEADERS: usize = 100;

/// What the server needs to know about one request, owned (no borrow of the read buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHead {
    pub method: String,
    /// Request target without the query string.
    pub path: String,
    /// HTTP/1.x minor version: 0 or 1.
    pub minor_version: u8,
    /// Declared body length; `None` when absent. Saturates at `u64::MAX` on overflow.
    pub content_length: Option<u64>,
    /// A Transfer-Encoding header was present (we do not decode chunked bodies: 411).
    pub has_transfer_encoding: bool,
    /// Whether the client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The `Authorization` header, if any (bounded by the head size limit).
    pub authorization: Option<String>,
}

/// Why a head cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Head longer than the limit, or too many header lines: 431.
    TooLarge,
    /// Not HTTP/1.x, or an invalid header we rely on: 400.
    Malformed(String),
}

/// Parses the head at the start of `buf`.
///
/// `Ok(None)`: incomplete but still within `max_header_bytes`, read more.
/// `Ok(Some((head, n)))`: the head is the first `n` bytes of `buf`.
pub(super) fn parse_head(buf: &[u8], max_header_bytes: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        // Partial means no end of head within `buf`, so the head is longer than `buf`.
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(format!("malformed request head: {e}"))),
    };
    if used > max_header_bytes {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };

    let mut content_length: Option<u64> = None;
    let mut has_transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut authorization = None;
    let mut hosts = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("conflicting Content-Length headers".into()));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = std::str::from_utf8(h.value).ok().map(|v| v.trim().to_owned());
        }
    }
    // RFC 9112 3.2: an HTTP/1.1 request without exactly one Host header is answered 400.
    if minor_version >= 1 && hosts != 1 {
        let why = if hosts == 0 { "without a" } else { "with more than one" };
        return Err(HeadError::Malformed(format!("HTTP/1.1 request {why} Host header")));
    }
    let keep_alive = !close && (minor_version >= 1 || keep_alive_token);
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        minor_version,
        content_length,
        has_transfer_encoding,
        keep_alive,
        expect_continue,
        authorization,
    };
    Ok(Some((head, used)))
}

/// 1*DIGIT only (no sign, no list); overflow saturates so the body limit rejects it (413).
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length header".into()));
    }
    Ok(digits
        .iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        .unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{HeadError, parse_head};

    #[test]
    fn complete_head_with_body_framing() {
        let raw = b"POST /v1/messages?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nbody";
        let (head, used) = parse_head(raw, 1024).expect("valid head").expect("complete head");
        assert_eq!(used, raw.len() - 4);
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/v1/messages");
        assert_eq!(head.content_length, Some(12));
        assert!(head.keep_alive);
        assert!(!head.has_transfer_encoding);
    }

    #[test]
    fn partial_head_then_limit() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", 1024), Ok(None));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", 10), Err(HeadError::TooLarge));
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse_head(raw, raw.len() - 1), Err(HeadError::TooLarge));
    }

    #[test]
    fn connection_semantics() {
        let get = |raw: &[u8]| parse_head(raw, 1024).expect("valid").expect("complete").0;
        assert!(!get(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!get(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(get(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(get(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(get(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").has_transfer_encoding);
    }

    #[test]
    fn bad_content_length() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        ] {
            assert!(matches!(parse_head(raw, 1024), Err(HeadError::Malformed(_))));
        }
        let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        let head = parse_head(huge, 1024).expect("valid").expect("complete").0;
        assert_eq!(head.content_length, Some(u64::MAX));
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        let malformed =
            |raw: &[u8]| matches!(parse_head(raw, 1024), Err(HeadError::Malformed(m)) if m.contains("Host"));
        assert!(malformed(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(malformed(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"));
        assert!(parse_head(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n", 1024).is_ok_and(|h| h.is_some()));
        assert!(parse_head(b"GET / HTTP/1.0\r\n\r\n", 1024).is_ok_and(|h| h.is_some()));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_head(b"\x01\x02 nope\r\n\r\n", 1024),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n", 1024),
            Err(HeadError::Malformed(_))
        ));
    }
}

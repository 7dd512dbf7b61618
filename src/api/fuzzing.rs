//! Entry points for the fuzz targets under `tests/fuzz` into the API's private request
//! parser; hidden from the docs and not part of the API.
//!
//! Owns: a plain, comparable view of what `request::parse_head` decided.
//! Must never: be called by the gateway itself, or widen what the server accepts.

/// What `request::parse_head` made of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadOutcome {
    /// No end of head yet and still under the limit: the server reads more.
    Incomplete,
    /// 431: the head is longer than the limit, or has too many header lines.
    TooLarge,
    /// 400: not HTTP/1.x, or a header the server relies on is invalid.
    Malformed,
    /// The head is the first `head_bytes` bytes of the buffer.
    Complete {
        head_bytes: usize,
        method: String,
        path: String,
        minor_version: u8,
        content_length: Option<u64>,
        has_transfer_encoding: bool,
        keep_alive: bool,
        expect_continue: bool,
        authorization: Option<String>,
    },
}

/// Runs the server's head parser on `buf` with the header limit `max_header_bytes`.
pub fn parse_head(buf: &[u8], max_header_bytes: usize) -> HeadOutcome {
    use super::request::{self, HeadError};
    match request::parse_head(buf, max_header_bytes) {
        Ok(None) => HeadOutcome::Incomplete,
        Err(HeadError::TooLarge) => HeadOutcome::TooLarge,
        Err(HeadError::Malformed(_)) => HeadOutcome::Malformed,
        Ok(Some((h, head_bytes))) => HeadOutcome::Complete {
            head_bytes,
            method: h.method,
            path: h.path,
            minor_version: h.minor_version,
            content_length: h.content_length,
            has_transfer_encoding: h.has_transfer_encoding,
            keep_alive: h.keep_alive,
            expect_continue: h.expect_continue,
            authorization: h.authorization,
        },
    }
}

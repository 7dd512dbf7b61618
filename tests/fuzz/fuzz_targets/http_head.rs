//! Fuzz target: the HTTP API's request-head parser (`api::request::parse_head`, through
//! the hidden `api::fuzzing` entry point), as the server calls it on its read buffer.
//!
//! Input: bytes 0-1 pick the header limit (16..=16 KiB), the rest is what the client
//! sent. Beyond "no panic" it asserts: a complete head lies within the buffer and the
//! limit, and parses the same from exactly its own bytes and with any body after it; the
//! path has no query string; keep-alive follows from the version and Connection header;
//! an incomplete head is under the limit and every shorter prefix of it is incomplete
//! too (the server never answers early on a head that is merely unfinished).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulsegate::api::fuzzing::{HeadOutcome, parse_head};

/// Largest header limit tried (the server's default is 16 KiB).
const HEADER_BYTES_MAX: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let [a, b, buf @ ..] = data else {
        return;
    };
    let max_header_bytes = 16 + usize::from(u16::from_le_bytes([*a, *b])) % (HEADER_BYTES_MAX - 15);
    let outcome = parse_head(buf, max_header_bytes);
    match &outcome {
        HeadOutcome::Complete {
            head_bytes,
            path,
            minor_version,
            keep_alive,
            ..
        } => {
            let n = *head_bytes;
            assert!(
                n <= buf.len() && n <= max_header_bytes,
                "{n} of {} (limit {max_header_bytes})",
                buf.len()
            );
            assert!(buf[..n].ends_with(b"\n"), "a head ends with its blank line");
            assert!(!path.contains('?'), "query string kept in {path:?}");
            assert!(*minor_version <= 1);
            if *minor_version == 0 && *keep_alive {
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                assert!(head.contains("keep-alive"), "HTTP/1.0 kept alive without asking");
            }
            // The same head from exactly its own bytes, and with a body behind it.
            assert_eq!(parse_head(&buf[..n], max_header_bytes), outcome);
            let mut with_body = buf[..n].to_vec();
            with_body.extend_from_slice(b"{\"device\":\"d\"}\r\n\r\nGET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse_head(&with_body, max_header_bytes), outcome);
        }
        HeadOutcome::Incomplete => {
            assert!(buf.len() < max_header_bytes, "incomplete past the limit");
            for cut in [0, buf.len() / 2, buf.len().saturating_sub(1)] {
                assert_eq!(
                    parse_head(&buf[..cut], max_header_bytes),
                    HeadOutcome::Incomplete,
                    "cut at {cut}"
                );
            }
        }
        HeadOutcome::TooLarge | HeadOutcome::Malformed => {}
    }
});

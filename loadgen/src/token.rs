//! Device tokens (`--jwt-secret-file`): one HS256 JWT per CONNECT, with the claims
//! `clientid` (the device's MQTT client id), `iat` and `exp` = `iat` + `--jwt-ttl-s`,
//! sent as the CONNECT password (the user name is the client id).
//!
//! Owns: reading the shared secret (bounded; its raw bytes, exactly as the
//! gateway's `[device_auth] key_file` reads them) and minting tokens.
//! Must never: read a clock (the time is passed in), keep a token per device
//! (each CONNECT mints a fresh one, so reconnects after the TTL still work and
//! idle devices hold nothing), or print the secret.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest secret file read.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The claims of a device token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub clientid: String,
    pub iat: u64,
    pub exp: u64,
}

/// Mints device tokens with one secret.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    ttl_s: u64,
}

/// The secret in `path`: at most `SECRET_FILE_BYTES_MAX` bytes, raw (a trailing
/// newline is part of the secret, as for the gateway), not empty.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(format!(
            "--jwt-secret-file {}: {} bytes, more than {SECRET_FILE_BYTES_MAX}",
            path.display(),
            meta.len()
        ));
    }
    let secret = std::fs::read(path).map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
    if secret.is_empty() {
        return Err(format!("--jwt-secret-file {}: the secret is empty", path.display()));
    }
    Ok(secret)
}

impl Minter {
    pub fn new(secret: &[u8], ttl_s: u64) -> Minter {
        Minter {
            key: EncodingKey::from_secret(secret),
            header: Header::default(), // HS256
            ttl_s,
        }
    }

    pub fn from_file(path: &Path, ttl_s: u64) -> Result<Minter, String> {
        Ok(Minter::new(&read_secret(path)?, ttl_s))
    }

    /// The token of `client_id` issued at `now_unix_s`.
    pub fn mint(&self, client_id: &str, now_unix_s: u64) -> Result<String, String> {
        let claims = Claims {
            clientid: client_id.to_string(),
            iat: now_unix_s,
            exp: now_unix_s.saturating_add(self.ttl_s),
        };
        encode(&self.header, &claims, &self.key).map_err(|e| format!("jwt: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    fn decode_with(secret: &[u8], token: &str, leeway_s: u64) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = leeway_s;
        v.set_required_spec_claims(&["exp"]);
        decode::<Claims>(token, &DecodingKey::from_secret(secret), &v).map(|d| d.claims)
    }

    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn minted_token_decodes_with_the_claims() {
        let m = Minter::new(b"s3cret", 3600);
        let now = now_s();
        let token = m.mint("lg-42", now).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        let c = decode_with(b"s3cret", &token, 0).unwrap();
        assert_eq!(
            c,
            Claims {
                clientid: "lg-42".into(),
                iat: now,
                exp: now + 3600
            }
        );
        // Another device's token names that device.
        let c = decode_with(b"s3cret", &m.mint("lg-7", now).unwrap(), 0).unwrap();
        assert_eq!(c.clientid, "lg-7");
    }

    #[test]
    fn wrong_secret_and_expiry_are_refused() {
        let m = Minter::new(b"right", 60);
        let now = now_s();
        let token = m.mint("d", now).unwrap();
        assert!(decode_with(b"wrong", &token, 0).is_err());
        // Issued two TTLs ago: expired.
        let old = m.mint("d", now - 120).unwrap();
        let err = decode_with(b"right", &old, 0).unwrap_err();
        assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);
    }

    #[test]
    fn secret_file_is_bounded_and_read_raw() {
        let dir = std::env::temp_dir().join(format!("pulsegate-loadgen-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("secret");
        std::fs::write(&p, b"abc\r\n").unwrap();
        assert_eq!(read_secret(&p).unwrap(), b"abc\r\n");
        let m = Minter::from_file(&p, 10).unwrap();
        let token = m.mint("x", now_s()).unwrap();
        assert!(decode_with(b"abc\r\n", &token, 0).is_ok());
        assert!(decode_with(b"abc", &token, 0).is_err());
        std::fs::write(&p, b"").unwrap();
        assert!(read_secret(&p).unwrap_err().contains("empty"));
        std::fs::write(&p, vec![b'a'; SECRET_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(read_secret(&p).unwrap_err().contains("more than"));
        assert!(read_secret(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

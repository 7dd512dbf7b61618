//! JWT device authentication: the CONNECT password is a JSON Web Token
//! signed with HS256 (a shared secret file, raw bytes) or RS256/ES256 (a PEM
//! public key file), whose `clientid` claim must equal the CONNECT client id,
//! whose `exp` is required and enforced and whose `nbf`, if present, is
//! enforced, both with `leeway_s`. The token format EMQX, HiveMQ and
//! mosquitto-go-auth users already issue.
//!
//! Owns the verification key and its reload. Must never read a file or
//! block on a shard thread (`authenticate` takes a read lock on the current
//! key and verifies in memory), never accept a token of another algorithm
//! than the configured one (no `alg: none`, no HS256-with-the-public-key
//! confusion), and never keep a half-loaded key after a failed reload.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{AuthCounters, AuthRequest, Authenticator, Refusal};
use crate::config::JwtAlgorithm;
use crate::limits;

/// The claims a device token must carry besides `exp` (checked by the validator).
#[derive(Deserialize)]
struct DeviceClaims {
    clientid: String,
}

/// Where the key comes from and how it is read.
#[derive(Clone, Debug)]
pub struct JwtKeys {
    pub algorithm: JwtAlgorithm,
    pub key_file: PathBuf,
}

impl JwtKeys {
    fn jwt_algorithm(&self) -> Algorithm {
        match self.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        }
    }

    /// Reads and parses the key file.
    fn read(&self) -> Result<DecodingKey, String> {
        let bytes = crate::tls::read_bounded(&self.key_file)?;
        let file = self.key_file.display();
        match self.algorithm {
            JwtAlgorithm::HS256 => {
                if bytes.len() < limits::JWT_HS256_SECRET_BYTES_MIN {
                    return Err(format!(
                        "{file}: an HS256 secret must be at least {} bytes (it has {})",
                        limits::JWT_HS256_SECRET_BYTES_MIN,
                        bytes.len()
                    ));
                }
                Ok(DecodingKey::from_secret(&bytes))
            }
            JwtAlgorithm::RS256 => {
                DecodingKey::from_rsa_pem(&bytes).map_err(|e| format!("{file}: not a PEM RSA public key: {e}"))
            }
            JwtAlgorithm::ES256 => {
                DecodingKey::from_ec_pem(&bytes).map_err(|e| format!("{file}: not a PEM EC (P-256) public key: {e}"))
            }
        }
    }
}

/// Verifies device tokens against the current key.
pub struct JwtAuthenticator {
    keys: JwtKeys,
    validation: Validation,
    current: RwLock<Arc<DecodingKey>>,
    counters: AuthCounters,
}

impl JwtAuthenticator {
    /// Reads the key; an error names the file and what is wrong.
    pub fn load(algorithm: JwtAlgorithm, key_file: PathBuf, leeway_s: u32) -> Result<JwtAuthenticator, String> {
        let keys = JwtKeys { algorithm, key_file };
        let key = keys.read()?;
        let mut validation = Validation::new(keys.jwt_algorithm());
        validation.leeway = leeway_s as u64;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Audience is not part of the device contract; a token that carries one is not refused for it.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(JwtAuthenticator {
            keys,
            validation,
            current: RwLock::new(Arc::new(key)),
            counters: AuthCounters::default(),
        })
    }

    fn key(&self) -> Arc<DecodingKey> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn verify(&self, request: &AuthRequest<'_>) -> Result<(), Refusal> {
        let Some(password) = request.password.filter(|p| !p.is_empty()) else {
            return Err(Refusal::MissingPassword);
        };
        if password.len() > limits::JWT_BYTES_MAX {
            return Err(Refusal::MalformedToken);
        }
        let Ok(token) = std::str::from_utf8(password) else {
            return Err(Refusal::MalformedToken);
        };
        let token = token.trim();
        let claims = jsonwebtoken::decode::<DeviceClaims>(token, &self.key(), &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey => {
                    Refusal::BadSignature
                }
                _ => Refusal::MalformedToken,
            })?
            .claims;
        if request.client_id.is_empty() || claims.clientid != request.client_id {
            return Err(Refusal::ClientIdMismatch);
        }
        Ok(())
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, request: &AuthRequest<'_>) -> Result<(), Refusal> {
        self.counters.count(self.verify(request))
    }

    fn reload(&self) -> Result<String, String> {
        let loaded = self.keys.read();
        self.counters.count_reload(loaded.is_ok());
        let key = loaded?;
        match self.current.write() {
            Ok(mut k) => *k = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
        Ok(format!(
            "device JWT key reloaded from {} ({:?})",
            self.keys.key_file.display(),
            self.keys.algorithm
        ))
    }

    fn counters(&self) -> &AuthCounters {
        &self.counters
    }

    fn kind(&self) -> &'static str {
        "jwt"
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn now_s() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pulsegate-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn check(auth: &JwtAuthenticator, client_id: &str, password: Option<&str>) -> Result<(), Refusal> {
        auth.authenticate(&AuthRequest {
            client_id,
            username: Some(client_id),
            password: password.map(str::as_bytes),
        })
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_expiry_and_client_id() {
        let key_file = temp_file("hs.key", SECRET);
        let auth = JwtAuthenticator::load(JwtAlgorithm::HS256, key_file, 30).unwrap();
        let ok = hs256(json!({"clientid": "phone-42", "exp": now_s() + 600}), SECRET);
        assert_eq!(check(&auth, "phone-42", Some(&ok)), Ok(()));
        assert_eq!(check(&auth, "phone-43", Some(&ok)), Err(Refusal::ClientIdMismatch));
        assert_eq!(check(&auth, "", Some(&ok)), Err(Refusal::ClientIdMismatch));
        assert_eq!(check(&auth, "phone-42", None), Err(Refusal::MissingPassword));
        assert_eq!(check(&auth, "phone-42", Some("")), Err(Refusal::MissingPassword));
        assert_eq!(
            check(&auth, "phone-42", Some("not.a.jwt")),
            Err(Refusal::MalformedToken)
        );
        let forged = hs256(
            json!({"clientid": "phone-42", "exp": now_s() + 600}),
            b"another-secret-another-secret-another",
        );
        assert_eq!(check(&auth, "phone-42", Some(&forged)), Err(Refusal::BadSignature));
        // Expired beyond the leeway is refused; within it, accepted.
        let expired = hs256(json!({"clientid": "phone-42", "exp": now_s() - 120}), SECRET);
        assert_eq!(check(&auth, "phone-42", Some(&expired)), Err(Refusal::Expired));
        let in_leeway = hs256(json!({"clientid": "phone-42", "exp": now_s() - 10}), SECRET);
        assert_eq!(check(&auth, "phone-42", Some(&in_leeway)), Ok(()));
        let early = hs256(
            json!({"clientid": "phone-42", "exp": now_s() + 600, "nbf": now_s() + 300}),
            SECRET,
        );
        assert_eq!(check(&auth, "phone-42", Some(&early)), Err(Refusal::NotYetValid));
        let no_exp = hs256(json!({"clientid": "phone-42"}), SECRET);
        assert_eq!(check(&auth, "phone-42", Some(&no_exp)), Err(Refusal::MalformedToken));
        let no_client = hs256(json!({"sub": "phone-42", "exp": now_s() + 600}), SECRET);
        assert_eq!(check(&auth, "phone-42", Some(&no_client)), Err(Refusal::MalformedToken));
        let huge = "a".repeat(limits::JWT_BYTES_MAX + 1);
        assert_eq!(check(&auth, "phone-42", Some(&huge)), Err(Refusal::MalformedToken));
        assert_eq!(auth.counters().accepted(), 2);
        assert_eq!(auth.counters().refused(Refusal::ClientIdMismatch), 2);
        assert_eq!(auth.counters().refused(Refusal::MalformedToken), 4);
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let key_file = temp_file("hs2.key", SECRET);
        let auth = JwtAuthenticator::load(JwtAlgorithm::HS256, key_file, 0).unwrap();
        // {"alg":"none"} with an empty signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let body = base64_url(&json!({"clientid": "d", "exp": now_s() + 600}).to_string());
        let none = format!("{header}.{body}.");
        assert_eq!(check(&auth, "d", Some(&none)), Err(Refusal::MalformedToken));
        // HS384 with the right secret is still not HS256.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"clientid": "d", "exp": now_s() + 600}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(check(&auth, "d", Some(&hs384)), Err(Refusal::MalformedToken));
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn es256_public_key_verifies_and_reload_swaps_keys_keeping_the_old_on_error() {
        let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key_file = temp_file("es.pem", first.public_key_pem().as_bytes());
        let auth = JwtAuthenticator::load(JwtAlgorithm::ES256, key_file.clone(), 30).unwrap();
        let sign = |kp: &rcgen::KeyPair| {
            let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
            encode(
                &Header::new(Algorithm::ES256),
                &json!({"clientid": "d", "exp": now_s() + 600}),
                &key,
            )
            .unwrap()
        };
        assert_eq!(check(&auth, "d", Some(&sign(&first))), Ok(()));
        let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(check(&auth, "d", Some(&sign(&second))), Err(Refusal::BadSignature));
        // Rotate: the file now holds the second key.
        std::fs::write(&key_file, second.public_key_pem()).unwrap();
        auth.reload().unwrap();
        assert_eq!(check(&auth, "d", Some(&sign(&second))), Ok(()));
        assert_eq!(check(&auth, "d", Some(&sign(&first))), Err(Refusal::BadSignature));
        // A broken file is refused and the second key stays.
        std::fs::write(&key_file, "garbage").unwrap();
        let err = auth.reload().unwrap_err();
        assert!(err.contains("es.pem"), "{err}");
        assert_eq!(check(&auth, "d", Some(&sign(&second))), Ok(()));
        assert_eq!(auth.counters().reloads(), (1, 1));
    }

    #[test]
    fn short_secrets_and_missing_files_are_refused_at_load() {
        let short = temp_file("short.key", b"secret\n");
        let err = JwtAuthenticator::load(JwtAlgorithm::HS256, short, 30).err().unwrap();
        assert!(err.contains("at least 32 bytes"), "{err}");
        let err = JwtAuthenticator::load(JwtAlgorithm::RS256, PathBuf::from("/nonexistent/k.pem"), 30)
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/k.pem"), "{err}");
        let not_pem = temp_file("rs.pem", b"-----BEGIN NOTHING-----\n");
        let err = JwtAuthenticator::load(JwtAlgorithm::RS256, not_pem, 30).err().unwrap();
        assert!(err.contains("RSA public key"), "{err}");
    }
}

//! Who is asking: client tokens (HS256 JWTs naming the user) and the
//! backend's service credential.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use readmark::UserId;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The claims of a client token: `sub` is the user id in decimal (JWT
/// subjects are strings), `exp` the expiry in seconds since the epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user, as a decimal string.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused; the text is what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token in the request.
    Missing,
    /// Signature, algorithm, format or subject wrong.
    Invalid,
    /// Past its `exp`.
    Expired,
}

impl Refusal {
    /// The code in the refusal's body and `WWW-Authenticate` header.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_token",
            Refusal::Invalid => "invalid_token",
            Refusal::Expired => "expired_token",
        }
    }
}

/// Checks and (for tests and `readmark-server token`) makes client tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    /// Tokens signed with `secret` (HS256 only: a token naming another
    /// algorithm, `none` included, is refused).
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Clocks of the backend and this server agree to within seconds;
        // the library's default of a minute keeps a revoked session alive.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `user` expiring at `exp` (seconds since the
    /// epoch).
    ///
    /// # Panics
    ///
    /// Never for HS256 and these claims (signing cannot fail).
    #[must_use]
    pub fn issue(&self, user: UserId, exp: u64) -> String {
        let claims = Claims {
            sub: user.0.to_string(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims")
    }

    /// The user a token names and when it expires, if it is valid now.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to give the client.
    pub fn verify(&self, token: &str) -> Result<(UserId, u64), Refusal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::Expired,
                _ => Refusal::Invalid,
            })?;
        let user = data
            .claims
            .sub
            .parse::<u64>()
            .map_err(|_| Refusal::Invalid)?;
        Ok((UserId(user), data.claims.exp))
    }
}

/// Whether `presented` is the service credential, in time independent of
/// where they differ.
pub(crate) fn service_ok(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())))
}

/// The token of an `Authorization: Bearer` header value.
pub(crate) fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn a_token_round_trips_and_a_forged_or_expired_one_is_refused() {
        let t = Tokens::new(SECRET);
        let tok = t.issue(UserId(42), now() + 60);
        assert_eq!(t.verify(&tok).map(|v| v.0), Ok(UserId(42)));
        let other = Tokens::new(b"another secret of thirty-two bytes!!");
        assert_eq!(other.verify(&tok), Err(Refusal::Invalid));
        assert_eq!(
            t.verify(&t.issue(UserId(42), now() - 3600)),
            Err(Refusal::Expired)
        );
        // A flipped payload byte breaks the signature.
        let mut parts: Vec<String> = tok.split('.').map(str::to_string).collect();
        let first = if parts[1].starts_with('e') { "f" } else { "e" };
        parts[1].replace_range(0..1, first);
        assert_eq!(t.verify(&parts.join(".")), Err(Refusal::Invalid));
        assert_eq!(t.verify("not a token"), Err(Refusal::Invalid));
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        // {"alg":"none"} with a valid-looking payload and no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let payload = "eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0";
        let t = Tokens::new(SECRET);
        assert_eq!(
            t.verify(&format!("{header}.{payload}.")),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn bearer_and_service_credential() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
        assert!(service_ok("s3cret-credential", Some("s3cret-credential")));
        assert!(!service_ok("s3cret-credential", Some("s3cret-credentia")));
        assert!(!service_ok("s3cret-credential", None));
    }
}

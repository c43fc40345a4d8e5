//! Authentication (SPEC §3 AUTH): checking a JWT and finding it in an upgrade request.
//!
//! This module owns the decision "is this token acceptable, and if not, which of
//! the `token_*` error kinds does the client get". It is pure: the current time is
//! a parameter, keys arrive already parsed (see [`crate::keys`] for files and key
//! generation), and revocation is left to the caller, who owns the jti list.
//!
//! The token is taken apart here rather than with `jsonwebtoken::decode`, which
//! reads the system clock for `exp`/`nbf` and folds distinct failures into errors
//! that do not map onto SPEC's kinds (an `alg: none` header, for instance, is a
//! JSON error to it, where SPEC says `token_signature`). `jsonwebtoken` still does
//! the cryptography. The checks run in a fixed order, and the first failure
//! decides the kind:
//!
//! 1. shape: three base64url segments, header and payload JSON objects -> `token_malformed`;
//! 2. header `alg` equals the verifier's algorithm, then the signature -> `token_signature`;
//! 3. required claims present, well-typed and well-formed; `iss`/`aud` if configured -> `token_claims`;
//! 4. `exp`/`nbf` against `now_ms`, with the configured leeway -> `token_expired`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codec::ErrorKind;

/// The JWS algorithms SPEC allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: the one every server MUST support.
    Rs256,
    /// Ed25519.
    EdDsa,
    /// HMAC with SHA-256, shared secret.
    Hs256,
}

impl Algorithm {
    /// The `alg` header value (RFC 7518), e.g. "EdDSA".
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Hs256 => "HS256",
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

impl FromStr for Algorithm {
    type Err = AuthError;

    /// Case-insensitive, for configuration files and command lines. Token headers
    /// are compared exactly, not through this.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256]
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| AuthError::UnknownAlgorithm(s.to_owned()))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims a BIMIP token carries. Times are JWT NumericDates: seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub eid: String,
    pub device_id: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// What a verified token tells the server. Times in ms, like the rest of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub eid: String,
    pub device_id: String,
    pub jti: String,
    pub iat_ms: i64,
    pub exp_ms: i64,
}

/// Problems minting a token or naming an algorithm. Verification failures are
/// [`ErrorKind`]s instead, because they go to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown JWT algorithm {0:?} (expected RS256, EdDSA or HS256)")]
    UnknownAlgorithm(String),
    #[error("signing a {alg} token failed: {error}")]
    Sign {
        alg: Algorithm,
        error: jsonwebtoken::errors::Error,
    },
}

/// Checks tokens against one key and algorithm.
#[derive(Clone, Debug)]
pub struct Verifier {
    alg: Algorithm,
    key: DecodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

impl Verifier {
    /// A verifier with no issuer or audience requirement and no leeway.
    pub fn new(alg: Algorithm, key: DecodingKey) -> Self {
        Verifier {
            alg,
            key,
            issuer: None,
            audience: None,
            leeway_s: 0,
        }
    }

    /// Require `iss` to equal `iss`.
    pub fn with_issuer(self, iss: impl Into<String>) -> Self {
        Verifier {
            issuer: Some(iss.into()),
            ..self
        }
    }

    /// Require `aud` to be, or (as an array) contain, `aud`.
    pub fn with_audience(self, aud: impl Into<String>) -> Self {
        Verifier {
            audience: Some(aud.into()),
            ..self
        }
    }

    /// Clock skew allowed on `exp` and `nbf`. SPEC lets servers allow up to 60 s;
    /// the reference server allows 0.
    pub fn with_leeway_s(self, s: u64) -> Self {
        Verifier { leeway_s: s, ..self }
    }

    /// The leeway in ms: a token is good until `exp` plus this.
    pub fn leeway_ms(&self) -> i64 {
        i64::try_from(self.leeway_s).unwrap_or(i64::MAX).saturating_mul(1000)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Checks signature, alg, claims and time against `now_ms`. Revocation is the caller's job.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<VerifiedToken, ErrorKind> {
        let checked = self.check(token)?;
        let leeway_ms = self.leeway_ms();
        if now_ms >= checked.token.exp_ms.saturating_add(leeway_ms) {
            return Err(ErrorKind::TokenExpired);
        }
        if let Some(nbf_ms) = checked.nbf_ms
            && now_ms < nbf_ms.saturating_sub(leeway_ms)
        {
            return Err(ErrorKind::TokenExpired);
        }
        Ok(checked.token)
    }

    /// Same, but an expired (or not-yet-valid) token is accepted: for revoking a token by value.
    pub fn verify_ignoring_time(&self, token: &str) -> Result<VerifiedToken, ErrorKind> {
        self.check(token).map(|checked| checked.token)
    }

    /// Everything but the clock.
    fn check(&self, token: &str) -> Result<Checked, ErrorKind> {
        let parts = Parts::parse(token)?;
        self.check_signature(&parts)?;
        self.check_claims(&parts.payload)
    }

    fn check_signature(&self, parts: &Parts) -> Result<(), ErrorKind> {
        // Comparing the header's `alg` with our own before touching the key is
        // what defeats `alg: none` and the HS256-with-the-RSA-public-key trick.
        if parts.header.get("alg").and_then(Value::as_str) != Some(self.alg.as_str()) {
            return Err(ErrorKind::TokenSignature);
        }
        // We implement no JWS extension, and RFC 7515 §4.1.11 says a token that
        // requires one must not be accepted.
        if parts.header.contains_key("crit") {
            return Err(ErrorKind::TokenSignature);
        }
        // jsonwebtoken's Ed25519 verifier slices the key to 32 bytes and would
        // panic on a shorter one.
        if self.alg == Algorithm::EdDsa && self.key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err(ErrorKind::TokenSignature);
        }
        // Any error here (key of the wrong family, unparsable key) also means the
        // token cannot be shown to be ours.
        match jsonwebtoken::crypto::verify(
            parts.signature,
            parts.signing_input.as_bytes(),
            &self.key,
            self.alg.jwt(),
        ) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(ErrorKind::TokenSignature),
        }
    }

    fn check_claims(&self, payload: &Map<String, Value>) -> Result<Checked, ErrorKind> {
        let eid = string_claim(payload, "eid")?;
        let device_id = string_claim(payload, "device_id")?;
        let jti = string_claim(payload, "jti")?;
        let iat_ms = date_claim(payload, "iat")?.ok_or(ErrorKind::TokenClaims)?;
        let exp_ms = date_claim(payload, "exp")?.ok_or(ErrorKind::TokenClaims)?;
        let nbf_ms = date_claim(payload, "nbf")?;
        if !valid_eid(&eid) || !valid_device_id(&device_id) || jti.is_empty() {
            return Err(ErrorKind::TokenClaims);
        }
        if let Some(issuer) = &self.issuer
            && payload.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(ErrorKind::TokenClaims);
        }
        if let Some(audience) = &self.audience {
            // RFC 7519 §4.1.3: a single string or an array of them.
            let matches = match payload.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience.as_str())),
                _ => false,
            };
            if !matches {
                return Err(ErrorKind::TokenClaims);
            }
        }
        Ok(Checked {
            token: VerifiedToken {
                eid,
                device_id,
                jti,
                iat_ms,
                exp_ms,
            },
            nbf_ms,
        })
    }
}

/// A token whose signature and claims are good, before the clock is consulted.
struct Checked {
    token: VerifiedToken,
    nbf_ms: Option<i64>,
}

/// The three segments of a compact JWS, header and payload decoded.
struct Parts<'a> {
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'a str,
    signature: &'a str,
    header: Map<String, Value>,
    payload: Map<String, Value>,
}

impl<'a> Parts<'a> {
    fn parse(token: &'a str) -> Result<Self, ErrorKind> {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(ErrorKind::TokenMalformed);
        };
        // Checked here so that a garbled signature is "malformed", as SPEC's
        // "not three base64url parts" says, rather than a failed verification.
        URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| ErrorKind::TokenMalformed)?;
        Ok(Parts {
            signing_input: &token[..header.len() + 1 + payload.len()],
            signature,
            header: json_object(header)?,
            payload: json_object(payload)?,
        })
    }
}

/// The `eid` claim of a token, unverified: only to route a connection to its user's shard, whose engine then
/// verifies the token. None for anything that does not parse.
pub fn unverified_eid(token: &str) -> Option<String> {
    let parts = Parts::parse(token).ok()?;
    string_claim(&parts.payload, "eid").ok()
}

fn json_object(segment: &str) -> Result<Map<String, Value>, ErrorKind> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| ErrorKind::TokenMalformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ErrorKind::TokenMalformed)
}

fn string_claim(payload: &Map<String, Value>, name: &str) -> Result<String, ErrorKind> {
    payload
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(ErrorKind::TokenClaims)
}

/// A NumericDate claim in ms: `Ok(None)` when absent; an error when it is not a
/// number or does not fit in i64 ms. RFC 7519 allows fractional seconds.
fn date_claim(payload: &Map<String, Value>, name: &str) -> Result<Option<i64>, ErrorKind> {
    let Some(value) = payload.get(name) else {
        return Ok(None);
    };
    let ms = match value.as_i64() {
        Some(s) => s.checked_mul(1000),
        None => value
            .as_f64()
            .map(|s| (s * 1000.0).floor())
            .filter(|ms| ms.is_finite() && ms.abs() < 9.0e18)
            .map(|ms| ms as i64),
    };
    ms.map(Some).ok_or(ErrorKind::TokenClaims)
}

/// Mints tokens with one key: for the reference server's TokenRefresh, the
/// development token command and tests.
#[derive(Clone, Debug)]
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    pub fn new(alg: Algorithm, key: EncodingKey) -> Self {
        Signer { alg, key }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` as they are: nothing is checked, so a test can mint a token
    /// a verifier must reject.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        self.mint_payload(claims)
    }

    /// Signs any JSON payload, e.g. one with a claim missing or of the wrong type.
    pub fn mint_json(&self, payload: &Value) -> Result<String, AuthError> {
        self.mint_payload(payload)
    }

    fn mint_payload(&self, payload: &impl Serialize) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(self.alg.jwt()), payload, &self.key)
            .map_err(|error| AuthError::Sign { alg: self.alg, error })
    }
}

/// Token from a WebSocket upgrade request, SPEC precedence: `Authorization: Bearer <jwt>`, then the `token` header
/// (raw jwt or `Bearer <jwt>`), then the `token` query parameter. Header names case-insensitive; returns None when
/// none is present or the value is empty.
///
/// An `Authorization` header with another scheme (e.g. Basic) carries no token
/// and does not stop the search. The query value is form-urlencoded-decoded, as
/// browsers' `URLSearchParams` encode it.
pub fn token_from_request<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    query: Option<&'a str>,
) -> Option<String> {
    let mut from_authorization = None;
    let mut from_token_header = None;
    for (name, value) in headers {
        if from_authorization.is_none() && name.trim().eq_ignore_ascii_case("authorization") {
            from_authorization = strip_bearer(value).and_then(non_empty);
        } else if from_token_header.is_none() && name.trim().eq_ignore_ascii_case("token") {
            from_token_header = non_empty(strip_bearer(value).unwrap_or(value));
        }
    }
    from_authorization
        .or(from_token_header)
        .or_else(|| query.and_then(token_from_query))
}

/// The credentials after a `Bearer` scheme (case-insensitive, RFC 7235), or None
/// for another scheme.
fn strip_bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let scheme = value.get(..6)?;
    let rest = &value[6..];
    let separated = rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_whitespace());
    (scheme.eq_ignore_ascii_case("bearer") && separated).then_some(rest)
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn token_from_query(query: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(name) == "token")
            .then(|| non_empty(&form_decode(value)))
            .flatten()
    })
}

/// application/x-www-form-urlencoded decoding; a `%` not followed by two hex
/// digits is kept as it is.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i] {
            b'%' => bytes
                .get(i + 1)
                .and_then(|&b| hex(b))
                .zip(bytes.get(i + 2).and_then(|&b| hex(b))),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// SPEC conventions: "local@domain", 1..=256 bytes, exactly one '@', both sides
/// non-empty, no whitespace or control characters.
pub fn valid_eid(eid: &str) -> bool {
    let one_at = matches!(eid.split_once('@'), Some((local, domain))
        if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    (1..=256).contains(&eid.len()) && one_at && printable(eid)
}

/// SPEC conventions: 1..=128 bytes, printable: no whitespace or control characters.
pub fn valid_device_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && printable(id)
}

fn printable(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const RS_PRIVATE: &str = include_str!("../../tests/fixtures/keys/rs256-test.pem");
    const RS_PUBLIC: &str = include_str!("../../tests/fixtures/keys/rs256-test.pub.pem");
    const RS_PKCS1_PRIVATE: &str = include_str!("../../tests/fixtures/keys/rs256-test.pkcs1.pem");
    const RS_PKCS1_PUBLIC: &str = include_str!("../../tests/fixtures/keys/rs256-test.pkcs1.pub.pem");
    const ED_PRIVATE: &str = include_str!("../../tests/fixtures/keys/eddsa-test.pem");
    const ED_PUBLIC: &str = include_str!("../../tests/fixtures/keys/eddsa-test.pub.pem");
    const HS_SECRET: &[u8] = b"a test secret, at least 32 bytes long";

    /// 2023-11-14T22:13:20Z: exp is an hour later, so "now" is well inside.
    const IAT: i64 = 1_700_000_000;
    const EXP: i64 = IAT + 3600;
    const NOW_MS: i64 = IAT * 1000 + 1000;

    fn pair(alg: Algorithm) -> (Signer, Verifier) {
        let (encoding, decoding) = match alg {
            Algorithm::Rs256 => (
                EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(RS_PUBLIC.as_bytes()).unwrap(),
            ),
            Algorithm::EdDsa => (
                EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).unwrap(),
            ),
            Algorithm::Hs256 => (EncodingKey::from_secret(HS_SECRET), DecodingKey::from_secret(HS_SECRET)),
        };
        (Signer::new(alg, encoding), Verifier::new(alg, decoding))
    }

    fn claims() -> Claims {
        Claims {
            eid: "alice@example.com".into(),
            device_id: "phone-1".into(),
            jti: "jti-1".into(),
            iat: IAT,
            exp: EXP,
            ..Claims::default()
        }
    }

    fn claims_json() -> Value {
        serde_json::to_value(claims()).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header, signed with `key` for `alg` (which need not match the header).
    fn forge(header: &Value, payload: &Value, key: &EncodingKey, alg: jsonwebtoken::Algorithm) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
        format!("{input}.{signature}")
    }

    fn hs_verifier() -> Verifier {
        pair(Algorithm::Hs256).1
    }

    fn hs_mint(payload: &Value) -> String {
        pair(Algorithm::Hs256).0.mint_json(payload).unwrap()
    }

    // SPEC: AUTH-1 (RS256), AUTH-2 (EdDSA, HS256)
    #[test]
    fn each_algorithm_round_trips() {
        for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
            let (signer, verifier) = pair(alg);
            assert_eq!((signer.algorithm(), verifier.algorithm()), (alg, alg));
            let token = signer.mint(&claims()).unwrap();
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
            assert_eq!(header["alg"], alg.as_str());
            let verified = verifier.verify(&token, NOW_MS).unwrap();
            assert_eq!(
                verified,
                VerifiedToken {
                    eid: "alice@example.com".into(),
                    device_id: "phone-1".into(),
                    jti: "jti-1".into(),
                    iat_ms: IAT * 1000,
                    exp_ms: EXP * 1000,
                },
                "{alg}"
            );
        }
    }

    #[test]
    fn rsa_pkcs1_keys_work_too() {
        let signer = Signer::new(
            Algorithm::Rs256,
            EncodingKey::from_rsa_pem(RS_PKCS1_PRIVATE.as_bytes()).unwrap(),
        );
        let verifier = Verifier::new(
            Algorithm::Rs256,
            DecodingKey::from_rsa_pem(RS_PKCS1_PUBLIC.as_bytes()).unwrap(),
        );
        let token = signer.mint(&claims()).unwrap();
        assert!(verifier.verify(&token, NOW_MS).is_ok());
        assert!(pair(Algorithm::Rs256).1.verify(&token, NOW_MS).is_ok());
    }

    #[test]
    fn malformed_tokens() {
        let verifier = hs_verifier();
        let good = hs_mint(&claims_json());
        let segments: Vec<&str> = good.split('.').collect();
        let not_json = b64(b"not json");
        let cases = [
            "".to_owned(),
            "garbage".to_owned(),
            format!("{}.{}", segments[0], segments[1]),
            format!("{good}.extra"),
            format!("!!!.{}.{}", segments[1], segments[2]),
            format!("{}.{}.@@", segments[0], segments[1]),
            format!("{}=.{}.{}", segments[0], segments[1], segments[2]),
            format!("{not_json}.{}.{}", segments[1], segments[2]),
            format!("{}.{not_json}.{}", segments[0], segments[2]),
            format!("{}.{}.{}", b64(b"[1,2]"), segments[1], segments[2]),
            format!("{}.{}.{}", segments[0], b64(b"\"a string\""), segments[2]),
            format!("{}.{}.{}", segments[0], b64(&[0xff, 0xfe]), segments[2]),
            format!(".{}.{}", segments[1], segments[2]),
        ];
        for token in cases {
            assert_eq!(
                verifier.verify(&token, NOW_MS),
                Err(ErrorKind::TokenMalformed),
                "{token:?}"
            );
        }
    }

    #[test]
    fn tampered_payload_fails_signature() {
        for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
            let (signer, verifier) = pair(alg);
            let token = signer.mint(&claims()).unwrap();
            let segments: Vec<&str> = token.split('.').collect();
            let mut evil = claims();
            evil.eid = "mallory@example.com".into();
            let payload = b64(serde_json::to_string(&evil).unwrap().as_bytes());
            let tampered = format!("{}.{payload}.{}", segments[0], segments[2]);
            assert_eq!(
                verifier.verify(&tampered, NOW_MS),
                Err(ErrorKind::TokenSignature),
                "{alg}"
            );
            let no_signature = format!("{}.{}.", segments[0], segments[1]);
            assert_eq!(
                verifier.verify(&no_signature, NOW_MS),
                Err(ErrorKind::TokenSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn wrong_key_fails_signature() {
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let other_signer = Signer::new(Algorithm::EdDsa, EncodingKey::from_ed_der(other.serialized_der()));
        let token = other_signer.mint(&claims()).unwrap();
        assert_eq!(
            pair(Algorithm::EdDsa).1.verify(&token, NOW_MS),
            Err(ErrorKind::TokenSignature)
        );

        let other_secret = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(b"another secret"));
        let token = other_secret.mint(&claims()).unwrap();
        assert_eq!(hs_verifier().verify(&token, NOW_MS), Err(ErrorKind::TokenSignature));
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(claims_json().to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
            assert_eq!(
                pair(alg).1.verify(&token, NOW_MS),
                Err(ErrorKind::TokenSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_rejected() {
        // The key-confusion attack: the attacker knows the public key and hopes
        // the server uses it as an HMAC secret.
        for public in [RS_PUBLIC, RS_PKCS1_PUBLIC] {
            let token = forge(
                &json!({"alg": "HS256", "typ": "JWT"}),
                &claims_json(),
                &EncodingKey::from_secret(public.as_bytes()),
                jsonwebtoken::Algorithm::HS256,
            );
            assert_eq!(
                pair(Algorithm::Rs256).1.verify(&token, NOW_MS),
                Err(ErrorKind::TokenSignature)
            );
        }
    }

    #[test]
    fn header_alg_must_match_exactly() {
        let key = EncodingKey::from_secret(HS_SECRET);
        let hs256 = jsonwebtoken::Algorithm::HS256;
        for header in [
            json!({"typ": "JWT"}),
            json!({"alg": "hs256"}),
            json!({"alg": "HS512"}),
            json!({"alg": 256}),
            json!({"alg": "HS256", "crit": ["exp"]}),
        ] {
            let token = forge(&header, &claims_json(), &key, hs256);
            assert_eq!(
                hs_verifier().verify(&token, NOW_MS),
                Err(ErrorKind::TokenSignature),
                "{header}"
            );
        }
        // Other header fields do not matter.
        let token = forge(
            &json!({"alg": "HS256", "typ": 7, "kid": "k1"}),
            &claims_json(),
            &key,
            hs256,
        );
        assert!(hs_verifier().verify(&token, NOW_MS).is_ok());
        // An RS256 token shown to an EdDSA verifier.
        let token = pair(Algorithm::Rs256).0.mint(&claims()).unwrap();
        assert_eq!(
            pair(Algorithm::EdDsa).1.verify(&token, NOW_MS),
            Err(ErrorKind::TokenSignature)
        );
    }

    #[test]
    fn key_of_the_wrong_kind_fails_without_panicking() {
        let token = pair(Algorithm::EdDsa).0.mint(&claims()).unwrap();
        for key in [
            DecodingKey::from_ed_der(&[1, 2, 3]),
            DecodingKey::from_secret(HS_SECRET),
        ] {
            assert_eq!(
                Verifier::new(Algorithm::EdDsa, key).verify(&token, NOW_MS),
                Err(ErrorKind::TokenSignature)
            );
        }
        let token = pair(Algorithm::Rs256).0.mint(&claims()).unwrap();
        let verifier = Verifier::new(Algorithm::Rs256, DecodingKey::from_rsa_der(b"not a key"));
        assert_eq!(verifier.verify(&token, NOW_MS), Err(ErrorKind::TokenSignature));
    }

    #[test]
    fn each_required_claim_missing_is_claims() {
        for name in ["eid", "device_id", "jti", "iat", "exp"] {
            let mut payload = claims_json();
            payload.as_object_mut().unwrap().remove(name);
            assert_eq!(
                hs_verifier().verify(&hs_mint(&payload), NOW_MS),
                Err(ErrorKind::TokenClaims),
                "{name}"
            );
        }
    }

    #[test]
    fn ill_typed_or_ill_formed_claims() {
        let cases = [
            ("eid", json!(42)),
            ("eid", json!("no-at-sign")),
            ("eid", json!("a@b@c")),
            ("eid", json!("@example.com")),
            ("eid", json!("alice@")),
            ("eid", json!("al ice@example.com")),
            ("device_id", json!(null)),
            ("device_id", json!("")),
            ("device_id", json!("phone 1")),
            ("device_id", json!("x".repeat(129))),
            ("jti", json!("")),
            ("jti", json!(["a"])),
            ("iat", json!("1700000000")),
            ("exp", json!("1700003600")),
            ("exp", json!(true)),
            ("exp", json!(i64::MAX)),
            ("exp", json!(u64::MAX)),
            ("exp", json!(1e300)),
            ("nbf", json!("soon")),
        ];
        for (name, value) in cases {
            let mut payload = claims_json();
            payload[name] = value.clone();
            assert_eq!(
                hs_verifier().verify(&hs_mint(&payload), NOW_MS),
                Err(ErrorKind::TokenClaims),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let mut payload = claims_json();
        payload["exp"] = json!(EXP as f64 + 0.5);
        let verified = hs_verifier().verify(&hs_mint(&payload), NOW_MS).unwrap();
        assert_eq!(verified.exp_ms, EXP * 1000 + 500);
    }

    #[test]
    fn issuer_and_audience_checked_only_when_configured() {
        let verifier = hs_verifier().with_issuer("bimip-ref").with_audience("bimip");
        let with = |iss: Value, aud: Value| {
            let mut payload = claims_json();
            payload["iss"] = iss;
            payload["aud"] = aud;
            hs_mint(&payload)
        };
        assert!(
            verifier
                .verify(&with(json!("bimip-ref"), json!("bimip")), NOW_MS)
                .is_ok()
        );
        assert!(
            verifier
                .verify(&with(json!("bimip-ref"), json!(["x", "bimip"])), NOW_MS)
                .is_ok()
        );
        for token in [
            with(json!("other"), json!("bimip")),
            with(json!(null), json!("bimip")),
            with(json!("bimip-ref"), json!("other")),
            with(json!("bimip-ref"), json!(["x", "y"])),
            with(json!("bimip-ref"), json!(null)),
            hs_mint(&claims_json()),
        ] {
            assert_eq!(verifier.verify(&token, NOW_MS), Err(ErrorKind::TokenClaims), "{token}");
        }
        // Not configured: whatever is there is ignored.
        assert!(
            hs_verifier()
                .verify(&with(json!(5), json!({"odd": true})), NOW_MS)
                .is_ok()
        );
    }

    // SPEC: AUTH-8. Each token below fails several checks; only the first in
    // the order missing, malformed, signature, claims, expiry is reported
    // (revocation, the last, is the engine's: see src/core/tests).
    #[test]
    fn only_the_first_failed_check_is_reported() {
        let verifier = hs_verifier();
        let expired_without_eid = json!({"device_id": "d", "jti": "j", "iat": IAT, "exp": IAT + 1});
        let forged = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(b"not the server's secret"));
        let cases = [
            // Malformed (two segments) beats everything after it.
            ("e30.e30".to_string(), ErrorKind::TokenMalformed),
            // A bad signature beats missing claims and expiry.
            (
                forged.mint_json(&expired_without_eid).unwrap(),
                ErrorKind::TokenSignature,
            ),
            // Missing claims beat expiry.
            (hs_mint(&expired_without_eid), ErrorKind::TokenClaims),
            // With the claims complete, expiry is reported.
            (
                hs_mint(&json!({"eid": "a@b.c", "device_id": "d", "jti": "j", "iat": IAT, "exp": IAT + 1})),
                ErrorKind::TokenExpired,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token, NOW_MS), Err(expected), "{token}");
        }
    }

    #[test]
    fn expiry_boundaries() {
        let verifier = hs_verifier();
        let token = hs_mint(&claims_json());
        assert!(verifier.verify(&token, EXP * 1000 - 1).is_ok());
        assert_eq!(verifier.verify(&token, EXP * 1000), Err(ErrorKind::TokenExpired));
        assert_eq!(
            verifier.verify(&token, EXP * 1000 + 3_600_000),
            Err(ErrorKind::TokenExpired)
        );
        assert_eq!(verifier.verify(&token, i64::MAX), Err(ErrorKind::TokenExpired));
    }

    #[test]
    fn not_before_boundaries() {
        let nbf = IAT + 60;
        let mut payload = claims_json();
        payload["nbf"] = json!(nbf);
        let token = hs_mint(&payload);
        let verifier = hs_verifier();
        assert_eq!(verifier.verify(&token, nbf * 1000 - 1), Err(ErrorKind::TokenExpired));
        assert_eq!(verifier.verify(&token, i64::MIN), Err(ErrorKind::TokenExpired));
        assert!(verifier.verify(&token, nbf * 1000).is_ok());
    }

    #[test]
    fn leeway_widens_both_ends() {
        let mut payload = claims_json();
        payload["nbf"] = json!(IAT);
        let token = hs_mint(&payload);
        let verifier = hs_verifier().with_leeway_s(5);
        assert!(verifier.verify(&token, EXP * 1000 + 4999).is_ok());
        assert_eq!(verifier.verify(&token, EXP * 1000 + 5000), Err(ErrorKind::TokenExpired));
        assert!(verifier.verify(&token, IAT * 1000 - 5000).is_ok());
        assert_eq!(verifier.verify(&token, IAT * 1000 - 5001), Err(ErrorKind::TokenExpired));
        // A huge leeway saturates instead of overflowing.
        assert!(
            hs_verifier()
                .with_leeway_s(u64::MAX)
                .verify(&token, i64::MAX - 1)
                .is_ok()
        );
    }

    #[test]
    fn verify_ignoring_time_skips_only_the_clock() {
        let verifier = hs_verifier();
        let mut payload = claims_json();
        payload["nbf"] = json!(EXP);
        let token = hs_mint(&payload);
        assert_eq!(verifier.verify(&token, EXP * 1000 + 1), Err(ErrorKind::TokenExpired));
        assert_eq!(verifier.verify(&token, IAT * 1000), Err(ErrorKind::TokenExpired));
        assert_eq!(verifier.verify_ignoring_time(&token).unwrap().jti, "jti-1");

        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(verifier.verify_ignoring_time(&tampered), Err(ErrorKind::TokenSignature));
        let wrong_key = Signer::new(Algorithm::Hs256, EncodingKey::from_secret(b"other"))
            .mint(&claims())
            .unwrap();
        assert_eq!(
            verifier.verify_ignoring_time(&wrong_key),
            Err(ErrorKind::TokenSignature)
        );
        payload["eid"] = json!("bad");
        assert_eq!(
            verifier.verify_ignoring_time(&hs_mint(&payload)),
            Err(ErrorKind::TokenClaims)
        );
    }

    #[test]
    fn algorithm_names() {
        for (text, alg) in [
            ("RS256", Algorithm::Rs256),
            ("rs256", Algorithm::Rs256),
            ("EdDSA", Algorithm::EdDsa),
            ("EDDSA", Algorithm::EdDsa),
            ("hs256", Algorithm::Hs256),
        ] {
            assert_eq!(text.parse::<Algorithm>().unwrap(), alg);
        }
        assert_eq!(Algorithm::EdDsa.to_string(), "EdDSA");
        assert!(matches!("none".parse::<Algorithm>(), Err(AuthError::UnknownAlgorithm(name)) if name == "none"));
        assert!("ES256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn claims_serialize_without_absent_options() {
        let text = serde_json::to_string(&claims()).unwrap();
        assert_eq!(
            text,
            r#"{"eid":"alice@example.com","device_id":"phone-1","jti":"jti-1","iat":1700000000,"exp":1700003600}"#
        );
        let back: Claims = serde_json::from_str(&text).unwrap();
        assert_eq!(back, claims());
    }

    #[test]
    fn token_from_request_precedence() {
        let query = Some("token=from-query");
        let all = [("Authorization", "Bearer from-auth"), ("token", "from-header")];
        assert_eq!(token_from_request(all, query).as_deref(), Some("from-auth"));
        let reversed = [("token", "from-header"), ("Authorization", "Bearer from-auth")];
        assert_eq!(token_from_request(reversed, query).as_deref(), Some("from-auth"));
        assert_eq!(
            token_from_request([("token", "from-header")], query).as_deref(),
            Some("from-header")
        );
        assert_eq!(token_from_request([], query).as_deref(), Some("from-query"));
        assert_eq!(token_from_request([("Host", "example.com")], None), None);
    }

    #[test]
    fn token_from_request_forms() {
        let one = |name: &'static str, value: &'static str| token_from_request([(name, value)], None);
        assert_eq!(one("authorization", "Bearer abc").as_deref(), Some("abc"));
        assert_eq!(one("AUTHORIZATION", "bearer   abc ").as_deref(), Some("abc"));
        assert_eq!(one("Token", "abc").as_deref(), Some("abc"));
        assert_eq!(one("TOKEN", "Bearer abc").as_deref(), Some("abc"));
        assert_eq!(one("token", " abc ").as_deref(), Some("abc"));
        // Not a Bearer credential: nothing, and the token header is not the
        // place for other schemes either.
        assert_eq!(one("Authorization", "Basic dXNlcjpwYXNz"), None);
        assert_eq!(one("Authorization", "Bearerabc"), None);
        assert_eq!(
            token_from_request([("Authorization", "Basic x"), ("token", "abc")], None).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn token_from_request_ignores_empty_values() {
        for (name, value) in [
            ("Authorization", ""),
            ("Authorization", "Bearer"),
            ("Authorization", "Bearer   "),
        ] {
            assert_eq!(
                token_from_request([(name, value)], Some("token=q")).as_deref(),
                Some("q"),
                "{value:?}"
            );
        }
        for value in ["", "  ", "Bearer", "Bearer "] {
            assert_eq!(
                token_from_request([("token", value)], Some("token=q")).as_deref(),
                Some("q"),
                "{value:?}"
            );
        }
        assert_eq!(token_from_request([], Some("token=")), None);
        assert_eq!(
            token_from_request([], Some("token=&token=second")).as_deref(),
            Some("second")
        );
        assert_eq!(token_from_request([], Some("token")), None);
        assert_eq!(token_from_request([], Some("")), None);
    }

    #[test]
    fn token_from_query_forms() {
        let q = |query: &'static str| token_from_request([], Some(query));
        assert_eq!(q("a=1&token=x").as_deref(), Some("x"));
        assert_eq!(q("?token=x&b=2").as_deref(), Some("x"));
        assert_eq!(q("atoken=no&token=yes").as_deref(), Some("yes"));
        assert_eq!(q("token=a%2Eb%2ec").as_deref(), Some("a.b.c"));
        assert_eq!(q("tok%65n=x").as_deref(), Some("x"));
        assert_eq!(q("token=a+b").as_deref(), Some("a b"));
        assert_eq!(q("token=100%").as_deref(), Some("100%"));
        assert_eq!(q("token=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(q("token=%C3%A9").as_deref(), Some("é"));
        assert_eq!(q("other=x"), None);
    }

    #[test]
    fn eid_syntax() {
        let long_local = "a".repeat(256 - "@b".len());
        for good in [
            "a@b",
            "alice@example.com",
            "élise@exemple.fr",
            &format!("{long_local}@b"),
        ] {
            assert!(valid_eid(good), "{good}");
        }
        let too_long = format!("{long_local}x@b");
        for bad in [
            "",
            "@",
            "a@",
            "@b",
            "ab",
            "a@b@c",
            "a b@c",
            "a@b\n",
            "a\u{7}@b",
            "a@b\u{a0}",
            &too_long,
        ] {
            assert!(!valid_eid(bad), "{bad:?}");
        }
    }

    #[test]
    fn device_id_syntax() {
        for good in ["d", "phone-1", "ü", &"x".repeat(128)] {
            assert!(valid_device_id(good), "{good}");
        }
        for bad in ["", " ", "a b", "a\tb", "a\u{0}", &"x".repeat(129)] {
            assert!(!valid_device_id(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_any_string(token in any::<String>(), now in any::<i64>()) {
            for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
                let _ = pair(alg).1.verify(&token, now);
            }
        }

        #[test]
        fn verify_never_panics_on_three_segments(
            parts in prop::array::uniform3("[A-Za-z0-9_-]{0,400}"),
            now in any::<i64>(),
        ) {
            let token = parts.join(".");
            for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
                let _ = pair(alg).1.verify(&token, now);
            }
        }

        #[test]
        fn verify_never_panics_on_json_segments(
            alg in prop::sample::select(vec!["RS256", "EdDSA", "HS256", "none"]),
            payload in prop::collection::btree_map(
                prop::sample::select(vec!["eid", "device_id", "jti", "iat", "exp", "nbf", "iss", "aud"]),
                prop_oneof![
                    any::<i64>().prop_map(Value::from),
                    any::<f64>().prop_map(Value::from),
                    any::<u64>().prop_map(Value::from),
                    ".{0,20}".prop_map(Value::from),
                    Just(Value::Null),
                ],
                0..8,
            ),
            signature in prop::collection::vec(any::<u8>(), 0..300),
            now in any::<i64>(),
        ) {
            let token = format!(
                "{}.{}.{}",
                b64(json!({"alg": alg}).to_string().as_bytes()),
                b64(serde_json::to_string(&payload).unwrap().as_bytes()),
                b64(&signature),
            );
            for alg in [Algorithm::Rs256, Algorithm::EdDsa, Algorithm::Hs256] {
                let verifier = pair(alg).1.with_issuer("i").with_audience("a");
                prop_assert_ne!(verifier.verify(&token, now), Err(ErrorKind::TokenMalformed));
            }
        }
    }
}

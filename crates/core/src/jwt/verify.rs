//! One JWT against one rule: the compact form decoded, the issuer, time window and audiences
//! checked, then the signature verified with `ring` against the rule's keys (RS256/384/512,
//! PS256/384/512, ES256/384). Every step is bounded and refuses rather than guesses: a token
//! with `alg: none`, a key whose type does not fit the algorithm or an unparsable part fails.
//!
//! The order follows Envoy's jwt_authn (issuer, time, audiences, key, signature), so a client
//! sees the same message for the same token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::jwks::{Curve, Jwk, KeyMaterial};
use super::{JwtError, JwtRule, CLOCK_SKEW_SECS};

/// A token split and its header and payload decoded, its signature not yet checked.
pub(crate) struct Decoded<'t> {
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
    pub(crate) payload: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    signed: &'t str,
    signature: Vec<u8>,
}

impl Decoded<'_> {
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }
}

fn b64(part: &str, bad: JwtError) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| bad)
}

/// Splits and decodes a compact JWS; no key is needed yet.
pub(crate) fn decode(token: &str) -> Result<Decoded<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::BadFormat);
    };
    let header: Value = serde_json::from_slice(&b64(h, JwtError::HeaderBase64)?).map_err(|_| JwtError::HeaderJson)?;
    let payload: Value = serde_json::from_slice(&b64(p, JwtError::PayloadBase64)?).map_err(|_| JwtError::PayloadJson)?;
    let signature = b64(s, JwtError::SignatureBase64)?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(JwtError::HeaderAlg)?.to_string();
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::HeaderJson),
    };
    let Value::Object(payload) = payload else { return Err(JwtError::PayloadJson) };
    let signed = &token[..h.len() + 1 + p.len()];
    Ok(Decoded { alg, kid, payload, signed, signature })
}

/// Checks a decoded token whose issuer is `rule`'s, at unix time `now`.
pub(crate) fn check(d: &Decoded<'_>, rule: &JwtRule, now: u64) -> Result<(), JwtError> {
    time_window(&d.payload, now)?;
    audiences(&d.payload, &rule.audiences)?;
    let alg = Alg::parse(&d.alg).ok_or(JwtError::UnsupportedAlg)?;
    // Keys that could not be had (see the object's note) fail every token, as istiod's
    // placeholder key does when a JWKS cannot be fetched.
    if rule.keys.is_empty() {
        return Err(JwtError::Verification);
    }
    let fitting: Vec<&Jwk> = rule.keys.iter().filter(|k| k.fits(d.kid.as_deref(), &d.alg, alg)).collect();
    if fitting.is_empty() {
        return Err(JwtError::NoMatchingKey);
    }
    match fitting.iter().any(|k| alg.verify(&k.material, d.signed.as_bytes(), &d.signature)) {
        true => Ok(()),
        false => Err(JwtError::Verification),
    }
}

/// `exp` and `nbf` must be numbers when present (a string would be a way around the check).
fn time_window(payload: &Map<String, Value>, now: u64) -> Result<(), JwtError> {
    let secs = |k: &str| -> Result<Option<f64>, JwtError> {
        match payload.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(JwtError::PayloadJson),
        }
    };
    let now = now as f64;
    let skew = CLOCK_SKEW_SECS as f64;
    if secs("nbf")?.is_some_and(|nbf| now + skew < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if secs("exp")?.is_some_and(|exp| now > exp + skew) {
        return Err(JwtError::Expired);
    }
    Ok(())
}

/// With `audiences` configured, the token's `aud` (a string or a list) must name one of them.
fn audiences(payload: &Map<String, Value>, allowed: &[String]) -> Result<(), JwtError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let named = |a: &str| allowed.iter().any(|x| x == a);
    let ok = match payload.get("aud") {
        Some(Value::String(a)) => named(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
        _ => false,
    };
    ok.then_some(()).ok_or(JwtError::AudienceNotAllowed)
}

/// The signature algorithms ferry verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs(u16),
    Ps(u16),
    Es256,
    Es384,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::Rs(256),
            "RS384" => Alg::Rs(384),
            "RS512" => Alg::Rs(512),
            "PS256" => Alg::Ps(256),
            "PS384" => Alg::Ps(384),
            "PS512" => Alg::Ps(512),
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            _ => return None,
        })
    }

    /// Whether a key of this material can verify this algorithm.
    pub(crate) fn fits(self, m: &KeyMaterial) -> bool {
        matches!(
            (self, m),
            (Alg::Rs(_) | Alg::Ps(_), KeyMaterial::Rsa { .. })
                | (Alg::Es256, KeyMaterial::Ec { curve: Curve::P256, .. })
                | (Alg::Es384, KeyMaterial::Ec { curve: Curve::P384, .. })
        )
    }

    fn verify(self, m: &KeyMaterial, msg: &[u8], sig: &[u8]) -> bool {
        match (self, m) {
            (Alg::Rs(_) | Alg::Ps(_), KeyMaterial::Rsa { n, e }) => {
                let params: &signature::RsaParameters = match self {
                    Alg::Rs(256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs(384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs(_) => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps(256) => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps(384) => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, msg, sig).is_ok()
            }
            (Alg::Es256, KeyMaterial::Ec { curve: Curve::P256, point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(msg, sig).is_ok()
            }
            (Alg::Es384, KeyMaterial::Ec { curve: Curve::P384, point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(msg, sig).is_ok()
            }
            _ => false,
        }
    }
}

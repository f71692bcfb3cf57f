//! A JSON Web Key Set (RFC 7517) into the public keys ferry can verify with: RSA (`n`, `e`)
//! and EC on P-256 / P-384 (`x`, `y`). Keys of other types (symmetric `oct`, `OKP`) and keys
//! marked for encryption (`use: enc`) are skipped, as Envoy skips what it cannot use; a set
//! that is not JSON, too large or too long is refused as a whole.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use super::verify::Alg;

/// Largest JWKS document read (inline or from a file).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys in one set.
pub const MAX_KEYS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyMaterial {
    /// Big-endian modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y`.
    Ec { curve: Curve, point: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    pub(crate) material: KeyMaterial,
}

impl Jwk {
    /// Whether this key may verify a token with this `kid` and `alg`: a key naming a kid or
    /// an alg must agree with the token; one naming neither is tried.
    pub(crate) fn fits(&self, kid: Option<&str>, alg_name: &str, alg: Alg) -> bool {
        let kid_ok = match (&self.kid, kid) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        };
        kid_ok && self.alg.as_deref().is_none_or(|a| a == alg_name) && alg.fits(&self.material)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JwksError {
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS is not a JSON object with a \"keys\" list")]
    NotASet,
    #[error("the JWKS has more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("the JWKS has no RSA or EC (P-256, P-384) signing key ferry can use")]
    NoUsableKey,
}

/// Parses a JWKS; the keys ferry can verify with, at least one.
pub(crate) fn parse(text: &str) -> Result<Vec<Jwk>, JwksError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let doc: Value = serde_json::from_str(text).map_err(|_| JwksError::NotASet)?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or(JwksError::NotASet)?;
    if keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let usable: Vec<Jwk> = keys.iter().filter_map(key).collect();
    match usable.is_empty() {
        true => Err(JwksError::NoUsableKey),
        false => Ok(usable),
    }
}

fn key(v: &Value) -> Option<Jwk> {
    let text = |k: &str| v.get(k).and_then(Value::as_str);
    let bytes = |k: &str| text(k).and_then(|s| URL_SAFE_NO_PAD.decode(s).ok()).filter(|b| !b.is_empty());
    if text("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let material = match text("kty")? {
        "RSA" => KeyMaterial::Rsa { n: bytes("n")?, e: bytes("e")? },
        "EC" => {
            let (curve, len) = match text("crv")? {
                "P-256" => (Curve::P256, 32),
                "P-384" => (Curve::P384, 48),
                _ => return None,
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec { curve, point }
        }
        _ => return None,
    };
    Some(Jwk { kid: text("kid").map(str::to_string), alg: text("alg").map(str::to_string), material })
}

//! A JWT issuer for the tests: an ES256 key generated per test, its JWKS and signed tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

pub struct Issuer {
    key: EcdsaKeyPair,
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

impl Issuer {
    pub fn new() -> Issuer {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Issuer { key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng).unwrap() }
    }

    /// The set holding this issuer's key (kid `k1`), as a JWKS document.
    pub fn jwks(&self) -> String {
        let p = self.key.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "x": b64(&p[1..33]), "y": b64(&p[33..65])}]}).to_string()
    }

    /// A signed ES256 token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let head = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}).to_string();
        let signed = format!("{}.{}", b64(head.as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.key.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(sig.as_ref()))
    }

    /// A token for `iss`/`sub` expiring `exp_in` seconds from now (negative: in the past).
    pub fn token(&self, iss: &str, sub: &str, exp_in: i64) -> String {
        self.sign(&json!({"iss": iss, "sub": sub, "iat": now(), "exp": now() + exp_in}))
    }
}

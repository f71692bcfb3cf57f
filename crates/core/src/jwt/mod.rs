//! Request authentication at a waypoint: Istio `RequestAuthentication` (JWT) bound by
//! `targetRefs`, applied to each HTTP request before authorization.
//!
//! Istio's semantics: a request carrying no token passes with no request principal (an
//! AuthorizationPolicy decides); a request carrying a token that does not verify (bad
//! signature, expired, unknown issuer, audience not allowed) is refused with `401` and
//! Envoy's jwt_authn message; a verified token gives the request principal `<iss>/<sub>` and
//! its claims to [`crate::l7authz`]. Every token found in the rules' locations must verify
//! (one bad token among good ones is refused), and the first one found is the principal.
//!
//! Bounds: a token is at most [`MAX_TOKEN_BYTES`], a JWKS at most [`jwks::MAX_JWKS_BYTES`]
//! with [`jwks::MAX_KEYS`] keys, at most [`MAX_TOKENS`] tokens per request are looked at.

mod compile;
pub mod jwks;
mod verify;

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::Value;

pub use crate::l7authz::Claims;
use crate::l7authz::{Scope, Target};

pub use compile::{compile, compile_all, JwksReader};

/// Longest token looked at; a longer one is refused.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most tokens one request may carry in the configured locations.
pub const MAX_TOKENS: usize = 4;
/// Envoy's default allowance for clocks that disagree (`exp`, `nbf`).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// A compiled RequestAuthentication.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestAuthn {
    pub name: String,
    pub namespace: String,
    pub targets: Vec<Target>,
    #[serde(skip)]
    rules: Vec<JwtRule>,
    /// What the object says that ferry does not do (its tokens then fail), for operators.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Set when the spec could not be read: every request it targets is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

impl RequestAuthn {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn applies(&self, scope: &Scope<'_>) -> bool {
        crate::l7authz::targets_apply(&self.targets, &self.namespace, scope)
    }
}

/// One `jwtRules` entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JwtRule {
    issuer: String,
    audiences: Vec<String>,
    /// Empty when the keys could not be had: every token of this issuer fails.
    keys: Vec<jwks::Jwk>,
    locations: Vec<Location>,
    forward_original_token: bool,
    payload_header: Option<String>,
    claim_headers: Vec<(String, String)>,
}

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Location {
    /// A header (name lower-case) whose value starts with `prefix`.
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// Why a request's token was refused: Envoy jwt_authn's messages, the body of the `401`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderAlg,
    #[error("Jwt header [alg] is not supported")]
    UnsupportedAlg,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadJson,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBase64,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt is expired")]
    Expired,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    Verification,
    /// ferry's own bound (Envoy has none): the message says which.
    #[error("Jwt is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("Jwt verification fails: more than {MAX_TOKENS} tokens in one request")]
    TooMany,
    /// A RequestAuthentication for this request could not be read (see its note).
    #[error("Jwt verification fails")]
    Broken(String),
}

/// What the waypoint knows about one request, for authentication.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Header names lower-case, each value separately.
    pub headers: &'a [(&'a str, &'a str)],
    /// The raw query, without `?` (empty when none).
    pub query: &'a str,
}

/// The result of authenticating a request: its claims (none without a token) and what to
/// change in the request before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub claims: Option<Claims>,
    /// Headers to remove: the tokens' (unless `forwardOriginalToken`) and every header a rule
    /// writes claims to, so a client can never supply them itself.
    pub remove: Vec<String>,
    /// Headers to set (`outputPayloadToHeader`, `outputClaimToHeaders`).
    pub set: Vec<(String, String)>,
}

/// Authenticates `req` against every RequestAuthentication in `set` that applies to `scope`,
/// at unix time `now`.
pub fn authenticate<'s>(
    set: impl IntoIterator<Item = &'s RequestAuthn>,
    scope: &Scope<'_>,
    req: &Request<'_>,
    now: u64,
) -> Result<Outcome, JwtError> {
    let applying: Vec<&RequestAuthn> = set.into_iter().filter(|ra| ra.applies(scope)).collect();
    if let Some(why) = applying.iter().find_map(|ra| ra.broken.clone()) {
        return Err(JwtError::Broken(why));
    }
    let rules: Vec<&JwtRule> = applying.iter().flat_map(|ra| ra.rules.iter()).collect();
    let mut out = Outcome::default();
    for r in &rules {
        out.remove.extend(r.payload_header.iter().cloned());
        out.remove.extend(r.claim_headers.iter().map(|(h, _)| h.clone()));
    }
    let locations: BTreeSet<&Location> = rules.iter().flat_map(|r| r.locations.iter()).collect();
    let mut found = Vec::new();
    for loc in locations {
        found.extend(extract(loc, req).into_iter().map(|t| (loc, t)));
        if found.len() > MAX_TOKENS {
            return Err(JwtError::TooMany);
        }
    }
    for (loc, token) in found {
        let (rule, claims) = verify_one(&rules, loc, token, now)?;
        if let (Location::Header { name, .. }, false) = (loc, rule.forward_original_token) {
            out.remove.push(name.clone());
        }
        outputs(rule, &claims, token, &mut out.set);
        out.claims.get_or_insert(claims);
    }
    out.remove.sort();
    out.remove.dedup();
    Ok(out)
}

/// The token at one location: by issuer, the rules reading it there are tried in turn.
fn verify_one<'r>(rules: &[&'r JwtRule], loc: &Location, token: &str, now: u64) -> Result<(&'r JwtRule, Claims), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    let d = verify::decode(token)?;
    let iss = d.issuer().ok_or(JwtError::UnknownIssuer)?;
    let candidates = rules.iter().filter(|r| r.issuer == iss && r.locations.contains(loc));
    let mut first_error = JwtError::UnknownIssuer;
    for (i, r) in candidates.enumerate() {
        match verify::check(&d, r, now) {
            Ok(()) => return Ok((r, Claims::from_payload(d.payload.clone()))),
            Err(e) if i == 0 => first_error = e,
            Err(_) => {}
        }
    }
    Err(first_error)
}

/// `outputPayloadToHeader` (the payload, base64url) and `outputClaimToHeaders` (string,
/// number and boolean claims; others are not written).
fn outputs(rule: &JwtRule, claims: &Claims, token: &str, set: &mut Vec<(String, String)>) {
    if let Some(h) = &rule.payload_header {
        let payload = token.split('.').nth(1).unwrap_or_default();
        let canonical = URL_SAFE_NO_PAD.decode(payload).map(|b| URL_SAFE_NO_PAD.encode(b)).unwrap_or_default();
        set.push((h.clone(), canonical));
    }
    for (header, claim) in &rule.claim_headers {
        let value = match claims.top_level(claim) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        // A value that cannot be a header value is not written (never a way to split headers).
        if value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            set.push((header.clone(), value));
        }
    }
}

/// Every token at `loc`; a header value without the prefix holds none.
fn extract<'a>(loc: &Location, req: &Request<'a>) -> Vec<&'a str> {
    match loc {
        Location::Header { name, prefix } => req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| strip_prefix_ignore_case(v.trim(), prefix))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect(),
        Location::Param(p) => {
            req.query.split('&').filter_map(|kv| kv.split_once('=')).filter(|(k, v)| k == p && !v.is_empty()).map(|(_, v)| v).collect()
        }
        Location::Cookie(c) => req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, v)| k == c && !v.is_empty())
            .map(|(_, v)| v)
            .collect(),
    }
}

/// An auth scheme is case-insensitive (RFC 9110 §11.1): `bearer x` is a Bearer token.
fn strip_prefix_ignore_case<'v>(v: &'v str, prefix: &str) -> Option<&'v str> {
    let head = v.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &v[prefix.len()..])
}

#[cfg(test)]
mod tests;

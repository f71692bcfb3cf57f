//! A request's JWT (Authorization header, query and cookie) against a RequestAuthentication,
//! and the same bytes as that object's inline JWKS: the waypoint's token and key parsers.
#![no_main]

use ferry_core::jwt::{authenticate, compile, Request};
use ferry_core::l7authz::Scope;

const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;

fn object(jwks: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "RequestAuthentication", "metadata": {"name": "f", "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                 "jwtRules": [{"issuer": "https://issuer.example", "jwks": jwks, "fromCookies": ["t"]},
                              {"issuer": "https://other.example", "jwks": JWKS, "audiences": ["a"]}]},
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let read = |_: &str| -> Result<String, String> { Err("no files".into()) };
    let scope = Scope { namespace: "shop", gateway: "waypoint", service: None };
    let set: Vec<_> = [compile(&object(JWKS), &read), compile(&object(text), &read)].into_iter().flatten().collect();
    let (header, query) = text.split_once('\n').unwrap_or((text, ""));
    let bearer = format!("Bearer {header}");
    let cookie = format!("t={header}");
    let headers = [("authorization", bearer.as_str()), ("cookie", cookie.as_str())];
    let _ = authenticate(&set, &scope, &Request { headers: &headers, query }, 1_800_000_000);
});

//! RequestAuthentication at a waypoint, per Istio's and Envoy's documented behaviour: each row
//! is a request and what its client sees (passes with a principal, passes without one, or a
//! 401 with Envoy's message). Keys are generated here (EC) or read from a fixture (RSA).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::json;

use super::*;
use crate::k8s::manifests::parse_documents;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_800_000_000;
const WAYPOINT: Scope<'static> = Scope { namespace: "shop", gateway: "waypoint", service: Some(("shop", "reviews")) };

pub(crate) enum Signer {
    Ec(EcdsaKeyPair, &'static str),
    Rsa(RsaKeyPair),
}

impl Signer {
    pub(crate) fn es256() -> Signer {
        Signer::ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
    }

    fn es384() -> Signer {
        Signer::ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
    }

    fn ec(alg: &'static signature::EcdsaSigningAlgorithm, crv: &'static str) -> Signer {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::Ec(EcdsaKeyPair::from_pkcs8(alg, pk8.as_ref(), &rng).unwrap(), crv)
    }

    fn rsa() -> Signer {
        // ring cannot generate RSA keys: a fixture (`openssl genrsa 2048`, PKCS#1 DER, base64).
        let der = STANDARD.decode(include_str!("testdata/rsa2048.pkcs1.b64").trim()).unwrap();
        Signer::Rsa(RsaKeyPair::from_der(&der).unwrap())
    }

    pub(crate) fn jwk(&self, kid: &str) -> serde_json::Value {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        match self {
            Signer::Ec(k, crv) => {
                let point = k.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                json!({"kty": "EC", "crv": crv, "kid": kid, "x": b(&point[1..1 + half]), "y": b(&point[1 + half..])})
            }
            Signer::Rsa(k) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "kid": kid, "n": b(&c.n), "e": b(&c.e)})
            }
        }
    }

    /// A compact JWS of `payload` with this header `alg` and `kid`.
    pub(crate) fn token(&self, alg: &str, kid: &str, payload: &serde_json::Value) -> String {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let head = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let signed = format!("{}.{}", b(head.to_string().as_bytes()), b(payload.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Ec(k, _) => k.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(k) => {
                let pad: &dyn signature::RsaEncoding = match alg {
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(pad, &rng, signed.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{signed}.{}", b(&sig))
    }
}

fn ra(name: &str, rules: &serde_json::Value) -> String {
    let gw = json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]);
    let obj = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": "shop"}, "spec": {"targetRefs": gw, "jwtRules": rules}});
    format!("{obj}\n---\n")
}

fn compiled(yaml: &str) -> Vec<RequestAuthn> {
    let state = parse_documents(yaml, "test").unwrap();
    compile_all(state.other.values(), &|p| match p {
        "/keys/jwks.json" => Ok(r#"{"keys": []}"#.into()),
        other => Err(format!("{other}: not found")),
    })
}

fn run(set: &[RequestAuthn], headers: &[(&str, &str)], query: &str) -> Result<Outcome, JwtError> {
    authenticate(set, &WAYPOINT, &Request { headers, query }, NOW)
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISS, "sub": sub, "exp": NOW + 600})
}

/// The request principal, or the body of the 401.
type Expect = Result<Option<&'static str>, &'static str>;

#[test]
fn tokens_verify_or_get_envoys_401() {
    let (ec, ec384, rsa, other) = (Signer::es256(), Signer::es384(), Signer::rsa(), Signer::es256());
    let keys = json!({"keys": [ec.jwk("ec"), ec384.jwk("ec384"), rsa.jwk("rsa"), {"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    let set = compiled(&ra("jwt", &json!([{"issuer": ISS, "jwks": keys}])));
    assert!(set[0].notes.is_empty() && set[0].broken.is_none(), "{:?}", set[0]);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("alice");
        f(&mut c);
        c
    };
    let ok = ec.token("ES256", "ec", &claims("alice"));
    let mut tampered = ok.clone();
    tampered.insert(tampered.find('.').unwrap() + 2, 'x');
    let parts: Vec<&str> = ok.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims("root").to_string()), parts[2]);
    let unsigned = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(claims("a").to_string()));
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Expect)> = vec![
        // (name, token, principal or Envoy's message)
        ("ES256", ok.clone(), Ok(Some("https://issuer.example/alice"))),
        ("ES384", ec384.token("ES384", "ec384", &claims("bob")), Ok(Some("https://issuer.example/bob"))),
        ("RS256", rsa.token("RS256", "rsa", &claims("carol")), Ok(Some("https://issuer.example/carol"))),
        ("RS384", rsa.token("RS384", "rsa", &claims("carol")), Ok(Some("https://issuer.example/carol"))),
        ("RS512", rsa.token("RS512", "rsa", &claims("carol")), Ok(Some("https://issuer.example/carol"))),
        ("PS256", rsa.token("PS256", "rsa", &claims("carol")), Ok(Some("https://issuer.example/carol"))),
        ("no sub", ec.token("ES256", "ec", &json!({"iss": ISS})), Ok(Some("https://issuer.example/"))),
        ("expired", ec.token("ES256", "ec", &with(&|c| c["exp"] = json!(NOW - 61))), Err("Jwt is expired")),
        ("expired within the skew", ec.token("ES256", "ec", &with(&|c| c["exp"] = json!(NOW - 59))), Ok(Some("https://issuer.example/alice"))),
        ("not yet valid", ec.token("ES256", "ec", &with(&|c| c["nbf"] = json!(NOW + 61))), Err("Jwt not yet valid")),
        ("exp as text", ec.token("ES256", "ec", &with(&|c| c["exp"] = json!("never"))), Err("Jwt payload is an invalid JSON")),
        ("wrong issuer", ec.token("ES256", "ec", &with(&|c| c["iss"] = json!("https://evil.example"))), Err("Jwt issuer is not configured")),
        ("no issuer", ec.token("ES256", "ec", &json!({"sub": "x"})), Err("Jwt issuer is not configured")),
        ("signed by another key", other.token("ES256", "ec", &claims("alice")), Err("Jwt verification fails")),
        ("payload swapped under the signature", swapped, Err("Jwt verification fails")),
        ("tampered payload", tampered, Err("Jwt payload is an invalid Base64url encoded")),
        ("alg none", unsigned, Err("Jwt header [alg] is not supported")),
        ("HS256", ec.token("HS256", "ec", &claims("alice")), Err("Jwt header [alg] is not supported")),
        ("unknown kid", ec.token("ES256", "nope", &claims("alice")), Err("Jwks doesn't have key to match kid or alg from Jwt")),
        ("EC kid, RSA alg", ec.token("RS256", "ec", &claims("alice")), Err("Jwks doesn't have key to match kid or alg from Jwt")),
        ("two sections", "a.b".into(), Err("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")),
        ("bad base64 header", "a*.b.c".into(), Err("Jwt header is an invalid Base64url encoded")),
        ("too long", format!("{ok}{}", "A".repeat(MAX_TOKEN_BYTES)), Err("Jwt is longer than 8192 bytes")),
    ];
    for (name, token, want) in cases {
        let auth = format!("Bearer {token}");
        let got = run(&set, &[("authorization", &auth)], "");
        let got = got.as_ref().map(|o| o.claims.as_ref().map(Claims::principal)).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(String::from), "{name}");
    }
}

#[test]
fn locations_and_what_is_forwarded() {
    let ec = Signer::es256();
    let keys = json!({"keys": [ec.jwk("ec")]}).to_string();
    let default = compiled(&ra("jwt", &json!([{"issuer": ISS, "jwks": keys}])));
    let custom = compiled(&ra(
        "jwt",
        &json!([{"issuer": ISS, "jwks": keys, "fromHeaders": [{"name": "X-Jwt", "prefix": "Token "}], "forwardOriginalToken": true,
            "outputPayloadToHeader": "x-payload", "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-n", "claim": "n"}]}]),
    ));
    let good = ec.token("ES256", "ec", &json!({"iss": ISS, "sub": "alice", "n": 7, "exp": NOW + 60}));
    let bearer = format!("Bearer {good}");
    let lower = format!("bearer {good}");
    let token_only = format!("Token {good}");
    let expired = ec.token("ES256", "ec", &json!({"iss": ISS, "sub": "alice", "exp": NOW - 3600}));
    let bad_bearer = format!("Bearer {expired}");
    let query = format!("a=1&access_token={good}");
    let principal = |r: &Result<Outcome, JwtError>| r.as_ref().ok().and_then(|o| o.claims.as_ref()).map(|c| c.principal().to_string());
    let alice = Some("https://issuer.example/alice".to_string());

    let r = run(&default, &[], "");
    assert_eq!(r, Ok(Outcome::default()), "no token passes with no principal");
    let r = run(&default, &[("authorization", &bearer)], "");
    assert_eq!(principal(&r), alice);
    assert_eq!(r.unwrap().remove, vec!["authorization".to_string()], "the token is not forwarded by default");
    assert_eq!(principal(&run(&default, &[("authorization", &lower)], "")), alice, "the scheme is case-insensitive");
    assert_eq!(run(&default, &[("authorization", "Basic dXNlcjpwdw==")], ""), Ok(Outcome::default()), "no Bearer prefix, no token");
    let r = run(&default, &[], &query);
    assert_eq!(principal(&r), alice, "access_token query parameter");
    assert!(r.unwrap().remove.is_empty(), "a query token is left in place");
    let both = run(&default, &[("authorization", &bearer), ("authorization", &bad_bearer)], "");
    assert_eq!(both, Err(JwtError::Expired), "every token must verify");
    assert_eq!(run(&default, &[("x-jwt", &token_only)], ""), Ok(Outcome::default()), "not a default location");

    let r = run(&custom, &[("x-jwt", &token_only), ("x-sub", "forged"), ("x-payload", "forged")], "");
    let o = r.unwrap();
    assert_eq!(o.claims.map(|c| c.principal().to_string()), alice);
    assert_eq!(o.remove, vec!["x-n", "x-payload", "x-sub"], "client-supplied output headers go, the token stays");
    let payload = URL_SAFE_NO_PAD.encode(json!({"iss": ISS, "sub": "alice", "n": 7, "exp": NOW + 60}).to_string());
    assert_eq!(o.set, vec![("x-payload".into(), payload), ("x-sub".into(), "alice".into()), ("x-n".into(), "7".into())]);
    let o = run(&custom, &[("authorization", &bad_bearer)], "").unwrap();
    assert_eq!((o.claims, o.set), (None, vec![]), "only the configured locations");
    let o = run(&custom, &[("x-sub", "forged")], "").unwrap();
    assert_eq!((o.claims, o.remove), (None, vec!["x-n".into(), "x-payload".into(), "x-sub".into()]), "removed without a token too");
}

#[test]
fn audiences_attachment_and_broken_objects() {
    let ec = Signer::es256();
    let keys = json!({"keys": [ec.jwk("ec")]}).to_string();
    let aud = compiled(&ra("jwt", &json!([{"issuer": ISS, "jwks": keys, "audiences": ["api", "web"]}])));
    #[rustfmt::skip]
    let cases: Vec<(&str, serde_json::Value, Result<(), JwtError>)> = vec![
        ("aud string", json!("api"), Ok(())),
        ("aud list", json!(["x", "web"]), Ok(())),
        ("aud other", json!("x"), Err(JwtError::AudienceNotAllowed)),
        ("aud absent", serde_json::Value::Null, Err(JwtError::AudienceNotAllowed)),
    ];
    for (name, a, want) in cases {
        let mut c = claims("alice");
        if !a.is_null() {
            c["aud"] = a;
        }
        let auth = format!("Bearer {}", ec.token("ES256", "ec", &c));
        assert_eq!(run(&aud, &[("authorization", &auth)], "").map(|_| ()), want, "{name}");
    }

    let garbage = [("authorization", "Bearer garbage")];
    let elsewhere = Scope { namespace: "other", gateway: "waypoint", service: None };
    assert_eq!(authenticate(&aud, &elsewhere, &Request { headers: &garbage, query: "" }, NOW), Ok(Outcome::default()), "not targeted");
    assert_eq!(run(&aud, &garbage, "").unwrap_err().to_string(), JwtError::BadFormat.to_string());

    let broken = compiled(&ra("bad", &json!([{"issuer": ISS, "jwks": keys, "fromHeader": []}])));
    let Err(JwtError::Broken(why)) = run(&broken, &[], "") else { panic!("a broken object refuses even tokenless requests") };
    assert!(why.contains("unknown field `fromHeader`") && why.contains("failing closed"), "{why}");
    let no_issuer = compiled(&ra("bad", &json!([{"jwks": keys}])));
    assert!(no_issuer[0].broken.as_deref().is_some_and(|w| w.contains("issuer is required")), "{no_issuer:?}");
    let selector = "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: s, namespace: shop}\nspec: {selector: {matchLabels: {app: x}}, jwtRules: [{issuer: x, jwks: '{}'}]}\n";
    assert!(compiled(selector).is_empty(), "selector-bound objects are a sidecar's");
}

#[test]
fn keys_that_cannot_be_had_fail_their_tokens() {
    let ec = Signer::es256();
    let token = format!("Bearer {}", ec.token("ES256", "ec", &claims("alice")));
    let headers = [("authorization", token.as_str())];
    #[rustfmt::skip]
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        // (name, rule, note fragment)
        ("http jwksUri", json!({"issuer": ISS, "jwksUri": "https://issuer.example/jwks"}), "is not fetched"),
        ("missing file", json!({"issuer": ISS, "jwksUri": "file:///nope.json"}), "/nope.json: not found"),
        ("file without usable keys", json!({"issuer": ISS, "jwksUri": "/keys/jwks.json"}), "no RSA or EC"),
        ("no keys at all", json!({"issuer": ISS}), "OpenID discovery"),
        ("jwks not JSON", json!({"issuer": ISS, "jwks": "{"}), "not a JSON object"),
        ("too many keys", json!({"issuer": ISS, "jwks": json!({"keys": vec![ec.jwk("ec"); 33]}).to_string()}), "more than 32 keys"),
        ("too large", json!({"issuer": ISS, "jwks": format!("{{\"keys\": [], \"x\": \"{}\"}}", "a".repeat(70_000))}), "larger than"),
    ];
    for (name, rule, fragment) in cases {
        let set = compiled(&ra("jwt", &json!([rule])));
        assert!(set[0].notes.first().is_some_and(|n| n.contains(fragment)), "{name}: {:?}", set[0].notes);
        assert_eq!(run(&set, &headers, ""), Err(JwtError::Verification), "{name}");
        assert_eq!(run(&set, &[], ""), Ok(Outcome::default()), "{name}: no token still passes");
    }
}

//! AuthorizationPolicy at a waypoint, per Istio's documented semantics: manifests compiled,
//! then decided for requests. Each row says what a user sees: allowed or denied.

use super::*;
use crate::k8s::manifests::parse_documents;

const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";
const OTHER: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
const WAYPOINT: Scope<'static> = Scope { namespace: "shop", gateway: "waypoint", service: Some(("shop", "reviews")) };

fn policies(yaml: &str) -> Vec<L7Policy> {
    let state = parse_documents(yaml, "test").unwrap();
    compile_all(state.other.values())
}

/// One policy in namespace shop bound to the waypoint Gateway, with this spec (flow YAML).
fn gw(name: &str, spec: &str) -> String {
    let spec = spec.trim_start_matches('{');
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}], {spec}\n---\n"
    )
}

struct Req {
    id: Option<&'static str>,
    src: &'static str,
    dst: &'static str,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    http: bool,
    /// The verified JWT's payload, if the request carried one.
    jwt: Option<serde_json::Value>,
}

fn get(path: &'static str) -> Req {
    Req {
        id: Some(CLIENT),
        src: "10.0.0.1",
        dst: "10.96.0.10:9080",
        method: "GET",
        path,
        host: "reviews.shop.svc.cluster.local:9080",
        headers: vec![],
        http: true,
        jwt: None,
    }
}

fn decide(ps: &[L7Policy], scope: &Scope<'_>, r: &Req) -> Verdict {
    let id: Option<Identity> = r.id.map(|i| i.parse().unwrap());
    let http = r.http.then(|| HttpAttrs { method: r.method, path: r.path, host: r.host, headers: &r.headers });
    let claims = r.jwt.as_ref().and_then(|j| j.as_object()).map(|j| Claims::from_payload(j.clone()));
    let attrs = RequestAttrs {
        src_ip: r.src.parse().unwrap(),
        src_identity: id.as_ref(),
        dst: r.dst.parse().unwrap(),
        http,
        auth: claims.as_ref(),
    };
    evaluate(ps, scope, &attrs)
}

fn allowed(ps: &[L7Policy], r: &Req) -> bool {
    decide(ps, &WAYPOINT, r).decision == L7Decision::Allow
}

#[test]
fn operation_and_source_fields() {
    let with = |mut r: Req, f: &dyn Fn(&mut Req)| {
        f(&mut r);
        r
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Req, bool)> = vec![
        // (name, ALLOW spec rules, request, allowed)
        ("exact path", "[{to: [{operation: {paths: [/api]}}]}]", get("/api"), true),
        ("exact path other", "[{to: [{operation: {paths: [/api]}}]}]", get("/api/x"), false),
        ("prefix path", "[{to: [{operation: {paths: [/api/*]}}]}]", get("/api/x/y"), true),
        ("prefix path miss", "[{to: [{operation: {paths: [/api/*]}}]}]", get("/apix"), false),
        ("suffix path", "[{to: [{operation: {paths: ['*.png']}}]}]", get("/img/a.png"), true),
        ("presence path", "[{to: [{operation: {paths: ['*']}}]}]", get("/anything"), true),
        ("notPaths excludes", "[{to: [{operation: {notPaths: [/admin*]}}]}]", get("/admin/x"), false),
        ("notPaths allows the rest", "[{to: [{operation: {notPaths: [/admin*]}}]}]", get("/public"), true),
        ("method", "[{to: [{operation: {methods: [GET, HEAD]}}]}]", get("/"), true),
        ("method miss", "[{to: [{operation: {methods: [POST]}}]}]", get("/"), false),
        ("methods are case-sensitive", "[{to: [{operation: {methods: [get]}}]}]", get("/"), false),
        ("notMethods", "[{to: [{operation: {notMethods: [DELETE]}}]}]", with(get("/"), &|r| r.method = "DELETE"), false),
        ("host exact ignores port", "[{to: [{operation: {hosts: [reviews.shop.svc.cluster.local]}}]}]", get("/"), true),
        ("host case-insensitive", "[{to: [{operation: {hosts: [Reviews.Shop.svc.cluster.local]}}]}]", get("/"), true),
        ("host with port", "[{to: [{operation: {hosts: ['reviews.shop.svc.cluster.local:9080']}}]}]", get("/"), true),
        ("host with other port", "[{to: [{operation: {hosts: ['reviews.shop.svc.cluster.local:80']}}]}]", get("/"), false),
        ("host prefix", "[{to: [{operation: {hosts: ['reviews.*']}}]}]", get("/"), true),
        ("host suffix", "[{to: [{operation: {hosts: ['*.cluster.local']}}]}]", get("/"), true),
        ("notHosts", "[{to: [{operation: {notHosts: ['reviews.*']}}]}]", get("/"), false),
        ("port", "[{to: [{operation: {ports: ['9080']}}]}]", get("/"), true),
        ("port miss", "[{to: [{operation: {ports: ['80']}}]}]", get("/"), false),
        ("notPorts", "[{to: [{operation: {notPorts: ['9080']}}]}]", get("/"), false),
        ("all operation fields must hold", "[{to: [{operation: {methods: [GET], paths: [/x]}}]}]", get("/"), false),
        ("any operation may hold", "[{to: [{operation: {paths: [/x]}}, {operation: {paths: [/]}}]}]", get("/"), true),
        ("principal", "[{from: [{source: {principals: [cluster.local/ns/front/sa/client]}}]}]", get("/"), true),
        ("principal with spiffe prefix", "[{from: [{source: {principals: ['spiffe://cluster.local/ns/front/sa/client']}}]}]", get("/"), true),
        ("principal other", "[{from: [{source: {principals: [cluster.local/ns/front/sa/x]}}]}]", get("/"), false),
        ("principal suffix", "[{from: [{source: {principals: ['*/sa/client']}}]}]", get("/"), true),
        ("principal presence, no identity", "[{from: [{source: {principals: ['*']}}]}]", with(get("/"), &|r| r.id = None), false),
        ("notPrincipals", "[{from: [{source: {notPrincipals: ['cluster.local/ns/evil/*']}}]}]", with(get("/"), &|r| r.id = Some(OTHER)), false),
        ("namespace", "[{from: [{source: {namespaces: [front]}}]}]", get("/"), true),
        ("serviceAccounts", "[{from: [{source: {serviceAccounts: [front/client]}}]}]", get("/"), true),
        ("serviceAccounts miss", "[{from: [{source: {serviceAccounts: [front/clien]}}]}]", get("/"), false),
        ("notServiceAccounts", "[{from: [{source: {notServiceAccounts: [front/client]}}]}]", get("/"), false),
        ("namespace miss", "[{from: [{source: {namespaces: [evil]}}]}]", get("/"), false),
        ("notNamespaces", "[{from: [{source: {notNamespaces: [front]}}]}]", get("/"), false),
        ("ipBlocks", "[{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]", get("/"), true),
        ("ipBlocks single IP", "[{from: [{source: {ipBlocks: [10.0.0.2]}}]}]", get("/"), false),
        ("notIpBlocks", "[{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]", get("/"), false),
        ("remoteIpBlocks", "[{from: [{source: {remoteIpBlocks: [10.0.0.1/32]}}]}]", get("/"), true),
        ("requestPrincipals never match without JWT", "[{from: [{source: {requestPrincipals: ['*']}}]}]", get("/"), false),
        ("notRequestPrincipals hold without JWT", "[{from: [{source: {notRequestPrincipals: ['*']}}]}]", get("/"), true),
        ("from and to both", "[{from: [{source: {namespaces: [front]}}], to: [{operation: {paths: [/]}}]}]", get("/"), true),
        ("from and to, to fails", "[{from: [{source: {namespaces: [front]}}], to: [{operation: {paths: [/x]}}]}]", get("/"), false),
        ("empty rule matches everything", "[{}]", get("/"), true),
        ("no rules allows nothing", "[]", get("/"), false),
        ("any rule", "[{to: [{operation: {paths: [/x]}}]}, {to: [{operation: {paths: [/]}}]}]", get("/"), true),
    ];
    for (name, rules, req, want) in cases {
        let ps = policies(&gw("p", &format!("action: ALLOW, rules: {rules}}}")));
        assert!(ps[0].notes.is_empty(), "{name}: {:?}", ps[0].notes);
        assert_eq!(allowed(&ps, &req), want, "{name}");
    }
}

#[test]
fn when_conditions() {
    let hdr = |h: Vec<(&'static str, &'static str)>| Req { headers: h, ..get("/") };
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Req, bool)> = vec![
        ("header exact", "[{key: 'request.headers[X-User]', values: [alice]}]", hdr(vec![("x-user", "alice")]), true),
        ("header miss", "[{key: 'request.headers[x-user]', values: [alice]}]", hdr(vec![("x-user", "bob")]), false),
        ("header absent", "[{key: 'request.headers[x-user]', values: [alice]}]", hdr(vec![]), false),
        ("header presence", "[{key: 'request.headers[x-user]', values: ['*']}]", hdr(vec![("x-user", "x")]), true),
        ("header prefix", "[{key: 'request.headers[x-user]', values: ['al*']}]", hdr(vec![("x-user", "alice")]), true),
        ("header notValues", "[{key: 'request.headers[x-user]', notValues: [bob]}]", hdr(vec![("x-user", "bob")]), false),
        ("header notValues absent holds", "[{key: 'request.headers[x-user]', notValues: [bob]}]", hdr(vec![]), true),
        ("ALLOW needs every value", "[{key: 'request.headers[x-user]', values: [alice]}]", hdr(vec![("x-user", "alice"), ("x-user", "root")]), false),
        ("source.principal", "[{key: source.principal, values: [cluster.local/ns/front/sa/client]}]", get("/"), true),
        ("source.namespace", "[{key: source.namespace, values: [front]}]", get("/"), true),
        ("source.namespace miss", "[{key: source.namespace, notValues: [front]}]", get("/"), false),
        ("source.ip", "[{key: source.ip, values: [10.0.0.0/8]}]", get("/"), true),
        ("remote.ip", "[{key: remote.ip, notValues: [10.0.0.1]}]", get("/"), false),
        ("destination.ip", "[{key: destination.ip, values: [10.96.0.10]}]", get("/"), true),
        ("destination.port", "[{key: destination.port, values: ['9080']}]", get("/"), true),
        ("destination.port miss", "[{key: destination.port, values: ['80']}]", get("/"), false),
        ("request.auth.principal never matches without JWT", "[{key: request.auth.principal, values: ['*']}]", get("/"), false),
        ("request.auth.claims never match without JWT", "[{key: 'request.auth.claims[groups]', values: [admin]}]", get("/"), false),
        ("nested claims notValues hold without JWT", "[{key: 'request.auth.claims[a][b]', notValues: [x]}]", get("/"), true),
        ("all conditions must hold", "[{key: source.namespace, values: [front]}, {key: destination.port, values: ['1']}]", get("/"), false),
    ];
    for (name, when, req, want) in cases {
        let ps = policies(&gw("p", &format!("action: ALLOW, rules: [{{when: {when}}}]}}")));
        assert!(ps[0].notes.is_empty(), "{name}: {:?}", ps[0].notes);
        assert_eq!(allowed(&ps, &req), want, "{name}");
    }
}

#[test]
fn deny_allow_audit_order() {
    let deny_admin = gw("deny-admin", "action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}");
    let allow_front = gw("allow-front", "rules: [{from: [{source: {namespaces: [front]}}]}]}");
    let allow_none = gw("allow-nothing", "action: ALLOW}");
    let audit = gw("audit-all", "action: AUDIT, rules: [{}]}");
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dry, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{}]}\n---\n";
    let other = Req { id: Some(OTHER), ..get("/") };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Req, bool)> = vec![
        ("no policy allows", String::new(), get("/"), true),
        ("deny matches", deny_admin.clone(), get("/admin/x"), false),
        ("deny does not match", deny_admin.clone(), get("/x"), true),
        ("deny wins over allow", format!("{deny_admin}{allow_front}"), get("/admin"), false),
        ("allow matches", allow_front.clone(), get("/"), true),
        ("allow exists, none matches", allow_front.clone(), other, false),
        ("allow-nothing denies all", allow_none.clone(), get("/"), false),
        ("one matching allow suffices", format!("{allow_none}{allow_front}"), get("/"), true),
        ("audit does not change allow", audit.clone(), get("/"), true),
        ("audit does not change deny", format!("{audit}{allow_none}"), get("/"), false),
        ("dry-run deny is not enforced", dry.to_string(), get("/"), true),
    ];
    for (name, yaml, req, want) in cases {
        assert_eq!(allowed(&policies(&yaml), &req), want, "{name}");
    }
    let v = decide(&policies(&format!("{audit}{dry}{deny_admin}")), &WAYPOINT, &get("/admin"));
    assert_eq!(v.decision, L7Decision::Deny { policy: Some("shop/deny-admin".into()), reason: "denied by shop/deny-admin".into() });
    assert_eq!((v.audited, v.dry_run_matched), (vec!["shop/audit-all".to_string()], vec!["shop/dry".to_string()]));
    let v = decide(&policies(&allow_front), &WAYPOINT, &Req { id: Some(OTHER), ..get("/") });
    assert_eq!(v.decision, L7Decision::Deny { policy: None, reason: "no ALLOW policy matched (shop/allow-front)".into() });
}

#[test]
fn attachment() {
    let tref = |ns: &str, name: &str, refs: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{targetRefs: [{refs}], action: DENY, rules: [{{}}]}}\n---\n")
    };
    let gwref = "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}";
    let svc = "{kind: Service, group: '', name: reviews}";
    let class = "{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}";
    let workload = Scope { service: None, ..WAYPOINT };
    let ratings = Scope { service: Some(("shop", "ratings")), ..WAYPOINT };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Scope<'_>, bool)> = vec![
        // (name, policy, scope, applies = denied)
        ("own gateway", tref("shop", "p", gwref), WAYPOINT, true),
        ("own gateway, workload-addressed", tref("shop", "p", gwref), workload, true),
        ("gateway of that name elsewhere", tref("other", "p", gwref), WAYPOINT, false),
        ("other gateway", tref("shop", "p", "{kind: Gateway, group: gateway.networking.k8s.io, name: east}"), WAYPOINT, false),
        ("service", tref("shop", "p", svc), WAYPOINT, true),
        ("other service", tref("shop", "p", svc), ratings, false),
        ("service, workload-addressed", tref("shop", "p", svc), workload, false),
        ("gateway class in root namespace", tref("istio-system", "p", class), WAYPOINT, true),
        ("gateway class elsewhere", tref("shop", "p", class), WAYPOINT, false),
        ("service entry is not fronted", tref("shop", "p", "{kind: ServiceEntry, group: networking.istio.io, name: reviews}"), WAYPOINT, false),
        ("deprecated targetRef", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRef: {kind: Service, name: reviews}, action: DENY, rules: [{}]}\n".into(), WAYPOINT, true),
        ("selector policies are the node proxy's", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n".into(), WAYPOINT, false),
    ];
    for (name, yaml, scope, denied) in cases {
        let v = decide(&policies(&yaml), &scope, &get("/"));
        assert_eq!(v.decision != L7Decision::Allow, denied, "{name}");
    }
}

#[test]
fn unreadable_policies_deny_what_they_target() {
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str)> = vec![
        // (name, spec after targetRefs, note fragment)
        ("CUSTOM", "action: CUSTOM, provider: {name: ext}, rules: [{}]}", "CUSTOM"),
        ("unknown action", "action: MAYBE}", "unknown action"),
        ("unknown field", "action: ALLOW, rules: [{to: [{operation: {pathz: [/]}}]}]}", "unknown field"),
        ("bad CIDR in an ALLOW", "rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]}", "ipBlocks"),
        ("bad port", "rules: [{to: [{operation: {ports: [http]}}]}]}", "not a port"),
        ("unknown when key", "rules: [{when: [{key: request.regex, values: [x]}]}]}", "unsupported condition key"),
        ("empty from", "rules: [{from: []}]}", "`from` must not be empty"),
        ("empty source", "rules: [{from: [{source: {}}]}]}", "`from.source` must not be empty"),
        ("empty operation", "rules: [{to: [{operation: {}}]}]}", "`to.operation` must not be empty"),
        ("condition without values", "rules: [{when: [{key: source.ip}]}]}", "at least one of"),
        ("bad header name", "rules: [{when: [{key: 'request.headers[a b]', values: [x]}]}]}", "unsupported condition key"),
    ];
    for (name, spec, fragment) in cases {
        let ps = policies(&gw("bad", spec));
        assert_eq!(ps[0].action, L7Action::Deny, "{name}");
        assert!(ps[0].notes[0].contains(fragment) && ps[0].notes[0].contains("failing closed"), "{name}: {:?}", ps[0].notes);
        let v = decide(&ps, &WAYPOINT, &get("/"));
        let L7Decision::Deny { reason, .. } = v.decision else { panic!("{name}: allowed") };
        assert!(reason.starts_with("denied by shop/bad (invalid policy"), "{name}: {reason}");
    }
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRefs: [{kind: Gateway}], action: ALLOW, rules: [{}]}\n";
    let ps = policies(yaml);
    assert_eq!(ps[0].targets, vec![Target::Unreadable]);
    assert!(!allowed(&ps, &get("/")), "unreadable targets: denies in its namespace");
    let elsewhere = Scope { namespace: "other", gateway: "waypoint", service: None };
    assert_eq!(decide(&ps, &elsewhere, &get("/")).decision, L7Decision::Allow, "and only there");
}

#[test]
fn tcp_connections_have_no_http_attributes() {
    let tcp = Req { http: false, ..get("/") };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, bool)> = vec![
        ("ALLOW on a path never matches TCP", gw("p", "rules: [{to: [{operation: {paths: [/]}}]}]}"), false),
        ("ALLOW on a port matches TCP", gw("p", "rules: [{to: [{operation: {ports: ['9080']}}]}]}"), true),
        ("ALLOW on a principal matches TCP", gw("p", "rules: [{from: [{source: {namespaces: [front]}}]}]}"), true),
        ("DENY on a path denies TCP", gw("p", "action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}"), false),
        ("DENY on a header denies TCP", gw("p", "action: DENY, rules: [{when: [{key: 'request.headers[x]', values: [v]}]}]}"), false),
        ("DENY on a header and another namespace", gw("p", "action: DENY, rules: [{from: [{source: {namespaces: [evil]}}], when: [{key: 'request.headers[x]', values: [v]}]}]}"), true),
    ];
    for (name, yaml, want) in cases {
        let ps = policies(&yaml);
        assert!(ps[0].notes.is_empty(), "{name}: {:?}", ps[0].notes);
        assert_eq!(allowed(&ps, &tcp), want, "{name}");
    }
}

#[test]
fn deny_matches_any_header_value() {
    let ps = policies(&gw("p", "action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: [root]}]}]}"));
    let r = Req { headers: vec![("x-user", "alice"), ("x-user", "root")], ..get("/") };
    assert!(!allowed(&ps, &r), "a DENY matches if any value does");
    let r = Req { headers: vec![("X-User", "root")], ..get("/") };
    assert!(!allowed(&ps, &r), "header names are case-insensitive");
}

#[test]
fn request_principals_and_auth_keys() {
    let token = serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["api", "web"], "azp": "spa",
        "groups": ["dev", "ops"], "role": "admin", "org": {"team": {"name": "payments"}}, "n": 7,
    });
    let jwt = || Req { jwt: Some(token.clone()), ..get("/") };
    let from = |src: &str| format!("[{{from: [{{source: {{{src}}}}}]}}]");
    let when = |c: &str| format!("[{{when: [{c}]}}]");
    #[rustfmt::skip]
    let cases: Vec<(&str, String, Req, bool)> = vec![
        // (name, ALLOW rules, request, allowed)
        ("requestPrincipals exact", from("requestPrincipals: ['https://issuer.example/alice']"), jwt(), true),
        ("requestPrincipals other sub", from("requestPrincipals: ['https://issuer.example/bob']"), jwt(), false),
        ("requestPrincipals issuer prefix", from("requestPrincipals: ['https://issuer.example/*']"), jwt(), true),
        ("requestPrincipals other issuer", from("requestPrincipals: ['https://evil.example/*']"), jwt(), false),
        ("requestPrincipals suffix", from("requestPrincipals: ['*/alice']"), jwt(), true),
        ("requestPrincipals presence", from("requestPrincipals: ['*']"), jwt(), true),
        ("requestPrincipals presence, no token", from("requestPrincipals: ['*']"), get("/"), false),
        ("notRequestPrincipals presence", from("notRequestPrincipals: ['*']"), jwt(), false),
        ("notRequestPrincipals other", from("notRequestPrincipals: ['https://evil.example/*']"), jwt(), true),
        ("request.auth.principal", when("{key: request.auth.principal, values: ['https://issuer.example/alice']}"), jwt(), true),
        ("request.auth.audiences any element", when("{key: request.auth.audiences, values: [web]}"), jwt(), true),
        ("request.auth.audiences miss", when("{key: request.auth.audiences, values: [admin]}"), jwt(), false),
        ("request.auth.audiences notValues", when("{key: request.auth.audiences, notValues: [api]}"), jwt(), false),
        ("request.auth.presenter", when("{key: request.auth.presenter, values: [spa]}"), jwt(), true),
        ("claim string", when("{key: 'request.auth.claims[role]', values: [admin]}"), jwt(), true),
        ("claim string prefix", when("{key: 'request.auth.claims[role]', values: ['adm*']}"), jwt(), true),
        ("claim list element", when("{key: 'request.auth.claims[groups]', values: [ops]}"), jwt(), true),
        ("claim list miss", when("{key: 'request.auth.claims[groups]', values: [root]}"), jwt(), false),
        ("claim list notValues", when("{key: 'request.auth.claims[groups]', notValues: [dev]}"), jwt(), false),
        ("nested claim", when("{key: 'request.auth.claims[org][team][name]', values: [payments]}"), jwt(), true),
        ("nested claim miss", when("{key: 'request.auth.claims[org][team][name]', values: [sales]}"), jwt(), false),
        ("nested claim absent", when("{key: 'request.auth.claims[org][dept]', values: ['*']}"), jwt(), false),
        ("number claim is not a string", when("{key: 'request.auth.claims[n]', values: ['7']}"), jwt(), false),
        ("claim absent, notValues hold", when("{key: 'request.auth.claims[missing]', notValues: [x]}"), jwt(), true),
    ];
    for (name, rules, req, want) in cases {
        let ps = policies(&gw("p", &format!("action: ALLOW, rules: {rules}}}")));
        assert!(ps[0].notes.is_empty(), "{name}: {:?}", ps[0].notes);
        assert_eq!(allowed(&ps, &req), want, "{name}");
    }
    // What a user of Istio writes: tokens from one issuer on /secure, a 403 without one.
    let secure = gw("secure", "action: ALLOW, rules: [{from: [{source: {requestPrincipals: ['https://issuer.example/*']}}], to: [{operation: {paths: ['/secure*']}}]}]}");
    let ps = policies(&secure);
    assert!(allowed(&ps, &Req { jwt: Some(token.clone()), ..get("/secure/x") }));
    let v = decide(&ps, &WAYPOINT, &get("/secure/x"));
    assert_eq!(v.decision, L7Decision::Deny { policy: None, reason: "no ALLOW policy matched (shop/secure)".into() });
    let deny = policies(&gw("no-jwt", "action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]}"));
    assert!(!allowed(&deny, &get("/")), "DENY notRequestPrincipals '*' refuses requests without a token");
    assert!(allowed(&deny, &jwt()), "and lets a verified one through");
}

//! L7 authorization at a waypoint: Istio `AuthorizationPolicy` (security.istio.io/v1) bound
//! by `targetRefs`, evaluated per HTTP request (or per TCP connection, with no HTTP attributes).
//!
//! Evaluation is Istio's: any matching DENY denies; if any ALLOW policy applies, one must
//! match; AUDIT policies are reported and never change the decision; dry-run policies are
//! reported and never enforced. A policy that cannot be compiled is a DENY of everything it
//! targets, with the reason as a note (invariant P4: what an enforcer does not understand must
//! never widen access).
//!
//! What is stricter than Envoy, on purpose: a header with several values must match in every
//! value for an ALLOW and in any value for a DENY (multi-value concatenation bypasses, Envoy
//! CVE-2026-26308); on a connection with no HTTP attributes (a TCP port) a condition on them
//! never holds in an ALLOW rule and always holds in a DENY rule.

mod claims;
pub(crate) mod compile;
pub mod path;

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::identity::Identity;
use crate::model::StringMatch;

pub use claims::Claims;
pub use compile::{compile, compile_all, ROOT_NAMESPACE, WAYPOINT_CLASS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum L7Action {
    Allow,
    Deny,
    Audit,
}

/// What a policy's `targetRefs` name, in the policy's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    /// A Gateway (a waypoint) by name.
    Gateway(String),
    /// A Service by name: traffic addressed to it.
    Service(String),
    /// A GatewayClass; `istio-waypoint` in the root namespace is every waypoint.
    GatewayClass(String),
    /// A kind ferry's waypoint does not front (ServiceEntry, ...): never applies here.
    Other(String),
    /// The references could not be read: the policy applies to everything in its namespace
    /// (it is failing closed, so covering too much is the safe side).
    Unreadable,
}

/// A compiled policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Policy {
    pub name: String,
    pub namespace: String,
    pub action: L7Action,
    pub targets: Vec<Target>,
    pub dry_run: bool,
    rules: Vec<Rule>,
    /// Why the policy was changed from what it says (failing closed), for operators.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `from` (any source), `to` (any operation), every `when`; an absent part always holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
struct Rule {
    from: Option<Vec<Source>>,
    to: Option<Vec<Operation>>,
    when: Vec<Condition>,
}

/// A positive and a negated list; an empty list is unset.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Pair<T> {
    values: Vec<T>,
    not: Vec<T>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Source {
    principals: Pair<StringMatch>,
    request_principals: Pair<StringMatch>,
    namespaces: Pair<StringMatch>,
    ip_blocks: Pair<IpNet>,
    remote_ip_blocks: Pair<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Operation {
    hosts: Pair<StringMatch>,
    ports: Pair<u16>,
    methods: Pair<StringMatch>,
    paths: Pair<StringMatch>,
}

/// A `when` key ferry can evaluate.
#[derive(Clone, Debug, PartialEq, Serialize)]
enum Key {
    Header(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// `request.auth.*`, from the request's verified JWT.
    Auth(AuthKey),
    ConnectionSni,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
enum AuthKey {
    Principal,
    Audiences,
    Presenter,
    /// `request.auth.claims[a][b]` as `["a", "b"]`.
    Claim(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
enum Values {
    Strings(Pair<StringMatch>),
    Nets(Pair<IpNet>),
    Ports(Pair<u16>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Condition {
    key: Key,
    values: Values,
}

/// What the waypoint knows about one HTTP request.
#[derive(Clone, Debug)]
pub struct HttpAttrs<'a> {
    pub method: &'a str,
    /// Normalized (see [`path::normalize`]), without the query.
    pub path: &'a str,
    /// The request's authority (`Host` for HTTP/1.1), possibly with a port.
    pub host: &'a str,
    /// Header names lower-case, each value separately.
    pub headers: &'a [(&'a str, &'a str)],
}

/// What the waypoint knows about one request or connection.
#[derive(Clone, Debug)]
pub struct RequestAttrs<'a> {
    /// The peer of the HBONE connection.
    pub src_ip: IpAddr,
    /// The client's identity as the HBONE peer certificate names it.
    pub src_identity: Option<&'a Identity>,
    /// The address the client dialled (service VIP:port or pod IP:port).
    pub dst: SocketAddr,
    /// `None` on a TCP port: HTTP conditions are unknown.
    pub http: Option<HttpAttrs<'a>>,
    /// The request's verified JWT; `None` without one (and always on a TCP port).
    pub auth: Option<&'a Claims>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum L7Decision {
    Allow,
    Deny { policy: Option<String>, reason: String },
}

/// A decision, and the AUDIT and dry-run policies that matched (for the access log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub decision: L7Decision,
    pub audited: Vec<String>,
    pub dry_run_matched: Vec<String>,
}

/// Which waypoint is asking, and what the request was addressed to.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The waypoint's namespace and Gateway name.
    pub namespace: &'a str,
    pub gateway: &'a str,
    /// The destination service (namespace, name), when the request was service-addressed.
    pub service: Option<(&'a str, &'a str)>,
}

impl L7Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether this policy binds to the request described by `scope`.
    pub fn applies(&self, scope: &Scope<'_>) -> bool {
        targets_apply(&self.targets, &self.namespace, scope)
    }

    fn matches(&self, r: &RequestAttrs<'_>) -> bool {
        let ctx = Ctx { req: r, deny: self.action == L7Action::Deny };
        self.rules.iter().any(|rule| ctx.rule(rule))
    }
}

/// Whether an object in namespace `ns` with these targets binds to `scope` (policies and
/// RequestAuthentications attach alike).
pub(crate) fn targets_apply(targets: &[Target], ns: &str, scope: &Scope<'_>) -> bool {
    let own = ns == scope.namespace;
    let svc_ns = scope.service.map(|(n, _)| n);
    targets.iter().any(|t| match t {
        Target::Gateway(g) => own && g == scope.gateway,
        Target::Service(s) => scope.service == Some((ns, s.as_str())),
        Target::GatewayClass(c) => ns == ROOT_NAMESPACE && c == WAYPOINT_CLASS,
        Target::Other(_) => false,
        Target::Unreadable => own || svc_ns == Some(ns),
    })
}

/// Decides `req` against every policy in `policies` that applies to `scope`.
pub fn evaluate<'p>(policies: impl IntoIterator<Item = &'p L7Policy>, scope: &Scope<'_>, req: &RequestAttrs<'_>) -> Verdict {
    let mut verdict = Verdict { decision: L7Decision::Allow, audited: Vec::new(), dry_run_matched: Vec::new() };
    let (mut denied, mut allows, mut allowed) = (None, Vec::new(), false);
    for p in policies.into_iter().filter(|p| p.applies(scope)) {
        let matched = p.matches(req);
        if p.dry_run {
            if matched {
                verdict.dry_run_matched.push(p.key());
            }
            continue;
        }
        match p.action {
            L7Action::Audit if matched => verdict.audited.push(p.key()),
            L7Action::Audit => {}
            L7Action::Deny if matched && denied.is_none() => denied = Some(p),
            L7Action::Deny => {}
            L7Action::Allow => {
                allows.push(p.key());
                allowed |= matched;
            }
        }
    }
    verdict.decision = match denied {
        Some(p) => {
            let why = p.notes.first().map(|n| format!(" ({n})")).unwrap_or_default();
            L7Decision::Deny { policy: Some(p.key()), reason: format!("denied by {}{why}", p.key()) }
        }
        None if allows.is_empty() || allowed => L7Decision::Allow,
        None => L7Decision::Deny { policy: None, reason: format!("no ALLOW policy matched ({})", allows.join(", ")) },
    };
    verdict
}

/// One evaluation: the request and whether the policy being matched is a DENY (which decides
/// how unknown and multi-valued attributes count).
struct Ctx<'r, 'a> {
    req: &'r RequestAttrs<'a>,
    deny: bool,
}

fn pair_holds<T>(p: &Pair<T>, hit: impl Fn(&T) -> bool) -> bool {
    (p.values.is_empty() || p.values.iter().any(&hit)) && !p.not.iter().any(hit)
}

/// A string pair against a value that may be absent: positives never match an absent value,
/// negations always hold for it.
fn str_pair(p: &Pair<StringMatch>, v: Option<&str>) -> bool {
    let hit = |m: &StringMatch| v.is_some_and(|v| m.matches(v));
    pair_holds(p, hit)
}

fn net_pair(p: &Pair<IpNet>, ip: IpAddr) -> bool {
    pair_holds(p, |n| n.contains(&ip))
}

fn port_pair(p: &Pair<u16>, port: u16) -> bool {
    pair_holds(p, |x| *x == port)
}

impl Ctx<'_, '_> {
    fn rule(&self, r: &Rule) -> bool {
        r.from.as_ref().is_none_or(|f| f.iter().any(|s| self.source(s)))
            && r.to.as_ref().is_none_or(|t| t.iter().any(|o| self.operation(o)))
            && r.when.iter().all(|c| self.condition(c))
    }

    fn source(&self, s: &Source) -> bool {
        let id = self.req.src_identity;
        let principal = id.map(|i| i.principal());
        str_pair(&s.principals, principal.as_deref())
            && str_pair(&s.namespaces, id.map(|i| i.namespace()))
            && str_pair(&s.request_principals, self.req.auth.map(Claims::principal))
            && net_pair(&s.ip_blocks, self.req.src_ip)
            && net_pair(&s.remote_ip_blocks, self.req.src_ip)
    }

    /// Whether a pair on an HTTP attribute holds; unknown (a TCP port) holds only in a DENY.
    fn http_pair(&self, p: &Pair<StringMatch>, value: impl Fn(&HttpAttrs<'_>, &StringMatch) -> bool) -> bool {
        if p.values.is_empty() && p.not.is_empty() {
            return true;
        }
        match &self.req.http {
            None => self.deny,
            Some(h) => pair_holds(p, |m| value(h, m)),
        }
    }

    fn operation(&self, o: &Operation) -> bool {
        self.http_pair(&o.methods, |h, m| m.matches(h.method))
            && self.http_pair(&o.paths, |h, m| m.matches(h.path))
            && self.http_pair(&o.hosts, |h, m| host_matches(m, h.host))
            && port_pair(&o.ports, self.req.dst.port())
    }

    fn condition(&self, c: &Condition) -> bool {
        let r = self.req;
        match (&c.key, &c.values) {
            (Key::Header(name), Values::Strings(p)) => match &r.http {
                None => self.deny,
                Some(h) => self.header(p, h, name),
            },
            (Key::SourceIp | Key::RemoteIp, Values::Nets(p)) => net_pair(p, r.src_ip),
            (Key::DestinationIp, Values::Nets(p)) => net_pair(p, r.dst.ip()),
            (Key::DestinationPort, Values::Ports(p)) => port_pair(p, r.dst.port()),
            (Key::SourceNamespace, Values::Strings(p)) => str_pair(p, r.src_identity.map(|i| i.namespace())),
            (Key::SourcePrincipal, Values::Strings(p)) => str_pair(p, r.src_identity.map(|i| i.principal()).as_deref()),
            (Key::Auth(k), Values::Strings(p)) => self.auth(p, k),
            (Key::ConnectionSni, Values::Strings(p)) => str_pair(p, None),
            // The compiler pairs every key with its kind of values; a mismatch is a bug, and
            // the safe answer is the one that denies.
            _ => self.deny,
        }
    }

    /// A `request.auth.*` key: a list (audiences, a list claim) holds if any element does,
    /// as in Istio (the list comes from a verified token, not from the client's headers).
    fn auth(&self, p: &Pair<StringMatch>, k: &AuthKey) -> bool {
        let Some(c) = self.req.auth else { return str_pair(p, None) };
        let values = match k {
            AuthKey::Principal => vec![c.principal()],
            AuthKey::Audiences => c.audiences(),
            AuthKey::Presenter => c.presenter().into_iter().collect(),
            AuthKey::Claim(path) => c.claim(path),
        };
        match values.is_empty() {
            true => str_pair(p, None),
            false => pair_holds(p, |m| values.iter().any(|v| m.matches(v))),
        }
    }

    /// Several values of one header: an ALLOW needs every value to hold, a DENY any.
    fn header(&self, p: &Pair<StringMatch>, h: &HttpAttrs<'_>, name: &str) -> bool {
        let values: Vec<&str> = h.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v).collect();
        if values.is_empty() {
            return str_pair(p, None);
        }
        let each = |v: &str| str_pair(p, Some(v));
        match self.deny {
            true => values.iter().any(|v| each(v)),
            false => values.iter().all(|v| each(v)),
        }
    }
}

/// Hosts match case-insensitively, and a pattern without a port matches the host with any
/// port (Istio generates both forms).
fn host_matches(m: &StringMatch, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let lower = |s: &str| s.to_ascii_lowercase();
    let m = match m {
        StringMatch::Exact(s) => StringMatch::Exact(lower(s)),
        StringMatch::Prefix(s) => StringMatch::Prefix(lower(s)),
        StringMatch::Suffix(s) => StringMatch::Suffix(lower(s)),
        StringMatch::Presence => StringMatch::Presence,
    };
    m.matches(&host) || strip_port(&host).is_some_and(|h| m.matches(h))
}

/// `host:port` to `host` (`[v6]:port` to `[v6]`); `None` without a port.
fn strip_port(host: &str) -> Option<&str> {
    let (h, port) = host.rsplit_once(':')?;
    let bracketed_or_plain = h.ends_with(']') || !h.contains(':');
    (bracketed_or_plain && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(h)
}

#[cfg(test)]
mod tests;

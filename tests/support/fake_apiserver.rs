//! A fake Kubernetes API server for tests (there is no real one on these machines): an
//! in-process HTTP/1 server answering list and watch for the kinds ferry reads, the way the
//! real one does at the protocol level. Lists carry `metadata.resourceVersion`; a watch
//! (`?watch=true&resourceVersion=N`) streams newline-delimited `ADDED`/`MODIFIED`/`DELETED`
//! events after N, `BOOKMARK`s the test asks for, and stays open until the test drops it. A
//! watch from a resourceVersion older than the last compaction is answered with an `ERROR`
//! event carrying `410 Gone`, as after etcd compaction. Every request's path and query are
//! recorded so tests can assert what a client asked for. A `TokenReview` POST is answered from
//! the tokens a test registers, with the API server's audience rule (a token whose audiences
//! do not meet the requested ones is not authenticated). Leases and ConfigMaps can also be
//! read and written by name (get, create, replace) with the API server's optimistic
//! concurrency: a replace whose `metadata.resourceVersion` is not the stored one, or a create
//! of an existing name, is answered `409 Conflict`; a test can make the next write of a kind
//! lose a race (another writer's object stored, then 409) or fail (500), and every write is
//! recorded. A pod `PATCH` (JSON merge patch,
//! RFC 7386, on the pod or its `status` subresource) changes the stored pod like any other
//! write (`MODIFIED`) and is recorded; the next N can be made to fail with 500. The one field
//! selector it knows, `spec.nodeName=X`, filters lists and watches as the real server does. A
//! server-side apply PATCH (`application/apply-patch+yaml`) of a ServiceAccount, Service or
//! Deployment stores the object sent (created or replaced, `ADDED`/`MODIFIED`, uid kept) and is
//! recorded with its field manager, `force` and writer; the next N can be made to fail with
//! 500. It
//! stores objects, nothing more: no validation, no label selectors, no admission, no
//! garbage collection (owner references are stored, never acted on).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;

#[path = "fake_apiserver_patch.rs"]
mod patch;

use patch::{patch_pod, server_side_apply, APPLY_PATCH};
pub use patch::{Applied, PodPatch};

/// The resources served: kind, apiVersion, cluster-wide collection path.
const RESOURCES: &[(&str, &str, &str)] = &[
    ("Namespace", "v1", "/api/v1/namespaces"),
    ("Pod", "v1", "/api/v1/pods"),
    ("Service", "v1", "/api/v1/services"),
    ("ServiceAccount", "v1", "/api/v1/serviceaccounts"),
    ("AuthorizationPolicy", "security.istio.io/v1", "/apis/security.istio.io/v1/authorizationpolicies"),
    ("PeerAuthentication", "security.istio.io/v1", "/apis/security.istio.io/v1/peerauthentications"),
    ("Gateway", "gateway.networking.k8s.io/v1", "/apis/gateway.networking.k8s.io/v1/gateways"),
    ("Node", "v1", "/api/v1/nodes"),
    ("EndpointSlice", "discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices"),
    ("Lease", "coordination.k8s.io/v1", "/apis/coordination.k8s.io/v1/leases"),
    ("ConfigMap", "v1", "/api/v1/configmaps"),
    ("Deployment", "apps/v1", "/apis/apps/v1/deployments"),
];

/// Kinds also served by name in a namespace: kind, group-version prefix, plural.
const WRITABLE: &[(&str, &str, &str)] = &[("Lease", "/apis/coordination.k8s.io/v1", "leases"), ("ConfigMap", "/api/v1", "configmaps")];

/// One write a client made (create or replace), answered `code`.
#[derive(Clone, Debug)]
pub struct Write {
    pub kind: &'static str,
    pub method: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// The client's bearer token (see [`FakeApiServer::kubeconfig_as`]), empty without one.
    pub who: String,
    /// The object as sent.
    pub object: Value,
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The collection path of `kind`.
pub fn path_of(kind: &str) -> &'static str {
    RESOURCES.iter().find(|r| r.0 == kind).map(|r| r.2).unwrap_or_else(|| panic!("the fake API server does not serve {kind}"))
}

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

struct Logged {
    /// Position in the log, never reused.
    seq: u64,
    path: &'static str,
    rv: u64,
    line: Bytes,
    /// The event's object, for field selectors.
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// path → `namespace/name` → object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    log: Vec<Logged>,
    logged: u64,
    /// path → the last log position an open watch has sent.
    delivered: BTreeMap<&'static str, u64>,
    /// Watches from an older resourceVersion are answered 410.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    seen: Vec<Seen>,
    /// Paths answered 404, as for a CRD that is not installed.
    missing: Vec<&'static str>,
    /// token → (username, audiences, bound pod name).
    tokens: BTreeMap<String, (String, Vec<String>, Option<String>)>,
    writes: Vec<Write>,
    /// Kinds whose by-name requests are answered 500, as by an API server in trouble.
    failing: Vec<&'static str>,
    /// kind → GETs by name answered.
    reads: BTreeMap<&'static str, u64>,
    /// kind → the object another writer stores just before the next write of that kind,
    /// which is then answered 409.
    race: BTreeMap<&'static str, Value>,
    patches: Vec<PodPatch>,
    /// How many of the next pod patches are answered 500.
    failing_patches: u32,
    /// Gateway status patches: `namespace/name` and the patch.
    gateway_patches: Vec<(String, Value)>,
    applies: Vec<Applied>,
    /// How many of the next server-side applies are answered 500.
    failing_applies: u32,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every change, so open watches look at the log again.
    tick: watch::Sender<u64>,
}

impl Inner {
    /// Stores `object` at a new resourceVersion (`ADDED` or `MODIFIED`); returns it.
    fn store(&mut self, mut object: Value) -> u64 {
        let kind = object["kind"].as_str().expect("objects name their kind").to_string();
        let path = path_of(&kind);
        let key = key_of(&object);
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let set = self.objects.entry(path).or_default();
        let kind = if set.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        self.log(path, rv, kind, &object);
        rv
    }

    fn log(&mut self, path: &'static str, rv: u64, kind: &str, object: &Value) {
        self.logged += 1;
        let line = event_line(kind, object);
        self.log.push(Logged { seq: self.logged, path, rv, line, object: object.clone() });
    }
}

impl Shared {
    fn change(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().unwrap());
        self.tick.send_modify(|t| *t += 1);
    }
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Listens on an ephemeral loopback port.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { inner: Mutex::default(), tick: watch::channel(0).0 });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            if req.method() == http::Method::POST && req.uri().path() == TOKEN_REVIEWS {
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                return Ok::<_, Infallible>(token_review(&s, &body));
                            }
                            if req.method() == http::Method::PATCH {
                                let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                                let path = req.uri().path().to_string();
                                let query = query_of(req.uri().query().unwrap_or(""));
                                let who = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                                let who = who.strip_prefix("Bearer ").unwrap_or(who).to_string();
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                if ct == APPLY_PATCH {
                                    return Ok(server_side_apply(&s, &path, &query, &who, &body));
                                }
                                return Ok(patch_pod(&s, &path, &ct, &body));
                            }
                            if let Some(target) = by_name(req.uri().path()) {
                                let method = req.method().clone();
                                let who = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                                let who = who.strip_prefix("Bearer ").unwrap_or(who).to_string();
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                return Ok(named(&s, &method, target, &who, &body));
                            }
                            Ok(answer(&s, &req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeApiServer { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configuration pointing at this server (plain HTTP, no credentials).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().unwrap())
    }

    /// A kubeconfig file for this server, for a process that reads `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with("{}")
    }

    /// A kubeconfig whose client sends bearer token `who`, so writes name their writer.
    pub fn kubeconfig_as(&self, who: &str) -> String {
        self.kubeconfig_with(&format!("{{token: {who}}}"))
    }

    fn kubeconfig_with(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {user}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`); returns its resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        let mut rv = 0;
        self.shared.change(|i| rv = i.store(object));
        rv
    }

    /// The stored object of `kind` named `namespace/name`.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let i = self.shared.inner.lock().unwrap();
        i.objects.get(path_of(kind)).and_then(|m| m.get(&format!("{namespace}/{name}"))).cloned()
    }

    /// Every stored object of `kind`.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let i = self.shared.inner.lock().unwrap();
        i.objects.get(path_of(kind)).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Every create or replace of `kind` so far, in order.
    pub fn writes(&self, kind: &str) -> Vec<Write> {
        self.shared.inner.lock().unwrap().writes.iter().filter(|w| w.kind == kind).cloned().collect()
    }

    /// Answers every by-name request of `kind` (a writable kind) 500 (`false`: normally again).
    pub fn set_failing(&self, kind: &str, failing: bool) {
        let kind = WRITABLE.iter().find(|w| w.0 == kind).map(|w| w.0).expect("a writable kind");
        self.shared.change(|i| {
            i.failing.retain(|k| *k != kind);
            if failing {
                i.failing.push(kind);
            }
        });
    }

    /// How many GETs by name of `kind` were answered (failed ones too).
    pub fn reads(&self, kind: &str) -> u64 {
        self.shared.inner.lock().unwrap().reads.iter().filter(|r| *r.0 == kind).map(|r| *r.1).sum()
    }

    /// Makes the next write of `kind` lose a race: `winner` is stored (as another client's
    /// write) and the write is answered 409 Conflict.
    pub fn lose_next_write(&self, kind: &str, winner: Value) {
        let kind = RESOURCES.iter().find(|r| r.0 == kind).map(|r| r.0).expect("a served kind");
        self.shared.change(|i| {
            i.race.insert(kind, winner);
        });
    }

    /// Waits (bounded) until `pred` holds of the server, e.g. of what [`Self::get`] returns.
    pub async fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&FakeApiServer) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(self) {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes an object (`DELETED`, with its last state).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let path = path_of(kind);
        self.shared.change(|i| {
            i.rv += 1;
            let rv = i.rv;
            if let Some(mut object) = i.objects.entry(path).or_default().remove(&format!("{namespace}/{name}")) {
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                i.log(path, rv, "DELETED", &object);
            }
        });
    }

    /// Deletes an object while every watch is down and compacts the history past it, as if
    /// the client had been disconnected for long: no watcher sees the `DELETED`, and resuming
    /// from any earlier resourceVersion is answered 410.
    pub fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) {
        let path = path_of(kind);
        self.shared.change(|i| {
            i.epoch += 1;
            i.rv += 1;
            i.objects.entry(path).or_default().remove(&format!("{namespace}/{name}"));
            i.compacted = i.rv;
            i.log.clear();
        });
    }

    /// Sends a `BOOKMARK` at the current resourceVersion on `kind`'s watches.
    pub fn bookmark(&self, kind: &str) -> u64 {
        let (_, api_version, path) = *RESOURCES.iter().find(|r| r.0 == kind).unwrap();
        let mut rv = 0;
        self.shared.change(|i| {
            rv = i.rv;
            let object = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
            i.log(path, rv, "BOOKMARK", &object);
        });
        rv
    }

    /// Answers `kind`'s requests 404 (`false`: serves it again), as while its CRD is missing.
    pub fn set_missing(&self, kind: &str, missing: bool) {
        let path = path_of(kind);
        self.shared.change(|i| {
            i.missing.retain(|p| *p != path);
            if missing {
                i.missing.push(path);
            }
        });
    }

    /// Registers a token the API server authenticates as `username` (e.g.
    /// `system:serviceaccount:ns:sa`) for `audiences`, bound to `pod` if given.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str], pod: Option<&str>) {
        let entry = (username.to_string(), audiences.iter().map(|a| a.to_string()).collect(), pod.map(String::from));
        self.shared.change(|i| {
            i.tokens.insert(token.to_string(), entry);
        });
    }

    /// The TokenReviews posted so far (their specs).
    pub fn token_reviews(&self) -> Vec<Value> {
        let i = self.shared.inner.lock().unwrap();
        i.seen
            .iter()
            .filter(|s| s.path == TOKEN_REVIEWS)
            .filter_map(|s| s.query.get("spec").and_then(|v| serde_json::from_str(v).ok()))
            .collect()
    }

    /// The Gateway status PATCHes received so far (`namespace/name`, patch), in order.
    pub fn gateway_patches(&self) -> Vec<(String, Value)> {
        self.shared.inner.lock().unwrap().gateway_patches.clone()
    }

    /// The server-side apply PATCHes received so far, in order.
    pub fn applies(&self) -> Vec<Applied> {
        self.shared.inner.lock().unwrap().applies.clone()
    }

    /// Answers the next `n` server-side applies 500, as an API server briefly unavailable.
    pub fn fail_applies(&self, n: u32) {
        self.shared.change(|i| i.failing_applies = n);
    }

    /// The pod PATCHes received so far, in order.
    pub fn pod_patches(&self) -> Vec<PodPatch> {
        self.shared.inner.lock().unwrap().patches.clone()
    }

    /// Answers the next `n` pod PATCHes 500, as an API server that is briefly unavailable.
    pub fn fail_patches(&self, n: u32) {
        self.shared.change(|i| i.failing_patches = n);
    }

    /// The stored object `namespace/name` of `kind`, if any.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let i = self.shared.inner.lock().unwrap();
        i.objects.get(path_of(kind)).and_then(|m| m.get(&format!("{namespace}/{name}"))).cloned()
    }

    /// Waits (bounded) until the stored object `namespace/name` of `kind` satisfies `pred`.
    pub async fn wait_object(&self, kind: &str, namespace: &str, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(o) = self.object(kind, namespace, name).filter(|o| pred(o)) {
                return o;
            }
            assert!(Instant::now() < deadline, "{kind} {namespace}/{name} never {what}; patches {:?}", self.pod_patches());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends every open watch (the connection's body ends, as when an API server restarts).
    pub fn drop_watches(&self) {
        self.shared.change(|i| i.epoch += 1);
    }

    /// Waits (bounded) until an open watch of `kind` has sent every event logged for it, so
    /// a test knows what the client has before it drops the watch.
    pub async fn wait_delivered(&self, kind: &str) {
        let path = path_of(kind);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let i = self.shared.inner.lock().unwrap();
                let last = i.log.iter().filter(|e| e.path == path).map(|e| e.seq).max().unwrap_or(0);
                if i.delivered.get(path).copied().unwrap_or(0) >= last {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{kind}'s events never reached a watch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every request answered so far for `kind`'s collection.
    pub fn requests(&self, kind: &str) -> Vec<Seen> {
        let path = path_of(kind);
        self.shared.inner.lock().unwrap().seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Waits (bounded) until a request for `kind` satisfies `pred`; returns it.
    pub async fn wait_request(&self, kind: &str, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.requests(kind).into_iter().find(|s| pred(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {kind} request {what}; saw {:?}", self.requests(kind));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A request on a writable kind in a namespace: kind, namespace, name (None: the collection).
type Target = (&'static str, String, Option<String>);

fn by_name(path: &str) -> Option<Target> {
    WRITABLE.iter().find_map(|(kind, prefix, plural)| {
        let rest = path.strip_prefix(prefix)?.strip_prefix("/namespaces/")?;
        let (ns, rest) = rest.split_once('/')?;
        let rest = rest.strip_prefix(plural)?;
        match rest.strip_prefix('/') {
            None if rest.is_empty() => Some((*kind, ns.to_string(), None)),
            Some(name) if !name.is_empty() && !name.contains('/') => Some((*kind, ns.to_string(), Some(name.to_string()))),
            _ => None,
        }
    })
}

/// GET, POST (create) or PUT (replace) of one named object, with resourceVersion checks.
fn named(s: &Shared, method: &http::Method, (kind, ns, name): Target, who: &str, body: &[u8]) -> Response<Body> {
    let mut i = s.inner.lock().unwrap();
    if i.failing.contains(&kind) {
        *i.reads.entry(kind).or_default() += u64::from(method == http::Method::GET);
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &status(500, "InternalError", "the fake API server was told to fail"));
    }
    let stored = |i: &Inner, name: &str| i.objects.get(path_of(kind)).and_then(|m| m.get(&format!("{ns}/{name}"))).cloned();
    if method == http::Method::GET {
        *i.reads.entry(kind).or_default() += 1;
        return match name.as_deref().and_then(|n| stored(&i, n)) {
            Some(o) => json_response(StatusCode::OK, &o),
            None => json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("{kind} {ns}/{name:?} not found"))),
        };
    }
    let mut object: Value = serde_json::from_slice(body).unwrap_or_default();
    let name = name.or_else(|| object["metadata"]["name"].as_str().map(String::from)).unwrap_or_default();
    object["metadata"]["namespace"] = json!(ns);
    object["kind"] = json!(kind);
    let sent_rv = object["metadata"]["resourceVersion"].as_str().map(String::from);
    let (code, reply) = if let Some(winner) = i.race.remove(kind) {
        i.store(winner);
        (409, status(409, "Conflict", "the object has been modified; please apply your changes to the latest version"))
    } else {
        let current = stored(&i, &name);
        let current_rv = current.as_ref().and_then(|c| c["metadata"]["resourceVersion"].as_str().map(String::from));
        match (method.as_str(), current) {
            ("POST", Some(_)) => (409, status(409, "AlreadyExists", &format!("{kind} {ns}/{name} already exists"))),
            ("POST", None) => (201, object.clone()),
            ("PUT", None) => (404, status(404, "NotFound", &format!("{kind} {ns}/{name} not found"))),
            ("PUT", Some(_)) if sent_rv != current_rv => (409, status(409, "Conflict", "the object has been modified")),
            ("PUT", Some(_)) => (200, object.clone()),
            _ => (405, status(405, "MethodNotAllowed", "the fake API server gets, creates and replaces by name")),
        }
    };
    let reply = if code < 300 {
        let rv = i.store(object.clone());
        let mut o = object.clone();
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        o
    } else {
        reply
    };
    i.writes.push(Write { kind, method: method.to_string(), namespace: ns, name, code, who: who.to_string(), object });
    drop(i);
    s.tick.send_modify(|t| *t += 1);
    json_response(StatusCode::from_u16(code).unwrap(), &reply)
}

fn key_of(object: &Value) -> String {
    let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
    format!("{ns}/{}", object["metadata"]["name"].as_str().expect("objects have a name"))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    line.into()
}

type Body = BoxBody<Bytes, Infallible>;

fn query_of(query: &str) -> BTreeMap<String, String> {
    query.split('&').filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), percent_decode(v)))).collect()
}

fn answer(s: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = query_of(req.uri().query().unwrap_or(""));
    let seen = Seen { path: path.clone(), query };
    let missing = {
        let mut i = s.inner.lock().unwrap();
        i.seen.push(seen.clone());
        i.missing.iter().any(|p| *p == path)
    };
    let Some(&(kind, api_version, path)) = RESOURCES.iter().find(|r| r.2 == path).filter(|_| !missing) else {
        return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("the fake API server does not serve {path}")));
    };
    if req.method() != http::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "the fake API server only lists and watches"),
        );
    }
    let selector = match seen.query.get("fieldSelector").map(|f| FieldSelector::parse(f)) {
        None => FieldSelector::default(),
        Some(Ok(f)) => f,
        Some(Err(bad)) => return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", &bad)),
    };
    if !seen.is_watch() {
        return list(s, kind, api_version, path, &selector);
    }
    let from: u64 = seen.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (compacted, epoch) = {
        let i = s.inner.lock().unwrap();
        (i.compacted, i.epoch)
    };
    if from < compacted {
        let gone = status(410, "Expired", &format!("too old resource version: {from} ({compacted})"));
        let body = Full::new(event_line("ERROR", &gone)).boxed();
        return Response::builder().header("content-type", "application/json").body(body).unwrap();
    }
    watch_stream(s.clone(), path, from, epoch, selector)
}

/// `%XX` escapes (and `+`) of a query value decoded.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(c) => out.push(c),
                    None => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The field selectors the fake understands: `spec.nodeName=X` (anything else is refused 400,
/// so a test never passes on a selector the server silently ignored).
#[derive(Clone, Debug, Default)]
struct FieldSelector {
    node_name: Option<String>,
}

impl FieldSelector {
    fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut f = FieldSelector::default();
        for term in s.split(',').filter(|t| !t.is_empty()) {
            match term.split_once('=') {
                Some(("spec.nodeName", v)) => f.node_name = Some(v.to_string()),
                _ => return Err(format!("the fake API server does not support the field selector {term:?}")),
            }
        }
        Ok(f)
    }

    /// Bookmarks carry no fields and always pass, as on the real server.
    fn matches(&self, object: &Value) -> bool {
        match &self.node_name {
            None => true,
            Some(n) => object.get("spec").is_none() || object["spec"]["nodeName"].as_str() == Some(n),
        }
    }
}

/// Answers a TokenReview as the API server does: authenticated only for a known token whose
/// audiences meet the requested ones (all of its audiences when none are requested).
fn token_review(s: &Shared, body: &[u8]) -> Response<Body> {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let spec = review.get("spec").cloned().unwrap_or_default();
    let mut i = s.inner.lock().unwrap();
    let query = [("spec".to_string(), spec.to_string())].into_iter().collect();
    i.seen.push(Seen { path: TOKEN_REVIEWS.into(), query });
    let wanted: Vec<String> = serde_json::from_value(spec["audiences"].clone()).unwrap_or_default();
    let status = match i.tokens.get(spec["token"].as_str().unwrap_or_default()) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some((user, audiences, pod)) => {
            let met: Vec<&String> =
                if wanted.is_empty() { audiences.iter().collect() } else { audiences.iter().filter(|a| wanted.contains(a)).collect() };
            if met.is_empty() {
                json!({"authenticated": false, "error": format!("invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {wanted:?}")})
            } else {
                let extra = pod.as_ref().map(|p| json!({"authentication.kubernetes.io/pod-name": [p]})).unwrap_or(json!({}));
                json!({"authenticated": true, "audiences": met, "user": {"username": user, "extra": extra}})
            }
        }
    };
    let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": spec, "status": status});
    json_response(StatusCode::CREATED, &answer)
}

fn list(s: &Shared, kind: &str, api_version: &str, path: &'static str, selector: &FieldSelector) -> Response<Body> {
    let i = s.inner.lock().unwrap();
    let items: Vec<Value> = i
        .objects
        .get(path)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| selector.matches(o))
        .map(|o| {
            // The API server leaves the type out of the items of a typed list.
            let mut o = o.clone();
            o.as_object_mut().unwrap().retain(|k, _| k != "kind" && k != "apiVersion");
            o
        })
        .collect();
    let body = json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": {"resourceVersion": i.rv.to_string()}, "items": items});
    json_response(StatusCode::OK, &body)
}

/// The events of `path` after `from`, then every later one, until the watches are dropped.
fn watch_stream(s: Arc<Shared>, path: &'static str, from: u64, epoch: u64, selector: FieldSelector) -> Response<Body> {
    let tick = s.tick.subscribe();
    // The first event is the first after `from`; later ones follow the last sent in log order
    // (a bookmark may carry the resourceVersion of the event before it).
    let events = futures_util::stream::unfold((s, tick, None::<u64>), move |(s, mut tick, mut sent)| {
        let selector = selector.clone();
        async move {
            loop {
                {
                    let mut i = s.inner.lock().unwrap();
                    if i.epoch != epoch {
                        return None;
                    }
                    let next = i.log.iter().find(|e| e.path == path && sent.map_or(e.rv > from, |seq| e.seq > seq));
                    if let Some(e) = next {
                        let (frame, seq) = (selector.matches(&e.object).then(|| Frame::data(e.line.clone())), e.seq);
                        sent = Some(seq);
                        let d = i.delivered.entry(path).or_default();
                        *d = (*d).max(seq);
                        drop(i);
                        // An event the selector filters out is skipped, not sent.
                        match frame {
                            Some(frame) => return Some((Ok::<_, Infallible>(frame), (s, tick, sent))),
                            None => continue,
                        }
                    }
                }
                if tick.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    let body = StreamBody::new(events).boxed();
    Response::builder().header("content-type", "application/json").body(body).unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed())
        .unwrap()
}

//! The agent's side of the CNI plugin protocol (`ferry_cni::protocol`): one JSON request line
//! per connection on a root-only Unix socket. ADD answers only after a pod that must be captured
//! is fully enrolled (rules installed and the node proxy's ack), so the application never starts
//! uncaptured; any failure leaves no rules behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_cni::protocol::{AgentRequest, AgentResponse, PodEvent, MAX_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::pods::{pod_key, PodEntry, PodRecord, Sandbox};
use super::Agent;
use ferry_core::k8s::capture::{decide, Capture};
use ferry_sys::Netns;

const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// CNI requests served at once; a node starts pods at a few per second.
const MAX_CNI_CONNECTIONS: usize = 64;

/// The socket, owner-only from the moment it exists (a stale socket file is replaced).
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    crate::net::bind_private(path, |p| UnixListener::bind(p))
}

fn sandbox(ev: &PodEvent) -> Sandbox<'_> {
    Sandbox { pod_uid: &ev.pod_uid, container_id: &ev.container_id }
}

/// How a CNI event names its sandbox in messages and logs.
fn describe(ev: &PodEvent) -> String {
    let uid = if ev.pod_uid.is_empty() { "no uid" } else { &ev.pod_uid };
    format!("pod {}/{} ({uid}), sandbox {}", ev.pod_namespace, ev.pod_name, ev.container_id)
}

fn response_line(resp: &AgentResponse) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

fn ok(enrolled: bool, message: impl Into<String>) -> AgentResponse {
    AgentResponse { ok: true, enrolled, message: message.into() }
}

fn fail(message: impl Into<String>) -> AgentResponse {
    AgentResponse { ok: false, enrolled: false, message: message.into() }
}

impl Agent {
    /// Serves CNI requests: at most `MAX_CNI_CONNECTIONS` at once (more are closed at once
    /// and counted; the runtime retries), each bounded by `READ_TIMEOUT`.
    pub(crate) async fn serve_cni(self: Arc<Self>, listener: UnixListener) {
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_CNI_CONNECTIONS));
        loop {
            let (s, _) = crate::listen::accept("cni", || listener.accept()).await;
            let Ok(place) = places.clone().try_acquire_owned() else {
                metrics::counter!("ferry_connections_shed_total", "listener" => "cni", "reason" => "limit").increment(1);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.cni_conn(s).await;
                drop(place);
            });
        }
    }

    async fn cni_conn(self: Arc<Self>, stream: UnixStream) {
        let (uid, pid) = match stream.peer_cred() {
            Ok(c) => (Ok(c.uid()), c.pid()),
            Err(e) => (Err(e), None),
        };
        let allowed = super::peer_allowed("cni", uid, pid);
        let (r, mut w) = stream.into_split();
        // The request is read (bounded) even from a refused peer, so the refusal reaches it
        // instead of a broken pipe on its write.
        let mut line = String::new();
        let mut reader = BufReader::new(r.take(MAX_LINE_BYTES as u64));
        let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
        if let Err(refused) = allowed {
            let _ = w.write_all(&response_line(&fail(refused))).await;
            return;
        }
        let resp = match read {
            Ok(Ok(_)) => match serde_json::from_str::<AgentRequest>(line.trim_end()) {
                Ok(req) => self.cni_request(req).await,
                Err(e) => fail(format!("malformed request: {e}")),
            },
            Ok(Err(e)) => fail(format!("cannot read the request: {e}")),
            Err(_) => fail("no request within 10s"),
        };
        let _ = w.write_all(&response_line(&resp)).await;
    }

    async fn cni_request(&self, req: AgentRequest) -> AgentResponse {
        let command = req.command_name();
        let started = std::time::Instant::now();
        let resp = match req {
            AgentRequest::Add(ev) => self.cni_add(ev).await,
            AgentRequest::Del(ev) => self.cni_del(ev).await,
            AgentRequest::Check(ev) => self.cni_check(ev).await,
            AgentRequest::Status if self.proxies_connected() > 0 => ok(false, "ready"),
            AgentRequest::Status => fail(format!("no node proxy is connected to {}", self.args.zds_socket.display())),
        };
        let outcome = if resp.ok { "ok" } else { "refused" };
        metrics::counter!("ferry_agent_cni_requests_total", "command" => command, "result" => outcome).increment(1);
        // From a parsed request to its answer: an ADD's wait for the pod and its enrollment.
        metrics::histogram!(crate::telemetry::metrics::CNI_DURATION, "command" => command, "result" => outcome)
            .record(started.elapsed().as_secs_f64());
        if !resp.ok {
            tracing::warn!(command, error = %resp.message, "CNI request refused");
        }
        resp
    }

    async fn cni_add(&self, ev: PodEvent) -> AgentResponse {
        let pod = format!("{}/{}", ev.pod_namespace, ev.pod_name);
        if ev.container_id.is_empty() {
            return fail(format!("pod {pod}: CNI_CONTAINERID is empty, so a later DEL could not be told apart from another sandbox's"));
        }
        let netns = match Netns::open(Path::new(&ev.netns)) {
            Ok(n) => Arc::new(n),
            Err(e) => return fail(format!("pod {pod}: netns {e}")),
        };
        let Some(state) = self.wait_for_pod(&ev.pod_namespace, &ev.pod_name).await else {
            return fail(format!(
                "pod {pod} is not in the cluster state after {:?}; cannot decide whether to capture it",
                self.args.pod_wait
            ));
        };
        let decision = state.pod(&ev.pod_namespace, &ev.pod_name).map(|p| decide(state.namespace(&ev.pod_namespace), p));
        let uid = pod_key(&ev.pod_uid, &ev.pod_namespace, &ev.pod_name);
        let mut cache = self.pods.lock().await;
        if let Some(old) = cache.pods.get(&uid) {
            if old.netns.id() != netns.id() && old.record.enrolled {
                tracing::info!(%pod, "sandbox re-created; releasing the old one");
                let _ = self.release(&mut cache, &uid).await;
            }
        }
        let record = PodRecord {
            uid: uid.clone(),
            namespace: ev.pod_namespace,
            name: ev.pod_name,
            netns_path: ev.netns.into(),
            container_id: ev.container_id,
            ips: ev.ips,
            enrolled: false,
        };
        cache.pods.insert(uid.clone(), PodEntry { record, netns });
        let resp = match decision {
            Some(Capture::Enroll) => match self.enroll(&mut cache, &uid).await {
                Ok(()) => ok(true, format!("pod {pod} enrolled")),
                Err(e) => {
                    cache.pods.remove(&uid);
                    fail(format!("pod {pod} must be captured but enrollment failed: {e}"))
                }
            },
            Some(Capture::Skip(reason)) => ok(false, format!("pod {pod} not captured: {reason}")),
            None => fail(format!("pod {pod} disappeared from the cluster state")),
        };
        cache.save();
        resp
    }

    /// The cluster state once it holds the pod (the API object exists before its sandbox).
    async fn wait_for_pod(&self, ns: &str, name: &str) -> Option<Arc<ferry_core::k8s::objects::ClusterState>> {
        let mut rx = self.cluster.clone();
        let wait = async {
            loop {
                let s = rx.borrow_and_update().clone();
                if s.pod(ns, name).is_some() {
                    return Some(s);
                }
                rx.changed().await.ok()?;
            }
        };
        tokio::time::timeout(self.args.pod_wait, wait).await.ok().flatten()
    }

    /// Releases and forgets the sandbox's record. A DEL of a sandbox the agent does not hold
    /// (an old sandbox of a re-created pod, a retry, a pod never captured) changes nothing:
    /// DEL must be idempotent, and releasing another sandbox would un-capture a live pod.
    async fn cni_del(&self, ev: PodEvent) -> AgentResponse {
        let mut cache = self.pods.lock().await;
        let Some(uid) = cache.sandbox_record(&sandbox(&ev)).map(|e| e.record.uid.clone()) else {
            let sandbox = describe(&ev);
            tracing::info!(%sandbox, "CNI DEL for a sandbox the agent does not hold; nothing changed");
            return ok(false, format!("{sandbox} is not known; nothing changed"));
        };
        if cache.pods.get(&uid).is_some_and(|e| e.record.enrolled) {
            if let Err(e) = self.release(&mut cache, &uid).await {
                tracing::info!(%uid, error = %e, "rules could not all be removed (the sandbox may already be gone)");
            }
        }
        cache.pods.remove(&uid);
        cache.save();
        ok(false, "pod forgotten")
    }

    async fn cni_check(&self, ev: PodEvent) -> AgentResponse {
        let state = self.cluster.borrow().clone();
        let cache = self.pods.lock().await;
        let Some(e) = cache.sandbox_record(&sandbox(&ev)) else {
            return fail(format!("{} was never added", describe(&ev)));
        };
        match super::pods::wants_capture(&state, &e.record) {
            Some(true) if !e.record.enrolled => fail("pod must be captured but is not enrolled"),
            _ => ok(e.record.enrolled, "consistent"),
        }
    }
}

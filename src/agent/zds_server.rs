//! The agent's side of ZDS (protocols.md §3.3): accept node proxies (rate-limited, root peers
//! only), read their hello, replay every enrolled pod then `SnapshotSent`, and afterwards send
//! new pods to the most recently connected proxy and deletions to all, strictly one request
//! and one ack at a time per connection.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Agent;
use crate::zds::{self, WorkloadRequest, WorkloadResponse, ZdsError, ZdsHello, ZdsListener, ZdsSocket};
use ferry_sys::Netns;

const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Node proxies connected at once: one, plus a new one during an upgrade, with room to spare.
const MAX_ZDS_CONNECTIONS: usize = 8;

pub(crate) struct ConnHandle {
    id: u64,
    tx: mpsc::Sender<Cmd>,
}

struct Cmd {
    req: WorkloadRequest,
    netns: Option<Arc<Netns>>,
    reply: oneshot::Sender<Result<(), String>>,
}

#[derive(Debug)]
enum Exchange {
    /// The connection is unusable.
    Transport(String),
    /// The proxy answered with an error.
    Nack(String),
}

async fn exchange(sock: &ZdsSocket, req: &WorkloadRequest, netns: Option<&Netns>) -> Result<(), Exchange> {
    sock.send(req, netns.map(|n| n.as_fd())).await.map_err(|e| Exchange::Transport(e.to_string()))?;
    let resp = tokio::time::timeout(ACK_TIMEOUT, sock.recv::<WorkloadResponse>())
        .await
        .map_err(|_| Exchange::Transport(format!("no ack within {ACK_TIMEOUT:?}")))?
        .map_err(|e| Exchange::Transport(e.to_string()))?;
    match zds::ack_error(&resp.msg) {
        Some("") => Ok(()),
        Some(e) => Err(Exchange::Nack(e.to_string())),
        None => Err(Exchange::Transport("response is not an ack".into())),
    }
}

impl Agent {
    pub(crate) async fn serve_zds(self: Arc<Self>, listener: ZdsListener) {
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_ZDS_CONNECTIONS));
        loop {
            let sock = crate::listen::accept("zds", || listener.accept()).await;
            match places.clone().try_acquire_owned() {
                Ok(place) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.zds_conn(sock).await;
                        drop(place);
                    });
                }
                Err(_) => metrics::counter!("ferry_connections_shed_total", "listener" => "zds", "reason" => "limit").increment(1),
            }
            // At most five new proxy connections per second.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn zds_conn(self: Arc<Self>, sock: ZdsSocket) {
        if super::peer_allowed("zds", sock.peer_uid(), None).is_err() {
            return;
        }
        match tokio::time::timeout(ACK_TIMEOUT, sock.recv::<ZdsHello>()).await {
            Ok(Ok(h)) if h.msg.version == zds::Version::V1 as i32 => {}
            other => {
                tracing::warn!(result = ?other.map(|r| r.map(|h| h.msg.version)), "node proxy did not send a V1 hello");
                return;
            }
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        if let Err(e) = self.send_snapshot(&sock, id, tx).await {
            tracing::warn!(conn = id, error = ?e, "snapshot to the node proxy failed; dropping the connection");
            self.drop_conn(id);
            return;
        }
        self.zds_loop(&sock, id, rx).await;
        self.drop_conn(id);
        tracing::info!(conn = id, "node proxy disconnected");
    }

    /// Replays every enrolled pod, then `SnapshotSent`, and registers the connection as the
    /// newest, all under the pod-cache lock so concurrent enrollments queue behind it.
    async fn send_snapshot(&self, sock: &ZdsSocket, id: u64, tx: mpsc::Sender<Cmd>) -> Result<(), Exchange> {
        let cache = self.pods.lock().await;
        let mut sent = 0;
        for e in cache.pods.values().filter(|e| e.record.enrolled) {
            let sa = self.service_account(&e.record.namespace, &e.record.name);
            let req = zds::add(&e.record.uid, &e.record.name, &e.record.namespace, &sa);
            match exchange(sock, &req, Some(&e.netns)).await {
                Ok(()) => sent += 1,
                Err(Exchange::Nack(err)) => tracing::warn!(pod = %super::pod_name(e), error = %err, "node proxy NACKed a snapshot entry"),
                Err(t) => return Err(t),
            }
        }
        exchange(sock, &zds::snapshot_sent(), None).await?;
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).push(ConnHandle { id, tx });
        tracing::info!(conn = id, pods = sent, "node proxy connected; snapshot sent");
        Ok(())
    }

    async fn zds_loop(&self, sock: &ZdsSocket, id: u64, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let r = exchange(sock, &cmd.req, cmd.netns.as_deref()).await;
                    let broken = matches!(r, Err(Exchange::Transport(_)));
                    let _ = cmd.reply.send(r.map_err(|e| match e { Exchange::Nack(m) | Exchange::Transport(m) => m }));
                    if broken {
                        return;
                    }
                }
                // While idle the proxy must stay silent: a message here means it left or broke
                // protocol. (recv is cancel-safe: it completes only with a datagram in hand.)
                m = sock.recv::<WorkloadResponse>() => {
                    match m {
                        Err(ZdsError::Closed) => {}
                        other => tracing::warn!(conn = id, result = ?other.map(|m| m.msg), "unsolicited ZDS message; closing"),
                    }
                    return;
                }
            }
        }
    }

    fn drop_conn(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.id != id);
    }

    pub(crate) fn proxies_connected(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends a pod to the newest proxy and waits for its ack.
    pub(crate) async fn zds_add(&self, uid: &str, ns: &str, name: &str, sa: &str, netns: Arc<Netns>) -> Result<(), String> {
        let tx = self.conns.lock().unwrap_or_else(|e| e.into_inner()).last().map(|c| c.tx.clone());
        let tx = tx.ok_or_else(|| format!("no node proxy is connected to {}", self.args.zds_socket.display()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Cmd { req: zds::add(uid, name, ns, sa), netns: Some(netns), reply })
            .await
            .map_err(|_| "the node proxy disconnected".to_string())?;
        rx.await.map_err(|_| "the node proxy disconnected".to_string())?.map_err(|e| format!("node proxy refused the pod: {e}"))
    }

    /// Tells every connected proxy to drop a pod; failures are logged (the proxy reconciles
    /// on its next snapshot).
    pub(crate) async fn zds_del(&self, uid: &str) {
        let txs: Vec<_> = self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|c| c.tx.clone()).collect();
        for tx in txs {
            let (reply, rx) = oneshot::channel();
            if tx.send(Cmd { req: zds::del(uid), netns: None, reply }).await.is_ok() {
                if let Ok(Err(e)) = rx.await {
                    tracing::warn!(%uid, error = %e, "node proxy did not acknowledge DelWorkload");
                }
            }
        }
    }
}

//! The node proxy's ZDS client: connect to the agent's socket, say hello, then answer every
//! request with exactly one ack, in order (protocols.md §3.3). Reconnects with backoff (10 ms
//! doubling to 15 s) and keeps running proxies across reconnects; stops for good on a protocol
//! violation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Reply, WorkloadManager, RETRY_INTERVAL};
use crate::drain::DrainWatch;
use crate::zds::{ack, Version, WorkloadRequest, ZdsError, ZdsHello, ZdsSocket};

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

enum End {
    Retry(String),
    Fatal(String),
}

pub(crate) async fn run(mgr: Arc<Mutex<WorkloadManager>>, path: PathBuf, stop: DrainWatch) {
    let mut backoff = BACKOFF_START;
    loop {
        let end = tokio::select! {
            e = session(&mgr, &path, &mut backoff) => e,
            _ = stop.draining() => return,
        };
        lock(&mgr).disconnected();
        match end {
            End::Fatal(e) => {
                tracing::error!(error = %e, "ZDS protocol violation; the in-pod workload manager stops (restart the node proxy)");
                return;
            }
            End::Retry(e) => tracing::warn!(socket = %path.display(), error = %e, retry_in = ?backoff, "not connected to the node agent"),
        }
        tokio::time::sleep(backoff.mul_f64(0.8 + fastrand::f64() * 0.4)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn lock(m: &Mutex<WorkloadManager>) -> std::sync::MutexGuard<'_, WorkloadManager> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn session(mgr: &Mutex<WorkloadManager>, path: &std::path::Path, backoff: &mut Duration) -> End {
    let sock = match ZdsSocket::connect(path) {
        Ok(s) => s,
        Err(e) => return End::Retry(format!("connect: {e}")),
    };
    if let Err(e) = sock.send(&ZdsHello { version: Version::V1 as i32 }, None).await {
        return End::Retry(format!("hello: {e}"));
    }
    *backoff = BACKOFF_START;
    lock(mgr).connected();
    tracing::info!(socket = %path.display(), "connected to the node agent");
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    loop {
        tokio::select! {
            m = sock.recv::<WorkloadRequest>() => {
                let reply = match m {
                    Ok(m) => lock(mgr).handle(m.msg, m.fds),
                    Err(ZdsError::Closed) => return End::Retry("the agent closed the connection".into()),
                    Err(e) => Reply::Reconnect(format!("failure to read message : {e}")),
                };
                let text = match &reply {
                    Reply::Ack => String::new(),
                    Reply::Nack(e) | Reply::Reconnect(e) | Reply::Fatal(e) => e.clone(),
                };
                if !text.is_empty() {
                    tracing::warn!(error = %text, "NACK to the node agent");
                }
                if let Err(e) = sock.send(&ack(&text), None).await {
                    return End::Retry(format!("ack: {e}"));
                }
                match reply {
                    Reply::Fatal(e) => return End::Fatal(e),
                    Reply::Reconnect(e) => return End::Retry(e),
                    _ => {}
                }
            }
            _ = retry.tick() => lock(mgr).retry_pending(),
        }
    }
}

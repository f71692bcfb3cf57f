//! The HBONE listener side of one TLS connection: handshake (bounded by a deadline, so a
//! half-open peer cannot hold a slot; invariant P10), peer identity, HTTP/2 with Istio's server
//! settings, keepalive PINGs, and GOAWAY on drain. Each CONNECT stream goes to a handler task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::budget::{Budget, Chunk, TotalBudget};
use crate::config::H2Config;
use crate::drain::DrainWatch;
use crate::tls::verify::leaf_identity;
use crate::tls::ALPN_H2;
use ferry_core::identity::Identity;

/// What the listener learned about one TLS connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The address the connection arrived on (the pod IP in the destination's namespace).
    pub(crate) local: SocketAddr,
    pub(crate) identity: Identity,
    /// Budget for bytes queued to this peer.
    pub(crate) budget: Budget,
    /// Places for streams setting up at once on this connection.
    pub(crate) setups: Arc<Semaphore>,
}

/// What one connection may hold, from the proxy's limits.
#[derive(Clone, Debug)]
pub(crate) struct ServeLimits {
    pub(crate) budget: TotalBudget,
    pub(crate) setups_per_connection: usize,
    /// A connection without streams for this long is closed.
    pub(crate) idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("TLS handshake failed: {}", crate::tls::describe_tls_error(.0))]
    Tls(std::io::Error),
    #[error("handshake did not complete within {0:?}")]
    Timeout(Duration),
    #[error("peer did not negotiate ALPN h2")]
    Alpn,
    #[error("peer presented no client certificate; HBONE requires mutual TLS")]
    NoClientCertificate,
    #[error("peer identity: {0}")]
    Identity(#[from] crate::tls::verify::PeerIdentityError),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
}

/// Handles one CONNECT stream; implemented by the inbound proxy and by `ferry waypoint`.
pub(crate) trait StreamHandler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<RecvStream>,
        respond: SendResponse<Chunk>,
        conn: Arc<ConnInfo>,
        drain: DrainWatch,
    ) -> impl std::future::Future<Output = ()> + Send + 'static;
}

/// The task of one CONNECT stream: its handler's future, holding the connection's count of
/// open streams (its idle timer's input) until it ends (stored once; see `crate::task`).
pub(crate) fn stream_task<F: Future<Output = ()>>(stream: F, open: Arc<()>) -> crate::task::Holding<F, Arc<()>> {
    crate::task::holding(stream, open)
}

/// Serves one accepted TCP connection on the HBONE port until the peer leaves, keepalive
/// fails, or the drain forces it closed.
pub(crate) async fn serve<H: StreamHandler>(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    cfg: &H2Config,
    handshake_timeout: Duration,
    limits: &ServeLimits,
    drain: DrainWatch,
    handler: Arc<H>,
) -> Result<(), ServeError> {
    let (peer, local) = (tcp.peer_addr().map_err(ServeError::Tls)?, tcp.local_addr().map_err(ServeError::Tls)?);
    let handshake = async {
        let mut stream = TlsAcceptor::from(tls).accept(tcp).await.map_err(|e| match crate::tls::is_no_certificate(&e) {
            true => ServeError::NoClientCertificate,
            false => ServeError::Tls(e),
        })?;
        stream.get_mut().1.set_buffer_limit(Some(crate::tls::SEND_BUFFER_LIMIT));
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(ServeError::Alpn);
        }
        let leaf = session.peer_certificates().and_then(|c| c.first()).ok_or(ServeError::NoClientCertificate)?;
        let identity = leaf_identity(leaf)?;
        let conn = h2::server::Builder::new()
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_frame_size(cfg.frame_size)
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(200)
            .max_send_buffer_size(400 * 1024)
            .handshake::<_, Chunk>(stream)
            .await?;
        Ok::<_, ServeError>((conn, identity))
    };
    let (mut conn, identity) =
        tokio::time::timeout(handshake_timeout, handshake).await.map_err(|_| ServeError::Timeout(handshake_timeout))??;
    let info = Arc::new(ConnInfo {
        peer: crate::net::canonical(peer),
        local: crate::net::canonical(local),
        identity,
        budget: limits.budget.connection(),
        setups: Arc::new(Semaphore::new(limits.setups_per_connection)),
    });
    let keepalive = super::client::keepalive(conn.ping_pong(), cfg.ping_interval, cfg.ping_timeout);
    tokio::pin!(keepalive);
    let mut goaway_sent = false;
    // A connection that carries no stream for the idle timeout is closed (GOAWAY), so a peer
    // cannot park descriptors on 15008 forever. Clients release idle pooled connections sooner.
    let streams = Arc::new(());
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let stream = handler.clone().handle(req, respond, info.clone(), drain.clone());
                    tokio::spawn(stream_task(stream, streams.clone()));
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                }
                Some(Err(e)) => {
                    tracing::debug!(peer = %info.peer, error = %e, "HBONE connection error");
                    return Err(e.into());
                }
                None => return Ok(()),
            },
            _ = drain.draining(), if !goaway_sent => {
                conn.graceful_shutdown();
                goaway_sent = true;
            }
            _ = drain.forced() => return Ok(()),
            _ = &mut idle, if !goaway_sent => {
                if Arc::strong_count(&streams) == 1 {
                    tracing::debug!(peer = %info.peer, "HBONE connection idle; closing it");
                    metrics::counter!("ferry_hbone_idle_closed_total").increment(1);
                    conn.graceful_shutdown();
                    goaway_sent = true;
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                }
            }
            _ = &mut keepalive => {
                tracing::warn!(peer = %info.peer, "HBONE keepalive timed out; closing the connection");
                return Ok(());
            }
        }
    }
}

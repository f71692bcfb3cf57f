//! ZDS framing (protocols.md §3.1): SOCK_SEQPACKET Unix sockets, one protobuf message per
//! datagram with no length prefix, at most 1024 bytes, a pod's netns descriptor as SCM_RIGHTS in
//! the same datagram as its `AddWorkload`. Used by both the node agent (server) and the node
//! proxy (client), so each can pair with Istio's counterpart.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use prost::Message;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use ferry_sys::seqpacket;

pub(crate) use crate::proto::workload::zds::*;

/// Both sides read into a buffer of this size; larger messages are a protocol error.
pub(crate) const MAX_MESSAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ZdsError {
    #[error("ZDS socket: {0}")]
    Io(#[from] io::Error),
    #[error("ZDS message truncated (over {MAX_MESSAGE} bytes or too many descriptors)")]
    Truncated,
    #[error("ZDS message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("cannot decode ZDS message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ZDS peer closed the connection")]
    Closed,
}

/// One ZDS connection.
pub(crate) struct ZdsSocket {
    fd: AsyncFd<OwnedFd>,
}

/// One received message and the descriptors that came with it.
pub(crate) struct Incoming<M> {
    pub(crate) msg: M,
    pub(crate) fds: Vec<OwnedFd>,
}

impl ZdsSocket {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(ZdsSocket { fd: seqpacket::register(fd)? })
    }

    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        Self::new(seqpacket::connect_to(path)?)
    }

    pub(crate) fn peer_uid(&self) -> io::Result<u32> {
        seqpacket::peer_uid(self.fd.as_fd())
    }

    pub(crate) async fn send<M: Message>(&self, msg: &M, fd: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let bytes = msg.encode_to_vec();
        if bytes.len() > MAX_MESSAGE {
            return Err(ZdsError::TooLarge(bytes.len()));
        }
        self.fd.async_io(Interest::WRITABLE, |s| seqpacket::send(s.as_fd(), &bytes, fd)).await?;
        Ok(())
    }

    /// The next message; `Closed` when the peer hung up.
    pub(crate) async fn recv<M: Message + Default>(&self) -> Result<Incoming<M>, ZdsError> {
        let mut buf = [0u8; MAX_MESSAGE];
        let got = self.fd.async_io(Interest::READABLE, |s| seqpacket::recv(s.as_fd(), &mut buf)).await?;
        if got.truncated {
            return Err(ZdsError::Truncated);
        }
        if got.len == 0 && got.fds.is_empty() {
            return Err(ZdsError::Closed);
        }
        Ok(Incoming { msg: M::decode(&buf[..got.len])?, fds: got.fds })
    }
}

/// A listening ZDS socket (the node agent's side).
pub(crate) struct ZdsListener {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsListener {
    /// Binds `path` (replacing a stale socket file), owner-only from the moment it exists: the
    /// socket decides which identities a node proxy may serve (invariant P1).
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let fd = crate::net::bind_private(path, seqpacket::listen_at)?;
        Ok(ZdsListener { fd: seqpacket::register(fd)? })
    }

    pub(crate) async fn accept(&self) -> io::Result<ZdsSocket> {
        let fd = self.fd.async_io(Interest::READABLE, |l| seqpacket::accept(l.as_fd())).await?;
        ZdsSocket::new(fd)
    }
}

/// Helpers to build the oneof-wrapped messages.
pub(crate) fn add(uid: &str, name: &str, namespace: &str, service_account: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: uid.to_string(),
            workload_info: Some(WorkloadInfo { name: name.into(), namespace: namespace.into(), service_account: service_account.into() }),
        })),
    }
}

pub(crate) fn del(uid: &str) -> WorkloadRequest {
    WorkloadRequest { payload: Some(workload_request::Payload::Del(DelWorkload { uid: uid.to_string() })) }
}

#[cfg(test)]
pub(crate) fn keep(uid: &str) -> WorkloadRequest {
    WorkloadRequest { payload: Some(workload_request::Payload::Keep(KeepWorkload { uid: uid.to_string() })) }
}

pub(crate) fn snapshot_sent() -> WorkloadRequest {
    WorkloadRequest { payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})) }
}

pub(crate) fn ack(error: &str) -> WorkloadResponse {
    WorkloadResponse { payload: Some(workload_response::Payload::Ack(Ack { error: error.to_string() })) }
}

/// The error text of an ack; `Some("")` is success, `None` is not an ack at all.
pub(crate) fn ack_error(r: &WorkloadResponse) -> Option<&str> {
    match &r.payload {
        Some(workload_response::Payload::Ack(a)) => Some(a.error.as_str()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_match_the_contract() {
        // DelWorkload's uid is field 2: tag 0x12 inside WorkloadRequest.del (field 2, tag 0x12).
        assert_eq!(del("u").encode_to_vec(), vec![0x12, 0x03, 0x12, 0x01, b'u']);
        // SnapshotSent is field 3 with an empty body; never a zero-length datagram.
        assert_eq!(snapshot_sent().encode_to_vec(), vec![0x1a, 0x00]);
        assert_eq!(ack("").encode_to_vec(), vec![0x0a, 0x00]);
        assert_eq!(keep("u").encode_to_vec(), vec![0x2a, 0x03, 0x0a, 0x01, b'u']);
        let hello = ZdsHello { version: Version::V1 as i32 };
        assert_eq!(hello.encode_to_vec(), vec![0x08, 0x01]);
        let a = add("uid", "pod", "ns", "sa").encode_to_vec();
        assert_eq!(&a[..2], &[0x0a, (a.len() - 2) as u8]);
    }

    #[tokio::test]
    async fn descriptors_travel_with_their_message() {
        let dir = std::env::temp_dir().join(format!("ferry-zds-{}-{}", std::process::id(), fastrand::u32(..)));
        let path = dir.join("zds.sock");
        let listener = ZdsListener::bind(&path).unwrap();
        let client = ZdsSocket::connect(&path).unwrap();
        let server = listener.accept().await.unwrap();
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        server.send(&add("u1", "p", "n", "s"), Some(file.as_fd())).await.unwrap();
        server.send(&snapshot_sent(), None).await.unwrap();
        let m: Incoming<WorkloadRequest> = client.recv().await.unwrap();
        assert_eq!(m.fds.len(), 1);
        assert!(matches!(m.msg.payload, Some(workload_request::Payload::Add(_))));
        let m: Incoming<WorkloadRequest> = client.recv().await.unwrap();
        assert!(m.fds.is_empty());
        client.send(&ack(""), None).await.unwrap();
        let r: Incoming<WorkloadResponse> = server.recv().await.unwrap();
        assert_eq!(ack_error(&r.msg), Some(""));
        drop(client);
        assert!(matches!(server.recv::<WorkloadResponse>().await, Err(ZdsError::Closed)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

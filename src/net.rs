//! Socket creation for the data path, behind [`SocketFactory`] so the same proxy code creates
//! its listeners and upstream sockets in whichever network namespace it serves (its own in
//! dedicated mode, each pod's in in-pod mode).
//!
//! Every socket carries the packet mark (when configured) so the capture rules skip it, and
//! every TCP connection gets TCP_NODELAY and keepalives (protocols.md §1.1). Also the agent's
//! owner-only Unix socket files ([`bind_private`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use ferry_sys::Netns;

/// Listen backlog. Istio uses 128; connection-rate bursts overflow that on a busy node.
const BACKLOG: i32 = 1024;

#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub(crate) enabled: bool,
    pub(crate) time: Duration,
    pub(crate) interval: Duration,
    pub(crate) retries: u32,
    pub(crate) user_timeout: bool,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { enabled: true, time: Duration::from_secs(180), interval: Duration::from_secs(180), retries: 9, user_timeout: false }
    }
}

/// Creates sockets in one network namespace.
pub trait SocketFactory: Send + Sync + 'static {
    /// A listening TCP socket bound to `addr`. Returns whether IP_TRANSPARENT could be set.
    fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<(TcpListener, bool)>;
    /// An unconnected TCP socket for `family_of`'s family.
    fn socket(&self, family_of: SocketAddr) -> io::Result<TcpSocket>;
    /// Sets per-connection options on a dialled stream. Accepted streams inherit them from
    /// the listener (set once in `listen`), which saves several syscalls per connection.
    fn tune(&self, s: &TcpStream) {
        tune_stream(s, &self.keepalive());
    }
    fn keepalive(&self) -> Keepalive;
}

/// Options shared by the factories.
#[derive(Clone, Debug)]
pub struct SocketOptions {
    pub mark: Option<u32>,
    pub reuse_port: bool,
    pub keepalive: Keepalive,
}

/// Sockets in the proxy's own namespace (dedicated mode, admin, tests).
pub struct LocalSockets {
    pub opts: SocketOptions,
}

/// Sockets inside another namespace (in-pod mode): created after `setns` on this thread.
pub(crate) struct NetnsSockets {
    pub(crate) netns: Arc<Netns>,
    pub(crate) opts: SocketOptions,
}

impl SocketFactory for LocalSockets {
    fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<(TcpListener, bool)> {
        new_listener(addr, transparent, &self.opts)
    }
    fn socket(&self, family_of: SocketAddr) -> io::Result<TcpSocket> {
        new_socket(family_of, &self.opts)
    }
    fn keepalive(&self) -> Keepalive {
        self.opts.keepalive
    }
}

impl SocketFactory for NetnsSockets {
    fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<(TcpListener, bool)> {
        self.netns.run_in(|| new_listener(addr, transparent, &self.opts))?
    }
    fn socket(&self, family_of: SocketAddr) -> io::Result<TcpSocket> {
        self.netns.run_in(|| new_socket(family_of, &self.opts))?
    }
    fn keepalive(&self) -> Keepalive {
        self.opts.keepalive
    }
}

fn raw_socket(addr: SocketAddr, opts: &SocketOptions) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    if let Some(mark) = opts.mark {
        s.set_mark(mark)?;
    }
    Ok(s)
}

fn new_listener(addr: SocketAddr, transparent: bool, opts: &SocketOptions) -> io::Result<(TcpListener, bool)> {
    let s = raw_socket(addr, opts)?;
    s.set_reuse_address(true)?;
    if opts.reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    let transparent = transparent && set_transparent(&s, addr.ip()).is_ok();
    // Inherited by every accepted connection.
    s.set_tcp_nodelay(true)?;
    apply_keepalive(&SockRef::from(&s), &opts.keepalive);
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok((TcpListener::from_std(s.into())?, transparent))
}

fn new_socket(addr: SocketAddr, opts: &SocketOptions) -> io::Result<TcpSocket> {
    let s = raw_socket(addr, opts)?;
    Ok(TcpSocket::from_std_stream(s.into()))
}

fn set_transparent(s: &Socket, family: IpAddr) -> io::Result<()> {
    match family {
        IpAddr::V4(_) => {
            s.set_ip_transparent_v4(true)?;
            s.set_freebind_v4(true)
        }
        IpAddr::V6(_) => {
            s.set_ip_transparent_v6(true)?;
            s.set_freebind_v6(true)
        }
    }
}

pub(crate) fn tune_stream(s: &TcpStream, ka: &Keepalive) {
    let _ = s.set_nodelay(true);
    apply_keepalive(&SockRef::from(s), ka);
}

fn apply_keepalive(r: &SockRef<'_>, ka: &Keepalive) {
    if ka.enabled {
        let params = TcpKeepalive::new().with_time(ka.time).with_interval(ka.interval).with_retries(ka.retries);
        let _ = r.set_tcp_keepalive(&params);
        if ka.user_timeout {
            let _ = r.set_tcp_user_timeout(Some(ka.time + ka.interval * ka.retries));
        }
    }
}

/// Dials `dst` from a socket made by `factory`; with `source`, binds that (possibly foreign)
/// address first so the destination sees the original client (IP_TRANSPARENT).
pub(crate) async fn connect(
    factory: &dyn SocketFactory,
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = factory.socket(dst)?;
    if let Some(src) = source {
        set_transparent(&SockRef::from(&sock), src)?;
        // Choose the port at connect(), by 4-tuple: bind-time port search is linear in the
        // sockets (including TIME_WAIT) bound to this address, and dominated connection setup.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true);
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let stream = tokio::time::timeout(timeout, sock.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {dst} timed out after {timeout:?}")))??;
    factory.tune(&stream);
    Ok(stream)
}

/// The destination the client originally dialled before a REDIRECT (`SO_ORIGINAL_DST`), or the
/// socket's local address when the connection was not redirected.
pub(crate) fn original_dst(s: &TcpStream) -> io::Result<SocketAddr> {
    let r = SockRef::from(s);
    // A dual-stack listener sees IPv4 clients as v4-mapped; their conntrack entry is IPv4.
    let local = canonical(s.local_addr()?);
    let orig = if local.is_ipv4() { r.original_dst_v4() } else { r.original_dst_v6() };
    match orig.ok().and_then(|a| a.as_socket()) {
        Some(a) => Ok(canonical(a)),
        None => Ok(canonical(local)),
    }
}

/// Maps IPv4-mapped IPv6 addresses (from dual-stack listeners) back to IPv4.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Makes the next close of `s` send RST instead of FIN, to propagate a reset end to end.
pub(crate) fn set_reset_on_close(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Binds a Unix socket at `path` that no other user can reach, not even for a moment: `bind`
/// runs on a path inside a fresh 0700 directory next to `path`, the socket file is made 0600
/// there, and only then renamed into place. A rename is atomic and replaces a stale socket
/// file; the bound socket follows its inode. (Binding at `path` and chmod-ing afterwards
/// leaves the file as open as the umask allows until the chmod.)
pub(crate) fn bind_private<T>(path: &Path, bind: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("socket path {} names no file", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let staging = dir.join(format!(".{}.{:08x}.bind", name.to_string_lossy(), fastrand::u32(..)));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let tmp = staging.join("socket");
        let socket = bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(socket)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_private_socket_is_bound_out_of_reach_then_moved_into_place() {
        let dir = std::env::temp_dir().join(format!("ferry-bind-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        std::fs::write(&path, "a stale socket file").unwrap();
        let listener = bind_private(&path, |tmp| {
            let staging = std::fs::metadata(tmp.parent().unwrap()).unwrap();
            assert_eq!(staging.mode() & 0o777, 0o700, "bound inside a directory only its owner can enter");
            assert_eq!(tmp.parent().unwrap().parent(), Some(dir.as_path()), "on the same file system as the target");
            std::os::unix::net::UnixListener::bind(tmp)
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(&path).expect("the renamed socket accepts connections");
        assert!(listener.accept().is_ok());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["agent.sock"], "the staging directory is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Thin wrappers over Linux facilities that have no safe std/tokio API: network namespaces,
//! SOCK_SEQPACKET sockets with descriptor passing, and glibc's heap statistics and trim. Every
//! `unsafe` block in ferry lives in this crate (every other crate forbids `unsafe_code`); each
//! either takes ownership of a descriptor the kernel just handed us or calls an argument-only
//! glibc allocator function, and says why it is sound in a SAFETY comment.
//!
//! Invariant: a thread that enters another namespace always returns to its own before the
//! call returns; if it cannot, the process aborts rather than run on in the wrong namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

thread_local! {
    // The calling thread's own namespace, opened once: it only changes through `enter`.
    static HOME: std::cell::RefCell<Option<std::rc::Rc<Netns>>> = const { std::cell::RefCell::new(None) };
}

/// An open handle to a network namespace, identified by (device, inode) like ztunnel does.
#[derive(Debug)]
pub struct Netns {
    file: File,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// Opens a network namespace by path (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`).
    /// Anything that is not a network namespace is refused.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::checked(File::open(path)?).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Wraps a descriptor received from elsewhere (ZDS), refusing anything that is not a
    /// network namespace.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        Self::checked(File::from(fd))
    }

    fn checked(file: File) -> io::Result<Self> {
        if !is_namespace_file(&file) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file"));
        }
        let ns = Self::from_file(file)?;
        // setns with CLONE_NEWNET fails for any other kind of namespace.
        ns.run_in(|| ()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not a network namespace ({e})")))?;
        Ok(ns)
    }

    /// The calling thread's current network namespace.
    pub fn current() -> io::Result<Self> {
        Self::from_file(File::open("/proc/thread-self/ns/net")?)
    }

    fn from_file(file: File) -> io::Result<Self> {
        let m = file.metadata()?;
        Ok(Netns { file, dev: m.dev(), ino: m.ino() })
    }

    /// (st_dev, st_ino): two handles name the same namespace iff these are equal.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Runs `f` on this thread inside this namespace, then returns to the original one.
    /// Sockets created inside stay in this namespace for their whole life.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = HOME.with(|h| -> io::Result<std::rc::Rc<Netns>> {
            let mut h = h.borrow_mut();
            match &*h {
                Some(n) => Ok(n.clone()),
                None => Ok(h.insert(std::rc::Rc::new(Netns::current()?)).clone()),
            }
        })?;
        self.run_from(&home, f)
    }

    fn run_from<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> io::Result<T> {
        if home.id() == self.id() {
            return Ok(f());
        }
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(e) = setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing would create every later socket of this thread in a pod's namespace.
            eprintln!("fatal: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    }

    /// Moves the calling thread into this namespace for good (used by helper threads that
    /// serve inside one namespace, e.g. tests and the demo's applications).
    pub fn enter(&self) -> io::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        HOME.with(|h| *h.borrow_mut() = None);
        Ok(())
    }
}

/// Unix SOCK_SEQPACKET sockets with file-descriptor passing (ZDS, protocols.md §3.1).
pub mod seqpacket {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;

    use nix::sys::socket::{
        accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags,
        SockFlag, SockType, UnixAddr,
    };

    fn new_socket() -> io::Result<OwnedFd> {
        Ok(socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?)
    }

    /// A listening socket at `path` (a stale socket file is replaced).
    pub fn listen_at(path: &Path) -> io::Result<OwnedFd> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fd = new_socket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        listen(&fd, Backlog::new(16)?)?;
        Ok(fd)
    }

    /// Connects to the listener at `path` (the connection is immediate for Unix sockets).
    pub fn connect_to(path: &Path) -> io::Result<OwnedFd> {
        let fd = new_socket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(fd)
    }

    /// Accepts one connection (non-blocking; `WouldBlock` when none is pending).
    pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Sends one datagram, with at most one descriptor as SCM_RIGHTS in the same message.
    pub fn send(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
        let n = sendmsg::<UnixAddr>(sock.as_raw_fd(), &[IoSlice::new(data)], &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        if n != data.len() {
            return Err(io::Error::other(format!("short datagram write: {n} of {} bytes", data.len())));
        }
        Ok(())
    }

    /// One received datagram: its length and the descriptors that came with it.
    pub struct Received {
        pub len: usize,
        pub fds: Vec<OwnedFd>,
        pub truncated: bool,
    }

    /// Receives one datagram into `buf`. Every received descriptor is owned by the result,
    /// so extra ones are closed when dropped, never leaked.
    pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in our table for this message;
                // nothing else owns them.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        Ok(Received { len: msg.bytes, fds, truncated })
    }

    /// Registers a socket with the tokio reactor.
    pub fn register(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
        // SAFETY: an OwnedFd is open, and the AsyncFd owns it until dropped, so it stays the
        // same open descriptor for the AsyncFd's whole life.
        unsafe { tokio::io::unix::AsyncFd::register(fd).map_err(|e| e.into_parts().1) }
    }

    /// The uid of the process on the other end (SO_PEERCRED).
    pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
        Ok(nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)?.uid())
    }
}

/// Whether `file` is a namespace file (nsfs), as opposed to any other file.
pub fn is_namespace_file(file: &File) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::fstatfs(file).map(|s| s.filesystem_type().0 == NSFS_MAGIC).unwrap_or(false)
}

impl std::os::fd::AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Raises the open-file soft limit to the hard limit (a node proxy holds two descriptors per
/// proxied connection). Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// Free bytes glibc's allocator holds in its arenas (`mallinfo2().fordblks`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads allocator statistics and returns them by value.
    unsafe { libc::mallinfo2() }.fordblks
}

/// Stops glibc from giving memory back on every `free` at the top of a heap (and from
/// switching large buffers to fresh `mmap`s): bulk copies then reuse their buffers instead of
/// faulting in zeroed pages for each one. The heap reclaimer returns memory instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_heap(trim_threshold: usize, mmap_threshold: usize) -> bool {
    let as_int = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator parameters; glibc validates the values.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(trim_threshold)) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(mmap_threshold)) == 1
    }
}

/// Returns free pages of every glibc arena to the kernel (`malloc_trim(0)`), which glibc's
/// `free` does only for the top of the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers; it locks each arena while it walks it.
    unsafe {
        libc::malloc_trim(0);
    }
}

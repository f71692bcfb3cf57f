//! Thin wrappers over Linux facilities that have no safe std/tokio API: network namespaces.
//! Every `unsafe` block in ferry lives in this module (none is needed yet).
//!
//! Invariant: a thread that enters another namespace always returns to its own before the
//! call returns; if it cannot, the process aborts rather than run on in the wrong namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// An open handle to a network namespace, identified by (device, inode) like ztunnel does.
#[derive(Debug)]
pub struct Netns {
    file: File,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// Opens a network namespace by path (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`).
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(File::open(path)?)
    }

    /// The calling thread's current network namespace.
    pub fn current() -> io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn from_file(file: File) -> io::Result<Self> {
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
        let home = Netns::current()?;
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
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }
}

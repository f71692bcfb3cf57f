//! Test helpers: self-cleaning temp directories and a fake ferry node agent on a real Unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A directory removed on drop; named per process and per call so parallel tests never collide.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ferry-cni-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake ferry node agent: a real `UnixListener` that records every request line and answers
/// each with the same canned line, or, when `reply` is `None`, never answers.
pub(crate) struct FakeAgent {
    /// Held so the socket's directory lives exactly as long as the agent.
    _dir: TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FakeAgent {
    pub(crate) fn start(reply: Option<&str>) -> Self {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake agent");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, flag, reply) = (requests.clone(), stop.clone(), reply.map(str::to_string));
        let handle = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    serve(conn, &reqs, reply.as_deref(), &flag);
                }
            }
        });
        FakeAgent { _dir: dir, socket, requests, stop, handle: Some(handle) }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Requests received so far, parsed.
    pub(crate) fn requests(&self) -> Vec<serde_json::Value> {
        self.requests.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("request is JSON")).collect()
    }
}

fn serve(conn: UnixStream, requests: &Mutex<Vec<String>>, reply: Option<&str>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    requests.lock().unwrap().push(line);
    match reply {
        Some(reply) => {
            let _ = (&conn).write_all(format!("{reply}\n").as_bytes());
        }
        None => {
            // Hold the connection open without answering until the client gives up.
            let until = Instant::now() + Duration::from_secs(5);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

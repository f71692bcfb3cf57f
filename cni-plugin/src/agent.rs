//! Blocking client for the node agent's Unix socket: one request, one answer, all within one deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::CniError;
use crate::protocol::{AgentRequest, AgentResponse, MAX_LINE_BYTES};

/// Sends `request` and returns the agent's answer.
///
/// Transport failures (no socket, refused, timed out, connection closed before an answer) are
/// `AgentUnreachable` so callers can apply their fallback; an answer that is not protocol is
/// `AgentBadReply`.
pub(crate) fn exchange(socket: &Path, timeout: Duration, request: &AgentRequest) -> Result<AgentResponse, CniError> {
    let shown = socket.display().to_string();
    let unreachable = |reason: String| CniError::AgentUnreachable { socket: shown.clone(), reason };
    let deadline = Instant::now() + timeout;
    let line = request.to_line().map_err(|e| CniError::Internal(format!("cannot encode agent request: {e}")))?;

    let mut stream = connect(socket, timeout).map_err(unreachable)?;
    write_line(&mut stream, &line, deadline).map_err(|e| unreachable(describe("sending the request failed", &e, timeout)))?;
    let reply = read_line(&mut stream, deadline).map_err(|e| match e {
        ReadFailure::Io(e) => unreachable(describe("no answer", &e, timeout)),
        ReadFailure::Closed => unreachable("the agent closed the connection without answering".to_string()),
        ReadFailure::TooLong => {
            CniError::AgentBadReply { socket: shown.clone(), reason: format!("answer longer than {MAX_LINE_BYTES} bytes") }
        }
    })?;
    serde_json::from_slice(&reply)
        .map_err(|e| CniError::AgentBadReply { socket: shown.clone(), reason: format!("answer is not a valid response: {e}") })
}

/// `UnixStream` has no connect timeout, and connect blocks once an agent that stopped
/// accepting has a full backlog; a helper thread bounds the wait. The thread is left behind on
/// timeout, which is harmless in a process that exits right after.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, String> {
    let (tx, rx) = mpsc::channel();
    let path: PathBuf = socket.to_path_buf();
    let spawned = thread::Builder::new().name("agent-connect".into()).spawn(move || {
        let _ = tx.send(UnixStream::connect(&path));
    });
    let result = match spawned {
        Ok(_) => match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => return Err(format!("connecting timed out after {}s", timeout.as_secs())),
        },
        // Out of threads: connecting without a bound is still better than not trying.
        Err(_) => UnixStream::connect(socket),
    };
    result.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "the socket does not exist; is the ferry node agent running on this node?".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused: the socket exists but nothing is listening on it".to_string(),
        _ => format!("connect failed: {e}"),
    })
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(left)
}

fn write_line(stream: &mut UnixStream, line: &[u8], deadline: Instant) -> io::Result<()> {
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(line)?;
    stream.flush()
}

enum ReadFailure {
    Io(io::Error),
    Closed,
    TooLong,
}

/// Reads up to the first newline. The per-read timeout is re-armed from the overall deadline so a
/// peer trickling bytes cannot stretch the wait.
fn read_line(stream: &mut UnixStream, deadline: Instant) -> Result<Vec<u8>, ReadFailure> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining(deadline).map_err(ReadFailure::Io)?)).map_err(ReadFailure::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        if n == 0 {
            // A final line without its newline is still an answer.
            return if line.is_empty() { Err(ReadFailure::Closed) } else { Ok(line) };
        }
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(ReadFailure::TooLong);
        }
    }
}

fn describe(what: &str, e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out after {}s", timeout.as_secs()),
        _ => format!("{what}: {e}"),
    }
}

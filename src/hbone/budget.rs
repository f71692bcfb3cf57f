//! Bytes queued for an HBONE peer, bounded per connection and per proxy (invariant P10). A
//! peer that advertises a huge window and then stops reading makes the sender queue data; h2
//! bounds each stream (`max_send_buffer_size`) but not a connection or the process. Every
//! chunk handed to h2 carries permits from its connection's and the proxy's budget, taken
//! before the bytes are read from the application and given back when h2 drops the chunk
//! (written out, or discarded with its stream). A stream that cannot get room within the stall
//! timeout is shed: its peer has stopped reading and is holding the budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budgets one HBONE connection draws on (one pointer: every open stream holds one).
#[derive(Clone, Debug)]
pub(crate) struct Budget(Arc<Budgets>);

#[derive(Debug)]
struct Budgets {
    connection: Arc<Semaphore>,
    total: Arc<Semaphore>,
    stall: Duration,
}

/// The proxy-wide part, shared by every connection.
#[derive(Clone, Debug)]
pub struct TotalBudget {
    total: Arc<Semaphore>,
    per_connection: usize,
    stall: Duration,
}

impl TotalBudget {
    pub fn new(total: usize, per_connection: usize, stall: Duration) -> TotalBudget {
        TotalBudget { total: Arc::new(Semaphore::new(total)), per_connection, stall }
    }

    /// The budget of a new connection.
    pub(crate) fn connection(&self) -> Budget {
        Budget(Arc::new(Budgets {
            connection: Arc::new(Semaphore::new(self.per_connection)),
            total: self.total.clone(),
            stall: self.stall,
        }))
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.total.available_permits()
    }
}

/// Room for `n` bytes on both budgets.
#[derive(Debug)]
pub(crate) struct Room {
    connection: OwnedSemaphorePermit,
    total: OwnedSemaphorePermit,
}

impl Room {
    /// Splits off room for `n` bytes (at most what is held).
    pub(crate) fn split(&mut self, n: usize) -> Room {
        let n = n.min(self.connection.num_permits());
        // Both permits hold the same count and `n` is within it, so neither split can fail.
        let connection = self.connection.split(n).expect("n is at most the permits held");
        let total = self.total.split(n).expect("both permits hold the same count");
        Room { connection, total }
    }

    /// Keeps room for `n` bytes (at most what is held) and gives the rest back.
    pub(crate) fn shrink_to(&mut self, n: usize) {
        let extra = self.connection.num_permits().saturating_sub(n);
        if extra > 0 {
            drop(self.connection.split(extra));
            drop(self.total.split(extra));
        }
    }
}

/// No room came within the stall timeout.
#[derive(Debug, thiserror::Error)]
#[error("the peer has not read queued data for {0:?}; stream shed (FERRY_HBONE_STALL_TIMEOUT)")]
pub(crate) struct Stalled(pub(crate) Duration);

impl Budget {
    /// Room for `n` bytes, waiting (back-pressure) at most the stall timeout.
    pub(crate) async fn room(&self, n: usize) -> Result<Room, Stalled> {
        let (b, n) = (&self.0, n.min(u32::MAX as usize) as u32);
        let take = async {
            let connection = b.connection.clone().acquire_many_owned(n).await.ok()?;
            let total = b.total.clone().acquire_many_owned(n).await.ok()?;
            Some(Room { connection, total })
        };
        match tokio::time::timeout(b.stall, take).await {
            Ok(Some(room)) => Ok(room),
            _ => {
                metrics::counter!("ferry_hbone_streams_shed_total", "reason" => "stalled").increment(1);
                Err(Stalled(b.stall))
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn connection_available(&self) -> usize {
        self.0.connection.available_permits()
    }
}

/// A chunk of stream data as h2 queues it, holding its room until h2 drops it.
pub(crate) struct Chunk {
    data: Bytes,
    _room: Option<Room>,
}

impl Chunk {
    pub(crate) fn new(data: Bytes, room: Room) -> Chunk {
        Chunk { data, _room: Some(room) }
    }
}

/// Data outside any budget (end-of-stream markers, tests).
impl From<Bytes> for Chunk {
    fn from(data: Bytes) -> Chunk {
        Chunk { data, _room: None }
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.data.remaining()
    }
    fn chunk(&self) -> &[u8] {
        self.data.chunk()
    }
    fn advance(&mut self, n: usize) {
        self.data.advance(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_held_by_chunks_and_returned_when_they_drop() {
        let total = TotalBudget::new(100, 60, Duration::from_millis(50));
        let (a, b) = (total.connection(), total.connection());
        let mut r = a.room(50).await.unwrap();
        r.shrink_to(30);
        let chunk = Chunk::new(Bytes::from_static(b"x"), r);
        assert_eq!((a.connection_available(), total.available()), (30, 70));
        assert!(a.room(40).await.is_err(), "over the connection's budget: shed after the stall timeout");
        let held = b.room(60).await.unwrap();
        assert!(a.room(20).await.is_err(), "within the connection's budget but over the proxy's");
        drop((chunk, held));
        assert_eq!((a.connection_available(), total.available()), (60, 100));
    }
}

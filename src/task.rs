//! Per-connection tasks that store their future once. Wrapping a connection's future as
//! `async move { conn.await; drop(guard) }` keeps it twice in the task: the captured value and
//! the awaited copy sit side by side in the block's state (rustc does not overlap them), which
//! doubled the memory of every open connection (measured: 3080 bytes instead of 1560 for an
//! outbound connection's task). [`Holding`] polls the future in place instead.
//!
//! The guard is released when the task's future is dropped, which tokio does as soon as the
//! future completes, so a connection's place in a cap is given back when it ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `fut`, holding `guard` until it is dropped.
    pub(crate) struct Holding<F, G> {
        #[pin]
        fut: F,
        guard: G,
    }
}

/// `fut` with `guard` held for its whole life.
pub(crate) fn holding<F: Future, G>(fut: F, guard: G) -> Holding<F, G> {
    Holding { fut, guard }
}

impl<F: Future, G> Future for Holding<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A future with a large state, as a connection's copy phase has.
    async fn heavy(release: tokio::sync::oneshot::Receiver<()>) -> usize {
        let buf = [7u8; 1024];
        let _ = release.await;
        buf.iter().map(|&b| b as usize).sum()
    }

    #[test]
    fn the_future_is_stored_once() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let fut = heavy(rx);
        let alone = std::mem::size_of_val(&fut);
        let held = holding(fut, Arc::new(()));
        assert!(alone >= 1024);
        assert!(std::mem::size_of_val(&held) <= alone + 16, "{} bytes for a {alone}-byte future", std::mem::size_of_val(&held));
    }

    #[tokio::test]
    async fn the_guard_is_released_when_the_future_completes() {
        let guard = Arc::new(());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(holding(heavy(rx), guard.clone()));
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&guard), 2, "held while the future runs");
        tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), 7 * 1024);
        assert_eq!(Arc::strong_count(&guard), 1, "released once it completed");
    }
}

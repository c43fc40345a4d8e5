//! A connection's outbound queue: what the hub routed to it, in engine order, until its writer takes it; and the
//! hub's way to abort the connection (`kill`: queue full, server stopping).
//!
//! Bounded like a channel, but it holds no buffer while it is empty: tokio's bounded mpsc allocates a block of
//! 32 slots per channel when it is made, more than the rest of an idle connection's adapter state (SPEC §19's
//! memory budget is per connection, and most connections are idle). The buffer is released again once the writer
//! empties it. The kill signal rides on the same lock and wake-up, so a connection needs no cancellation token
//! (a tree node and a waiter of its own).
//!
//! One task waits on a queue, the connection's own: the queue keeps that task's waker under its lock (no `Notify`
//! and its waiter list), and the task polls it without a future of its own (`poll_ready`), so a parked
//! connection's task holds nothing for it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::hub::Out;

struct Outbox {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Out>,
    /// The writer's task, while it waits.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
    /// The hub gave up on the connection: the writer stops without draining the queue.
    killed: bool,
    /// ... because this node can no longer serve it (a node of a cluster cut off from the others): the adapter
    /// closes it as at a shutdown (WebSocket 1001), so that the client reconnects.
    away: bool,
}

impl State {
    fn park(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this module's short critical sections hold it; they do not panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the state and wakes the writer, outside the lock.
    fn change(&self, f: impl FnOnce(&mut State)) {
        let waker = {
            let mut state = self.lock();
            f(&mut state);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Why a stanza could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The writer is `capacity` stanzas behind: the peer does not read.
    Full,
    /// The writer is gone.
    Closed,
}

/// A connection's queue with `capacity` slots: the hub's end and the writer's end.
pub(crate) fn outbox(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Outbox {
        state: Mutex::new(State::default()),
        capacity: capacity.max(1),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

/// The hub's end. Dropping it ends the queue: the writer gets what is queued, then `None`.
pub(crate) struct Sender(Arc<Outbox>);

impl Sender {
    pub fn try_send(&self, out: Out) -> Result<(), PushError> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(PushError::Closed);
        }
        if state.queue.len() >= self.0.capacity {
            return Err(PushError::Full);
        }
        state.queue.push_back(out);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Aborts the connection: its writer's `recv` ends and `killed` resolves, whatever is still queued.
    pub fn kill(&self) {
        self.0.change(|state| state.killed = true);
    }

    /// Kills the connection as going away (`State::away`).
    pub fn go_away(&self) {
        self.0.change(|state| {
            state.killed = true;
            state.away = true;
        });
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.change(|state| state.sender_gone = true);
    }
}

/// The writer's end.
pub(crate) struct Receiver(Arc<Outbox>);

impl Receiver {
    /// The next stanza; `None` once the connection is killed, or the hub dropped its end and the queue is empty.
    pub async fn recv(&self) -> Option<Out> {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            if state.killed {
                return Poll::Ready(None);
            }
            if let Some(out) = Self::pop(&mut state) {
                return Poll::Ready(Some(out));
            }
            if state.sender_gone {
                return Poll::Ready(None);
            }
            // Under the lock: a push after this check finds the waker.
            state.park(cx);
            Poll::Pending
        })
        .await
    }

    /// Whether the hub killed the connection as going away ([`Sender::go_away`]).
    pub fn going_away(&self) -> bool {
        self.0.lock().away
    }

    /// The next stanza if one is queued (and the connection is not killed).
    pub fn try_recv(&self) -> Option<Out> {
        let mut state = self.0.lock();
        if state.killed {
            return None;
        }
        Self::pop(&mut state)
    }

    /// Ready once `recv` has something to say: a stanza, a kill, or the end of the queue. A poll, not a future:
    /// a waiting connection's task then holds nothing for its queue.
    pub fn poll_ready(&self, cx: &Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        if state.killed || state.sender_gone || !state.queue.is_empty() {
            return Poll::Ready(());
        }
        state.park(cx);
        Poll::Pending
    }

    /// Resolves once the hub gives up on the connection. Only one task waits on a queue at a time (the
    /// connection's own), so it may share the wake-up with `recv`: a push that wakes it is still found by the
    /// next `recv`.
    pub async fn killed(&self) {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            if state.killed {
                return Poll::Ready(());
            }
            state.park(cx);
            Poll::Pending
        })
        .await;
    }

    fn pop(state: &mut State) -> Option<Out> {
        let out = state.queue.pop_front();
        if state.queue.is_empty() && state.queue.capacity() > 0 {
            state.queue = VecDeque::new();
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn send(n: u8) -> Out {
        Out::Send(Bytes::from(vec![n]))
    }

    fn byte(out: Option<Out>) -> Option<u8> {
        match out? {
            Out::Send(b) => Some(b[0]),
            Out::Close(_) => None,
        }
    }

    #[tokio::test]
    async fn in_order_bounded_and_ended_by_the_sender() {
        let (tx, rx) = outbox(2);
        assert_eq!(tx.try_send(send(1)), Ok(()));
        assert_eq!(tx.try_send(send(2)), Ok(()));
        assert_eq!(tx.try_send(send(3)), Err(PushError::Full));
        assert_eq!(byte(rx.recv().await), Some(1));
        assert_eq!(byte(rx.try_recv()), Some(2));
        assert!(rx.try_recv().is_none());
        assert_eq!(tx.try_send(send(4)), Ok(()));
        drop(tx);
        // What was queued before the end still comes.
        assert_eq!(byte(rx.recv().await), Some(4));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_and_a_gone_writer_refuses() {
        let (tx, rx) = outbox(4);
        let waiter = tokio::spawn(async move {
            let first = byte(rx.recv().await);
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(send(7)).unwrap();
        let (first, rx) = waiter.await.unwrap();
        assert_eq!(first, Some(7));
        drop(rx);
        assert_eq!(tx.try_send(send(8)), Err(PushError::Closed));
    }

    #[test]
    fn an_emptied_queue_gives_back_a_burst_buffer() {
        let (tx, rx) = outbox(1024);
        for n in 0..100 {
            tx.try_send(send(n)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn a_kill_ends_the_writer_before_what_is_queued_and_wakes_a_waiter() {
        let (tx, rx) = outbox(4);
        let rx = std::sync::Arc::new(rx);
        let waiter = tokio::spawn({
            let rx = std::sync::Arc::clone(&rx);
            async move { rx.killed().await }
        });
        tokio::task::yield_now().await;
        tx.try_send(send(1)).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a push is no kill");
        tx.kill();
        waiter.await.unwrap();
        assert!(rx.try_recv().is_none());
        assert!(rx.recv().await.is_none());
    }
}

//! A connection's outbound queue: what the hub routed to it, in engine order, until its writer takes it.
//!
//! Bounded like a channel, but it holds no buffer while it is empty: tokio's bounded mpsc allocates a block of
//! 32 slots per channel when it is made, more than the rest of an idle connection's adapter state (SPEC §19's
//! memory budget is per connection, and most connections are idle). The buffer is released again once the writer
//! empties it after a burst.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::hub::Out;

/// Above this many slots, an emptied queue gives its buffer back.
const KEEP_SLOTS: usize = 8;

struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Out>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this module's short critical sections hold it; they do not panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        ready: Notify::new(),
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
        drop(state);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.ready.notify_one();
    }
}

/// The writer's end.
pub(crate) struct Receiver(Arc<Outbox>);

impl Receiver {
    /// The next stanza; `None` once the hub dropped its end and the queue is empty.
    pub async fn recv(&mut self) -> Option<Out> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(out) = Self::pop(&mut state) {
                    return Some(out);
                }
                if state.sender_gone {
                    return None;
                }
            }
            // A push between the check above and this wait stored a permit: no wake-up is lost.
            self.0.ready.notified().await;
        }
    }

    /// The next stanza if one is queued.
    pub fn try_recv(&mut self) -> Option<Out> {
        Self::pop(&mut self.0.lock())
    }

    fn pop(state: &mut State) -> Option<Out> {
        let out = state.queue.pop_front();
        if state.queue.is_empty() && state.queue.capacity() > KEEP_SLOTS {
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
        let (tx, mut rx) = outbox(2);
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
        let (tx, mut rx) = outbox(4);
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
        let (tx, mut rx) = outbox(1024);
        for n in 0..100 {
            tx.try_send(send(n)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().queue.capacity(), 0);
    }
}

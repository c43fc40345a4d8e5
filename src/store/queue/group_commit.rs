//! [`GroupCommitter`]: many async writers, one fsync per batch.
//!
//! A dedicated thread owns the [`QueueStore`] (fsync blocks, so it must not run on a runtime worker). Writers send
//! requests over a channel and await a oneshot; the thread takes every request that is waiting, appends them all,
//! syncs once, and answers each writer only after that sync returned: an `append(..).await` that returns `Ok`
//! is on stable storage (QUE-2).
//!
//! Why the linger: with closed-loop writers (each waits for its ack before its next append) the writers answered
//! by one fsync come back a few microseconds after the thread has already taken the next, nearly empty, batch;
//! batches then alternate between almost all writers and almost none, halving throughput. After an ack the thread
//! therefore waits up to [`GroupCommitConfig::linger`] for as many requests as the previous batch had (the same
//! idea as PostgreSQL's `commit_delay` or Kafka's `linger.ms`). A lone writer never waits: its previous batch had
//! one request, which it already has.
//!
//! Why a mutex-and-condvar queue rather than a channel: a channel wakes its receiver for every message, and during
//! the linger that is a context switch per writer. Here a writer wakes the thread only when it brings the first
//! request of a batch or the one the thread is waiting for, so a batch of a hundred costs two wake-ups.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::fs::Fs;
use super::{Appended, QueueError, QueueStore};

/// Why an async append or call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(Arc<QueueError>),
    #[error("the group committer has stopped")]
    Closed,
}

/// Tunables of the committer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Longest wait for the previous batch's writers to come back (module doc); zero disables it.
    pub linger: Duration,
    /// Most appends in one batch.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            linger: Duration::from_micros(200),
            max_batch: 4096,
        }
    }
}

type Call<F> = Box<dyn FnOnce(&mut QueueStore<F>) + Send>;

enum Request<F: Fs> {
    Append {
        eid: Arc<str>,
        payload: Bytes,
        exclude: Option<Arc<str>>,
        reply: oneshot::Sender<Result<Appended, CommitError>>,
    },
    Call(Call<F>),
}

struct Queue<F: Fs> {
    requests: Vec<Request<F>>,
    /// The thread is lingering until this many requests wait (`usize::MAX` when it is not).
    wake_at: usize,
    /// Live [`GroupCommitter`] handles; the thread ends when none is left and the queue is empty.
    handles: usize,
}

struct Shared<F: Fs> {
    queue: Mutex<Queue<F>>,
    wake: Condvar,
}

impl<F: Fs> Shared<F> {
    fn lock(&self) -> MutexGuard<'_, Queue<F>> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, req: Request<F>) {
        let mut q = self.lock();
        q.requests.push(req);
        let n = q.requests.len();
        let wake = n == 1 || n == q.wake_at;
        drop(q);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// A cloneable handle for async writers.
pub struct GroupCommitter<F: Fs> {
    shared: Arc<Shared<F>>,
}

impl<F: Fs> Clone for GroupCommitter<F> {
    fn clone(&self) -> Self {
        self.shared.lock().handles += 1;
        GroupCommitter {
            shared: self.shared.clone(),
        }
    }
}

impl<F: Fs> Drop for GroupCommitter<F> {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.handles -= 1;
        let last = q.handles == 0;
        drop(q);
        if last {
            self.shared.wake.notify_one();
        }
    }
}

/// The committer thread; [`CommitterThread::join`] hands the store back once every handle is dropped.
pub struct CommitterThread<F: Fs> {
    handle: JoinHandle<QueueStore<F>>,
}

impl<F: Fs> CommitterThread<F> {
    /// Waits for the thread to finish (after the last [`GroupCommitter`] is dropped) and returns the store.
    pub fn join(self) -> Option<QueueStore<F>> {
        self.handle.join().ok()
    }
}

impl<F: Fs> GroupCommitter<F> {
    /// Moves `store` to a committer thread.
    pub fn spawn(
        store: QueueStore<F>,
        cfg: GroupCommitConfig,
    ) -> std::io::Result<(GroupCommitter<F>, CommitterThread<F>)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                wake_at: usize::MAX,
                handles: 1,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("bimip-queue-commit".into())
            .spawn(move || run(store, &thread_shared, cfg))?;
        Ok((GroupCommitter { shared }, CommitterThread { handle }))
    }

    /// Appends an item and returns once it is durable. An `Arc<str>` EID or device is passed on without copying.
    pub async fn append(
        &self,
        eid: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        exclude: Option<Arc<str>>,
    ) -> Result<Appended, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.shared.push(Request::Append {
            eid: eid.into(),
            payload: payload.into(),
            exclude,
            reply,
        });
        rx.await.map_err(|_| CommitError::Closed)?
    }

    /// Runs `f` on the store in the committer thread, in order with the appends sent before it. Its own changes
    /// (touch, commit) are durable only after a later sync, which the next batch of appends performs; call
    /// `store.sync()` inside `f` when it must be durable at once.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueueStore<F>) -> R + Send + 'static,
    ) -> Result<R, CommitError> {
        let (reply, rx) = oneshot::channel();
        let call: Call<F> = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        self.shared.push(Request::Call(call));
        rx.await.map_err(|_| CommitError::Closed)
    }
}

/// Takes the next batch: waits for a first request, then lingers for `want` of them (module doc).
fn next_batch<F: Fs>(shared: &Shared<F>, want: usize, cfg: &GroupCommitConfig) -> Option<Vec<Request<F>>> {
    let mut q = shared.lock();
    while q.requests.is_empty() {
        if q.handles == 0 {
            return None;
        }
        q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
    }
    let deadline = Instant::now() + cfg.linger;
    while q.requests.len() < want.min(cfg.max_batch) && q.handles > 0 {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            break;
        };
        q.wake_at = want;
        q = shared.wake.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
    }
    q.wake_at = usize::MAX;
    let n = q.requests.len().min(cfg.max_batch);
    Some(q.requests.drain(..n).collect())
}

fn run<F: Fs>(mut store: QueueStore<F>, shared: &Shared<F>, cfg: GroupCommitConfig) -> QueueStore<F> {
    let mut waiting: Vec<(oneshot::Sender<Result<Appended, CommitError>>, Appended)> = Vec::new();
    let mut want = 1usize;
    while let Some(batch) = next_batch(shared, if cfg.linger.is_zero() { 1 } else { want }, &cfg) {
        let mut appends = 0usize;
        for req in batch {
            match req {
                Request::Append {
                    eid,
                    payload,
                    exclude,
                    reply,
                } => {
                    appends += 1;
                    match store.append(&eid, &payload, exclude.as_deref()) {
                        Ok(a) => waiting.push((reply, a)),
                        Err(e) => {
                            let _ = reply.send(Err(CommitError::Store(Arc::new(e))));
                        }
                    }
                }
                Request::Call(f) => f(&mut store),
            }
        }
        want = appends.max(1);
        if waiting.is_empty() {
            continue;
        }
        match store.sync() {
            Ok(_) => {
                for (reply, a) in waiting.drain(..) {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (reply, _) in waiting.drain(..) {
                    let _ = reply.send(Err(CommitError::Store(e.clone())));
                }
            }
        }
    }
    store
}

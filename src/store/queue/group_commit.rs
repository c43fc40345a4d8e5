//! [`GroupCommitter`]: many async writers, one fsync per batch.
//!
//! A committer task owns the [`QueueStore`]. Writers put requests on a shared queue and await a oneshot; the task
//! takes every request that is waiting, appends them all, syncs once, and answers each writer only after that
//! sync's fsync returned: an `append(..).await` that returns `Ok` is on stable storage (QUE-2).
//!
//! The sync is pipelined ([`QueueStore::begin_sync`]): the task writes a batch and hands its fsync to a blocking
//! thread (fsync must not stall a runtime worker), then gathers, appends and writes the next batch while that fsync
//! runs; it acknowledges a batch only once its own fsync finished, and starts the next fsync after that. A cycle
//! therefore costs the longer of one fsync and one batch's CPU work instead of their sum. Calls
//! ([`GroupCommitter::call`]) wait for the fsync in flight first, since retention and close need no sync pending.
//!
//! Why the linger: with closed-loop writers (each waits for its ack before its next append) the writers answered
//! by one fsync come back a few microseconds after the task has already taken the next, nearly empty, batch;
//! batches then alternate between almost all writers and almost none, halving throughput. After an ack the task
//! therefore waits up to [`GroupCommitConfig::linger`] for as many requests as the previous batch had (the same
//! idea as PostgreSQL's `commit_delay` or Kafka's `linger.ms`), yielding to the runtime so the writers it just
//! woke run first. A lone writer never waits: its previous batch had one request, which it already has.
//!
//! The task also keeps a spare segment prepared ([`QueueStore::spare_job`]) on a blocking thread, so a roll never
//! waits for a file to be zero-filled and appends overwrite allocated blocks.
//!
//! Sizing: a batch's path is serial (fsync, wake the task, acknowledge, the writers append again, write, hand the
//! next fsync over), so the fsync thread should not have to wait for a core. On a 2-core machine, 100 writers on a
//! runtime of one worker reached 52x the raw fsync rate, and on a runtime of two workers 45x: then the fsync
//! thread competes with both workers and the writers bounce between them (BENCHMARKS.md).
//!
//! Why a task in the writers' runtime rather than a thread with a channel: waking a hundred writers from a foreign
//! thread goes through the runtime's injection queue and unparks workers, and a channel wakes its receiver for
//! every message; measured on this project's machines that overhead per batch was larger than the fsync itself.
//! Inside the runtime a wake is a push on a local run queue; writers wake the task only with the first request of a
//! batch, and during the linger the task yields instead of sleeping, so nobody has to wake it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::fs::Fs;
use super::{Appended, FsyncDone, QueueError, QueueStore, SpareDone};

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
    /// Live [`GroupCommitter`] handles; the thread ends when none is left and the queue is empty.
    handles: usize,
}

struct Shared<F: Fs> {
    queue: Mutex<Queue<F>>,
    wake: Notify,
}

impl<F: Fs> Shared<F> {
    fn lock(&self) -> MutexGuard<'_, Queue<F>> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, req: Request<F>) {
        let mut q = self.lock();
        q.requests.push(req);
        let wake = q.requests.len() == 1;
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

/// The committer task; [`CommitterTask::join`] hands the store back once every handle is dropped.
pub struct CommitterTask<F: Fs> {
    handle: JoinHandle<Option<QueueStore<F>>>,
}

impl<F: Fs> CommitterTask<F> {
    /// Waits for the task to finish (after the last [`GroupCommitter`] is dropped) and returns the store.
    pub async fn join(self) -> Option<QueueStore<F>> {
        self.handle.await.ok().flatten()
    }
}

impl<F: Fs> GroupCommitter<F> {
    /// Moves `store` to a committer task on the current tokio runtime (panics outside one, like `tokio::spawn`).
    pub fn spawn(store: QueueStore<F>, cfg: GroupCommitConfig) -> (GroupCommitter<F>, CommitterTask<F>) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                handles: 1,
            }),
            wake: Notify::new(),
        });
        let handle = tokio::spawn(run(store, shared.clone(), cfg));
        (GroupCommitter { shared }, CommitterTask { handle })
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
async fn next_batch<F: Fs>(shared: &Shared<F>, want: usize, cfg: &GroupCommitConfig) -> Option<Vec<Request<F>>> {
    loop {
        // Registered before looking, so a push between the look and the wait is not missed.
        let notified = shared.wake.notified();
        {
            let q = shared.lock();
            if !q.requests.is_empty() {
                break;
            }
            if q.handles == 0 {
                return None;
            }
        }
        notified.await;
    }
    let want = want.min(cfg.max_batch);
    let deadline = Instant::now() + cfg.linger;
    loop {
        {
            let mut q = shared.lock();
            if q.requests.len() >= want || q.handles == 0 || Instant::now() >= deadline {
                let n = q.requests.len().min(cfg.max_batch);
                return Some(q.requests.drain(..n).collect());
            }
        }
        // The writers woken by the last ack are on this runtime's run queues: let them run first.
        tokio::task::yield_now().await;
    }
}

type Waiters = Vec<(oneshot::Sender<Result<Appended, CommitError>>, Appended)>;

/// A sync whose fsync runs on a blocking thread, and the writers it acknowledges.
struct InFlight<F: Fs> {
    fsync: JoinHandle<FsyncDone<F::File>>,
    waiters: Waiters,
}

/// Waits for the sync in flight, finishes it and answers its writers. False when the blocking pool is gone.
async fn land<F: Fs>(store: &mut QueueStore<F>, in_flight: InFlight<F>) -> bool {
    let done = in_flight.fsync.await;
    finish(store, done, in_flight.waiters)
}

/// Finishes a sync whose fsync returned and answers its writers. False when the blocking pool is gone.
fn finish<F: Fs>(
    store: &mut QueueStore<F>,
    done: Result<FsyncDone<F::File>, tokio::task::JoinError>,
    waiters: Waiters,
) -> bool {
    let Ok(done) = done else {
        // The blocking pool is shutting down: the writers learn the committer stopped.
        return false;
    };
    match store.finish_sync(done) {
        Ok(_) => {
            for (reply, a) in waiters {
                let _ = reply.send(Ok(a));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for (reply, _) in waiters {
                let _ = reply.send(Err(CommitError::Store(e.clone())));
            }
        }
    }
    true
}

type SpareTask<F> = JoinHandle<SpareDone<<F as Fs>::File>>;

/// Installs a finished spare and starts the next one when the store wants one. `wait` waits for one still being
/// prepared (at shutdown).
async fn tend_spare<F: Fs>(store: &mut QueueStore<F>, spare: &mut Option<SpareTask<F>>, wait: bool) {
    if let Some(task) = spare.take_if(|t| wait || t.is_finished()) {
        match task.await {
            Ok(done) => {
                if let Err(e) = store.install_spare(done) {
                    tracing::warn!(error = %e, "queue: no spare segment; appends go on without preallocation");
                }
            }
            // The blocking pool is shutting down; so is the committer.
            Err(_) => return,
        }
    }
    if spare.is_none()
        && !wait
        && let Some(job) = store.spare_job()
    {
        *spare = Some(tokio::task::spawn_blocking(move || job.run()));
    }
}

async fn run<F: Fs>(mut store: QueueStore<F>, shared: Arc<Shared<F>>, cfg: GroupCommitConfig) -> Option<QueueStore<F>> {
    let mut in_flight: Option<InFlight<F>> = None;
    let mut spare: Option<SpareTask<F>> = None;
    let mut want = 1usize;
    loop {
        tend_spare(&mut store, &mut spare, false).await;
        let want_now = if cfg.linger.is_zero() { 1 } else { want };
        // While an fsync runs, the next batch gathers; whichever comes first is handled first.
        let batch = match in_flight.as_mut() {
            None => next_batch(&shared, want_now, &cfg).await,
            Some(f) => {
                tokio::select! {
                    biased;
                    done = &mut f.fsync => {
                        let waiters = in_flight.take().map(|f| f.waiters).unwrap_or_default();
                        if !finish(&mut store, done, waiters) {
                            return None;
                        }
                        continue;
                    }
                    batch = next_batch(&shared, want_now, &cfg) => batch,
                }
            }
        };
        let Some(batch) = batch else { break };
        if batch.iter().any(|r| matches!(r, Request::Call(_)))
            && let Some(f) = in_flight.take()
            && !land(&mut store, f).await
        {
            return None;
        }
        let mut appends = 0usize;
        let mut waiters = Vec::new();
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
                        Ok(a) => waiters.push((reply, a)),
                        Err(e) => {
                            let _ = reply.send(Err(CommitError::Store(Arc::new(e))));
                        }
                    }
                }
                Request::Call(f) => f(&mut store),
            }
        }
        want = appends.max(1);
        if waiters.is_empty() {
            continue;
        }
        // Write this batch now (its fsync starts once the one in flight is done: tickets finish in order).
        let ticket = store.begin_sync();
        if let Some(f) = in_flight.take()
            && !land(&mut store, f).await
        {
            return None;
        }
        match ticket {
            Ok(ticket) => {
                in_flight = Some(InFlight {
                    fsync: tokio::task::spawn_blocking(move || ticket.fsync()),
                    waiters,
                });
            }
            Err(e) => {
                let e = Arc::new(e);
                for (reply, _) in waiters {
                    let _ = reply.send(Err(CommitError::Store(e.clone())));
                }
            }
        }
    }
    if let Some(f) = in_flight.take()
        && !land(&mut store, f).await
    {
        return None;
    }
    tend_spare(&mut store, &mut spare, true).await;
    Some(store)
}

//! Admission to the HSM: a bounded number of calls may be in progress or waiting
//! (sessions + `server.max_queue`); past that a call is refused at once. The HSM work runs
//! on worker threads of its own, one per session, which take waiting calls in arrival order
//! (one FIFO queue); a call whose deadline passes while it waits is answered at its deadline
//! and skipped by the workers, so an expired call never reaches the HSM.
//!
//! Why threads of its own rather than tokio's blocking pool: a worker that finishes a call
//! takes the next waiting one at once, without going to sleep and being woken again, and a
//! call goes to a worker in one step instead of waiting for a session permit first and
//! then for a blocking thread. The workers run under `SCHED_BATCH`: a worker woken (by the
//! token's own locks, or by a network HSM's answer) waits for the running thread's turn to
//! end instead of preempting it, so the network thread is not thrown off its CPU between
//! the steps of a call (BENCHMARKS.md, "The daemon's own CPU per call"). Nothing but the
//! wake-up order changes: the workers' share of the CPU is that of any other thread.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No room in the queue.
    Full { capacity: usize },
    /// The deadline passed while waiting for a session.
    Deadline,
    /// The queue was closed (shutdown).
    Closed,
    /// The work panicked on its worker (the worker lives on).
    Failed,
}

/// A call in the queue, whatever its result type.
trait Job<R>: Send {
    /// The caller has gone or its deadline has passed: the work must not start.
    fn abandoned(&self) -> bool;
    /// Does the work on `r` and answers the caller (or, abandoned, answers without it).
    fn run(self: Box<Self>, r: &R);
    /// Answers the caller without doing the work.
    fn expire(self: Box<Self>);
}

/// The outcome a caller receives.
type Answer<T> = Result<T, Refused>;

struct Call<T, F> {
    deadline: Option<Instant>,
    work: F,
    answer: oneshot::Sender<Answer<T>>,
    /// The queue room this call takes, given back when the call is done or dropped.
    _slot: OwnedSemaphorePermit,
    _counted: Counted,
}

impl<R, T, F> Job<R> for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&R, Option<Instant>) -> T + Send + 'static,
{
    fn abandoned(&self) -> bool {
        self.answer.is_closed() || self.deadline.is_some_and(|d| d <= Instant::now())
    }

    fn run(self: Box<Self>, r: &R) {
        if self.abandoned() {
            return self.expire();
        }
        let Call {
            deadline,
            work,
            answer,
            _slot,
            _counted,
        } = *self;
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| work(r, deadline)))
            .map_err(|_| Refused::Failed);
        // Given back before the caller hears, so that a caller that sees its answer can
        // count on the room being free again.
        drop((_slot, _counted));
        let _ = answer.send(done);
    }

    fn expire(self: Box<Self>) {
        let _ = self.answer.send(Err(Refused::Deadline));
    }
}

struct Waiting<R> {
    jobs: VecDeque<Box<dyn Job<R>>>,
    /// Workers asleep on `Shared::ready`.
    idle: usize,
    /// Workers not yet exited.
    alive: usize,
    closed: bool,
}

struct Shared<R> {
    waiting: Mutex<Waiting<R>>,
    /// A job was queued, or the queue closed.
    ready: Condvar,
    /// A worker exited.
    exited: Condvar,
}

impl<R> Shared<R> {
    fn lock(&self) -> MutexGuard<'_, Waiting<R>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The HSM's work queue and its workers.
pub(crate) type HsmQueue = WorkQueue<crate::hsm::Hsm>;

/// A bounded FIFO queue of blocking work on a shared resource `R`, served by a fixed
/// number of worker threads.
pub(crate) struct WorkQueue<R: Send + Sync + 'static> {
    shared: Arc<Shared<R>>,
    /// One permit per call in progress or waiting.
    slots: Arc<Semaphore>,
    capacity: usize,
}

/// A call holding or waiting for a session, in `hsm_bridge_hsm_queue_calls`.
struct Counted;

impl Counted {
    fn new() -> Counted {
        crate::metrics::get().queue_enter();
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::get().queue_leave();
    }
}

impl<R: Send + Sync + 'static> WorkQueue<R> {
    /// `workers` threads working on `resource` (held weakly: a worker holds it only while
    /// it works, so its owner can take it back once the work is done), and room for
    /// `max_queue` calls waiting beyond those.
    pub(crate) fn new(resource: &Arc<R>, workers: usize, max_queue: usize) -> WorkQueue<R> {
        let workers = workers.max(1);
        let capacity = workers + max_queue;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::with_capacity(capacity),
                idle: 0,
                alive: workers,
                closed: false,
            }),
            ready: Condvar::new(),
            exited: Condvar::new(),
        });
        for i in 0..workers {
            let (shared, resource) = (shared.clone(), Arc::downgrade(resource));
            std::thread::Builder::new()
                .name(format!("hsm-worker-{i}"))
                .spawn(move || serve(&shared, resource))
                .expect("an HSM worker thread");
        }
        WorkQueue {
            shared,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Runs `work` on a worker if the queue has room (else refuses at once); waits for its
    /// turn and its result until `deadline`. Past the deadline the caller is answered, and a
    /// call that had not started never starts.
    pub(crate) async fn run<T, F>(&self, deadline: Option<Instant>, work: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&R, Option<Instant>) -> T + Send + 'static,
    {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Refused::Deadline);
        }
        let slot = self.slot()?;
        let (answer, rx) = oneshot::channel();
        let call = Box::new(Call {
            deadline,
            work,
            answer,
            _slot: slot,
            _counted: Counted::new(),
        });
        {
            let mut w = self.shared.lock();
            if w.closed {
                return Err(Refused::Closed);
            }
            w.jobs.push_back(call);
            if w.idle > 0 {
                self.shared.ready.notify_one();
            }
        }
        let answered = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx)
                .await
                .map_err(|_| Refused::Deadline)?,
            None => rx.await,
        };
        answered.map_err(|_| Refused::Closed)?
    }

    /// Room for one more call; when there is none, calls abandoned in the queue give theirs
    /// back first.
    fn slot(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(s) = self.slots.clone().try_acquire_owned() {
            return Ok(s);
        }
        let gone: VecDeque<_> = {
            let mut w = self.shared.lock();
            let (gone, kept) = std::mem::take(&mut w.jobs)
                .into_iter()
                .partition(|j| j.abandoned());
            w.jobs = kept;
            gone
        };
        for j in gone {
            j.expire();
        }
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full {
                capacity: self.capacity,
            })
    }

    /// Waits until nothing is in progress or waiting (for shutdown); false on timeout.
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.slots.acquire_many(self.capacity as u32))
            .await
            .is_ok()
    }
}

/// A worker: takes the oldest waiting call, does it, and sleeps only when none is waiting.
/// Takes the resource's `Weak` by value: it is let go before the worker counts itself out,
/// so that once `alive` is 0 no worker holds the resource in any way.
fn serve<R>(shared: &Shared<R>, resource: Weak<R>) {
    if let Err(e) = batch_policy() {
        tracing::debug!("HSM worker stays SCHED_OTHER: sched_setscheduler(SCHED_BATCH): {e}");
    }
    loop {
        let job = {
            let mut w = shared.lock();
            loop {
                if let Some(j) = w.jobs.pop_front() {
                    break j;
                }
                if w.closed {
                    drop(resource);
                    w.alive -= 1;
                    shared.exited.notify_all();
                    return;
                }
                w.idle += 1;
                w = shared.ready.wait(w).unwrap_or_else(|p| p.into_inner());
                w.idle -= 1;
            }
        };
        match resource.upgrade() {
            Some(r) => job.run(&r),
            // The owner has let go: nothing can run any more; the caller hears "closed".
            None => drop(job),
        }
    }
}

/// Puts the calling thread under `SCHED_BATCH` (no real-time priority, no privilege needed).
#[allow(unsafe_code)]
fn batch_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the calling
    // thread, and the call only changes its scheduling policy.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl<R: Send + Sync + 'static> Drop for WorkQueue<R> {
    /// Closes the queue: calls still waiting hear "closed", the workers exit once their
    /// current call is done (waited for up to a second).
    fn drop(&mut self) {
        let mut w = self.shared.lock();
        w.closed = true;
        let waiting = std::mem::take(&mut w.jobs);
        self.shared.ready.notify_all();
        let end = Instant::now() + Duration::from_secs(1);
        while w.alive > 0 {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                break;
            };
            w = self
                .shared
                .exited
                .wait_timeout(w, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(w);
        drop(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resource whose work blocks until the test opens the gate.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        runs: AtomicUsize,
    }

    impl Gate {
        fn pass(&self) {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    /// A call that holds `q`'s only worker until the gate opens, once it has started.
    async fn occupy(q: &Arc<WorkQueue<Gate>>, gate: &Gate) -> tokio::task::JoinHandle<Answer<()>> {
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.run(None, |g: &Gate, _| g.pass()).await }
        });
        while gate.runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once() {
        let gate = Arc::new(Gate::default());
        let q = Arc::new(WorkQueue::new(&gate, 1, 1));
        // One call working, one waiting; the next is refused immediately.
        let first = occupy(&q, &gate).await;
        let second = tokio::spawn({
            let q = q.clone();
            async move { q.run(None, |_: &Gate, _| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            q.run(None, |_: &Gate, _| 3).await,
            Err(Refused::Full { capacity: 2 })
        );
        gate.open();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(2), "the waiting call runs");
        assert!(q.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_call_that_expires_while_waiting_never_runs() {
        let gate = Arc::new(Gate::default());
        let q = Arc::new(WorkQueue::new(&gate, 1, 10));
        let first = occupy(&q, &gate).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let r = q
            .run(Some(Instant::now() + Duration::from_millis(30)), {
                let ran = ran.clone();
                move |_: &Gate, _| ran.fetch_add(1, Ordering::SeqCst)
            })
            .await;
        assert_eq!(r, Err(Refused::Deadline));
        assert!(started.elapsed() >= Duration::from_millis(30));
        gate.open();
        first.await.unwrap().unwrap();
        // The worker is free now and skipped the expired call.
        assert!(q.drain(Duration::from_secs(1)).await);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the expired call never ran");
        // An already expired deadline is refused even with a worker free.
        let r = q
            .run(
                Some(Instant::now() - Duration::from_millis(1)),
                |_: &Gate, _| (),
            )
            .await;
        assert_eq!(r, Err(Refused::Deadline));
        let r = q
            .run(
                Some(Instant::now() + Duration::from_secs(1)),
                |_: &Gate, d| d.is_some(),
            )
            .await;
        assert_eq!(r, Ok(true), "the work sees the call's deadline");
    }

    #[tokio::test]
    async fn abandoned_calls_give_their_room_back() {
        let gate = Arc::new(Gate::default());
        let q = Arc::new(WorkQueue::new(&gate, 1, 2));
        let first = occupy(&q, &gate).await;
        // Two callers wait, then leave (their tasks are cancelled).
        for _ in 0..2 {
            let waiter = tokio::spawn({
                let q = q.clone();
                async move { q.run(None, |_: &Gate, _| ()).await }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiter.abort();
            let _ = waiter.await;
        }
        // The queue is full of abandoned calls while the worker is stuck: a new call
        // still gets in.
        let third = tokio::spawn({
            let q = q.clone();
            async move { q.run(None, |_: &Gate, _| 7).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.open();
        first.await.unwrap().unwrap();
        assert_eq!(third.await.unwrap(), Ok(7));
    }

    #[tokio::test]
    async fn calls_run_in_arrival_order() {
        let gate = Arc::new(Gate::default());
        let q = Arc::new(WorkQueue::new(&gate, 1, 100));
        let first = occupy(&q, &gate).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..20 {
            let (q, order) = (q.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                q.run(None, move |_: &Gate, _| order.lock().unwrap().push(i))
                    .await
            }));
            // Let each waiter enqueue before the next one.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.open();
        first.await.unwrap().unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert!(q.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_panic_fails_its_call_and_the_worker_lives_on() {
        let gate = Arc::new(Gate::default());
        let q = WorkQueue::new(&gate, 1, 1);
        let r: Answer<()> = q.run(None, |_: &Gate, _| panic!("work panicked")).await;
        assert_eq!(r, Err(Refused::Failed));
        assert_eq!(q.run(None, |_: &Gate, _| 5).await, Ok(5));
    }

    #[tokio::test]
    async fn workers_run_under_sched_batch() {
        let unit = Arc::new(());
        let q = WorkQueue::new(&unit, 1, 1);
        let policy = q
            .run(None, |_: &(), _| {
                // SAFETY: reads the calling thread's policy; no pointers.
                #[allow(unsafe_code)]
                unsafe {
                    libc::sched_getscheduler(0)
                }
            })
            .await;
        assert_eq!(policy, Ok(libc::SCHED_BATCH));
    }

    #[tokio::test]
    async fn work_whose_resource_is_gone_is_answered_closed() {
        let gone = Arc::new(());
        let q = WorkQueue::new(&gone, 1, 1);
        drop(gone);
        assert_eq!(q.run(None, |_: &(), _| 1).await, Err(Refused::Closed));
    }

    #[tokio::test]
    async fn dropping_the_queue_stops_its_workers_and_lets_go_of_the_resource() {
        let gate = Arc::new(Gate::default());
        let q = WorkQueue::new(&gate, 3, 1);
        assert_eq!(q.run(None, |_: &Gate, _| 1).await, Ok(1));
        drop(q);
        assert_eq!(Arc::strong_count(&gate), 1);
        assert_eq!(Arc::weak_count(&gate), 0, "every worker has exited");
    }
}

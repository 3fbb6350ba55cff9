//! Admission to the HSM: a bounded number of calls may be in progress or waiting
//! (sessions + `server.max_queue`); past that a call is refused at once. Waiting calls get
//! sessions in arrival order (tokio's semaphore is fair) and give up at their deadline
//! while still waiting, so an expired call never reaches the HSM.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No room in the queue.
    Full { capacity: usize },
    /// The deadline passed while waiting for a session.
    Deadline,
    /// The queue was closed (shutdown).
    Closed,
}

pub struct HsmQueue {
    slots: Arc<Semaphore>,
    capacity: usize,
    sessions: Arc<Semaphore>,
}

/// The right to use one HSM session; released when dropped.
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    _session: OwnedSemaphorePermit,
    _counted: Counted,
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

impl HsmQueue {
    pub fn new(sessions: usize, max_queue: usize) -> HsmQueue {
        let capacity = sessions + max_queue;
        HsmQueue {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            sessions: Arc::new(Semaphore::new(sessions)),
        }
    }

    /// Takes a queue slot at once (or refuses), then waits for a session until `deadline`.
    pub async fn admit(&self, deadline: Option<Instant>) -> Result<Admission, Refused> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Refused::Deadline);
        }
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full {
                capacity: self.capacity,
            })?;
        let counted = Counted::new();
        let session = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.sessions.clone().acquire_owned())
                .await
                .map_err(|_| Refused::Deadline)?,
            None => self.sessions.clone().acquire_owned().await,
        }
        .map_err(|_| Refused::Closed)?;
        Ok(Admission {
            _slot: slot,
            _session: session,
            _counted: counted,
        })
    }

    /// Waits until nothing is admitted or queued (for shutdown); false on timeout.
    pub async fn drain(&self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.slots.acquire_many(self.capacity as u32))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn full_queue_refuses_at_once() {
        let q = HsmQueue::new(1, 1);
        let held = q.admit(None).await.unwrap();
        // One session in use, one caller may wait; the next is refused immediately.
        let q = Arc::new(q);
        let second = tokio::spawn({
            let q = q.clone();
            async move { q.admit(None).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            q.admit(None).await.err(),
            Some(Refused::Full { capacity: 2 })
        );
        drop(held);
        assert!(second.await.unwrap(), "the waiting caller gets the session");
    }

    #[tokio::test]
    async fn a_call_that_expires_while_waiting_never_gets_a_session() {
        let q = HsmQueue::new(1, 10);
        let held = q.admit(None).await.unwrap();
        let started = Instant::now();
        let r = q
            .admit(Some(Instant::now() + Duration::from_millis(30)))
            .await;
        assert_eq!(r.err(), Some(Refused::Deadline));
        assert!(started.elapsed() >= Duration::from_millis(30));
        // An already expired deadline is refused even with a session free.
        drop(held);
        let r = q
            .admit(Some(Instant::now() - Duration::from_millis(1)))
            .await;
        assert_eq!(r.err(), Some(Refused::Deadline));
        assert!(
            q.admit(Some(Instant::now() + Duration::from_secs(1)))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn sessions_go_in_arrival_order() {
        let q = Arc::new(HsmQueue::new(1, 100));
        let held = q.admit(None).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..20 {
            let (q, order) = (q.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let a = q.admit(None).await.unwrap();
                order.lock().unwrap().push(i);
                drop(a);
            }));
            // Let each waiter enqueue before the next one.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert!(q.drain(Duration::from_secs(1)).await);
    }
}

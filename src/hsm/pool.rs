//! A fixed pool of long-lived PKCS#11 sessions. A session is used by one worker at a time
//! (`Session` is `Send`, not `Sync`); login state is shared by all of them.

use std::ops::Deref;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::session::Session;

pub(crate) struct Pool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
}

/// A session on loan; it goes back to the pool when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Pool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        Pool {
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
        }
    }

    /// Waits up to `wait` for an idle session; `None` if none came free in time.
    pub(crate) fn get(&self, wait: Duration) -> Option<Lease<'_>> {
        let deadline = Instant::now() + wait;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(session) = idle.pop() {
                crate::metrics::get().session_leased();
                return Some(Lease {
                    pool: self,
                    session: Some(session),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            idle = self
                .returned
                .wait_timeout(idle, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Takes every idle session out (for shutdown).
    pub(crate) fn drain(&self) -> Vec<Session> {
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Lease<'_> {
    /// Puts `fresh` in place of the leased session, which closes.
    pub(crate) fn replace(&mut self, fresh: Session) {
        self.session = Some(fresh);
    }
}

impl Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        crate::metrics::get().session_returned();
        if let Some(s) = self.session.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s);
            self.pool.returned.notify_one();
        }
    }
}

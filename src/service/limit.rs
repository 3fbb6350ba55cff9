//! What bounds each listener's connections (docs/ARCHITECTURE.md, "Listeners"): a cap on
//! how many are open, a cap per peer address, an idle timeout (no byte and no call in
//! progress) and a lifetime. Every accepted socket is a member of one [`Tracker`] for as long
//! as it is open; a socket that finds its tracker full is closed at once, or (on the
//! listeners anyone may reach before proving who they are: TLS handshakes, health probes,
//! metrics) pushes out the oldest member instead, so that a flood of idle sockets cannot
//! keep a newcomer out. A sweeper closes members that outstay their limits: a closed member
//! reads end-of-file and writes fail, so whoever serves it drops the connection.
//!
//! The caps come from the process's file limit ([`plan`]), so that the HSM module always
//! keeps descriptors for its own connections and files.
//!
//! A connection's calls are counted by [`InFlightLayer`] (found by the peer's address), so
//! that a connection is never idle while a call on it is in progress, and a call can learn
//! which connection it came on ([`ConnHandle`]; the TLS generation check in `tls.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Request;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// What a tracker does with a socket that arrives when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Close the newcomer (members have proved who they are).
    Refuse,
    /// Close the oldest member (of the newcomer's address, when that address is at its cap):
    /// nobody can hold the listener by opening sockets and waiting.
    EvictOldest,
}

/// One listener's (or one stage's) limits.
#[derive(Debug, Clone)]
pub(crate) struct Caps {
    /// How the listener is named in logs, e.g. "server.listen".
    pub what: &'static str,
    pub max: usize,
    /// Most members from one peer address; 0: no such cap.
    pub per_address: usize,
    /// A member with no byte either way and no call in progress for this long is closed.
    pub idle: Option<Duration>,
    /// A member open this long is closed, whatever it is doing.
    pub lifetime: Option<Duration>,
    pub when_full: WhenFull,
}

/// What a tracker knows of one open connection.
pub(crate) struct Conn {
    id: u64,
    peer: Option<SocketAddr>,
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written.
    last_io: AtomicU64,
    in_flight: AtomicUsize,
    /// The TLS configuration generation whose client CA last vouched for this connection's
    /// certificate (`tls.rs`); 0 before the handshake.
    pub verified_generation: AtomicU64,
    /// Closed by the tracker: reads end, writes fail.
    closed: AtomicBool,
    /// Whoever waits to read it, woken when it is closed.
    reader: Mutex<Option<Waker>>,
}

impl Conn {
    /// Closes the connection: its reader is woken to find the end.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waker = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Remembers who reads, to wake it on [`Conn::close`].
    fn park(&self, w: &Waker) {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if !r.as_ref().is_some_and(|old| old.will_wake(w)) {
            *r = Some(w.clone());
        }
    }

    fn touch(&self) {
        self.last_io
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.opened
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_io.load(Ordering::Relaxed)))
    }
}

/// The connection a call came on, in the call's request extensions (set by
/// [`InFlightLayer`]).
#[derive(Clone)]
pub(crate) struct ConnHandle(pub Arc<Conn>);

struct Members {
    next_id: u64,
    /// By age: ids only grow.
    open: BTreeMap<u64, Arc<Conn>>,
    by_peer: HashMap<SocketAddr, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections refused or pushed out so far.
    refused: u64,
    last_warning: Option<Instant>,
}

/// The open connections of one listener or stage.
pub(crate) struct Tracker {
    caps: Caps,
    members: Mutex<Members>,
}

impl Tracker {
    /// A tracker with `caps`, and its sweeper (which ends when the tracker is dropped).
    pub(crate) fn new(caps: Caps) -> Arc<Tracker> {
        let t = Arc::new(Tracker {
            caps,
            members: Mutex::new(Members {
                next_id: 1,
                open: BTreeMap::new(),
                by_peer: HashMap::new(),
                per_ip: HashMap::new(),
                refused: 0,
                last_warning: None,
            }),
        });
        if t.caps.idle.is_some() || t.caps.lifetime.is_some() {
            let every = [t.caps.idle, t.caps.lifetime]
                .into_iter()
                .flatten()
                .min()
                .map_or(Duration::from_secs(1), |d| {
                    (d / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
                });
            let weak = Arc::downgrade(&t);
            tokio::spawn(sweep(weak, every));
        }
        t
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Members open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Admits a connection from `peer`, or says why not (the caller closes it).
    pub(crate) fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<Slot> {
        let mut m = self.lock();
        let ip = peer.map(|p| p.ip());
        let crowded = |m: &Members| {
            self.caps.per_address > 0
                && ip.is_some_and(|ip| {
                    m.per_ip.get(&ip).copied().unwrap_or(0) >= self.caps.per_address
                })
        };
        if crowded(&m) {
            let oldest = |m: &Members| {
                m.open
                    .values()
                    .find(|c| c.peer.map(|p| p.ip()) == ip)
                    .cloned()
            };
            if !self.make_room(&mut m, oldest, "from one address") {
                return None;
            }
        }
        if m.open.len() >= self.caps.max {
            let oldest = |m: &Members| m.open.values().next().cloned();
            if !self.make_room(&mut m, oldest, "in all") {
                return None;
            }
        }
        let id = m.next_id;
        m.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            peer,
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            verified_generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        m.open.insert(id, conn.clone());
        if let Some(p) = peer {
            m.by_peer.insert(p, conn.clone());
            *m.per_ip.entry(p.ip()).or_insert(0) += 1;
        }
        Some(Slot {
            tracker: self.clone(),
            conn,
        })
    }

    /// The cap `which` is met: with [`WhenFull::EvictOldest`] the member `oldest` picks is
    /// closed and true returned; with [`WhenFull::Refuse`], false (the newcomer is closed).
    fn make_room(
        &self,
        m: &mut Members,
        oldest: impl Fn(&Members) -> Option<Arc<Conn>>,
        which: &str,
    ) -> bool {
        match self.caps.when_full {
            WhenFull::EvictOldest => {
                if let Some(c) = oldest(m) {
                    evict(m, &c);
                }
                self.warn(m, which, "closed the oldest to make room");
                true
            }
            WhenFull::Refuse => {
                self.warn(m, which, "closed a new connection at accept");
                false
            }
        }
    }

    /// Says (at most every 10 s) that the cap was met and what was done.
    fn warn(&self, m: &mut Members, which: &str, done: &str) {
        m.refused += 1;
        if m.last_warning
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            m.last_warning = Some(Instant::now());
            tracing::warn!(
                so_far = m.refused,
                "{}: the connection cap {which} is reached ({} in all, {} per address); {done}",
                self.caps.what,
                self.caps.max,
                self.caps.per_address
            );
        }
    }

    /// The member connected from `peer`, if any.
    pub(crate) fn find(&self, peer: &SocketAddr) -> Option<Arc<Conn>> {
        self.lock().by_peer.get(peer).cloned()
    }

    fn leave(&self, conn: &Conn) {
        let mut m = self.lock();
        forget(&mut m, conn);
    }
}

/// Takes `c` out of the members (if it is still one).
fn forget(m: &mut Members, c: &Conn) {
    if m.open.remove(&c.id).is_none() {
        return;
    }
    if let Some(p) = c.peer {
        if m.by_peer.get(&p).is_some_and(|x| x.id == c.id) {
            m.by_peer.remove(&p);
        }
        if let Some(n) = m.per_ip.get_mut(&p.ip()) {
            *n -= 1;
            if *n == 0 {
                m.per_ip.remove(&p.ip());
            }
        }
    }
}

/// Closes member `c` (its owner then drops it) and forgets it.
fn evict(m: &mut Members, c: &Arc<Conn>) {
    c.close();
    forget(m, c);
}

/// Every `every`, closes the members past their idle time or lifetime.
async fn sweep(tracker: Weak<Tracker>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = tracker.upgrade() else { return };
        let mut m = t.lock();
        let due: Vec<Arc<Conn>> = m
            .open
            .values()
            .filter(|c| {
                t.caps.lifetime.is_some_and(|l| c.opened.elapsed() >= l)
                    || t.caps.idle.is_some_and(|i| {
                        c.in_flight.load(Ordering::Relaxed) == 0 && c.idle_for() >= i
                    })
            })
            .cloned()
            .collect();
        for c in &due {
            evict(&mut m, c);
        }
        if !due.is_empty() {
            tracing::debug!(
                listener = t.caps.what,
                closed = due.len(),
                "idle or old connections closed"
            );
        }
    }
}

/// A connection's membership: it leaves its tracker when dropped.
pub(crate) struct Slot {
    tracker: Arc<Tracker>,
    conn: Arc<Conn>,
}

impl Slot {
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tracker.leave(&self.conn);
    }
}

/// A socket that is a member of a tracker while it is open, and notes when bytes move.
pub(crate) struct Limited<S> {
    slot: Slot,
    io: S,
}

impl<S> Limited<S> {
    /// Moves the connection to `tracker` (after a TLS handshake: from the handshake stage
    /// to the established connections); false, and still where it was, if it has no room.
    pub(crate) fn enter(&mut self, tracker: &Arc<Tracker>) -> bool {
        match tracker.admit(self.slot.conn.peer) {
            Some(slot) => {
                self.slot = slot;
                true
            }
            None => false,
        }
    }

    pub(crate) fn conn(&self) -> &Arc<Conn> {
        self.slot.conn()
    }
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        let conn = &me.slot.conn;
        if conn.is_closed() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.io).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => conn.touch(),
            Poll::Pending => {
                conn.park(cx.waker());
                // closed between the check and the registration: not missed
                if conn.is_closed() {
                    return Poll::Ready(Ok(()));
                }
            }
            _ => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.slot.conn.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.conn.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.slot.conn.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.conn.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "closed by the listener's limits",
    )
}

/// Accepts with `accept` (a socket and its peer's address, if it has one) until the
/// returned stream is dropped, each socket a member of `tracker` or closed at once. Accept
/// errors (EMFILE included) pause the loop briefly instead of spinning.
pub(crate) fn incoming<S, F, Fut>(
    tracker: Arc<Tracker>,
    mut accept: F,
) -> ReceiverStream<Result<Limited<S>, std::io::Error>>
where
    S: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<(S, Option<SocketAddr>)>> + Send,
{
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                _ = tx.closed() => return,
                r = accept() => r,
            };
            let (io, peer) = match got {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = tracker.caps.what, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = tracker.admit(peer) else {
                drop(io);
                continue;
            };
            if tx.send(Ok(Limited { slot, io })).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// How many descriptors the daemon leaves to the HSM module, its files and its clients to
/// OCI and the journal: a quarter of the limit, at least 256 (at most half of it).
fn reserve(limit: u64) -> u64 {
    (limit / 4).max(256).min(limit / 2)
}

/// The connection caps that fit in the file limit `limit`: `wanted` as asked when they
/// fit beside the [`reserve`], else each cut in proportion (at least 1).
pub(crate) fn plan(limit: u64, wanted: &[usize]) -> Vec<usize> {
    let room = limit.saturating_sub(reserve(limit)) as usize;
    let sum: usize = wanted.iter().sum();
    if sum <= room {
        return wanted.to_vec();
    }
    wanted
        .iter()
        .map(|&w| (w * room / sum.max(1)).max(1))
        .collect()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns (the limit now, the limit before).
pub(crate) fn raise_file_limit() -> (u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    let before = r.current.unwrap_or(u64::MAX);
    if r.maximum != r.current {
        let raised = rustix::process::Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return (r.maximum.unwrap_or(u64::MAX), before);
        }
    }
    (before, before)
}

/// Counts each call on its connection (so that a connection with a call in progress is
/// never idle) and hands the call its connection ([`ConnHandle`]).
#[derive(Clone)]
pub(crate) struct InFlightLayer(pub Arc<Tracker>);

impl<S> tower_layer::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            tracker: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct InFlight<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

/// A call in progress on a connection: counted until its response is ready or it is
/// dropped.
struct Counted(Option<Arc<Conn>>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.touch();
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S, B> tower_service::Service<Request<B>> for InFlight<S>
where
    S: tower_service::Service<Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let peer = ext
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()));
        let conn = peer.and_then(|p| self.tracker.find(&p));
        if let Some(c) = &conn {
            c.in_flight.fetch_add(1, Ordering::Relaxed);
            req.extensions_mut().insert(ConnHandle(c.clone()));
        }
        let counted = Counted(conn);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(counted);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_in_the_file_limit() {
        // 1,024 (systemd's default): 256 kept, the rest is enough
        assert_eq!(plan(1024, &[256, 64, 32, 16]), [256, 64, 32, 16]);
        // a tight limit: cut in proportion, the reserve kept
        let p = plan(512, &[256, 64, 32, 16]);
        assert!(p.iter().sum::<usize>() <= 256, "{p:?}");
        assert!(p[0] > p[1] && p.iter().all(|&n| n >= 1), "{p:?}");
        // absurdly tight: at least one each, never more than half the limit in all
        assert_eq!(plan(8, &[256, 64]), [3, 1]);
        assert_eq!(reserve(1 << 20), 1 << 18);
    }

    #[tokio::test]
    async fn full_trackers_refuse_or_push_out_the_oldest() {
        let caps = |when_full| Caps {
            what: "test",
            max: 2,
            per_address: 0,
            idle: None,
            lifetime: None,
            when_full,
        };
        let refuse = Tracker::new(caps(WhenFull::Refuse));
        let a = refuse.admit(None).unwrap();
        let _b = refuse.admit(None).unwrap();
        assert!(refuse.admit(None).is_none());
        drop(a);
        assert!(refuse.admit(None).is_some());

        let evict = Tracker::new(caps(WhenFull::EvictOldest));
        let slots: Vec<_> = (0..3).map(|_| evict.admit(None).unwrap()).collect();
        assert_eq!(evict.open(), 2);
        assert!(slots[0].conn().is_closed() && !slots[1].conn().is_closed());
        drop(slots);
        assert_eq!(evict.open(), 0);

        // per address: the newcomer pushes out the oldest of its own address only
        let per = Tracker::new(Caps {
            per_address: 1,
            max: 10,
            ..caps(WhenFull::EvictOldest)
        });
        let at = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        let other = per
            .admit(Some(SocketAddr::from(([10, 0, 0, 1], 1))))
            .unwrap();
        let first = per.admit(at(1)).unwrap();
        let second = per.admit(at(2)).unwrap();
        assert!(first.conn().is_closed() && !second.conn().is_closed());
        assert!(!other.conn().is_closed());
        assert!(per.find(&at(2).unwrap()).is_some() && per.find(&at(1).unwrap()).is_none());
    }
}

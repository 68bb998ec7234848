//! The two clocks of one connection: how long a client may take to send a request head, and how long an idle
//! keep-alive connection is kept open.
//!
//! They follow Go's `net/http` (`ReadHeaderTimeout`, `IdleTimeout`): the header clock runs from the moment the
//! connection opens, or, on a kept-alive connection, from the first byte of the next request; the idle clock
//! runs from the end of a response until that first byte. hyper's own `header_read_timeout` starts at the end of
//! the previous response, which would make the idle timeout of every keep-alive connection the header timeout
//! (seconds) instead of what a load balancer in front expects (a minute or more); so the two are kept here.
//!
//! Three things feed the clocks: the connection's reads ([`Watched`]), requests reaching the service
//! ([`Timers::request_started`]) and response bodies finishing or being dropped ([`InFlight`]). They only set
//! atomics: waking the connection's task on every request would poll hyper's connection again each time (an
//! extra `read` that finds nothing), which cost about a fifth of the throughput of small requests. Instead the
//! watcher looks again at least every `min(header, idle)`, so a clock that starts while it sleeps is noticed
//! that much late at most; a new connection's header clock, the one slowloris meets, is exact.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// The client started a request (or opened the connection) and did not finish its head in time: cut.
    Header,
    /// No request for the idle timeout after the last response: close politely.
    Idle,
}

/// The header timeout while clients wait for a place under the connection cap.
pub(super) const CROWDED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// "No head being read": the value of `head_since` between requests.
const NOT_READING: u64 = u64::MAX;

pub(super) struct Timers {
    start: Instant,
    header: Duration,
    idle: Duration,
    /// Requests whose response is not finished yet (HTTP/2 may have several).
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the last response finished.
    idle_since: AtomicU64,
    /// Milliseconds after `start` at which the current request head began, or `NOT_READING`.
    head_since: AtomicU64,
}

impl Timers {
    pub(super) fn new(header: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            header,
            idle,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // A new connection owes its first request head at once: a silent socket is cut like a slow one.
            head_since: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A request head arrived complete: no clock runs until its response is finished.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NOT_READING, Ordering::Release);
        InFlight(self.clone())
    }

    /// Bytes arrived. Between requests they are the start of the next head, which starts the header clock.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(
                NOT_READING,
                self.now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Completes when a clock runs out; the caller then cuts or closes the connection.
    ///
    /// While `crowded` (clients wait for a place under the connection cap), connections that answer no request
    /// give way, as nginx's do: an idle kept-alive one closes at once, and one still sending its head gets at most
    /// [`CROWDED_HEADER_TIMEOUT`]. So idle or dawdling connections cannot keep others out for a whole timeout.
    pub(super) async fn expired(&self, crowded: &mut watch::Receiver<bool>) -> Expiry {
        let look_again = self.header.min(self.idle);
        let mut watching = true;
        loop {
            let now = Instant::now();
            let crowded_now = *crowded.borrow_and_update();
            // No clock runs while a request is being answered (an event stream may last hours).
            let clock = (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
                match self.head_since.load(Ordering::Acquire) {
                    NOT_READING if crowded_now => (Expiry::Idle, self.idle_since(), Duration::ZERO),
                    NOT_READING => (Expiry::Idle, self.idle_since(), self.idle),
                    since if crowded_now => (
                        Expiry::Header,
                        since,
                        self.header.min(CROWDED_HEADER_TIMEOUT),
                    ),
                    since => (Expiry::Header, since, self.header),
                }
            });
            let mut wake = now + look_again;
            if let Some((expiry, since, limit)) = clock {
                let deadline = self.start + Duration::from_millis(since) + limit;
                if now >= deadline {
                    return expiry;
                }
                wake = wake.min(deadline);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                changed = crowded.changed(), if watching => {
                    // An error: the server stopped accepting, so nobody waits for a place any more.
                    watching = changed.is_ok();
                }
            }
        }
    }

    fn idle_since(&self) -> u64 {
        self.idle_since.load(Ordering::Acquire)
    }
}

/// One request being answered; dropped when its response body is finished or abandoned.
pub(super) struct InFlight(Arc<Timers>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let timers = &self.0;
        if timers.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            timers.idle_since.store(timers.now_ms(), Ordering::Release);
        }
    }
}

/// A response body that holds its request's [`InFlight`] until hyper has sent it all or dropped it.
pub(super) struct TimedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> TimedBody<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, reporting its reads to the clocks. It also carries the connection's place under
/// the cap on connections: a connection upgraded to a WebSocket outlives its HTTP connection (hyper hands the
/// socket over), and keeps its place for as long as the socket is open.
pub(super) struct Watched<T> {
    io: T,
    timers: Arc<Timers>,
    _place: OwnedSemaphorePermit,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, timers: Arc<Timers>, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            timers,
            _place: place,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.timers.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(2);
    const IDLE: Duration = Duration::from_secs(30);

    async fn expiry_after(timers: &Timers) -> (Expiry, Duration) {
        let (_room, mut crowded) = watch::channel(false);
        let started = Instant::now();
        let expiry = timers.expired(&mut crowded).await;
        (expiry, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_owes_its_head_within_the_header_timeout() {
        let timers = Timers::new(HEADER, IDLE);
        assert_eq!(expiry_after(&timers).await, (Expiry::Header, HEADER));
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_clock_runs_then_the_first_byte_starts_the_header_clock() {
        let timers = Timers::new(HEADER, IDLE);
        drop(timers.request_started());
        assert_eq!(expiry_after(&timers).await, (Expiry::Idle, IDLE));

        let timers = Timers::new(HEADER, IDLE);
        drop(timers.request_started());
        tokio::time::advance(Duration::from_secs(10)).await;
        timers.bytes_read();
        // The head began 10 s into the idle period: it has the full header timeout from there.
        assert_eq!(expiry_after(&timers).await, (Expiry::Header, HEADER));
    }

    #[tokio::test(start_paused = true)]
    async fn no_clock_runs_while_a_response_is_open() {
        let timers = Timers::new(HEADER, IDLE);
        let stream = timers.request_started();
        let watch = expiry_after(&timers);
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), watch.as_mut())
                .await
                .is_err(),
            "an hour-long response is not idle"
        );
        drop(stream);
        let (expiry, _) = watch.await;
        assert_eq!(expiry, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn when_crowded_idle_connections_give_way_and_heads_get_less_time() {
        let (room, mut crowded) = watch::channel(false);
        {
            let timers = Timers::new(Duration::from_secs(10), IDLE);
            drop(timers.request_started());
            let watch = timers.expired(&mut crowded);
            tokio::pin!(watch);
            let idle_for = Duration::from_secs(5);
            assert!(tokio::time::timeout(idle_for, watch.as_mut())
                .await
                .is_err());
            room.send_replace(true);
            let started = Instant::now();
            assert_eq!(watch.await, Expiry::Idle);
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "an idle connection gives way at once"
            );
        }

        let timers = Timers::new(Duration::from_secs(10), IDLE);
        let started = Instant::now();
        assert_eq!(timers.expired(&mut crowded).await, Expiry::Header);
        assert_eq!(started.elapsed(), CROWDED_HEADER_TIMEOUT);
    }
}

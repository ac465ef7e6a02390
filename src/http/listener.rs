//! The HTTP listener: hyper with a timer, so that a client that is slow or silent cannot
//! hold a connection, and with a cap on open connections.
//!
//! `axum::serve` runs hyper without a timer, which turns hyper's header-read timeout off:
//! a connection that sent half a request head stayed open for ever, and so did one that
//! sent nothing. Here:
//! - a request head must arrive whole within `header_read_timeout` of the connection's
//!   start or of the previous response (HTTP/1; hyper's own timer);
//! - a connection with no request in flight is closed after `header_read_timeout` before
//!   its first request and `idle_timeout` after its last response (HTTP/1 and HTTP/2,
//!   and the bytes before hyper knows which protocol it is);
//! - a request body may pause at most `header_read_timeout` between two chunks;
//! - at most `max_connections` are open: past it, new connections wait in the kernel's
//!   accept queue (and are refused by it once that is full).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long a connection may take and how many may be open.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl HttpLimits {
    /// The limits `serve` runs with: the configured ones, with the connection cap lowered
    /// to what `fds` open files allow (see [`connection_cap`]).
    pub fn of(config: &crate::config::Config, fds: Option<u64>) -> HttpLimits {
        let max_connections = connection_cap(config.max_connections, fds);
        if max_connections < config.max_connections {
            tracing::warn!(
                configured = config.max_connections,
                open_file_limit = fds,
                max_connections,
                "the open-file limit (ulimit -n) allows fewer client connections than configured; \
                 raise it to serve more requests at once"
            );
        }
        HttpLimits {
            header_read_timeout: config.http_header_read_timeout,
            idle_timeout: config.http_idle_timeout,
            max_connections,
        }
    }
}

/// Descriptors kept aside from client connections and their upstream connections: the
/// listener, the store's files and pools, the log, a provider check.
const RESERVED_FDS: u64 = 256;

/// Raises the process's soft limit on open files to its hard limit (a proxied request in
/// flight holds two descriptors, its client's and its provider's, and distributions start
/// processes at a soft 1,024) and returns the soft limit now in force, if it can be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` read and write only the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The connection cap that fits `fds` open files: `max_connections`, or fewer when each
/// connection and its upstream connection would not fit beside [`RESERVED_FDS`]. Past the
/// file limit `accept` fails with EMFILE and upstream connects fail with it too, so a cap
/// above it only turns waiting clients into errors.
pub fn connection_cap(max_connections: usize, fds: Option<u64>) -> usize {
    let Some(fds) = fds else {
        return max_connections.max(1);
    };
    let fit = usize::try_from(fds.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
    max_connections.min(fit).max(1)
}

/// After a connection is told to close for idleness, how long it has to do so cleanly
/// (an HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets
/// every connection finish its requests and returns once all are closed. Handlers see
/// the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Each connection holds a receiver; the loop's end waits until all are dropped.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was taken:
                    // wait a little rather than spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, router, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
}

/// What the watchdog of one connection needs to know: requests in flight, and when the
/// last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    /// Whether any request has been seen: before the first, the header-read timeout
    /// bounds the wait; afterwards the idle timeout does.
    served: std::sync::atomic::AtomicBool,
    /// Wakes the watchdog when a request starts or ends, to move its deadline.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn start(&self) {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    fn end(&self) {
        *self.last.lock() = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// When the connection is idle for too long, if no request is in flight.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let wait = if self.served.load(Ordering::Relaxed) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        Some(*self.last.lock() + wait)
    }
}

/// One request in flight on a connection, until its response body is sent or dropped (or
/// the request is cancelled), so that a long stream is never taken for an idle connection.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.start();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A request body that must keep coming: a pause between two of its chunks longer than
/// the header-read timeout ends it with an error, so a client that trickles a body
/// cannot hold a handler and a connection for ever.
struct Paced {
    inner: Incoming,
    pause: Duration,
    /// Armed at the handler's first read: a handler may look at the head first.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the client paused the request body for longer than the header-read timeout")]
struct BodyStalled;

impl http_body::Body for Paced {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let next = Instant::now() + self.pause;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(d) = self.deadline.as_mut() {
                    d.as_mut().reset(next);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`].
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
        served: std::sync::atomic::AtomicBool::new(false),
        changed: tokio::sync::Notify::new(),
    });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let router = router.clone();
        let in_flight = InFlight::new(seen.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        async move {
            // The router's error type is Infallible: every failure is a response.
            let pause = limits.header_read_timeout;
            let req = req.map(|inner| {
                Body::new(Paced {
                    inner,
                    pause,
                    deadline: None,
                })
            });
            let res = router.oneshot(req).await?;
            Ok::<_, Infallible>(res.map(|inner| Tracked {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut conn = pin!(conn);
    let mut closing: Option<Instant> = None;
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        // A connection told to close for idleness that has not closed within the grace,
        // with still nothing in flight, is dropped.
        let idle_at = match closing {
            Some(at) => activity.deadline(&limits).map(|_| at),
            None => activity.deadline(&limits),
        };
        let sleep = async {
            match idle_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                break;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            // A request started or ended: the deadline moved.
            () = activity.changed.notified() => {}
            () = sleep => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    match closing {
                        None => {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(Instant::now() + CLOSE_GRACE);
                        }
                        Some(at) if at <= Instant::now() => break,
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_two_descriptors_per_connection_beside_a_reserve() {
        assert_eq!(connection_cap(16_384, None), 16_384);
        assert_eq!(connection_cap(16_384, Some(1_048_576)), 16_384);
        // 20,000 files: (20,000 - 256) / 2.
        assert_eq!(connection_cap(16_384, Some(20_000)), 9_872);
        assert_eq!(connection_cap(100, Some(1_024)), 100);
        assert_eq!(connection_cap(4_096, Some(1_024)), 384);
        // Never zero, even with a limit below the reserve.
        assert_eq!(connection_cap(10, Some(100)), 1);
        assert_eq!(connection_cap(0, None), 1);
    }

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let soft = raise_fd_limit().expect("getrlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads into the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) },
            0
        );
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(lim.rlim_cur, soft);
    }
}

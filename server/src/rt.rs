//! The glue that lets hyper (and tonic on top of it) run on a glommio executor: an executor that
//! spawns on the current core, a timer on glommio timers, and IO through tokio-util's compat
//! layer over glommio's futures-io sockets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use send_wrapper::SendWrapper;

thread_local! {
    static REQUEST_QUEUE: std::cell::Cell<Option<glommio::TaskQueueHandle>> =
        const { std::cell::Cell::new(None) };
}

/// Sets the task queue this core runs HTTP/2 streams (gRPC requests) in.
///
/// The gRPC connections themselves run in a queue of their own that glommio schedules first
/// when it has work: they read every frame as soon as it arrives, so a backlog waits in the
/// request queue — where each request's queueing time is measured and the overload shedding
/// (`admission`) can refuse what waited too long — instead of unseen in socket buffers.
pub fn set_request_queue(queue: glommio::TaskQueueHandle) {
    REQUEST_QUEUE.with(|q| q.set(Some(queue)));
}

/// Spawns hyper's background tasks (HTTP/2 streams) on the current glommio core, in the
/// request queue if one is set.
#[derive(Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        match REQUEST_QUEUE.with(|q| q.get()) {
            Some(queue) => match glommio::spawn_local_into(fut, queue) {
                Ok(task) => {
                    task.detach();
                }
                // Only if the queue was removed, which never happens: nothing to run then.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot spawn a request task");
                }
            },
            None => {
                glommio::spawn_local(fut).detach();
            }
        }
    }
}

/// hyper's timer on glommio timers.
///
/// hyper wants `Send + Sync` sleeps; glommio timers are bound to their core. Everything of a
/// connection runs on the core that accepted it, so the wrapper's thread check never fires.
#[derive(Clone, Copy, Default)]
pub struct LocalTimer;

struct LocalSleep(SendWrapper<glommio::timer::Timer>);

impl Future for LocalSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut *self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for LocalSleep {}

impl hyper::rt::Timer for LocalTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LocalSleep(SendWrapper::new(glommio::timer::Timer::new(
            duration,
        ))))
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A glommio TCP stream as hyper IO.
pub type HyperIo = hyper_util::rt::TokioIo<tokio_util::compat::Compat<glommio::net::TcpStream>>;

/// Wraps a glommio TCP stream for hyper.
pub fn hyper_io(stream: glommio::net::TcpStream) -> HyperIo {
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    hyper_util::rt::TokioIo::new(stream.compat())
}

/// A connection's IO that remembers when a read last brought bytes: the arrival time of the
/// requests parsed from them (HTTP/1.1 has no other; see `admission`).
pub struct StampedIo<T> {
    inner: T,
    last_read: std::rc::Rc<std::cell::Cell<Instant>>,
}

impl<T> StampedIo<T> {
    /// Wraps `inner`; the returned cell holds the time of the last read that brought bytes.
    pub fn new(inner: T) -> (StampedIo<T>, std::rc::Rc<std::cell::Cell<Instant>>) {
        let last_read = std::rc::Rc::new(std::cell::Cell::new(Instant::now()));
        (
            StampedIo {
                inner,
                last_read: last_read.clone(),
            },
            last_read,
        )
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StampedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last_read.set(Instant::now());
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StampedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A glommio TCP stream as hyper IO that stamps its reads ([`StampedIo`]).
pub type StampedHyperIo =
    hyper_util::rt::TokioIo<StampedIo<tokio_util::compat::Compat<glommio::net::TcpStream>>>;

/// Wraps a glommio TCP stream for hyper, with the cell its reads stamp.
pub fn stamped_hyper_io(
    stream: glommio::net::TcpStream,
) -> (StampedHyperIo, std::rc::Rc<std::cell::Cell<Instant>>) {
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let (io, last_read) = StampedIo::new(stream.compat());
    (hyper_util::rt::TokioIo::new(io), last_read)
}

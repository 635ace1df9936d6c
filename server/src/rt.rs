//! The glue that lets hyper (and tonic on top of it) run on a glommio executor: an executor that
//! spawns on the current core, a timer on glommio timers, and hyper IO straight over glommio's
//! sockets.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
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

/// A glommio TCP stream as hyper IO, optionally stamping the time of every read that brings
/// bytes: the arrival time of the requests parsed from them (HTTP/1.1 has no other; see
/// `admission`).
///
/// Why not tokio-util's compat layer under hyper-util's `TokioIo`: futures-io reads want
/// initialized bytes, so compat zero-filled hyper's whole unfilled read buffer (8 KiB and
/// more) before every read; that was 2 % of an HTTP registration. Reading into a per-core
/// scratch buffer, zeroed once, and copying out the few hundred bytes that arrived costs a
/// fraction of it and needs no unsafe code. glommio's plain stream reads synchronously
/// (`recv`, or a readiness poll when nothing is there), so the scratch is never held across a
/// suspension.
pub struct GlommioIo {
    stream: glommio::net::TcpStream,
    last_read: Option<Rc<Cell<Instant>>>,
}

thread_local! {
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 64 << 10].into_boxed_slice());
}

impl GlommioIo {
    /// Wraps `stream` for hyper.
    pub fn new(stream: glommio::net::TcpStream) -> GlommioIo {
        GlommioIo {
            stream,
            last_read: None,
        }
    }

    /// Wraps `stream` for hyper; the returned cell holds the time of the last read that
    /// brought bytes.
    pub fn stamped(stream: glommio::net::TcpStream) -> (GlommioIo, Rc<Cell<Instant>>) {
        let last_read = Rc::new(Cell::new(Instant::now()));
        let io = GlommioIo {
            stream,
            last_read: Some(last_read.clone()),
        };
        (io, last_read)
    }
}

impl hyper::rt::Read for GlommioIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncRead;
        let this = self.get_mut();
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let want = buf.remaining().min(scratch.len());
            let n = match Pin::new(&mut this.stream).poll_read(cx, &mut scratch[..want]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n > 0 {
                if let Some(stamp) = &this.last_read {
                    stamp.set(Instant::now());
                }
            }
            buf.put_slice(&scratch[..n]);
            Poll::Ready(Ok(()))
        })
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use futures_lite::AsyncWrite;
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

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

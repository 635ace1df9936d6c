//! The glue that lets hyper (and tonic on top of it) run on a glommio executor: an executor that
//! spawns on the current core, a timer on glommio timers, and hyper IO straight over glommio's
//! sockets.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
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

/// hyper's timer for HTTP/1.1 connections: coarse (`COARSE_TICK`), with no glommio timer per
/// request.
///
/// hyper arms its header-read timeout anew for every request on a keep-alive connection and
/// drops it once the head is parsed. On `LocalTimer` that was a glommio timer per request —
/// an entry in the reactor's timer map and, whenever the earliest deadline moved, an
/// io_uring timeout cancelled and re-armed (`io_timeout_cancel` in a beat's profile). A
/// 30 s timeout needs no millisecond precision: here a sleep is a slot in a per-core table,
/// taken only when hyper finds no bytes and polls it, freed when hyper drops it, and one
/// ticker task per core wakes the expired ones every `COARSE_TICK` while any slot is taken.
/// A sleep is plain data (`Send + Sync` without a wrapper); everything of a connection runs
/// on the core that accepted it, so it is polled and dropped there.
#[derive(Clone, Copy, Default)]
pub struct CoarseTimer;

/// How late a `CoarseTimer` sleep may fire.
pub const COARSE_TICK: Duration = Duration::from_millis(250);

struct CoarseSlot {
    deadline: Instant,
    waker: Option<Waker>,
    generation: u32,
}

#[derive(Default)]
struct CoarseTable {
    slots: Vec<CoarseSlot>,
    free: Vec<u32>,
    taken: usize,
    ticking: bool,
}

thread_local! {
    static COARSE: RefCell<CoarseTable> = RefCell::new(CoarseTable::default());
}

struct CoarseSleep {
    deadline: Instant,
    /// (slot index, generation) once polled pending.
    slot: Option<(u32, u32)>,
}

impl CoarseTable {
    fn take(&mut self, deadline: Instant, waker: Waker) -> (u32, u32) {
        self.taken += 1;
        if let Some(i) = self.free.pop() {
            let s = &mut self.slots[i as usize];
            s.deadline = deadline;
            s.waker = Some(waker);
            return (i, s.generation);
        }
        self.slots.push(CoarseSlot {
            deadline,
            waker: Some(waker),
            generation: 0,
        });
        ((self.slots.len() - 1) as u32, 0)
    }

    fn release(&mut self, (i, generation): (u32, u32)) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            if s.generation == generation {
                s.generation = s.generation.wrapping_add(1);
                s.waker = None;
                self.free.push(i);
                self.taken -= 1;
            }
        }
    }
}

/// Wakes the expired sleeps of this core every `COARSE_TICK` while any is waiting.
async fn coarse_ticker() {
    loop {
        glommio::timer::sleep(COARSE_TICK).await;
        let now = Instant::now();
        let (expired, idle) = COARSE.with_borrow_mut(|t| {
            let expired: Vec<Waker> = t
                .slots
                .iter_mut()
                .filter(|s| s.deadline <= now)
                .filter_map(|s| s.waker.take())
                .collect();
            let idle = t.taken == 0;
            if idle {
                t.ticking = false;
            }
            (expired, idle)
        });
        // Woken outside the borrow: a woken task may run (and drop its sleep) at once.
        expired.into_iter().for_each(Waker::wake);
        if idle {
            return;
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(slot) = self.slot.take() {
                COARSE.with_borrow_mut(|t| t.release(slot));
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let slot = self.slot;
        let (slot, start_ticker) = COARSE.with_borrow_mut(|t| {
            let slot = match slot {
                Some((i, g)) => match t.slots.get_mut(i as usize) {
                    Some(s) if s.generation == g => {
                        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            s.waker = Some(cx.waker().clone());
                        }
                        (i, g)
                    }
                    _ => t.take(deadline, cx.waker().clone()),
                },
                None => t.take(deadline, cx.waker().clone()),
            };
            let start = !t.ticking;
            t.ticking = true;
            (slot, start)
        });
        self.slot = Some(slot);
        if start_ticker {
            glommio::spawn_local(coarse_ticker()).detach();
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // `try_with`: a sleep dropped while the thread's locals are torn down.
            let _ = COARSE.try_with(|t| {
                if let Ok(mut t) = t.try_borrow_mut() {
                    t.release(slot);
                }
            });
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep {
            deadline,
            slot: None,
        })
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

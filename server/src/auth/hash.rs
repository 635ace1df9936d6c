//! bcrypt off the cores. A check at cost 10 takes tens of milliseconds of CPU (measured:
//! see the README's auth section): on a glommio core it would stall every other request of
//! that core, so checks and hashes run on a small pool of threads fed by a bounded queue, and
//! the core awaits the answer. A full queue is an overload (503), not a wait.
//!
//! Clients that send `username` + `password` on every call (the Node SDK) would cost one
//! bcrypt per request: each core remembers the pairs that passed, as a SHA-256 digest of
//! (user, password, stored hash) — never the password — in a bounded set. A changed password
//! changes the stored hash, so the old pair no longer matches.
//!
//! Comparisons: bcrypt's own check compares in constant time (`subtle`), token signatures
//! are checked by `ring`'s HMAC verification (constant time); the cache is looked up by a
//! SHA-256 digest whose timing says nothing usable about the password.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;

/// Nacos's `BCryptPasswordEncoder` strength.
pub const COST: u32 = 10;
/// Threads running bcrypt.
const WORKERS: usize = 2;
/// Jobs waiting for them; past it, checks are refused.
const QUEUE: usize = 256;
/// Verified pairs remembered per core.
const CACHE: usize = 4096;

enum Job {
    Verify {
        password: String,
        /// `None`: the user is unknown; checked against [`decoy`] all the same.
        hash: Option<String>,
        reply: futures_channel::oneshot::Sender<bool>,
    },
    Hash {
        password: String,
        reply: futures_channel::oneshot::Sender<Option<String>>,
    },
}

/// The pool is busy: too many checks are waiting.
#[derive(Debug)]
pub struct Busy;

fn pool() -> &'static flume::Sender<Job> {
    static POOL: OnceLock<flume::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = flume::bounded::<Job>(QUEUE);
        for i in 0..WORKERS {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("nacelle-bcrypt-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        match job {
                            Job::Verify {
                                password,
                                hash,
                                reply,
                            } => {
                                let ok = match &hash {
                                    Some(h) => bcrypt::verify(password.as_bytes(), h),
                                    None => {
                                        bcrypt::verify(password.as_bytes(), decoy()).map(|_| false)
                                    }
                                };
                                let _ = reply.send(ok.unwrap_or(false));
                            }
                            Job::Hash { password, reply } => {
                                let _ = reply.send(bcrypt::hash(password.as_bytes(), COST).ok());
                            }
                        }
                    }
                });
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start a bcrypt thread");
            }
        }
        tx
    })
}

/// Whether `password` matches the bcrypt `hash` (constant-time inside bcrypt); for an
/// unknown user (`None`) false, after as long as a real check takes.
pub async fn verify(password: &str, hash: Option<&str>) -> Result<bool, Busy> {
    let (reply, rx) = futures_channel::oneshot::channel();
    pool()
        .try_send(Job::Verify {
            password: password.to_owned(),
            hash: hash.map(str::to_owned),
            reply,
        })
        .map_err(|_| Busy)?;
    rx.await.map_err(|_| Busy)
}

/// The bcrypt hash of `password` (a random salt), for a new user or password.
pub async fn hash(password: &str) -> Result<String, Busy> {
    let (reply, rx) = futures_channel::oneshot::channel();
    pool()
        .try_send(Job::Hash {
            password: password.to_owned(),
            reply,
        })
        .map_err(|_| Busy)?;
    rx.await.map_err(|_| Busy)?.ok_or(Busy)
}

/// A hash checked for unknown users so that their answer takes as long as a wrong
/// password's (no probing for user names by timing). Computed once, on a pool thread.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| bcrypt::hash(b"nacelle-decoy-password", COST).unwrap_or_default())
}

type Digest = [u8; 32];

fn digest(username: &str, password: &str, hash: &str) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [username, password, hash] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[derive(Default)]
struct Verified {
    set: HashSet<Digest>,
    order: VecDeque<Digest>,
}

thread_local! {
    static VERIFIED: RefCell<Verified> = RefCell::new(Verified::default());
}

/// Whether this core already saw `password` pass for `username` with this stored `hash`.
pub fn known_good(username: &str, password: &str, hash: &str) -> bool {
    let d = digest(username, password, hash);
    VERIFIED.with(|v| v.borrow().set.contains(&d))
}

/// Remembers a pair that passed (the oldest is forgotten past the bound).
pub fn remember(username: &str, password: &str, hash: &str) {
    let d = digest(username, password, hash);
    VERIFIED.with(|v| {
        let mut v = v.borrow_mut();
        if v.set.insert(d) {
            v.order.push_back(d);
            if v.order.len() > CACHE {
                if let Some(old) = v.order.pop_front() {
                    v.set.remove(&old);
                }
            }
        }
    });
}

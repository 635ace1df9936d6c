//! The peer transport between real endpoints on loopback: frames both ways, mutual TLS with the
//! cluster CA (and refusal of another CA's certificate), insecure mode, a peer's death and
//! restart, receive backpressure and the frame size limit.
//!
//! The modules under test come from the `nacelle_server` library (`peer`, `certs`). Each test
//! runs its nodes as separate transports (own UDP sockets on distinct 127.0.x.y addresses,
//! kernel-chosen ports) on one glommio executor; timings are shortened but deadlines generous,
//! for a loaded 2-core machine.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use nacelle_server::certs;
use nacelle_server::peer::tls::TlsMode;
use nacelle_server::peer::transport::{Event, Health, SendError, Transport, TransportConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn block_on<F: Future<Output = ()>>(f: F) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("peer-test")
        .make()
        .expect("glommio executor (RLIMIT_MEMLOCK >= 512 KiB?)")
        .run(f);
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// Runs `f` for at most `within`.
async fn deadline<T>(within: Duration, f: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(within).await;
        None
    })
    .await
}

/// A CA and a mutual-TLS mode per listed IP, all signed by it.
fn cluster_tls(ips: &[&str]) -> (certs::PemPair, Vec<TlsMode>) {
    let ca = certs::generate_ca("test CA").expect("ca");
    let modes = ips
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let node = certs::generate_node(&ca, &format!("n{i}"), &[ip(a)]).expect("node");
            TlsMode::from_pem(
                node.cert.as_bytes(),
                node.key.as_bytes(),
                ca.cert.as_bytes(),
            )
            .expect("tls")
        })
        .collect();
    (ca, modes)
}

/// Test timings: dead peers are noticed in ~1.5 s and Down ~3 s later.
fn config(addr: SocketAddr, tls: TlsMode) -> TransportConfig {
    let mut c = TransportConfig::new(addr, tls);
    c.idle_timeout = Duration::from_millis(1500);
    c.keep_alive = Duration::from_millis(300);
    c.dial_timeout = Duration::from_millis(700);
    c.down_after = Duration::from_secs(3);
    c.backoff_max = Duration::from_secs(1);
    c
}

fn start(ip_s: &str, tls: TlsMode) -> Transport {
    Transport::start(config(SocketAddr::new(ip(ip_s), 0), tls)).expect("transport starts")
}

async fn wait_health(t: &Transport, peer: SocketAddr, want: Health, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if t.health(peer) == want {
            return true;
        }
        sleep_ms(10).await;
    }
    false
}

/// Receives `n` frames (health events skipped), or whatever arrived within `within`.
async fn frames(t: &Transport, n: usize, within: Duration) -> Vec<(SocketAddr, Bytes)> {
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    deadline(within, async {
        while sink.borrow().len() < n {
            if let Event::Frame { from, body } = t.recv().await {
                sink.borrow_mut().push((from, body));
            }
        }
    })
    .await;
    got.take()
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn frames_of_all_sizes_both_ways_in_order() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.1.1", "127.0.1.2"]);
        let a = start("127.0.1.1", tls[0].clone());
        let b = start("127.0.1.2", tls[1].clone());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        assert!(wait_health(&b, aa, Health::Up, Duration::from_secs(10)).await);

        let sizes = [
            0usize,
            10,
            100,
            1000,
            1500,
            10_000,
            100_000,
            1 << 20,
            4 << 20,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            a.send(ba, pattern(n, i as u8)).expect("a queues");
            b.send(aa, pattern(n, 100 + i as u8)).expect("b queues");
        }
        const SMALL: usize = 10_000;
        for i in 0..SMALL {
            a.send(ba, Bytes::from(format!("frame {i}")))
                .expect("queues");
        }
        let at_b = glommio::spawn_local({
            let b = b.clone();
            async move { frames(&b, sizes.len() + SMALL, Duration::from_secs(20)).await }
        });
        let at_a = frames(&a, sizes.len(), Duration::from_secs(20)).await;
        let at_b = at_b.await;

        assert_eq!(at_a.len(), sizes.len(), "frames b -> a");
        for (i, (from, body)) in at_a.iter().enumerate() {
            assert_eq!(*from, ba);
            assert_eq!(*body, pattern(sizes[i], 100 + i as u8), "b -> a frame {i}");
        }
        assert_eq!(at_b.len(), sizes.len() + SMALL, "frames a -> b");
        for (i, (from, body)) in at_b.iter().enumerate() {
            assert_eq!(*from, aa);
            if i < sizes.len() {
                assert_eq!(*body, pattern(sizes[i], i as u8), "a -> b frame {i}");
            } else {
                assert_eq!(*body, format!("frame {}", i - sizes.len()).as_bytes());
            }
        }
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.frames_sent, (sizes.len() + SMALL) as u64);
        assert_eq!(sb.frames_received, (sizes.len() + SMALL) as u64);
        assert_eq!(sa.connects, 1);
        assert_eq!(sa.bytes_sent, sb.bytes_received);

        // What the API refuses.
        let nobody: SocketAddr = "127.0.1.9:9".parse().expect("addr");
        assert_eq!(a.send(nobody, Bytes::new()), Err(SendError::UnknownPeer));
        let huge = Bytes::from(vec![0u8; (16 << 20) + 1]);
        assert_eq!(a.send(ba, huge), Err(SendError::TooLarge));
        assert_eq!(a.health(nobody), Health::Unknown);
    });
}

#[test]
fn certificate_from_another_ca_is_refused() {
    block_on(async {
        let (ca, tls) = cluster_tls(&["127.0.2.1"]);
        let a = start("127.0.2.1", tls[0].clone());
        // b trusts the cluster CA, but its own certificate comes from another CA: its dial gets
        // as far as TLS 1.3 lets a client believe it is connected, then a refuses it.
        let other = certs::generate_ca("other CA").expect("ca");
        let node = certs::generate_node(&other, "intruder", &[ip("127.0.2.2")]).expect("node");
        let b_tls = TlsMode::from_pem(
            node.cert.as_bytes(),
            node.key.as_bytes(),
            ca.cert.as_bytes(),
        )
        .expect("tls");
        let b = start("127.0.2.2", b_tls);
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        b.send(aa, Bytes::from_static(b"let me in"))
            .expect("queued");

        let until = Instant::now() + Duration::from_secs(3);
        let mut delivered = 0;
        while Instant::now() < until {
            assert_ne!(
                a.health(ba),
                Health::Up,
                "a accepted b's server certificate"
            );
            assert_ne!(
                b.health(aa),
                Health::Up,
                "b counted a refused handshake as up"
            );
            while let Some(ev) = a.try_recv() {
                if matches!(ev, Event::Frame { .. }) {
                    delivered += 1;
                }
            }
            sleep_ms(10).await;
        }
        assert_eq!(delivered, 0);
        assert!(a.stats().refused >= 1, "a refused nothing: {:?}", a.stats());
        assert!(b.stats().dial_failures >= 1, "{:?}", b.stats());
        assert_eq!(a.stats().connects, 0);
        assert_eq!(b.stats().connects, 0);
    });
}

#[test]
fn insecure_nodes_talk() {
    block_on(async {
        let a = start("127.0.3.1", TlsMode::insecure().expect("insecure"));
        let b = start("127.0.3.2", TlsMode::insecure().expect("insecure"));
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        // Queued before the connection is up: delivered once it is.
        a.send(ba, Bytes::from_static(b"ping")).expect("queued");
        let got = frames(&b, 1, Duration::from_secs(10)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"ping"))]);
        b.send(aa, Bytes::from_static(b"pong")).expect("queued");
        let got = frames(&a, 1, Duration::from_secs(10)).await;
        assert_eq!(got, vec![(ba, Bytes::from_static(b"pong"))]);
    });
}

/// CPU time of the calling thread (the executor's), from /proc, in clock ticks.
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn idle_transports_stay_quiet() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.9.1", "127.0.9.2"]);
        let a = start("127.0.9.1", tls[0].clone());
        let b = start("127.0.9.2", tls[1].clone());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        assert!(wait_health(&b, aa, Health::Up, Duration::from_secs(10)).await);
        let before = thread_cpu_ticks();
        glommio::timer::sleep(Duration::from_secs(2)).await;
        let used = thread_cpu_ticks() - before;
        // Keep-alives only: a busy loop would burn ~200 ticks (100 Hz) here.
        assert!(used < 20, "two idle transports used {used} ticks in 2 s");
        assert_eq!(a.health(ba), Health::Up);
    });
}

#[test]
fn shutdown_tells_peers_at_once() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.8.1", "127.0.8.2"]);
        // A long idle timeout: only the close frame can make b notice quickly.
        let slow = |ip_s: &str, tls: TlsMode| {
            let mut c = config(SocketAddr::new(ip(ip_s), 0), tls);
            c.idle_timeout = Duration::from_secs(30);
            c.keep_alive = Duration::from_secs(5);
            c.down_after = Duration::from_secs(60);
            Transport::start(c).expect("starts")
        };
        let a = slow("127.0.8.1", tls[0].clone());
        let b = slow("127.0.8.2", tls[1].clone());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        assert!(wait_health(&b, aa, Health::Up, Duration::from_secs(10)).await);
        a.shutdown(Duration::from_millis(500)).await;
        drop(a);
        assert!(
            wait_health(&b, aa, Health::Suspicious, Duration::from_secs(10)).await,
            "b did not notice: {:?}",
            b.health(aa)
        );
    });
}

#[test]
fn a_restarted_peer_resets_the_old_connection_at_once() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.12.1", "127.0.12.2"]);
        // A long idle timeout: only the new process's stateless reset can make a notice
        // quickly that its connection goes to a dead process.
        let slow = |addr: SocketAddr, tls: TlsMode| {
            let mut c = config(addr, tls);
            c.idle_timeout = Duration::from_secs(30);
            c.keep_alive = Duration::from_millis(300);
            c.down_after = Duration::from_secs(60);
            Transport::start(c)
        };
        let a = slow(SocketAddr::new(ip("127.0.12.1"), 0), tls[0].clone()).expect("a starts");
        let b = slow(SocketAddr::new(ip("127.0.12.2"), 0), tls[1].clone()).expect("b starts");
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        // Crash b (no close frame) and start it again on the same address with the same key.
        drop(b);
        let mut restarted = None;
        for _ in 0..100 {
            if let Ok(t) = slow(ba, tls[1].clone()) {
                restarted = Some(t);
                break;
            }
            sleep_ms(20).await;
        }
        let b = restarted.expect("b restarts on its address");
        let restarted_at = Instant::now();
        b.set_peers([aa]);
        // a's keep-alives on the old connection reach the new process, which resets it (a
        // frame written into it meanwhile is lost, as with any crash: Distro retries).
        let reset = deadline(Duration::from_secs(5), async {
            while a.stats().connections_lost == 0 {
                sleep_ms(10).await;
            }
        })
        .await;
        assert!(
            reset.is_some(),
            "a still holds the dead connection {:?} after the restart (idle timeout 30 s): {:?}",
            restarted_at.elapsed(),
            a.stats()
        );
        // a redials at once, and its frames reach the new b.
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(5)).await);
        a.send(ba, Bytes::from_static(b"after")).expect("queued");
        let got = frames(&b, 1, Duration::from_secs(5)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"after"))]);
    });
}

#[test]
fn a_peer_restarted_after_a_clean_shutdown_is_up_again_within_a_round_trip() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.13.1", "127.0.13.2"]);
        let mut ca = config(SocketAddr::new(ip("127.0.13.1"), 0), tls[0].clone());
        ca.dial_timeout = Duration::from_secs(3);
        let a = Transport::start(ca).expect("a starts");
        let b = start("127.0.13.2", tls[1].clone());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        // b leaves cleanly: a sees it at once and redials after its first backoff (200 ms),
        // into the void — no process is there, and an unanswered QUIC Initial is only
        // retransmitted after a second or more.
        b.shutdown(Duration::from_millis(200)).await;
        drop(b);
        assert!(wait_health(&a, ba, Health::Suspicious, Duration::from_secs(2)).await);
        sleep_ms(260).await;
        let mut restarted = None;
        for _ in 0..100 {
            let mut c = config(ba, tls[1].clone());
            c.down_after = Duration::from_secs(60);
            if let Ok(t) = Transport::start(c) {
                restarted = Some(t);
                break;
            }
            sleep_ms(20).await;
        }
        let b = restarted.expect("b restarts on its address");
        let restarted_at = Instant::now();
        b.set_peers([aa]);
        // b's dial reaches a, which replaces its own unanswered dial with one that answers
        // b's: both directions are UP within a few round trips, not at a's retransmission.
        assert!(wait_health(&b, aa, Health::Up, Duration::from_secs(5)).await);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(5)).await);
        let both_up = restarted_at.elapsed();
        assert!(
            both_up < Duration::from_millis(500),
            "a saw the restarted b UP only after {both_up:?}"
        );
        a.send(ba, Bytes::from_static(b"after")).expect("queued");
        let got = frames(&b, 1, Duration::from_secs(5)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"after"))]);
    });
}

#[test]
fn dead_peer_goes_suspicious_then_down_and_comes_back() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.4.1", "127.0.4.2"]);
        let a = start("127.0.4.1", tls[0].clone());
        let b = start("127.0.4.2", tls[1].clone());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        a.send(ba, Bytes::from_static(b"before")).expect("queued");
        assert_eq!(frames(&b, 1, Duration::from_secs(10)).await.len(), 1);

        // Crash b: its tasks and socket go away without a word to a.
        drop(b);
        let killed = Instant::now();
        assert!(
            wait_health(&a, ba, Health::Suspicious, Duration::from_secs(8)).await,
            "not suspicious: {:?}",
            a.health(ba)
        );
        let suspicious_after = killed.elapsed();
        // While suspicious, frames are kept for the next connection.
        a.send(ba, Bytes::from_static(b"kept"))
            .expect("queued while suspicious");
        assert!(a.queued_bytes(ba) > 0);
        assert!(
            wait_health(&a, ba, Health::Down, Duration::from_secs(10)).await,
            "not down: {:?}",
            a.health(ba)
        );
        let down_after = killed.elapsed();
        assert_eq!(a.queued_bytes(ba), 0, "the queue of a down peer is dropped");
        assert_eq!(
            a.send(ba, Bytes::from_static(b"x")),
            Err(SendError::NotConnected)
        );
        let mut seen = Vec::new();
        while let Some(ev) = a.try_recv() {
            if let Event::Health { peer, health } = ev {
                assert_eq!(peer, ba);
                seen.push(health);
            }
        }
        assert_eq!(seen.last(), Some(&Health::Down), "health events: {seen:?}");
        eprintln!("suspicious after {suspicious_after:?}, down after {down_after:?}");

        // Restart b on the same address (the old socket may take a moment to close).
        let mut restarted = None;
        for _ in 0..100 {
            match Transport::start(config(ba, tls[1].clone())) {
                Ok(t) => {
                    restarted = Some(t);
                    break;
                }
                Err(_) => sleep_ms(20).await,
            }
        }
        let b = restarted.expect("b restarts on its address");
        b.set_peers([aa]);
        assert!(
            wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await,
            "not up again: {:?}",
            a.health(ba)
        );
        a.send(ba, Bytes::from_static(b"after")).expect("queued");
        let got = frames(&b, 1, Duration::from_secs(10)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"after"))]);
        assert!(wait_health(&b, aa, Health::Up, Duration::from_secs(10)).await);
        b.send(aa, Bytes::from_static(b"back")).expect("queued");
        let got = frames(&a, 1, Duration::from_secs(10)).await;
        assert_eq!(got, vec![(ba, Bytes::from_static(b"back"))]);
        assert!(a.stats().connections_lost >= 1);
        assert_eq!(a.stats().connects, 2);
    });
}

/// Two peers: `a`, and `b` that buffers at most 64 KiB of unread frames and grants a
/// 256 KiB stream window.
fn sender_and_slow_reader(a_ip: &str, b_ip: &str) -> (Transport, Transport) {
    let (_ca, tls) = cluster_tls(&[a_ip, b_ip]);
    let a = start(a_ip, tls[0].clone());
    let mut cfg = config(SocketAddr::new(ip(b_ip), 0), tls[1].clone());
    cfg.max_recv_buffered = 64 << 10;
    cfg.stream_window = 256 << 10;
    let b = Transport::start(cfg).expect("starts");
    a.set_peers([b.local_addr()]);
    b.set_peers([a.local_addr()]);
    (a, b)
}

/// Sends `n` frames of 1000 bytes: the index (u32 LE), then `index % 251` repeated.
fn send_numbered(a: &Transport, to: SocketAddr, n: usize) {
    for i in 0..n {
        let mut body = vec![(i % 251) as u8; 1000];
        body[..4].copy_from_slice(&(i as u32).to_le_bytes());
        a.send(to, body.into()).expect("queued");
    }
}

#[test]
fn slow_reader_pushes_back_and_loses_nothing() {
    block_on(async {
        let (a, b) = sender_and_slow_reader("127.0.5.1", "127.0.5.2");
        let ba = b.local_addr();
        const N: usize = 4000;
        send_numbered(&a, ba, N);
        // b does not read for a while: its buffer fills, then flow control holds a back.
        sleep_ms(1500).await;
        assert!(
            a.queued_bytes(ba) > 0 || a.health(ba) != Health::Up,
            "4 MB went through a 64 KiB receive budget and a 256 KiB window"
        );
        let got = frames(&b, N, Duration::from_secs(20)).await;
        assert_eq!(got.len(), N);
        for (i, (_, body)) in got.iter().enumerate() {
            assert_eq!(
                &body[..4],
                &(i as u32).to_le_bytes(),
                "frame {i} out of order"
            );
            assert_eq!(body.len(), 1000);
        }
        assert_eq!(a.health(ba), Health::Up);
    });
}

#[test]
fn a_connection_replaced_in_the_middle_of_a_frame_resumes_on_a_frame_boundary() {
    block_on(async {
        // b reads slowly and grants a small window: a's queue stops in the middle of a chunk.
        let (a, b) = sender_and_slow_reader("127.0.7.1", "127.0.7.2");
        let ba = b.local_addr();
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        const BEFORE: usize = 4000;
        send_numbered(&a, ba, BEFORE);
        sleep_ms(300).await;
        assert!(a.queued_bytes(ba) > 0, "still being written");
        // The member said it does not hear us: the connection is replaced mid-chunk.
        a.reconnect(ba);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        const AFTER: usize = 100;
        for i in 0..AFTER {
            a.send(ba, Bytes::from(format!("after {i}")))
                .expect("queued");
        }
        // b gets whole frames only, in order (some of the first ones are lost with the old
        // connection), then every later one, on a connection that stays up.
        let got = frames(&b, BEFORE + AFTER, Duration::from_secs(5)).await;
        let (early, late): (Vec<&Bytes>, Vec<&Bytes>) = got
            .iter()
            .map(|(_, body)| body)
            .partition(|body| body.len() == 1000);
        let mut last = None;
        for body in &early {
            let i = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            assert!(
                i < BEFORE && last.is_none_or(|l| i > l),
                "frame {i} after {last:?}"
            );
            assert!(
                body[4..].iter().all(|&x| x == (i % 251) as u8),
                "frame {i} garbled"
            );
            last = Some(i);
        }
        assert_eq!(
            late.len(),
            AFTER,
            "frames after the reconnect; b: {:?}",
            b.stats()
        );
        for (i, body) in late.iter().enumerate() {
            assert_eq!(**body, format!("after {i}").as_bytes());
        }
        assert_eq!(a.stats().connections_lost, 1, "{:?}", a.stats());
    });
}

#[test]
fn oversized_frame_closes_the_connection() {
    block_on(async {
        let (_ca, tls) = cluster_tls(&["127.0.6.1", "127.0.6.2"]);
        let a = start("127.0.6.1", tls[0].clone());
        let mut cfg = config(SocketAddr::new(ip("127.0.6.2"), 0), tls[1].clone());
        cfg.max_frame = 1024;
        let b = Transport::start(cfg).expect("starts");
        let (aa, ba) = (a.local_addr(), b.local_addr());
        a.set_peers([ba]);
        b.set_peers([aa]);
        assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
        a.send(ba, Bytes::from_static(b"small")).expect("queued");
        a.send(ba, Bytes::from(vec![7u8; 2048])).expect("queued");
        let got = frames(&b, 2, Duration::from_secs(3)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"small"))]);
        // a reconnects; later frames flow again.
        assert!(
            wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await
                && a.stats().connections_lost >= 1,
            "{:?} {:?}",
            a.health(ba),
            a.stats()
        );
        a.send(ba, Bytes::from_static(b"again")).expect("queued");
        let got = frames(&b, 1, Duration::from_secs(10)).await;
        assert_eq!(got, vec![(aa, Bytes::from_static(b"again"))]);
    });
}

/// Throughput between two nodes on two executors (two threads). Run with
/// `cargo test --release -p nacelle-server --test peer_transport -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let div: usize = std::env::var("PEER_TP_DIV")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // (frame size, frames, yield to the executor after each send: frames trickle in one by one
    // instead of arriving as a batch)
    for (size, count, trickle) in [
        (100usize, 400_000usize, false),
        (100, 200_000, true),
        (1000, 200_000, false),
        (64 << 10, 4000, false),
    ] {
        let count = count / div.max(1);
        let (tx_addr, rx_addr) = std::sync::mpsc::channel::<SocketAddr>();
        let (tx_back, rx_back) = std::sync::mpsc::channel::<SocketAddr>();
        let (_ca, tls) = cluster_tls(&["127.0.7.1", "127.0.7.2"]);
        let tls_b = tls[1].clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_rx = done.clone();
        let receiver = std::thread::spawn(move || {
            let mut elapsed = Duration::ZERO;
            block_on(async {
                let b = start("127.0.7.2", tls_b);
                tx_back.send(b.local_addr()).expect("send addr");
                let aa = rx_addr.recv().expect("addr");
                b.set_peers([aa]);
                let mut n = 0;
                let mut t0 = None;
                let mut report = Instant::now() + Duration::from_secs(1);
                while n < count {
                    if let Event::Frame { .. } = b.recv().await {
                        t0.get_or_insert_with(Instant::now);
                        n += 1;
                    }
                    if Instant::now() > report {
                        eprintln!("  received {n}: {:?}", b.stats());
                        report += Duration::from_secs(1);
                    }
                }
                elapsed = t0.map_or(Duration::ZERO, |t| t.elapsed());
                done_rx.store(true, std::sync::atomic::Ordering::Release);
            });
            elapsed
        });
        block_on(async {
            let a = start("127.0.7.1", tls[0].clone());
            tx_addr.send(a.local_addr()).expect("send addr");
            let ba = rx_back.recv().expect("addr");
            a.set_peers([ba]);
            assert!(wait_health(&a, ba, Health::Up, Duration::from_secs(10)).await);
            let body = Bytes::from(vec![1u8; size]);
            let mut sent = 0;
            while sent < count {
                match a.send(ba, body.clone()) {
                    Ok(()) if trickle => {
                        sent += 1;
                        future::yield_now().await;
                    }
                    Ok(()) => sent += 1,
                    Err(SendError::Full) => sleep_ms(1).await,
                    Err(e) => panic!("{e}"),
                }
            }
            // Keep a alive until b has everything (frames may sit in QUIC's send buffer).
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                sleep_ms(5).await;
            }
        });
        let elapsed = receiver.join().expect("receiver");
        let secs = elapsed.as_secs_f64();
        eprintln!(
            "{size} B frames{}: {count} in {secs:.2} s = {:.0} frames/s, {:.1} MB/s",
            if trickle { " (one per turn)" } else { "" },
            count as f64 / secs,
            (count * size) as f64 / secs / 1e6
        );
    }
}

#!/usr/bin/env python3
"""A userspace IP relay between the nodes' network namespaces (no netem on these machines).

Each node namespace gets a TUN device (`chxt<i>`, created here and moved into the namespace
by chaos.py) and a policy route: UDP packets to the peer port go out through the TUN device
instead of the bridge. This process reads each IPv4 packet from the sender's TUN device and
writes it, unchanged, into the receiver's TUN device, so the relay is transparent (addresses,
ports and checksums are untouched; QUIC sees a normal path). On the way it can drop
(partitions, one-way or both; random loss), delay, reorder (random jitter) and duplicate.

Commands, one JSON object per line on stdin (every key optional):
  {"block": [[1, 2], [2, 1]]}   directed node pairs whose packets are dropped (replaces the set)
  {"loss": 0.1}                  probability that any packet is dropped
  {"delay_ms": 20, "jitter_ms": 20, "dup": 0.05}   delay, uniform extra delay (reorders), duplicates
  {"stats": true}                print one JSON line of counters on stdout
The relay exits when stdin closes (so it never outlives chaos.py).

  python3 relay.py --nodes 3 --seed 1 --prefix 10.200.0.
"""
import argparse
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prefix", default="10.200.0.")
    ap.add_argument("--tun-prefix", default="chxt")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    prefix = bytes(int(x) for x in a.prefix.strip(".").split("."))
    tuns = {i: open_tun(f"{a.tun_prefix}{i}") for i in range(1, a.nodes + 1)}
    by_fd = {fd: i for i, fd in tuns.items()}
    block, loss, delay, jitter, dup = set(), 0.0, 0.0, 0.0, 0.0
    st = dict(forwarded=0, dropped_block=0, dropped_loss=0, duplicated=0, delayed=0, foreign=0, bytes=0)
    queue, seq = [], 0  # (due, seq, dst, packet)
    print("READY", flush=True)
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    buf = b""
    fds = list(tuns.values()) + [stdin]
    while True:
        now = time.monotonic()
        timeout = max(0.0, queue[0][0] - now) if queue else 1.0
        r, _, _ = select.select(fds, [], [], timeout)
        for fd in r:
            if fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    if "block" in cmd:
                        block = {tuple(p) for p in cmd["block"]}
                    loss = cmd.get("loss", loss)
                    delay = cmd.get("delay_ms", delay * 1000) / 1000
                    jitter = cmd.get("jitter_ms", jitter * 1000) / 1000
                    dup = cmd.get("dup", dup)
                    if cmd.get("stats"):
                        print(json.dumps(st), flush=True)
                continue
            src = by_fd[fd]
            for _ in range(64):  # drain a burst, bounded so no device starves the others
                try:
                    p = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(p) < 20 or p[0] >> 4 != 4 or p[16:19] != prefix:
                    st["foreign"] += 1  # IPv6 noise, or not a node address
                    continue
                dst = p[19]
                if dst not in tuns or dst == src:
                    st["foreign"] += 1
                    continue
                if (src, dst) in block:
                    st["dropped_block"] += 1
                    continue
                if loss and rng.random() < loss:
                    st["dropped_loss"] += 1
                    continue
                copies = 2 if dup and rng.random() < dup else 1
                st["duplicated"] += copies - 1
                for _c in range(copies):
                    d = delay + (rng.random() * jitter if jitter else 0.0)
                    if d <= 0:
                        try:
                            os.write(tuns[dst], p)
                        except OSError:
                            pass  # the receiving namespace's device is down: a lost packet
                    else:
                        seq += 1
                        st["delayed"] += 1
                        heapq.heappush(queue, (time.monotonic() + d, seq, dst, p))
                st["forwarded"] += 1
                st["bytes"] += len(p)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, dst, p = heapq.heappop(queue)
            try:
                os.write(tuns[dst], p)
            except OSError:
                pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

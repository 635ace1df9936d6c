#!/usr/bin/env python3
"""Fault injection for a Nacelle cluster: N nodes in their own network namespaces on a bridge,
peer (QUIC) traffic through a userspace relay (relay.py), HTTP heartbeat clients whose truth
the checker keeps, and every node's view polled and compared with it. See README.md.

  python3 perf/chaos/chaos.py                 # every scenario, 3 nodes
  python3 perf/chaos/chaos.py --quick         # the subset run by scripts/test.sh (< 5 min)
  python3 perf/chaos/chaos.py pause kill --nodes 5 --seed 7

Needs root (network namespaces, TUN devices). Without them it fails loudly (exit 2).
Exit status: 0 every invariant held, 1 a violation (details in the table and results.json).
"""
import argparse
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NS = "chx-"  # every namespace this harness creates starts with it (stale ones are removed)
SUBNET = "10.200.0."  # only inside our own namespaces
CLIENT_IP = SUBNET + "100"
HTTP_PORT = 8848
PEER_PORT = HTTP_PORT + 1001

# Timings given to the nodes and the clients (short so that scenarios are fast).
VERIFY_MS = 1000
LEASE_MS = 10000  # the smallest the server accepts
SYNC_DELAY_MS = 20
BEAT_CHECK_MS = 500
BEAT_MS = 1000
HB_TIMEOUT_MS = 3000
DELETE_MS = 6000
# A client's request timeout: above the server's forward timeout (1.5 s: a write forwarded to
# an owner that just died is applied where it entered after that long), well below the Java
# SDK's (3 s to connect, 50 s to read).
CLIENT_TIMEOUT_S = float(os.environ.get("CHAOS_CLIENT_TIMEOUT_S", "2.0"))
DOWN_AFTER_S = 6  # server/src/peer/transport.rs: a peer without a connection for 6 s is DOWN
SYNC_TIMEOUT_S = 3  # DISTRO.md: an unacknowledged batch is retried after 3 s
N_SERVICES = 4

# Checker bounds, derived from the timings above (README "Invariants").
GRACE_S = VERIFY_MS / 1000 + SYNC_TIMEOUT_S + 1  # I3's grace: verify interval + sync timeout (+1 s polling)
SETTLE_S = 1.5  # a change younger than this is not judged for agreement (sync + poll time)
AGREE_GOAL_S = (VERIFY_MS + BEAT_MS) / 1000 + 1.0  # I1: one verify + one beat interval + sync
AGREE_LIMIT_S = 45  # no agreement within this after a fault ends = a violation
DEAD_BOUND_S = (DELETE_MS + BEAT_CHECK_MS + VERIFY_MS) / 1000 + 2.0  # silent death -> gone everywhere
DEREG_BOUND_S = 3.0  # explicit deregistration -> gone everywhere
TRACED = ""  # NACELLE_TRACE_CLIENT for the nodes (set in main from --clients)
RSS_GROWTH_LIMIT_MB = 100


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed: {r.stdout.strip()}")
    return r.stdout


def die_loudly(msg):
    bar = "!" * 78
    print(f"\n{bar}\nCHAOS SUITE NOT RUN: {msg}\n{bar}\n", file=sys.stderr, flush=True)
    sys.exit(2)


# ----------------------------------------------------------------------------- network

class Net:
    """Namespaces chx-hub (bridge), chx-c (clients + checker, 10.200.0.100), chx-n<i> (node i,
    10.200.0.<i>); peer UDP leaves each node through the relay's TUN device."""

    def __init__(self, n, seed, workdir):
        self.n, self.seed, self.workdir = n, seed, workdir
        self.relay = None
        self.relay_lock = threading.Lock()

    @staticmethod
    def cleanup_stale():
        for line in sh("ip netns list", check=False).splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(NS):
                for pid in sh(f"ip netns pids {name}", check=False).split():
                    if pid == str(os.getpid()):
                        continue  # this process lives in the clients' namespace
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh(f"ip netns del {name}", check=False)

    def setup(self):
        self.cleanup_stale()
        sh(f"ip netns add {NS}hub && ip -n {NS}hub link add br0 type bridge && ip -n {NS}hub link set br0 up")
        hosts = [(f"{NS}n{i}", SUBNET + str(i), f"h{i}") for i in range(1, self.n + 1)]
        hosts.append((f"{NS}c", CLIENT_IP, "hc"))
        for ns, ip, hname in hosts:
            sh(f"ip netns add {ns}")
            sh(f"ip link add eth0 netns {ns} type veth peer name {hname} netns {NS}hub")
            sh(f"ip -n {NS}hub link set {hname} master br0 && ip -n {NS}hub link set {hname} up")
            sh(f"ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up")
        self.relay = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "relay.py"), "--nodes", str(self.n), "--seed", str(self.seed),
             "--prefix", SUBNET],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if self.relay.stdout.readline().strip() != "READY":
            raise RuntimeError("relay did not start")
        for i in range(1, self.n + 1):
            ns = f"{NS}n{i}"
            sh(f"ip link set chxt{i} netns {ns} && ip -n {ns} link set chxt{i} name relay0 && ip -n {ns} link set relay0 up")
            for k in ("all", "default", "eth0", "relay0"):
                sh(f"ip netns exec {ns} sysctl -qw net.ipv4.conf.{k}.rp_filter=0")
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.relay0.disable_ipv6=1", check=False)
            # Peer traffic (UDP to the peer port; every node sends from its peer port too) goes
            # through the relay; everything else (HTTP, gRPC) over the bridge.
            sh(f"ip -n {ns} rule add ipproto udp dport {PEER_PORT} lookup 100 pref 100")
            sh(f"ip -n {ns} route add {SUBNET}0/24 dev relay0 table 100")

    def relay_cmd(self, **cmd):
        with self.relay_lock:
            self.relay.stdin.write(json.dumps(cmd) + "\n")
            self.relay.stdin.flush()
            if cmd.get("stats"):
                return json.loads(self.relay.stdout.readline())
        return None

    def enter_client_ns(self):
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{NS}c", os.O_RDONLY)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    def teardown(self):
        if self.relay and self.relay.poll() is None:
            try:
                self.relay.stdin.close()
            except OSError:
                pass
            try:
                self.relay.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.relay.kill()
        self.cleanup_stale()


# ----------------------------------------------------------------------------- nodes

class Node:
    def __init__(self, i, n, binary, workdir):
        self.i, self.ip = i, SUBNET + str(i)
        self.binary, self.workdir = binary, workdir
        self.members = ",".join(f"{SUBNET}{k}:{HTTP_PORT}" for k in range(1, n + 1))
        self.proc = None
        self.paused = False
        self.starts = 0
        self.env = {}  # extra environment (persistent.py: the Raft snapshot cadence)

    def start(self):
        self.starts += 1
        logf = open(os.path.join(self.workdir, f"n{self.i}.log"), "a")
        logf.write(f"\n===== start #{self.starts} at {time.time():.3f}\n")
        logf.flush()
        env = dict(os.environ, NACELLE_LOG=os.environ.get("NACELLE_LOG", "info"), NO_COLOR="1")
        if TRACED:
            # Each node logs the story of every client the run may start (server/src/trace.rs):
            # a failed verdict prints the failing instance's lines from every node.
            env["NACELLE_TRACE_CLIENT"] = TRACED
        env.update(self.env)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{NS}n{self.i}", self.binary, "--bind", self.ip, "--http-port", str(HTTP_PORT),
             "--members", self.members, "--insecure", "--cores", "1", "--verify-interval-ms", str(VERIFY_MS),
             "--replica-lease-ms", str(LEASE_MS), "--sync-delay-ms", str(SYNC_DELAY_MS),
             "--beat-check-interval-ms", str(BEAT_CHECK_MS),
             # Its own data (the Raft store), kept across its restarts within the run.
             "--data-dir", os.path.join(self.workdir, f"n{self.i}-data")],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        logf.close()
        self.paused = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def stop_gracefully(self, timeout=10):
        if self.paused:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill9()
            return False

    def rss_mb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return None


def http_call(conns, ip, method, path, timeout):
    """One request on a cached keep-alive connection; returns (status, body) or raises OSError."""
    c = conns.get(ip)
    if c is None:
        c = conns[ip] = http.client.HTTPConnection(ip, HTTP_PORT, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        c.close()
        conns.pop(ip, None)
        raise OSError(str(e)) from e


# ----------------------------------------------------------------------------- clients

class Client:
    __slots__ = ("idx", "service", "ip", "key", "home", "state", "born", "died", "last_ok", "last_node",
                 "kind")

    def __init__(self, idx, n):
        self.idx = idx
        self.service = f"chaos-{idx % N_SERVICES}"
        self.ip = f"10.50.{idx // 200}.{idx % 200 + 1}"
        self.key = f"{self.service}/{self.ip}:8080"
        self.home = idx % n + 1
        self.state = "new"  # new -> live -> stopped (silent) | deregistered
        self.born = self.died = None
        self.last_ok = 0.0
        self.last_node = None
        self.kind = None


META = json.dumps({"preserved.heart.beat.interval": str(BEAT_MS), "preserved.heart.beat.timeout": str(HB_TIMEOUT_MS),
                   "preserved.ip.delete.timeout": str(DELETE_MS)})


class Clients:
    """HTTP heartbeat clients, each with its own thread (as each SDK instance has its own beat
    task): a client beats its home node and fails over to the next reachable one, as the SDKs
    do. Truth: which clients are live."""

    def __init__(self, n, count, rng):
        self.n, self.rng = n, rng
        self.lock = threading.Lock()
        self.all = {}
        self.next_idx = 0
        self.blocked_nodes = set()  # nodes the clients cannot reach (isolation)
        self.stop_ev = threading.Event()
        self.threads = []
        self.started = False
        self.churn_rate = 0.0
        for _ in range(count):
            self.add()

    def add(self):
        with self.lock:
            c = Client(self.next_idx, self.n)
            self.next_idx += 1
            self.all[c.key] = c
            if self.started:
                self._spawn(c)
            return c

    def _spawn(self, c):
        t = threading.Thread(target=self.beater, args=(c,), daemon=True)
        t.start()
        self.threads.append(t)

    def snapshot(self):
        with self.lock:
            return list(self.all.values())

    def start(self):
        with self.lock:
            self.started = True
            for c in self.all.values():
                self._spawn(c)
        t = threading.Thread(target=self.churner, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=5)

    def _q(self, c):
        return f"serviceName={c.service}&ip={c.ip}&port=8080"

    def _send(self, conns, bad, c, method, path):
        order = [c.home] + [k for k in range(1, self.n + 1) if k != c.home]
        now = time.time()
        cands = [k for k in order if k not in self.blocked_nodes and bad.get(k, 0) <= now]
        if not cands:
            cands = [k for k in order if k not in self.blocked_nodes][:1]
        for k in cands:
            try:
                st, body = http_call(conns, SUBNET + str(k), method, path, CLIENT_TIMEOUT_S)
            except OSError:
                bad[k] = time.time() + 2.0
                continue
            if st == 200:
                return k, body
            bad[k] = time.time() + 2.0
        return None, None

    def beater(self, c):
        conns, bad = {}, {}
        # Spread the clients' beats over the period, as independent processes would be.
        self.stop_ev.wait(self.rng.random() * BEAT_MS / 1000)
        while not self.stop_ev.is_set():
            t0 = time.time()
            if c.state in ("stopped", "deregistered"):
                return
            if c.state == "new":
                path = f"/nacos/v1/ns/instance?{self._q(c)}&ephemeral=true&metadata={urllib.parse.quote(META)}"
                k, _ = self._send(conns, bad, c, "POST", path)
                if k:
                    now = time.time()
                    with self.lock:
                        if c.state == "new":
                            c.state, c.born, c.last_ok, c.last_node = "live", now, now, k
            elif c.state == "deregister":
                k, _ = self._send(conns, bad, c, "DELETE", f"/nacos/v1/ns/instance?{self._q(c)}&ephemeral=true")
                if k:
                    with self.lock:
                        c.state, c.died, c.kind = "deregistered", time.time(), "deregistered"
                    return
            else:
                beat = json.dumps({"ip": c.ip, "port": 8080, "serviceName": c.service, "cluster": "DEFAULT",
                                   "weight": 1.0, "metadata": json.loads(META), "scheduled": True,
                                   "period": BEAT_MS})
                path = f"/nacos/v1/ns/instance/beat?{self._q(c)}&beat={urllib.parse.quote(beat)}"
                k, body = self._send(conns, bad, c, "PUT", path)
                now = time.time()
                with self.lock:
                    if c.state == "stopped":
                        c.died = max(c.died, now)  # a beat in flight when it was stopped
                    elif k:
                        c.last_ok, c.last_node = now, k
            self.stop_ev.wait(max(0.05, BEAT_MS / 1000 - (time.time() - t0)))

    def churner(self):
        """Under load: deregister a live client and register a new one, churn_rate times a second."""
        while not self.stop_ev.is_set():
            rate = self.churn_rate
            if rate <= 0:
                self.stop_ev.wait(0.2)
                continue
            with self.lock:
                live = [c for c in self.all.values() if c.state == "live" and c.born < time.time() - 3]
                if live:
                    self.rng.choice(live).state = "deregister"
            self.add()
            self.stop_ev.wait(1.0 / rate)

    def stop_silently(self, count):
        """These clients stop beating (a crash, a power-off): their instances must expire."""
        with self.lock:
            live = sorted((c for c in self.all.values() if c.state == "live"), key=lambda c: c.idx)
            picked = self.rng.sample(live, min(count, len(live)))
            now = time.time()
            for c in picked:
                c.state, c.died, c.kind = "stopped", now, "silent"
        return [c.key for c in picked]


# ----------------------------------------------------------------------------- checker

class World:
    """What the faults did: who can reach whom since when (for the 'reachable' invariant)."""

    def __init__(self, n):
        self.n = n
        self.lock = threading.Lock()
        self.up_since = {i: None for i in range(1, n + 1)}  # node running, reachable, status UP
        self.event_t = {i: 0.0 for i in range(1, n + 1)}
        self.block = set()
        self.pair_since = {(a, b): 0.0 for a in range(1, n + 1) for b in range(1, n + 1) if a < b}
        self.heals = []  # times connectivity came back (pairs unblocked, a node UP again)
        self.fault = [None, None]  # start, end

    def dead_deadline(self, died, bound):
        """When a dead instance must be gone from every node: `bound` after its death, or, if
        it died during the fault, `bound` after the fault ended and every node was UP again
        (its owner may have been down: a node that reloads gives its clients a whole timeout,
        since it cannot know when they last beat). Infinite while a node is not UP yet."""
        with self.lock:
            start, end = self.fault
            if start is None or died < start or (end is not None and died > end):
                return died + bound
            ups = list(self.up_since.values())
            if end is None or any(u is None for u in ups):
                return float("inf")
            return max([died, end] + ups) + bound

    def node_down(self, i):
        with self.lock:
            self.up_since[i] = None
            self.event_t[i] = time.time()

    def node_seen_up(self, i, poll_started):
        with self.lock:
            if self.up_since[i] is None and poll_started > self.event_t[i]:
                self.up_since[i] = time.time()
                self.heals.append(self.up_since[i])

    def set_block(self, block):
        now = time.time()
        with self.lock:
            for (a, b) in self.pair_since:
                was = (a, b) not in self.block and (b, a) not in self.block
                ok = (a, b) not in block and (b, a) not in block
                if was and not ok:
                    self.pair_since[(a, b)] = None
                elif ok and not was:
                    self.pair_since[(a, b)] = now
                    self.heals.append(now)
            self.block = set(block)

    def peers_since(self, x):
        """Since when x has been able to talk both ways with every other node (None: it
        cannot now)."""
        with self.lock:
            ps = [p for (a, b), p in self.pair_since.items() if x in (a, b)]
            return None if any(p is None for p in ps) else max(ps + [0.0])

    def reach_since(self, x, t):
        """Since when x and t have been able to talk both ways (None: they cannot now)."""
        with self.lock:
            ux, ut = self.up_since[x], self.up_since[t]
            if ux is None or ut is None:
                return None
            if x == t:
                return ux
            p = self.pair_since[(min(x, t), max(x, t))]
            return None if p is None else max(ux, ut, p)


def client_addr(key):
    """`ip:port` of a checker key `service/ip:port`."""
    return key.rsplit("/", 1)[-1]


def trace_excerpt(sdir, keys, nodes, lines=25):
    """The last trace lines of each instance in `keys`, from every node's log."""
    out = []
    for key in list(keys)[:3]:
        addr = "client=" + client_addr(key) + "#"  # server/src/trace.rs lines
        for i in nodes:
            try:
                with open(os.path.join(sdir, f"n{i}.log"), errors="replace") as f:
                    hits = [ln.rstrip() for ln in f if addr in ln]
            except OSError:
                continue
            out.append(f"trace of {key} on node {i} (last {min(lines, len(hits))} of {len(hits)} lines):")
            out += ["  " + ln[:400] for ln in hits[-lines:]]
    return out


def failure_reasons(res, name, ctx, agree, final, over_bound, checker, growth):
    """Each verdict that failed, with the evidence for it, one line each (then the node
    traces of the instances involved)."""
    out = []
    if "error" in res:
        out.append(f"error: {res['error']}")
    if res.get("live_lost"):
        out.append(f"live instances lost (flaps included): {res['missing'][:10]}")
    if name == "kill-during-load" and not ctx.extra.get("killed_during_load"):
        out.append("the node was not caught loading")
    if agree is None:
        out.append("no agreement after the fault ended")
    if final is None:
        out.append("no agreement at the end")
    if over_bound:
        out.append(f"dead instances over their bound: {res.get('dead_over_bound')}")
    if checker.resurrected:
        out.append(f"dead instances back after they were gone: {res.get('resurrected')}")
    if not res.get("counts_equal_at_end", True):
        out.append(f"instance counts differ at the end: {res.get('instance_counts_at_end')}")
    big = {i: g for i, g in growth.items() if g >= RSS_GROWTH_LIMIT_MB}
    if big:
        out.append(f"RSS grew by {big} MB")
    if not out:
        out.append("unknown (see the JSON report)")
    out.append(f"status log: {res.get('status_log')}")
    involved = list(over_bound) + [k for k, _, _ in checker.resurrected]
    involved += [m["instance"] for m in res.get("missing", []) if m["kind"] == "lost"]
    if involved and res.get("logs"):
        out += trace_excerpt(res["logs"], dict.fromkeys(involved), ctx.nodes)
    return out


def dead_bound(c):
    """How long a dead client's instance may stay: a silent death waits for the deletion
    timeout, a deregistration only for sync and polling."""
    return DEAD_BOUND_S if c.kind == "silent" else DEREG_BOUND_S


class Snap:
    __slots__ = ("t0", "t1", "present", "status", "count", "agrees")


class Checker:
    """Polls every node's /instance/list (all services) and /operator/metrics, and judges each
    sweep against the clients' truth: missing live instances on a node that can reach the node
    the client beats to, agreement, dead instances' disappearance."""

    def __init__(self, n, nodes, clients, world):
        self.n, self.nodes, self.clients, self.world = n, nodes, clients, world
        self.lock = threading.Lock()
        self.latest = {i: None for i in range(1, n + 1)}
        self.missing = {}  # (node, key) -> [first, last]   (live, reachable, absent)
        self.shown_at = {}  # (node, key) -> start of the last sweep that listed it
        self.lost = set()  # keys
        self.gone = {}  # (key, node) -> first time absent after death
        self.resurrected = []  # (key, node, t)
        self.status_log = {i: [] for i in range(1, n + 1)}
        self.rss = {i: [] for i in range(1, n + 1)}  # (t, mb)
        self.stop_ev = threading.Event()
        self.threads = []

    def start(self):
        for i in range(1, self.n + 1):
            t = threading.Thread(target=self.poller, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        t = threading.Thread(target=self.rss_sampler, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=5)

    def rss_sampler(self):
        while not self.stop_ev.is_set():
            for i, node in self.nodes.items():
                mb = node.rss_mb() if node.alive() else None
                if mb is not None:
                    self.rss[i].append((time.time(), mb))
            self.stop_ev.wait(0.5)

    def poller(self, i):
        conns = {}
        ip = SUBNET + str(i)
        while not self.stop_ev.is_set():
            s = Snap()
            s.t0 = time.time()
            present, status, count = set(), None, None
            try:
                st, body = http_call(conns, ip, "GET", "/nacos/v1/ns/operator/metrics", 0.5)
                m = json.loads(body)
                status, count = m.get("status"), m.get("instanceCount")
                for k in range(N_SERVICES):
                    st, body = http_call(conns, ip, "GET", f"/nacos/v1/ns/instance/list?serviceName=chaos-{k}", 0.5)
                    if st != 200:
                        raise OSError(f"status {st}")
                    for h in json.loads(body).get("hosts", []):
                        present.add(f"chaos-{k}/{h['ip']}:{h['port']}")
            except (OSError, ValueError):
                present = None
            s.t1 = time.time()
            s.present, s.status, s.count = present, status, count
            log_ = self.status_log[i]
            st_now = status if present is not None else "unreachable"
            if not log_ or log_[-1][1] != st_now:
                log_.append((s.t1, st_now))
            if present is None or status != "UP":
                self.world.node_down(i) if present is None else None
            else:
                self.world.node_seen_up(i, s.t0)
            s.agrees = self.judge(i, s) if present is not None else False
            with self.lock:
                self.latest[i] = s
            self.stop_ev.wait(0.15)

    def judge(self, i, s):
        t = s.t0
        agrees = True
        for c in self.clients.snapshot():
            here = c.key in s.present
            if here:
                self.shown_at[(i, c.key)] = t
            if c.state == "live" and c.born is not None:
                if c.born <= t - SETTLE_S and not here:
                    agrees = False
                if not here and c.born <= t - GRACE_S and c.last_ok >= t - 2.5 and c.last_node:
                    since = self.world.reach_since(i, c.last_node)
                    # The client beats this node itself, which was just cut off from its peers
                    # (isolate): it learns the client's state from the responsible node again,
                    # and may lack it until it has listed it again (DISTRO.md I1: a node apart
                    # from the beats starts over). It is judged only for instances it listed up
                    # to or since its return (a sweep before the heal counts): those it must
                    # never drop.
                    back = self.world.peers_since(i) if c.last_node == i else None
                    if (since is not None and back is not None and back > t - GRACE_S
                            and self.shown_at.get((i, c.key), -1.0) < back - 1.0):
                        since = None
                    if since is not None and since <= t - GRACE_S:
                        with self.lock:
                            m = self.missing.setdefault((i, c.key), [t, t])
                            m[1] = s.t1
                            self.lost.add(c.key)
            elif c.state in ("stopped", "deregistered") and c.died is not None and s.status == "UP":
                bound = DEAD_BOUND_S if c.kind == "silent" else SETTLE_S
                if here and t >= self.world.dead_deadline(c.died, bound):
                    agrees = False
                with self.lock:
                    g = self.gone.get((c.key, i))
                    if not here and g is None and t > c.died:
                        self.gone[(c.key, i)] = t
                    elif here and g is not None and t > g:
                        self.resurrected.append((c.key, i, t))
                        del self.gone[(c.key, i)]
            elif c.state == "new" and here:
                pass  # registered, the answer not back yet
        known = self.clients.all
        for key in s.present:
            if key not in known:
                agrees = False
        return agrees

    def agreed_since(self, h):
        """If every node's latest sweep started after h and agrees: the time it was done."""
        with self.lock:
            snaps = list(self.latest.values())
        if any(s is None or s.present is None or s.t0 < h or not s.agrees for s in snaps):
            return None
        return max(s.t1 for s in snaps)

    def wait_agreement(self, h, limit):
        end = h + limit
        while time.time() < end:
            a = self.agreed_since(h)
            if a is not None:
                return a - h
            time.sleep(0.05)
        return None

    def counts(self):
        with self.lock:
            return {i: (s.count if s else None) for i, s in self.latest.items()}

    def statuses(self):
        with self.lock:
            return {i: (s.status if s and s.present is not None else None) for i, s in self.latest.items()}


# ----------------------------------------------------------------------------- scenarios

class Ctx:
    """What a scenario gets: the cluster, the clients, the relay, and the fault marks."""

    def __init__(self, net, nodes, clients, world, checker, rng, quick):
        self.net, self.nodes, self.clients, self.world, self.checker = net, nodes, clients, world, checker
        self.rng, self.quick = rng, quick
        self.n = len(nodes)
        self.fault_start = self.fault_end = None
        self.notes = []
        self.extra = {}
        self.dead = []

    def block(self, pairs):
        self.net.relay_cmd(block=sorted(pairs))
        self.world.set_block(set(pairs))

    def both(self, groups):
        """Block every pair across groups, both ways."""
        pairs = set()
        for g1 in groups:
            for g2 in groups:
                if g1 is not g2:
                    pairs |= {(a, b) for a in g1 for b in g2}
        return pairs

    def begin(self, note):
        self.fault_start = time.time()
        self.world.fault[0] = self.fault_start
        self.notes.append(note)
        log("  fault:", note)
        self.dead += self.clients.stop_silently(2)

    def end(self):
        self.fault_end = time.time()
        self.world.fault[1] = self.fault_end
        log("  fault ends")

    def kill(self, i):
        self.world.node_down(i)
        self.nodes[i].kill9()

    def restart(self, i):
        self.world.node_down(i)
        self.nodes[i].start()
        # Its peers connect to it (and hand its clients back) before it reports UP: the heal
        # that re-homes heartbeat clients starts now.
        with self.world.lock:
            self.world.heals.append(time.time())

    def wait_up(self, i, limit=60):
        end = time.time() + limit
        while time.time() < end:
            if self.checker.statuses().get(i) == "UP" and self.world.up_since[i] is not None:
                return True
            time.sleep(0.05)
        return False


def sc_partition(ctx):
    """Symmetric partition: the nodes split into two halves that cannot talk (peer traffic),
    for longer than failure detection plus the replica lease; clients still reach every node."""
    half = list(range(1, ctx.n // 2 + 1)), list(range(ctx.n // 2 + 1, ctx.n + 1))
    ctx.begin(f"partition {half[0]} | {half[1]} (both ways) for {ctx.dur}s")
    ctx.block(ctx.both(half))
    time.sleep(ctx.dur)
    ctx.block(set())
    ctx.end()


def sc_asymmetric(ctx):
    """Asymmetric partition: node 1's packets to node 2 are dropped, node 2's to node 1 pass."""
    ctx.begin(f"one-way loss 1 -> 2 for {ctx.dur}s")
    ctx.block({(1, 2)})
    time.sleep(ctx.dur)
    ctx.block(set())
    ctx.end()


def sc_isolate(ctx):
    """The node owning the most clients (a third) is cut from its peers and from its clients
    (they fail over to other nodes), for longer than detection plus the lease."""
    owned = {}
    for i in range(1, ctx.n + 1):
        try:
            _, body = http_call({}, SUBNET + str(i), "GET", "/nacos/v1/ns/operator/metrics", 1.0)
            owned[i] = json.loads(body).get("responsibleClientCount", 0)
        except (OSError, ValueError):
            owned[i] = 0
    x = max(sorted(owned), key=lambda k: owned[k])
    ctx.extra["isolated"] = x
    ctx.extra["responsible_clients"] = owned
    ctx.begin(f"isolate node {x} (owns {owned[x]} of {sum(owned.values())} clients) for {ctx.dur}s")
    ctx.clients.blocked_nodes = {x}
    ctx.block(ctx.both([[x], [k for k in range(1, ctx.n + 1) if k != x]]))
    time.sleep(ctx.dur)
    ctx.block(set())
    ctx.clients.blocked_nodes = set()
    ctx.end()


def sc_kill(ctx):
    """kill -9 of node 2, down for longer than detection plus the lease, then restarted."""
    ctx.begin("kill -9 node 2, restart after 14 s")
    ctx.kill(2)
    time.sleep(14)
    ctx.restart(2)
    ctx.end()


def sc_kill_load(ctx):
    """kill -9 of node 2, restart, and kill -9 again while it loads its snapshot (extra
    gRPC-held instances from loadgen make the snapshot big enough to be caught loading)."""
    ctx.begin("kill -9 node 2, restart, kill -9 again during its snapshot load, restart")
    ctx.kill(2)
    time.sleep(3)
    # 10 ms on every peer packet stretches the snapshot stream so the load can be caught midway.
    ctx.net.relay_cmd(delay_ms=10)
    caught, seen = None, []
    for attempt in range(5):
        ctx.restart(2)
        t0 = time.time()
        conns = {}
        while time.time() - t0 < 10:
            try:
                _, body = http_call(conns, SUBNET + "2", "GET", "/nacos/v1/ns/operator/metrics", 0.3)
                m = json.loads(body)
                loaded = m.get("instanceCount") or 0
                if m.get("status") != "UP" and loaded >= ctx.filler // 10:
                    ctx.kill(2)
                    caught = {"attempt": attempt + 1, "after_s": round(time.time() - t0, 3),
                              "instances_loaded": loaded, "of": ctx.filler}
                    break
                seen.append(loaded)
                if m.get("status") == "UP":
                    break  # too late, try again
            except (OSError, ValueError):
                time.sleep(0.005)
        if caught:
            break
        ctx.kill(2)
        time.sleep(1)
    ctx.extra["killed_during_load"] = caught
    if not caught:
        ctx.notes.append(f"could not catch the node loading (snapshot too fast; counts seen {seen[-5:]})")
    time.sleep(2)
    ctx.net.relay_cmd(delay_ms=0)
    ctx.restart(2)
    ctx.end()


def sc_pause(ctx):
    """SIGSTOP of node 2 for longer than the replica lease (and detection), then SIGCONT."""
    d = LEASE_MS / 1000 + 5
    ctx.begin(f"SIGSTOP node 2 for {d:.0f}s")
    ctx.world.node_down(2)
    ctx.nodes[2].signal(signal.SIGSTOP)
    ctx.nodes[2].paused = True
    time.sleep(d)
    ctx.nodes[2].signal(signal.SIGCONT)
    ctx.nodes[2].paused = False
    ctx.end()


def sc_rolling(ctx):
    """Rolling restart (SIGTERM, start, wait for UP) of every node, under client churn."""
    ctx.clients.churn_rate = 4.0
    ctx.begin("rolling restart of every node, 4 registrations + 4 deregistrations/s")
    times = {}
    for i in range(1, ctx.n + 1):
        t0 = time.time()
        ctx.world.node_down(i)
        clean = ctx.nodes[i].stop_gracefully()
        ctx.restart(i)
        up = ctx.wait_up(i)
        times[i] = {"clean_exit": clean, "up_after_s": round(time.time() - t0, 2) if up else None}
        time.sleep(3)
    ctx.extra["restarts"] = times
    ctx.end()
    ctx.clients.churn_rate = 0.0


def sc_loss(ctx):
    """10 % random loss of every peer packet, both ways, on every link."""
    ctx.begin(f"10 % peer packet loss for {ctx.dur}s")
    ctx.net.relay_cmd(loss=0.10)
    time.sleep(ctx.dur)
    ctx.net.relay_cmd(loss=0.0)
    ctx.end()


def sc_netem(ctx):
    """Delay, reordering and duplication through the relay: 20 ms + 0..40 ms jitter per packet
    (so packets overtake each other) and 5 % duplicates, under client churn."""
    ctx.clients.churn_rate = 2.0
    ctx.begin(f"delay 20 ms + jitter 40 ms (reordering), 5 % duplication for {ctx.dur}s")
    ctx.net.relay_cmd(delay_ms=20, jitter_ms=40, dup=0.05)
    time.sleep(ctx.dur)
    ctx.net.relay_cmd(delay_ms=0, jitter_ms=0, dup=0.0)
    ctx.clients.churn_rate = 0.0
    ctx.end()


SCENARIOS = {  # name: (function, fault duration s, quick duration s)
    "partition": (sc_partition, 20, 18),
    "asymmetric": (sc_asymmetric, 20, 18),
    "isolate": (sc_isolate, 20, 18),
    "kill": (sc_kill, 0, 0),
    "kill-during-load": (sc_kill_load, 0, 0),
    "pause": (sc_pause, 0, 0),
    "rolling-restart": (sc_rolling, 0, 0),
    "loss": (sc_loss, 60, 20),
    "delay-reorder-dup": (sc_netem, 30, 15),
}
QUICK = ["partition", "isolate", "kill-during-load", "pause", "loss", "delay-reorder-dup"]

# The persistent (Raft) scenarios live in persistent.py (it imports this module as `chaos`).
sys.modules.setdefault("chaos", sys.modules[__name__])
import persistent  # noqa: E402

SCENARIOS.update(persistent.SCENARIOS)
QUICK += persistent.QUICK


def filler(ctx, loadgen, count):
    """gRPC instances held by loadgen on node 1 (not judged per instance: checked by counts)."""
    p = subprocess.Popen(
        [loadgen, "register", "--targets", f"{SUBNET}1:{HTTP_PORT}", "--instances", str(count), "--services", "100",
         "--connections", "8", "--batch", "100", "--hold", "-1", "--no-progress", "--no-verify",
         "--service-prefix", "filler-", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    end = time.time() + 60
    while time.time() < end:
        line = p.stdout.readline()
        if not line:
            break
        if "holding" in line:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p
    p.kill()
    raise RuntimeError("loadgen did not reach 'holding'")


def run_scenario(name, args, net, binary, loadgen, workdir, seed):
    fn, dur, qdur = SCENARIOS[name]
    rng = random.Random(f"{seed}-{name}")
    n = args.nodes
    sdir = os.path.join(workdir, name)
    os.makedirs(sdir, exist_ok=True)
    net.relay_cmd(block=[], loss=0.0, delay_ms=0, jitter_ms=0, dup=0.0)
    stats0 = net.relay_cmd(stats=True)
    nodes = {i: Node(i, n, binary, sdir) for i in range(1, n + 1)}
    world = World(n)
    clients = Clients(n, args.clients, rng)
    checker = Checker(n, nodes, clients, world)
    ctx = Ctx(net, nodes, clients, world, checker, rng, args.quick)
    ctx.dur = qdur if args.quick else dur
    ctx.filler = args.filler
    res = {"scenario": name, "doc": " ".join((fn.__doc__ or "").split())}
    fill = None
    log(f"== {name}")
    try:
        for node in nodes.values():
            node.start()
        checker.start()
        for i in nodes:
            if not ctx.wait_up(i, 30):
                raise RuntimeError(f"node {i} never reported UP")
        if name == "kill-during-load":
            fill = filler(ctx, loadgen, args.filler)
            res["filler_instances"] = args.filler
        clients.start()
        t_warm = time.time()
        warm = checker.wait_agreement(t_warm, 40)
        if warm is None:
            raise RuntimeError("the cluster never agreed before the fault (warm-up)")
        time.sleep(2)
        rss_warm = {i: (nodes[i].rss_mb() or 0) for i in nodes}
        fn(ctx)
        agree = checker.wait_agreement(ctx.fault_end, AGREE_LIMIT_S)
        log(f"  agreement after {agree if agree is None else round(agree, 2)} s")
        # Dead instances still have to go: wait for them (bounded), then a quiet period that
        # must stay agreed.
        t_hold = time.time()
        hold_until = t_hold + 3
        while True:
            dead = [c for c in clients.snapshot() if c.died]
            deadline = max([world.dead_deadline(c.died, dead_bound(c)) for c in dead] + [0])
            all_gone = all(checker.gone.get((c.key, i)) for c in dead for i in nodes)
            now = time.time()
            if now >= hold_until and (all_gone or now >= min(deadline + 1, t_hold + AGREE_LIMIT_S)):
                break
            time.sleep(0.2)
        final = checker.agreed_since(t_hold)
        # A sweep reads instanceCount before the lists: when the last dead instance goes just
        # then, that sweep's count still has it while its lists do not. The counts must agree
        # once the sweeps after it are in (at most 2 s), not at one instant.
        counts = checker.counts()
        t_counts = time.time()
        while len(set(counts.values())) != 1 and time.time() < t_counts + 2.0:
            time.sleep(0.2)
            counts = checker.counts()
        rss_end = {i: (nodes[i].rss_mb() or 0) for i in nodes}
    except Exception as e:  # a harness failure is reported as a failed scenario, never hidden
        log(f"  ERROR: {e}")
        res.update(error=str(e), passed=False)
        agree = final = None
        counts, rss_warm, rss_end = checker.counts(), {}, {}
    finally:
        clients.stop()
        checker.stop()
        for node in nodes.values():
            node.stop_gracefully(5)
        if fill:
            fill.kill()
            fill.wait()
    stats1 = net.relay_cmd(stats=True)

    # --- judge
    cl = clients.snapshot()
    missing, lost, flaps = [], set(), set()
    for (i, k), (a, b) in sorted(checker.missing.items(), key=lambda kv: kv[1][0]):
        # Every live instance missing is lost (DISTRO.md I1, "No flaps"): one gone for at
        # most one beat interval right after a heal (a flap: the restored owner's "nothing"
        # winning the hand-over) is lost too; it is only also counted as a flap, to tell
        # the two apart. A sweep takes up to ~0.5 s: one that started just before the heal
        # counts as after it.
        near_heal = any(-0.5 <= a - h <= GRACE_S for h in world.heals)
        flap = near_heal and b - a <= BEAT_MS / 1000 + 1.0
        lost.add(k)
        if flap:
            flaps.add(k)
        missing.append({"node": i, "instance": k, "kind": "flap" if flap else "lost",
                        "from_s": round(a - ctx.fault_start, 2) if ctx.fault_start else None,
                        "for_s": round(b - a, 2)})
    dead_report = []
    over_bound = []
    for c in cl:
        if c.died is None:
            continue
        times = {}
        for i in nodes:
            g = checker.gone.get((c.key, i))
            times[i] = None if g is None else round(max(0.0, g - c.died), 2)
        worst = None if any(v is None for v in times.values()) else max(times.values())
        # A death during the fault may wait for the fault to end (the partitioned side cannot
        # hear of it; a restarted owner gives its clients a whole timeout).
        allowed = world.dead_deadline(c.died, dead_bound(c)) - c.died
        dead_report.append({"instance": c.key, "kind": c.kind, "gone_after_s": times, "worst_s": worst})
        if worst is None or worst > allowed:
            over_bound.append(c.key)
    peak = {i: round(max([mb for _, mb in checker.rss[i]] + [0]), 1) for i in nodes}
    growth = {i: round(rss_end.get(i, 0) - rss_warm.get(i, 0), 1) for i in nodes}
    silent = [d["worst_s"] for d in dead_report if d["kind"] == "silent" and d["worst_s"] is not None]
    dereg = [d["worst_s"] for d in dead_report if d["kind"] == "deregistered" and d["worst_s"] is not None]
    res.update({
        "notes": ctx.notes,
        "fault_s": round(ctx.fault_end - ctx.fault_start, 1) if ctx.fault_start and ctx.fault_end else None,
        "live_lost": len(lost),
        "flaps_after_heal": len(flaps),
        "flap_worst_s": max([m["for_s"] for m in missing if m["kind"] == "flap"] + [0]),
        "missing": missing[:60],
        "agreement_s": None if agree is None else round(agree, 2),
        "agreement_goal_s": AGREE_GOAL_S,
        "agreement_goal_met": agree is not None and agree <= AGREE_GOAL_S,
        "agreed_at_end": final is not None,
        "dead_instances": len(dead_report),
        "dead_silent_worst_s": max(silent) if silent else None,
        "dead_deregistered_worst_s": max(dereg) if dereg else None,
        "dead_over_bound": [d for d in dead_report if d["instance"] in over_bound][:20],
        "resurrected": [{"instance": k, "node": i, "at_s": round(t - (ctx.fault_start or t), 2)}
                        for k, i, t in checker.resurrected][:20],
        "instance_counts_at_end": counts,
        "counts_equal_at_end": len(set(counts.values())) == 1 and None not in counts.values(),
        "peak_rss_mb": peak,
        "rss_growth_mb": growth,
        "clients": len(cl),
        "relay": {k: stats1[k] - stats0.get(k, 0) for k in stats1},
        "status_log": {i: [(round(t - (ctx.fault_start or t), 2), s) for t, s in checker.status_log[i]][-12:]
                       for i in nodes},
        "logs": sdir,
        **ctx.extra,
    })
    if "error" not in res:
        res["passed"] = (res["live_lost"] == 0 and not (name == "kill-during-load" and not ctx.extra.get("killed_during_load")) and agree is not None and final is not None and not over_bound
                         and not checker.resurrected and res["counts_equal_at_end"]
                         and all(g < RSS_GROWTH_LIMIT_MB for g in growth.values()))
    log(f"  {'PASS' if res['passed'] else 'FAIL'}: lost {res['live_lost']}, flaps {res['flaps_after_heal']}, agreement {res['agreement_s']} s, "
        f"dead worst {res['dead_silent_worst_s']}/{res['dead_deregistered_worst_s']} s, peak RSS {peak}")
    if not res.get("passed", False):
        # The JSON stays on the machine that ran this; CI keeps only this log, so the
        # reasons must be in it.
        for why in failure_reasons(res, name, ctx, agree, final, over_bound, checker, growth):
            log("    why:", why)
    return res


def table(results):
    hdr = f"{'scenario':<19} {'ok':<4} {'lost':>4} {'flaps':>5} {'agree s':>8} {'dead s (silent/dereg)':>21} {'peak RSS MB':>12} {'growth MB':>9}"
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        ag = "never" if r.get("agreement_s") is None else f"{r['agreement_s']:.2f}"
        dead = f"{r.get('dead_silent_worst_s')}/{r.get('dead_deregistered_worst_s')}"
        pk = max((r.get("peak_rss_mb") or {0: 0}).values())
        gr = max((r.get("rss_growth_mb") or {0: 0}).values())
        ok = "ok" if r["passed"] else "FAIL"
        lines.append(f"{r['scenario']:<19} {ok:<4} {r.get('live_lost', '?'):>4} {r.get('flaps_after_heal', '?'):>5} {ag:>8} {dead:>21} {pk:>12} {gr:>9}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)}, or `persistent` for every persistent one (default: all, or the quick set)")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)} with shorter faults (< 5 min)")
    ap.add_argument("--nodes", type=int, default=3, help="3 to 5")
    ap.add_argument("--clients", type=int, default=90, help="HTTP heartbeat clients")
    ap.add_argument("--filler", type=int, default=30000, help="gRPC instances for kill-during-load")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--workdir", default=None, help="node logs (default: a new /tmp/chaos-*)")
    args = ap.parse_args()
    names = args.scenarios or (QUICK if args.quick else list(SCENARIOS))
    # `persistent`: every persistent (Raft) scenario.
    names = sum(([k for k in persistent.SCENARIOS] if s == "persistent" else [s] for s in names), [])
    for s in names:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    if not 2 <= args.nodes <= 9:
        ap.error("--nodes 2..9")

    if os.geteuid() != 0:
        die_loudly("needs root (network namespaces, TUN devices). Run it as root, e.g. in CI.")
    if shutil.which("ip") is None:
        die_loudly("needs iproute2 (`ip`)")
    if not os.path.exists("/dev/net/tun"):
        die_loudly("needs /dev/net/tun (the relay between nodes)")
    try:
        sh(f"ip netns add {NS}probe && ip netns del {NS}probe")
    except RuntimeError as e:
        die_loudly(f"network namespaces do not work here: {e}")

    binary = os.environ.get("CHAOS_NACELLE_BIN") or os.path.join(REPO, "target/release/nacelle")
    loadgen = os.path.join(REPO, "target/release/loadgen")
    need = ["nacelle-server"] if not os.path.exists(binary) else []
    if "kill-during-load" in names and not os.path.exists(loadgen):
        need.append("loadgen")
    if need:
        log("building", need)
        subprocess.run(["cargo", "build", "--release", "-q"] + sum([["-p", p] for p in need], []), cwd=REPO, check=True)
    workdir = args.workdir or f"/tmp/chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(workdir, exist_ok=True)
    # Private copies: others may rebuild target/release while this runs.
    shutil.copy2(binary, os.path.join(workdir, "nacelle"))
    binary = os.path.join(workdir, "nacelle")
    if os.path.exists(loadgen):
        shutil.copy2(loadgen, os.path.join(workdir, "loadgen"))
        loadgen = os.path.join(workdir, "loadgen")

    # Every client a run may start: the initial ones plus what churn adds (a few hundred).
    # CHAOS_TRACE=0 turns it off (the extra logging shifts timings a little).
    global TRACED
    if os.environ.get("CHAOS_TRACE", "1") != "0":
        TRACED = ",".join(client_addr(Client(k, args.nodes).key) for k in range(args.clients + 400))
    net = Net(args.nodes, args.seed, workdir)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    results = []
    started = time.time()
    try:
        log(f"network: {args.nodes} nodes in namespaces {NS}n1..{NS}n{args.nodes}, relay on peer UDP {PEER_PORT}; logs in {workdir}")
        net.setup()
        net.enter_client_ns()
        for name in names:
            if name in persistent.SCENARIOS:
                results.append(persistent.run_scenario(name, args, net, binary, workdir, args.seed))
            else:
                results.append(run_scenario(name, args, net, binary, loadgen, workdir, args.seed))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        net.teardown()
    if not results:
        die_loudly("no scenario ran")
    passed = all(r["passed"] for r in results) and len(results) == len(names)
    out = {
        "machine": f"{os.uname().nodename} {os.cpu_count()} cpus, kernel {os.uname().release}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv[1:]),
        "seed": args.seed, "nodes": args.nodes, "clients": args.clients, "quick": args.quick,
        "timings": {"verify_ms": VERIFY_MS, "replica_lease_ms": LEASE_MS, "sync_delay_ms": SYNC_DELAY_MS,
                    "beat_ms": BEAT_MS, "heart_beat_timeout_ms": HB_TIMEOUT_MS, "ip_delete_timeout_ms": DELETE_MS,
                    "beat_check_ms": BEAT_CHECK_MS},
        "bounds": {"grace_s": GRACE_S, "agreement_goal_s": AGREE_GOAL_S, "agreement_limit_s": AGREE_LIMIT_S,
                   "dead_silent_s": DEAD_BOUND_S, "dead_deregistered_s": DEREG_BOUND_S,
                   "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB},
        "seconds": round(time.time() - started),
        "passed": passed,
        "scenarios": results,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    eph = [r for r in results if r.get("kind") != "persistent"]
    per = [r for r in results if r.get("kind") == "persistent"]
    if eph:
        print("\n" + table(eph))
    if per:
        print("\n" + persistent.table(per))
    print(f"\n{'ALL INVARIANTS HELD' if passed else 'VIOLATIONS (see ' + args.out + ')'} in {out['seconds']} s; logs: {workdir}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()

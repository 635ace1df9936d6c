"""Persistent-instance (Raft) scenarios of the fault harness (README.md "Persistent scenarios").

A fresh 3-node cluster per scenario (chaos.Node, the same namespaces and relay), persistent
services whose health checks are off (NONE), and closed-loop HTTP writers — two keep-alive
connections per node, one request in flight each — that register new persistent instances and
deregister ones they registered, through every node. Every write's outcome is recorded:

- `acked`: 200 `ok` (committed on a majority and visible on the node that answered);
- `failed`: the request was never sent (connection refused), or a 503 whose text says
  "not written" (no leader within the bound: never proposed, server/src/cp/mod.rs);
- `unknown`: anything else (a timeout — 503 "may or may not be applied" or no answer —, a
  reset connection, a 5xx): either outcome is allowed.

After the fault the writers go on for a while, stop, and the checker waits until every node's
`/instance/list` satisfies, on every node:

- every acked registration not followed by an acked or unknown deregistration is present;
- every acked deregistration's instance is absent, and so is every `failed` registration;
- nothing is present that was never attempted (also checked on every poll during the run);
- every node lists the same set.

Liveness: writes must resume after the fault (`resumed_s`: first acknowledged write that
started after the fault began; for `persistent-all-crash` also after the restart), and every
node must acknowledge writes again after the fault ended. `persistent-leader-isolated` also
fails if the isolated leader acknowledges, before the heal, a write that started after it was
cut off (it cannot have reached a majority). Persistent instances are registered only on 127.0.0.x
addresses (and nothing probes them: NONE).
"""
import http.client
import json
import random
import signal
import threading
import time
import urllib.parse

import chaos as C

P_SERVICES = 2
WRITERS_PER_NODE = 2
# Above the server's 3 s bound: a write with no answer by then is counted as a hang.
REQ_TIMEOUT_S = 6.0
NOT_WRITTEN = "not written"  # the 503 text of a write never handed to a leader
CONVERGE_LIMIT_S = 30
DEREG_SHARE = 0.3
NONE_CHECK = urllib.parse.quote(json.dumps({"type": "NONE"}))
# A snapshot every 100 entries, 10 kept behind it (server/src/cp/mod.rs, defaults 50,000 and
# 1,000): within a scenario every node builds snapshots and purges its log, so a node that was
# down (leader-kill) or cut off (leader-isolated) is behind the leader's purge point and must be
# caught up by a snapshot install, and a restart (all-crash) loads a snapshot plus a log tail.
RAFT_ENV = {"NACELLE_RAFT_SNAPSHOT_EVERY": "100", "NACELLE_RAFT_KEEP_AFTER_SNAPSHOT": "10"}


def svc(k):
    return f"pchaos-{k}"


class Op:
    __slots__ = ("key", "kind", "node", "writer", "t0", "t1", "outcome", "status", "text")

    def __init__(self, key, kind, node, writer):
        self.key, self.kind, self.node, self.writer = key, kind, node, writer
        self.t0 = self.t1 = self.outcome = self.status = self.text = None


class PWriter:
    """One closed-loop writer on one keep-alive connection to its node (no failover: the
    outcomes per node are what the isolated-leader scenario judges)."""

    def __init__(self, w, node, rng, book):
        self.w, self.node, self.rng, self.book = w, node, rng, book
        self.seq = 0
        self.conn = None
        self.present = []  # keys this writer registered (acked) and has not deregistered

    def request(self, method, path):
        if self.conn is None:
            c = http.client.HTTPConnection(C.SUBNET + str(self.node), C.HTTP_PORT, timeout=REQ_TIMEOUT_S)
            try:
                c.connect()
            except OSError as e:
                c.close()
                return "failed", 0, f"connect: {e}"
            self.conn = c
        try:
            self.conn.request(method, path)
            r = self.conn.getresponse()
            body = r.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            return "unknown", 0, f"{type(e).__name__}: {e}"
        if r.status == 200 and body.strip() == "ok":
            return "acked", 200, ""
        if r.status == 503 and NOT_WRITTEN in body:
            return "failed", 503, body[:200]
        return "unknown", r.status, body[:200]

    def new_key(self):
        s = self.seq
        self.seq += 1
        # Only 127.0.0.x addresses (nothing probes them: the clusters' checks are NONE);
        # one address per writer, a new port per registration.
        return f"{svc(s % P_SERVICES)}/127.0.0.{self.w + 1}:{10000 + s}"

    def run(self, stop):
        while not stop.is_set():
            if self.present and len(self.present) > 4 and self.rng.random() < DEREG_SHARE:
                key = self.present.pop(self.rng.randrange(len(self.present)))
                kind = "dereg"
            else:
                key, kind = self.new_key(), "reg"
            service, addr = key.split("/")
            ip, port = addr.split(":")
            q = f"serviceName={service}&ip={ip}&port={port}&ephemeral=false"
            op = Op(key, kind, self.node, self.w)
            self.book.begin(op)
            outcome, status, text = self.request("POST" if kind == "reg" else "DELETE",
                                                 f"/nacos/v1/ns/instance?{q}")
            op.t1, op.status, op.text = time.time(), status, text
            op.outcome = outcome  # last: a finished op is one with an outcome
            self.book.end(op)
            if op.outcome == "acked" and kind == "reg":
                self.present.append(key)
            elif op.outcome == "failed" and kind == "dereg":
                self.present.append(key)  # not written: still registered, may be retried
            if op.outcome != "acked":
                stop.wait(0.05)  # a node that refuses is not hammered


class Book:
    """Every write and its outcome; what every node must show."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []
        self.attempted = set()
        self.dereg_started = set()

    def begin(self, op):
        with self.lock:
            op.t0 = time.time()
            self.attempted.add(op.key)
            if op.kind == "dereg":
                self.dereg_started.add(op.key)
            self.ops.append(op)

    def end(self, op):
        pass  # fields are set on the op itself; the list holds it already

    def expected(self):
        """(must be present, must be absent, attempted) from the finished writes."""
        with self.lock:
            ops = [o for o in self.ops if o.outcome is not None]
            attempted = set(self.attempted)
        reg, dereg = {}, {}
        for o in ops:
            (reg if o.kind == "reg" else dereg).setdefault(o.key, []).append(o.outcome)
        present, absent = set(), set()
        for key, outs in reg.items():
            d = dereg.get(key, [])
            if "acked" in d:
                absent.add(key)  # deregistered after its acked registration
            elif "acked" in outs and "unknown" not in d:
                present.add(key)  # no deregistration, or only ones never written
            elif outs == ["failed"]:
                absent.add(key)
        return present, absent, attempted


def list_node(conns, i, timeout=1.5):
    """The persistent keys node i lists (None: it did not answer)."""
    got = set()
    try:
        for k in range(P_SERVICES):
            st, body = C.http_call(conns, C.SUBNET + str(i), "GET",
                                   f"/nacos/v1/ns/instance/list?serviceName={svc(k)}", timeout)
            if st != 200:
                return None
            for h in json.loads(body).get("hosts", []):
                got.add(f"{svc(k)}/{h['ip']}:{h['port']}")
    except (OSError, ValueError):
        return None
    return got


def raft_role(conns, i):
    """nacelle_raft_role of node i (0 leader, 1 follower, ...), None if it does not answer."""
    try:
        st, body = C.http_call(conns, C.SUBNET + str(i), "GET", "/metrics", 1.0)
    except OSError:
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("nacelle_raft_role "):
            return int(float(line.split()[1]))
    return None


def wait_leader(ids, limit):
    """The one leader among `ids` once every other one follows it (None after `limit`)."""
    conns = {}
    end = time.time() + limit
    while time.time() < end:
        roles = {i: raft_role(conns, i) for i in ids}
        leaders = [i for i, r in roles.items() if r == 0]
        if len(leaders) == 1 and all(r == 1 for i, r in roles.items() if i != leaders[0]):
            return leaders[0]
        time.sleep(0.1)
    return None


class Poller(threading.Thread):
    """Lists every node about twice a second during the run. Anything present that was never
    attempted is a violation at once (`phantoms`). An instance a node listed (so it was
    committed) and no longer lists, with no deregistration of it begun, has `vanished` from
    that node: a violation if the node ran throughout, reported apart if it restarted in
    between (it listed its instances before it had loaded them all)."""

    def __init__(self, nodes, book, stop):
        super().__init__(daemon=True)
        self.nodes, self.book, self.stop_ev = nodes, book, stop
        self.phantoms = []  # (node, key, t)
        self.vanished = []  # (node, key, t)
        self.vanished_restart = []  # (node, key, t)
        self.sweeps = 0

    def run(self):
        conns = {}
        last = {}  # node -> (keys, starts)
        while not self.stop_ev.is_set():
            for i, node in self.nodes.items():
                starts = node.starts
                got = list_node(conns, i, 1.0)
                if got is None or node.starts != starts:
                    continue
                now = time.time()
                with self.book.lock:
                    extra = got - self.book.attempted
                    prev = last.get(i)
                    gone = (prev[0] - got - self.book.dereg_started) if prev else set()
                self.sweeps += 1
                for key in sorted(extra)[:5]:
                    self.phantoms.append((i, key, now))
                if gone:
                    into = self.vanished if prev[1] == starts else self.vanished_restart
                    into += [(i, key, now) for key in sorted(gone)[:5]]
                    if len(gone) > 5:
                        into.append((i, f"... {len(gone)} in all", now))
                last[i] = (got, starts)
            self.stop_ev.wait(0.5)


class PCtx:
    def __init__(self, net, nodes, rng, quick, dur):
        self.net, self.nodes, self.rng, self.quick, self.dur = net, nodes, rng, quick, dur
        self.n = len(nodes)
        self.fault_start = self.fault_end = None
        self.restarted_at = None
        self.isolated = None
        self.heal_at = None  # when the partition was lifted (leader-isolated)
        self.notes, self.extra = [], {}

    def begin(self, note):
        self.fault_start = time.time()
        self.notes.append(note)
        C.log("  fault:", note)

    def end(self):
        self.fault_end = time.time()
        C.log("  fault ends")

    def block(self, pairs):
        self.net.relay_cmd(block=sorted(pairs))


def sc_leader_kill(ctx):
    """kill -9 of the Raft leader under writes through every node, restarted (same data dir)
    after `dur` s."""
    leader = wait_leader(list(ctx.nodes), 10)
    ctx.extra["leader"] = leader
    ctx.begin(f"kill -9 the leader (node {leader}), restart after {ctx.dur}s")
    ctx.nodes[leader].kill9()
    time.sleep(ctx.dur)
    ctx.nodes[leader].start()
    ctx.end()


def sc_leader_isolated(ctx):
    """The Raft leader is cut from both other nodes (peer traffic both ways) for `dur` s; the
    writers keep writing through it (HTTP still reaches it): it must refuse or time out, never
    acknowledge; the other two elect a leader and go on; after the heal, convergence."""
    leader = wait_leader(list(ctx.nodes), 10)
    ctx.isolated = leader
    ctx.extra["isolated"] = leader
    others = [k for k in ctx.nodes if k != leader]
    ctx.begin(f"isolate the leader (node {leader}) from {others} for {ctx.dur}s")
    ctx.block({(leader, k) for k in others} | {(k, leader) for k in others})
    time.sleep(ctx.dur)
    ctx.extra["leader_during"] = wait_leader(others, 0.5)
    ctx.heal_at = time.time()
    ctx.block(set())
    ctx.end()


def sc_all_crash(ctx):
    """kill -9 of every node at once while writes are being acknowledged, restart on the same
    data dirs after 1 s."""
    ctx.begin("kill -9 every node while writes are acknowledged, restart after 1 s")
    for node in ctx.nodes.values():
        node.signal(signal.SIGKILL)
    for node in ctx.nodes.values():
        node.kill9()
    ctx.extra["killed_at"] = ctx.fault_start
    time.sleep(1)
    for node in ctx.nodes.values():
        node.start()
    ctx.restarted_at = time.time()
    ctx.end()


def sc_loss(ctx):
    """Random loss of every peer packet, every link, both ways, for `dur` s, under writes."""
    p = 0.10
    ctx.begin(f"{p:.0%} peer packet loss for {ctx.dur}s")
    ctx.net.relay_cmd(loss=p)
    time.sleep(ctx.dur)
    ctx.net.relay_cmd(loss=0.0)
    ctx.end()


# Liveness bounds (each scenario FAILS past them). A follower stands for election 2-2.5 s
# after the leader's last heartbeat (raft/src/node.rs: 0.75-1.25 s election timeout plus
# openraft's leader lease), a write waits up to 3 s for a leader and its commit, and a writer
# whose request failed waits 50 ms: a write started at the fault is acked within
# election + write timeout + slack. After the heal (restart, partition ending) every node must
# ack a write again within the same bound; a restarted node must first load its store.
RESUME_BOUND_S = 8.0  # fault start (or restart, all-crash) -> first acked write started after it
NODE_BACK_BOUND_S = 10.0  # fault end -> every node acks writes again (its first ack)
GAP_BOUND_S = 10.0  # longest stretch without any ack, fault start to the writers' stop

SCENARIOS = {  # name: (function, fault duration s, quick duration s)
    "persistent-leader-kill": (sc_leader_kill, 8, 4),
    "persistent-leader-isolated": (sc_leader_isolated, 20, 8),
    "persistent-all-crash": (sc_all_crash, 0, 0),
    "persistent-loss": (sc_loss, 40, 12),
}
QUICK = list(SCENARIOS)


def setup_services(ids, limit=15):
    """Creates the services and turns their health checks off (through any node; retried)."""
    conns = {}
    end = time.time() + limit
    for k in range(P_SERVICES):
        for path, method in ((f"/nacos/v1/ns/service?serviceName={svc(k)}", "POST"),
                             (f"/nacos/v1/ns/cluster?serviceName={svc(k)}&clusterName=DEFAULT&checkPort=80"
                              f"&useInstancePort4Check=true&healthChecker={NONE_CHECK}", "PUT")):
            while True:
                i = ids[0]
                try:
                    st, body = C.http_call(conns, C.SUBNET + str(i), method, path, 5)
                except OSError as e:
                    st, body = 0, str(e).encode()
                if st == 200:
                    break
                if time.time() > end:
                    raise RuntimeError(f"{method} {path}: {st} {body[:200]!r}")
                time.sleep(0.2)
    # The definitions reach every node before any instance (log order), but wait anyway
    # until every node lists the services.
    while time.time() < end:
        if all(list_node(conns, i) is not None for i in ids):
            return
        time.sleep(0.2)
    raise RuntimeError("the services are not listed on every node")


def wait_converged(n, book, limit):
    """Polls every node until each satisfies the expected state and all agree; returns
    (seconds or None, the last views, the last verdict per node)."""
    conns = {}
    t0 = time.time()
    present, absent, attempted = book.expected()
    views, verdict = {}, {}
    while True:
        views = {i: list_node(conns, i) for i in range(1, n + 1)}
        verdict = {}
        for i, got in views.items():
            if got is None:
                verdict[i] = {"unreachable": True}
                continue
            verdict[i] = {"lost": sorted(present - got), "resurrected": sorted(got & absent),
                          "phantom": sorted(got - attempted)}
        sets = [frozenset(v) for v in views.values() if v is not None]
        ok = (all(v is not None for v in views.values()) and len(set(sets)) == 1
              and all(not (v["lost"] or v["resurrected"] or v["phantom"]) for v in verdict.values()))
        if ok:
            return time.time() - t0, views, verdict
        if time.time() - t0 > limit:
            return None, views, verdict
        time.sleep(0.3)


def run_scenario(name, args, net, binary, workdir, seed):
    import os
    fn, dur, qdur = SCENARIOS[name]
    rng = random.Random(f"{seed}-{name}")
    n = args.nodes
    sdir = os.path.join(workdir, name)
    os.makedirs(sdir, exist_ok=True)
    net.relay_cmd(block=[], loss=0.0, delay_ms=0, jitter_ms=0, dup=0.0)
    stats0 = net.relay_cmd(stats=True)
    nodes = {i: C.Node(i, n, binary, sdir) for i in range(1, n + 1)}
    for node in nodes.values():
        node.env = dict(RAFT_ENV)
    ctx = PCtx(net, nodes, rng, args.quick, qdur if args.quick else dur)
    book = Book()
    stop_w, stop_p = threading.Event(), threading.Event()
    writers = [PWriter(w, w % n + 1, random.Random(f"{seed}-{name}-w{w}"), book)
               for w in range(WRITERS_PER_NODE * n)]
    threads = []
    poller = Poller(nodes, book, stop_p)
    res = {"scenario": name, "kind": "persistent", "doc": " ".join((fn.__doc__ or "").split())}
    converge, views, verdict = None, {}, {}
    t_begin = time.time()
    after = 4 if args.quick else 8
    log = C.log
    log(f"== {name}")
    try:
        for node in nodes.values():
            node.start()
        if wait_leader(list(nodes), 30) is None:
            raise RuntimeError("no Raft leader within 30 s of the start")
        setup_services(list(nodes))
        poller.start()
        for w in writers:
            t = threading.Thread(target=w.run, args=(stop_w,), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(3 if args.quick else 6)
        warm = sum(1 for o in book.ops if o.outcome == "acked")
        if warm == 0:
            raise RuntimeError("no write acknowledged before the fault")
        fn(ctx)
        # Writes go on after the fault (through every node), then stop and are judged.
        time.sleep(after)
        stop_w.set()
        for t in threads:
            t.join(timeout=REQ_TIMEOUT_S + 2)
        converge, views, verdict = wait_converged(n, book, CONVERGE_LIMIT_S)
        log(f"  converged after {converge if converge is None else round(converge, 2)} s")
    except Exception as e:  # a harness failure is a failed scenario, never hidden
        log(f"  ERROR: {e}")
        res["error"] = str(e)
    finally:
        stop_w.set()
        stop_p.set()
        for t in threads:
            t.join(timeout=REQ_TIMEOUT_S + 2)
        for node in nodes.values():
            node.stop_gracefully(5)
    stats1 = net.relay_cmd(stats=True)

    # --- judge
    ops = [o for o in book.ops if o.outcome is not None]
    # Every write, for whoever investigates a failure (times relative to the fault's start).
    base = ctx.fault_start or t_begin
    with open(os.path.join(sdir, "writes.jsonl"), "w") as f:
        for o in ops:
            f.write(json.dumps({"key": o.key, "op": o.kind, "node": o.node, "writer": o.writer,
                                "t0": round(o.t0 - base, 4), "t1": round(o.t1 - base, 4), "outcome": o.outcome,
                                "status": o.status, "text": o.text}) + "\n")
    fs = ctx.fault_start
    fe = ctx.fault_end
    count = lambda pred: sum(1 for o in ops if pred(o))
    outcomes = {k: {o: count(lambda x, k=k, o=o: x.kind == k and x.outcome == o) for o in ("acked", "failed", "unknown")}
                for k in ("reg", "dereg")}
    acked_after = sorted(o.t1 for o in ops if fs and o.outcome == "acked" and o.t0 >= fs)
    resumed = round(acked_after[0] - fs, 2) if acked_after else None
    resumed_restart = None
    if ctx.restarted_at:
        a = [o.t1 for o in ops if o.outcome == "acked" and o.t0 >= ctx.restarted_at]
        resumed_restart = round(min(a) - ctx.restarted_at, 2) if a else None
    # The longest stretch without any acknowledgement, from the fault's start to the writers' stop.
    acks = sorted(o.t1 for o in ops if o.outcome == "acked")
    gap = None
    if fs:
        pts = [fs] + [t for t in acks if t > fs]
        gap = round(max((b - a for a, b in zip(pts, pts[1:])), default=0.0), 2)
    per_node_after = {i: count(lambda o, i=i: fe and o.node == i and o.outcome == "acked" and o.t0 >= fe)
                      for i in nodes}
    # Per node: fault end -> its first acked write started after the fault ended.
    node_back = {}
    for i in nodes:
        a = [o.t1 for o in ops if fe and o.node == i and o.outcome == "acked" and o.t0 >= fe]
        node_back[i] = round(min(a) - fe, 2) if a else None
    during = {i: {oc: count(lambda o, i=i, oc=oc: fs and fe and o.node == i and fs <= o.t0 < fe and o.outcome == oc)
                  for oc in ("acked", "failed", "unknown")} for i in nodes}
    # A write that entered the isolated node after the cut cannot reach a majority before the
    # heal: an ack of one before the heal is a violation. (One still waiting for a leader at the
    # heal may be acked after it, through the new leader: allowed, and counted apart.)
    minority_acks, acked_after_heal = [], 0
    if ctx.isolated:
        for o in ops:
            if o.node == ctx.isolated and o.outcome == "acked" and fs <= o.t0 < ctx.heal_at:
                if o.t1 < ctx.heal_at:
                    minority_acks.append({"key": o.key, "kind": o.kind, "t0_s": round(o.t0 - fs, 3),
                                          "t1_s": round(o.t1 - fs, 3)})
                else:
                    acked_after_heal += 1
        ctx.extra["isolated_started_during_acked_after_heal"] = acked_after_heal
    slow = [o for o in ops if o.outcome != "acked" and o.status == 0 and "timed out" in o.text]
    refusal_ms = sorted(round((o.t1 - o.t0) * 1000) for o in ops if o.status == 503)
    present, absent, attempted = book.expected()
    lost = {i: v.get("lost", [])[:20] for i, v in verdict.items()}
    back = {i: v.get("resurrected", [])[:20] for i, v in verdict.items()}
    phantom = {i: v.get("phantom", [])[:20] for i, v in verdict.items()}
    n_lost = len(set().union(*[set(v.get("lost", [])) for v in verdict.values()])) if verdict else None
    n_back = len(set().union(*[set(v.get("resurrected", [])) for v in verdict.values()])) if verdict else None
    n_phantom = len(set().union(*[set(v.get("phantom", [])) for v in verdict.values()])) if verdict else None
    texts = {}
    for o in ops:
        if o.outcome != "acked":
            t = f"{o.status} {o.text[:90]}"
            texts[t] = texts.get(t, 0) + 1
    # Snapshots built and installed per node (their log lines, raft/src/state_machine.rs).
    snaps = {}
    for i in nodes:
        try:
            with open(os.path.join(sdir, f"n{i}.log"), errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        snaps[i] = {"built": text.count("raft: snapshot built"), "installed": text.count("raft: snapshot installed")}
    res.update({
        "notes": ctx.notes,
        "raft_snapshots": snaps,
        "fault_s": round(fe - fs, 1) if fs and fe else None,
        "writes": outcomes,
        "acked": outcomes["reg"]["acked"] + outcomes["dereg"]["acked"],
        "must_be_present": len(present),
        "must_be_absent": len(absent),
        "attempted_keys": len(attempted),
        "lost": n_lost, "resurrected": n_back, "phantom": n_phantom,
        "lost_examples": lost, "resurrected_examples": back, "phantom_examples": phantom,
        "phantoms_during_run": [(i, k, round(t - (fs or t), 2)) for i, k, t in poller.phantoms][:20],
        "vanished_during_run": [(i, k, round(t - (fs or t), 2)) for i, k, t in poller.vanished][:20],
        "vanished_across_restart": [(i, k, round(t - (fs or t), 2)) for i, k, t in poller.vanished_restart][:20],
        "converged_s": None if converge is None else round(converge, 2),
        "final_counts": {i: (None if v is None else len(v)) for i, v in views.items()},
        "resumed_s": resumed,
        "resumed_after_restart_s": resumed_restart,
        "longest_ack_gap_s": gap,
        "acked_per_node_after_fault": per_node_after,
        "node_back_after_fault_s": node_back,
        "bounds": {"resume_s": RESUME_BOUND_S, "node_back_s": NODE_BACK_BOUND_S, "gap_s": GAP_BOUND_S},
        "outcomes_per_node_during_fault": during,
        "minority_acks": minority_acks[:20],
        "hung_requests": len(slow),
        "refusal_ms_max": refusal_ms[-1] if refusal_ms else None,
        "refusal_ms_median": refusal_ms[len(refusal_ms) // 2] if refusal_ms else None,
        "non_acked_answers": dict(sorted(texts.items(), key=lambda kv: -kv[1])[:12]),
        "relay": {k: stats1[k] - stats0.get(k, 0) for k in stats1},
        "seconds": round(time.time() - t_begin, 1),
        "logs": sdir,
        **ctx.extra,
    })
    why = []
    if "error" in res:
        why.append(f"error: {res['error']}")
    if converge is None:
        why.append(f"no convergence within {CONVERGE_LIMIT_S} s: lost {lost}, resurrected {back}, "
                   f"phantom {phantom}, counts {res['final_counts']}")
    if poller.phantoms:
        why.append(f"instances never written seen during the run: {res['phantoms_during_run']}")
    if poller.vanished:
        why.append(f"committed instances vanished from a running node: {res['vanished_during_run']}")
    if resumed is None:
        why.append("no write acknowledged after the fault began")
    if ctx.restarted_at and resumed_restart is None:
        why.append("no write acknowledged after the restart")
    if fe and not all(per_node_after.values()):
        why.append(f"a node acknowledged nothing after the fault: {per_node_after}")
    first = resumed_restart if ctx.restarted_at else resumed
    if first is not None and first > RESUME_BOUND_S:
        why.append(f"writes resumed only after {first} s (bound {RESUME_BOUND_S} s)")
    late = {i: t for i, t in node_back.items() if t is not None and t > NODE_BACK_BOUND_S}
    if late:
        why.append(f"nodes acked again only after the bound of {NODE_BACK_BOUND_S} s: {late}")
    if gap is not None and gap > GAP_BOUND_S:
        why.append(f"no write acked for {gap} s (bound {GAP_BOUND_S} s)")
    if minority_acks:
        why.append(f"the isolated leader acknowledged writes it could not commit: {minority_acks[:5]}")
    res["passed"] = not why
    log(f"  {'PASS' if res['passed'] else 'FAIL'}: acked {res['acked']} (reg {outcomes['reg']}, dereg {outcomes['dereg']}), "
        f"lost {n_lost}, resurrected {n_back}, phantom {n_phantom}, resumed {resumed} s"
        + (f" ({resumed_restart} s after the restart)" if ctx.restarted_at else "")
        + f", longest gap {gap} s, nodes back {node_back}, {res['seconds']} s")
    for w in why:
        log("    why:", w)
    return res


def table(results):
    hdr = (f"{'scenario':<27} {'ok':<4} {'acked':>6} {'failed':>6} {'unknown':>7} {'lost':>4} {'back':>4} "
           f"{'phantom':>7} {'resumed s':>9} {'gap s':>6} {'nodes back s':>12} {'conv s':>6} {'wall s':>6}")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        w = (r.get("writes") or {}).values()
        unk = sum(v.get("unknown", 0) for v in w)
        fail = sum(v.get("failed", 0) for v in (r.get("writes") or {}).values())
        res_s = r.get("resumed_s")
        if r.get("resumed_after_restart_s") is not None:
            res_s = f"{res_s}/{r['resumed_after_restart_s']}"
        back = [t for t in (r.get("node_back_after_fault_s") or {}).values() if t is not None]
        lines.append(f"{r['scenario']:<27} {'ok' if r['passed'] else 'FAIL':<4} {r.get('acked', '?'):>6} {fail:>6} "
                     f"{unk:>7} {str(r.get('lost')):>4} {str(r.get('resurrected')):>4} {str(r.get('phantom')):>7} "
                     f"{str(res_s):>9} {str(r.get('longest_ack_gap_s')):>6} {str(max(back) if back else None):>12} "
                     f"{str(r.get('converged_s')):>6} {r.get('seconds', '?'):>6}")
    return "\n".join(lines)

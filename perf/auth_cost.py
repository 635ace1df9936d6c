#!/usr/bin/env python3
"""What authentication costs (issue 17): bcrypt per password check, a cached password pair,
a token check; and whether password checks slow down the other requests of a core.

    python3 perf/auth_cost.py [path/to/nacelle]     # default target/release/nacelle

Starts `nacelle --auth --cores 1` on free 127.0.0.1 ports; each password attempt comes from
its own 127.0.1.x source address (the per-source login limit would refuse them otherwise).
Prints medians and p99s in milliseconds, wall clock, on whatever else the machine runs.
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/nacelle"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


http_port, grpc_port = free_port(), free_port()
data = tempfile.mkdtemp(prefix="nacelle-auth-cost-")
proc = subprocess.Popen([BIN, "--bind", "127.0.0.1", "--http-port", str(http_port), "--grpc-port",
                         str(grpc_port), "--cores", "1", "--data-dir", data, "--auth",
                         "--admin-password", "cost-admin-pw"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
src = [0]


def call(method, path, form=None, source=None):
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10,
                                   source_address=(source, 0) if source else None)
    body = urllib.parse.urlencode(form) if form else None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
    t = time.perf_counter()
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    out = r.read()
    dt = (time.perf_counter() - t) * 1000
    c.close()
    return r.status, out, dt


def next_source():
    src[0] += 1
    return f"127.0.{1 + src[0] // 250}.{1 + src[0] % 250}"


def login(pw, source=None):
    return call("POST", "/nacos/v1/auth/login", {"username": "nacos", "password": pw}, source)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


try:
    for _ in range(100):
        try:
            if login("cost-admin-pw")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    token = json.loads(login("cost-admin-pw")[1])["accessToken"]
    wrong = [login(f"wrong-{i}", next_source())[2] for i in range(20)]
    cached = [login("cost-admin-pw")[2] for _ in range(200)]
    list_path = f"/nacos/v1/ns/instance/list?serviceName=x&accessToken={token}"
    tokened = [call("GET", list_path)[2] for _ in range(500)]
    open_path = "/nacos/v1/console/health/liveness"
    baseline = [call("GET", open_path)[2] for _ in range(500)]
    # Reads with a token while 4 threads keep the bcrypt pool busy with wrong passwords.
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            login("busy-wrong", next_source())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    during = [call("GET", list_path)[2] for _ in range(300)]
    stop.set()
    for t in threads:
        t.join()
    rows = [("login, wrong password (one bcrypt check, cost 10)", wrong),
            ("login, password pair cached on the core", cached),
            ("instance/list with a token (HS256 check)", tokened),
            ("liveness (no check), for comparison", baseline),
            ("instance/list with a token while 4 clients keep bcrypt busy", during)]
    for name, v in rows:
        print(f"{name:64s} p50 {statistics.median(v):7.2f} ms   p99 {pct(v, 0.99):7.2f} ms   n={len(v)}")
finally:
    proc.terminate()
    proc.wait()

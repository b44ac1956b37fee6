#!/usr/bin/env python3
"""How long a directory change made on node 1 takes to be in force on node 3.

A benchmark, not a test (run by `./scripts/bench directory`). For each
RTT in RTTS_MS it starts `estafette dev --regions 3 --rtt RTT` (release
build, WAN emulator between the nodes), creates a user through node 1, then
SAMPLES times changes that user's quota through node 1's admin socket while
polling node 3's own copy of the directory (`user list --cached`, no
storage reads) until the new quota shows. It prints p50/p99 of
- start -> node 3: from sending the change to node 1 until node 3 has it,
- ack -> node 3: from node 1's answer (when `estafette user quota` would
  return) until node 3 has it (0 when the push arrived first),
and the goal from the issue: p99 (start -> node 3) <= 2 RTT + 100 ms.

Environment: ESTAFETTE_BIN (the binary), RTTS_MS (default "0 35"),
SAMPLES (default 100).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.environ.get("ESTAFETTE_BIN", "estafette")
RTTS = [float(x) for x in os.environ.get("RTTS_MS", "0 35").split()]
SAMPLES = int(os.environ.get("SAMPLES", "100"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Admin:
    """One persistent admin-socket connection (JSON lines)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")

    def call(self, req):
        self.f.write(json.dumps(req).encode() + b"\n")
        self.f.flush()
        return json.loads(self.f.readline())


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(rtt):
    d = tempfile.mkdtemp(prefix="estafette-dir-bench-")
    args = [BIN, "dev", "--regions", "3", "--rtt", str(rtt), "--data-dir", d]
    for flag in ("--rpc-port", "--wan-port", "--metrics-port", "--lmtp-port", "--imap-port", "--imaps-port"):
        args += [flag, str(free_port())]
    log = open(os.path.join(d, "dev.log"), "w")
    dev = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        deadline = time.time() + 180
        for line in dev.stdout:
            if "demo user" in line:
                break
            if time.time() > deadline:
                raise SystemExit("dev did not become ready")
        sock = lambda i: os.path.join(d, f"node-{i}", "meta", "admin.sock")
        n1, n3 = Admin(sock(1)), Admin(sock(3))
        r = n1.call({"op": "user_add", "login": "prop", "password": "prop-password",
                     "addresses": ["prop@example.test"], "home_region": None})
        assert r.get("result") == "done", r
        to_node3, after_ack = [], []
        for i in range(SAMPLES):
            quota = f"{i + 1}M"
            acked = {}

            def change():
                res = n1.call({"op": "user_quota", "login": "prop", "quota": quota})
                acked["t"] = time.perf_counter()
                acked["r"] = res

            t0 = time.perf_counter()
            th = threading.Thread(target=change)
            th.start()
            while True:
                users = n3.call({"op": "user_list", "cached": True})["users"]
                if any(u["login"] == "prop" and u.get("quota") == quota for u in users):
                    t3 = time.perf_counter()
                    break
                if time.perf_counter() - t0 > 30:
                    raise SystemExit(f"node 3 never saw quota {quota}")
            th.join()
            assert acked["r"].get("result") == "done", acked["r"]
            to_node3.append((t3 - t0) * 1000)
            after_ack.append(max(0.0, (t3 - acked["t"]) * 1000))
        goal = 2 * rtt + 100
        p99 = pct(to_node3, 99)
        print(f"RTT {rtt:>4.0f} ms  start->node 3: p50 {pct(to_node3, 50):6.1f} ms  p99 {p99:6.1f} ms"
              f"  ({pct(to_node3, 50) / rtt if rtt else 0:.2f} / {p99 / rtt if rtt else 0:.2f} RTT)"
              f"   ack->node 3: p50 {pct(after_ack, 50):5.1f} ms  p99 {pct(after_ack, 99):5.1f} ms"
              f"   goal p99 <= {goal:.0f} ms: {'met' if p99 <= goal else 'NOT met'}")
        sys.stdout.flush()
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
        for i in (1, 2, 3):
            try:
                os.kill(int(open(os.path.join(d, f"node-{i}", "pid")).read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    print(f"== directory propagation: {SAMPLES} quota changes on node 1, watched on node 3")
    for rtt in RTTS:
        run(rtt)

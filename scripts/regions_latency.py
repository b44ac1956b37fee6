"""Latency across regions, for `./scripts/bench regions`: a three-region dev
appliance (`estafette dev --regions 3 --rtt RTT_MS`, release build) and
clients in region 1 (the user's home) and region 3 (away).

Measured, each compared with the physical limit:
- LMTP: end of DATA to 250, at the home node and at an away node. Limit:
  one round trip (the message must reach a second region before 250).
- IDLE: from the 250 of a delivery in region 1 to `* n EXISTS` in an IDLE
  session in region 3. Limit: one one-way delay (RTT/2).
- APPEND and STORE, at home and away. Limit: one round trip.

Environment: ESTAFETTE_BIN, DEV_DIR, IMAP_PORT, LMTP_PORT, RTT_MS, SAMPLES.
Prints a table; nothing here is a pass/fail test.
"""
import os
import socket
import statistics
import subprocess
import sys
import time

BIN = os.environ["ESTAFETTE_BIN"]
DIR = os.environ["DEV_DIR"]
IMAP_PORT = int(os.environ["IMAP_PORT"])
LMTP_PORT = int(os.environ["LMTP_PORT"])
RTT = float(os.environ.get("RTT_MS", "35"))
SAMPLES = int(os.environ.get("SAMPLES", "40"))
# A fresh user each run, so that counts start at zero on a reused appliance.
USER = "lat%d" % os.getpid()
PASSWORD, ADDRESS = "latency-pass", "%s@example.test" % USER


def host(i):
    return "127.0.0.%d" % i


def wait_until(what, cond, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.1)


def create_user():
    subprocess.run([BIN, "user", "add", USER, "--address", ADDRESS, "--home", "region-1",
                    "--password-stdin", "--data-dir", DIR], input=PASSWORD + "\n", text=True,
                   capture_output=True, check=True)

    def known(i):
        out = subprocess.run([BIN, "user", "list", "--config", "%s/node-%d/estafette.toml" % (DIR, i)],
                             capture_output=True, text=True).stdout
        return ADDRESS in out
    wait_until("the user on every node", lambda: all(known(i) for i in (1, 2, 3)))


class Lines:
    """A line-oriented socket with a timeout."""

    def __init__(self, h, port):
        self.s = socket.create_connection((h, port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode("utf-8", "replace")

    def send(self, data):
        self.s.sendall(data)


class Imap(Lines):
    def __init__(self, i):
        super().__init__(host(i), IMAP_PORT)
        self.n = 0
        self.line()
        self.ok("LOGIN %s %s" % (USER, PASSWORD))

    def ok(self, cmd, literal=None, allow_no=False):
        self.n += 1
        tag = "t%d" % self.n
        if literal is None:
            self.send(("%s %s\r\n" % (tag, cmd)).encode())
        else:
            self.send(("%s %s {%d+}\r\n" % (tag, cmd, len(literal))).encode() + literal + b"\r\n")
        untagged = []
        while True:
            l = self.line()
            if l.startswith(tag + " "):
                if not l.startswith(tag + " OK") and not (allow_no and l.startswith(tag + " NO")):
                    sys.exit("%s -> %s" % (cmd, l))
                return untagged
            untagged.append(l)


class Lmtp(Lines):
    def __init__(self, i):
        super().__init__(host(i), LMTP_PORT)
        self.expect("220")
        self.cmd("LHLO bench.test", "250")

    def expect(self, code):
        while True:
            l = self.line()
            if l[3:4] != "-":
                if not l.startswith(code):
                    sys.exit("LMTP: expected %s, got %s" % (code, l))
                return l

    def cmd(self, c, code):
        self.send((c + "\r\n").encode())
        return self.expect(code)

    def deliver(self, n):
        """Returns (end of DATA, 250) times."""
        self.cmd("MAIL FROM:<bench@example.test>", "250")
        self.cmd("RCPT TO:<%s>" % ADDRESS, "250")
        self.cmd("DATA", "354")
        body = ("From: bench@example.test\r\nTo: %s\r\nSubject: latency %d\r\n"
                "Message-ID: <lat-%d-%f@bench.test>\r\n\r\n%s\r\n" % (ADDRESS, n, n, time.time(), "x" * 2000))
        self.send(body.encode() + b".\r\n")
        t0 = time.perf_counter()
        self.expect("250")
        return t0, time.perf_counter()


def message(n):
    return ("From: bench@example.test\r\nTo: %s\r\nSubject: append %d\r\n\r\n%s\r\n"
            % (ADDRESS, n, "y" * 2000)).encode()


def stats(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return statistics.median(xs), q(0.9), q(0.99)


def wan(cmd):
    subprocess.run([BIN, "wan", "--data-dir", DIR] + cmd.split(), check=True, capture_output=True)


def measure(round_no):
    """One pass over every operation; returns (name, samples, limit, what)."""
    home, away = Imap(1), Imap(3)
    for s in (home, away):
        s.ok("SELECT INBOX")
    home.ok('CREATE "lat"', allow_no=True)  # NO [ALREADYEXISTS] on the second pass
    watcher = Imap(3)
    watcher.ok("SELECT INBOX")
    lmtp = {1: Lmtp(1), 3: Lmtp(3)}
    rows = []

    # Warm-up: sessions, sequencer, connections.
    for k in range(5):
        lmtp[1].deliver(k)
        home.ok('APPEND "lat"', message(k))
        away.ok('APPEND "lat"', message(k))

    for where, i in (("home (region 1)", 1), ("away (region 3)", 3)):
        xs = []
        for k in range(SAMPLES):
            t0, t1 = lmtp[i].deliver(k)
            xs.append((t1 - t0) * 1000)
        rows.append(("LMTP end of DATA -> 250, " + where, xs, RTT, "1 RTT"))

    # IDLE in region 3, deliveries in region 1. First, the watcher must see
    # every message delivered so far: each sample then waits for the count
    # that includes its own delivery, not for an older one arriving late.
    delivered = round_no * (5 + 3 * SAMPLES) + 5 + 2 * SAMPLES
    deadline = time.monotonic() + 60
    while True:
        exists = max([int(l.split()[1]) for l in watcher.ok("NOOP") if l.endswith(" EXISTS")] + [0])
        if exists >= delivered:
            break
        if time.monotonic() > deadline:
            sys.exit("the watcher sees %d of %d delivered messages" % (exists, delivered))
        time.sleep(0.2)
    xs = []
    for k in range(SAMPLES):
        watcher.send(b"i IDLE\r\n")
        while True:
            l = watcher.line()
            if l.startswith("+"):
                break
            if l.startswith("i "):
                sys.exit("IDLE refused: " + l)
        tdata, t250 = lmtp[1].deliver(1000 + k)
        delivered += 1
        while True:
            l = watcher.line()
            if l.endswith(" EXISTS") and int(l.split()[1]) >= delivered:
                t = time.perf_counter()
                break
        xs.append((t - t250) * 1000)
        watcher.send(b"DONE\r\n")
        while not watcher.line().startswith("i "):
            pass
    rows.append(("IDLE: 250 in region 1 -> EXISTS in region 3", xs, RTT / 2, "1 one-way"))

    for where, s in (("home (region 1)", home), ("away (region 3)", away)):
        s.ok('SELECT "lat"')
        xs = []
        for k in range(SAMPLES):
            t0 = time.perf_counter()
            s.ok('APPEND "lat"', message(k))
            xs.append((time.perf_counter() - t0) * 1000)
        rows.append(("APPEND, " + where, xs, RTT, "1 RTT"))
        xs = []
        for k in range(SAMPLES):
            t0 = time.perf_counter()
            s.ok("STORE 1 %sFLAGS (\\Flagged)" % ("+" if k % 2 == 0 else "-"))
            xs.append((time.perf_counter() - t0) * 1000)
        rows.append(("STORE (one message), " + where, xs, RTT, "1 RTT"))

    for c in (home, away, watcher):
        c.ok("LOGOUT")
    return rows


def main():
    create_user()
    # Local work alone (no WAN delay), then the same at RTT: the second
    # pass minus the first is what the WAN costs.
    wan("rtt 0")
    local = {name: stats(xs)[0] for name, xs, _, _ in measure(0)}
    wan("rtt %g" % RTT)
    rows = measure(1)
    print("RTT between regions: %.1f ms (one way %.1f ms); %d samples each; local = the same at RTT 0"
          % (RTT, RTT / 2, SAMPLES))
    print("%-46s %7s %7s %7s %7s  %-9s %9s %9s" % ("operation", "p50 ms", "p90 ms", "p99 ms", "local",
                                                 "limit", "p50/limit", "WAN/limit"))
    for name, xs, limit, what in rows:
        p50, p90, p99 = stats(xs)
        print("%-46s %7.1f %7.1f %7.1f %7.1f  %-9s %9.2f %9.2f" % (name, p50, p90, p99, local[name], what,
                                                               p50 / limit, (p50 - local[name]) / limit))

main()

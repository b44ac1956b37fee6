"""Chaos test for a three-region Estafette appliance (`estafette dev --regions 3`).

Puts continuous IMAP and LMTP load on all three nodes, injects one failure
scenario, heals, and then checks the invariants of DESIGN.md section 3 (see
docs/consistency.md) from the point of view of every client that took part.

Environment:
  ESTAFETTE_BIN   the estafette binary
  DEV_DIR         data dir of the running appliance (node-<i>/pid,
                  node-<i>/estafette.toml, wan.sock)
  IMAP_PORT, LMTP_PORT   ports shared by the nodes at 127.0.0.1..3
  SCENARIO        kill | cut | oneway | random-kills | none
  LOAD_SECONDS (8), FAULT_SECONDS (20), AFTER_SECONDS (10), KILLS (8),
  SEED (random), GAP_LIMIT (10), CONVERGE_SECONDS (60: how long the final
  check waits for every node to show the expected state), RTT (reported only)

Run by hand:
  ESTAFETTE_BIN=... DEV_DIR=... IMAP_PORT=... LMTP_PORT=... SCENARIO=kill \
      python3 tests/regions/chaos.py

What it does:
  1. Creates users chaos1..3 (home regions 1..3) and waits until every node
     lists them and lets them log in.
  2. Starts the load, all in threads:
     - one LMTP sender per node, one recipient per message, round-robin over
       the users, each message carrying a unique X-Chaos-Token;
     - one IMAP worker per (node, user) on its own mailbox `work-<node>`:
       APPEND (recording APPENDUID), UID STORE +FLAGS (\\Flagged), and
       UID STORE \\Deleted + UID EXPUNGE of its own messages;
     - watchers that IDLE on a mailbox (chaos1's INBOX, and chaos2's
       `work-<next node>` where flags change and messages are expunged) and,
       after each EXISTS or every second, STATUS + UID FETCH the mailbox
       (FLAGS and MODSEQ of all, the token header of new UIDs; all tokens
       again after each reconnect and every 10th time).
     Every failure is counted; the thread reconnects to the same node,
     retrying while the node is down. Socket timeouts are 15 s.
  3. After LOAD_SECONDS, runs the scenario (the fault phase): `kill` node 3
     for FAULT_SECONDS; `cut` region 3 off (both ways) through the WAN proxy;
     `oneway`: hold traffic from node 1 to node 2 only; `random-kills`:
     KILLS times SIGKILL a random node, restart it, wait until it serves
     (never two nodes down at once); `none`: load only.
  4. Heals, keeps the load on for AFTER_SECONDS, stops it, restarts any node
     that is down, and polls every node until it shows the expected state
     (LMTP's 250 means "durably queued", so filing may lag), at most
     CONVERGE_SECONDS.

Nodes are killed with SIGKILL (PIDs from DEV_DIR/node-<i>/pid) and
restarted as `ESTAFETTE_BIN server --config DEV_DIR/node-<i>/estafette.toml`
(output appended to node-<i>/restart.log, new PID written to the pid file,
left running at exit). A node is up when LOGIN + SELECT INBOX works on it.
Links are cut by one-line commands to the WAN proxy at DEV_DIR/wan.sock.

Invariants checked (a violation makes the exit status 1):
  - No acked operation is lost: every LMTP-acked (token, recipient) is in
    the recipient's INBOX exactly once on every node; every acked APPEND not
    removed by an acked EXPUNGE is in its mailbox exactly once; acked
    EXPUNGEs are absent; acked \\Flagged STOREs are visible. Operations
    that failed may have taken effect, but at most once.
  - After healing every node shows the same state: UIDVALIDITY, UIDNEXT,
    HIGHESTMODSEQ and UID -> (token, flags, MODSEQ) per mailbox.
  - A UID is never bound to two messages: over every observation (APPENDUID,
    watcher fetches, final fetches), a (mailbox, UIDVALIDITY, UID) always
    names the same token.
  - UIDVALIDITY of a mailbox never changes.
  - No message is missed by a client that syncs by UID: per watcher, a
    message seen for the first time has a UID above every UID that watcher
    saw before, and (in an INBOX nobody expunges) a message once seen never
    disappears; per worker, APPENDUIDs increase.
  - MODSEQ and UIDNEXT never go back, even for a client hopping between
    nodes: a SELECT or STATUS (watchers', final check's) that starts after
    another one completed, on any node, shows no lower UIDNEXT or
    HIGHESTMODSEQ; per watcher, a message's MODSEQ never decreases, and
    STATUS never reports a HIGHESTMODSEQ below a MODSEQ it already saw.
  - Availability: the longest gap between successful operations during the
    fault phase, on each node the scenario leaves serving (random-kills: the
    service as a whole), is at most GAP_LIMIT seconds.

Reported but not failed on: NONEXISTENT/TRYCREATE answers about mailboxes
known to exist (`false_nonexistent`), per-worker gaps, the slowest acked
operation of each kind, and the delay from LMTP 250 to the message showing
up in a watcher's INBOX.

Prints a line `CHAOS-RESULT {json}` on stdout whatever the outcome
(scenario, counts of acked operations and of errors by kind, gaps, kills and
events, violations); progress goes to stderr with UTC times, to match the
nodes' logs.
"""
import collections
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

NODES = (1, 2, 3)
USERS = ("chaos1", "chaos2", "chaos3")
IO_TIMEOUT = 15.0        # load threads: a stalled node costs them this much
CHECK_TIMEOUT = 30.0     # liveness probe and final check: slow is not down
UP_DEADLINE = 60.0
TOKEN_RE = re.compile(r"X-Chaos-Token:\s*(\S+)", re.I)


def password(user):
    return "pw-%s-chaos" % user


def host(node):
    return "127.0.0.%d" % node


def log(msg):
    """Progress on stderr, with UTC wall-clock time as in the nodes' logs."""
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + ".%03d" % (now % 1 * 1000)
    sys.stderr.write("[chaos %s +%.2f] %s\n" % (stamp, time.monotonic() - T0, msg))
    sys.stderr.flush()


T0 = time.monotonic()


class Config:
    def __init__(self, env):
        self.bin = env["ESTAFETTE_BIN"]
        self.dev_dir = env["DEV_DIR"]
        self.imap_port = int(env["IMAP_PORT"])
        self.lmtp_port = int(env["LMTP_PORT"])
        self.scenario = env.get("SCENARIO", "none")
        if self.scenario not in SCENARIOS:
            raise SystemExit("SCENARIO must be one of %s" % ", ".join(SCENARIOS))
        self.load_s = float(env.get("LOAD_SECONDS", "8"))
        self.fault_s = float(env.get("FAULT_SECONDS", "20"))
        self.after_s = float(env.get("AFTER_SECONDS", "10"))
        self.kills = int(env.get("KILLS", "8"))
        self.gap_limit = float(env.get("GAP_LIMIT", "10"))
        self.converge_s = float(env.get("CONVERGE_SECONDS", "60"))
        self.seed = int(env["SEED"]) if env.get("SEED") else random.randrange(1 << 32)
        self.rtt = env.get("RTT_MS") or env.get("RTT")
        # Tokens carry a run id so a rerun on the same appliance never
        # confuses this run's messages with an earlier run's.
        self.run = os.urandom(3).hex()

    def node_file(self, node, name):
        return os.path.join(self.dev_dir, "node-%d" % node, name)


# ---------------------------------------------------------------------------
# What every client saw, and the online checks on it.

class Record:
    """Shared by all threads: counters, success times, bindings, violations."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = collections.Counter()
        self.errors = collections.Counter()
        self.slowest = collections.Counter()  # kind -> longest acked operation (s)
        self.samples = {}       # error kind -> a few server answers
        self.successes = {n: [] for n in NODES}
        self.bindings = {}      # (user, mailbox, uidvalidity, uid) -> (token, source)
        self.uidvalidity = {}   # (user, mailbox) -> (uidvalidity, source)
        self.counters = collections.defaultdict(list)  # (user, mailbox) -> [(done, uidnext, hms, source)]
        self.violations = []
        self.existing = {(u, "INBOX") for u in USERS}
        self.false_nonexistent = collections.Counter()

    def exists(self, user, mailbox):
        with self.lock:
            self.existing.add((user, mailbox))

    def success(self, node, kind, started=None):
        """Counts an acknowledged operation (begun at `started`) on node;
        returns its time."""
        now = time.monotonic()
        with self.lock:
            self.acked[kind] += 1
            self.successes[node].append(now)
            if started is not None:
                self.slowest[kind] = max(self.slowest[kind], now - started)
        return now

    def error(self, kind, exc, mailbox=None):
        """Counts a failed operation. A NONEXISTENT or TRYCREATE answer about
        a mailbox known to exist is a server anomaly, counted apart."""
        key = "%s:%s" % (kind, classify(exc))
        with self.lock:
            self.errors[key] += 1
            if isinstance(exc, ImapNo) and len(self.samples.setdefault(key, [])) < 3:
                self.samples[key].append(str(exc)[:200])
            if (isinstance(exc, ImapNo) and exc.code in ("NONEXISTENT", "TRYCREATE")
                    and mailbox in self.existing):
                self.false_nonexistent["%s/%s %s" % (mailbox[0], mailbox[1], exc.code)] += 1

    def violation(self, msg):
        with self.lock:
            self.violations.append(msg)
        log("VIOLATION: " + msg)

    def saw_uidvalidity(self, user, mailbox, uidvalidity, source):
        with self.lock:
            first = self.uidvalidity.setdefault((user, mailbox), (uidvalidity, source))
        if first[0] != uidvalidity:
            self.violation("UIDVALIDITY of %s/%s changed: %s (%s) then %s (%s)"
                           % (user, mailbox, first[0], first[1], uidvalidity, source))

    def saw_counters(self, user, mailbox, info, started, source):
        """A SELECT or STATUS begun at `started` (every node refreshes from
        the log before answering these): it must not show less than one that
        completed, on any node, before it began."""
        uidnext, hms = info.get("UIDNEXT", 0), info.get("HIGHESTMODSEQ", 0)
        with self.lock:
            earlier = [c for c in self.counters[(user, mailbox)] if c[0] < started]
            self.counters[(user, mailbox)].append((time.monotonic(), uidnext, hms, source))
        for key, value, i in (("UIDNEXT", uidnext, 1), ("HIGHESTMODSEQ", hms, 2)):
            best = max(earlier, key=lambda c: c[i], default=None)
            if best is not None and value < best[i]:
                self.violation("%s/%s: %s %d from %s, below %d already shown by %s"
                               % (user, mailbox, key, value, source, best[i], best[3]))

    def bind(self, user, mailbox, uidvalidity, uid, token, source):
        if token is None:
            return
        key = (user, mailbox, uidvalidity, uid)
        with self.lock:
            first = self.bindings.setdefault(key, (token, source))
        if first[0] != token:
            self.violation("UID rebound: %s/%s UIDVALIDITY %s UID %d was %s (%s), now %s (%s)"
                           % (user, mailbox, uidvalidity, uid, first[0], first[1], token, source))


def classify(exc):
    if isinstance(exc, ImapNo):
        return exc.status + ("[%s]" % exc.code if exc.code else "")
    if isinstance(exc, smtplib.SMTPResponseException):
        return str(exc.smtp_code)
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (EOFError, smtplib.SMTPServerDisconnected, ConnectionResetError, BrokenPipeError)):
        return "closed"
    if isinstance(exc, OSError):
        return "io"
    return type(exc).__name__


# ---------------------------------------------------------------------------
# A line-level IMAP client (after tests/imap/imaptest.py's Raw): every
# response line, literals inlined as {n}\r\n<bytes>, plaintext on loopback.

class ImapError(Exception):
    pass


class ImapNo(ImapError):
    """A tagged NO or BAD; `code` is its response code (UNAVAILABLE, ...)."""

    def __init__(self, status, what, text):
        super().__init__("%s %s -> %s" % (status, what, text))
        self.status = status
        m = re.match(r"\[([A-Z-]+)", text)
        self.code = m.group(1) if m else None


class Imap:
    def __init__(self, node, port, timeout=IO_TIMEOUT):
        self.sock = socket.create_connection((host(node), port), timeout=timeout)
        self.buf = b""
        self.n = 0
        self.last_ok = ""  # text of the last tagged OK (APPENDUID ...)
        greeting = self.line()
        if not greeting.startswith("* OK"):
            self.close()
            raise ImapError("greeting: " + greeting)

    def _line_end(self):
        """End of the first complete line (literals included) in buf, or None."""
        pos = 0
        while True:
            i = self.buf.find(b"\r\n", pos)
            if i < 0:
                return None
            m = re.search(rb"\{(\d+)\+?\}$", self.buf[pos:i])
            if not m:
                return i + 2
            pos = i + 2 + int(m.group(1))
            if len(self.buf) < pos:
                return None

    def line(self):
        # Nothing is consumed until a whole line is there, so a timeout
        # (used to bound IDLE) never loses part of a response.
        while True:
            end = self._line_end()
            if end is not None:
                raw, self.buf = self.buf[:end - 2], self.buf[end:]
                return raw.decode("utf-8", "replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk

    def tag(self):
        self.n += 1
        return "c%d" % self.n

    def cmd(self, text, literal=None):
        """Sends a command (a literal goes as LITERAL+); returns the untagged
        lines; raises ImapNo on NO/BAD."""
        tag = self.tag()
        data = ("%s %s" % (tag, text)).encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self.sock.sendall(data + b"\r\n")
        return self.until_tagged(tag, text)

    def until_tagged(self, tag, what):
        untagged = []
        while True:
            l = self.line()
            if l.startswith(tag + " "):
                status, _, rest = l[len(tag) + 1:].partition(" ")
                if status != "OK":
                    raise ImapNo(status, what.split("{")[0][:60], rest)
                self.last_ok = rest
                return untagged
            untagged.append(l)

    def login(self, user):
        self.cmd('LOGIN "%s" "%s"' % (user, password(user)))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_select(lines):
    """UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ from SELECT or STATUS responses."""
    out = {}
    for l in lines:
        for key in ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"):
            m = re.search(r"\b%s (\d+)" % key, l)
            if m:
                out[key] = int(m.group(1))
    return out


def fetch_lines(lines, item):
    """(uid, line) of the FETCH responses carrying `item` (unsolicited
    FETCHes for other data are skipped)."""
    for l in lines:
        if " FETCH (" in l and item in l:
            m = re.search(r"\bUID (\d+)", l)
            if m:
                yield int(m.group(1)), l


def fetch_mailbox(conn, tokens, full):
    """{uid: (token, flags, modseq)} of the selected mailbox. Flags and
    MODSEQ are fetched for every message, the X-Chaos-Token header only for
    UIDs missing from the `tokens` cache (uid -> token), or for all if
    `full`; the cache is updated."""
    meta = {}
    for uid, l in fetch_lines(conn.cmd("UID FETCH 1:* (UID FLAGS MODSEQ)"), "FLAGS ("):
        m = re.search(r"\bMODSEQ \((\d+)\)", l)
        flags = re.search(r"\bFLAGS \(([^)]*)\)", l).group(1).split()
        meta[uid] = (frozenset(f for f in flags if f != "\\Recent"), int(m.group(1)) if m else None)
    wanted = sorted(meta) if full else sorted(u for u in meta if u not in tokens)
    if wanted:
        lines = conn.cmd("UID FETCH %s (UID BODY.PEEK[HEADER.FIELDS (X-CHAOS-TOKEN)])" % uid_set(wanted))
        for uid, l in fetch_lines(lines, "BODY["):
            m = TOKEN_RE.search(l)
            tokens[uid] = m.group(1) if m else None
    return {uid: (tokens.get(uid), flags, modseq) for uid, (flags, modseq) in meta.items()}


def uid_set(uids):
    """Sorted UIDs as an IMAP sequence set: 1:3,7,9:10."""
    runs = []
    for u in uids:
        if runs and u == runs[-1][1] + 1:
            runs[-1][1] = u
        else:
            runs.append([u, u])
    return ",".join(str(a) if a == b else "%d:%d" % (a, b) for a, b in runs)


def message(token, frm, to):
    return ("From: %s\r\nTo: %s\r\nSubject: chaos %s\r\n"
            "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <%s@chaos.example.test>\r\nX-Chaos-Token: %s\r\n\r\n"
            "Chaos test message %s.\r\n" % (frm, to, token, token, token, token)).encode()


# ---------------------------------------------------------------------------
# Nodes: pids, kill, restart, "up", and the WAN proxy.

class Nodes:
    def __init__(self, cfg, record):
        self.cfg = cfg
        self.record = record
        self.children = {}     # node -> Popen of nodes we restarted
        self.killed = set()    # nodes we killed and have not restarted yet
        self.events = []       # (what, node, time)
        self.last_failure = {}  # node -> why it last failed to serve

    def pid(self, node):
        with open(self.cfg.node_file(node, "pid")) as f:
            return int(f.read().strip())

    def alive(self, node):
        child = self.children.get(node)
        if child is not None:
            return child.poll() is None
        try:
            with open("/proc/%d/stat" % self.pid(node)) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        return state not in ("Z", "X")

    def kill(self, node):
        pid = self.pid(node)
        log("SIGKILL node-%d (pid %d)" % (node, pid))
        os.kill(pid, signal.SIGKILL)
        self.killed.add(node)
        self.events.append(("kill", node, time.monotonic()))
        child = self.children.pop(node, None)
        if child is not None:
            child.wait()
        wait_for(lambda: not self.alive(node), 10, "node-%d to die" % node)

    def restart(self, node):
        logfile = open(self.cfg.node_file(node, "restart.log"), "ab")
        child = subprocess.Popen([self.cfg.bin, "server", "--config", self.cfg.node_file(node, "estafette.toml")],
                                 stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        logfile.close()
        self.children[node] = child
        tmp = self.cfg.node_file(node, "pid.tmp")
        with open(tmp, "w") as f:
            f.write("%d\n" % child.pid)
        os.replace(tmp, self.cfg.node_file(node, "pid"))
        self.killed.discard(node)
        self.events.append(("restart", node, time.monotonic()))
        log("restarted node-%d (pid %d)" % (node, child.pid))

    def serves(self, node, timeout=CHECK_TIMEOUT):
        """LOGIN + SELECT INBOX works on the node (each step within
        `timeout`)."""
        try:
            c = Imap(node, self.cfg.imap_port, timeout=timeout)
            try:
                c.login(USERS[0])
                c.cmd("SELECT INBOX")
                return True
            finally:
                c.close()
        except (ImapError, OSError, EOFError) as e:
            self.last_failure[node] = "%s: %s" % (type(e).__name__, e)
            return False

    def wait_up(self, node):
        self.last_failure[node] = None
        deadline = time.monotonic() + UP_DEADLINE
        wait_for(lambda: self.serves(node, max(1.0, min(CHECK_TIMEOUT, deadline - time.monotonic()))),
                 UP_DEADLINE,
                 lambda: "node-%d to serve IMAP (last: %s)" % (node, self.last_failure[node]))
        self.events.append(("up", node, time.monotonic()))
        log("node-%d is up" % node)

    def ensure_all_up(self):
        """Restarts any node that is down (a node we did not kill being dead
        is a violation: it crashed) and waits until all three serve."""
        for node in NODES:
            if not self.alive(node):
                if node not in self.killed:
                    self.record.violation("node-%d died without being killed (see %s)"
                                          % (node, self.cfg.node_file(node, "restart.log")))
                self.restart(node)
        for node in NODES:
            self.wait_up(node)

    def wan(self, command):
        """One command to the WAN proxy; returns its reply, raises on error."""
        path = os.path.join(self.cfg.dev_dir, "wan.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            s.sendall(command.encode() + b"\n")
            reply = s.makefile("rb").readline().decode().strip()
        finally:
            s.close()
        log("wan %s -> %s" % (command, reply))
        if not reply.startswith("ok"):
            raise RuntimeError("WAN proxy: %s -> %r" % (command, reply))
        self.events.append(("wan " + command, 0, time.monotonic()))
        return reply

    def has_wan(self):
        return os.path.exists(os.path.join(self.cfg.dev_dir, "wan.sock"))


def wait_for(cond, timeout, what, pause=0.2):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what() if callable(what) else what))
        time.sleep(pause)


# ---------------------------------------------------------------------------
# Users.

def create_users(cfg):
    for i, user in enumerate(USERS, 1):
        p = subprocess.run([cfg.bin, "user", "add", user, "--address", "%s@example.test" % user,
                            "--home", "region-%d" % i, "--password-stdin", "--data-dir", cfg.dev_dir],
                           input=password(user) + "\n", capture_output=True, text=True, timeout=60)
        if p.returncode != 0 and user not in listed_users(cfg, 1):
            raise RuntimeError("user add %s failed: %s%s" % (user, p.stdout, p.stderr))
    for node in NODES:
        wait_for(lambda: all("%s@example.test" % u in listed_users(cfg, node) for u in USERS),
                 60, "node-%d to list the chaos users" % node)


def listed_users(cfg, node):
    p = subprocess.run([cfg.bin, "user", "list", "--config", cfg.node_file(node, "estafette.toml")],
                       capture_output=True, text=True, timeout=30)
    return p.stdout if p.returncode == 0 else ""


# ---------------------------------------------------------------------------
# Load.

class Load(threading.Thread):
    """A load thread: loops `step` until stopped, reconnecting on errors.
    Errors are counted as `<op>:<class>` (connect:refused, append:NO[...])."""

    connect_kind = "connect"

    def __init__(self, name, cfg, record, stop):
        super().__init__(name=name, daemon=True)
        self.cfg, self.record, self.stop = cfg, record, stop
        self.conn = None

    def run(self):
        crashed = False
        while not self.stop.is_set():
            try:
                if self.conn is None:
                    self.conn = self.connect()
                self.step()
            except (ImapError, OSError, EOFError, smtplib.SMTPException) as e:
                self.record.error(self.connect_kind if self.conn is None else self.op, e,
                                  getattr(self, "target", None))
                self.disconnect()
                self.stop.wait(0.3)
            except Exception as e:  # a malformed response, or a bug here
                if not crashed:
                    self.record.violation("%s: unexpected %s: %s" % (self.name, type(e).__name__, e))
                    crashed = True
                self.disconnect()
                self.stop.wait(0.3)
        self.disconnect()

    def disconnect(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


class LmtpSender(Load):
    """Delivers to the users round-robin through one node, one recipient per
    message, and remembers which deliveries were acknowledged."""

    def __init__(self, node, *a):
        super().__init__("lmtp-%d" % node, *a)
        self.node = node
        self.n = 0
        self.op = "lmtp"
        self.connect_kind = "lmtp-connect"
        self.acked = {}    # token -> user
        self.acked_at = {}  # token -> time of the 250
        self.unacked = {}  # token -> user (failed; may still have been delivered)

    def connect(self):
        c = smtplib.LMTP(host(self.node), self.cfg.lmtp_port, timeout=IO_TIMEOUT)
        code, msg = c.ehlo()
        if code != 250:
            raise smtplib.SMTPResponseException(code, msg)
        return c

    def step(self):
        user = USERS[self.n % len(USERS)]
        token = "lmtp-%d-%d.%s" % (self.node, self.n, self.cfg.run)
        self.n += 1
        rcpt = "%s@example.test" % user
        self.unacked[token] = user
        started = time.monotonic()
        code, msg = self.conn.mail("sender@example.test")
        if code == 250:
            code, msg = self.conn.rcpt(rcpt)
        if code == 250:
            code, msg = self.conn.data(message(token, "sender@example.test", rcpt))
        if code == 250:
            del self.unacked[token]
            self.acked[token] = user
            self.acked_at[token] = time.monotonic()
            self.record.success(self.node, "lmtp", started)
        else:
            self.record.error("lmtp", smtplib.SMTPResponseException(code, msg))
            self.conn.rset()
        self.stop.wait(random.uniform(0.05, 0.1))


class ImapWorker(Load):
    """Writes to `work-<node>` of one user through one node: APPEND, flag,
    expunge. Only this thread writes that mailbox, so what it was told is
    exactly what the mailbox must hold."""

    def __init__(self, node, user, *a):
        super().__init__("imap-%d-%s" % (node, user), *a)
        self.node, self.user = node, user
        self.mailbox = "work-%d" % node
        self.target = (user, self.mailbox)
        self.rng = random.Random("%s-%d-%s" % (self.cfg.seed, node, user))
        self.n = 0
        self.op = "connect"
        self.appended = {}          # token -> uid (acked)
        self.maybe = set()          # APPEND not acked
        self.flagged = set()        # \Flagged STORE acked
        self.expunged = set()       # EXPUNGE acked
        self.maybe_expunged = set()  # EXPUNGE tried, not acked
        self.live = []              # acked, never a target of EXPUNGE
        self.last_uid = 0
        self.ok_times = []          # when each of its operations was acked

    def connect(self):
        c = Imap(self.node, self.cfg.imap_port)
        try:
            c.login(self.user)
            try:
                c.cmd('CREATE "%s"' % self.mailbox)
            except ImapNo as e:
                if e.code != "ALREADYEXISTS":
                    raise
            self.record.exists(self.user, self.mailbox)
            info = parse_select(c.cmd('SELECT "%s"' % self.mailbox))
            self.record.saw_uidvalidity(self.user, self.mailbox, info["UIDVALIDITY"],
                                        "SELECT by worker on node-%d" % self.node)
            return c
        except BaseException:
            c.close()
            raise

    def step(self):
        r = self.rng.random()
        if r < 0.5 or not self.live:
            self.append()
        elif r < 0.75:
            self.flag()
        else:
            self.expunge()
        self.stop.wait(self.rng.uniform(0.05, 0.15))

    def append(self):
        self.op = "append"
        token = "imap-%d-%s-%d.%s" % (self.node, self.user, self.n, self.cfg.run)
        self.n += 1
        self.maybe.add(token)
        started = time.monotonic()
        self.conn.cmd('APPEND "%s"' % self.mailbox, message(token, "%s@example.test" % self.user, "x@example.test"))
        self.maybe.discard(token)
        m = re.search(r"APPENDUID (\d+) (\d+)", self.conn.last_ok)
        if not m:
            raise ImapError("APPEND OK without APPENDUID: " + self.conn.last_ok)
        uidvalidity, uid = int(m.group(1)), int(m.group(2))
        self.appended[token] = uid
        self.live.append(token)
        self.ok_times.append(self.record.success(self.node, "append", started))
        source = "APPENDUID on node-%d" % self.node
        self.record.saw_uidvalidity(self.user, self.mailbox, uidvalidity, source)
        self.record.bind(self.user, self.mailbox, uidvalidity, uid, token, source)
        if uid <= self.last_uid:
            self.record.violation("%s/%s: APPEND of %s acked with UID %d after an earlier APPEND got UID %d"
                                  % (self.user, self.mailbox, token, uid, self.last_uid))
        self.last_uid = max(self.last_uid, uid)

    def flag(self):
        self.op = "store"
        token = self.rng.choice(self.live)
        started = time.monotonic()
        self.conn.cmd("UID STORE %d +FLAGS.SILENT (\\Flagged)" % self.appended[token])
        self.flagged.add(token)
        self.ok_times.append(self.record.success(self.node, "store", started))

    def expunge(self):
        self.op = "expunge"
        token = self.live.pop(self.rng.randrange(len(self.live)))
        uid = self.appended[token]
        self.maybe_expunged.add(token)
        started = time.monotonic()
        self.conn.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
        self.conn.cmd("UID EXPUNGE %d" % uid)
        self.maybe_expunged.discard(token)
        self.expunged.add(token)
        self.ok_times.append(self.record.success(self.node, "expunge", started))

    def expectation(self):
        return Expectation(
            once=set(self.appended) - self.expunged - self.maybe_expunged,
            at_most_once=self.maybe | self.maybe_expunged,
            absent=set(self.expunged),
            flagged=set(self.flagged))


class Watcher(Load):
    """A client that caches one mailbox: IDLE, and after each EXISTS (or
    every second) STATUS + UID FETCH everything, checking what it sees
    against what it saw before."""

    def __init__(self, node, user, mailbox, *a):
        super().__init__("watch-%d-%s-%s" % (node, user, mailbox), *a)
        self.node, self.user, self.mailbox = node, user, mailbox
        self.target = (user, mailbox)
        self.op = "watch"
        self.connect_kind = "watch-connect"
        self.expunges_allowed = mailbox != "INBOX"
        self.seen = {}            # uid -> (token, modseq)
        self.gone = set()         # uids seen, then no longer there
        self.first_seen = {}      # token -> time
        self.max_uid = 0
        self.uidvalidity = None
        self.max_modseq = 0
        self.exists_notifications = 0
        self.fetches = 0
        self.tokens = {}          # uid -> token, cache for fetch_mailbox
        self.full_fetch = True    # re-read every token (after a reconnect)

    def where(self):
        return "watcher %s/%s on node-%d" % (self.user, self.mailbox, self.node)

    def connect(self):
        c = Imap(self.node, self.cfg.imap_port)
        try:
            c.login(self.user)
            c.cmd("ENABLE CONDSTORE")
            started = time.monotonic()
            self.observe_counters(parse_select(c.cmd('SELECT "%s"' % self.mailbox)), "SELECT", started)
            self.full_fetch = True
            return c
        except BaseException:
            c.close()
            raise

    def step(self):
        self.op = "status"
        started = time.monotonic()
        info = parse_select(self.conn.cmd('STATUS "%s" (UIDNEXT UIDVALIDITY HIGHESTMODSEQ)' % self.mailbox))
        self.observe_counters(info, "STATUS", started)
        self.op = "fetch"
        full = self.full_fetch or self.fetches % 10 == 0
        started = time.monotonic()
        self.observe_messages(fetch_mailbox(self.conn, self.tokens, full))
        self.full_fetch = False
        self.fetches += 1
        self.record.success(self.node, "fetch", started)
        self.op = "idle"
        self.idle(1.0)

    def idle(self, seconds):
        """IDLE until an EXISTS arrives or `seconds` pass, then DONE."""
        c = self.conn
        tag = c.tag()
        c.sock.sendall(("%s IDLE\r\n" % tag).encode())
        while True:
            l = c.line()
            if l.startswith("+"):
                break
            if l.startswith(tag + " "):
                status, _, rest = l[len(tag) + 1:].partition(" ")
                raise ImapNo(status, "IDLE", rest)
        end = time.monotonic() + seconds
        try:
            while not self.stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                c.sock.settimeout(left)
                try:
                    l = c.line()
                except socket.timeout:
                    break
                if l.endswith(" EXISTS"):
                    self.exists_notifications += 1
                    break
        finally:
            c.sock.settimeout(IO_TIMEOUT)
        c.sock.sendall(b"DONE\r\n")
        c.until_tagged(tag, "IDLE")

    def observe_counters(self, info, how, started):
        where = "%s (%s)" % (self.where(), how)
        self.record.saw_uidvalidity(self.user, self.mailbox, info["UIDVALIDITY"], where)
        self.record.saw_counters(self.user, self.mailbox, info, started, where)
        hms = info.get("HIGHESTMODSEQ")
        if hms is None:
            self.record.violation("%s: no HIGHESTMODSEQ" % where)
            return
        if hms < self.max_modseq:
            self.record.violation("%s: HIGHESTMODSEQ %d is below MODSEQ %d already seen"
                                  % (where, hms, self.max_modseq))
        if info["UIDVALIDITY"] != self.uidvalidity:
            self.tokens = {}
        self.uidvalidity = info["UIDVALIDITY"]

    def observe_messages(self, msgs):
        now = time.monotonic()
        where = self.where()
        for uid, (token, _flags, modseq) in sorted(msgs.items()):
            self.record.bind(self.user, self.mailbox, self.uidvalidity, uid, token, where)
            if modseq is None:
                self.record.violation("%s: UID %d has no MODSEQ" % (where, uid))
                continue
            if uid in self.gone:
                self.record.violation("%s: UID %d (%s) is back after it had disappeared" % (where, uid, token))
                self.gone.discard(uid)
            if uid in self.seen:
                if modseq < self.seen[uid][1]:
                    self.record.violation("%s: MODSEQ of UID %d went down from %d to %d"
                                          % (where, uid, self.seen[uid][1], modseq))
            elif uid <= self.max_uid:
                self.record.violation("%s: new message %s has UID %d, not above UID %d already seen"
                                      % (where, token, uid, self.max_uid))
            self.first_seen.setdefault(token, now)
            self.seen[uid] = (token, modseq)
            self.max_modseq = max(self.max_modseq, modseq)
        gone = sorted(set(self.seen) - set(msgs) - self.gone)
        self.gone.update(gone)
        if gone and not self.expunges_allowed:
            self.record.violation("%s: UIDs %s seen before have disappeared" % (where, gone[:10]))
        self.max_uid = max([self.max_uid] + list(msgs))


# ---------------------------------------------------------------------------
# Scenarios: each runs the fault phase and returns the nodes whose gaps are
# checked ("all" = the service as a whole).

def scenario_none(cfg, nodes, rng):
    time.sleep(cfg.fault_s)
    return list(NODES)


def scenario_kill(cfg, nodes, rng):
    nodes.kill(3)
    time.sleep(cfg.fault_s)
    nodes.restart(3)
    return [1, 2]


def scenario_cut(cfg, nodes, rng):
    require_wan(nodes)
    nodes.wan("cut 1 3")
    nodes.wan("cut 2 3")
    time.sleep(cfg.fault_s)
    nodes.wan("heal")
    return [1, 2]


def scenario_oneway(cfg, nodes, rng):
    require_wan(nodes)
    nodes.wan("cut 1>2")
    time.sleep(cfg.fault_s)
    nodes.wan("heal")
    return list(NODES)


def scenario_random_kills(cfg, nodes, rng):
    for _ in range(cfg.kills):
        node = rng.choice(NODES)
        nodes.kill(node)
        time.sleep(rng.uniform(2, 4))
        nodes.restart(node)
        nodes.wait_up(node)
        time.sleep(2)
    return "all"


def require_wan(nodes):
    if not nodes.has_wan():
        raise RuntimeError("no WAN proxy at %s: this binary cannot cut links"
                           % os.path.join(nodes.cfg.dev_dir, "wan.sock"))


SCENARIOS = {"none": scenario_none, "kill": scenario_kill, "cut": scenario_cut,
             "oneway": scenario_oneway, "random-kills": scenario_random_kills}


def longest_gap(times, start, end):
    points = [start] + sorted(t for t in times if start < t < end) + [end]
    return max(b - a for a, b in zip(points, points[1:]))


# ---------------------------------------------------------------------------
# Final state: converge, then compare with what was acknowledged.

class Expectation:
    def __init__(self, once=(), at_most_once=(), absent=(), flagged=()):
        self.once, self.at_most_once = set(once), set(at_most_once)
        self.absent, self.flagged = set(absent), set(flagged)

    def known(self):
        return self.once | self.at_most_once | self.absent


def expectations(senders, workers):
    exp = {(u, "INBOX"): Expectation() for u in USERS}
    for s in senders:
        for token, user in s.acked.items():
            exp[(user, "INBOX")].once.add(token)
        for token, user in s.unacked.items():
            exp[(user, "INBOX")].at_most_once.add(token)
    for w in workers:
        exp[(w.user, w.mailbox)] = w.expectation()
    return exp


def snapshot(cfg, record, sessions, caches, node, user, mailboxes):
    """{mailbox: (select info, {uid: (token, flags, modseq)}) or the error
    text} as node shows it to user now; the session is kept for the next
    poll."""
    key = (node, user)
    if key not in sessions:
        c = Imap(node, cfg.imap_port, timeout=CHECK_TIMEOUT)
        try:
            c.login(user)
            c.cmd("ENABLE CONDSTORE")
        except BaseException:
            c.close()
            raise
        sessions[key] = c
        for mbox in mailboxes:
            caches.pop((node, user, mbox), None)  # a new session reads every token again
    c = sessions[key]
    out = {}
    for mbox in mailboxes:
        started = time.monotonic()
        try:
            info = parse_select(c.cmd('SELECT "%s"' % mbox))
        except ImapNo as e:
            out[mbox] = str(e)
            continue
        record.saw_counters(user, mbox, info, started, "SELECT in final check on node-%d" % node)
        cache = caches.setdefault((node, user, mbox), {"uidvalidity": info["UIDVALIDITY"], "tokens": {}})
        if cache["uidvalidity"] != info["UIDVALIDITY"]:
            cache.update(uidvalidity=info["UIDVALIDITY"], tokens={})
        msgs = fetch_mailbox(c, cache["tokens"], full=False)
        where = "final check on node-%d" % node
        record.saw_uidvalidity(user, mbox, info["UIDVALIDITY"], where)
        for uid, (token, _, _) in msgs.items():
            record.bind(user, mbox, info["UIDVALIDITY"], uid, token, where)
        out[mbox] = (info, msgs)
    return out


def compare(cfg, exp, snaps):
    """Problems with the final state: expectations per node, and nodes
    disagreeing."""
    problems = []
    suffix = "." + cfg.run
    for (user, mbox), e in sorted(exp.items()):
        views = {}
        for node in NODES:
            view = snaps[node][user].get(mbox)
            name = "%s/%s on node-%d" % (user, mbox, node)
            if isinstance(view, str):
                problems.append("%s: cannot be read: %s" % (name, view))
                continue
            info, msgs = view
            views[node] = view
            counts = collections.Counter(t for t, _, _ in msgs.values())
            flags = {t: f for t, f, _ in msgs.values()}
            found = [
                ("acked messages missing", [t for t in e.once if counts[t] == 0]),
                ("acked messages present more than once", [t for t in e.once if counts[t] > 1]),
                ("unacked messages present more than once", [t for t in e.at_most_once if counts[t] > 1]),
                ("messages present after an acked EXPUNGE", [t for t in e.absent if counts[t]]),
                ("messages without \\Flagged after an acked STORE",
                 [t for t in e.flagged & e.once if counts[t] and "\\Flagged" not in flags[t]]),
                ("messages never sent to this mailbox",
                 [t for t in counts if t and t.endswith(suffix) and t not in e.known()]),
            ]
            for what, tokens in found:
                if tokens:
                    problems.append("%s: %d %s, e.g. %s" % (name, len(tokens), what, sorted(tokens)[:5]))
        problems += disagreements(user, mbox, views)
    return problems


def disagreements(user, mbox, views):
    if len(views) < 2:
        return []
    problems = []
    (n0, (info0, msgs0)), rest = sorted(views.items())[0], sorted(views.items())[1:]
    for n, (info, msgs) in rest:
        name = "%s/%s: node-%d and node-%d" % (user, mbox, n0, n)
        for key in ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"):
            if info.get(key) != info0.get(key):
                problems.append("%s differ on %s: %s vs %s" % (name, key, info0.get(key), info.get(key)))
        if msgs != msgs0:
            diff = sorted(set(msgs.items()) ^ set(msgs0.items()))
            problems.append("%s differ on UID -> (token, flags, MODSEQ): %d entries, e.g. %s"
                            % (name, len(diff), [(u, t, sorted(f), m) for u, (t, f, m) in diff[:4]]))
    return problems


def final_check(cfg, record, exp):
    mailboxes = {u: sorted(m for (v, m) in exp if v == u) for u in USERS}
    sessions, caches = {}, {}
    start = time.monotonic()
    polls = 0
    while True:
        polls += 1
        snaps = {n: {} for n in NODES}
        try:
            for node in NODES:
                for user in USERS:
                    t = time.monotonic()
                    snaps[node][user] = snapshot(cfg, record, sessions, caches, node, user, mailboxes[user])
                    if time.monotonic() - t > 5:
                        log("final check: reading %s on node-%d took %.1f s" % (user, node, time.monotonic() - t))
            problems = compare(cfg, exp, snaps)
        except (ImapError, OSError, EOFError) as e:
            for c in sessions.values():
                c.close()
            sessions.clear()
            problems = ["final check could not read every node: %s" % e]
        waited = time.monotonic() - start
        if not problems:
            log("final state converged after %d polls, %.1f s" % (polls, waited))
            break
        log("final check poll %d (%.1f s): %d problem(s), e.g. %s" % (polls, waited, len(problems), problems[0]))
        if waited > cfg.converge_s:
            for p in problems:
                record.violation("%.0f s after healing: %s" % (waited, p))
            break
        time.sleep(1)
    for c in sessions.values():
        c.close()
    sizes = {}
    for user in USERS:
        for mbox in mailboxes[user]:
            view = snaps.get(1, {}).get(user, {}).get(mbox)
            sizes["%s/%s" % (user, mbox)] = len(view[1]) if isinstance(view, tuple) else None
    return {"polls": polls, "seconds": round(waited, 1), "messages_on_node_1": sizes}


# ---------------------------------------------------------------------------

def visibility_latency(watchers, senders):
    """Per watcher of an INBOX: seconds from LMTP 250 to first seen."""
    acked_at = {}
    for s in senders:
        acked_at.update(s.acked_at)
    out = {}
    for w in watchers:
        lat = sorted(max(0.0, w.first_seen[t] - acked_at[t]) for t in w.first_seen if t in acked_at)
        if lat:
            out[w.name] = {"n": len(lat), "p50": round(lat[len(lat) // 2], 2), "max": round(lat[-1], 2)}
    return out


def start_load(cfg, record, stop):
    """Starts every load thread; returns (senders, workers, watchers)."""
    senders = [LmtpSender(n, cfg, record, stop) for n in NODES]
    workers = [ImapWorker(n, u, cfg, record, stop) for n in NODES for u in USERS]
    watchers = [Watcher(n, "chaos1", "INBOX", cfg, record, stop) for n in NODES]
    watchers += [Watcher(n, "chaos2", "work-%d" % (n % 3 + 1), cfg, record, stop) for n in NODES]
    for t in senders + workers + watchers:
        t.start()
    log("load started (%d threads)" % len(senders + workers + watchers))
    return senders, workers, watchers


def stop_load(threads, stop):
    """Stops the load; a thread stuck on a stalled node ends within its
    socket timeout."""
    stop.set()
    deadline = time.monotonic() + IO_TIMEOUT * 2 + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    log("load stopped")


def availability(cfg, record, workers, serving, fault_start, fault_end):
    """Longest gaps between successes during the fault phase; a violation
    for a serving node (or, with "all", the service) above GAP_LIMIT."""
    gaps = {str(n): round(longest_gap(record.successes[n], fault_start, fault_end), 2) for n in NODES}
    everything = [t for n in NODES for t in record.successes[n]]
    gaps["all"] = round(longest_gap(everything, fault_start, fault_end), 2)
    checked = ["all"] if serving == "all" else [str(n) for n in serving]
    for k in checked:
        if gaps[k] > cfg.gap_limit:
            record.violation("availability: longest gap between successful operations on %s during the fault "
                             "phase is %.1f s (limit %.0f s)"
                             % ("the service" if k == "all" else "node-" + k, gaps[k], cfg.gap_limit))
    for kind in ("lmtp", "append", "store", "expunge", "fetch"):
        if not record.acked[kind]:
            record.violation("no %s was ever acknowledged: the load did not run" % kind)
    return {
        "max_gap_s": gaps,
        "gap_checked_for": checked,
        "fault_seconds": round(fault_end - fault_start, 2),
        "max_gap_per_worker_s": {w.name: round(longest_gap(w.ok_times, fault_start, fault_end), 2) for w in workers},
    }


def run(cfg, record, nodes, summary):
    """Users, load, fault, heal, checks; fills `summary`."""
    stop = threading.Event()
    threads = []
    try:
        log("scenario %s, seed %d, run %s: creating users" % (cfg.scenario, cfg.seed, cfg.run))
        create_users(cfg)
        for node in NODES:
            nodes.wait_up(node)
        senders, workers, watchers = start_load(cfg, record, stop)
        threads = senders + workers + watchers
        time.sleep(cfg.load_s)
        fault_start = time.monotonic()
        log("fault phase: %s" % cfg.scenario)
        serving = SCENARIOS[cfg.scenario](cfg, nodes, random.Random(cfg.seed))
        fault_end = time.monotonic()
        log("healed; load goes on for %.0f s" % cfg.after_s)
        nodes.ensure_all_up()
        time.sleep(max(0.0, fault_end + cfg.after_s - time.monotonic()))
        stop_load(threads, stop)
        if nodes.has_wan():
            nodes.wan("heal")
        nodes.ensure_all_up()
        summary.update(availability(cfg, record, workers, serving, fault_start, fault_end))
        log("final check")
        summary["final"] = final_check(cfg, record, expectations(senders, workers))
        summary["idle"] = {w.name: {"fetches": w.fetches, "exists_notifications": w.exists_notifications}
                           for w in watchers}
        summary["inbox_visibility_s"] = visibility_latency([w for w in watchers if w.mailbox == "INBOX"], senders)
        summary["lmtp_by_user"] = {u: {"acked": sum(list(s.acked.values()).count(u) for s in senders),
                                       "unacked": sum(list(s.unacked.values()).count(u) for s in senders)}
                                   for u in USERS}
    except Exception as e:  # the harness itself failed: still report
        record.violation("chaos harness error: %s: %s" % (type(e).__name__, e))
    finally:
        stop.set()
    summary["unjoined_threads"] = [t.name for t in threads if t.is_alive()]


def one_line(summary):
    """The figures for a CI log: operations, errors, gaps, convergence."""
    acked = summary.get("acked", {})
    gaps = summary.get("max_gap_s", {})
    checked = summary.get("gap_checked_for", [])
    gap_text = ", ".join("node %s %.1f s%s" % (n, g, "" if n in checked or n == "all" else " (includes its own downtime)")
                         for n, g in sorted(gaps.items()) if n != "all")
    return ("CHAOS-SUMMARY %s (RTT %s ms): %d acknowledged operations (%s), %d client errors, "
            "%d kill(s); longest gap without a successful operation: %s; service as a whole %.1f s; "
            "all nodes agreed %.1f s after the load stopped; %d violation(s)" % (
                summary.get("scenario"), summary.get("rtt") or "?", sum(acked.values()),
                ", ".join("%s %d" % kv for kv in sorted(acked.items())),
                sum(summary.get("errors", {}).values()), summary.get("kills", 0), gap_text or "-",
                gaps.get("all", 0.0), (summary.get("final") or {}).get("seconds", -1),
                summary.get("violation_count", 0)))


def main():
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__)
        return 0
    cfg = Config(os.environ)
    record = Record()
    nodes = Nodes(cfg, record)
    summary = {"scenario": cfg.scenario, "rtt": cfg.rtt, "seed": cfg.seed, "run": cfg.run}
    start = time.monotonic()
    run(cfg, record, nodes, summary)
    summary["kills"] = sum(1 for e in nodes.events if e[0] == "kill")
    summary["events"] = [(w, n, round(t - start, 2)) for w, n, t in nodes.events]
    summary["acked"] = dict(record.acked)
    summary["slowest_acked_s"] = {k: round(v, 2) for k, v in record.slowest.items()}
    summary["errors"] = dict(sorted(record.errors.items()))
    summary["error_samples"] = record.samples
    summary["false_nonexistent"] = dict(record.false_nonexistent)
    summary["duration_s"] = round(time.monotonic() - start, 1)
    summary["violations"] = record.violations[:100]
    summary["violation_count"] = len(record.violations)
    print("CHAOS-RESULT " + json.dumps(summary, sort_keys=True), flush=True)
    print(one_line(summary), flush=True)
    if record.violations:
        sys.stderr.write("chaos %s: %d violation(s), first: %s\n"
                         % (cfg.scenario, len(record.violations), record.violations[0]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

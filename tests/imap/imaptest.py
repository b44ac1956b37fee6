"""Helpers for the IMAP integration scripts (run by tests/imap.rs against a
real `estafette dev` node): connection settings from the environment, an
imaplib connection, and a raw client that returns every response line so
scripts can assert on complete responses, not just on what imaplib keeps.
"""
import base64
import os
import re
import socket
import ssl
import imaplib

HOST = os.environ.get("IMAP_HOST", "127.0.0.1")
PORT = int(os.environ.get("IMAP_PORT", "1143"))
IMAPS_PORT = int(os.environ.get("IMAPS_PORT", "1993"))
LMTP_PORT = int(os.environ.get("LMTP_PORT", "1025"))
USER = os.environ.get("IMAP_USER", "alice")
PASSWORD = os.environ.get("IMAP_PASSWORD", "hunter2")
ADDRESS = os.environ.get("IMAP_ADDRESS", "alice@example.test")


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imaplib_login():
    m = imaplib.IMAP4_SSL(HOST, IMAPS_PORT, ssl_context=tls_context())
    m.login(USER, PASSWORD)
    return m


class Raw:
    """A line-level IMAP client: `cmd` sends one command and returns
    (untagged lines, tagged line). Literals in responses are inlined as
    {n}\\r\\n<bytes> so assertions can see them whole."""

    def __init__(self, tls=True, port=None):
        sock = socket.create_connection((HOST, port or (IMAPS_PORT if tls else PORT)), timeout=30)
        if tls:
            sock = tls_context().wrap_socket(sock, server_hostname=HOST)
        self.sock = sock
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def starttls(self):
        self.sock = tls_context().wrap_socket(self.sock, server_hostname=HOST)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def line(self):
        """One response line, with any literals it announces inlined."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            i = self.buf.index(b"\r\n")
            part, self.buf = self.buf[:i], self.buf[i + 2:]
            out += part
            m = re.search(rb"\{(\d+)\}$", part)
            if not m:
                return out.decode("utf-8", "replace")
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def cmd(self, text, literal=None):
        self.n += 1
        tag = "t%d" % self.n
        if literal is None:
            self.send(("%s %s\r\n" % (tag, text)).encode())
        else:
            self.send(("%s %s{%d}\r\n" % (tag, text, len(literal))).encode())
            cont = self.line()
            assert cont.startswith("+"), cont
            self.send(literal + b"\r\n")
        untagged = []
        while True:
            l = self.line()
            if l.startswith(tag + " "):
                return untagged, l[len(tag) + 1:]
            untagged.append(l)

    def ok(self, text, literal=None):
        u, t = self.cmd(text, literal)
        assert t.startswith("OK"), "%s -> %s %s" % (text, u, t)
        return u, t

    def login(self, user=USER, password=PASSWORD):
        return self.ok('LOGIN "%s" "%s"' % (user, password))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def plain(user=USER, password=PASSWORD):
    return base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()


def message(subject="hello", body="Hello world\r\n", frm="Bob <bob@example.test>", extra=""):
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <%s@example.test>\r\n%s\r\n%s" % (frm, ADDRESS, subject, abs(hash(subject + body)), extra, body)).encode()


def fresh_mailbox(raw, name):
    """Creates `name` (deleting any earlier one) and selects it."""
    raw.cmd('DELETE "%s"' % name)
    raw.ok('CREATE "%s"' % name)
    return raw.ok('SELECT "%s"' % name)


def mbsync_setup(host="localhost"):
    """A fresh local maildir and an mbsync configuration syncing INBOX both
    ways with the dev node at `host` over IMAPS. Returns (maildir, run):
    run() syncs once and returns mbsync's output (failing on an error)."""
    import subprocess
    import tempfile
    work = tempfile.mkdtemp()
    maildir = os.path.join(work, "mail")
    os.makedirs(maildir)
    rc = os.path.join(work, "mbsyncrc")
    with open(rc, "w") as f:
        f.write("""IMAPAccount estafette
Host %s
Port %d
User %s
Pass %s
SSLType IMAPS
CertificateFile %s

IMAPStore remote
Account estafette

MaildirStore local
Path %s/
Inbox %s/INBOX

Channel all
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""" % (host, IMAPS_PORT, USER, PASSWORD, os.environ["DEV_CERT"], maildir, maildir))

    def run():
        p = subprocess.run(["mbsync", "-c", rc, "-a"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, "mbsync failed:\n%s\n%s" % (p.stdout, p.stderr)
        return p.stdout + p.stderr

    return maildir, run


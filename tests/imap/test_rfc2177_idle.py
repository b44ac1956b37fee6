"""IDLE (RFC 2177) and untagged updates (RFC 9051 §7): one session waits
in IDLE while another appends, changes flags and expunges; mail delivered
over LMTP (smtplib.LMTP, a real client) shows up as EXISTS; NOOP reports
what happened; DONE ends IDLE."""
import smtplib
import time
from imaptest import *

a = Raw()
a.login()
fresh_mailbox(a, "Live")
b = Raw()
b.login()
b.ok('SELECT "Live"')

def idle_until(conn, want, timeout=20):
    """Lines received in IDLE until one contains `want`."""
    conn.sock.settimeout(timeout)
    got = []
    while True:
        l = conn.line()
        got.append(l)
        if want in l:
            return got

a.send(b"i1 IDLE\r\n")
assert a.line().startswith("+ "), "IDLE continuation"
b.ok('APPEND "Live" ', message("while idling"))
got = idle_until(a, "EXISTS")
assert got[-1] == "* 1 EXISTS", got
b.ok("STORE 1 +FLAGS (\\Flagged)")
got = idle_until(a, "FETCH")
# Whichever of a and b was told of the new message first has it \Recent.
assert got[-1].replace(" \\Recent", "") == "* 1 FETCH (UID 1 FLAGS (\\Flagged))", got
b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
b.ok("EXPUNGE")
got = idle_until(a, "EXPUNGE")
assert got[-1] == "* 1 EXPUNGE", got
a.send(b"DONE\r\n")
assert a.line() == "i1 OK IDLE terminated"

# Outside IDLE, NOOP tells.
b.ok('APPEND "Live" ', message("for noop"))
u, t = a.ok("NOOP")
# b, selected too, was told first (its own APPEND): not recent here.
assert u == ["* 1 EXISTS", "* 0 RECENT"], u

# LMTP delivery into INBOX wakes an IDLE on INBOX.
a.ok("SELECT INBOX")
u, t = a.ok("STATUS INBOX (MESSAGES)")
a.send(b"i2 IDLE\r\n")
a.line()
body = "From: lmtp@example.test\r\nTo: %s\r\nSubject: via lmtp\r\n\r\ndelivered\r\n" % ADDRESS
with smtplib.LMTP(HOST, LMTP_PORT) as l:
    refused = l.sendmail("lmtp@example.test", [ADDRESS], body)
    assert refused == {}, refused
t0 = time.time()
got = idle_until(a, "EXISTS")
a.send(b"DONE\r\n")
# RECENT follows EXISTS for an IMAP4rev1 session (RFC 3501 §7.3.2).
rest = []
while not (l := a.line()).startswith("i2 "):
    rest.append(l)
assert l == "i2 OK IDLE terminated" and rest == ["* 1 RECENT"], (l, rest)
u, t = a.ok("FETCH * (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert "Subject: via lmtp" in u[0], u
a.ok("LOGOUT")
b.ok("LOGOUT")
print("ok")

"""Two sessions on two nodes of a three-region cluster: APPEND on node 1,
IDLE on node 3 sees EXISTS; a flag change and an expunge on node 1 reach
node 3 the same way; both nodes agree on UIDs and UIDVALIDITY."""
import os
import re
import imaptest
from imaptest import Raw, message

HOST1, HOST3 = os.environ["IMAP_HOST1"], os.environ["IMAP_HOST3"]

imaptest.HOST = HOST1
a = Raw()
a.login()
a.cmd('DELETE "Shared"')
a.ok('CREATE "Shared"')
u1, _ = a.ok('SELECT "Shared"')

imaptest.HOST = HOST3
b = Raw()
b.login()
u3, _ = b.ok('SELECT "Shared"')
uv = lambda u: [l for l in u if "UIDVALIDITY" in l]
assert uv(u1) == uv(u3), (uv(u1), uv(u3))


def idle_until(conn, want, timeout=30):
    conn.sock.settimeout(timeout)
    while True:
        l = conn.line()
        if want in l:
            return l

b.send(b"i1 IDLE\r\n")
assert b.line().startswith("+")
u, t = a.ok('APPEND "Shared" ', message("across regions"))
uid = int(re.search(r"APPENDUID \d+ (\d+)", t).group(1))
assert idle_until(b, "EXISTS") == "* 1 EXISTS"
a.ok("NOOP")
a.ok("STORE 1 +FLAGS (\\Flagged)")
# (\Recent is tracked per node, so node 3 may show it too: docs/imap.md.)
assert idle_until(b, "FETCH").replace(" \\Recent", "") == "* 1 FETCH (UID %d FLAGS (\\Flagged))" % uid
a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
a.ok("EXPUNGE")
assert idle_until(b, "EXPUNGE") == "* 1 EXPUNGE"
b.send(b"DONE\r\n")
assert b.line() == "i1 OK IDLE terminated"

# Appends on both nodes get distinct, ascending UIDs; after a NOOP each
# session knows what the other finished.
a.ok('APPEND "Shared" ', message("from node 1"))
b.ok('APPEND "Shared" ', message("from node 3"))
u, t = a.ok("NOOP")
# (RECENT follows EXISTS for IMAP4rev1; its count is per node.)
assert u[0] == "* 2 EXISTS" and all(l.endswith(" RECENT") for l in u[1:]), u
ua, _ = a.ok("UID FETCH 1:* (UID)")
ub, _ = b.ok("UID FETCH 1:* (UID)")
assert ua == ub and len(ua) == 2, (ua, ub)
a.ok("LOGOUT")
b.ok("LOGOUT")
print("ok")

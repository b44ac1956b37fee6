"""isync (mbsync) as a real client: a full two-way sync of a 500-message
account, flag changes and deletions on both sides, a re-sync, and a
final sync that changes nothing; no duplicates and no losses anywhere."""
import mailbox
import os
import re

from imaptest import *

N = 500
maildir, mbsync = mbsync_setup()


def server_state():
    """{Message-ID: set of flags} in the server's INBOX."""
    r = Raw()
    r.login()
    r.ok("SELECT INBOX")
    u, t = r.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    r.ok("LOGOUT")
    out = {}
    for l in u:
        mid = re.search(r"Message-I[dD]: (<[^>]+>)", l).group(1)
        flags = set(re.search(r"FLAGS \(([^)]*)\)", l).group(1).split())
        assert mid not in out, "duplicate on the server: " + mid
        out[mid] = flags
    return out


def local_state():
    md = mailbox.Maildir(os.path.join(maildir, "INBOX"), create=False)
    out = {}
    for key, msg in md.items():
        mid = msg["Message-ID"]
        assert mid not in out, "duplicate in the maildir: " + mid
        out[mid] = set(msg.get_flags())
    return out, md


def msg(i, subject=None):
    return ("From: sender%d@example.test\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <m%d@example.test>\r\n\r\nbody %d\r\n"
            % (i, ADDRESS, subject or "message %d" % i, i, i)).encode()


r = Raw()
r.login()
for i in range(N):
    r.ok("APPEND INBOX ", msg(i))
r.ok("LOGOUT")

# 1. First full sync.
mbsync()
local, md = local_state()
server = server_state()
assert len(local) == N and set(local) == set(server), (len(local), len(server))

# 2. Changes on both sides.
local_seen = ["<m%d@example.test>" % i for i in range(0, 10)]
local_deleted = ["<m%d@example.test>" % i for i in range(10, 15)]
for key, m in list(md.items()):
    mid = m["Message-ID"]
    if mid in local_seen:
        m.add_flag("S")
        md[key] = m
    elif mid in local_deleted:
        md.remove(key)
for i in range(1000, 1003):
    md.add(mailbox.MaildirMessage(msg(i, "written locally %d" % i)))

r = Raw()
r.login()
r.ok("SELECT INBOX")
r.ok("STORE 100:106 +FLAGS.SILENT (\\Flagged)")
r.ok("STORE 200:203 +FLAGS.SILENT (\\Deleted)")
r.ok("EXPUNGE")
r.ok("APPEND INBOX ", msg(2000))
r.ok("APPEND INBOX ", msg(2001))
r.ok("LOGOUT")

# 3. Re-sync: both sides converge.
mbsync()
local, md = local_state()
server = server_state()
want = N - 5 - 4 + 3 + 2
assert len(server) == want and len(local) == want, (len(server), len(local), want)
assert set(local) == set(server)
for mid in local_seen:
    assert "\\Seen" in server[mid], (mid, server[mid])
for mid in local_deleted:
    assert mid not in server, mid
flagged_server = {m for m, f in server.items() if "\\Flagged" in f}
flagged_local = {m for m, f in local.items() if "F" in f}
assert len(flagged_server) == 7 and flagged_server == flagged_local, (flagged_server, flagged_local)
for i in (2000, 2001, 1000, 1001, 1002):
    assert "<m%d@example.test>" % i in server and "<m%d@example.test>" % i in local, i

# 4. Nothing left to do: another sync changes nothing.
before_s, before_l = server_state(), local_state()[0]
mbsync()
assert server_state() == before_s and local_state()[0] == before_l
print("ok")

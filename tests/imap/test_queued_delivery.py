"""What LMTP acknowledged, the first SELECT shows (RFC 2033's 250 is a
promise): mail delivered through node 1 while the user has no session
anywhere is in the first SELECT and STATUS after a LOGIN on node 3, in
the order it arrived; and isync's first sync after deliveries to a user
with no session fetches every one of them."""
import os
import re
import smtplib

import imaptest
from imaptest import Raw, ADDRESS, LMTP_PORT, mbsync_setup

HOST1, HOST3 = os.environ["IMAP_HOST1"], os.environ["IMAP_HOST3"]
N = int(os.environ.get("QUEUED", "150"))


def deliver(host, subjects):
    with smtplib.LMTP(host, LMTP_PORT) as s:
        for subject in subjects:
            msg = "From: bob@example.test\r\nTo: %s\r\nSubject: %s\r\n\r\nbody of %s\r\n" % (ADDRESS, subject, subject)
            refused = s.sendmail("bob@example.test", [ADDRESS], msg)
            assert not refused, refused


subjects = ["queued-%02d" % i for i in range(N)]
deliver(HOST1, subjects)

# The first LOGIN anywhere, on another node: STATUS and SELECT right after
# it show every acknowledged message.
imaptest.HOST = HOST3
c = Raw()
c.login()
u, t = c.ok("STATUS INBOX (MESSAGES UIDNEXT)")
assert u == ["* STATUS INBOX (MESSAGES %d UIDNEXT %d)" % (N, N + 1)], u
u, t = c.ok("SELECT INBOX")
assert "* %d EXISTS" % N in u, u
# UIDs follow arrival.
u, t = c.ok("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
got = re.findall(r"Subject: (queued-\d+)", "\n".join(u))
assert got == subjects, got
c.ok("LOGOUT")

# isync: deliveries while no session exists, then the first sync of a
# fresh local store fetches them all.
more = ["mbsync-%02d" % i for i in range(40)]
deliver(HOST1, more)
maildir, mbsync = mbsync_setup(HOST3)
mbsync()
local = []
for sub in ("cur", "new"):
    d = os.path.join(maildir, "INBOX", sub)
    for name in os.listdir(d):
        local += re.findall(r"Subject: (\S+)", open(os.path.join(d, name), errors="replace").read())
assert sorted(local) == sorted(subjects + more), (len(local), sorted(set(subjects + more) - set(local)))
print("ok")

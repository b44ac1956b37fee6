"""SORT and UID SORT (RFC 5256 §3) with SORT=DISPLAY (RFC 5957): every sort
key, REVERSE, several criteria, search criteria, ties in mailbox order,
base subjects, and the charset check; THREAD=ORDEREDSUBJECT (RFC 5256 §3)."""
from imaptest import *

r = Raw()
r.login()
u, t = r.ok("CAPABILITY")
assert " SORT " in u[0] + " " and "SORT=DISPLAY" in u[0], u
fresh_mailbox(r, "Sorted")


def add(frm, to, subject, date, arrival, body="x"):
    msg = ("From: %s\r\nTo: %s\r\nCc: %s\r\nSubject: %s\r\nDate: %s\r\n\r\n%s\r\n" % (frm, to, to, subject, date, body)).encode()
    r.ok('APPEND "Sorted" "%s" ' % arrival, msg)


add("Zoe <zoe@z.test>", "bob@b.test", "Re: Banana", "Mon, 1 Jan 2024 10:00:00 +0000", "03-Jan-2024 00:00:00 +0000", "x" * 300)
add("adam@a.test", "Carl <carl@c.test>", "apple", "Mon, 1 Jan 2024 09:00:00 -0300", "01-Jan-2024 00:00:00 +0000", "x" * 100)  # 12:00 UTC
add("\"Mia\" <mia@m.test>", "=?UTF-8?Q?=C3=89mile?= <emile@e.test>", "[list] Fwd: cherry (fwd)", "not a date", "04-Jan-2024 00:00:00 +0000", "x" * 200)
add("Zoe <zoe@z.test>", "amy@a.test", "banana", "Sun, 31 Dec 2023 23:00:00 +0000", "02-Jan-2024 00:00:00 +0000", "x" * 100)
r.ok('SELECT "Sorted"')

def sort(cmd):
    u, t = r.ok(cmd)
    assert t.endswith("SORT completed"), t
    assert len(u) == 1 and u[0].startswith("* SORT"), u
    return u[0]

# Base subjects: APPLE, BANANA, BANANA, CHERRY; ties (1, 4) in mailbox order.
assert sort("SORT (SUBJECT) UTF-8 ALL") == "* SORT 2 1 4 3"
assert sort("SORT (REVERSE SUBJECT) UTF-8 ALL") == "* SORT 3 1 4 2"
# Two criteria: the BANANAs by size, larger first (1 has the 300-byte body).
assert sort("SORT (SUBJECT REVERSE SIZE) UTF-8 ALL") == "* SORT 2 1 4 3"
# FROM is the mailbox: ADAM, MIA, ZOE, ZOE; DISPLAYFROM the name: adam@a.test, MIA, ZOE, ZOE.
assert sort("SORT (FROM) US-ASCII ALL") == "* SORT 2 3 1 4"
assert sort("SORT (DISPLAYFROM) UTF-8 ALL") == "* SORT 2 3 1 4"
# TO: AMY, BOB, CARL, EMILE; DISPLAYTO decodes the name: amy@a.test, bob@b.test, CARL, ÉMILE.
assert sort("SORT (TO) UTF-8 ALL") == "* SORT 4 1 2 3"
assert sort("SORT (DISPLAYTO) UTF-8 ALL") == "* SORT 4 1 2 3"
assert sort("SORT (CC) UTF-8 ALL") == "* SORT 4 1 2 3"
# DATE in UTC; no date: the arrival time (4 January, the latest).
assert sort("SORT (DATE) UTF-8 ALL") == "* SORT 4 1 2 3"
assert sort("SORT (REVERSE ARRIVAL) UTF-8 ALL") == "* SORT 3 1 4 2"
u, t = r.ok("FETCH 1:* (RFC822.SIZE)")
sizes = [int(l.split("RFC822.SIZE ")[1].rstrip(")")) for l in u]
by_size = sorted(range(1, 5), key=lambda n: (sizes[n - 1], n))
assert sort("SORT (SIZE) UTF-8 ALL") == "* SORT " + " ".join(map(str, by_size))
# Search criteria select what is sorted; UID SORT answers UIDs.
assert sort("SORT (SUBJECT) UTF-8 FROM zoe") == "* SORT 1 4"
u, t = r.ok("UID FETCH 1:* (UID)")
uids = [int(l.split("UID ")[1].rstrip(")")) for l in u]
assert sort("UID SORT (SIZE) UTF-8 ALL") == "* SORT " + " ".join(str(uids[n - 1]) for n in by_size)
u, t = r.cmd("SORT (SUBJECT) KOI8-R ALL")
assert t == "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset", t
u, t = r.cmd("SORT (NOPE) UTF-8 ALL")
assert t.startswith("BAD"), t

# THREAD=ORDEREDSUBJECT: one thread per base subject, its first message (by
# sent date) the parent of the rest, threads by their first date:
# BANANA (4 on 31 Dec, then 1), APPLE (2), CHERRY (3, no Date: arrival).
assert "THREAD=ORDEREDSUBJECT" in r.ok("CAPABILITY")[0][0]
u, t = r.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")
assert u == ["* THREAD (4 1)(2)(3)"] and t == "OK THREAD completed", (u, t)
u, t = r.ok("UID THREAD ORDEREDSUBJECT UTF-8 SUBJECT banana")
assert u == ["* THREAD (%d %d)" % (uids[3], uids[0])], u
u, t = r.ok("THREAD ORDEREDSUBJECT UTF-8 SUBJECT nothing-matches")
assert u == ["* THREAD"], u
u, t = r.cmd("THREAD REFERENCES UTF-8 ALL")
assert t.startswith("BAD"), t
r.ok("LOGOUT")
print("ok")

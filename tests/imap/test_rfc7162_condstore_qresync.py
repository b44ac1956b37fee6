"""CONDSTORE and QRESYNC (RFC 7162): MODSEQ in FETCH, CHANGEDSINCE,
UNCHANGEDSINCE with [MODIFIED], SEARCH MODSEQ, STATUS HIGHESTMODSEQ,
ENABLE QRESYNC, SELECT (QRESYNC ...) with VANISHED (EARLIER), VANISHED
instead of EXPUNGE, UID FETCH (CHANGEDSINCE n VANISHED)."""
from imaptest import *

r = Raw()
r.login()
r.cmd('DELETE "Cond"')
r.ok('CREATE "Cond"')
for i in range(4):
    r.ok('APPEND "Cond" ', message("c%d" % i))
# A first SELECT takes \Recent (test_rfc3501_recent.py), so that the FLAGS
# below are the stored ones.
r.ok('SELECT "Cond"')
u, t = r.ok('SELECT "Cond" (CONDSTORE)')
hms = [int(re.search(r"HIGHESTMODSEQ (\d+)", l).group(1)) for l in u if "HIGHESTMODSEQ" in l][0]
uidvalidity = [int(re.search(r"UIDVALIDITY (\d+)", l).group(1)) for l in u if "UIDVALIDITY" in l][0]

u, t = r.ok("FETCH 1:* (MODSEQ)")
seqs = [int(re.search(r"MODSEQ \((\d+)\)", l).group(1)) for l in u]
assert len(seqs) == 4 and seqs == sorted(seqs) and max(seqs) <= hms, (seqs, hms)

# A change raises the message's MODSEQ above the old HIGHESTMODSEQ.
u, t = r.ok("STORE 2 +FLAGS (\\Seen)")
m2 = int(re.search(r"MODSEQ \((\d+)\)", u[0]).group(1))
assert m2 > hms and u[0].startswith("* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ("), u
u, t = r.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % hms)
assert u == ["* 2 FETCH (FLAGS (\\Seen) MODSEQ (%d))" % m2], u
u, t = r.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % hms)
assert u == ["* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (%d))" % m2], u
u, t = r.ok("SEARCH MODSEQ %d" % (hms + 1))
assert u == ["* SEARCH 2 (MODSEQ %d)" % m2], u

# UNCHANGEDSINCE: a message changed since then is not touched.
u, t = r.ok("STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % hms)
assert t.startswith("OK [MODIFIED 2]"), t
assert len(u) == 1 and u[0].startswith("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ("), u
u, t = r.ok('STATUS "Cond" (HIGHESTMODSEQ)')
now = int(re.search(r"HIGHESTMODSEQ (\d+)", u[0]).group(1))
assert now > m2, (now, m2)

# QRESYNC: expunges are told as VANISHED; a resync reports what changed.
r.ok("ENABLE QRESYNC")
before = now
r.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
u, t = r.ok("EXPUNGE")
assert u == ["* VANISHED 3"], u
r.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
r.ok("UNSELECT")
u, t = r.ok('SELECT "Cond" (QRESYNC (%d %d 1:4))' % (uidvalidity, before))
assert "* VANISHED (EARLIER) 3" in u, u
changed = [l for l in u if " FETCH " in l]
assert len(changed) == 1 and changed[0].startswith("* 1 FETCH (UID 1 FLAGS () MODSEQ ("), changed
u, t = r.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % before)
assert u[0] == "* VANISHED (EARLIER) 3", u
assert len(u) == 2 and u[1].startswith("* 1 FETCH (UID 1 FLAGS () MODSEQ ("), u
# A stale UIDVALIDITY gets a plain SELECT (no VANISHED).
u, t = r.ok('SELECT "Cond" (QRESYNC (%d %d))' % (uidvalidity + 1, before))
assert not any("VANISHED" in l for l in u), u
r.ok("LOGOUT")

# CONDSTORE enabled by use (RFC 7162 §3.1), not by SELECT or ENABLE: the
# first enabling command with a mailbox selected reports HIGHESTMODSEQ,
# and from then on every untagged FETCH carries MODSEQ.
s = Raw()
s.login()
s.ok('SELECT "Cond"')
u, t = s.ok("FETCH 1 (MODSEQ)")
assert u[0].startswith("* OK [HIGHESTMODSEQ "), u
assert u[1].startswith("* 1 FETCH (MODSEQ ("), u
u, t = s.ok("STORE 1 +FLAGS (\\Answered)")
assert re.match(r"\* 1 FETCH \(UID 1 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)$", u[0]), u
u, t = s.ok("FETCH 2 (FLAGS)")
assert " MODSEQ (" in u[0], u
# ESEARCH MODSEQ with MIN or MAX alone is that message's (RFC 4731 §3.2).
mods = {}
for l in s.ok("FETCH 1:* (MODSEQ)")[0]:
    m = re.match(r"\* (\d+) FETCH \(.*MODSEQ \((\d+)\)", l)
    if m:
        mods[int(m.group(1))] = int(m.group(2))
low = min(mods.values())
u, t = s.ok("SEARCH RETURN (MIN) MODSEQ %d" % low)
first = min(n for n, m in mods.items() if m >= low)
assert u == ['* ESEARCH (TAG "t%d") MIN %d MODSEQ %d' % (s.n, first, mods[first])], (u, mods)
u, t = s.ok("SEARCH RETURN (ALL) MODSEQ %d" % low)
assert u[0].endswith("MODSEQ %d" % max(mods.values())), (u, mods)
s.ok("LOGOUT")
print("ok")

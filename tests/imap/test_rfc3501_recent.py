"""What one session is told about another's changes, as IMAP4rev1 (RFC
3501) has it: \\Recent (§2.3.2: the first session told about a message
sees it recent; SELECT takes it, EXAMINE and STATUS only look; RECENT
follows EXISTS; SEARCH NEW/OLD/RECENT), and keywords new to the mailbox
announced by FLAGS/PERMANENTFLAGS before any FETCH shows them (§7.2.6);
IMAP4rev2 sessions see no \\Recent at all (RFC 9051 dropped it)."""
from imaptest import *

a = Raw()
a.login()
a.cmd('DELETE "Fresh"')
a.ok('CREATE "Fresh"')
a.ok('APPEND "Fresh" ', message("one"))
a.ok('APPEND "Fresh" ', message("two"))

# Nobody has selected it: STATUS and EXAMINE see two recent, take nothing.
u, t = a.ok('STATUS "Fresh" (MESSAGES RECENT)')
assert u == ['* STATUS Fresh (MESSAGES 2 RECENT 2)'], u
u, t = a.ok('EXAMINE "Fresh"')
assert "* 2 RECENT" in u, u
a.ok("UNSELECT")

# The first SELECT takes them: recent there, in FETCH and SEARCH.
b = Raw()
b.login()
u, t = b.ok('SELECT "Fresh"')
assert "* 2 EXISTS" in u and "* 2 RECENT" in u, u
u, t = b.ok("FETCH 1:* (FLAGS)")
assert u == ["* 1 FETCH (FLAGS (\\Recent))", "* 2 FETCH (FLAGS (\\Recent))"], u
b.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
u, t = b.ok("SEARCH NEW")
assert u == ["* SEARCH 2"], u
u, t = b.ok("SEARCH RECENT")
assert u == ["* SEARCH 1 2"], u
u, t = b.ok("SEARCH OLD")
assert u == ["* SEARCH"], u

# ... and not in the sessions after it.
u, t = a.ok('STATUS "Fresh" (RECENT)')
assert u == ['* STATUS Fresh (RECENT 0)'], u
u, t = a.ok('SELECT "Fresh"')
assert "* 0 RECENT" in u, u
u, t = a.ok("SEARCH OLD")
assert u == ["* SEARCH 1 2"], u

# New mail: the first selected session told about it takes it, and RECENT
# follows EXISTS there; the other hears EXISTS with RECENT 0.
c = Raw()
c.login()
c.ok('APPEND "Fresh" ', message("three"))
u, t = b.ok("NOOP")
# (RECENT counts every message recent in the session: 1 and 2 still are.)
assert u == ["* 3 EXISTS", "* 3 RECENT"], u
u, t = a.ok("NOOP")
assert u == ["* 3 EXISTS", "* 0 RECENT"], u
u, t = b.ok("FETCH 3 (FLAGS)")
assert u == ["* 3 FETCH (FLAGS (\\Recent))"], u

# A keyword another session introduces is announced before it is shown.
c.ok('SELECT "Fresh"')
u, t = c.ok("STORE 3 +FLAGS ($Project)")
assert u[0] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Project)", u
u, t = a.ok("NOOP")
assert u == ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Project)",
             "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Project \\*)] Flags permitted",
             "* 3 FETCH (UID 3 FLAGS ($Project))"], u
# SELECT lists the mailbox's keywords as permanent too.
u, t = c.ok('SELECT "Fresh"')
assert "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Project \\*)] Flags permitted" in u, u

# IMAP4rev2: no \Recent anywhere.
d = Raw()
d.login()
d.ok("ENABLE IMAP4rev2")
d.ok('APPEND "Fresh" ', message("four"))
u, t = d.ok('SELECT "Fresh"')
assert not any("RECENT" in l for l in u), u
u, t = d.ok("FETCH 4 (FLAGS)")
assert u == ["* 4 FETCH (FLAGS ())"], u
for s in (a, b, c, d):
    s.ok("LOGOUT")
print("ok")

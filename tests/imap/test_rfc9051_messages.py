"""RFC 9051 §6.3-6.4 on messages: SELECT/EXAMINE responses, APPEND with
UIDPLUS (RFC 4315), FETCH items and BODY[section]<partial> forms,
implicit \\Seen, STORE, COPY and MOVE (RFC 6851) with COPYUID, EXPUNGE,
UID EXPUNGE, CLOSE vs UNSELECT, keywords."""
from imaptest import *

r = Raw()
r.login()
fresh_mailbox(r, "Msgs")
r.ok('CREATE "Other"')

# APPEND answers with APPENDUID; flags and internal date are kept.
msg1 = message("first", "Line one\r\nLine two\r\n")
u, t = r.ok('APPEND "Msgs" (\\Flagged $Work) "26-Nov-2026 09:30:00 +0100" ', msg1)
assert re.match(r"OK \[APPENDUID \d+ 1\] APPEND completed", t), t
uidvalidity = int(t.split()[2])
# The selected mailbox hears about it.
assert "* 1 EXISTS" in u, u
u, t = r.ok('APPEND "Msgs" ', message("second"))
assert t.startswith("OK [APPENDUID %d 2]" % uidvalidity), t
u, t = r.cmd('APPEND "Nope" ', message("x"))
assert t == "NO [TRYCREATE] no mailbox Nope", t

# SELECT shows the whole state.
u, t = r.ok('SELECT "Msgs"')
assert u[0] == "* OK [CLOSED] Previous mailbox closed", u
assert u[1] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)", u
assert u[2] == "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)] Flags permitted", u
assert "* 2 EXISTS" in u and "* 0 RECENT" in u, u
assert "* OK [UNSEEN 1] First unseen" in u, u
assert "* OK [UIDVALIDITY %d] UIDs valid" % uidvalidity in u, u
assert "* OK [UIDNEXT 3] Predicted next UID" in u, u
assert any(l.startswith("* OK [HIGHESTMODSEQ ") for l in u), u
assert t == "OK [READ-WRITE] SELECT completed", t

# FETCH: flags, size, internal date (stored in UTC), envelope, structure.
u, t = r.ok("FETCH 1 (FLAGS RFC822.SIZE INTERNALDATE)")
assert u == ['* 1 FETCH (FLAGS (\\Flagged $Work) RFC822.SIZE %d INTERNALDATE "26-Nov-2026 08:30:00 +0000")' % len(msg1)], u
u, t = r.ok("FETCH 1 (ENVELOPE)")
assert u == ['* 1 FETCH (ENVELOPE ("Thu, 26 Nov 2026 10:00:00 +0000" "first" (("Bob" NIL "bob" "example.test")) '
             '(("Bob" NIL "bob" "example.test")) (("Bob" NIL "bob" "example.test")) ((NIL NIL "alice" "example.test")) '
             'NIL NIL NIL "<%d@example.test>"))' % abs(hash("first" + "Line one\r\nLine two\r\n"))], u
u, t = r.ok("UID FETCH 2 (BODYSTRUCTURE)")
assert u == ['* 2 FETCH (UID 2 BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL))'], u
u, t = r.ok("FETCH 1:* (UID)")
assert u == ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)"], u

# BODY.PEEK does not set \Seen; BODY[] does, and says so.
u, t = r.ok("FETCH 1 (BODY.PEEK[TEXT])")
assert u == ["* 1 FETCH (BODY[TEXT] {20}\r\nLine one\r\nLine two\r\n)"], u
u, t = r.ok("FETCH 1 (BODY[TEXT]<5.7>)")
assert u == ["* 1 FETCH (BODY[TEXT]<5> {7}\r\none\r\nLi FLAGS (\\Seen \\Flagged $Work))"], u
u, t = r.ok("FETCH 1 (FLAGS)")
assert u == ["* 1 FETCH (FLAGS (\\Seen \\Flagged $Work))"], u
u, t = r.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])")
assert u == ["* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: first\r\n\r\n)"], u
u, t = r.ok("FETCH 1 (RFC822.SIZE BODY.PEEK[]<0.4>)")
assert u == ["* 1 FETCH (RFC822.SIZE %d BODY[]<0> {4}\r\nFrom)" % len(msg1)], u
u, t = r.ok("FETCH 1 (BODY.PEEK[]<99999.10>)")
assert u == ["* 1 FETCH (BODY[]<99999> {0}\r\n)"], u
u, t = r.ok("FETCH 2 (BODY.PEEK[2])")
# A part that does not exist is an empty string, as Dovecot answers.
assert u == ["* 2 FETCH (BODY[2] {0}\r\n)"], u

# A multipart message with a nested message/rfc822: every section form.
mime = (b"From: a@x.test\r\nSubject: mime\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: c@x.test\r\n\r\ninner body\r\n"
        b"--b--\r\n")
u, t = r.ok('APPEND "Msgs" ', mime)
u, t = r.ok("FETCH 3 (BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2.1])")
assert u == ["* 3 FETCH (BODY[1] {9}\r\ncaf=C3=A9 "
             "BODY[1.MIME] {88}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n "
             "BODY[2.HEADER] {34}\r\nSubject: inner\r\nFrom: c@x.test\r\n\r\n "
             # The CRLF before a boundary belongs to the boundary.
             "BODY[2.TEXT] {10}\r\ninner body "
             "BODY[2.1] {10}\r\ninner body)"], u
u, t = r.ok("FETCH 3 (BODY)")
assert u[0].startswith('* 3 FETCH (BODY (("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 9 0)("message" "rfc822" NIL NIL NIL "7bit" '), u
assert '("inner" NIL NIL NIL NIL NIL NIL NIL NIL NIL)' not in u[0] and '"inner"' in u[0], u
assert u[0].endswith(' "mixed"))'), u

# STORE: answers FETCH FLAGS; .SILENT does not; keywords come and go.
u, t = r.ok("STORE 2 +FLAGS (\\Answered)")
assert u == ["* 2 FETCH (UID 2 FLAGS (\\Answered))"], u
u, t = r.ok("STORE 2 +FLAGS.SILENT (\\Draft)")
assert u == [], u
u, t = r.ok("UID STORE 2 FLAGS (Junk)")
# A keyword new to the mailbox is announced (FLAGS, PERMANENTFLAGS) before
# the FETCH that uses it (RFC 9051 §7.3.5).
assert u == ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work Junk)",
             "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work Junk \\*)] Flags permitted",
             "* 2 FETCH (UID 2 FLAGS (Junk))"], u
u, t = r.ok("STORE 2 -FLAGS (Junk)")
assert u == ["* 2 FETCH (UID 2 FLAGS ())"], u
u, t = r.cmd("STORE 2 +FLAGS (\\Recent)")
assert t.startswith("BAD"), t

# COPY with COPYUID; MOVE answers COPYUID untagged, then EXPUNGE.
u, t = r.ok('COPY 1:2 "Other"')
assert re.match(r"OK \[COPYUID \d+ 1,2 1,2\] COPY completed", t), t
u, t = r.cmd('COPY 1 "Nope"')
assert t == "NO [TRYCREATE] no mailbox Nope", t
u, t = r.ok('MOVE 2 "Other"')
assert re.match(r"\* OK \[COPYUID \d+ 2 3\] Moved", u[0]), u
assert u[1:] == ["* 2 EXPUNGE"], u
u, t = r.ok("FETCH 1:* (UID)")
assert u == ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 3)"], u

# EXPUNGE only what is \Deleted; UID EXPUNGE only within its set.
r.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
u, t = r.ok("UID EXPUNGE 3")
assert u == ["* 2 EXPUNGE"], u
u, t = r.ok("EXPUNGE")
assert u == ["* 1 EXPUNGE"], u
u, t = r.ok('STATUS "Other" (MESSAGES UIDNEXT UNSEEN)')
assert u == ['* STATUS Other (MESSAGES 3 UIDNEXT 4 UNSEEN 2)'], u

# EXAMINE is read-only; STORE is refused; FETCH BODY does not set \Seen.
u, t = r.ok('EXAMINE "Other"')
assert t == "OK [READ-ONLY] EXAMINE completed", t
assert "* OK [PERMANENTFLAGS ()] Read-only mailbox" in u, u
u, t = r.cmd("STORE 1 +FLAGS (\\Seen)")
assert t == "NO [READ-ONLY] Mailbox is read-only", t
u, t = r.ok("FETCH 2 (BODY[HEADER.FIELDS (SUBJECT)])")
assert u == ["* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: second\r\n\r\n)"], u

# CLOSE expunges silently; UNSELECT does not expunge.
r.ok('SELECT "Other"')
r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
u, t = r.ok("UNSELECT")
u, t = r.ok('STATUS "Other" (MESSAGES)')
assert u == ['* STATUS Other (MESSAGES 3)'], u
r.ok('SELECT "Other"')
u, t = r.ok("CLOSE")
assert u == [], u
u, t = r.ok('STATUS "Other" (MESSAGES)')
assert u == ['* STATUS Other (MESSAGES 2)'], u
u, t = r.cmd("FETCH 1 FLAGS")
assert t == "BAD FETCH needs a selected mailbox", t
# A message that is itself message/rfc822: 1.1 and 1.TEXT are the embedded
# message's part and body (RFC 9051 §6.4.5), not empty.
r.ok('SELECT "Msgs"')
nested = (b"From: user@example.test\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: sub@example.test\r\nSubject: submsg\r\n\r\nHello world\r\n")
u, t = r.ok('APPEND "Msgs" ', nested)
n = int(re.search(r"APPENDUID \d+ (\d+)", t).group(1))
u, t = r.ok("UID FETCH %d (BODY.PEEK[1.1] BODY.PEEK[1.TEXT] BODY.PEEK[1.HEADER.FIELDS (SUBJECT)])" % n)
assert "BODY[1.1] {13}\r\nHello world\r\n" in u[-1], u
assert "BODY[1.TEXT] {13}\r\nHello world\r\n" in u[-1], u
assert "BODY[1.HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: submsg\r\n\r\n" in u[-1], u
r.ok("LOGOUT")
print("ok")

"""SEARCH (RFC 9051 §6.4.4) with every key family: flags, sizes, dates,
header fields with RFC 2047 decoding, BODY/TEXT with MIME decoding and
case-insensitive UTF-8, sets, OR/NOT, CHARSET; ESEARCH (RFC 4731),
SEARCHRES (RFC 5182), WITHIN (RFC 5032)."""
from imaptest import *

r = Raw()
r.login()
fresh_mailbox(r, "Find")
r.ok('APPEND "Find" (\\Seen) "01-Jan-2020 12:00:00 +0000" ', message("plain one", "the quick brown fox\r\n"))
r.ok('APPEND "Find" (\\Flagged) "15-Jun-2024 12:00:00 +0000" ', message("=?utf-8?q?Caf=C3=A9_menu?=", "Nothing here\r\n", frm="=?utf-8?b?SsO2cmc=?= <jorg@example.test>"))
qp = (b"From: x@example.test\r\nSubject: encoded\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
      b"Content-Transfer-Encoding: base64\r\nX-Tracker: ticket-42\r\n\r\n" + base64.b64encode("Grüße aus STRAẞE\r\n".encode()) + b"\r\n")
r.ok('APPEND "Find" ', qp)
big = message("big", "x" * 5000 + "\r\n")
r.ok('APPEND "Find" (\\Deleted $Later) ', big)
r.ok('SELECT "Find"')

def search(q):
    u, t = r.ok(q)
    return [l for l in u if l.startswith("* SEARCH") or l.startswith("* ESEARCH")]

assert search("SEARCH ALL") == ["* SEARCH 1 2 3 4"]
assert search("SEARCH SEEN") == ["* SEARCH 1"]
assert search("SEARCH UNSEEN") == ["* SEARCH 2 3 4"]
assert search("SEARCH FLAGGED") == ["* SEARCH 2"]
assert search("SEARCH DELETED KEYWORD $Later") == ["* SEARCH 4"]
assert search("SEARCH UNKEYWORD $Later") == ["* SEARCH 1 2 3"]
assert search("SEARCH LARGER 1000") == ["* SEARCH 4"]
assert search("SEARCH SMALLER 1000") == ["* SEARCH 1 2 3"]
assert search("SEARCH BEFORE 1-Jan-2021") == ["* SEARCH 1"]
assert search("SEARCH ON 15-Jun-2024") == ["* SEARCH 2"]
assert search("SEARCH SINCE 1-Jan-2025") == ["* SEARCH 3 4"]
assert search("SEARCH SENTON 26-Nov-2026") == ["* SEARCH 1 2 4"]
assert search("SEARCH SENTBEFORE 1-Jan-2000") == ["* SEARCH"]
assert search("SEARCH SUBJECT quick") == ["* SEARCH"]
assert search("SEARCH SUBJECT PLAIN") == ["* SEARCH 1"]
# Encoded words are decoded, and matching ignores case in UTF-8.
assert search('SEARCH CHARSET UTF-8 SUBJECT {5+}\r\ncafé') == ["* SEARCH 2"]
assert search('SEARCH CHARSET UTF-8 FROM {5+}\r\nJÖRG') == ["* SEARCH 2"]
assert search("SEARCH FROM jorg@example") == ["* SEARCH 2"]
assert search("SEARCH TO alice") == ["* SEARCH 1 2 4"]
assert search('SEARCH HEADER X-Tracker "ticket-42"') == ["* SEARCH 3"]
assert search('SEARCH HEADER X-Tracker ""') == ["* SEARCH 3"]
# BODY decodes base64 and charsets.
assert search("SEARCH BODY FOX") == ["* SEARCH 1"]
assert search('SEARCH CHARSET UTF-8 BODY {7+}\r\ngrüße') == ["* SEARCH 3"]
assert search("SEARCH TEXT ticket-42") == ["* SEARCH 3"]
assert search("SEARCH TEXT menu") == ["* SEARCH 2"]
# Sets, OR, NOT, UID.
assert search("SEARCH 2:3") == ["* SEARCH 2 3"]
assert search("SEARCH 3:*") == ["* SEARCH 3 4"]
assert search("SEARCH OR SEEN FLAGGED") == ["* SEARCH 1 2"]
assert search("SEARCH NOT OR SEEN FLAGGED") == ["* SEARCH 3 4"]
assert search("UID SEARCH UID 2,4") == ["* SEARCH 2 4"]
assert search("SEARCH (SEEN) (ALL)") == ["* SEARCH 1"]
u, t = r.cmd("SEARCH CHARSET KOI8-R ALL")
assert t == "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset", t
u, t = r.cmd("SEARCH FOO")
assert t.startswith("BAD"), t

# ESEARCH.
assert search("SEARCH RETURN (MIN MAX COUNT) UNSEEN") == ['* ESEARCH (TAG "%s") MIN 2 MAX 4 COUNT 3' % ("t%d" % r.n)]
assert search("UID SEARCH RETURN (ALL) ALL") == ['* ESEARCH (TAG "%s") UID ALL 1:4' % ("t%d" % r.n)]
assert search("SEARCH RETURN () FLAGGED") == ['* ESEARCH (TAG "%s") ALL 2' % ("t%d" % r.n)]
assert search("SEARCH RETURN (COUNT) KEYWORD nothing") == ['* ESEARCH (TAG "%s") COUNT 0' % ("t%d" % r.n)]

# SEARCHRES: SAVE, then $ in FETCH and SEARCH.
assert search("SEARCH RETURN (SAVE) UNSEEN") == []
u, t = r.ok("FETCH $ (UID)")
assert u == ["* 2 FETCH (UID 2)", "* 3 FETCH (UID 3)", "* 4 FETCH (UID 4)"], u
assert search("SEARCH $ FLAGGED") == ["* SEARCH 2"]

# WITHIN: OLDER/YOUNGER in seconds against the internal date.
assert search("SEARCH YOUNGER 3600") == ["* SEARCH 3 4"]
assert search("SEARCH OLDER 3600") == ["* SEARCH 1 2"]
# IMAP4rev2 clients always get ESEARCH.
r.ok("ENABLE IMAP4rev2")
assert search("SEARCH FLAGGED") == ['* ESEARCH (TAG "%s") ALL 2' % ("t%d" % r.n)]
assert search("UID SEARCH NOT ALL") == ['* ESEARCH (TAG "%s") UID' % ("t%d" % r.n)]
r.ok("LOGOUT")
print("ok")

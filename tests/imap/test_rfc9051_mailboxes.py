"""Mailbox commands: CREATE/DELETE/RENAME/SUBSCRIBE/UNSUBSCRIBE/LIST/LSUB/
STATUS (RFC 9051 §6.3), modified UTF-7 names for IMAP4rev1 clients and
UTF-8 after ENABLE IMAP4rev2, CHILDREN (RFC 3348), SPECIAL-USE and
CREATE-SPECIAL-USE (RFC 6154), LIST-EXTENDED (RFC 5258), LIST-STATUS
(RFC 5819), STATUS=SIZE (RFC 8438)."""
import re

from imaptest import *

r = Raw()
r.login()
u, t = r.ok('LIST "" ""')
assert u == ['* LIST (\\Noselect) "/" ""'], u
u, t = r.ok('LIST "" "*"')
assert u == ['* LIST (\\HasNoChildren) "/" INBOX'], u

# CREATE makes missing parents; names with spaces are quoted.
r.ok('CREATE "Projects/Estafette/Design notes"')
u, t = r.ok('LIST "" "*"')
assert u == ['* LIST (\\HasNoChildren) "/" INBOX',
             '* LIST (\\HasChildren) "/" Projects',
             '* LIST (\\HasChildren) "/" Projects/Estafette',
             '* LIST (\\HasNoChildren) "/" "Projects/Estafette/Design notes"'], u
u, t = r.ok('LIST "Projects/" "%"')
assert u == ['* LIST (\\HasChildren) "/" Projects/Estafette'], u
u, t = r.ok('LIST "" "inbox"')
assert u == ['* LIST (\\HasNoChildren) "/" INBOX'], u
u, t = r.cmd('CREATE "Projects"')
assert t == "NO [ALREADYEXISTS] mailbox Projects already exists", t
u, t = r.cmd('CREATE INBOX')
assert t.startswith("NO [ALREADYEXISTS]"), t
u, t = r.cmd('CREATE "a//b"')
assert t.startswith("NO [CANNOT] invalid mailbox name"), t

# Modified UTF-7 for IMAP4rev1 clients.
r.ok('CREATE "Entw&APw-rfe"')
u, t = r.ok('LIST "" "Entw*"')
assert u == ['* LIST (\\HasNoChildren) "/" Entw&APw-rfe'], u

# CREATE-SPECIAL-USE and LIST RETURN (SPECIAL-USE).
u, t = r.ok('CREATE "Sent Items" (USE (\\Sent))')
u, t = r.cmd('CREATE "Odd" (USE (\\Frobs))')
assert t.startswith("NO [USEATTR]"), t
u, t = r.ok('LIST "" "Sent*" RETURN (SPECIAL-USE)')
assert u == ['* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"'], u

# RENAME moves children along; INBOX cannot be renamed here.
r.ok('RENAME "Projects" "Archive/Projects"')
u, t = r.ok('LIST "" "Archive*"')
assert u == ['* LIST (\\HasChildren) "/" Archive',
             '* LIST (\\HasChildren) "/" Archive/Projects',
             '* LIST (\\HasChildren) "/" Archive/Projects/Estafette',
             '* LIST (\\HasNoChildren) "/" "Archive/Projects/Estafette/Design notes"'], u
u, t = r.ok('LIST "" "Archive/*"')
assert u == ['* LIST (\\HasChildren) "/" Archive/Projects',
             '* LIST (\\HasChildren) "/" Archive/Projects/Estafette',
             '* LIST (\\HasNoChildren) "/" "Archive/Projects/Estafette/Design notes"'], u
# RENAME INBOX moves its messages to the new name; INBOX stays, empty.
r.ok('APPEND INBOX (\\Flagged) ', message("in inbox 1"))
r.ok('APPEND INBOX ', message("in inbox 2"))
u, t = r.ok('RENAME INBOX "Old Inbox"')
u, t = r.ok('STATUS INBOX (MESSAGES)')
assert u == ['* STATUS INBOX (MESSAGES 0)'], u
u, t = r.ok('STATUS "Old Inbox" (MESSAGES)')
assert u == ['* STATUS "Old Inbox" (MESSAGES 2)'], u
r.ok('SELECT "Old Inbox"')
u, t = r.ok('FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
# Never selected before: both are \Recent in this (first) session.
assert u == ['* 1 FETCH (FLAGS (\\Flagged \\Recent) BODY[HEADER.FIELDS (SUBJECT)] {23}\r\nSubject: in inbox 1\r\n\r\n)',
             '* 2 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {23}\r\nSubject: in inbox 2\r\n\r\n)'], u
r.ok('UNSELECT')
u, t = r.cmd('RENAME "Nope" "Other"')
assert t == "NO [NONEXISTENT] no mailbox Nope", t

# Subscriptions: LSUB, LIST (SUBSCRIBED), RETURN (SUBSCRIBED).
r.ok('SUBSCRIBE "Sent Items"')
r.ok('SUBSCRIBE "Gone"')
u, t = r.ok('LSUB "" "*"')
assert u == ['* LSUB () "/" "Sent Items"', '* LSUB (\\Noselect) "/" Gone'], u
u, t = r.ok('LIST (SUBSCRIBED) "" "*"')
assert u == ['* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" "Sent Items"',
             '* LIST (\\Subscribed \\NonExistent) "/" Gone'], u
u, t = r.ok('LIST "" "S*" RETURN (SUBSCRIBED)')
assert u == ['* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" "Sent Items"'], u
r.ok('UNSUBSCRIBE "Gone"')
u, t = r.cmd('UNSUBSCRIBE "Gone"')
assert t.startswith("NO"), t

# STATUS, STATUS=SIZE, LIST-STATUS.
r.ok('APPEND "Sent Items" (\\Seen) ', message("s1"))
r.ok('APPEND "Sent Items" ', message("s2"))
size = len(message("s1")) + len(message("s2"))
u, t = r.ok('STATUS "Sent Items" (MESSAGES UIDNEXT UNSEEN SIZE DELETED)')
assert u == ['* STATUS "Sent Items" (MESSAGES 2 UIDNEXT 3 UNSEEN 1 DELETED 0 SIZE %d)' % size], u
u, t = r.ok('LIST "" "Sent*" RETURN (STATUS (MESSAGES UNSEEN))')
assert u == ['* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"',
             '* STATUS "Sent Items" (MESSAGES 2 UNSEEN 1)'], u
# LIST-EXTENDED: several patterns; SPECIAL-USE selection; RECURSIVEMATCH.
u, t = r.ok('LIST "" ("INBOX" "Sent*")')
assert u == ['* LIST (\\HasNoChildren) "/" INBOX', '* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"'], u
u, t = r.ok('LIST (SPECIAL-USE) "" "*"')
assert u == ['* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"'], u
r.ok('SUBSCRIBE "Archive/Projects/Estafette"')
u, t = r.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
assert u == ['* LIST (\\HasChildren) "/" Archive ("CHILDINFO" ("SUBSCRIBED"))',
             '* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" "Sent Items"'], u
u, t = r.cmd('LIST (RECURSIVEMATCH) "" "%"')
assert t == "BAD RECURSIVEMATCH needs another selection option", t
# RFC 5258 §3: unknown options are BAD, and RECURSIVEMATCH alone (or with
# REMOTE) is BAD whatever the pattern, the empty one included.
u, t = r.cmd('LIST (RECURSIVEMATCH) "" ""')
assert t.startswith("BAD"), t
u, t = r.cmd('LIST (RECURSIVEMATCH REMOTE) "" ""')
assert t.startswith("BAD"), t
u, t = r.cmd('LIST (FROBNICATE) "" "*"')
assert t == "BAD unknown LIST selection option FROBNICATE", t
u, t = r.cmd('LIST "" "*" RETURN (FROBNICATE)')
assert t == "BAD unknown LIST return option FROBNICATE", t
# LSUB with %: a subscribed name below the level shows its unsubscribed
# superior as \Noselect (RFC 3501 §6.3.9), whether or not it exists.
r.ok('SUBSCRIBE "Deep/Er/Est"')
u, t = r.ok('LSUB "" "Deep/%"')
assert u == ['* LSUB (\\Noselect) "/" Deep/Er'], u
u, t = r.ok('LSUB "" "Deep/*"')
assert u == ['* LSUB (\\Noselect) "/" Deep/Er/Est'], u
r.ok('UNSUBSCRIBE "Deep/Er/Est"')
# A superior name that is no mailbox still shows, as \Noselect.
r.ok('DELETE "Archive/Projects/Estafette"')
u, t = r.ok('LIST "" "Archive/Projects/%"')
assert u == ['* LIST (\\Noselect \\HasChildren) "/" Archive/Projects/Estafette'], u
u, t = r.cmd('STATUS "Nope" (MESSAGES)')
assert t == "NO [NONEXISTENT] no mailbox Nope", t

# DELETE; the selected mailbox is closed with it.
r.ok('SELECT "Sent Items"')
r.ok('DELETE "Sent Items"')
u, t = r.cmd('SELECT "Sent Items"')
assert t == "NO [NONEXISTENT] no mailbox Sent Items", t
u, t = r.cmd('DELETE INBOX')
assert t.startswith("NO"), t

# A mailbox created again under a deleted one's name is a new mailbox: its
# UIDVALIDITY differs (RFC 9051 §2.3.1.1), so clients drop what they cached.
uv = lambda u: re.search(r"UIDVALIDITY (\d+)", u[0]).group(1)
r.ok('CREATE "Again"')
r.ok('APPEND "Again" ', message("first incarnation"))
u, t = r.ok('STATUS "Again" (UIDVALIDITY MESSAGES)')
first = uv(u)
r.ok('DELETE "Again"')
r.ok('CREATE "Again"')
u, t = r.ok('STATUS "Again" (UIDVALIDITY MESSAGES)')
assert "MESSAGES 0" in u[0] and uv(u) != first, (first, u)
r.ok('DELETE "Again"')

# IMAP4rev2 clients get UTF-8 names.
r.ok("ENABLE IMAP4rev2")
u, t = r.ok('LIST "" "Entw*"')
assert u == ['* LIST (\\HasNoChildren) "/" {9}\r\nEntwürfe'], u
r.ok("LOGOUT")
print("ok")

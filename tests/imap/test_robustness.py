"""Bad input costs nothing but a BAD/NO: oversized literals (synchronising
and LITERAL+), over-long lines, garbage, pipelined commands answered in
order, and the session survives all of it."""
from imaptest import *

r = Raw()
r.login()
fresh_mailbox(r, "Robust")

# A synchronising literal over APPENDLIMIT is refused before it is sent.
caps = r.ok("CAPABILITY")[0][0]
limit = int(re.search(r"APPENDLIMIT=(\d+)", caps).group(1))
r.send(b"a1 APPEND Robust {%d}\r\n" % (limit + 1))
assert r.line() == "a1 NO [TOOBIG] message too large"
# Any other command's literal is bounded much lower.
r.send(b"a2 SELECT {100000}\r\n")
assert r.line() == "a2 NO literal too large"
# The session still works.
u, t = r.ok("NOOP")

# LITERAL+ over the limit: the bytes come anyway, then a NO.
r.send(b"a3 SELECT {70000+}\r\n" + b"x" * 70000 + b"\r\n")
l = r.line()
assert l.startswith("a3 NO [TOOBIG]"), l
u, t = r.ok("NOOP")

# LITERAL+ within limits is accepted without a continuation.
r.send(b"a4 APPEND Robust {%d+}\r\n" % len(message("lp")) + message("lp") + b"\r\n")
l = r.line()
while not l.startswith("a4 "):
    l = r.line()
assert l.startswith("a4 OK [APPENDUID"), l

# Garbage gets BAD with a reason, tagged when there is a tag.
for bad in [b"a5 FETCH\r\n", b"a6 FETCH x:y FLAGS\r\n", b"a7 STORE 1 +FLAGS (\\Bogus\r\n", b"a8 \x01\x02\r\n"]:
    r.send(bad)
    l = r.line()
    assert l.startswith(bad.split(b" ")[0].decode() + " BAD"), (bad, l)

# Pipelined commands are all answered, in order.
r.send(b"p1 NOOP\r\np2 UID FETCH 1:* (UID)\r\np3 STATUS Robust (MESSAGES)\r\np4 NOOP\r\n")
tags = []
while len(tags) < 4:
    l = r.line()
    if l.startswith("p"):
        tags.append(l.split(" ")[0])
assert tags == ["p1", "p2", "p3", "p4"], tags

# A line longer than the limit ends the connection with BYE.
r.send(b"a9 NOOP " + b"x" * 200000 + b"\r\n")
l = r.line()
assert l == "* BYE [TOOBIG] Command line too long", l
r.close()

# The server is fine for the next client.
r = Raw()
r.login()
r.ok("LOGOUT")
print("ok")

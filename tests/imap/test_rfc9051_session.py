"""RFC 9051 §6.1-6.2 and RFC 3501: connection states, CAPABILITY,
STARTTLS, LOGIN, AUTHENTICATE PLAIN (SASL-IR), ENABLE, ID, NAMESPACE,
LOGOUT, and the answers to commands in the wrong state or with bad syntax."""
from imaptest import *

# Greeting and capabilities before login on the plain (loopback) port.
r = Raw(tls=False)
assert r.greeting.startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS AUTH=PLAIN SASL-IR"), r.greeting
u, t = r.ok("CAPABILITY")
assert u[0].startswith("* CAPABILITY IMAP4rev1 IMAP4rev2 STARTTLS AUTH=PLAIN SASL-IR LITERAL+ ENABLE ID IDLE"), u
assert "APPENDLIMIT=" in u[0] and "LOGINDISABLED" not in u[0], u

# State errors and syntax errors get BAD with a reason.
u, t = r.cmd("SELECT INBOX")
assert t == "BAD SELECT needs authentication first", t
u, t = r.cmd("FROBNICATE")
assert t.startswith("BAD Syntax error"), t
r.send(b"\r\n")
assert r.line() == "* BAD Syntax error: no tag"

# STARTTLS, then capabilities again over TLS.
u, t = r.ok("STARTTLS")
assert t == "OK Begin TLS negotiation now", t
r.starttls()
u, t = r.ok("CAPABILITY")
assert "STARTTLS" not in u[0] and "AUTH=PLAIN" in u[0], u
u, t = r.cmd("STARTTLS")
assert t == "BAD TLS is already active", t

# Wrong password: the same answer as an unknown user.
u, t = r.cmd('LOGIN "%s" "wrong-password"' % USER)
assert t == "NO [AUTHENTICATIONFAILED] Authentication failed", t
u, t = r.cmd('LOGIN "nobody-here" "wrong-password"')
assert t == "NO [AUTHENTICATIONFAILED] Authentication failed", t

# AUTHENTICATE PLAIN with an initial response (SASL-IR).
u, t = r.ok("AUTHENTICATE PLAIN " + plain())
assert t.startswith("OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+"), t
assert "AUTH=PLAIN" not in t, "no AUTH= after login: " + t
u, t = r.cmd("LOGIN a b")
assert t == "BAD Already authenticated", t

u, t = r.ok("ENABLE IMAP4rev2 CONDSTORE X-UNKNOWN")
assert u == ["* ENABLED IMAP4rev2 CONDSTORE"], u
u, t = r.ok('ID ("name" "test")')
assert u == ['* ID ("name" "Estafette" "vendor" "Estafette")'], u
u, t = r.ok("NAMESPACE")
assert u == ['* NAMESPACE (("" "/")) NIL NIL'], u
u, t = r.cmd("FETCH 1 FLAGS")
assert t == "BAD FETCH needs a selected mailbox", t
u, t = r.ok("LOGOUT")
assert u == ["* BYE Logging out"], u
r.close()

# AUTHENTICATE PLAIN without initial response: "+" then the response.
r = Raw(tls=True)
r.send(b"a1 AUTHENTICATE PLAIN\r\n")
assert r.line().startswith("+"), "continuation"
r.send(plain().encode() + b"\r\n")
l = r.line()
assert l.startswith("a1 OK [CAPABILITY"), l
r.close()

# A cancelled exchange.
r = Raw(tls=True)
r.send(b"a1 AUTHENTICATE PLAIN\r\n")
r.line()
r.send(b"*\r\n")
assert r.line() == "a1 BAD Authentication cancelled"
u, t = r.cmd("AUTHENTICATE DIGEST-MD5")
assert t.startswith("NO") or t.startswith("BAD"), t
r.close()

# imaplib, the stdlib client, gets through the whole flow.
m = imaplib_login()
typ, data = m.select("INBOX")
assert typ == "OK", data
m.logout()
print("ok")

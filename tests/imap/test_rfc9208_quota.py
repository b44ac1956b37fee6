"""Quotas (RFC 9208 QUOTA, STORAGE resource): the operator sets them in
the users file; APPEND and COPY over quota get NO [OVERQUOTA]; EXPUNGE
frees; LMTP delivery to a full mailbox gets 452 4.2.2 (the MTA retries);
GETQUOTAROOT/GETQUOTA report usage; clients cannot SETQUOTA."""
import os
import smtplib
import subprocess
from imaptest import *

# The operator sets the quota (it lands in the users file).
cli = [os.environ["ESTAFETTE_BIN"]]
subprocess.run(cli + ["user", "quota", USER, "40 KB", "--data-dir", os.environ["DEV_DIR"]], check=True)
listing = subprocess.run(cli + ["user", "list", "--data-dir", os.environ["DEV_DIR"]], check=True, capture_output=True, text=True).stdout
assert "40 KB" in listing, listing
bad = subprocess.run(cli + ["user", "quota", USER, "lots", "--data-dir", os.environ["DEV_DIR"]], capture_output=True, text=True)
assert bad.returncode != 0 and "lots" in bad.stderr, bad

r = Raw()
r.login()
# The node that took the command reloaded the users file at once.
u, t = r.ok('GETQUOTA ""')
assert u == ['* QUOTA "" (STORAGE 0 39)'], u

fresh_mailbox(r, "Q")
big = message("big", "y" * 15000 + "\r\n")
r.ok('APPEND Q ', big)
r.ok('APPEND Q ', big)
u, t = r.cmd('APPEND Q ', big)
assert t.startswith("NO [OVERQUOTA] Quota exceeded"), t
u, t = r.ok("GETQUOTAROOT Q")
used = (2 * len(big) + 1023) // 1024
assert u == ['* QUOTAROOT Q ""', '* QUOTA "" (STORAGE %d 39)' % used], u
u, t = r.cmd("COPY 1:2 INBOX")
assert t.startswith("NO [OVERQUOTA]"), t
u, t = r.cmd('SETQUOTA "" (STORAGE 100)')
assert t == "NO [NOPERM] Quotas are set by the administrator", t

# Mail to a full mailbox is deferred, not bounced.
body = "From: lmtp@example.test\r\nTo: %s\r\nSubject: too much\r\n\r\n%s\r\n" % (ADDRESS, "z" * 20000)
with smtplib.LMTP(HOST, LMTP_PORT) as l:
    try:
        l.sendmail("lmtp@example.test", [ADDRESS], body)
        raise AssertionError("delivered over quota")
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 452 and b"4.2.2" in e.smtp_error, e
    except smtplib.SMTPRecipientsRefused as e:
        code, msg = e.recipients[ADDRESS]
        assert code == 452 and b"4.2.2" in msg, e

# EXPUNGE frees the space.
r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
r.ok("EXPUNGE")
u, t = r.ok('GETQUOTA ""')
assert u == ['* QUOTA "" (STORAGE %d 39)' % ((len(big) + 1023) // 1024)], u
r.ok('APPEND Q ', big)
r.ok("LOGOUT")
print("ok")

"""A renewed certificate (ACME, an operator's new files) is taken on
SIGHUP: new handshakes get it, sessions opened before stay up, and a
broken renewal is refused with the certificate in use kept."""
import os
import signal
import subprocess
import time

from imaptest import *

DEV_DIR = os.environ["DEV_DIR"]
CERT, KEY = os.path.join(DEV_DIR, "tls-cert.pem"), os.path.join(DEV_DIR, "tls-key.pem")


def served_cert():
    r = Raw(tls=True)
    der = r.sock.getpeercert(binary_form=True)
    r.close()
    return der


def hup():
    pid = int(open(os.path.join(DEV_DIR, "node-1", "pid")).read())
    os.kill(pid, signal.SIGHUP)


def until(cond, what, limit=10):
    deadline = time.time() + limit
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.05)


before = served_cert()
# A session open across the reload.
s = Raw(tls=True)
s.login()
s.ok("SELECT INBOX")

# The renewal: new files written beside, then moved in (as certbot/lego do).
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "30", "-subj", "/CN=renewed.localhost",
                "-keyout", KEY + ".new", "-out", CERT + ".new"], check=True, capture_output=True)
os.rename(KEY + ".new", KEY)
os.rename(CERT + ".new", CERT)
hup()
until(lambda: served_cert() != before, "the renewed certificate is not served after SIGHUP")
renewed = served_cert()

# The session opened before the reload is still served.
u, t = s.ok("NOOP")
u, t = s.ok("STATUS INBOX (MESSAGES)")

# A broken renewal (a half-written file) is refused: the renewed
# certificate stays, and new logins still work.
open(CERT, "w").write("-----BEGIN CERTIFICATE-----\ntruncated")
hup()
log = os.path.join(DEV_DIR, "dev.log")
until(lambda: "keeping the certificate in use" in open(log, errors="replace").read(), "the refusal is not logged")
assert served_cert() == renewed, "a broken certificate replaced the working one"
r = Raw(tls=True)
r.login()
r.close()
s.ok("LOGOUT")
print("ok")

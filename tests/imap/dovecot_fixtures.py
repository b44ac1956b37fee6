"""Records Dovecot's FETCH answers for the corpus (run once, by hand, when
the corpus changes; the JSON is committed):

    python3 tests/imap/dovecot_fixtures.py record

It starts a private Dovecot (Debian's dovecot-imapd) on loopback, appends
every corpus message, and stores the response of each FETCH item.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from corpus import CORPUS

ITEMS = [
    "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY",
    "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]",
    "BODY.PEEK[2.MIME]", "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[1.1]", "BODY.PEEK[2.1]",
    "BODY.PEEK[3]", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM TO)]", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]",
    "BODY.PEEK[]<10.20>", "BODY.PEEK[TEXT]<3.5>",
]
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dovecot-fetch.json")


def fetch_all(raw_client, mailbox):
    """{message name: {item: FETCH response}} from a logged-in Raw client."""
    out = {}
    raw_client.ok('SELECT "%s"' % mailbox)
    for seq, (name, _) in enumerate(CORPUS, start=1):
        out[name] = {}
        for item in ITEMS:
            u, t = raw_client.ok("FETCH %d (%s)" % (seq, item))
            lines = [l for l in u if l.startswith("* %d FETCH" % seq)]
            out[name][item] = lines[0] if lines else None
    return out


def append_corpus(raw_client, mailbox):
    raw_client.cmd('DELETE "%s"' % mailbox)
    raw_client.ok('CREATE "%s"' % mailbox)
    for name, msg in CORPUS:
        raw_client.ok('APPEND "%s" "02-Mar-2026 09:00:00 +0000" ' % mailbox, msg)


def record():
    work = tempfile.mkdtemp()
    os.chmod(work, 0o755)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.makedirs(work + "/run")
    os.makedirs(work + "/mail")
    shutil.chown(work + "/mail", "dovecot", "dovecot")
    conf = work + "/dovecot.conf"
    with open(conf, "w") as f:
        f.write("""base_dir = {w}/run
log_path = {w}/log
protocols = imap
ssl = no
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{w}/mail/%n
first_valid_uid = 1
passdb {{
  driver = static
  args = password=pw
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={w}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""".format(w=work, p=port))
    subprocess.check_call(["dovecot", "-c", conf])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ["IMAP_PORT"] = str(port)
        import imaptest
        imaptest.PORT = port
        r = imaptest.Raw(tls=False, port=port)
        r.login("alice", "pw")
        append_corpus(r, "Corpus")
        data = fetch_all(r, "Corpus")
        r.ok("LOGOUT")
        version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
        with open(FIXTURE, "w") as f:
            json.dump({"dovecot": version, "items": ITEMS, "answers": data}, f, indent=1, ensure_ascii=False, sort_keys=True)
        print("recorded %d messages x %d items from Dovecot %s" % (len(CORPUS), len(ITEMS), version))
    finally:
        pid_file = work + "/run/master.pid"
        pid = int(open(pid_file).read()) if os.path.exists(pid_file) else None
        subprocess.call(["dovecot", "-c", conf, "stop"])
        # Its files go once the master has exited.
        deadline = time.time() + 10
        while pid and os.path.exists("/proc/%d" % pid) and time.time() < deadline:
            time.sleep(0.05)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()

"""FETCH rendering compared with Dovecot's answers for the same messages
(RFC 9051 §7.5.2; fixtures recorded from Debian's dovecot-imapd by
dovecot_fixtures.py): every item of every corpus message must match
byte for byte, sequence numbers aside."""
import json
import re
import sys

from corpus import CORPUS
from dovecot_fixtures import FIXTURE, append_corpus, fetch_all
from imaptest import Raw

with open(FIXTURE) as f:
    fixture = json.load(f)

r = Raw()
r.login()
append_corpus(r, "Corpus")
ours = fetch_all(r, "Corpus")
r.ok("LOGOUT")

def strip(line):
    return None if line is None else re.sub(r"^\* \d+ FETCH ", "", line)

mismatches = []
total = 0
for name, _ in CORPUS:
    for item in fixture["items"]:
        total += 1
        want = strip(fixture["answers"][name][item])
        got = strip(ours[name][item])
        if want != got:
            mismatches.append((name, item, want, got))

for name, item, want, got in mismatches:
    print("MISMATCH %s %s\n  dovecot: %r\n  ours:    %r" % (name, item, want, got))
print("%d of %d answers match Dovecot %s" % (total - len(mismatches), total, fixture["dovecot"]))
if mismatches:
    sys.exit(1)
print("ok")

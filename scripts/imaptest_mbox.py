#!/usr/bin/env python3
"""Concatenates imaptest's tests/*.mbox into one mbox for its stress mode
(scripts/imaptest), giving every message a unique Message-ID: imaptest's
state tracker keys messages by Message-ID, and the thread tests reuse
theirs, which would give false "ENVELOPE changed" errors.

    imaptest_mbox.py TESTS_DIR DEST"""
import re, glob, sys
tests, dest = sys.argv[1], sys.argv[2]
msgs = []
for f in sorted(glob.glob(tests + '/*.mbox')):
    data = open(f, 'rb').read()
    for p in re.split(rb'(?m)^(?=From \S+ +\w{3} \w{3} +\d+ [\d:]+ \d{4}\s*$)', data):
        if p.startswith(b'From '):
            msgs.append(p)
out = []
for i, m in enumerate(msgs):
    head, _, body = m.partition(b'\n\n')
    lines = head.split(b'\n')
    hdr, skip = [], False
    for l in lines[1:]:
        if re.match(rb'(?i)message-id:', l):
            skip = True; continue
        if skip and l[:1] in (b' ', b'\t'):
            continue
        skip = False; hdr.append(l)
    hdr.append(b'Message-ID: <stress-%d@imaptest.test>' % i)
    mm = b'\n'.join([lines[0]] + hdr) + b'\n\n' + body
    if not mm.endswith(b'\n'): mm += b'\n'
    if not mm.endswith(b'\n\n'): mm += b'\n'
    out.append(mm)
open(dest, 'wb').write(b''.join(out))
print(f'{len(out)} messages -> {dest}')

"""A varied MIME corpus for comparing FETCH rendering with Dovecot:
multipart, base64/QP, encoded headers, UTF-8, message/rfc822, groups,
malformed mail. Deterministic: the recorded fixtures depend on it."""
import base64

CRLF = "\r\n"


def m(*lines):
    return (CRLF.join(lines)).encode("utf-8")


B64PDF = base64.encodebytes(bytes(range(256)) * 3).decode().replace("\n", "\r\n").rstrip("\r\n")

CORPUS = [
    ("plain", m("From: Alice Example <alice@example.test>", "To: bob@example.test", "Subject: Plain message",
                "Date: Mon, 2 Mar 2026 09:00:00 +0100", "Message-ID: <plain@example.test>", "", "Hello Bob,", "", "plain text.", "")),
    ("minimal", m("From: x@example.test", "", "no subject, no date", "")),
    ("encoded-words", m("From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@example.test>",
                        "To: =?iso-8859-1?q?Andr=E9?= <andre@example.test>, \"Smith, John\" <john@example.test>",
                        "Subject: =?utf-8?b?w4ljb2xlIGV0IGNhZsOp?= and a rather long subject line that",
                        " continues on a folded second line",
                        "Date: Tue, 3 Mar 2026 10:00:00 -0500", "", "body", "")),
    ("utf8-8bit", m("From: a@example.test", "To: b@example.test", "Subject: Grüße", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
                    "Grüße aus Zürich — naïve café", "second line", "")),
    ("alternative-qp", m("From: a@example.test", "To: b@example.test", "Subject: alt", "MIME-Version: 1.0",
                         "Content-Type: multipart/alternative; boundary=\"alt-1\"", "", "preamble", "--alt-1",
                         "Content-Type: text/plain; charset=\"utf-8\"", "Content-Transfer-Encoding: quoted-printable", "",
                         "caf=C3=A9 soft=", "break", "--alt-1", "Content-Type: text/html; charset=utf-8",
                         "Content-Transfer-Encoding: quoted-printable", "", "<p>caf=C3=A9</p>", "--alt-1--", "epilogue", "")),
    ("attachment-b64", m("From: a@example.test", "To: b@example.test", "Subject: attachment", "MIME-Version: 1.0",
                         "Content-Type: multipart/mixed; boundary=mix", "", "--mix", "Content-Type: text/plain", "",
                         "see attached", "--mix", "Content-Type: application/pdf; name=\"a b.pdf\"",
                         "Content-Disposition: attachment; filename=\"a b.pdf\"", "Content-Transfer-Encoding: base64", "",
                         B64PDF, "--mix--", "")),
    ("nested-related", m("From: a@example.test", "Subject: nested", "MIME-Version: 1.0",
                         "Content-Type: multipart/mixed; boundary=outer", "", "--outer",
                         "Content-Type: multipart/alternative; boundary=inner", "", "--inner", "Content-Type: text/plain", "",
                         "text part", "--inner", "Content-Type: multipart/related; boundary=rel", "", "--rel",
                         "Content-Type: text/html", "", "<img src=cid:i1>", "--rel", "Content-Type: image/png",
                         "Content-ID: <i1>", "Content-Transfer-Encoding: base64", "", "iVBORw0KGgo=", "--rel--", "--inner--",
                         "--outer", "Content-Type: text/csv; charset=us-ascii", "Content-Disposition: inline", "", "a,b", "1,2",
                         "--outer--", "")),
    ("forwarded-rfc822", m("From: a@example.test", "To: b@example.test", "Subject: Fwd: inner", "MIME-Version: 1.0",
                           "Content-Type: multipart/mixed; boundary=fw", "", "--fw", "Content-Type: text/plain", "",
                           "forwarding", "--fw", "Content-Type: message/rfc822", "", "From: Carol <carol@example.test>",
                           "To: dave@example.test", "Subject: inner subject", "Date: Wed, 4 Mar 2026 11:00:00 +0000",
                           "MIME-Version: 1.0", "Content-Type: multipart/alternative; boundary=in", "", "--in",
                           "Content-Type: text/plain", "", "inner text", "--in", "Content-Type: text/html", "", "<b>inner</b>",
                           "--in--", "", "--fw--", "")),
    ("multipart-no-boundary", m("From: a@example.test", "Subject: broken", "MIME-Version: 1.0",
                                "Content-Type: multipart/mixed", "", "there is no boundary here", "")),
    ("unclosed-boundary", m("From: a@example.test", "Subject: unclosed", "MIME-Version: 1.0",
                            "Content-Type: multipart/mixed; boundary=open", "", "--open", "Content-Type: text/plain", "",
                            "first part", "--open", "Content-Type: text/plain", "", "never closed", "")),
    ("groups", m("From: a@example.test", "To: undisclosed-recipients:;", "Cc: Team: one@example.test, Two <two@example.test>;, three@example.test",
                 "Subject: groups", "", "body", "")),
    ("odd-addresses", m("From: bob@example.test (Bob Comment)", "To: \"quoted local\"@example.test, nodomain",
                        "Reply-To: <reply@example.test>", "Sender: Sender Name <sender@example.test>",
                        "In-Reply-To: <parent@example.test>", "References: <root@example.test> <parent@example.test>",
                        "Subject: odd", "", "body", "")),
    ("bare-lf", b"From: a@example.test\nTo: b@example.test\nSubject: bare LF\n\nline one\nline two\n"),
    ("rfc2231", m("From: a@example.test", "Subject: 2231", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=z", "",
                  "--z", "Content-Type: application/octet-stream; name*=utf-8''na%C3%AFve.bin",
                  "Content-Disposition: attachment; filename*=utf-8''na%C3%AFve.bin", "Content-Transfer-Encoding: base64", "",
                  "AAECAw==", "--z--", "")),
    ("text-params", m("From: a@example.test", "Subject: params", "MIME-Version: 1.0",
                      "Content-Type: text/plain; charset=ISO-8859-1; format=flowed; delsp=yes", "Content-ID: <cid1@example.test>",
                      "Content-Description: a description", "Content-Language: en", "Content-Transfer-Encoding: 7bit", "",
                      "flowed ", "text", "")),
    ("empty-body", m("From: a@example.test", "Subject: empty", "", "")),
    ("header-only", b"From: a@example.test\r\nSubject: only a header"),
    ("html-no-mime-version", m("From: a@example.test", "Subject: html", "Content-Type: text/html", "", "<html><body>hi</body></html>", "")),
    ("signed", m("From: a@example.test", "Subject: signed", "MIME-Version: 1.0",
                 "Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=sig", "",
                 "--sig", "Content-Type: text/plain", "", "signed text", "--sig", "Content-Type: application/pgp-signature; name=signature.asc",
                 "", "-----BEGIN PGP SIGNATURE-----", "abc", "-----END PGP SIGNATURE-----", "--sig--", "")),
    ("long-header", m("From: a@example.test", "Subject: " + "long " * 200, "X-Long: " + "y" * 3000, "", "body", "")),
    ("latin1-body", ("From: a@example.test\r\nSubject: latin1\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + "Gr\xfc\xdfe\r\n".encode("latin-1")),
]

# Three Estafette nodes in three regions, each with a Postfix in front of
# it, and a client machine, as NixOS VMs.
# Run with: nix build .#checks.x86_64-linux.three-regions (needs Nix, nixpkgs
# and KVM; on the development machines scripts/nixos-eval only evaluates it).
#
# What it shows: the cluster forms from the module's configuration alone
# (derived node ids, the first node writes the layout), with real latency
# between the regions (netem); a user declared in Nix exists on every node,
# and one added with the CLI on one node is known by the others at once (the
# directory is replicated); mail sent through the Postfix of each region
# (services.estafette.postfix) is read over IMAPS from another region, and
# Postfix refuses unknown recipients at SMTP time; paris takes its
# certificate from security.acme and, when the certificate is renewed,
# reloads it without a restart and without dropping an IMAP session; one
# region is shut down and delivery and reading continue in the two others;
# it comes back and has caught up.
{ self }:

let
  secret = "6c1c8d3bcbf0d31eeb2e7c7fbd6c51dbc2c9c8e4c4f9a7d2e0d8a1b2c3d4e5f6";

  # One node per region. Its RPC address is the one the test framework
  # gives its VM (192.168.1.<n>, VMs numbered alphabetically), which the
  # other VMs' /etc/hosts also gives for its name.
  regions = [
    { name = "paris"; region = "eu-west"; }
    { name = "montreal"; region = "ca-east"; }
    { name = "tokyo"; region = "ap-east"; }
  ];

  # A self-signed certificate for every node name, made at build time.
  testCert = pkgs: name: pkgs.runCommand "estafette-test-cert-${name}" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj /CN=${name}.estafette.test -addext "subjectAltName=DNS:paris,DNS:montreal,DNS:tokyo" \
      -keyout $out/key.pem -out $out/cert.pem
  '';

  estafetteNode = me: { nodes, pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 1024;
    # SMTP for Postfix; the module opens IMAP, IMAPS and RPC (openFirewall).
    networking.firewall.allowedTCPPorts = [ 25 ];
    # tc (netem: the latency between regions) and openssl for the test script.
    environment.systemPackages = [ pkgs.iproute2 pkgs.openssl ];
    environment.etc."estafette-rpc-secret" = { text = secret; mode = "0400"; };
    environment.etc."estafette-alice-password" = { text = "correct horse battery"; mode = "0400"; };
    services.estafette = {
      enable = true;
      nodeName = me.name;
      region = me.region;
      rpc.secretFile = "/etc/estafette-rpc-secret";
      cluster.nodes = map
        (r: {
          inherit (r) name region;
          capacity = "1G";
          rpcAddr = "${nodes.${r.name}.networking.primaryIPAddress}:3901";
        })
        regions;
      fsync = false;
      openFirewall = true;
      # Declared on every node; created by whichever starts first.
      users.alice = {
        addresses = [ "alice@example.test" ];
        quota = "100M";
        initialPasswordFile = "/etc/estafette-alice-password";
      };
      # Postfix beside the node, delivering over LMTP to it.
      postfix.enable = true;
      postfix.domains = [ "example.test" ];
    };
  };

  # TLS from explicit files (systemd credentials).
  withCertFiles = { pkgs, ... }: {
    services.estafette.tls = {
      certFile = "${testCert pkgs "initial"}/cert.pem";
      keyFile = "${testCert pkgs "initial"}/key.pem";
    };
  };
in
{
  name = "estafette-three-regions";

  nodes = {
    # TLS from security.acme. No CA is reachable from the test:
    # acme-paris.service puts a self-signed certificate in place (what
    # NixOS does until the CA has answered) and the order fails; the test
    # then plays a renewal with a second certificate.
    paris = { pkgs, ... }: {
      imports = [ (estafetteNode (builtins.elemAt regions 0)) ];
      services.estafette.tls.useACMEHost = "paris";
      security.acme = {
        acceptTerms = true;
        defaults.email = "postmaster@example.test";
        defaults.server = "https://acme.invalid/directory";
        certs.paris.listenHTTP = ":80";
      };
      environment.etc."estafette-test/renewed-cert.pem".source = "${testCert pkgs "renewed"}/cert.pem";
      environment.etc."estafette-test/renewed-key.pem".source = "${testCert pkgs "renewed"}/key.pem";
    };
    montreal = { imports = [ (estafetteNode (builtins.elemAt regions 1)) withCertFiles ]; };
    tokyo = { imports = [ (estafetteNode (builtins.elemAt regions 2)) withCertFiles ]; };

    # The client side: sends over SMTP to each region's Postfix and reads
    # over IMAPS, with Python's smtplib and imaplib; openssl s_client to see
    # which certificate a node serves.
    mx = { pkgs, ... }: {
      services.postfix.enable = true;
      environment.systemPackages = [ pkgs.python3 pkgs.openssl ];
      environment.etc."mailtool.py".text = ''
        import imaplib, os, smtplib, ssl, sys, time

        PASSWORDS = {"alice": "correct horse battery", "bob": "bob password"}

        def connect(host):
            ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            return imaplib.IMAP4_SSL(host, 993, ssl_context=ctx)

        def send(host, subject, rcpt):
            msg = "From: carol@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\nhello from %s\r\n" % (rcpt, subject, host)
            with smtplib.SMTP(host, 25, timeout=60) as s:
                s.sendmail("carol@example.org", [rcpt], msg)

        def refused(host, rcpt):
            # Exit status 0 when Postfix refuses the recipient at RCPT with 550.
            try:
                with smtplib.SMTP(host, 25, timeout=60) as s:
                    s.sendmail("carol@example.org", [rcpt], "Subject: hello\r\n\r\nhello\r\n")
            except smtplib.SMTPRecipientsRefused as e:
                code, text = e.recipients[rcpt]
                print(code, text.decode(errors="replace"))
                sys.exit(0 if code == 550 else 1)
            print("accepted")
            sys.exit(1)

        def subjects(host, user):
            m = connect(host)
            m.login(user, PASSWORDS[user])
            m.select("INBOX")
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            m.logout()
            return sorted(p[1].decode().strip().split(": ", 1)[1] for p in data if isinstance(p, tuple))

        def hold(host):
            # An IMAP session that outlives a certificate reload: logged in
            # and selected, it waits for /tmp/hold.go, then works again.
            m = connect(host)
            m.login("alice", PASSWORDS["alice"])
            m.select("INBOX")
            open("/tmp/hold.ready", "w").close()
            deadline = time.time() + 600
            while not os.path.exists("/tmp/hold.go"):
                if time.time() > deadline:
                    sys.exit("no /tmp/hold.go")
                time.sleep(0.5)
            typ, _ = m.noop()
            typ2, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            n = sum(1 for p in data if isinstance(p, tuple))
            m.logout()
            with open("/tmp/hold.done", "w") as f:
                f.write("ok %s %s %d messages\n" % (typ, typ2, n))

        cmd, host = sys.argv[1], sys.argv[2]
        if cmd == "send":
            send(host, sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "alice@example.test")
        elif cmd == "refused":
            refused(host, sys.argv[3])
        elif cmd == "hold":
            hold(host)
        else:
            print(" | ".join(subjects(host, sys.argv[3] if len(sys.argv) > 3 else "alice")))
      '';
    };
  };

  testScript = ''
    import json

    CFG = "--config /etc/estafette/estafette.toml"
    regions = [paris, montreal, tokyo]
    # The delay each region adds to what it sends (netem on eth1): the round
    # trip between two regions is the sum of theirs (40, 95 and 105 ms).
    DELAY_MS = {"paris": 15, "montreal": 25, "tokyo": 80}

    def add_latency(machine):
        machine.wait_until_succeeds(
            f"tc qdisc replace dev eth1 root netem delay {DELAY_MS[machine.name]}ms", timeout=60
        )
        machine.succeed("tc qdisc show dev eth1 | grep -q netem")

    def status(machine):
        return json.loads(machine.succeed(f"estafette cluster status {CFG} --json"))

    def wait_healthy(machine, up):
        # `cluster status`: a header "layout version V (reads from V),
        # replication factor 3, <health> (P/P partitions with quorum)", then
        # one line per node: NAME REGION CAPACITY ADDRESS STATE SERVING RTT ID,
        # STATE up|DOWN, SERVING ready|starting|-.
        machine.wait_until_succeeds(
            f"s=$(estafette cluster status {CFG})"
            " && echo \"$s\" | head -n 1 | grep -Eq"
            " '^layout version ([1-9][0-9]*) \\(reads from \\1\\), replication factor 3, .* \\(([0-9]+)/\\2 partitions with quorum\\)$'"
            f" && test \"$(echo \"$s\" | grep -cE ' up +ready ')\" -eq {up}",
            timeout=180,
        )

    def read(host, user="alice"):
        return mx.succeed(f"python3 /etc/mailtool.py read {host} {user}").strip()

    def wait_read(host, expected, user="alice"):
        mx.wait_until_succeeds(
            f"test \"$(python3 /etc/mailtool.py read {host} {user})\" = '{expected}'", timeout=120
        )

    start_all()
    for m in regions:
        add_latency(m)
    for m in regions:
        m.wait_for_unit("estafette.service")
    for m in regions:
        wait_healthy(m, 3)

    s = status(tokyo)
    assert s["replication_factor"] == 3, s
    assert sorted(n["region"] for n in s["nodes"]) == ["ap-east", "ca-east", "eu-west"], s
    print(tokyo.succeed(f"estafette cluster status {CFG}"))

    # The latency is real: tokyo to paris is 95 ms.
    out = tokyo.succeed("ping -4 -c 3 -q paris")
    rtt = float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])
    assert rtt >= 90, out

    # The hardened unit: not root.
    paris.succeed("test \"$(systemctl show -p DynamicUser --value estafette)\" = yes")

    # The declared user exists everywhere; a user added on one node is
    # known on the others when the command returns (nothing is copied).
    for m in regions:
        m.wait_until_succeeds(f"estafette user list {CFG} | grep -q alice@example.test", timeout=60)
    paris.succeed(f"printf 'bob password\\n' | estafette user add bob --address bob@example.test --password-stdin {CFG}")
    for m in (montreal, tokyo):
        m.succeed(f"estafette user list --cached {CFG} | grep -q bob@example.test")

    mx.wait_for_unit("postfix.service")
    for m in regions:
        m.wait_for_unit("postfix.service")
        m.wait_for_open_port(993)

    # Mail through the Postfix of each region, read over IMAPS in another.
    for host in ("paris", "montreal", "tokyo"):
        mx.succeed(f"python3 /etc/mailtool.py send {host} via-{host}")
    everything = "via-montreal | via-paris | via-tokyo"
    wait_read("tokyo", everything)
    assert read("paris") == everything, read("paris")
    # The user added a moment ago on paris gets mail through tokyo.
    mx.succeed("python3 /etc/mailtool.py send tokyo for-bob bob@example.test")
    wait_read("montreal", "for-bob", user="bob")

    # An unknown recipient is refused at RCPT by every region's Postfix
    # (which asks Estafette over LMTP), not accepted and bounced later.
    for host in ("paris", "montreal", "tokyo"):
        mx.wait_until_succeeds(f"python3 /etc/mailtool.py refused {host} nobody@example.test", timeout=60)

    # Certificate renewal (tls.useACMEHost): the ACME client writes the new
    # files into /var/lib/acme/paris and reloads security.acme.certs.paris's
    # reloadServices. The node reloads the certificate without restarting;
    # an IMAP session opened before the reload goes on.
    renewed = paris.succeed(
        "openssl x509 -noout -fingerprint -sha256 -in /etc/estafette-test/renewed-cert.pem"
    ).strip()
    served = (
        "openssl s_client -connect paris:993 -servername paris </dev/null 2>/dev/null"
        " | openssl x509 -noout -fingerprint -sha256"
    )
    assert mx.succeed(served).strip() != renewed
    pid = paris.succeed("systemctl show -p MainPID --value estafette").strip()
    mx.succeed("rm -f /tmp/hold.*; python3 /etc/mailtool.py hold paris >/tmp/hold.log 2>&1 &")
    mx.wait_until_succeeds("test -e /tmp/hold.ready", timeout=60)
    paris.succeed(
        "install -m 640 -o acme -g acme /etc/estafette-test/renewed-cert.pem /var/lib/acme/paris/fullchain.pem"
        " && install -m 640 -o acme -g acme /etc/estafette-test/renewed-key.pem /var/lib/acme/paris/key.pem"
        " && systemctl try-reload-or-restart estafette.service"
    )
    mx.wait_until_succeeds(f"test \"$({served})\" = '{renewed}'", timeout=60)
    assert paris.succeed("systemctl show -p MainPID --value estafette").strip() == pid, "restarted, not reloaded"
    mx.succeed("touch /tmp/hold.go")
    mx.wait_until_succeeds("test -e /tmp/hold.done", timeout=60)
    print(mx.succeed("cat /tmp/hold.done /tmp/hold.log"))
    mx.succeed("grep -q '^ok OK OK' /tmp/hold.done")

    # A region goes dark: the two others still see a quorum everywhere,
    # and mail keeps flowing in and out through them.
    montreal.shutdown()
    wait_healthy(paris, 2)
    wait_healthy(tokyo, 2)
    mx.succeed("python3 /etc/mailtool.py send paris while-montreal-down")
    everything = "via-montreal | via-paris | via-tokyo | while-montreal-down"
    wait_read("tokyo", everything)

    # It comes back (behind its latency again), rejoins, and serves
    # everything, including what arrived while it was away.
    montreal.start()
    add_latency(montreal)
    montreal.wait_for_unit("estafette.service")
    for m in regions:
        wait_healthy(m, 3)
    montreal.wait_for_open_port(993)
    wait_read("montreal", everything)
  '';
}

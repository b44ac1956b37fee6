# Three Estafette nodes in three regions plus a Postfix node, as NixOS VMs.
# Run with: nix build .#checks.x86_64-linux.three-regions
#
# What it shows: the cluster forms from the module's configuration alone
# (derived node ids, the first node writes the layout); a user is created
# and the users file shared; mail sent through the Postfix beside each
# region (services.estafette.postfix) is read over IMAPS from another
# region with Python's imaplib; one region is shut down and delivery and
# reading continue in the two others; it comes back and has caught up.
{ self }:

let
  secret = "6c1c8d3bcbf0d31eeb2e7c7fbd6c51dbc2c9c8e4c4f9a7d2e0d8a1b2c3d4e5f6";
  nodes = [
    { name = "paris"; region = "eu-west"; capacity = "1G"; rpcAddr = "192.168.1.1:3901"; }
    { name = "montreal"; region = "ca-east"; capacity = "1G"; rpcAddr = "192.168.1.2:3901"; }
    { name = "tokyo"; region = "ap-east"; capacity = "1G"; rpcAddr = "192.168.1.3:3901"; }
  ];
  # A test certificate for every node name (IMAPS), made at build time.
  testCert = pkgs: pkgs.runCommand "estafette-test-cert" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj /CN=estafette.test -addext "subjectAltName=DNS:paris,DNS:montreal,DNS:tokyo" \
      -keyout $out/key.pem -out $out/cert.pem
  '';
  estafetteNode = i: { lib, pkgs, ... }:
    let me = builtins.elemAt nodes i; in {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;
      networking.firewall.allowedTCPPorts = [ 25 ];
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        { address = "192.168.1.${toString (i + 1)}"; prefixLength = 24; }
      ];
      environment.etc."estafette-rpc-secret" = { text = secret; mode = "0400"; };
      services.estafette = {
        enable = true;
        nodeName = me.name;
        region = me.region;
        rpc.publicAddr = me.rpcAddr;
        rpc.secretFile = "/etc/estafette-rpc-secret";
        cluster.nodes = nodes;
        fsync = false;
        openFirewall = true;
        listen.imaps = "0.0.0.0:993";
        tls.certFile = "${testCert pkgs}/cert.pem";
        tls.keyFile = "${testCert pkgs}/key.pem";
        # Postfix beside the node, delivering over LMTP to it.
        postfix.enable = true;
        postfix.domains = [ "example.test" ];
      };
    };
in
{
  name = "estafette-three-regions";

  nodes = {
    paris = estafetteNode 0;
    montreal = estafetteNode 1;
    tokyo = estafetteNode 2;
    # The client side: sends over SMTP to each region's Postfix and reads
    # over IMAPS, with Python's smtplib and imaplib.
    mx = { lib, pkgs, ... }: {
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        { address = "192.168.1.10"; prefixLength = 24; }
      ];
      services.postfix.enable = true;
      environment.systemPackages = [ pkgs.python3 ];
      environment.etc."mailtool.py".text = ''
        import imaplib, smtplib, ssl, sys
        def send(host, subject):
            msg = "From: bob@example.org\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\nhello from %s\r\n" % (subject, host)
            with smtplib.SMTP(host, 25, timeout=30) as s:
                s.sendmail("bob@example.org", ["alice@example.test"], msg)
        def subjects(host):
            ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            m = imaplib.IMAP4_SSL(host, 993, ssl_context=ctx)
            m.login("alice", "correct horse battery")
            m.select("INBOX")
            typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            m.logout()
            return sorted(p[1].decode().strip().split(": ", 1)[1] for p in data if isinstance(p, tuple))
        if sys.argv[1] == "send":
            send(sys.argv[2], sys.argv[3])
        else:
            print(" | ".join(subjects(sys.argv[2])))
      '';
    };
  };

  testScript = ''
    import json

    def status(machine):
        out = machine.succeed("estafette cluster status --config /etc/estafette/estafette.toml --json")
        return json.loads(out)

    def wait_healthy(machine, up):
        machine.wait_until_succeeds(
            "estafette cluster status --config /etc/estafette/estafette.toml --json"
            f" | python3 -c 'import json,sys; s=json.load(sys.stdin);"
            f" sys.exit(0 if s[\"layout_version\"] >= 1 and sum(n[\"up\"] for n in s[\"nodes\"]) == {up}"
            " and s[\"partitions_with_quorum\"] == s[\"partitions\"]"
            " and s.get(\"read_version\", 0) == s[\"layout_version\"] else 1)'",
            timeout=120,
        )

    start_all()
    for m in (paris, montreal, tokyo):
        m.wait_for_unit("estafette.service")
    for m in (paris, montreal, tokyo):
        wait_healthy(m, 3)

    s = status(tokyo)
    assert s["replication_factor"] == 3, s
    assert sorted(n["region"] for n in s["nodes"]) == ["ap-east", "ca-east", "eu-west"], s
    print(tokyo.succeed("estafette cluster status --config /etc/estafette/estafette.toml"))

    # A region goes dark: the two others still see a quorum everywhere.
    montreal.shutdown()
    wait_healthy(paris, 2)
    wait_healthy(tokyo, 2)

    # It comes back and rejoins.
    montreal.start()
    montreal.wait_for_unit("estafette.service")
    for m in (paris, montreal, tokyo):
        wait_healthy(m, 3)

    # The hardened unit: not root, state only under /var/lib/estafette.
    paris.succeed("test \"$(systemctl show -p DynamicUser --value estafette)\" = yes")

    # A user, created on one node; every node gets the same users file.
    cfg = "--config /etc/estafette/estafette.toml"
    paris.succeed(f"printf 'correct horse battery\\n' | estafette user add alice --address alice@example.test --password-stdin {cfg}")
    users = paris.succeed("cat /var/lib/estafette/users.toml")
    for m in (montreal, tokyo):
        owner = m.succeed("stat -c %u /var/lib/estafette/users.toml").strip()
        m.succeed(f"cat > /tmp/users.toml <<'EOF'\n{users}\nEOF")
        m.succeed(f"install -m 600 -o {owner} /tmp/users.toml /var/lib/estafette/users.toml && systemctl reload estafette")
        m.wait_until_succeeds(f"estafette user list {cfg} | grep -q alice@example.test", timeout=30)

    mx.wait_for_unit("postfix.service")
    for m in (paris, montreal, tokyo):
        m.wait_for_unit("postfix.service")
        m.wait_for_open_port(993)

    def read(host):
        return mx.succeed(f"python3 /etc/mailtool.py read {host}").strip()

    # Mail through Postfix in each region, read over IMAPS in another.
    for host in ("paris", "montreal", "tokyo"):
        mx.succeed(f"python3 /etc/mailtool.py send {host} via-{host}")
    everything = "via-montreal | via-paris | via-tokyo"
    mx.wait_until_succeeds(f"test \"$(python3 /etc/mailtool.py read tokyo)\" = '{everything}'", timeout=120)
    assert read("paris") == everything, read("paris")

    # A region goes dark: the two others still see a quorum everywhere,
    # and mail keeps flowing in and out through them.
    montreal.shutdown()
    wait_healthy(paris, 2)
    wait_healthy(tokyo, 2)
    mx.succeed("python3 /etc/mailtool.py send paris while-montreal-down")
    everything = "via-montreal | via-paris | via-tokyo | while-montreal-down"
    mx.wait_until_succeeds(f"test \"$(python3 /etc/mailtool.py read tokyo)\" = '{everything}'", timeout=120)

    # It comes back, rejoins, and serves everything, including what
    # arrived while it was away.
    montreal.start()
    montreal.wait_for_unit("estafette.service")
    for m in (paris, montreal, tokyo):
        wait_healthy(m, 3)
    montreal.wait_for_open_port(993)
    mx.wait_until_succeeds(f"test \"$(python3 /etc/mailtool.py read montreal)\" = '{everything}'", timeout=120)
  '';
}

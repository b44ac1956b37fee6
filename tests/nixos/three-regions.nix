# Three Estafette nodes in three regions plus a Postfix node, as NixOS VMs.
# Run with: nix build .#checks.x86_64-linux.three-regions
#
# What it shows today: the cluster forms from the module's configuration
# alone (derived node ids, the first node writes the layout), every node
# sees three healthy regions, one region can be shut down while the other
# two keep a quorum, and it catches up when it returns. Mail delivery
# through Postfix and reading over IMAPS join this script as the LMTP and
# IMAP front ends land.
{ self }:

let
  secret = "6c1c8d3bcbf0d31eeb2e7c7fbd6c51dbc2c9c8e4c4f9a7d2e0d8a1b2c3d4e5f6";
  nodes = [
    { name = "paris"; region = "eu-west"; capacity = "1G"; rpcAddr = "192.168.1.1:3901"; }
    { name = "montreal"; region = "ca-east"; capacity = "1G"; rpcAddr = "192.168.1.2:3901"; }
    { name = "tokyo"; region = "ap-east"; capacity = "1G"; rpcAddr = "192.168.1.3:3901"; }
  ];
  estafetteNode = i: { lib, pkgs, ... }:
    let me = builtins.elemAt nodes i; in {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;
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
      };
    };
in
{
  name = "estafette-three-regions";

  nodes = {
    paris = estafetteNode 0;
    montreal = estafetteNode 1;
    tokyo = estafetteNode 2;
    mx = { lib, ... }: {
      networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
        { address = "192.168.1.10"; prefixLength = 24; }
      ];
      services.postfix.enable = true;
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
            " and s[\"partitions_with_quorum\"] == s[\"partitions\"] else 1)'",
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
    mx.wait_for_unit("postfix.service")
  '';
}

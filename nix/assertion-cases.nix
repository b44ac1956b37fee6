# Configurations the NixOS module must refuse, evaluated by scripts/nixos-eval
# with the harness's lib and stand-ins (nothing is built): for each case, the
# failed assertions' messages. A case whose list is empty means the module
# would accept a configuration that cannot work; scripts/nixos-eval fails then.
#
#   nix-instantiate --eval --strict --json nix/assertion-cases.nix \
#     --arg harness /path/to/nixos-eval-copy --arg project /path/to/estafette
{ harness, project }:

let
  lib = import (harness + "/stubs/lib.nix") { lib = import (harness + "/lib"); };
  pkgs = lib.fix (import (harness + "/stubs/pkgs.nix") { inherit lib; system = "x86_64-linux"; });

  node = name: addr: { inherit name; region = "r-${name}"; capacity = "1G"; rpcAddr = addr; };
  # A minimal working node; each case breaks one thing.
  base = {
    services.estafette = {
      enable = true;
      # Any stand-in package: nothing is built or run.
      package = pkgs.openssl;
      nodeName = "a";
      region = "r-a";
      rpc.secretFile = "/run/keys/secret";
      cluster.replicationFactor = 1;
      cluster.nodes = [ (node "a" "10.0.0.1:3901") ];
      fsync = false;
    };
  };

  failed = extra:
    let
      config = (lib.evalModules {
        modules = [
          (harness + "/stubs/nixos.nix")
          (harness + "/stubs/nixpkgs-module.nix")
          (project + "/nix/eval-stubs/nixos.nix")
          { nixpkgs.system = "x86_64-linux"; }
          (project + "/modules/estafette.nix")
          base
          extra
        ];
      }).config;
    in
    map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
in
{
  # The base itself must pass (else every case below fails for nothing).
  base = failed { };
  # Defect: publicAddr other than the layout's rpcAddr (the binary refuses it).
  publicAddrMismatch = failed { services.estafette.rpc.publicAddr = lib.mkForce "0.0.0.0:3901"; };
  # Defect: IMAP on a public address with no TLS and no plaintext login:
  # LOGINDISABLED without STARTTLS, a listener nobody can log in on.
  plaintextPublicImap = failed { services.estafette.listen.imap = "0.0.0.0:143"; };
  # IMAPS without a certificate.
  imapsWithoutTls = failed { services.estafette.listen.imaps = "0.0.0.0:993"; };
  # This node missing from the layout.
  nodeNotInLayout = failed { services.estafette.nodeName = lib.mkForce "b"; };
  # Postfix hookup without a domain.
  postfixWithoutDomains = failed { services.estafette.postfix.enable = true; };
}

# Stand-ins for the nixpkgs packages the project's VM tests use beyond
# those ../shared/nixos-eval/stubs/pkgs.nix provides. scripts/nixos-eval
# merges this set into a copy of that harness's package set. Each package
# lists the programs its bin/ holds, so the harness can tell whether a VM
# test node has the programs its test script runs.
#
#   base: the harness's package set (its mkPkg is not exported: mkPkg below
#         builds the same shape of fake derivation from base.writeText).
{ lib, base }:

let
  # As ../shared/nixos-eval/stubs/pkgs.nix's mkPkg: a derivation-like
  # attrset (fake store path, nothing built) with `programs`.
  mkPkg = name: { mainProgram ? null, programs ? null, nixosBase ? false }:
    let
      drv = base.writeText name (builtins.toJSON { inherit programs mainProgram; });
    in
    drv // {
      meta = lib.optionalAttrs (mainProgram != null) { inherit mainProgram; };
      programs = if programs != null then programs
        else if mainProgram != null then [ mainProgram ]
        else [ (lib.getName name) ];
      inherit nixosBase;
    };
in
{
  # pkgs/by-name/ip/iproute2: ip, tc (netem), ss, bridge, ...
  iproute2 = mkPkg "iproute2-6.15.0" {
    mainProgram = "ip";
    programs = [ "ip" "tc" "ss" "bridge" "nstat" "rtmon" "ctstat" "lnstat" "rtstat" "genl" "ifstat" "devlink" "rdma" "tipc" "vdpa" "dcb" ];
  };
}

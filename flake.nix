{
  description = "Estafette: a multi-region, encrypted-at-rest IMAP + LMTP mail server on embedded Garage";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # For those who want pkgs.estafette in their own package set; the
      # NixOS module does not need it.
      overlays.default = final: _prev: {
        estafette = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        estafette = pkgs.callPackage ./nix/package.nix { };
        default = estafette;
      });

      # The module, with services.estafette.package defaulting to this
      # flake's package. It sets nothing under nixpkgs.*, so it also works
      # where the package set is read-only (runNixOSTest, nixpkgs.pkgs).
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./modules/estafette.nix ];
        services.estafette.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # Three regions and a Postfix node, as NixOS VMs (needs KVM).
        three-regions = pkgs.testers.runNixOSTest (import ./tests/nixos/three-regions.nix { inherit self; });
        # The README's NixOS example (nix/example.nix) on one VM.
        example = pkgs.testers.runNixOSTest (import ./tests/nixos/example.nix { inherit self; });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt python3 swaks isync ];
        };
      });
    };
}

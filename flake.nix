{
  description = "Estafette: a multi-region, encrypted-at-rest IMAP + LMTP mail server on embedded Garage";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: {
        estafette = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        estafette = pkgs.callPackage ./nix/package.nix { };
        default = estafette;
      });

      nixosModules.default = { ... }: {
        imports = [ ./modules/estafette.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        three-regions = pkgs.testers.runNixOSTest (import ./tests/nixos/three-regions.nix { inherit self; });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt python3 swaks isync ];
        };
      });
    };
}

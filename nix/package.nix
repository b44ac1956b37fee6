# The estafette binary. Garage's C dependencies (LMDB, libsodium, zstd) are
# vendored by their -sys crates, so a C compiler is all the build needs.
{ lib, rustPlatform, python3, isync, openssl }:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "estafette";
  version = cargoToml.package.version;

  # Everything the build and the tests read: tests/nix_module.rs includes
  # the NixOS module, the IMAP and region tests run the Python scripts
  # under tests/.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      ../modules
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The sandbox has loopback networking, so the Store, cluster, LMTP, IMAP
  # and region-failure tests run here, driving these programs: the IMAP,
  # LMTP and region tests run Python scripts, one IMAP test syncs with
  # mbsync, the TLS reload test makes certificates with openssl. A test
  # that needs what the sandbox cannot give (the Postfix test: Postfix and
  # root) is #[ignore]d with its reason; scripts/test runs it with
  # --include-ignored.
  nativeCheckInputs = [
    python3
    isync
    openssl
  ];

  meta = {
    description = "Multi-region, encrypted-at-rest IMAP + LMTP mail server on embedded Garage";
    license = lib.licenses.agpl3Plus;
    mainProgram = "estafette";
    platforms = lib.platforms.linux;
  };
}

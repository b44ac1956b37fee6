# The estafette binary. Garage's C dependencies (LMDB, libsodium, zstd) are
# vendored by their -sys crates, so a C compiler is all the build needs.
{ lib, rustPlatform }:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "estafette";
  version = cargoToml.package.version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The sandbox has loopback networking, so the Store and cluster tests run.
  # Tests that drive external programs (Postfix, mbsync, Dovecot) need the
  # Debian packages scripts/test installs and are skipped here.
  checkFlags = [
    "--skip=postfix"
    "--skip=mbsync"
    "--skip=dovecot"
  ];

  meta = {
    description = "Multi-region, encrypted-at-rest IMAP + LMTP mail server on embedded Garage";
    license = lib.licenses.agpl3Plus;
    mainProgram = "estafette";
    platforms = lib.platforms.linux;
  };
}

# The README's NixOS example (nix/example.nix) on one VM.
# Run with: nix build .#checks.x86_64-linux.example (needs Nix, nixpkgs and
# KVM; on the development machines scripts/nixos-eval only evaluates it).
#
# The VM is the example's paris-1, with the example's address and its
# secrets supplied from /etc. Its two peers do not exist and no ACME CA is
# reachable, so the test checks what one node shows alone: the node starts
# and serves IMAPS with the certificate security.acme put in place
# (self-signed until a CA answers), and Postfix refuses unknown recipients
# and oversized mail as configured.
{ self }:

{
  name = "estafette-example";

  nodes.paris = { lib, pkgs, ... }: {
    imports = [ self.nixosModules.default ../../nix/example.nix ];

    # The example's addresses and secrets, supplied in the VM.
    networking.interfaces.eth1.ipv4.addresses = [{ address = "10.0.0.1"; prefixLength = 24; }];
    environment.etc."estafette-rpc".text = "6c1c8d3bcbf0d31eeb2e7c7fbd6c51dbc2c9c8e4c4f9a7d2e0d8a1b2c3d4e5f6";
    environment.etc."alice-password".text = "alice password";
    environment.etc."bob-password".text = "bob password";
    services.estafette.rpc.secretFile = lib.mkForce "/etc/estafette-rpc";
    services.estafette.users.alice.initialPasswordFile = lib.mkForce "/etc/alice-password";
    services.estafette.users.bob.initialPasswordFile = lib.mkForce "/etc/bob-password";
    # Never ask a real CA from a test.
    security.acme.defaults.server = "https://acme.invalid/directory";

    environment.systemPackages = [ pkgs.openssl ];
  };

  testScript = ''
    paris.wait_for_unit("acme-paris.mail.example.org.service")
    paris.wait_for_unit("estafette.service")
    paris.wait_for_unit("postfix.service")
    paris.wait_for_open_port(993)

    # IMAPS serves the certificate of security.acme.certs."paris.mail.example.org".
    paris.succeed(
        "openssl s_client -connect localhost:993 </dev/null 2>/dev/null"
        " | openssl x509 -noout -subject | grep -q paris.mail.example.org"
    )
    # Reading it from the ACME directory, with the certificate's group.
    paris.succeed("systemctl show -p SupplementaryGroups --value estafette | grep -qw acme")

    # Postfix: unknown recipients refused at RCPT after an LMTP probe, the
    # size limit Estafette's, STARTTLS with the same certificate.
    paris.succeed("postconf -h smtpd_recipient_restrictions | grep -q reject_unverified_recipient")
    paris.succeed("test \"$(postconf -h message_size_limit)\" = 52428800")
    paris.succeed("postconf -h smtpd_tls_chain_files | grep -q /var/lib/acme/paris.mail.example.org/fullchain.pem")
  '';
}

# estafette.nix: the Estafette node of one region (of three), with its
# certificate from Let's Encrypt, Postfix in front of it and declared users.
{ config, ... }:

let
  host = "paris.mail.example.org"; # this machine's DNS name (A/AAAA records)
  certDir = config.security.acme.certs.${host}.directory;
in
{
  services.estafette = {
    enable = true;
    nodeName = "paris-1";
    region = "eu-west";
    rpc.secretFile = "/run/keys/estafette-rpc"; # the same on every node; not in the Nix store
    cluster.nodes = [
      { name = "paris-1"; region = "eu-west"; capacity = "500G"; rpcAddr = "10.0.0.1:3901"; }
      { name = "montreal-1"; region = "ca-east"; capacity = "500G"; rpcAddr = "10.1.0.1:3901"; }
      { name = "tokyo-1"; region = "ap-east"; capacity = "500G"; rpcAddr = "10.2.0.1:3901"; }
    ];
    # IMAP (STARTTLS) on [::]:143 and IMAPS on [::]:993 with this
    # certificate, reloaded without dropping sessions when it is renewed.
    tls.useACMEHost = host;
    # Opens 143, 993 and the RPC port 3901; LMTP and metrics stay on loopback.
    openFirewall = true;
    # Postfix accepts mail for these domains and delivers it over LMTP; it
    # refuses unknown recipients and mail over lmtp.maxMessageSize (50 MiB)
    # at SMTP time.
    postfix.enable = true;
    postfix.domains = [ "example.org" ];
    # Created on first start by whichever region starts first, never
    # overwritten afterwards; more with `estafette user add` on any node.
    users.alice = {
      addresses = [ "alice@example.org" "postmaster@example.org" ];
      quota = "10G";
      initialPasswordFile = "/run/keys/alice-password"; # a systemd credential; not in the store
    };
    users.bob = {
      addresses = [ "bob@example.org" ];
      initialPasswordFile = "/run/keys/bob-password";
    };
  };

  security.acme = {
    acceptTerms = true;
    defaults.email = "postmaster@example.org";
    certs.${host} = {
      # The HTTP-01 challenge, answered by the ACME client itself on port 80.
      listenHTTP = ":80";
      # Postfix offers STARTTLS with the same certificate.
      reloadServices = [ "postfix.service" ];
    };
  };

  services.postfix.settings.main = {
    myhostname = host;
    smtpd_tls_chain_files = [ "${certDir}/key.pem" "${certDir}/fullchain.pem" ];
  };
  systemd.services.postfix = {
    wants = [ "acme-${host}.service" ];
    after = [ "acme-${host}.service" ];
  };

  # SMTP from the world; HTTP for the ACME challenge.
  networking.firewall.allowedTCPPorts = [ 25 80 ];
}

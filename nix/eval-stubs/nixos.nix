# Stand-ins for the NixOS options that Estafette's module, VM tests and
# README example use beyond those ../shared/nixos-eval/stubs/nixos.nix
# declares. scripts/nixos-eval adds this module to a copy of that harness
# (CI's copy of ../shared is read-only and pristine). Types, defaults and
# assertions are copied from nixpkgs, from the files named below; only the
# options the project sets or reads are declared.
#
#   - security.acme.*: nixos/modules/security/acme/default.nix
#     (`inheritableModule` for security.acme.defaults and the inheritable
#     part of security.acme.certs.<name>, `certOpts` for the rest; the
#     module's assertions on acceptTerms, email and the challenge type)
#   - networking.enableIPv6: nixos/modules/tasks/network-interfaces.nix
{ config, lib, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.security.acme;

  # nixos/modules/security/acme/default.nix: inheritableModule. A cert's
  # option defaults to security.acme.defaults.<option> unless the cert sets
  # inheritDefaults = false.
  inheritableModule = isDefaults: { config, ... }:
    let
      defaultAndText = name: default: {
        default = if isDefaults || !config.inheritDefaults then default else cfg.defaults.${name};
        defaultText = if isDefaults then default else lib.literalExpression "config.security.acme.defaults.${name}";
      };
    in
    {
      options = {
        server = mkOption {
          type = types.nullOr types.str;
          inherit (defaultAndText "server" "https://acme-v02.api.letsencrypt.org/directory") default defaultText;
        };
        email = mkOption {
          type = types.nullOr types.str;
          inherit (defaultAndText "email" null) default defaultText;
        };
        group = mkOption {
          type = types.str;
          inherit (defaultAndText "group" "acme") default defaultText;
        };
        reloadServices = mkOption {
          type = types.listOf types.str;
          inherit (defaultAndText "reloadServices" [ ]) default defaultText;
        };
        postRun = mkOption {
          type = types.lines;
          inherit (defaultAndText "postRun" "") default defaultText;
        };
        keyType = mkOption {
          type = types.str;
          inherit (defaultAndText "keyType" "ec256") default defaultText;
        };
        webroot = mkOption {
          type = types.nullOr types.str;
          inherit (defaultAndText "webroot" null) default defaultText;
        };
        listenHTTP = mkOption {
          type = types.nullOr types.str;
          inherit (defaultAndText "listenHTTP" null) default defaultText;
        };
        dnsProvider = mkOption {
          type = types.nullOr types.str;
          inherit (defaultAndText "dnsProvider" null) default defaultText;
        };
        environmentFile = mkOption {
          type = types.nullOr types.path;
          inherit (defaultAndText "environmentFile" null) default defaultText;
        };
        credentialFiles = mkOption {
          type = types.attrsOf types.path;
          inherit (defaultAndText "credentialFiles" { }) default defaultText;
        };
      };
    };

  # nixos/modules/security/acme/default.nix: certOpts (the options used here).
  certOpts = { name, ... }: {
    options = {
      directory = mkOption {
        type = types.str;
        readOnly = true;
        default = "/var/lib/acme/${name}";
        description = "Directory where certificate and other state is stored.";
      };
      domain = mkOption {
        type = types.str;
        default = name;
      };
      extraDomainNames = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      s3Bucket = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      inheritDefaults = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };
in
{
  options = {
    security.acme = {
      acceptTerms = mkOption { type = types.bool; default = false; };
      defaults = mkOption { type = types.submodule (inheritableModule true); default = { }; };
      certs = mkOption {
        type = types.attrsOf (types.submodule [ (inheritableModule false) certOpts ]);
        default = { };
      };
    };

    # nixos/modules/tasks/network-interfaces.nix
    networking.enableIPv6 = mkOption { type = types.bool; default = true; };
  };

  # nixos/modules/security/acme/default.nix: the assertions that decide
  # whether a configuration with certificates evaluates at all.
  config = lib.mkIf (cfg.certs != { }) {
    assertions =
      [
        {
          assertion = cfg.defaults.email != null || lib.all (c: c.email != null) (lib.attrValues cfg.certs);
          message = ''
            You must define `security.acme.certs.<name>.email` or
            `security.acme.defaults.email` to register with the CA.
          '';
        }
        {
          assertion = cfg.acceptTerms;
          message = ''
            You must accept the CA's terms of service before using
            the ACME module by setting `security.acme.acceptTerms`
            to `true`.
          '';
        }
      ]
      ++ lib.mapAttrsToList
        (cert: data: {
          assertion = lib.length (lib.filter (x: x != null) [ data.dnsProvider data.webroot data.listenHTTP data.s3Bucket ]) == 1;
          message = ''
            Exactly one of the options
            `security.acme.certs.${cert}.dnsProvider`,
            `security.acme.certs.${cert}.webroot`,
            `security.acme.certs.${cert}.listenHTTP` and
            `security.acme.certs.${cert}.s3Bucket`
            is required.
          '';
        })
        cfg.certs;
  };
}

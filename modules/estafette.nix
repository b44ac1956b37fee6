# services.estafette: one Estafette node (embedded Garage replica + IMAP +
# LMTP) per machine, one machine per region. Renders
# /etc/estafette/estafette.toml from typed options and runs the node under a
# hardened systemd unit.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.estafette;
  toml = pkgs.formats.toml { };

  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  # Secrets and TLS keys reach the (dynamic) service user as systemd
  # credentials, so their files may stay root-only.
  credDir = "/run/credentials/estafette.service";

  nodeType = types.submodule {
    options = {
      name = mkOption { type = types.str; description = "Node name (unique in the cluster)."; };
      region = mkOption { type = types.str; description = "Region (Garage zone) of the node."; };
      capacity = mkOption {
        type = types.str;
        default = "100G";
        example = "1T";
        description = "Storage capacity the node offers, e.g. \"500G\".";
      };
      rpcAddr = mkOption {
        type = types.str;
        example = "10.0.0.1:3901";
        description = "The node's public RPC address (ip:port).";
      };
    };
  };

  portOf = addr: lib.toInt (lib.last (lib.splitString ":" addr));
  listenAddrs = lib.filter (a: a != null) [ cfg.listen.imap cfg.listen.imaps cfg.listen.lmtp ];

  settings = lib.recursiveUpdate
    ({
      node = {
        name = cfg.nodeName;
        region = cfg.region;
        data_dir = cfg.dataDir;
        metadata_dir = cfg.metadataDir;
        fsync = cfg.fsync;
      };
      rpc = {
        bind = cfg.rpc.bind;
        secret_file = "${credDir}/rpc-secret";
      } // lib.optionalAttrs (cfg.rpc.publicAddr != null) { public_addr = cfg.rpc.publicAddr; }
        // lib.optionalAttrs cfg.rpc.bindOutgoing { bind_outgoing = true; };
      cluster = {
        replication_factor = cfg.cluster.replicationFactor;
        bootstrap_peers = cfg.cluster.bootstrapPeers;
        nodes = map (n: { inherit (n) name region capacity; rpc_addr = n.rpcAddr; }) cfg.cluster.nodes;
      };
      listen = lib.filterAttrs (_: v: v != null) {
        inherit (cfg.listen) imap imaps lmtp metrics;
      };
      users = { file = cfg.usersFile; };
      imap = {
        max_message_size = cfg.imap.maxMessageSize;
        max_connections = cfg.imap.maxConnections;
        allow_plaintext_auth = cfg.imap.allowPlaintextAuth;
      };
    } // lib.optionalAttrs (cfg.tls.certFile != null) {
      tls = {
        cert = "${credDir}/tls-cert";
        key = "${credDir}/tls-key";
      };
    })
    cfg.extraSettings;

  configFile = toml.generate "estafette.toml" settings;
in
{
  options.services.estafette = {
    enable = mkEnableOption "the Estafette mail server node";

    package = mkOption {
      type = types.package;
      default = pkgs.estafette;
      defaultText = literalExpression "pkgs.estafette";
      description = "The estafette package.";
    };

    nodeName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = "This node's name; must be one of `cluster.nodes`.";
    };

    region = mkOption {
      type = types.str;
      example = "eu-west";
      description = "This node's region (Garage zone); must match its entry in `cluster.nodes`.";
    };

    dataDir = mkOption {
      type = types.path;
      default = "/var/lib/estafette/data";
      description = "Where message bodies (Garage data blocks) are stored.";
    };

    metadataDir = mkOption {
      type = types.path;
      default = "/var/lib/estafette/meta";
      description = "Where the metadata database, node key and admin socket live.";
    };

    fsync = mkOption {
      type = types.bool;
      default = true;
      description = "fsync metadata and data writes.";
    };

    rpc = {
      bind = mkOption {
        type = types.str;
        default = "0.0.0.0:3901";
        description = "Address the node-to-node RPC listener binds.";
      };
      publicAddr = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.1:3901";
        description = "Address other nodes reach this one at (default: `rpc.bind`). Must equal this node's `rpcAddr` in `cluster.nodes`.";
      };
      bindOutgoing = mkOption {
        type = types.bool;
        default = false;
        description = "Dial peers from `rpc.bind`'s address rather than the one the kernel picks (hosts with several addresses).";
      };
      secretFile = mkOption {
        type = types.path;
        example = "/run/keys/estafette-rpc";
        description = "File holding the cluster secret (64 hex digits, `openssl rand -hex 32`), the same on every node. Never put the secret in the Nix store.";
      };
    };

    cluster = {
      replicationFactor = mkOption {
        type = types.ints.between 1 7;
        default = 3;
        description = "Copies of every item and block; 3 for three regions.";
      };
      bootstrapPeers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Peers to contact at start (node names or `id@host:port`); default: every other node.";
      };
      nodes = mkOption {
        type = types.listOf nodeType;
        description = "The cluster layout, identical on every node. The first node writes the initial layout.";
      };
    };

    listen = {
      imap = mkOption { type = types.nullOr types.str; default = "0.0.0.0:143"; description = "IMAP (STARTTLS) listener, or null."; };
      imaps = mkOption { type = types.nullOr types.str; default = null; example = "0.0.0.0:993"; description = "IMAP over TLS listener (needs `tls`), or null."; };
      lmtp = mkOption { type = types.nullOr types.str; default = "127.0.0.1:24"; description = "LMTP listener for the local MTA, or null."; };
      metrics = mkOption { type = types.nullOr types.str; default = "127.0.0.1:9187"; description = "Prometheus metrics listener, or null."; };
    };

    imap = {
      maxMessageSize = mkOption { type = types.str; default = "50M"; description = "Largest message APPEND accepts (advertised as APPENDLIMIT)."; };
      maxConnections = mkOption { type = types.ints.positive; default = 5000; description = "Concurrent IMAP connections on this node."; };
      allowPlaintextAuth = mkOption {
        type = types.bool;
        default = false;
        description = "Allow LOGIN/AUTHENTICATE on the plain IMAP listener before STARTTLS (always allowed on loopback).";
      };
    };

    tls = {
      certFile = mkOption { type = types.nullOr types.path; default = null; description = "TLS certificate chain (PEM)."; };
      keyFile = mkOption { type = types.nullOr types.path; default = null; description = "TLS private key (PEM)."; };
    };

    usersFile = mkOption {
      type = types.path;
      default = "/var/lib/estafette/users.toml";
      description = "The users file (logins, password hashes, addresses), managed with `estafette user`.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the RPC port and the IMAP ports in the firewall (not LMTP nor metrics, which are local).";
    };

    extraSettings = mkOption {
      type = toml.type;
      default = { };
      description = "Extra settings merged into estafette.toml.";
    };

    postfix = {
      enable = mkEnableOption "delivery from this host's Postfix to the local LMTP listener";
      domains = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "example.org" ];
        description = "Mail domains Postfix accepts and hands to Estafette.";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.any (n: n.name == cfg.nodeName) cfg.cluster.nodes;
        message = "services.estafette.nodeName (${cfg.nodeName}) must be one of services.estafette.cluster.nodes.";
      }
      {
        assertion = lib.all (n: n.name != cfg.nodeName || n.region == cfg.region) cfg.cluster.nodes;
        message = "services.estafette.region must equal this node's region in cluster.nodes.";
      }
      {
        assertion = cfg.cluster.replicationFactor <= lib.length cfg.cluster.nodes;
        message = "services.estafette.cluster.replicationFactor (${toString cfg.cluster.replicationFactor}) needs at least that many cluster.nodes.";
      }
      {
        assertion = lib.length (lib.unique (map (n: n.name) cfg.cluster.nodes)) == lib.length cfg.cluster.nodes;
        message = "services.estafette.cluster.nodes has two nodes with the same name.";
      }
      {
        assertion = cfg.listen.imaps == null || (cfg.tls.certFile != null && cfg.tls.keyFile != null);
        message = "services.estafette.listen.imaps needs tls.certFile and tls.keyFile.";
      }
      {
        assertion = (cfg.tls.certFile == null) == (cfg.tls.keyFile == null);
        message = "services.estafette.tls.certFile and tls.keyFile go together.";
      }
      {
        assertion = !cfg.postfix.enable || (cfg.listen.lmtp != null && cfg.postfix.domains != [ ]);
        message = "services.estafette.postfix.enable needs listen.lmtp and at least one domain.";
      }
    ];

    environment.systemPackages = [ cfg.package ];
    environment.etc."estafette/estafette.toml".source = configFile;

    systemd.services.estafette = {
      description = "Estafette mail server node (embedded Garage + IMAP + LMTP)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStartPre = "${lib.getExe cfg.package} config check /etc/estafette/estafette.toml";
        ExecStart = "${lib.getExe cfg.package} server --config /etc/estafette/estafette.toml";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "always";
        RestartSec = "2s";
        # Garage's workers may take up to 8 s to stop.
        TimeoutStopSec = "20s";

        DynamicUser = true;
        StateDirectory = "estafette";
        StateDirectoryMode = "0700";
        LoadCredential = [ "rpc-secret:${cfg.rpc.secretFile}" ]
          ++ lib.optionals (cfg.tls.certFile != null) [
            "tls-cert:${cfg.tls.certFile}"
            "tls-key:${cfg.tls.keyFile}"
          ];
        LimitNOFILE = 65536;

        # Hardening: a network daemon that writes only its state directory.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        UMask = "0077";
        # Ports below 1024 (143, 993, 24) need this one capability; nothing else.
        CapabilityBoundingSet =
          if lib.any (a: portOf a < 1024) (listenAddrs ++ [ cfg.rpc.bind ])
          then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        AmbientCapabilities =
          if lib.any (a: portOf a < 1024) (listenAddrs ++ [ cfg.rpc.bind ])
          then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (
      [ (portOf cfg.rpc.bind) ]
      ++ lib.optional (cfg.listen.imap != null) (portOf cfg.listen.imap)
      ++ lib.optional (cfg.listen.imaps != null) (portOf cfg.listen.imaps)
    );

    services.postfix = mkIf cfg.postfix.enable {
      enable = true;
      settings.main = {
        virtual_mailbox_domains = cfg.postfix.domains;
        virtual_transport = "lmtp:inet:${cfg.listen.lmtp}";
      };
    };
  };
}

# services.estafette: one Estafette node (embedded Garage replica + IMAP +
# LMTP) per machine, one machine per region. Renders
# /etc/estafette/estafette.toml from typed options and runs the node under a
# hardened systemd unit.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.estafette;
  toml = pkgs.formats.toml { };

  inherit (lib) mkOption mkEnableOption mkIf types literalExpression literalMD;

  # Secrets and explicit TLS files reach the (dynamic) service user as
  # systemd credentials, so their files may stay root-only.
  credDir = "/run/credentials/estafette.service";
  stateDir = "/var/lib/estafette";

  # The wildcard address: "[::]" takes IPv4 too (dual-stack) where the host
  # has IPv6.
  anyAddr = if config.networking.enableIPv6 then "[::]" else "0.0.0.0";

  # "ip:port" / "[ip6]:port" -> "ip" / "ip6", and the port.
  hostOf = addr: lib.removePrefix "[" (lib.removeSuffix "]" (lib.concatStringsSep ":" (lib.init (lib.splitString ":" addr))));
  portOf = addr: lib.toInt (lib.last (lib.splitString ":" addr));
  isLoopback = addr: let h = hostOf addr; in lib.hasPrefix "127." h || h == "::1";
  listenAddrs = lib.filter (a: a != null) [ cfg.listen.imap cfg.listen.imaps cfg.listen.lmtp cfg.listen.metrics ];
  publicImap = lib.filter (a: a != null && !isLoopback a) [ cfg.listen.imap cfg.listen.imaps ];

  # This node's entry in the layout (null when nodeName is not in it: an
  # assertion says so).
  me = lib.findFirst (n: n.name == cfg.nodeName) null cfg.cluster.nodes;

  # TLS: the certificate of security.acme.certs.<useACMEHost>, read where
  # the ACME client writes it (so a renewal reaches the running node on
  # reload), or explicit files passed as credentials.
  acmeHost = cfg.tls.useACMEHost;
  acmeCert = config.security.acme.certs.${acmeHost};
  tlsEnabled = acmeHost != null || cfg.tls.certFile != null;
  tlsSettings =
    if acmeHost != null then {
      cert = "${acmeCert.directory}/fullchain.pem";
      key = "${acmeCert.directory}/key.pem";
    } else {
      cert = "${credDir}/tls-cert";
      key = "${credDir}/tls-key";
    };

  # Sizes are bytes in Nix (exact for Postfix, which counts bytes); the
  # TOML gets "<n>MiB" when it is a whole number of MiB (bytesize parses
  # "MiB" as 2^20, "M" as 10^6), else the byte count.
  MiB = 1024 * 1024;
  sizeString = n: if lib.mod n MiB == 0 then "${toString (n / MiB)}MiB" else toString n;

  # Writable directories. Those outside /var/lib/estafette need
  # ReadWritePaths under ProtectSystem=strict; those under /var/lib are
  # also state directories, which systemd creates for the dynamic user.
  dataDirs = lib.unique [ (toString cfg.dataDir) (toString cfg.metadataDir) ];
  inStateDir = p: p == stateDir || lib.hasPrefix "${stateDir}/" p;
  outsideDirs = lib.filter (p: !inStateDir p) dataDirs;
  extraStateDirs = map (lib.removePrefix "/var/lib/") (lib.filter (lib.hasPrefix "/var/lib/") outsideDirs);
  unmanagedDirs = lib.filter (p: !lib.hasPrefix "/var/lib/" p) outsideDirs;

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
        description = "The node's public RPC address (ip:port): where the other nodes reach it.";
      };
    };
  };

  userType = types.submodule {
    options = {
      addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "alice@example.org" "postmaster@example.org" ];
        description = "Addresses delivering to this user (set when the user is created).";
      };
      quota = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10G";
        description = "Storage quota, or null for none. Kept as declared for users created from this option.";
      };
      homeRegion = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The region whose nodes sequence this user's mailboxes.";
      };
      initialPasswordFile = mkOption {
        type = types.path;
        example = "/run/keys/alice-password";
        description = ''
          File holding the user's first password (first line), passed to the
          service as a systemd credential. Used only to create a missing
          user: an existing user's password is never overwritten (change it
          with `estafette user passwd`). Keep it out of the Nix store.
        '';
      };
    };
  };

  # Credentials for declared users: `user-<login>`.
  userCredential = login: "user-${login}";

  settings = lib.recursiveUpdate
    ({
      node = {
        name = cfg.nodeName;
        region = cfg.region;
        data_dir = toString cfg.dataDir;
        metadata_dir = toString cfg.metadataDir;
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
      lmtp = {
        max_message_size = sizeString cfg.lmtp.maxMessageSize;
      };
      imap = {
        max_message_size = cfg.imap.maxMessageSize;
        max_connections = cfg.imap.maxConnections;
        allow_plaintext_auth = cfg.imap.allowPlaintextAuth;
      };
    } // lib.optionalAttrs (cfg.importUsersFile != null || cfg.users != { }) {
      users = lib.optionalAttrs (cfg.importUsersFile != null) {
        import_file = "${credDir}/users-import";
      } // lib.optionalAttrs (cfg.users != { }) {
        declare = lib.mapAttrsToList (name: u: {
          login = name;
          inherit (u) addresses;
          initial_password_file = "${credDir}/${userCredential name}";
        } // lib.optionalAttrs (u.quota != null) { inherit (u) quota; }
          // lib.optionalAttrs (u.homeRegion != null) { home_region = u.homeRegion; }) cfg.users;
      };
    } // lib.optionalAttrs tlsEnabled {
      tls = tlsSettings;
    })
    cfg.extraSettings;

  configFile = toml.generate "estafette.toml" settings;

  # What Postfix does with a message larger than this when it has no
  # message_size_limit of its own (postconf -d).
  postfixDefaultSizeLimit = 10240000;
  postfixSizeLimit = config.services.postfix.settings.main.message_size_limit;
in
{
  options.services.estafette = {
    enable = mkEnableOption "the Estafette mail server node";

    package = lib.mkPackageOption pkgs "estafette" { };

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
      default = "${stateDir}/data";
      description = ''
        Where message bodies (Garage data blocks) are stored. A directory
        under /var/lib is created for the service (with the default
        `DynamicUser`); elsewhere, it must exist and belong to the user the
        service runs as (set `systemd.services.estafette.serviceConfig` to
        a static `User`/`Group` and `DynamicUser = false`).
      '';
    };

    metadataDir = mkOption {
      type = types.path;
      default = "${stateDir}/meta";
      description = "Where the metadata database, node key and admin socket live (see `dataDir` for paths outside /var/lib).";
    };

    fsync = mkOption {
      type = types.bool;
      default = true;
      description = "fsync metadata and data writes.";
    };

    rpc = {
      bind = mkOption {
        type = types.str;
        default = "${anyAddr}:3901";
        defaultText = literalExpression ''if config.networking.enableIPv6 then "[::]:3901" else "0.0.0.0:3901"'';
        description = "Address the node-to-node RPC listener binds.";
      };
      publicAddr = mkOption {
        type = types.nullOr types.str;
        default = if me == null then null else me.rpcAddr;
        defaultText = literalMD "this node's `rpcAddr` in `cluster.nodes`";
        example = "10.0.0.1:3901";
        description = ''
          Address other nodes reach this one at. It must equal this node's
          `rpcAddr` in `cluster.nodes`, which is its default: there is no
          need to set it.
        '';
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
      imap = mkOption {
        type = types.nullOr types.str;
        default = if tlsEnabled then "${anyAddr}:143" else "127.0.0.1:143";
        defaultText = literalMD ''
          `"[::]:143"` (`"0.0.0.0:143"` without IPv6) when TLS is configured
          (`tls.useACMEHost` or `tls.certFile`), else `"127.0.0.1:143"`
        '';
        description = ''
          IMAP listener (STARTTLS), or null. Without TLS, a client can only
          log in on loopback (or with `imap.allowPlaintextAuth`), so it
          listens on loopback unless TLS is configured.
        '';
      };
      imaps = mkOption {
        type = types.nullOr types.str;
        default = if tlsEnabled then "${anyAddr}:993" else null;
        defaultText = literalMD ''
          `"[::]:993"` (`"0.0.0.0:993"` without IPv6) when TLS is configured, else null
        '';
        description = "IMAP over TLS listener (needs `tls`), or null.";
      };
      lmtp = mkOption { type = types.nullOr types.str; default = "127.0.0.1:24"; description = "LMTP listener for the local MTA, or null."; };
      metrics = mkOption {
        type = types.nullOr types.str;
        default = "127.0.0.1:10190";
        description = "Prometheus metrics listener (`GET /metrics`), or null.";
      };
    };

    lmtp = {
      maxMessageSize = mkOption {
        type = types.ints.positive;
        default = 50 * MiB;
        defaultText = literalExpression "50 * 1024 * 1024";
        example = literalExpression "100 * 1024 * 1024";
        description = ''
          Largest message LMTP accepts, in bytes (advertised as SIZE; larger
          mail gets 552). With `postfix.enable` it is also Postfix's
          `message_size_limit`, so that Postfix refuses at SMTP time what
          Estafette would refuse at delivery.
        '';
      };
    };

    imap = {
      maxMessageSize = mkOption { type = types.str; default = "50MiB"; description = "Largest message APPEND accepts (advertised as APPENDLIMIT), e.g. \"50MiB\"."; };
      maxConnections = mkOption { type = types.ints.positive; default = 5000; description = "Concurrent IMAP connections on this node."; };
      allowPlaintextAuth = mkOption {
        type = types.bool;
        default = false;
        description = "Allow LOGIN/AUTHENTICATE on the plain IMAP listener before STARTTLS (always allowed on loopback).";
      };
    };

    tls = {
      useACMEHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "mail.example.org";
        description = ''
          Serve the certificate of `security.acme.certs.<name>` (declare the
          certificate there: its challenge, email, ...). The node reads
          `fullchain.pem` and `key.pem` from the certificate's directory
          (the service gets the certificate's group as a supplementary
          group: give the certificate a group of its own to keep other
          keys away from it), and the certificate's `reloadServices` gets
          `estafette.service`: after a renewal the node reloads (SIGHUP) and
          serves the new certificate without dropping sessions.
        '';
      };
      certFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = ''
          TLS certificate chain (PEM), leaf first; with `keyFile`, instead of
          `useACMEHost`. Both are passed as systemd credentials, copied when
          the service starts: after replacing them, restart the service.
        '';
      };
      keyFile = mkOption { type = types.nullOr types.path; default = null; description = "TLS private key (PEM) for `certFile`."; };
    };

    users = mkOption {
      type = types.attrsOf userType;
      default = { };
      example = literalExpression ''
        { alice = { addresses = [ "alice@example.org" ]; quota = "10G"; initialPasswordFile = "/run/keys/alice"; }; }
      '';
      description = ''
        Users created at start if missing, in the cluster-wide directory
        (whichever node starts first creates them; every region knows them
        within a second). Users can also be managed from any node with
        `estafette user`. Removing a user here does not delete them or
        their mail: `estafette user delete` does.
      '';
    };

    importUsersFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/var/lib/estafette/users.toml";
      description = ''
        A users file from before the replicated directory (Estafette < 0.2),
        imported once into the cluster, its salt kept so that user ids and
        mail stay; after that it is no longer read and can be removed.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the RPC port and the IMAP ports that listen beyond loopback (not LMTP nor metrics, which are local).";
    };

    extraSettings = mkOption {
      type = toml.type;
      default = { };
      description = "Extra settings merged into estafette.toml.";
    };

    postfix = {
      enable = mkEnableOption ''
        delivery from this host's Postfix to the local LMTP listener: Postfix
        accepts mail for `postfix.domains`, refuses unknown recipients at SMTP
        time by asking Estafette over LMTP (`reject_unverified_recipient`), and
        refuses mail larger than `lmtp.maxMessageSize`
      '';
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
        assertion = me != null;
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
        assertion = me == null || cfg.rpc.publicAddr == me.rpcAddr;
        message = ''
          services.estafette.rpc.publicAddr (${toString cfg.rpc.publicAddr}) must equal this node's
          rpcAddr in services.estafette.cluster.nodes (${if me == null then "" else me.rpcAddr}): the other
          nodes reach it there, and estafette refuses to start otherwise. Leave
          rpc.publicAddr unset: it defaults to that rpcAddr.
        '';
      }
      {
        assertion = (cfg.tls.certFile == null) == (cfg.tls.keyFile == null);
        message = "services.estafette.tls.certFile and tls.keyFile go together.";
      }
      {
        assertion = acmeHost == null || cfg.tls.certFile == null;
        message = "services.estafette.tls.useACMEHost and tls.certFile/keyFile exclude each other: choose one.";
      }
      {
        assertion = cfg.listen.imaps == null || tlsEnabled;
        message = "services.estafette.listen.imaps needs TLS: set tls.useACMEHost, or tls.certFile and tls.keyFile.";
      }
      {
        assertion = cfg.listen.imap == null || isLoopback cfg.listen.imap || tlsEnabled || cfg.imap.allowPlaintextAuth;
        message = ''
          services.estafette.listen.imap (${toString cfg.listen.imap}) listens beyond loopback without TLS:
          clients there can neither log in (LOGINDISABLED) nor start TLS. Configure
          TLS (services.estafette.tls.useACMEHost, or tls.certFile and tls.keyFile),
          or bind IMAP to loopback (listen.imap = "127.0.0.1:143") or set it to null.
        '';
      }
      {
        assertion = unmanagedDirs == [ ] || !(config.systemd.services.estafette.serviceConfig.DynamicUser or false);
        message = ''
          services.estafette.dataDir/metadataDir ${lib.concatStringsSep ", " unmanagedDirs} are outside /var/lib:
          the service's dynamic user cannot own a directory there. Use a directory
          under /var/lib (e.g. a mount point at /var/lib/estafette/data), or run the
          service as a static user: systemd.services.estafette.serviceConfig =
          { DynamicUser = false; User = "..."; Group = "..."; }, with the directory
          belonging to it.
        '';
      }
      {
        assertion = !cfg.postfix.enable || (cfg.listen.lmtp != null && cfg.postfix.domains != [ ]);
        message = "services.estafette.postfix.enable needs listen.lmtp and at least one domain.";
      }
      {
        assertion =
          let limit = if postfixSizeLimit == null then postfixDefaultSizeLimit else postfixSizeLimit; in
          !cfg.postfix.enable || (limit != 0 && limit <= cfg.lmtp.maxMessageSize);
        message = ''
          services.postfix.settings.main.message_size_limit (${toString postfixSizeLimit}) lets Postfix accept
          mail larger than services.estafette.lmtp.maxMessageSize (${toString cfg.lmtp.maxMessageSize}), which
          Estafette then refuses and Postfix bounces: set lmtp.maxMessageSize instead.
        '';
      }
    ];

    warnings = lib.optional
      (cfg.listen.imap != null && !isLoopback cfg.listen.imap && !tlsEnabled && cfg.imap.allowPlaintextAuth)
      "services.estafette: IMAP on ${cfg.listen.imap} has no TLS and allows plaintext login: passwords cross the network in clear.";

    environment.systemPackages = [ cfg.package ];
    environment.etc."estafette/estafette.toml".source = configFile;

    systemd.services.estafette = {
      description = "Estafette mail server node (embedded Garage + IMAP + LMTP)";
      wantedBy = [ "multi-user.target" ];
      # acme-<cert>.service puts a (self-signed, until the CA has answered)
      # certificate in place.
      after = [ "network-online.target" ] ++ lib.optional (acmeHost != null) "acme-${acmeHost}.service";
      wants = [ "network-online.target" ] ++ lib.optional (acmeHost != null) "acme-${acmeHost}.service";
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStartPre = "${lib.getExe cfg.package} config check /etc/estafette/estafette.toml";
        ExecStart = "${lib.getExe cfg.package} server --config /etc/estafette/estafette.toml";
        # Reloads the TLS certificate from [tls] cert/key; sessions stay.
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "always";
        RestartSec = "2s";
        # Garage's workers may take up to 8 s to stop.
        TimeoutStopSec = "20s";

        DynamicUser = lib.mkDefault true;
        StateDirectory = [ "estafette" ] ++ extraStateDirs;
        StateDirectoryMode = "0700";
        LoadCredential = [ "rpc-secret:${cfg.rpc.secretFile}" ]
          ++ lib.mapAttrsToList (login: u: "${userCredential login}:${u.initialPasswordFile}") cfg.users
          ++ lib.optional (cfg.importUsersFile != null) "users-import:${cfg.importUsersFile}"
          ++ lib.optionals (cfg.tls.certFile != null) [
            "tls-cert:${cfg.tls.certFile}"
            "tls-key:${cfg.tls.keyFile}"
          ];
        LimitNOFILE = 65536;

        # Hardening: a network daemon that writes only its data directories.
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
      } // lib.optionalAttrs (outsideDirs != [ ]) {
        ReadWritePaths = outsideDirs;
      } // lib.optionalAttrs (acmeHost != null) {
        # Reads the certificate's key (mode 640, group of the certificate).
        SupplementaryGroups = [ acmeCert.group ];
      };
    };

    security.acme.certs = lib.optionalAttrs (acmeHost != null) {
      ${acmeHost}.reloadServices = [ "estafette.service" ];
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (
      [ (portOf cfg.rpc.bind) ] ++ map portOf publicImap
    );

    services.postfix = mkIf cfg.postfix.enable {
      enable = true;
      settings.main = {
        virtual_mailbox_domains = cfg.postfix.domains;
        virtual_transport = "lmtp:inet:${cfg.listen.lmtp}";
        # Refuse at SMTP time what Estafette would refuse at delivery.
        message_size_limit = lib.mkDefault cfg.lmtp.maxMessageSize;
        # Unknown recipients are refused at RCPT, not bounced after LMTP's
        # 550 (backscatter): Postfix asks Estafette with an LMTP probe
        # (MAIL, RCPT, no DATA), which answers 550 5.1.1 only for an address
        # its replicated directory really lacks and 4xx while it cannot
        # know. The probe results are cached; negative ones are not, so a
        # user added a moment ago is not refused. Mail from mynetworks and
        # relaying keep Postfix's rules (reject_unauth_destination first).
        smtpd_recipient_restrictions = lib.mkDefault [
          "permit_mynetworks"
          "reject_unauth_destination"
          "reject_unverified_recipient"
        ];
        unverified_recipient_reject_code = lib.mkDefault 550;
        address_verify_negative_cache = lib.mkDefault false;
      };
    };
  };
}

# services.flint: flint's first-boot join and health units on a NixOS node.
#
# `settings` is cluster-config.json itself (docs/configuration.md); the typed options fill it in.
# That file holds no secret, only the names of credentials: every secret (client key, join token,
# IAM bootstrap token) stays in a file outside the Nix store and reaches flint through systemd's
# LoadCredential=, so it is never copied into the world-readable store.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.flint;
  inherit (lib) mkEnableOption mkOption mkIf mkMerge types optionalAttrs filterAttrs;

  notInStore = path: !(lib.hasPrefix builtins.storeDir (toString path));

  # Secrets are loaded as credentials under these names; the config refers to them by name,
  # relative to $CREDENTIALS_DIRECTORY.
  credentials =
    { "cluster-config.json" = configFile; }
    // optionalAttrs (cfg.tls.caFile != null) { "ca.pem" = cfg.tls.caFile; }
    // optionalAttrs (cfg.tls.certFile != null) { "node.pem" = cfg.tls.certFile; }
    // optionalAttrs (cfg.tls.keyFile != null) { "node-key.pem" = cfg.tls.keyFile; }
    // optionalAttrs (cfg.joinTokenFile != null) { "join-token" = cfg.joinTokenFile; }
    // optionalAttrs (cfg.iam.bootstrapTokenFile != null) { "iam-bootstrap-token" = cfg.iam.bootstrapTokenFile; }
    // optionalAttrs (cfg.iam.adminPublicKeyFile != null) { "iam-admin.pub" = cfg.iam.adminPublicKeyFile; };

  dropNulls = filterAttrs (_: v: v != null);

  serviceSection = s: dropNulls {
    leader_url = s.leaderUrl;
    peers = if s.peers == [ ] then null else s.peers;
    raft_addr = s.raftAddr;
    local_url = s.localUrl;
  };

  settingsFormat = pkgs.formats.json { };

  # The typed options' fields of cluster-config.json, each one a default that `settings` overrides.
  typedSettings = dropNulls {
    node_id = cfg.nodeId;
    bootstrap = cfg.bootstrap;
    leader_url = cfg.leaderUrl;
    raft_addr = cfg.raftAddr;
    peers = cfg.peers;
    allow_plaintext = cfg.allowPlaintext;
    report_url = cfg.reportUrl;
    tls = if cfg.tls.caFile == null then null else dropNulls {
      ca = "ca.pem";
      cert = if cfg.tls.certFile == null then null else "node.pem";
      key = if cfg.tls.keyFile == null then null else "node-key.pem";
    };
    join_token_file = if cfg.joinTokenFile == null then null else "join-token";
    timeouts = { inherit (cfg.timeouts) total request connect; };
    chainfire = if builtins.elem "chainfire" cfg.join then serviceSection cfg.chainfire else null;
    flaredb = if builtins.elem "flaredb" cfg.join then serviceSection cfg.flaredb else null;
    etcd = if builtins.elem "etcd" cfg.join then serviceSection cfg.etcd // dropNulls {
      peer_url = cfg.etcd.peerUrl;
      initial_cluster = cfg.etcd.initialCluster;
    } else null;
    iam = if !cfg.iam.setup then null else dropNulls {
      url = cfg.iam.url;
      org = cfg.iam.org;
      admin = { name = cfg.iam.adminName; public_key_file = "iam-admin.pub"; };
      bootstrap_token_file = "iam-bootstrap-token";
    };
  };

  # Checked by flint itself when the system is built, so that a bad setting fails the build with
  # flint's own message instead of every unit at first boot. The files it names are credentials,
  # there only once a unit starts: --config-only leaves them unopened.
  configFile = pkgs.runCommand "cluster-config.json"
    { rendered = settingsFormat.generate "cluster-config.json" cfg.settings; } ''
    ${cfg.package}/bin/flint config check --config-only "$rendered"
    cp "$rendered" "$out"
  '';

  serviceOptions = name: port: {
    leaderUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "${name}'s URL asked first; null: the top-level leaderUrl (on port ${toString port}).";
    };
    peers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More ${name} URLs to try when the leader does not answer.";
    };
    raftAddr = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "This node's ${name} Raft address; null: the top-level raftAddr (port ${toString (port + 1)}).";
    };
    localUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "This node's own ${name} API, waited for before the join.";
    };
  };

  # The sandbox of systemd/*.service, from systemd/sandbox.conf: root without any capability (it
  # reads root-owned secrets), a read-only system, no devices, a system call filter. Each unit adds
  # the one place it writes.
  hardening = import ./sandbox.nix { inherit lib; } // {
    LoadCredential = lib.mapAttrsToList (name: path: "${name}:${toString path}") credentials;
  };

  # The join units write their markers and etcd.env in /var/lib/flint.
  joinSandbox = hardening // {
    StateDirectory = "flint";
    StateDirectoryMode = "0700";
  };

  # The health units write only the textfile, into node_exporter's folder (created by the
  # tmpfiles rule below when missing); flint gives the file 0644 whatever the umask.
  textfile = "${cfg.healthCheck.textfileDir}/cluster-health.prom";
  healthSandbox = hardening // {
    ReadWritePaths = [ "-${cfg.healthCheck.textfileDir}" ];
  };

  joinUnit = { description, marker, args, after ? [ ], requires ? [ ], before ? [ ] }: {
    inherit description after requires before;
    wants = [ "network-online.target" ];
    wantedBy = [ "multi-user.target" ];
    unitConfig = {
      ConditionPathExists = "!/var/lib/flint/${marker}";
      StartLimitIntervalSec = "1h";
      StartLimitBurst = 6;
    };
    serviceConfig = joinSandbox // {
      Type = "oneshot";
      RemainAfterExit = true;
      NotifyAccess = "main";
      ExecStart = "${cfg.package}/bin/flint ${args}";
      TimeoutStartSec = "11min";
      Restart = "on-failure";
      RestartSec = "30s";
      RestartPreventExitStatus = "64 65 77 78 238 243";
    };
  };
in
{
  options.services.flint = {
    enable = mkEnableOption "flint's first-boot cluster join and health check units";

    package = lib.mkPackageOption pkgs "flint" {
      extraDescription = "nixpkgs has none: nixos-module/overlay.nix adds it, or set this option.";
    };

    join = mkOption {
      type = types.listOf (types.enum [ "chainfire" "flaredb" "etcd" ]);
      default = [ "chainfire" "flaredb" ];
      description = "The clusters this node joins at first boot, each by its own unit.";
    };

    nodeId = mkOption {
      type = types.strMatching "[A-Za-z0-9._-]{1,63}";
      description = "This node's name in every cluster.";
    };
    bootstrap = mkOption {
      type = types.bool;
      default = false;
      description = "Whether this node is one of the initial members (nothing to add, only wait for a leader).";
    };
    leaderUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://node01.example.com:2379";
      description = "The admin URL asked first (chainfire's; flaredb's is the same host on port 2479).";
    };
    raftAddr = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.200.13:2380";
      description = "This node's Raft address (chainfire's; flaredb's is the same host on port 2480).";
    };
    peers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More admin URLs to try when the leader does not answer.";
    };
    allowPlaintext = mkOption {
      type = types.bool;
      default = false;
      description = "Allow plain http to hosts other than loopback.";
    };
    reportUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://10.0.200.2:8443/api/reports";
      description = "Where each first-boot unit reports its outcome: a boot server's /api/reports (services.flint-boot.reports). https, with tls.certFile and tls.keyFile: the boot server knows the node by its client certificate. null: no reports.";
    };

    tls = {
      caFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "The cluster CA (PEM). Required for https URLs.";
      };
      certFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "This node's client certificate (PEM), for mTLS.";
      };
      keyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/etc/nixos/secrets/node-key.pem";
        description = "This node's client key: a path outside the Nix store, mode 0600, passed as a credential.";
      };
    };
    joinTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/etc/nixos/secrets/join-token";
      description = "File holding the admin APIs' bearer token: outside the Nix store, mode 0600.";
    };

    timeouts = {
      total = mkOption { type = types.str; default = "10m"; description = "How long a join may take in all."; };
      request = mkOption { type = types.str; default = "10s"; description = "One HTTP request."; };
      connect = mkOption { type = types.str; default = "5s"; description = "One TCP connect."; };
    };

    chainfire = serviceOptions "chainfire" 2379;
    flaredb = serviceOptions "flaredb" 2479;
    etcd = serviceOptions "etcd" 2379 // {
      peerUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "This node's etcd peer URL; null: {scheme of leaderUrl}://{raftAddr}.";
      };
      initialCluster = mkOption {
        type = types.nullOr (types.attrsOf types.str);
        default = null;
        example = { node01 = "https://10.0.200.11:2380"; node02 = "https://10.0.200.12:2380"; node03 = "https://10.0.200.13:2380"; };
        description = ''
          On a bootstrap node: the initial members' peer URLs by name, this node among them.
          flint writes them to etcd.env before etcd starts; null: etcd's own settings hold them.
        '';
      };
    };

    iam = {
      setup = mkOption {
        type = types.bool;
        default = true;
        description = "Run IAM's initial setup (first organization and admin) after flaredb has joined.";
      };
      url = mkOption { type = types.nullOr types.str; default = null; description = "This node's IAM; null: port 8080 on loopback."; };
      org = mkOption { type = types.nullOr types.str; default = null; description = "The first organization's name."; };
      adminName = mkOption { type = types.nullOr types.str; default = null; description = "The first admin's name."; };
      adminPublicKeyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "The first admin's PEM public key (never a private key).";
      };
      bootstrapTokenFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "IAM's bootstrap token: outside the Nix store, mode 0600.";
      };
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = { timeouts.total = "20m"; expected_members = 3; };
      description = ''
        cluster-config.json, every field as docs/configuration.md documents it: checked by
        `flint config check --config-only` when the system is built. The typed options above set
        their fields here as defaults; a field set here wins over them, and fields they lack
        (`expected_members`, the sections' `paths`, ...) are set here. File fields name
        credentials (`ca.pem`, `node.pem`, `node-key.pem`, `join-token`, `iam-admin.pub`,
        `iam-bootstrap-token`), loaded by the typed `*File` options; the secrets never belong here.
      '';
    };

    healthCheck = {
      enable = mkOption { type = types.bool; default = true; description = "Run cluster-health-check at first boot and a periodic check for node_exporter."; };
      interval = mkOption { type = types.str; default = "1min"; description = "How often the periodic check runs."; };
      textfileDir = mkOption {
        # Absolute, and nothing systemd would split (space) or expand (%) in the units' lines.
        type = types.strMatching "/[^[:space:]%]*";
        default = "/var/lib/prometheus/node-exporter";
        example = "/var/lib/prometheus-node-exporter-text-files";
        description = ''
          node_exporter's textfile folder, where the health units write cluster-health.prom (mode 0644,
          atomically) and the only path they may write. Point node_exporter's
          `--collector.textfile.directory` here (on NixOS through
          `services.prometheus.exporters.node.extraFlags`). Created (root, 0755) when missing; an
          existing folder must be writable by root and readable by node_exporter's user.
        '';
      };
    };
  };

  config = mkIf cfg.enable {
    services.flint.settings = lib.mapAttrsRecursive (_: lib.mkDefault) typedSettings;

    assertions = [
      {
        assertion = lib.all notInStore (lib.filter (p: p != null) [ cfg.tls.keyFile cfg.joinTokenFile cfg.iam.bootstrapTokenFile ]);
        message = "services.flint: keyFile, joinTokenFile and iam.bootstrapTokenFile must be paths outside the Nix store (give them as strings, not Nix paths): the store is readable by every user.";
      }
      {
        assertion = !cfg.iam.setup || (cfg.iam.org != null && cfg.iam.adminName != null && cfg.iam.adminPublicKeyFile != null && cfg.iam.bootstrapTokenFile != null);
        message = "services.flint.iam: setup needs org, adminName, adminPublicKeyFile and bootstrapTokenFile.";
      }
      {
        assertion = cfg.leaderUrl != null || lib.all (s: cfg.${s}.leaderUrl != null) cfg.join;
        message = "services.flint: set leaderUrl, or leaderUrl in every joined service.";
      }
    ];

    environment.systemPackages = [ cfg.package ];

    systemd.services = mkMerge [
      (mkIf (builtins.elem "chainfire" cfg.join) {
        chainfire-cluster-join = joinUnit {
          description = "Join this node to the chainfire cluster (flint)";
          marker = ".chainfire-joined";
          args = "join chainfire";
          after = [ "chainfire.service" "network-online.target" ];
          requires = [ "chainfire.service" ];
          before = [ "flaredb.service" ];
        };
      })
      (mkIf (builtins.elem "flaredb" cfg.join) {
        flaredb-cluster-join = joinUnit {
          description = "Join this node to the flaredb cluster (flint)";
          marker = ".flaredb-joined";
          args = "join flaredb";
          after = [ "flaredb.service" "chainfire-cluster-join.service" "network-online.target" ];
          requires = [ "flaredb.service" ];
          before = [ "iam.service" ];
        };
      })
      (mkIf cfg.iam.setup {
        iam-initial-setup = joinUnit {
          description = "IAM initial setup: the cluster's first organization and admin (flint)";
          marker = ".iam-setup-done";
          args = "iam-setup";
          after = [ "iam.service" "flaredb-cluster-join.service" "network-online.target" ];
          requires = [ "iam.service" ];
        };
      })
      (mkIf (builtins.elem "etcd" cfg.join) {
        etcd-cluster-join = joinUnit {
          description = "Add this node to the etcd cluster as a learner and write etcd.env (flint)";
          marker = ".etcd-joined";
          args = "join etcd --phase add";
          after = [ "network-online.target" ];
          before = [ "etcd.service" ];
        };
        etcd-cluster-promote = joinUnit {
          description = "Promote this node's etcd learner to a voting member (flint)";
          marker = ".etcd-joined";
          args = "join etcd --phase promote";
          after = [ "etcd.service" "etcd-cluster-join.service" ];
          requires = [ "etcd.service" ];
        };
        etcd.serviceConfig.EnvironmentFile = [ "-/var/lib/flint/etcd.env" ];
      })
      (mkIf cfg.healthCheck.enable {
        cluster-health-check = {
          description = "Cluster health validation after first boot (flint)";
          after = [ "chainfire-cluster-join.service" "flaredb-cluster-join.service" "iam-initial-setup.service" "etcd-cluster-promote.service" ];
          wantedBy = [ "multi-user.target" ];
          unitConfig = { StartLimitIntervalSec = "1h"; StartLimitBurst = 10; };
          serviceConfig = healthSandbox // {
            Type = "oneshot";
            RemainAfterExit = true;
            # The deployment flow's validation writes and reads back once, at first boot; the
            # periodic check below writes nothing.
            # --wait: peers still starting are waited for, up to timeouts.total.
            ExecStart = "${cfg.package}/bin/flint health --wait --write-check --textfile ${textfile}";
            NotifyAccess = "main";
            Restart = "on-failure";
            RestartSec = "30s";
            RestartPreventExitStatus = "64 65 77 78 238 243";
            TimeoutStartSec = "11min";
          };
        };
        flint-health = {
          description = "Periodic cluster health check for node_exporter's textfile collector (flint)";
          serviceConfig = healthSandbox // {
            Type = "oneshot";
            ExecStart = "${cfg.package}/bin/flint health --textfile ${textfile}";
            SuccessExitStatus = "1";
            TimeoutStartSec = "2min";
          };
        };
      })
    ];

    # A node without node_exporter still runs the health units: the folder exists. An existing
    # one keeps its mode and owner.
    systemd.tmpfiles.rules = lib.optional cfg.healthCheck.enable "d ${cfg.healthCheck.textfileDir} - - - -";

    systemd.timers = mkIf cfg.healthCheck.enable {
      flint-health = {
        description = "Check the cluster's health periodically (flint)";
        wantedBy = [ "timers.target" ];
        timerConfig = { OnBootSec = "2min"; OnUnitActiveSec = cfg.healthCheck.interval; AccuracySec = "10s"; };
      };
    };
  };
}

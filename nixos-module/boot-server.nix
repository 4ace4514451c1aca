# services.flint-boot: the stateless boot server of the pre-install phase (HTTP for iPXE scripts,
# kernels and initrds; TFTP for the iPXE binaries; ProxyDHCP beside the site's own DHCP server).
# It serves no secret: the inventory and the images are public by design (SECURITY.md). With
# reports, it holds one key of its own (its TLS identity) and no secret that could join a node.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.flint-boot;
  inherit (lib) mkEnableOption mkOption mkIf types optional concatStringsSep;

  useEtcd = cfg.etcd.endpoints != [ ];

  # The key is a credential, as the reports' key below.
  inventorySource =
    if useEtcd then [
      "--etcd" (concatStringsSep "," cfg.etcd.endpoints)
      "--etcd-ca" (toString cfg.etcd.caFile)
      "--etcd-cert" (toString cfg.etcd.certFile)
      "--etcd-key" "/run/credentials/flint-boot.service/etcd-key.pem"
      "--etcd-prefix" cfg.etcd.prefix
    ] else [ "--inventory" (toString cfg.inventory) ];

  args = [ "serve" ] ++ inventorySource ++ [
    "--images" (toString cfg.imageDir)
    "--http" cfg.http.listen
    # Also served at /firmware/ over HTTP, so UEFI HTTP Boot works with TFTP off.
    "--tftp-root" (toString cfg.tftp.root)
  ]
  ++ lib.optionals cfg.tftp.enable [ "--tftp" cfg.tftp.listen ]
  ++ lib.optionals cfg.proxyDhcp.enable [ "--proxy-dhcp" cfg.proxyDhcp.interface ]
  ++ lib.optionals (cfg.http.publicUrl != null) [ "--public-url" cfg.http.publicUrl ]
  # The key is a credential: the dynamic user reads systemd's copy, never the operator's file.
  ++ lib.optionals cfg.reports.enable [
    "--reports" cfg.reports.listen
    "--tls-ca" (toString cfg.reports.caFile)
    "--tls-cert" (toString cfg.reports.certFile)
    "--tls-key" "/run/credentials/flint-boot.service/boot-server-key.pem"
  ]
  ++ cfg.extraArgs;

  bindsPrivilegedPorts = cfg.tftp.enable || cfg.proxyDhcp.enable;
  sandbox = import ./sandbox.nix { inherit lib; };
in
{
  options.services.flint-boot = {
    enable = mkEnableOption "flint-boot, the PXE boot server (HTTP, TFTP, ProxyDHCP)";

    package = lib.mkPackageOption pkgs "flint-boot" {
      extraDescription = "nixpkgs has none: nixos-module/overlay.nix adds it, or set this option.";
    };
    inventory = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "The inventory (JSON): profiles, nodes and the policy for unknown machines. Reloaded when it changes. Null with etcd.endpoints: the inventory comes from etcd.";
    };
    etcd = {
      endpoints = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "https://10.0.200.11:2379" "https://10.0.200.12:2379" "https://10.0.200.13:2379" ];
        description = "etcd's client URLs: the inventory is read from etcd and watched, shared by every boot server given the same cluster (written with `flint-boot inventory put`).";
      };
      caFile = mkOption { type = types.path; description = "The CA of etcd's certificates (PEM)."; };
      certFile = mkOption { type = types.path; description = "The client certificate etcd requires (PEM): flint-boot prepare's DIR/boot-server/boot-server.pem."; };
      keyFile = mkOption {
        type = types.strMatching "/.*";
        example = "/var/lib/secrets/flint-boot/boot-server-key.pem";
        description = "The client certificate's key, as an absolute path outside the Nix store; loaded as a systemd credential.";
      };
      prefix = mkOption { type = types.strMatching "/.*"; default = "/flint/"; description = "Where flint-boot's keys start in etcd."; };
    };
    imageDir = mkOption {
      type = types.path;
      description = "Folder of kernels and initrds served over HTTP; nothing outside it is served.";
    };
    http = {
      listen = mkOption { type = types.str; default = "0.0.0.0:8080"; description = "HTTP listen address."; };
      publicUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://10.0.200.2:8080";
        description = "The URL booting machines reach this server at (put into boot.ipxe); null: derived from the listen address.";
      };
    };
    tftp = {
      enable = mkOption { type = types.bool; default = true; description = "Serve the iPXE binaries over TFTP (they are at /firmware/ over HTTP either way; without TFTP, ProxyDHCP answers only UEFI HTTP Boot clients and iPXE)."; };
      listen = mkOption { type = types.str; default = "0.0.0.0:69"; description = "TFTP listen address."; };
      root = mkOption {
        type = types.path;
        default = "${pkgs.ipxe}";
        description = "Folder with undionly.kpxe, ipxe.efi and snponly.efi, over TFTP and at /firmware/ over HTTP.";
      };
    };
    proxyDhcp = {
      enable = mkOption { type = types.bool; default = true; description = "Answer PXE clients on ports 67 and 4011 (the site's DHCP server keeps handing out addresses)."; };
      interface = mkOption { type = types.str; example = "eno1"; description = "The provisioning network's interface."; };
    };
    reports = {
      enable = mkEnableOption "the nodes' first-boot reports (flint's report_url), verified by their client certificates, in the fleet view";
      listen = mkOption { type = types.str; default = "0.0.0.0:8443"; description = "The report listener's address (TLS)."; };
      caFile = mkOption { type = types.path; description = "The cluster CA (PEM) the nodes' client certificates are verified against: flint-boot prepare's DIR/boot-server/ca.pem."; };
      certFile = mkOption { type = types.path; description = "The listener's certificate (PEM), for the report URL's host: DIR/boot-server/boot-server.pem."; };
      keyFile = mkOption {
        type = types.strMatching "/.*";
        example = "/var/lib/secrets/flint-boot/boot-server-key.pem";
        description = "The listener's private key, as an absolute path outside the Nix store (a path value would copy the key into the world-readable store); loaded as a systemd credential.";
      };
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--server-name" "boot2" "--stuck-after" "1800" ];
      description = "More arguments to `flint-boot serve` (see its --help), after the module's own, each passed as one word: the options this module has no setting for.";
    };
    openFirewall = mkOption { type = types.bool; default = false; description = "Open the HTTP, TFTP and ProxyDHCP ports."; };
  };

  config = mkIf cfg.enable {
    assertions = [{
      assertion = (cfg.inventory != null) != useEtcd;
      message = "services.flint-boot: set either inventory (a file) or etcd.endpoints (the inventory shared in etcd), not both and not neither.";
    }];

    systemd.services.flint-boot = {
      description = "flint-boot: PXE boot server (HTTP, TFTP, ProxyDHCP)";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      # The sandbox of systemd/flint-boot.service (systemd/sandbox.conf), with its capability.
      serviceConfig = sandbox // {
        # READY=1 once every listener is bound.
        Type = "notify";
        ExecStart = "${cfg.package}/bin/flint-boot ${concatStringsSep " " (map lib.escapeShellArg args)}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        LoadCredential = optional cfg.reports.enable "boot-server-key.pem:${cfg.reports.keyFile}"
          ++ optional useEtcd "etcd-key.pem:${cfg.etcd.keyFile}";
        Restart = "on-failure";
        # Usage and configuration errors and a missing capability do not fix themselves.
        RestartPreventExitStatus = "64 77 78";
        # Every download, TFTP transfer and connection is a file descriptor; the system call
        # filter keeps flint-boot from raising the limit itself.
        LimitNOFILE = 65536;
        DynamicUser = true;
        # Ports 67, 69 and 4011 are privileged; nothing else is. An empty bounding set, never an
        # absent one, when none of them is bound.
        AmbientCapabilities = if bindsPrivilegedPorts then "CAP_NET_BIND_SERVICE" else "";
        CapabilityBoundingSet = if bindsPrivilegedPorts then "CAP_NET_BIND_SERVICE" else "";
        # AF_NETLINK: finding the ProxyDHCP interface's address.
        RestrictAddressFamilies = "AF_UNIX AF_INET AF_INET6 AF_NETLINK";
      };
    };

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ (lib.toInt (lib.last (lib.splitString ":" cfg.http.listen))) ]
        ++ optional cfg.reports.enable (lib.toInt (lib.last (lib.splitString ":" cfg.reports.listen)));
      allowedUDPPorts = optional cfg.tftp.enable 69 ++ lib.optionals cfg.proxyDhcp.enable [ 67 4011 ];
    };
  };
}

# Evaluates the NixOS modules here, without nixpkgs (which cannot be fetched in CI), against a
# small stand-in for the parts of nixpkgs' lib and module system they use: option defaults merged
# with a node's settings, mkIf/mkMerge, mkDefault in a freeform option, mkPackageOption,
# pkgs.formats.json, runCommand, and the repository's overlay. It checks what the modules render,
# not the module system itself; nixpkgs' VM test (etcd-join.nix) covers the rest where Nix is at
# hand.
#
#   nix-instantiate --eval --strict --json nixos-module/tests/eval.nix
let
  inherit (builtins) all attrNames concatStringsSep elem filter foldl' fromJSON head isAttrs
    isList length listToAttrs mapAttrs stringLength substring toJSON;

  lib = rec {
    mkOption = args: { _option = true; } // args;
    mkEnableOption = what: mkOption { default = false; description = "Whether to enable ${what}."; };
    mkIf = cond: value: { _if = true; inherit cond value; };
    mkMerge = list: { _merge = true; inherit list; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = mkOverride 1000;
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    # nixpkgs' own (lib/options.nix), over the stand-ins here.
    mkPackageOption = pkgs: name:
      { nullable ? false, default ? name, example ? null, extraDescription ? "", pkgsText ? "pkgs" }:
      let
        name' = if isList name then last name else name;
        default' = toList default;
        defaultText = showAttrPath default';
        defaultValue = attrByPath default' (throw "${defaultText} cannot be found in ${pkgsText}") pkgs;
        defaults =
          if default != null then { default = defaultValue; defaultText = literalExpression "${pkgsText}.${defaultText}"; }
          else optionalAttrs nullable { default = null; };
      in
      mkOption (defaults // {
        description = "The ${name'} package to use." + (if extraDescription == "" then "" else " ") + extraDescription;
        type = (if nullable then types.nullOr else id) types.package;
      } // optionalAttrs (example != null) {
        example = literalExpression (if isList example then "${pkgsText}.${showAttrPath example}" else example);
      });
    types = let t = name: { inherit name; }; in {
      bool = t "bool"; str = t "str"; path = t "path"; package = t "package";
      strMatching = _: t "strMatching"; enum = _: t "enum"; listOf = _: t "listOf"; nullOr = _: t "nullOr";
      attrsOf = _: t "attrsOf"; submodule = _: t "submodule";
    };
    id = x: x;
    toList = x: if isList x then x else [ x ];
    showAttrPath = path: concatStringsSep "." (map (part:
      if builtins.match "[a-zA-Z_][a-zA-Z0-9_'-]*" part != null then part else toJSON part) path);
    attrByPath = path: default: set:
      if path == [ ] then set
      else if set ? ${head path} then attrByPath (builtins.tail path) default set.${head path}
      else default;
    mapAttrsRecursive = f: set: let
      recurse = path: mapAttrs (name: value:
        if isAttrs value then recurse (path ++ [ name ]) value else f (path ++ [ name ]) value);
    in recurse [ ] set;
    cleanSource = src: src;
    licenses.asl20 = "asl20";
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: x: if cond then x else { };
    filterAttrs = pred: set: listToAttrs (filter (kv: pred kv.name kv.value)
      (map (name: { inherit name; value = set.${name}; }) (attrNames set)));
    mapAttrsToList = f: set: map (name: f name set.${name}) (attrNames set);
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    inherit all filter concatStringsSep;
    escapeShellArg = s: "'${s}'";
    splitString = sep: s: filter builtins.isString (builtins.split sep s);
    last = list: builtins.elemAt list (length list - 1);
    toInt = s: fromJSON s;
  };

  # A derivation's output is its text here: a generated file is its JSON, a runCommand its name,
  # inputs and script (as JSON), so the checks below read what a build would run.
  basePkgs = {
    inherit lib;
    formats.json = { }: { type = { name = "json"; }; generate = _name: value: toJSON value; };
    runCommand = name: env: script: toJSON { runCommand = name; inherit env script; };
    callPackage = path: overrides:
      let f = import path; in f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // overrides);
    rustPlatform.buildRustPackage = attrs: attrs // { outPath = "/nix/store/00000000000000000000000000000000-${attrs.pname}"; };
    ipxe = "/nix/store/00000000000000000000000000000000-ipxe";
    coreutils = "/nix/store/00000000000000000000000000000000-coreutils";
  };
  # nixpkgs with the overlay users add (nixos-module/overlay.nix): pkgs.flint and pkgs.flint-boot.
  pkgs = basePkgs // import ../overlay.nix pkgs basePkgs;

  # Option declarations -> their defaults; then the node's settings on top.
  defaults = opts:
    if opts ? _option then (opts.default or null)
    else if isAttrs opts then mapAttrs (_: defaults) opts
    else opts;
  recursiveUpdate = a: b: a // mapAttrs (name: value:
    if isAttrs value && a ? ${name} && isAttrs a.${name} && !(value ? _if) then recursiveUpdate a.${name} value else value) b;
  # mkIf / mkMerge, resolved the way the module system does for plain values.
  resolve = v:
    if isAttrs v && v ? _if then (if v.cond then resolve v.value else { })
    else if isAttrs v && v ? _merge then foldl' recursiveUpdate { } (map resolve v.list)
    else if isAttrs v then mapAttrs (_: resolve) v
    else v;

  # Definitions of a freeform value merged as the module system merges them: only those of the
  # highest priority count (a plain definition 100, mkDefault 1000); attribute sets merge by
  # attribute, lists concatenate, anything else must be defined once or alike.
  priorityOf = def: if isAttrs def && def._type or null == "override" then def.priority else 100;
  contentOf = def: if isAttrs def && def._type or null == "override" then contentOf def.content else def;
  mergeDefinitions = defs:
    let
      top = foldl' (p: d: if priorityOf d < p then priorityOf d else p) (priorityOf (head defs)) defs;
      kept = map contentOf (filter (d: priorityOf d == top) defs);
    in
    if all isAttrs kept then mapAttrs (name: _: mergeDefinitions (builtins.catAttrs name kept)) (foldl' (a: b: a // b) { } kept)
    else if all isList kept then builtins.concatLists kept
    else if all (d: d == head kept) kept then head kept
    else throw "conflicting definitions: ${toJSON kept}";

  evalModule = path: name: settings:
    let
      module = import path { inherit config lib pkgs; };
      options = module.options.services.${name};
      evaluated = resolve module.config;
      cfg = recursiveUpdate (defaults options) (removeAttrs settings [ "settings" ])
        # The freeform option: the module's own definitions (the typed options' defaults) with the node's.
        // lib.optionalAttrs (options ? settings) {
          settings = mergeDefinitions [ (evaluated.services.${name}.settings or { }) (settings.settings or { }) ];
        };
      config = { services.${name} = cfg; };
    in evaluated;

  nodeSettings = {
    enable = true;
    nodeId = "node04";
    leaderUrl = "https://node01.example.com:2379";
    raftAddr = "10.0.200.13:2380";
    tls = { caFile = "/etc/nixos/secrets/ca.pem"; certFile = "/etc/nixos/secrets/node04.pem"; keyFile = "/etc/nixos/secrets/node04-key.pem"; };
    joinTokenFile = "/etc/nixos/secrets/join-token";
    iam = { org = "acme"; adminName = "root"; adminPublicKeyFile = "/etc/nixos/secrets/admin.pub"; bootstrapTokenFile = "/etc/nixos/secrets/iam-token"; };
  };
  node = evalModule ../node.nix "flint" nodeSettings;
  # node01 of a simultaneous bootstrap that also forms etcd.
  etcdBootstrap = evalModule ../node.nix "flint" (nodeSettings // {
    nodeId = "node01";
    bootstrap = true;
    join = [ "chainfire" "flaredb" "etcd" ];
    etcd.initialCluster = { node01 = "https://10.0.200.11:2380"; node02 = "https://10.0.200.12:2380"; };
  });
  # How cluster-config.json is built (its credential's value is the stand-in runCommand's JSON),
  # and the file it renders.
  configBuildOf = services: fromJSON (let
    credential = head (filter (c: lib.hasPrefix "cluster-config.json:" c) services.chainfire-cluster-join.serviceConfig.LoadCredential);
  in substring (stringLength "cluster-config.json:") (stringLength credential) credential);
  renderedOf = services: fromJSON (configBuildOf services).env.rendered;
  # node_exporter's textfile folder where NixOS operators often put it, and a node without the check.
  nixTextfiles = evalModule ../node.nix "flint" (nodeSettings // { healthCheck.textfileDir = "/var/lib/prometheus-node-exporter-text-files"; });
  noHealth = evalModule ../node.nix "flint" (nodeSettings // { healthCheck.enable = false; });
  units = node.systemd.services;
  healthUnits = services: [ services.cluster-health-check services.flint-health ];
  writesTextfileIn = dir: services:
    services.cluster-health-check.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint/bin/flint health --wait --write-check --textfile ${dir}/cluster-health.prom"
    && services.flint-health.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint/bin/flint health --textfile ${dir}/cluster-health.prom"
    && all (u: u.serviceConfig.ReadWritePaths == [ "-${dir}" ]
      && !(u.serviceConfig ? StateDirectory)) (healthUnits services);
  join = units.chainfire-cluster-join;
  credentials = join.serviceConfig.LoadCredential;
  bootSettings = {
    enable = true;
    inventory = "/etc/flint-boot/inventory.json";
    imageDir = "/srv/images";
    proxyDhcp.interface = "eno1";
  };
  boot = evalModule ../boot-server.nix "flint-boot" bootSettings;
  httpBootOnly = evalModule ../boot-server.nix "flint-boot" (bootSettings // { tftp.enable = false; });
  withReports = evalModule ../boot-server.nix "flint-boot" (bootSettings // {
    reports = {
      enable = true;
      caFile = "/etc/flint-boot/ca.pem";
      certFile = "/etc/flint-boot/boot-server.pem";
      keyFile = "/var/lib/secrets/boot-server-key.pem";
    };
  });
  etcdSettings = {
    endpoints = [ "https://10.0.200.11:2379" "https://10.0.200.12:2379" ];
    caFile = "/etc/flint-boot/ca.pem";
    certFile = "/etc/flint-boot/boot-server.pem";
    keyFile = "/var/lib/secrets/boot-server-key.pem";
  };
  withEtcd = evalModule ../boot-server.nix "flint-boot" (bootSettings // { inventory = null; etcd = etcdSettings; });
  withBothSources = evalModule ../boot-server.nix "flint-boot" (bootSettings // { etcd = etcdSettings; });
  reportingNode = evalModule ../node.nix "flint" (nodeSettings // { reportUrl = "https://10.0.200.2:8443/api/reports"; });
  # settings over the typed options: one field of a section replaced, one added, one top-level
  # field replaced; the typed options' other fields stay.
  tunedNode = evalModule ../node.nix "flint" (nodeSettings // {
    settings = { timeouts.total = "20m"; expected_members = 3; tls.ca = "/etc/ssl/flint/ca.pem"; leader_url = "https://node02.example.com:2379"; };
  });
  withExtraArgs = evalModule ../boot-server.nix "flint-boot" (bootSettings // { extraArgs = [ "--server-name" "boot 2" ]; });
  ownFlint = evalModule ../node.nix "flint" (nodeSettings // { package = "/nix/store/11111111111111111111111111111111-flint"; });
  packageOption = module: name: (import module { inherit lib pkgs; config = { }; }).options.services.${name}.package;

  # A unit file's settings (Key=value lines; a key on several lines is a list), to hold the
  # modules' sandbox to the Debian units' own.
  unitSettings = file: builtins.mapAttrs (_: values: if length values == 1 then head values else values)
    (builtins.mapAttrs (_: map (s: builtins.elemAt s 1)) (builtins.groupBy head
      (filter (m: m != null) (map (builtins.match "([A-Za-z]+)=(.*)") (lib.splitString "\n" (builtins.readFile file))))));
  sandboxKeys = attrNames (import ../sandbox.nix { inherit lib; });
  sameSandbox = unitFile: serviceConfig:
    let unit = unitSettings unitFile; in
    all (key: serviceConfig ? ${key} && serviceConfig.${key} == unit.${key}) sandboxKeys;

  checks = {
    "every node unit is rendered" = all (u: units ? ${u})
      [ "chainfire-cluster-join" "flaredb-cluster-join" "iam-initial-setup" "cluster-health-check" "flint-health" ];
    "etcd units only when etcd is joined" = !(units ? etcd-cluster-join);
    "join runs the packaged flint" = join.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint/bin/flint join chainfire";
    "the marker is the run-once condition" = join.unitConfig.ConditionPathExists == "!/var/lib/flint/.chainfire-joined";
    "permanent failures do not restart" = join.serviceConfig.RestartPreventExitStatus == "64 65 77 78 238 243";
    "secrets are credentials from outside the store" = all (c: !(lib.hasPrefix "node04-key.pem:/nix/store" c)) credentials
      && elem "node-key.pem:/etc/nixos/secrets/node04-key.pem" credentials
      && elem "join-token:/etc/nixos/secrets/join-token" credentials
      && elem "iam-bootstrap-token:/etc/nixos/secrets/iam-token" credentials;
    "no capability at all" = join.serviceConfig.CapabilityBoundingSet == "";
    "assertions hold for a sound node" = all (a: a.assertion) node.assertions;
    "first-boot order: chainfire's join, then flaredb's, then IAM's setup" = elem "chainfire-cluster-join.service" units.flaredb-cluster-join.after
      && elem "flaredb-cluster-join.service" units.iam-initial-setup.after;
    "health units write only the textfile, in Debian's node_exporter folder by default" =
      writesTextfileIn "/var/lib/prometheus/node-exporter" units;
    "the textfile folder is an option" =
      writesTextfileIn "/var/lib/prometheus-node-exporter-text-files" nixTextfiles.systemd.services;
    "the textfile folder is created when missing, never changed" =
      node.systemd.tmpfiles.rules == [ "d /var/lib/prometheus/node-exporter - - - -" ]
      && nixTextfiles.systemd.tmpfiles.rules == [ "d /var/lib/prometheus-node-exporter-text-files - - - -" ]
      && noHealth.systemd.tmpfiles.rules == [ ];
    "join units keep their state directory" = join.serviceConfig.StateDirectory == "flint"
      && join.serviceConfig.StateDirectoryMode == "0700";
    "boot server binds privileged ports with one capability" =
      boot.systemd.services.flint-boot.serviceConfig.AmbientCapabilities == "CAP_NET_BIND_SERVICE";
    "boot server serves the iPXE binaries over TFTP and HTTP" =
      boot.systemd.services.flint-boot.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint-boot/bin/flint-boot 'serve' '--inventory' '/etc/flint-boot/inventory.json' '--images' '/srv/images' '--http' '0.0.0.0:8080' '--tftp-root' '/nix/store/00000000000000000000000000000000-ipxe' '--tftp' '0.0.0.0:69' '--proxy-dhcp' 'eno1'";
    "boot server without TFTP still has the binaries for UEFI HTTP Boot" =
      httpBootOnly.systemd.services.flint-boot.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint-boot/bin/flint-boot 'serve' '--inventory' '/etc/flint-boot/inventory.json' '--images' '/srv/images' '--http' '0.0.0.0:8080' '--tftp-root' '/nix/store/00000000000000000000000000000000-ipxe' '--proxy-dhcp' 'eno1'";
    "boot server without reports loads no credential" =
      boot.systemd.services.flint-boot.serviceConfig.LoadCredential == [ ];
    "boot server reads its report key as a credential, never from the store" =
      withReports.systemd.services.flint-boot.serviceConfig.LoadCredential == [ "boot-server-key.pem:/var/lib/secrets/boot-server-key.pem" ]
      && withReports.systemd.services.flint-boot.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint-boot/bin/flint-boot 'serve' '--inventory' '/etc/flint-boot/inventory.json' '--images' '/srv/images' '--http' '0.0.0.0:8080' '--tftp-root' '/nix/store/00000000000000000000000000000000-ipxe' '--tftp' '0.0.0.0:69' '--proxy-dhcp' 'eno1' '--reports' '0.0.0.0:8443' '--tls-ca' '/etc/flint-boot/ca.pem' '--tls-cert' '/etc/flint-boot/boot-server.pem' '--tls-key' '/run/credentials/flint-boot.service/boot-server-key.pem'";
    "a node's report URL reaches its config; none without it" =
      (renderedOf reportingNode.systemd.services).report_url == "https://10.0.200.2:8443/api/reports"
      && !((renderedOf units) ? report_url);
    "boot server reads the inventory from etcd with its key as a credential" =
      withEtcd.systemd.services.flint-boot.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint-boot/bin/flint-boot 'serve' '--etcd' 'https://10.0.200.11:2379,https://10.0.200.12:2379' '--etcd-ca' '/etc/flint-boot/ca.pem' '--etcd-cert' '/etc/flint-boot/boot-server.pem' '--etcd-key' '/run/credentials/flint-boot.service/etcd-key.pem' '--etcd-prefix' '/flint/' '--images' '/srv/images' '--http' '0.0.0.0:8080' '--tftp-root' '/nix/store/00000000000000000000000000000000-ipxe' '--tftp' '0.0.0.0:69' '--proxy-dhcp' 'eno1'"
      && withEtcd.systemd.services.flint-boot.serviceConfig.LoadCredential == [ "etcd-key.pem:/var/lib/secrets/boot-server-key.pem" ]
      && all (a: a.assertion) withEtcd.assertions;
    "boot server refuses a file and etcd at once" = !(all (a: a.assertion) withBothSources.assertions)
      && all (a: a.assertion) boot.assertions;
    "node units keep the Debian units' sandbox" =
      all (name: sameSandbox ../../systemd/${name}.service units.${name}.serviceConfig)
        [ "chainfire-cluster-join" "flaredb-cluster-join" "iam-initial-setup" "cluster-health-check" "flint-health" ]
      && all (name: sameSandbox ../../systemd/${name}.service etcdBootstrap.systemd.services.${name}.serviceConfig)
        [ "etcd-cluster-join" "etcd-cluster-promote" ];
    "boot server keeps the Debian unit's sandbox" =
      sameSandbox ../../systemd/flint-boot.service boot.systemd.services.flint-boot.serviceConfig;
    "boot server without privileged ports has no capability, not every one" =
      let config = (evalModule ../boot-server.nix "flint-boot" (bootSettings // { tftp.enable = false; proxyDhcp.enable = false; })).systemd.services.flint-boot.serviceConfig;
      in config.CapabilityBoundingSet == "" && config.AmbientCapabilities == "";
    "boot server tells systemd when it is ready" =
      boot.systemd.services.flint-boot.serviceConfig.Type == "notify";
    "the packages default to the repository's overlay, as nixpkgs names them" =
      let node = packageOption ../node.nix "flint"; boot = packageOption ../boot-server.nix "flint-boot"; in
      node.default.cargoBuildFlags == [ "--package" "flint" ] && node.defaultText.text == "pkgs.flint"
      && boot.default.cargoBuildFlags == [ "--package" "flint-boot" ] && boot.defaultText.text == "pkgs.flint-boot"
      && boot.default.meta.mainProgram == "flint-boot"
      && join.serviceConfig.ExecStart == "/nix/store/00000000000000000000000000000000-flint/bin/flint join chainfire";
    "a package of one's own replaces the overlay's" =
      ownFlint.systemd.services.chainfire-cluster-join.serviceConfig.ExecStart == "/nix/store/11111111111111111111111111111111-flint/bin/flint join chainfire"
      && lib.hasPrefix "/nix/store/11111111111111111111111111111111-flint/bin/flint config check" (configBuildOf ownFlint.systemd.services).script;
    "boot server passes extraArgs last, each one word" =
      withExtraArgs.systemd.services.flint-boot.serviceConfig.ExecStart == boot.systemd.services.flint-boot.serviceConfig.ExecStart + " '--server-name' 'boot 2'";
    "boot server errors that need an operator do not restart" =
      boot.systemd.services.flint-boot.serviceConfig.RestartPreventExitStatus == "64 77 78";
  };

  rendered = renderedOf units;
  configChecks = {
    "config names secrets by credential" = rendered.tls == { ca = "ca.pem"; cert = "node.pem"; key = "node-key.pem"; }
      && rendered.join_token_file == "join-token"
      && rendered.iam.bootstrap_token_file == "iam-bootstrap-token";
    "config carries node_id, bootstrap, leader_url and raft_addr" = rendered.node_id == "node04" && rendered.raft_addr == "10.0.200.13:2380"
      && rendered.leader_url == "https://node01.example.com:2379" && rendered.bootstrap == false;
    "a bootstrap node's initial etcd members reach the config" =
      (renderedOf etcdBootstrap.systemd.services).etcd.initial_cluster
        == { node01 = "https://10.0.200.11:2380"; node02 = "https://10.0.200.12:2380"; }
      && !((renderedOf units).chainfire ? initial_cluster);
    "flint checks cluster-config.json when the system is built, without the credentials" =
      let build = configBuildOf units; in
      build.runCommand == "cluster-config.json"
      && build.script == ''
        /nix/store/00000000000000000000000000000000-flint/bin/flint config check --config-only "$rendered"
        cp "$rendered" "$out"
      '';
    "settings override the typed options and add fields" =
      let tuned = renderedOf tunedNode.systemd.services; in
      tuned.timeouts == { total = "20m"; request = "10s"; connect = "5s"; }
      && tuned.expected_members == 3
      && tuned.tls == { ca = "/etc/ssl/flint/ca.pem"; cert = "node.pem"; key = "node-key.pem"; }
      && tuned.leader_url == "https://node02.example.com:2379"
      && removeAttrs tuned [ "timeouts" "expected_members" "tls" "leader_url" ] == removeAttrs rendered [ "timeouts" "tls" "leader_url" ];
    "without settings the typed options' defaults are the file" = rendered.timeouts == { total = "10m"; request = "10s"; connect = "5s"; };
    "config has no null and no unknown field" = all (k: elem k [ "node_id" "bootstrap" "leader_url" "raft_addr" "peers"
      "allow_plaintext" "report_url" "tls" "join_token_file" "timeouts" "chainfire" "flaredb" "iam" ]) (attrNames rendered);
  };
  failed = filter (name: !(checks // configChecks).${name}) (attrNames (checks // configChecks));
in
if failed == [ ] then { passed = length (attrNames (checks // configChecks)); }
else throw "NixOS module checks failed: ${concatStringsSep "; " failed}"

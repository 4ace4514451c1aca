# A NixOS VM test for nixpkgs' test driver: node1 runs a one-member etcd cluster; node2 boots
# with services.flint joining etcd (learner, then promoted) and ends with two voting members.
# flint is built from this repository through its overlay, and checks node2's cluster-config.json
# while node2 is built.
#
#   nix-build nixos-module/tests/etcd-join.nix --arg pkgs 'import <nixpkgs> {}'
# (see the README's "NixOS" section).
{ pkgs }:

# The test's nodes share its pkgs (read-only to them): the overlay goes here, not in a node.
(pkgs.extend (import ../overlay.nix)).testers.runNixOSTest {
  name = "flint-etcd-join";

  nodes = {
    node1 = { ... }: {
      networking.firewall.allowedTCPPorts = [ 2379 2380 ];
      services.etcd = {
        enable = true;
        name = "node1";
        listenClientUrls = [ "http://0.0.0.0:2379" ];
        advertiseClientUrls = [ "http://node1:2379" ];
        listenPeerUrls = [ "http://0.0.0.0:2380" ];
        initialAdvertisePeerUrls = [ "http://node1:2380" ];
        initialCluster = [ "node1=http://node1:2380" ];
        initialClusterState = "new";
      };
    };

    node2 = { ... }: {
      imports = [ ../node.nix ];
      networking.firewall.allowedTCPPorts = [ 2379 2380 ];
      services.etcd = {
        enable = true;
        name = "node2";
        listenClientUrls = [ "http://0.0.0.0:2379" ];
        advertiseClientUrls = [ "http://node2:2379" ];
        listenPeerUrls = [ "http://0.0.0.0:2380" ];
        initialAdvertisePeerUrls = [ "http://node2:2380" ];
        # flint's etcd.env (EnvironmentFile=, which wins over these) brings the real values.
        initialCluster = [ "node2=http://node2:2380" ];
        initialClusterState = "existing";
      };
      services.flint = {
        enable = true;
        join = [ "etcd" ];
        nodeId = "node2";
        leaderUrl = "http://node1:2379";
        raftAddr = "node2:2380";
        allowPlaintext = true;
        etcd.localUrl = "http://127.0.0.1:2379";
        iam.setup = false;
        # Over the typed option's default (timeouts.total, 10m).
        settings.timeouts.total = "3m";
      };
    };
  };

  testScript = ''
    node1.start()
    node1.wait_for_unit("etcd.service")
    node1.wait_for_open_port(2379)

    node2.start()
    node2.wait_for_unit("etcd-cluster-join.service")
    node2.wait_for_unit("etcd-cluster-promote.service")
    node2.succeed("test -f /var/lib/flint/.etcd-joined")
    node2.succeed("journalctl -u etcd-cluster-join --no-pager | grep 'adding learner'")

    members = node1.succeed("etcdctl --endpoints http://node1:2379 member list")
    assert members.count("started") == 2, members
    assert "true" not in members.split("node2")[1].splitlines()[0], members

    # The second boot runs nothing: the marker is the units' ConditionPathExists=!.
    node2.shutdown()
    node2.start()
    node2.wait_for_unit("multi-user.target")
    node2.succeed("systemctl show -p ConditionResult etcd-cluster-join.service | grep -q no")
    node2.succeed("systemctl start flint-health.service")
    # Into node_exporter's textfile folder (made by the module's tmpfiles rule), readable by it.
    node2.succeed("grep -q 'flint_cluster_healthy{service=\"etcd\"} 1' /var/lib/prometheus/node-exporter/cluster-health.prom")
    node2.succeed("test \"$(stat -c %a /var/lib/prometheus/node-exporter/cluster-health.prom)\" = 644")
  '';
}

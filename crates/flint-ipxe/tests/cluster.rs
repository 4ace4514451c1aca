//! The inventory's `cluster` section: what `flint-boot prepare` writes configs from, validated
//! with every problem named by its JSON path.

use flint_ipxe::{ClusterService, Inventory, InventoryError, Ports};
use serde_json::{Value, json};

/// A four-node cluster: three initial members and node04, which joins later.
fn four_nodes() -> Value {
    let node = |i: u32, initial: bool| {
        json!({"name": format!("node0{i}"), "mac": format!("52:54:00:00:00:0{i}"),
               "profile": "cp", "raft_addr": format!("10.0.200.1{i}:2380"), "initial": initial})
    };
    json!({
        "profiles": {"cp": {"kernel": "k"}},
        "nodes": [node(1, true), node(2, true), node(3, true), node(4, false)],
        "cluster": {"services": ["etcd", "chainfire", "flaredb", "iam"], "domain": "example.com",
                    "iam": {"org": "acme", "admin": "admin"}}
    })
}

fn load(v: &Value) -> Result<Inventory, Vec<InventoryError>> {
    Inventory::from_json("inv.json", &v.to_string()).map_err(|e| e.0)
}

fn errors(v: &Value) -> Vec<(String, String)> {
    load(v)
        .expect_err("must be rejected")
        .into_iter()
        .map(|e| (e.path, e.expected))
        .collect()
}

#[track_caller]
fn one_error(v: &Value, path: &str, expected: &str) {
    let errs = errors(v);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].0, path, "{errs:?}");
    assert!(errs[0].1.contains(expected), "{errs:?}");
}

#[test]
fn a_four_node_cluster_is_read_with_its_defaults() {
    let inv = load(&four_nodes()).expect("valid");
    let cluster = inv.cluster().expect("a cluster");
    assert_eq!(cluster.ports, Ports::default());
    assert_eq!(cluster.domain.as_deref(), Some("example.com"));
    assert_eq!(cluster.expected_members, None);
    assert_eq!(cluster.iam.as_ref().map(|i| i.org.as_str()), Some("acme"));
    let node04 = inv.nodes()[3].cluster.as_ref().expect("node04 is a member");
    assert_eq!(node04.raft_addr(), "10.0.200.14:2380");
    assert!(!node04.initial);
    assert_eq!(node04.services, ClusterService::ALL.to_vec());
    assert_eq!(node04.ip(), Some("10.0.200.14".parse().unwrap()));
    assert!(inv.nodes()[0].cluster.as_ref().unwrap().initial);
}

#[test]
fn without_a_cluster_section_nodes_have_no_part_and_no_cluster_fields() {
    let mut v = four_nodes();
    v.as_object_mut().unwrap().remove("cluster");
    let errs = errors(&v);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].1.contains("without a \"cluster\" section"),
        "{errs:?}"
    );
    assert_eq!(errs[3].0, "nodes[3]");
    for node in v["nodes"].as_array_mut().unwrap() {
        let node = node.as_object_mut().unwrap();
        node.remove("raft_addr");
        node.remove("initial");
    }
    let inv = load(&v).expect("a plain boot inventory");
    assert!(inv.cluster().is_none());
    assert!(inv.nodes().iter().all(|n| n.cluster.is_none()));
}

#[test]
fn a_node_without_a_cluster_address_is_named() {
    let mut v = four_nodes();
    v["nodes"][2].as_object_mut().unwrap().remove("raft_addr");
    one_error(&v, "nodes[2].raft_addr", "this node's cluster address");
}

#[test]
fn duplicate_addresses_are_refused_whatever_their_spelling() {
    let mut v = four_nodes();
    v["nodes"][3]["raft_addr"] = json!("10.0.200.12:2390");
    one_error(&v, "nodes[3].raft_addr", "not already used by nodes[1]");
    let mut v = four_nodes();
    v["nodes"][0]["raft_addr"] = json!("[fd00::0:11]:2380");
    v["nodes"][1]["raft_addr"] = json!("[fd00::11]:2380");
    one_error(&v, "nodes[1].raft_addr", "not already used by nodes[0]");
    let mut v = four_nodes();
    v["nodes"][0]["raft_addr"] = json!("Node01.Example.com:2380");
    v["nodes"][1]["raft_addr"] = json!("node01.example.COM:2380");
    one_error(&v, "nodes[1].raft_addr", "not already used by nodes[0]");
}

#[test]
fn bad_cluster_addresses_are_named() {
    for bad in [
        "10.0.200.11",
        "10.0.200.11:0",
        "10.0.200.11:65536",
        "fd00::11:2380",
        "[fd00::zz]:2380",
        "node_01:2380",
        "-node:2380",
        "10.0.200.256:2380",
        ":2380",
        "node01 ; reboot:2380",
    ] {
        let mut v = four_nodes();
        v["nodes"][0]["raft_addr"] = json!(bad);
        one_error(&v, "nodes[0].raft_addr", "host:port");
    }
    let mut v = four_nodes();
    v["nodes"][0]["raft_addr"] = json!(2380);
    let errs = errors(&v);
    assert_eq!(errs[0].0, "nodes[0].raft_addr", "{errs:?}");
}

#[test]
fn unknown_and_repeated_services_are_named() {
    let mut v = four_nodes();
    v["nodes"][1]["services"] = json!(["chainfire", "redis"]);
    one_error(&v, "nodes[1].services[1]", "\"redis\"");
    let mut v = four_nodes();
    v["cluster"]["services"] = json!(["etcd", "etcd"]);
    one_error(&v, "cluster.services[1]", "not already listed");
    let mut v = four_nodes();
    v["nodes"][1]["services"] = json!([]);
    one_error(&v, "nodes[1].services", "at least one");
}

#[test]
fn ports_must_differ_and_keep_clear_of_raft() {
    let mut v = four_nodes();
    v["cluster"]["ports"] = json!({"etcd": 2379});
    one_error(
        &v,
        "cluster.ports.chainfire",
        "not already used by cluster.ports.etcd",
    );
    let mut v = four_nodes();
    v["cluster"]["ports"] = json!({"iam": 0});
    one_error(&v, "cluster.ports.iam", "from 1 to 65535");
    let mut v = four_nodes();
    v["cluster"]["ports"] = json!({"flaredb_raft": 2381});
    v["nodes"][3]["raft_addr"] = json!("10.0.200.14:2381");
    one_error(&v, "nodes[3].raft_addr", "cluster.ports.flaredb_raft");
    let mut v = four_nodes();
    v["cluster"]["ports"] = json!({"etcd_pear": 1});
    let errs = errors(&v);
    assert_eq!(errs[0].0, "cluster.ports.etcd_pear", "{errs:?}");
}

#[test]
fn ports_clash_only_where_one_node_runs_both() {
    // An etcd-only site on etcd's registered ports: chainfire's default (2379) and each node's
    // Raft address (its etcd peer port) clash with nothing any node runs.
    let mut v = four_nodes();
    v["cluster"]["services"] = json!(["etcd"]);
    v["cluster"]["ports"] = json!({"etcd": 2379, "etcd_peer": 2380});
    v["cluster"].as_object_mut().unwrap().remove("iam");
    let inv = load(&v).expect("an etcd-only cluster on 2379/2380");
    assert_eq!(inv.cluster().unwrap().ports.etcd, 2379);
    // One node that also runs chainfire: the clash is named once, for the cluster's ports.
    v["nodes"][1]["services"] = json!(["etcd", "chainfire"]);
    v["nodes"][2]["services"] = json!(["etcd", "chainfire"]);
    let errs = errors(&v);
    assert_eq!(
        errs.iter()
            .filter(|(p, _)| p == "cluster.ports.chainfire")
            .count(),
        1,
        "{errs:#?}"
    );
}

#[test]
fn every_member_service_needs_an_initial_member() {
    let mut v = four_nodes();
    v["nodes"][3]["services"] = json!(["etcd"]);
    for i in 0..3 {
        v["nodes"][i]["services"] = json!(["chainfire", "flaredb", "iam"]);
    }
    one_error(&v, "nodes", "\"initial\": true that runs etcd");
}

#[test]
fn iam_needs_its_organization_and_admin() {
    let mut v = four_nodes();
    v["cluster"].as_object_mut().unwrap().remove("iam");
    one_error(&v, "cluster.iam", "a node runs iam");
    let mut v = four_nodes();
    v["cluster"]["iam"]["org"] = json!(" ");
    one_error(&v, "cluster.iam.org", "non-empty name");
    let mut v = four_nodes();
    v["cluster"]["iam"]["admin"] = json!("ad\nmin");
    one_error(&v, "cluster.iam.admin", "printable");
    let mut v = four_nodes();
    v["cluster"].as_object_mut().unwrap().remove("iam");
    v["cluster"]["services"] = json!(["etcd"]);
    load(&v).expect("no IAM, no identity needed");
}

#[test]
fn expected_members_and_domain_are_bounded() {
    let mut v = four_nodes();
    v["cluster"]["expected_members"] = json!(1001);
    one_error(&v, "cluster.expected_members", "from 1 to 1000");
    let mut v = four_nodes();
    v["cluster"]["expected_members"] = json!(4);
    assert_eq!(
        load(&v).unwrap().cluster().unwrap().expected_members,
        Some(4)
    );
    let mut v = four_nodes();
    v["cluster"]["domain"] = json!("example..com");
    one_error(&v, "cluster.domain", "DNS domain");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut v = four_nodes();
    v["nodes"][0].as_object_mut().unwrap().remove("raft_addr");
    v["nodes"][1]["services"] = json!(["kafka"]);
    v["nodes"][3]["raft_addr"] = json!("10.0.200.13:2380");
    let paths: Vec<String> = errors(&v).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        [
            "nodes[0].raft_addr",
            "nodes[1].services[0]",
            "nodes[3].raft_addr"
        ]
    );
}

#[test]
fn the_report_url_is_an_https_endpoint_without_credentials() {
    let mut v = four_nodes();
    v["cluster"]["report_url"] = json!("https://10.0.200.2:8443/api/reports");
    let inv = load(&v).expect("valid");
    assert_eq!(
        inv.cluster()
            .unwrap()
            .report_url
            .as_ref()
            .map(|u| u.as_str()),
        Some("https://10.0.200.2:8443/api/reports")
    );
    assert_eq!(
        load(&four_nodes()).unwrap().cluster().unwrap().report_url,
        None
    );
    for (url, why) in [
        ("http://10.0.200.2:8080/api/reports", "not https"),
        ("https://user:pw@boot/api/reports", "credentials"),
        ("https://boot/api/reports?node=x", "query or fragment"),
        ("10.0.200.2:8443", "https URL"),
        ("https://boot\n/api", "control characters"),
    ] {
        let mut v = four_nodes();
        v["cluster"]["report_url"] = json!(url);
        one_error(&v, "cluster.report_url", why);
    }
}

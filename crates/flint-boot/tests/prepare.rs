//! `flint-boot prepare` through the binary: a four-node cluster, each folder checked with
//! openssl (a verifier flint did not write) and loaded by the config code flint runs; reruns that
//! change nothing, a node added, keys rotated, names changed; and every refusal (a bad
//! inventory, a CA key readable by others, ...) with its exit status and nothing written.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn flint_boot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint-boot"))
}

/// Four nodes: node01–03 the initial members, node04 joining later; every node runs
/// etcd, chainfire, flaredb and IAM.
fn four_node_inventory() -> Value {
    let node = |i: u32, initial: bool| {
        json!({"name": format!("node0{i}"), "mac": format!("52:54:00:00:00:0{i}"),
               "profile": "cp", "raft_addr": format!("10.0.200.1{i}:2380"), "initial": initial,
               "addresses": [format!("10.0.100.5{i}")]})
    };
    json!({
        "profiles": {"cp": {"kernel": "cp/vmlinuz"}},
        "nodes": [node(1, true), node(2, true), node(3, true), node(4, false)],
        "cluster": {"services": ["etcd", "chainfire", "flaredb", "iam"], "domain": "example.com",
                    "expected_members": 4, "iam": {"org": "acme", "admin": "admin"}}
    })
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.json")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    fn node(&self, name: &str) -> PathBuf {
        self.out().join("nodes").join(name)
    }

    fn write_inventory(&self, inventory: &Value) {
        fs::write(self.inventory(), inventory.to_string()).expect("write inventory");
    }

    fn prepare(&self, extra: &[&str]) -> Output {
        let out = flint_boot()
            .arg("prepare")
            .arg("--inventory")
            .arg(self.inventory())
            .args(extra)
            .arg(self.out())
            .output()
            .expect("run flint-boot prepare");
        assert_no_secret_shown(&self.out(), &out);
        out
    }

    #[track_caller]
    fn prepare_ok(&self, extra: &[&str]) -> String {
        let out = self.prepare(extra);
        assert!(out.status.success(), "prepare failed: {}", describe(&out));
        String::from_utf8(out.stdout).expect("UTF-8 report")
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir`: its bytes, mode and inode, so a rerun that rewrote a file with the
/// same bytes is caught too.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u64)> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                files.insert(path.clone(), (Vec::new(), meta.mode(), meta.ino()));
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap_or_default();
                files.insert(path, (bytes, meta.mode(), meta.ino()));
            }
        }
    }
    files
}

/// No token, key or certificate body in what prepare printed.
fn assert_no_secret_shown(out_dir: &Path, out: &Output) {
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !shown.contains("-----BEGIN CERTIFICATE") && !shown.contains("PRIVATE KEY-----"),
        "PEM in the output: {shown}"
    );
    for secret in [
        "join-token",
        "iam-bootstrap-token",
        "ca-key.pem",
        "admin-key.pem",
        "iam-admin-key.pem",
    ] {
        let Ok(text) = fs::read_to_string(out_dir.join("cluster").join(secret)) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "{secret} is in the output: {shown}");
        }
    }
}

#[track_caller]
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

const NODE_FILES: [&str; 11] = [
    "cluster-config.json",
    "ca.pem",
    "node.pem",
    "node-key.pem",
    "server.pem",
    "server-key.pem",
    "etcd-peer.pem",
    "etcd-peer-key.pem",
    "join-token",
    "iam-bootstrap-token",
    "iam-admin.pub",
];

#[test]
fn four_nodes_get_folders_openssl_and_flint_accept() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    let report = lab.prepare_ok(&[]);
    assert!(
        report.contains("5 folders: 5 created, 0 updated, 0 unchanged"),
        "{report}"
    );
    let cluster = lab.out().join("cluster");
    assert_eq!(mode(&cluster.join("ca-key.pem")), 0o600);
    assert_eq!(mode(&cluster.join("admin-key.pem")), 0o600);
    let out = openssl(&[
        "verify",
        "-CAfile",
        s(&cluster.join("ca.pem")),
        "-purpose",
        "sslclient",
        s(&cluster.join("admin.pem")),
    ]);
    assert!(out.contains(": OK"), "admin.pem: {out}");
    assert_eq!(mode(&cluster.join("iam-admin-key.pem")), 0o600);
    let join_token = fs::read_to_string(cluster.join("join-token")).unwrap();
    assert_eq!(join_token.trim().len(), 64, "32 random bytes as hex");

    for i in 1..=4 {
        let name = format!("node0{i}");
        let dir = lab.node(&name);
        assert_eq!(mode(&dir), 0o700, "{name}'s folder");
        let mut listed: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        let mut expected: Vec<String> = NODE_FILES.iter().map(|f| f.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{name}'s folder");
        for secret in [
            "node-key.pem",
            "server-key.pem",
            "etcd-peer-key.pem",
            "join-token",
            "iam-bootstrap-token",
        ] {
            assert_eq!(mode(&dir.join(secret)), 0o600, "{name}/{secret}");
        }
        assert_eq!(
            fs::read_to_string(dir.join("join-token")).unwrap(),
            join_token
        );
        assert!(
            !fs::read_to_string(dir.join("iam-admin.pub"))
                .unwrap()
                .contains("PRIVATE"),
            "only the admin's public key goes to a node"
        );

        // openssl: every certificate chains to the CA for its purpose and names the node.
        let ca = dir.join("ca.pem");
        for (cert, purpose) in [
            ("server.pem", "sslserver"),
            ("node.pem", "sslclient"),
            ("etcd-peer.pem", "sslserver"),
            ("etcd-peer.pem", "sslclient"),
        ] {
            let out = openssl(&[
                "verify",
                "-CAfile",
                s(&ca),
                "-purpose",
                purpose,
                s(&dir.join(cert)),
            ]);
            assert!(out.contains(": OK"), "{name}/{cert} as {purpose}: {out}");
        }
        for cert in ["server.pem", "etcd-peer.pem"] {
            let cert = dir.join(cert);
            for check in [
                ["-checkip", &format!("10.0.200.1{i}")],
                ["-checkip", &format!("10.0.100.5{i}")],
                ["-checkip", "127.0.0.1"],
                ["-checkhost", &format!("node0{i}.example.com")],
            ] {
                let out = openssl(&["x509", "-noout", "-in", s(&cert), check[0], check[1]]);
                assert!(
                    out.contains("does match"),
                    "{name}: {} {}: {out}",
                    check[0],
                    check[1]
                );
            }
            let other = format!("10.0.200.1{}", i % 4 + 1);
            let out = openssl(&["x509", "-noout", "-in", s(&cert), "-checkip", &other]);
            assert!(
                out.contains("does NOT match"),
                "{name} is not {other}: {out}"
            );
        }
        // The key is the certificate's.
        let cert_key = openssl(&["x509", "-noout", "-pubkey", "-in", s(&dir.join("node.pem"))]);
        let key_pub = openssl(&["pkey", "-pubout", "-in", s(&dir.join("node-key.pem"))]);
        assert_eq!(cert_key, key_pub, "{name}: node.pem is node-key.pem's");

        // The config loads with the code flint runs, and says what the inventory says.
        let config = flint_config::Config::load(&dir.join("cluster-config.json"))
            .unwrap_or_else(|e| panic!("{name}'s config is refused by flint: {e}"));
        assert_eq!(config.node_id.as_str(), name);
        assert_eq!(config.bootstrap, i < 4);
        assert_eq!(config.expected_members, Some(4));
        let tls = config.tls.as_ref().expect("tls");
        assert_eq!(tls.ca, dir.join("ca.pem"));
        let etcd = config.etcd().expect("etcd settings");
        assert_eq!(
            etcd.endpoints.by_field()[0].1.as_str(),
            "https://10.0.200.11:2579/"
        );
        let raw: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("cluster-config.json")).unwrap())
                .unwrap();
        assert_eq!(raw["chainfire"]["raft_addr"], format!("10.0.200.1{i}:2380"));
        assert_eq!(raw["flaredb"]["raft_addr"], format!("10.0.200.1{i}:2480"));
        assert_eq!(raw["etcd"]["raft_addr"], format!("10.0.200.1{i}:2580"));
        assert_eq!(
            raw["chainfire"]["peers"],
            json!(["https://10.0.200.12:2379", "https://10.0.200.13:2379"])
        );
        if i < 4 {
            assert_eq!(
                raw["etcd"]["initial_cluster"],
                json!({"node01": "https://10.0.200.11:2580", "node02": "https://10.0.200.12:2580",
                       "node03": "https://10.0.200.13:2580"})
            );
        } else {
            assert!(raw["etcd"].get("initial_cluster").is_none(), "{raw}");
        }
    }
}

#[test]
fn a_rerun_changes_nothing_and_a_new_node_changes_nothing_else() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    lab.prepare_ok(&[]);
    let before = snapshot(&lab.out());
    let report = lab.prepare_ok(&[]);
    assert!(report.contains("0 files written"), "{report}");
    assert_eq!(snapshot(&lab.out()), before, "a rerun rewrote something");

    let mut inventory = four_node_inventory();
    inventory["nodes"].as_array_mut().unwrap().push(json!(
        {"name": "node05", "mac": "52:54:00:00:00:05", "profile": "cp",
         "raft_addr": "10.0.200.15:2380", "services": ["chainfire", "flaredb"]}));
    lab.write_inventory(&inventory);
    let report = lab.prepare_ok(&[]);
    assert!(
        report.contains("6 folders: 1 created, 0 updated, 5 unchanged"),
        "{report}"
    );
    let after = snapshot(&lab.out());
    let added: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(
        added.iter().all(|p| p.starts_with(lab.node("node05"))),
        "{added:?}"
    );
    for (path, was) in &before {
        assert_eq!(after.get(path), Some(was), "{} changed", path.display());
    }
    // node05 runs no etcd and no IAM: none of their files.
    for absent in ["etcd-peer.pem", "iam-bootstrap-token", "iam-admin.pub"] {
        assert!(!lab.node("node05").join(absent).exists(), "{absent}");
    }

    // A node no longer in the inventory is named and left alone.
    inventory["nodes"].as_array_mut().unwrap().pop();
    lab.write_inventory(&inventory);
    let report = lab.prepare_ok(&[]);
    assert!(report.contains("nodes/node05"), "{report}");
    assert!(report.contains("not in the inventory"), "{report}");
    assert!(lab.node("node05").join("node-key.pem").exists());
}

#[test]
fn keys_are_replaced_only_with_rotate_keys_and_certificates_follow_the_inventory() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    lab.prepare_ok(&[]);
    let key = |name: &str, file: &str| fs::read(lab.node(name).join(file)).unwrap();
    let node04_key = key("node04", "server-key.pem");
    let node04_cert = key("node04", "server.pem");
    let config = key("node04", "cluster-config.json");

    // A new name: the certificates are reissued for the same key.
    let mut inventory = four_node_inventory();
    inventory["cluster"]["domain"] = json!("example.net");
    lab.write_inventory(&inventory);
    let report = lab.prepare_ok(&[]);
    assert!(
        report.contains("server.pem (reissued: its names changed)"),
        "{report}"
    );
    assert_eq!(key("node04", "server-key.pem"), node04_key);
    assert_ne!(key("node04", "server.pem"), node04_cert);
    let dir = lab.node("node04");
    let out = openssl(&[
        "x509",
        "-noout",
        "-in",
        s(&dir.join("server.pem")),
        "-checkhost",
        "node04.example.net",
    ]);
    assert!(out.contains("does match"), "{out}");

    // --rotate-keys: new keys and certificates everywhere; the CA, tokens and configs stay.
    let ca = fs::read(lab.out().join("cluster/ca.pem")).unwrap();
    let token = key("node04", "join-token");
    let report = lab.prepare_ok(&["--rotate-keys"]);
    assert!(
        report.contains("node-key.pem (new key: --rotate-keys)"),
        "{report}"
    );
    assert_ne!(key("node04", "server-key.pem"), node04_key);
    assert_eq!(fs::read(lab.out().join("cluster/ca.pem")).unwrap(), ca);
    assert_eq!(key("node04", "join-token"), token);
    assert_eq!(key("node04", "cluster-config.json").len(), config.len());
    let out = openssl(&[
        "verify",
        "-CAfile",
        s(&dir.join("ca.pem")),
        s(&dir.join("server.pem")),
    ]);
    assert!(out.contains(": OK"), "{out}");
    let cert_key = openssl(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        s(&dir.join("server.pem")),
    ]);
    let key_pub = openssl(&["pkey", "-pubout", "-in", s(&dir.join("server-key.pem"))]);
    assert_eq!(cert_key, key_pub);
}

#[test]
fn an_operators_ca_signs_and_never_lands_in_the_output() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    let ca_cert = lab.dir.path().join("site-ca.pem");
    let ca_key = lab.dir.path().join("site-ca-key.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=site CA",
        "-days",
        "30",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&ca_cert),
    ]);
    fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o640)).unwrap();
    let args = ["--ca-cert", s(&ca_cert), "--ca-key", s(&ca_key)];
    let out = lab.prepare(&args);
    assert_eq!(out.status.code(), Some(77), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readable by group or others"),
        "{}",
        describe(&out)
    );
    assert!(!lab.out().exists(), "nothing written after a refusal");

    fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o600)).unwrap();
    lab.prepare_ok(&args);
    assert!(!lab.out().join("cluster/ca-key.pem").exists());
    assert!(!lab.out().join("cluster/ca.pem").exists());
    let dir = lab.node("node02");
    assert_eq!(
        fs::read(dir.join("ca.pem")).unwrap(),
        fs::read(&ca_cert).unwrap()
    );
    let out = openssl(&[
        "verify",
        "-CAfile",
        s(&ca_cert),
        "-purpose",
        "sslserver",
        s(&dir.join("server.pem")),
    ]);
    assert!(out.contains(": OK"), "{out}");

    // A key that is not the certificate's.
    let other_key = lab.dir.path().join("other-key.pem");
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", s(&other_key)]);
    fs::set_permissions(&other_key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = lab.prepare(&["--ca-cert", s(&ca_cert), "--ca-key", s(&other_key)]);
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the key is not the certificate's"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_ca_key_or_node_key_readable_by_others_is_refused_with_nothing_written() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    lab.prepare_ok(&[]);
    let mut inventory = four_node_inventory();
    inventory["cluster"]["domain"] = json!("example.org");
    lab.write_inventory(&inventory);

    for file in ["cluster/ca-key.pem", "nodes/node03/etcd-peer-key.pem"] {
        let path = lab.out().join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        let before = snapshot(&lab.out());
        let out = lab.prepare(&[]);
        assert_eq!(out.status.code(), Some(77), "{file}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file) && stderr.contains("mode 0604"),
            "{stderr}"
        );
        assert_eq!(
            snapshot(&lab.out()),
            before,
            "{file}: something was written"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    lab.prepare_ok(&[]);
}

#[track_caller]
fn refused(lab: &Lab, inventory: &Value, path: &str, expected: &str) {
    lab.write_inventory(inventory);
    let before = snapshot(&lab.out());
    let out = lab.prepare(&[]);
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!("{}: {path}: expected ", lab.inventory().display());
    assert!(
        stderr.contains(&line) && stderr.contains(expected),
        "expected {line}…{expected} in: {stderr}"
    );
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert_eq!(snapshot(&lab.out()), before, "something was written");
}

#[test]
fn bad_inventories_are_refused_naming_file_and_path_with_nothing_written() {
    let lab = Lab::new();
    let mut duplicate = four_node_inventory();
    duplicate["nodes"][3]["raft_addr"] = json!("10.0.200.12:2380");
    refused(
        &lab,
        &duplicate,
        "nodes[3].raft_addr",
        "not already used by nodes[1]",
    );
    let mut no_address = four_node_inventory();
    no_address["nodes"][2]
        .as_object_mut()
        .unwrap()
        .remove("raft_addr");
    refused(&lab, &no_address, "nodes[2].raft_addr", "cluster address");
    let mut unknown = four_node_inventory();
    unknown["nodes"][1]["services"] = json!(["chainfire", "zookeeper"]);
    refused(&lab, &unknown, "nodes[1].services[1]", "\"zookeeper\"");
    let mut no_cluster = four_node_inventory();
    no_cluster.as_object_mut().unwrap().remove("cluster");
    for node in no_cluster["nodes"].as_array_mut().unwrap() {
        let node = node.as_object_mut().unwrap();
        node.remove("raft_addr");
        node.remove("initial");
    }
    refused(&lab, &no_cluster, ".", "a \"cluster\" section");
    assert!(!lab.out().exists());

    // The same refusals leave an existing output exactly as it was.
    lab.write_inventory(&four_node_inventory());
    lab.prepare_ok(&[]);
    refused(
        &lab,
        &duplicate,
        "nodes[3].raft_addr",
        "not already used by nodes[1]",
    );
    refused(&lab, &unknown, "nodes[1].services[1]", "\"zookeeper\"");
}

#[test]
fn what_is_in_the_way_is_named_not_followed() {
    let lab = Lab::new();
    lab.write_inventory(&four_node_inventory());
    lab.prepare_ok(&[]);
    let key = lab.node("node01").join("node-key.pem");
    let elsewhere = lab.dir.path().join("elsewhere.pem");
    fs::rename(&key, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let before = snapshot(&lab.out());
    let out = lab.prepare(&[]);
    assert_eq!(out.status.code(), Some(73), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("found a symbolic link"),
        "{}",
        describe(&out)
    );
    assert_eq!(snapshot(&lab.out()), before);

    // An admin "public key" that is a private one is refused.
    let private = lab.out().join("cluster/iam-admin-key.pem");
    let lab2 = Lab::new();
    lab2.write_inventory(&four_node_inventory());
    let out = lab2.prepare(&["--iam-admin-key", s(&private)]);
    assert_eq!(out.status.code(), Some(78), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds a private key"),
        "{}",
        describe(&out)
    );
    assert!(!lab2.out().exists());
}

#[test]
fn a_report_url_gives_every_node_the_endpoint_and_the_boot_server_an_identity_and_no_secret() {
    let lab = Lab::new();
    let mut inventory = four_node_inventory();
    inventory["cluster"]["report_url"] = json!("https://10.0.100.2:8443/api/reports");
    lab.write_inventory(&inventory);
    let report = lab.prepare_ok(&[]);
    assert!(report.contains("boot-server"), "{report}");
    for name in ["node01", "node04"] {
        let config: Value = serde_json::from_str(
            &fs::read_to_string(lab.node(name).join("cluster-config.json")).expect("config"),
        )
        .expect("JSON");
        assert_eq!(config["report_url"], "https://10.0.100.2:8443/api/reports");
    }
    let boot = lab.out().join("boot-server");
    let mut files: Vec<String> = fs::read_dir(&boot)
        .expect("boot-server folder")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .collect();
    files.sort();
    assert_eq!(files, ["boot-server-key.pem", "boot-server.pem", "ca.pem"]);
    assert_eq!(mode(&boot.join("boot-server-key.pem")), 0o600);
    let ca = lab.out().join("cluster/ca.pem");
    let cert = boot.join("boot-server.pem");
    for purpose in ["sslserver", "sslclient"] {
        openssl(&[
            "verify",
            "-CAfile",
            s(&ca),
            "-purpose",
            purpose,
            "-verify_ip",
            "10.0.100.2",
            s(&cert),
        ]);
    }
    let key_public = openssl(&[
        "pkey",
        "-in",
        s(&boot.join("boot-server-key.pem")),
        "-pubout",
    ]);
    let cert_public = openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"]);
    assert_eq!(key_public, cert_public, "the key is the certificate's");
    let subject = openssl(&["x509", "-in", s(&cert), "-noout", "-subject"]);
    assert!(
        !["node01", "node02", "node03", "node04"]
            .iter()
            .any(|n| subject.contains(n)),
        "the boot server must not be able to pass for a node: {subject}"
    );

    let before = snapshot(&lab.out());
    let report = lab.prepare_ok(&[]);
    assert!(report.contains("0 files written"), "{report}");
    assert_eq!(snapshot(&lab.out()), before, "a rerun rewrote something");

    inventory["cluster"]["report_url"] = json!("https://boot.example.com:8443/api/reports");
    lab.write_inventory(&inventory);
    let report = lab.prepare_ok(&[]);
    assert!(
        report.contains("boot-server.pem (reissued"),
        "a new host gets a new certificate: {report}"
    );
    openssl(&[
        "verify",
        "-CAfile",
        s(&ca),
        "-verify_hostname",
        "boot.example.com",
        s(&cert),
    ]);
}

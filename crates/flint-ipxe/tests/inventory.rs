//! Parsing, validation, selection and golden rendering of a small inventory.

use flint_ipxe::{Arch, Inventory, InventoryError, Mac, Selection, UnknownPolicy, Uuid};

const GOOD: &str = r#"{
  "profiles": {
    "worker": {
      "kernel": "debian/vmlinuz",
      "initrds": ["debian/initrd.img"],
      "cmdline": "console=ttyS0 ip=dhcp",
      "arch": {"arm64": {"kernel": "debian-arm64/vmlinuz", "initrds": ["debian-arm64/initrd.img"]}}
    },
    "control-plane": {"kernel": "cp/vmlinuz", "initrds": ["cp/initrd.img", "cp/extra.img"]}
  },
  "nodes": [
    {"name": "node01", "mac": "52:54:00:12:34:56", "profile": "worker",
     "uuid": "01234567-89AB-cdef-0123-456789abcdef", "addresses": ["10.0.200.10", "fd00::10"]},
    {"name": "node02", "mac": "52-54-00-AB-CD-EF", "profile": "control-plane"}
  ],
  "unknown": {"policy": "menu"}
}"#;

fn good() -> Inventory {
    Inventory::from_json("inv.json", GOOD).expect("valid inventory")
}

fn errors(json: &str) -> Vec<InventoryError> {
    Inventory::from_json("inv.json", json)
        .expect_err("must be rejected")
        .0
}

/// The single error for `json`, checked for file, path and a piece of the expectation.
fn one_error(json: &str, path: &str, expected: &str) {
    let errs = errors(json);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.file, "inv.json");
    assert_eq!(e.path, path, "{e}");
    assert!(e.expected.contains(expected), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("inv.json: {path}: expected ")),
        "{shown}"
    );
}

fn with_node(node: &str) -> String {
    format!(r#"{{"profiles": {{"w": {{"kernel": "k"}}}}, "nodes": [{node}]}}"#)
}

#[test]
fn parses_and_normalises() {
    let inv = good();
    assert_eq!(inv.nodes()[1].mac.to_string(), "52:54:00:ab:cd:ef");
    assert_eq!(
        inv.nodes()[0].uuid.unwrap().to_string(),
        "01234567-89ab-cdef-0123-456789abcdef"
    );
    assert_eq!(inv.nodes()[0].addresses.len(), 2);
    assert_eq!(*inv.unknown(), UnknownPolicy::Menu);
    assert_eq!(inv.profiles()["control-plane"].cmdline, "");
}

#[test]
fn absent_policy_refuses() {
    let inv = Inventory::from_json("x", r#"{"profiles": {"w": {"kernel": "k"}}}"#).unwrap();
    assert_eq!(*inv.unknown(), UnknownPolicy::Refuse);
}

#[test]
fn json_errors_name_path() {
    one_error("{", ".", "valid inventory JSON");
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "initrd": []}}}"#,
        "profiles.w.initrd",
        "unknown field",
    );
    one_error(
        &with_node(r#"{"name": "n", "mac": 5, "profile": "w"}"#),
        "nodes[0].mac",
        "a string",
    );
    one_error(r#"{"nodes": []}"#, ".", "missing field `profiles`");
}

#[test]
fn bad_mac() {
    for mac in [
        "52:54:00:12:34",
        "52:54:00:12:34:5g",
        "5254.0012.3456",
        "52:54-00:12:34:56",
    ] {
        one_error(
            &with_node(&format!(
                r#"{{"name": "n", "mac": "{mac}", "profile": "w"}}"#
            )),
            "nodes[0].mac",
            "a MAC address",
        );
    }
}

#[test]
fn duplicates() {
    let json = with_node(
        r#"{"name": "a", "mac": "52:54:00:12:34:56", "profile": "w"},
           {"name": "b", "mac": "52-54-00-12-34-56", "profile": "w"}"#,
    );
    one_error(&json, "nodes[1].mac", "not already used by nodes[0]");
    let json = with_node(
        r#"{"name": "a", "mac": "52:54:00:12:34:56", "profile": "w"},
           {"name": "a", "mac": "52:54:00:12:34:57", "profile": "w"}"#,
    );
    one_error(&json, "nodes[1].name", "not already used by nodes[0]");
    let json = with_node(
        r#"{"name": "a", "mac": "52:54:00:12:34:56", "profile": "w", "uuid": "01234567-89ab-cdef-0123-456789abcdef"},
           {"name": "b", "mac": "52:54:00:12:34:57", "profile": "w", "uuid": "01234567-89AB-CDEF-0123-456789ABCDEF"}"#,
    );
    one_error(&json, "nodes[1].uuid", "not already used by nodes[0]");
}

#[test]
fn unknown_profile() {
    one_error(
        &with_node(r#"{"name": "n", "mac": "52:54:00:12:34:56", "profile": "nope"}"#),
        "nodes[0].profile",
        "the name of a profile",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default", "profile": "x"}}"#,
        "unknown.profile",
        "the name of a profile",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default"}}"#,
        "unknown.profile",
        "needs one",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "boot"}}"#,
        "unknown.policy",
        "\"menu\", \"default\" or \"refuse\"",
    );
}

#[test]
fn other_values() {
    one_error(
        &with_node(r#"{"name": "n", "mac": "52:54:00:12:34:56", "profile": "w", "uuid": "123"}"#),
        "nodes[0].uuid",
        "a UUID",
    );
    one_error(
        &with_node(
            r#"{"name": "n", "mac": "52:54:00:12:34:56", "profile": "w", "addresses": ["1.2.3"]}"#,
        ),
        "nodes[0].addresses[0]",
        "an IPv4 or IPv6 address",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "arch": {"riscv64": {"kernel": "r"}}}}}"#,
        "profiles.w.arch.riscv64",
        "an architecture",
    );
    one_error(r#"{"profiles": {}}"#, "profiles", "at least one profile");
}

#[test]
fn injection_is_rejected() {
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "cmdline": "quiet\nshell"}}}"#,
        "profiles.w.cmdline",
        "kernel parameters",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "cmdline": "x=${net0/ip}"}}}"#,
        "profiles.w.cmdline",
        "without '$'",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "cmdline": "quiet || shell"}}}"#,
        "profiles.w.cmdline",
        "kernel parameters",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "a b"}}}"#,
        "profiles.w.kernel",
        "a relative path",
    );
    one_error(
        r#"{"profiles": {"w": {"kernel": "k", "initrds": ["ok", "x\nshell"]}}}"#,
        "profiles.w.initrds[1]",
        "a relative path",
    );
    one_error(
        r#"{"profiles": {"w x": {"kernel": "k"}}}"#,
        "profiles.w x",
        "a name of 1 to 63",
    );
    one_error(
        &with_node(r#"{"name": "n\nshell", "mac": "52:54:00:12:34:56", "profile": "w"}"#),
        "nodes[0].name",
        "a name of 1 to 63",
    );
    one_error(
        r#"{"images_url": "http://x/${y}", "profiles": {"w": {"kernel": "k"}}}"#,
        "images_url",
        "an http:// or https:// URL",
    );
}

#[test]
fn collects_every_error() {
    let errs = errors(
        r#"{"profiles": {"w": {"kernel": "../k"}},
            "nodes": [{"name": "-n", "mac": "x", "profile": "q"}]}"#,
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "profiles.w.kernel",
            "nodes[0].name",
            "nodes[0].mac",
            "nodes[0].profile"
        ]
    );
}

#[test]
fn hostile_key_cannot_forge_an_error_line() {
    let errs = errors(r#"{"profiles": {"w\ninv.json: fake": {"kernel": "k"}}}"#);
    assert!(!errs[0].to_string().contains('\n'), "{}", errs[0]);
}

fn mac(s: &str) -> Mac {
    Mac::parse(s).unwrap()
}

#[test]
fn selects_by_mac_then_uuid() {
    let inv = good();
    let uuid = Uuid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
    let by_mac = inv.select(
        Some(&mac("52:54:00:ab:cd:ef")),
        Some(&uuid),
        Some(Arch::X86_64),
    );
    assert!(matches!(by_mac, Selection::Node { node, .. } if node.name == "node02"));
    let by_uuid = inv.select(Some(&mac("02:00:00:00:00:01")), Some(&uuid), None);
    assert!(matches!(by_uuid, Selection::Node { node, .. } if node.name == "node01"));
    let none = inv.select(Some(&mac("02:00:00:00:00:01")), None, None);
    assert_eq!(none, Selection::Menu);
    assert_eq!(inv.select(None, None, None), Selection::Menu);
}

#[test]
fn arch_picks_kernel_or_falls_back() {
    let inv = good();
    let m = mac("52:54:00:12:34:56");
    let kernel = |arch| match inv.select(Some(&m), None, arch) {
        Selection::Node { images, .. } => images.kernel.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(kernel(Some(Arch::Arm64)), "debian-arm64/vmlinuz");
    assert_eq!(kernel(Some(Arch::X86_64)), "debian/vmlinuz");
    assert_eq!(kernel(None), "debian/vmlinuz");
}

#[test]
fn arch_from_ipxe() {
    assert_eq!(Arch::from_ipxe("x86_64", Some("efi")), Some(Arch::X86_64));
    assert_eq!(Arch::from_ipxe("i386", Some("pcbios")), Some(Arch::X86_64));
    assert_eq!(Arch::from_ipxe("i386", Some("efi")), Some(Arch::I386));
    assert_eq!(Arch::from_ipxe("arm64", Some("efi")), Some(Arch::Arm64));
    assert_eq!(Arch::from_ipxe("riscv64", Some("efi")), None);
}

#[test]
fn policies() {
    let base = r#"{"profiles": {"w": {"kernel": "k", "cmdline": "quiet"}}, "unknown": "#;
    let inv = |u: &str| Inventory::from_json("x", &format!("{base}{u}}}")).unwrap();
    let stranger = mac("02:00:00:00:00:01");

    let d = inv(r#"{"policy": "default", "profile": "w"}"#);
    let sel = d.select(Some(&stranger), None, None);
    assert!(matches!(sel, Selection::Default { profile, .. } if profile.name == "w"));
    assert_eq!(
        d.render(&sel, None),
        "#!ipxe\necho flint: unknown machine, default profile w\nkernel images/k quiet\nboot\n"
    );

    let r = inv(r#"{"policy": "refuse"}"#);
    let sel = r.select(Some(&stranger), None, None);
    assert_eq!(sel, Selection::Refuse);
    assert_eq!(
        r.render(&sel, None),
        "#!ipxe\necho flint: machine ${netX/mac} is not in the inventory, refused\nexit 1\n"
    );
}

#[test]
fn golden_node_scripts() {
    let inv = good();
    assert_eq!(
        inv.render_node("node01", Some(Arch::X86_64)).unwrap(),
        "#!ipxe\n\
         echo flint: booting node01 profile worker\n\
         kernel images/debian/vmlinuz initrd=initrd.img console=ttyS0 ip=dhcp\n\
         initrd images/debian/initrd.img\n\
         boot\n"
    );
    assert_eq!(
        inv.render_node("node01", Some(Arch::Arm64)).unwrap(),
        "#!ipxe\n\
         echo flint: booting node01 profile worker\n\
         kernel images/debian-arm64/vmlinuz initrd=initrd.img console=ttyS0 ip=dhcp\n\
         initrd images/debian-arm64/initrd.img\n\
         boot\n"
    );
    assert!(inv.render_node("nope", None).is_none());

    let json = GOOD.replacen(
        '{',
        r#"{"images_url": "http://10.0.200.2:8080/images/","#,
        1,
    );
    let inv = Inventory::from_json("inv.json", &json).unwrap();
    assert_eq!(
        inv.render_node("node02", None).unwrap(),
        "#!ipxe\n\
         echo flint: booting node02 profile control-plane\n\
         kernel http://10.0.200.2:8080/images/cp/vmlinuz initrd=initrd.img initrd=extra.img\n\
         initrd http://10.0.200.2:8080/images/cp/initrd.img\n\
         initrd http://10.0.200.2:8080/images/cp/extra.img\n\
         boot\n"
    );
}

#[test]
fn golden_menu() {
    let inv = good();
    assert_eq!(
        inv.render_menu(Some(Arch::Arm64)),
        "#!ipxe\n\
         menu flint: choose a profile for ${netX/mac}\n\
         item control-plane control-plane\n\
         item worker worker\n\
         choose target || exit 1\n\
         goto ${target}\n\
         :control-plane\n\
         kernel images/cp/vmlinuz initrd=initrd.img initrd=extra.img\n\
         initrd images/cp/initrd.img\n\
         initrd images/cp/extra.img\n\
         boot\n\
         :worker\n\
         kernel images/debian-arm64/vmlinuz initrd=initrd.img console=ttyS0 ip=dhcp\n\
         initrd images/debian-arm64/initrd.img\n\
         boot\n"
    );
}

#[test]
fn golden_boot_ipxe() {
    assert_eq!(
        flint_ipxe::render_boot_ipxe(Some("http://10.0.200.2:8080/")).unwrap(),
        "#!ipxe\nchain --autofree http://10.0.200.2:8080/ipxe?mac=${netX/mac:hexhyp}&uuid=${uuid}\
         &platform=${platform}&buildarch=${buildarch} || exit 1\n"
    );
    assert_eq!(
        flint_ipxe::render_boot_ipxe(None).unwrap(),
        "#!ipxe\nchain --autofree ipxe?mac=${netX/mac:hexhyp}&uuid=${uuid}\
         &platform=${platform}&buildarch=${buildarch} || exit 1\n"
    );
    let err = flint_ipxe::render_boot_ipxe(Some("http://x/\nshell")).unwrap_err();
    assert!(err.to_string().contains("expected an http://"), "{err}");
}

#[test]
fn golden_static_boot_ipxe() {
    let fetch =
        |base: &str, name: &str| format!("imgfetch --name flint {base}{name}.${{flint-arch}}.ipxe");
    for (url, base) in [
        (None, ""),
        (Some("http://10.0.200.2/www/"), "http://10.0.200.2/www/"),
    ] {
        assert_eq!(
            flint_ipxe::render_static_boot_ipxe(url).unwrap(),
            format!(
                "#!ipxe\n\
                 set flint-arch default\n\
                 iseq ${{buildarch}} x86_64 && set flint-arch x86_64 ||\n\
                 iseq ${{buildarch}} arm64 && set flint-arch arm64 ||\n\
                 iseq ${{buildarch}} i386 && set flint-arch x86_64 ||\n\
                 iseq ${{buildarch}}-${{platform}} i386-efi && set flint-arch i386 ||\n\
                 {} || {} || {} || exit 1\n\
                 chain --autofree flint || exit 1\n",
                fetch(base, "mac-${netX/mac:hexhyp}"),
                fetch(base, "uuid-${uuid}"),
                fetch(base, "unknown")
            )
        );
    }
    assert!(flint_ipxe::render_static_boot_ipxe(Some("http://x/ y")).is_err());
}

#[test]
fn mac_forms() {
    let m = mac("52-54-00-AB-cd-EF");
    assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
    assert_eq!(m.hyphenated(), "52-54-00-ab-cd-ef");
    assert_eq!(Mac::parse(&m.hyphenated()), Some(m));
    assert_eq!(Mac::parse(""), None);
    assert_eq!(Mac::parse("52:54:00:ab:cd:ef:00"), None);
}

#[test]
fn hostile_key_in_serde_error_is_escaped() {
    let errs = errors(r#"{"profiles": {"w\nx": {"kernel": "k", "bogus": 1}}}"#);
    assert!(!errs[0].to_string().contains('\n'), "{}", errs[0]);
}

#[test]
fn placeholder_uuids_select_nobody_and_are_refused_in_the_inventory() {
    let zero = "00000000-0000-0000-0000-000000000000";
    let json = format!(
        r#"{{"profiles": {{"w": {{"kernel": "k"}}}},
            "nodes": [{{"name": "n1", "mac": "52:54:00:00:00:01", "profile": "w", "uuid": "{zero}"}}]}}"#
    );
    let errs = Inventory::from_json("inv.json", &json).unwrap_err();
    assert_eq!(
        errs.0[0].to_string(),
        format!(
            "inv.json: nodes[0].uuid: expected a UUID that identifies one machine (all zeros and \
             all ones are what boards without one report), found {zero}"
        )
    );
    let inv = good();
    for placeholder in [zero, "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"] {
        let u = Uuid::parse(placeholder).unwrap();
        assert!(u.is_placeholder());
        assert_eq!(
            inv.select(Some(&mac("02:00:00:00:00:01")), Some(&u), None),
            Selection::Menu
        );
    }
}

#[test]
fn initrds_of_one_kernel_need_distinct_file_names() {
    let json =
        r#"{"profiles": {"w": {"kernel": "k", "initrds": ["a/initrd.img", "b/initrd.img"]}}}"#;
    let errs = Inventory::from_json("inv.json", json).unwrap_err();
    assert_eq!(
        errs.0[0].to_string(),
        "inv.json: profiles.w.initrds[1]: expected a file name not already used by initrds[0] \
         (iPXE names an initrd by its last path segment), found \"b/initrd.img\""
    );
}

/// Found by the inventory fuzz target: an unknown key with a line break was echoed raw, so one
/// error became two log lines.
#[test]
fn errors_stay_on_one_line_whatever_the_keys_hold() {
    let json = "{\"profiles\": {\"w\": {\"kernel\": \"k\"}}, \"a\\nflint-boot: ok\\r\": 1}";
    let errs = Inventory::from_json("inv.json", json).unwrap_err();
    let msg = errs.to_string();
    assert!(!msg.contains(['\n', '\r']), "{msg:?}");
    assert!(msg.contains("a\\nflint-boot: ok\\r"), "{msg}");
}

#[test]
fn the_file_is_one_json_value_and_no_key_is_given_twice() {
    // serde_json reads the first value and would ignore the rest; its maps keep the last of two
    // equal keys, so a profile defined twice would silently lose its first definition.
    one_error(
        &format!("{GOOD} garbage"),
        ".",
        "nothing after the inventory's object",
    );
    one_error(
        &format!("{GOOD}\n{GOOD}"),
        ".",
        "nothing after the inventory's object",
    );
    let twice =
        r#"{"profiles": {"worker": {"kernel": "a/vmlinuz"}, "worker": {"kernel": "b/vmlinuz"}}}"#;
    one_error(twice, "profiles", "duplicate key `worker`");
    let arch_twice = r#"{"profiles": {"w": {"kernel": "a/vmlinuz", "arch": {
        "arm64": {"kernel": "b/vmlinuz"}, "arm64": {"kernel": "c/vmlinuz"}}}}}"#;
    one_error(arch_twice, "profiles.w.arch", "duplicate key `arm64`");
}

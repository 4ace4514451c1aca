//! Property test: no inventory value, however hostile, can add a command to a rendered script.
//!
//! A random string goes into one inventory field. Either validation rejects it, or every script
//! rendered from the inventory has the same command skeleton (first word of each line) as the
//! script rendered from the untouched inventory, and no line carries data-driven iPXE syntax.

use flint_ipxe::{Arch, Inventory, Mac, Uuid, check_script, render_refuse};
use proptest::prelude::*;
use serde_json::{Value, json};

fn base() -> Value {
    // Every image list has one entry so that renaming a profile (which reorders the menu) keeps
    // the skeleton the same.
    json!({
        "images_url": "http://10.0.200.2:8080/images",
        "profiles": {
            "worker": {
                "kernel": "debian/vmlinuz",
                "initrds": ["debian/initrd.img"],
                "cmdline": "console=ttyS0 ip=dhcp",
                "arch": {"arm64": {"kernel": "arm/vmlinuz", "initrds": ["arm/initrd.img"]}}
            },
            "cp": {"kernel": "cp/vmlinuz", "initrds": ["cp/initrd.img"], "cmdline": "quiet"}
        },
        "nodes": [
            {"name": "node01", "mac": "52:54:00:12:34:56", "profile": "worker",
             "uuid": "01234567-89ab-cdef-0123-456789abcdef", "addresses": ["10.0.200.10"]},
            {"name": "node02", "mac": "52:54:00:12:34:57", "profile": "cp"}
        ],
        "unknown": {"policy": "default", "profile": "worker"}
    })
}

/// Where the random string goes: a JSON pointer to a string value, or a renamed map key.
#[derive(Debug, Clone)]
enum Field {
    Value(&'static str),
    ProfileKey,
    ArchKey,
}

const POINTERS: &[&str] = &[
    "/images_url",
    "/profiles/worker/kernel",
    "/profiles/worker/initrds/0",
    "/profiles/worker/cmdline",
    "/profiles/worker/arch/arm64/kernel",
    "/profiles/worker/arch/arm64/initrds/0",
    "/profiles/cp/kernel",
    "/profiles/cp/cmdline",
    "/nodes/0/name",
    "/nodes/0/mac",
    "/nodes/0/profile",
    "/nodes/0/uuid",
    "/nodes/0/addresses/0",
    "/nodes/1/name",
    "/unknown/profile",
];

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        8 => proptest::sample::select(POINTERS).prop_map(Field::Value),
        1 => Just(Field::ProfileKey),
        1 => Just(Field::ArchKey),
    ]
}

fn hostile() -> impl Strategy<Value = String> {
    let pieces = proptest::sample::select(vec![
        "\n",
        "\r",
        "\t",
        " ",
        "${",
        "}",
        "$",
        "#",
        "||",
        "&&",
        ";",
        "'",
        "\"",
        "\\",
        "-",
        "--",
        "/",
        "//",
        "..",
        ":",
        "é",
        "\u{2028}",
        "\u{0}",
        "a",
        "Z",
        "0",
        "9",
        "=",
        ".",
        "_",
        "+",
        "shell",
        "http://h/",
        "52:54:00:",
        "ab",
        "-89ab",
    ]);
    prop_oneof![
        any::<String>(),
        "[a-z0-9 ./:${}#|&;'\"\\\\\n\r\t=_+-]{0,24}",
        proptest::collection::vec(pieces, 0..8).prop_map(|v| v.concat()),
        // Mostly valid values with one hostile piece, so that some pass validation.
        ("[a-z]{1,6}", "[ \n$#|&;-]?", "[a-z]{0,6}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

fn apply(mut v: Value, field: &Field, s: &str) -> Value {
    match field {
        Field::Value(p) => *v.pointer_mut(p).unwrap() = Value::String(s.into()),
        Field::ProfileKey => {
            let profiles = v["profiles"].as_object_mut().unwrap();
            let p = profiles.remove("worker").unwrap();
            profiles.insert(s.into(), p);
            v["nodes"][0]["profile"] = Value::String(s.into());
            v["unknown"]["profile"] = Value::String(s.into());
        }
        Field::ArchKey => {
            let arch = v["profiles"]["worker"]["arch"].as_object_mut().unwrap();
            let a = arch.remove("arm64").unwrap();
            arch.insert(s.into(), a);
        }
    }
    v
}

/// Every script the inventory can produce, in a fixed order.
fn scripts(inv: &Inventory) -> Vec<String> {
    let stranger = Mac::parse("02:00:00:00:00:01").unwrap();
    let mut arches: Vec<Option<Arch>> = vec![None];
    arches.extend(Arch::ALL.map(Some));
    let mut out = Vec::new();
    for &arch in &arches {
        for node in inv.nodes() {
            out.push(inv.render(&inv.select(Some(&node.mac), None, arch), arch));
            if let Some(u) = &node.uuid {
                out.push(inv.render(&inv.select(Some(&stranger), Some(u), arch), arch));
            }
        }
        let nobody = Uuid::parse("00000000-0000-0000-0000-000000000000").unwrap();
        out.push(inv.render(&inv.select(Some(&stranger), Some(&nobody), arch), arch));
        out.push(inv.render_menu(arch));
    }
    out.push(render_refuse());
    out
}

fn skeleton(script: &str) -> Vec<String> {
    script
        .lines()
        .map(|l| {
            if l.starts_with(':') {
                ":".to_string()
            } else {
                l.split(' ').next().unwrap_or("").to_string()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_value_adds_a_command(field in field(), s in hostile()) {
        let reference = Inventory::from_json("base.json", &base().to_string()).unwrap();
        let text = apply(base(), &field, &s).to_string();
        if let Ok(inv) = Inventory::from_json("inv.json", &text) {
            let got = scripts(&inv);
            let want = scripts(&reference);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(check_script(g), Ok(()));
                prop_assert_eq!(skeleton(g), skeleton(w), "script {}", g);
            }
        }
    }

    #[test]
    fn errors_stay_on_one_line(field in field(), s in hostile()) {
        let text = apply(base(), &field, &s).to_string();
        if let Err(errs) = Inventory::from_json("inv.json", &text) {
            for e in errs.0 {
                prop_assert!(!e.to_string().contains(['\n', '\r']), "{}", e);
            }
        }
    }
}

#[test]
fn base_renders_cleanly() {
    let inv = Inventory::from_json("base.json", &base().to_string()).unwrap();
    for s in scripts(&inv) {
        check_script(&s).unwrap();
    }
}

/// The property's checker itself: each way a value could break out of its place is caught.
#[test]
fn the_checker_catches_every_breakout() {
    let broken = [
        ("kernel debian/vmlinuz\n", "no #!ipxe first"),
        (
            "#!ipxe\nkernel debian/vmlinuz",
            "a last line without its \\n",
        ),
        ("#!ipxe\nkernel debian/vmlinuz\r\n", "a carriage return"),
        ("#!ipxe\nshell\n", "a command flint never writes"),
        (
            "#!ipxe\nkernel debian/vmlinuz ${root-pass}\n",
            "an expansion",
        ),
        ("#!ipxe\nkernel debian/vmlinuz || shell\n", "a separator"),
        ("#!ipxe\nkernel debian/vmlinuz ; shell\n", "a separator"),
        ("#!ipxe\nkernel debian/vmlinuz #x\n", "a comment"),
        ("#!ipxe\nkernel --name x debian/vmlinuz\n", "an option"),
        ("#!ipxe\nkernel  debian/vmlinuz\n", "an empty word"),
        ("#!ipxe\n\nboot\n", "an empty line"),
        ("#!ipxe\n:\n", "an empty label"),
        (
            "#!ipxe\nkernel debian/vmlinuz\u{7f}\n",
            "a control character",
        ),
        ("#!ipxe\nkernel débian/vmlinuz\n", "non-ASCII"),
    ];
    for (script, what) in broken {
        assert!(check_script(script).is_err(), "{what} passed: {script:?}");
    }
    let fine = "#!ipxe\nmenu flint: choose a profile for ${netX/mac}\nitem worker worker\n\
                choose target || exit 1\ngoto ${target}\n:worker\nkernel debian/vmlinuz \
                initrd=initrd.img console=ttyS0\ninitrd debian/initrd.img\nboot\n";
    assert_eq!(check_script(fine), Ok(()));
}

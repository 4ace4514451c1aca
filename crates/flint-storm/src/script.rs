//! `boot.ipxe` run as iPXE runs it, as far as flint-boot's scripts go.

use std::collections::HashMap;

use crate::http::{Http, resolve, split_url};
use crate::machine::{Firmware, Machine};
use crate::shared::Shared;

/// Runs `boot.ipxe` as iPXE would, as far as the commands flint-boot's scripts use go (both
/// `serve`'s one-line chain and `render`'s static set): `set`, `iseq`, `imgfetch --name`,
/// `chain [--autofree]` and `exit`, joined by `&&` and `||` with iPXE's left-to-right meaning
/// (src/hci/shell.c: a command after `&&` runs if the last one succeeded, after `||` if it
/// failed). `${...}` expands the variables iPXE sets for this machine; a fetch that is not a 200
/// fails its command (iPXE's imgfetch returns the HTTP error), which the next `||` catches.
/// Returns the URL and text of the script the chain ends in.
pub async fn run_boot_ipxe(
    shared: &Shared,
    m: &Machine,
    http: &mut Http,
    url: &str,
    body: &[u8],
) -> Result<(String, Vec<u8>), String> {
    let text = String::from_utf8_lossy(body).into_owned();
    if !text.starts_with("#!ipxe") {
        return Err(format!("boot.ipxe is not an iPXE script: {text:?}"));
    }
    let (platform, buildarch) = match m.firmware {
        Firmware::Bios => ("pcbios", "i386"),
        Firmware::Efi => ("efi", "x86_64"),
    };
    let mut vars: HashMap<String, String> = HashMap::from([
        ("netX/mac:hexhyp".into(), m.hexhyp()),
        ("uuid".into(), m.uuid_string()),
        ("platform".into(), platform.into()),
        ("buildarch".into(), buildarch.into()),
    ]);
    // Images fetched by name: their URL and bytes.
    let mut images: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    for line in text.lines().skip(1) {
        let mut ok = true;
        let mut op = "";
        let mut words = line.split_whitespace().peekable();
        while words.peek().is_some() {
            let mut command = Vec::new();
            let mut next_op = "";
            for w in words.by_ref() {
                if w == "&&" || w == "||" {
                    next_op = w;
                    break;
                }
                command.push(expand(w, &vars));
            }
            let runs = match op {
                "&&" => ok,
                "||" => !ok,
                _ => true,
            };
            if runs && !command.is_empty() {
                ok = match command[0].as_str() {
                    "set" if command.len() == 3 => {
                        vars.insert(command[1].clone(), command[2].clone());
                        true
                    }
                    "iseq" if command.len() == 3 => command[1] == command[2],
                    "imgfetch" if command.len() == 4 && command[1] == "--name" => {
                        let target = resolve(url, &command[3]);
                        let (_, path) = split_url(&target)?;
                        let (status, body, _) = http.get(shared, &path, true).await?;
                        if status == 200 {
                            images.insert(command[2].clone(), (target, body));
                        }
                        status == 200
                    }
                    "chain" => {
                        let target = command[1..]
                            .iter()
                            .find(|w| !w.starts_with("--"))
                            .ok_or_else(|| format!("chain with no image: {line:?}"))?;
                        if let Some(image) = images.remove(target) {
                            return Ok(image);
                        }
                        let target = resolve(url, target);
                        let (_, path) = split_url(&target)?;
                        let (status, body, _) = http.get(shared, &path, true).await?;
                        if status != 200 {
                            return Err(format!("chain {target}: status {status}"));
                        }
                        return Ok((target, body));
                    }
                    "exit" => return Err(format!("boot.ipxe exited: {line:?}")),
                    other => return Err(format!("boot.ipxe: {other:?} is not simulated here")),
                };
            }
            op = next_op;
        }
    }
    Err(format!("boot.ipxe ended without a chain: {text:?}"))
}

/// `${name}` replaced by iPXE's variable of that name (empty when unset, as in iPXE).
fn expand(word: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let name = &rest[at + 2..at + end];
        out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

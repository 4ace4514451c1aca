//! Rendering of iPXE scripts: `boot.ipxe`, a node's script, the menu and the refusal.
//!
//! Validation already keeps hostile values out; `Script` checks again at the last moment (belt
//! and braces), so a future code path that forgets to validate fails loudly instead of emitting
//! a script with a command an inventory author smuggled in.

use crate::inventory::{Arch, Images, Inventory, Profile, Selection, file_name};
use crate::safe;

/// The first word of every line a renderer may emit.
pub const COMMANDS: &[&str] = &[
    "#!ipxe", "kernel", "initrd", "boot", "echo", "exit", "menu", "item", "choose", "goto", "chain",
];

/// The lines a renderer writes from constant text alone, using iPXE expansion on purpose.
const MENU_TITLE: &str = "menu flint: choose a profile for ${netX/mac}";
const MENU_CHOOSE: &str = "choose target || exit 1";
const MENU_GOTO: &str = "goto ${target}";
const REFUSED: &str = "echo flint: machine ${netX/mac} is not in the inventory, refused";
const TRUSTED_LINES: &[&str] = &[MENU_TITLE, MENU_CHOOSE, MENU_GOTO, REFUSED];

/// Checks the injection property of a script rendered from an inventory (a node's, the menu,
/// the refusal): the first line is `#!ipxe`; every other line is one of flint's constant lines,
/// or starts with a command of [`COMMANDS`] or is a `:label`, and is then printable ASCII with
/// no `$` expansion, no empty word, no `||`/`&&`/`;` separator, no `#` comment and no `-` option.
/// So no inventory value, however hostile, can add a command or change one. The tests and the
/// fuzzer hold every rendered script to it; `Err` says which line breaks which rule.
pub fn check_script(script: &str) -> Result<(), String> {
    let Some(body) = script.strip_prefix("#!ipxe\n") else {
        return Err(format!("does not start with #!ipxe: {script:?}"));
    };
    if !script.ends_with('\n') || script.contains('\r') {
        return Err(format!("not a sequence of \\n-ended lines: {script:?}"));
    }
    for line in body.lines() {
        if TRUSTED_LINES.contains(&line) {
            continue;
        }
        let broken = |rule: &str| Err(format!("line {line:?}: {rule}"));
        if line.is_empty() || !line.is_ascii() || line.bytes().any(|b| b.is_ascii_control()) {
            return broken("empty, not ASCII or with a control character");
        }
        if line.contains('$') {
            return broken("an expansion");
        }
        let mut words = line.split(' ');
        let first = words.next().unwrap_or_default();
        let label = first.starts_with(':') && first.len() > 1;
        if !COMMANDS.contains(&first) && !label {
            return broken("starts with neither a known command nor a label");
        }
        for word in words {
            if word.is_empty() {
                return broken("an empty word");
            }
            if ["||", "&&", ";"].contains(&word) {
                return broken("a command separator");
            }
            if word.starts_with('#') || word.starts_with('-') {
                return broken("a comment or an option");
            }
        }
    }
    Ok(())
}

/// The boot server URL given to [`render_boot_ipxe`] is not safe to put in a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("boot server URL {url:?}: expected {expected}")]
pub struct UrlError {
    pub url: String,
    pub expected: &'static str,
}

/// A script under construction. Every line starts with one keyword of [`COMMANDS`] (or is a
/// `:label`), and no argument can contain a line break or a `${` we did not write ourselves.
struct Script(String);

impl Script {
    fn new() -> Script {
        Script("#!ipxe\n".into())
    }

    /// Panics if a data argument could break out of its line or word: that is a bug in the
    /// validation, and a broken script must never reach a machine.
    fn line(&mut self, cmd: &str, args: &[&str]) {
        assert!(COMMANDS.contains(&cmd), "unexpected iPXE command {cmd:?}");
        self.0.push_str(cmd);
        for a in args {
            assert!(
                !a.is_empty() && !a.contains('$') && !a.bytes().any(|b| b.is_ascii_control()),
                "unsafe iPXE argument {a:?}"
            );
            self.0.push(' ');
            self.0.push_str(a);
        }
        self.0.push('\n');
    }

    /// A line made only of constant text we wrote, which may use iPXE expansion on purpose.
    fn trusted(&mut self, line: &'static str) {
        debug_assert!(
            TRUSTED_LINES.contains(&line),
            "{line:?} is not in TRUSTED_LINES"
        );
        self.0.push_str(line);
        self.0.push('\n');
    }

    fn label(&mut self, name: &str) {
        assert!(safe::name(name).is_ok(), "unsafe iPXE label {name:?}");
        self.0.push(':');
        self.0.push_str(name);
        self.0.push('\n');
    }

    fn finish(self) -> String {
        self.0
    }
}

/// The script every machine fetches first (by DHCP or as a static file): it chains to the
/// server's `/ipxe` endpoint with what identifies the machine.
///
/// The MAC is `${netX/mac:hexhyp}`: `netX` is the interface iPXE booted from (not always `net0`
/// on multi-port machines), and the hyphenated form needs no percent-encoding. Without a base
/// URL the chain is relative (`ipxe?...`), which iPXE resolves against the URL it fetched this
/// script from, so one file works from any address the server is reached at. On failure it
/// exits so the firmware tries its next boot device, instead of looping.
pub fn render_boot_ipxe(base_url: Option<&str>) -> Result<String, UrlError> {
    let prefix = base_prefix(base_url)?;
    Ok(format!(
        "#!ipxe\nchain --autofree {prefix}ipxe?mac=${{netX/mac:hexhyp}}&uuid=${{uuid}}\
         &platform=${{platform}}&buildarch=${{buildarch}} || exit 1\n"
    ))
}

/// `boot.ipxe` of a static set (`flint-boot render`), for any web server that serves files.
///
/// Each machine's script is a file whose name iPXE builds from its own settings, never a query
/// string: a plain server answers `ipxe?mac=...` with whatever `ipxe` is to it (Python's
/// http.server: a redirect to a folder listing), and iPXE runs what it fetched. It probes its
/// image types in turn and, on BIOS, the last one (a PXE boot program) takes any file: an HTML
/// page is jumped into as code and the machine hangs. So the arch is derived here as
/// [`Arch::from_ipxe`] does (`iseq` ... `||`: a comparison that fails is not an error), the
/// script is only fetched (`imgfetch`: a missing file fails, and the next name is tried: by
/// MAC, by UUID, the unknown policy), and run once one was found; a machine none is found for
/// exits, so the firmware moves on. The scripts sit beside this one, not in a folder: iPXE
/// resolves a script's relative image URLs (`images/...`) against the script's own URL.
pub fn render_static_boot_ipxe(base_url: Option<&str>) -> Result<String, UrlError> {
    let prefix = base_prefix(base_url)?;
    let fetch = |name: &str| format!("imgfetch --name flint {prefix}{name}.${{flint-arch}}.ipxe");
    Ok(format!(
        "#!ipxe\n\
         set flint-arch default\n\
         iseq ${{buildarch}} x86_64 && set flint-arch x86_64 ||\n\
         iseq ${{buildarch}} arm64 && set flint-arch arm64 ||\n\
         iseq ${{buildarch}} i386 && set flint-arch x86_64 ||\n\
         iseq ${{buildarch}}-${{platform}} i386-efi && set flint-arch i386 ||\n\
         {} || {} || {} || exit 1\n\
         chain --autofree flint || exit 1\n",
        fetch("mac-${netX/mac:hexhyp}"),
        fetch("uuid-${uuid}"),
        fetch("unknown")
    ))
}

fn base_prefix(base_url: Option<&str>) -> Result<String, UrlError> {
    match base_url {
        Some(url) => {
            safe::base_url(url).map_err(|expected| UrlError {
                url: url.into(),
                expected,
            })?;
            Ok(format!("{}/", url.trim_end_matches('/')))
        }
        None => Ok(String::new()),
    }
}

impl Inventory {
    /// The URL iPXE fetches for an image path. Without `images_url` it is relative, which iPXE
    /// resolves against the URL of the script itself, so the same scripts work from the boot
    /// server and as static files next to an `images/` folder.
    pub fn image_url(&self, path: &str) -> String {
        match self.images_url() {
            Some(base) => format!("{base}/{path}"),
            None => format!("images/{path}"),
        }
    }

    fn boot_lines(&self, s: &mut Script, profile: &Profile, images: &Images) {
        let kernel = self.image_url(&images.kernel);
        // Linux's EFI stub finds an initrd loaded by iPXE only through `initrd=NAME` on its
        // command line, unless both are recent enough for the LoadFile2 protocol; BIOS kernels
        // ignore the parameter. So it is always there, one per initrd.
        let initrd_args: Vec<String> = images
            .initrds
            .iter()
            .map(|i| format!("initrd={}", file_name(i)))
            .collect();
        let mut args = vec![kernel.as_str()];
        args.extend(initrd_args.iter().map(String::as_str));
        args.extend(profile.cmdline.split(' ').filter(|w| !w.is_empty()));
        s.line("kernel", &args);
        for i in &images.initrds {
            s.line("initrd", &[&self.image_url(i)]);
        }
        s.line("boot", &[]);
    }

    /// The script answering `/ipxe` for one machine.
    ///
    /// Nothing in it depends on the request beyond the selection and the arch (unknown machines
    /// see their MAC through iPXE's own `${netX/mac}`), so `flint-boot render` can write the very
    /// same bytes as static files.
    pub fn render(&self, selection: &Selection<'_>, arch: Option<Arch>) -> String {
        match selection {
            Selection::Node {
                node,
                profile,
                images,
            } => {
                let mut s = Script::new();
                s.line(
                    "echo",
                    &["flint:", "booting", &node.name, "profile", &profile.name],
                );
                self.boot_lines(&mut s, profile, images);
                s.finish()
            }
            Selection::Default { profile, images } => {
                let mut s = Script::new();
                s.line(
                    "echo",
                    &[
                        "flint:",
                        "unknown",
                        "machine,",
                        "default",
                        "profile",
                        &profile.name,
                    ],
                );
                self.boot_lines(&mut s, profile, images);
                s.finish()
            }
            Selection::Menu => self.render_menu(arch),
            Selection::Refuse => render_refuse(),
        }
    }

    /// A node's script by name, for `flint-boot render` and tests.
    pub fn render_node(&self, name: &str, arch: Option<Arch>) -> Option<String> {
        let node = self.node_by_name(name)?;
        let sel = self.select(Some(&node.mac), None, arch);
        Some(self.render(&sel, arch))
    }

    /// A menu of every profile for a machine we do not know. Each choice jumps to a label named
    /// after its profile (names are validated as safe labels).
    pub fn render_menu(&self, arch: Option<Arch>) -> String {
        let mut s = Script::new();
        s.trusted(MENU_TITLE);
        for name in self.profiles().keys() {
            s.line("item", &[name, name]);
        }
        s.trusted(MENU_CHOOSE);
        s.trusted(MENU_GOTO);
        for p in self.profiles().values() {
            s.label(&p.name);
            self.boot_lines(&mut s, p, p.images_for(arch));
        }
        s.finish()
    }
}

/// For unknown machines under the `refuse` policy: say which MAC was refused, then leave iPXE
/// so the firmware moves on. Never chains anywhere, so it cannot loop.
pub fn render_refuse() -> String {
    let mut s = Script::new();
    s.trusted(REFUSED);
    s.line("exit", &["1"]);
    s.finish()
}

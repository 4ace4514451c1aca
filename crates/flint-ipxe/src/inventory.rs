//! The boot inventory: JSON parsing, validation into checked types, and node selection.
//!
//! Parsing is two-stage: serde reads loose `Raw*` structs (through `serde_path_to_error`, so a
//! type error names its JSON path), then `validate` turns them into types whose every string is
//! safe to place in an iPXE script. Validation collects every problem rather than stopping at the
//! first, so an operator fixes a broken inventory in one pass.

use std::collections::{BTreeMap, HashMap};

use flint_json::one_line;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde::Deserialize;

use crate::cluster::{Cluster, ClusterNode, RawCluster, RawNodeCluster};
use crate::safe;

/// The largest inventory read. A 50 MB one, tens of thousands of nodes, takes seconds to parse;
/// anything larger is a mistake (a log, an image in its place), refused before it is read.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "this kind of file"
    }
}

/// One problem in an inventory file: which file, where in it, and what was expected there.
/// Shown on one line whatever the file holds: a key or value with a line break in it is
/// escaped, so it cannot forge a second log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: {}: expected {}",
    one_line(file),
    one_line(path),
    one_line(expected)
)]
pub struct InventoryError {
    pub file: String,
    /// JSON path in `serde_path_to_error` form, e.g. `nodes[3].mac`; `.` is the document root.
    pub path: String,
    pub expected: String,
}

/// Every problem found in one inventory file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryErrors(pub Vec<InventoryError>);

impl fmt::Display for InventoryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InventoryErrors {}

/// A MAC address, stored as six bytes and shown in lowercase colon form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Accepts `:` or `-` separators (`-` is what iPXE's `:hexhyp` produces), any case.
    pub fn parse(s: &str) -> Option<Mac> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let p = parts.next()?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(out))
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The hyphenated form used in URLs: no character in it needs percent-encoding.
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An SMBIOS system UUID as iPXE's `${uuid}` shows it (8-4-4-4-12 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Accepts only the hyphenated form, any case: that is all iPXE ever sends.
    pub fn parse(s: &str) -> Option<Uuid> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != lens.len()
            || groups
                .iter()
                .zip(lens)
                .any(|(g, l)| g.len() != l || !g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Uuid(out))
    }

    /// All zeros or all ones: what boards without a programmed UUID report (every QEMU VM
    /// without `-uuid` sends all zeros). It identifies no machine, so it never selects a node.
    pub fn is_placeholder(&self) -> bool {
        self.0 == [0; 16] || self.0 == [0xff; 16]
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The CPU architecture a kernel must be built for, derived from iPXE's `${buildarch}` and
/// `${platform}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    I386,
    X86_64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::I386, Arch::X86_64, Arch::Arm64];

    /// The key used under a profile's `arch` object.
    pub fn name(self) -> &'static str {
        match self {
            Arch::I386 => "i386",
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn from_name(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }

    /// BIOS iPXE (`undionly.kpxe`) is always an i386 build, even on 64-bit CPUs, so
    /// `i386` + `pcbios` is read as x86_64: 32-bit-only x86 servers that PXE boot are gone, and a
    /// profile without an x86_64 entry still falls back to its default kernel. Only i386 *EFI*
    /// (32-bit UEFI firmware) is taken as a real i386 machine. Unknown values give `None`.
    pub fn from_ipxe(buildarch: &str, platform: Option<&str>) -> Option<Arch> {
        match (buildarch, platform) {
            ("x86_64", _) => Some(Arch::X86_64),
            ("arm64", _) => Some(Arch::Arm64),
            ("i386", Some("efi")) => Some(Arch::I386),
            ("i386", _) => Some(Arch::X86_64),
            _ => None,
        }
    }
}

/// The last segment of an image path: the name iPXE gives the image it fetched.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Kernel and initrds, as paths under the images URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub kernel: String,
    pub initrds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub images: Images,
    pub cmdline: String,
    pub arch: BTreeMap<Arch, Images>,
}

impl Profile {
    /// The per-arch images if the profile has them, else its default ones.
    pub fn images_for(&self, arch: Option<Arch>) -> &Images {
        arch.and_then(|a| self.arch.get(&a)).unwrap_or(&self.images)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub mac: Mac,
    pub profile: String,
    pub uuid: Option<Uuid>,
    pub addresses: Vec<IpAddr>,
    /// The node's part in the inventory's cluster, when it has one.
    pub cluster: Option<ClusterNode>,
}

/// What to do with a machine that is in no node entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Show a menu of every profile.
    Menu,
    /// Boot this profile.
    Default(String),
    /// Print the MAC and exit iPXE, so the firmware moves on to its next boot device.
    Refuse,
}

/// A validated inventory: every string in it is safe to place in an iPXE script.
///
/// Fields are private so that nothing can break what validation established (profile
/// references resolve, lookup maps match the node list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    images_url: Option<String>,
    profiles: BTreeMap<String, Profile>,
    nodes: Vec<Node>,
    unknown: UnknownPolicy,
    cluster: Option<Cluster>,
    by_mac: HashMap<Mac, usize>,
    by_uuid: HashMap<Uuid, usize>,
}

/// The outcome of looking a machine up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection<'a> {
    /// A known node, found by MAC or else by UUID.
    Node {
        node: &'a Node,
        profile: &'a Profile,
        images: &'a Images,
    },
    /// An unknown machine under the `default` policy.
    Default {
        profile: &'a Profile,
        images: &'a Images,
    },
    Menu,
    Refuse,
}

impl Selection<'_> {
    /// What the machine was given, for logs and metrics: the profile's name, or the policy.
    pub fn label(&self) -> &str {
        match self {
            Selection::Node { profile, .. } | Selection::Default { profile, .. } => &profile.name,
            Selection::Menu => "menu",
            Selection::Refuse => "refuse",
        }
    }
}

impl Inventory {
    /// Reads and validates an inventory file: a regular file of at most `MAX_BYTES`.
    pub fn load(path: &Path) -> Result<Inventory, InventoryErrors> {
        let text = Inventory::read_text(path)?;
        Inventory::from_json(&path.display().to_string(), &text)
    }

    /// An inventory file's text, read as `load` reads it, for a caller that keeps the text too.
    pub fn read_text(path: &Path) -> Result<String, InventoryErrors> {
        let name = path.display().to_string();
        let refuse = |expected: String| {
            InventoryErrors(vec![InventoryError {
                file: name.clone(),
                path: ".".into(),
                expected,
            }])
        };
        // Non-blocking: opening a FIFO would otherwise wait for a writer, forever.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| refuse(format!("a readable file ({e})")))?;
        let meta = file
            .metadata()
            .map_err(|e| refuse(format!("a readable file ({e})")))?;
        if !meta.is_file() {
            return Err(refuse(format!(
                "a regular file, not {}",
                file_kind(meta.file_type())
            )));
        }
        let too_big = || refuse(format!("at most {MAX_BYTES} bytes (64 MiB)"));
        if meta.len() > MAX_BYTES {
            return Err(too_big());
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // The file may grow between the check and the read.
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| refuse(format!("a readable file ({e})")))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(too_big());
        }
        String::from_utf8(bytes).map_err(|e| refuse(format!("UTF-8 text ({e})")))
    }

    /// Parses and validates inventory JSON; `file` only labels errors.
    pub fn from_json(file: &str, text: &str) -> Result<Inventory, InventoryErrors> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawInventory = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            InventoryErrors(vec![InventoryError {
                file: file.into(),
                path: serde_path(&e.path().to_string()),
                expected: format!("valid inventory JSON ({})", e.inner()),
            }])
        })?;
        // One JSON value: `{...} garbage` or a second object is not an inventory.
        de.end().map_err(|e| {
            InventoryErrors(vec![InventoryError {
                file: file.into(),
                path: ".".into(),
                expected: format!("nothing after the inventory's object ({e})"),
            }])
        })?;
        let mut v = Validator {
            file,
            errors: Vec::new(),
        };
        let inv = v.inventory(raw);
        if v.errors.is_empty() {
            Ok(inv)
        } else {
            Err(InventoryErrors(v.errors))
        }
    }

    /// Finds a node by MAC, else by UUID, else applies the unknown-machine policy.
    ///
    /// `arch` is `None` when iPXE sent an architecture we do not know; profiles then use their
    /// default images.
    pub fn select(
        &self,
        mac: Option<&Mac>,
        uuid: Option<&Uuid>,
        arch: Option<Arch>,
    ) -> Selection<'_> {
        let idx = mac.and_then(|m| self.by_mac.get(m)).or_else(|| {
            uuid.filter(|u| !u.is_placeholder())
                .and_then(|u| self.by_uuid.get(u))
        });
        if let Some(&i) = idx {
            let node = &self.nodes[i];
            // Validation guarantees the profile exists.
            let profile = &self.profiles[&node.profile];
            return Selection::Node {
                node,
                profile,
                images: profile.images_for(arch),
            };
        }
        match &self.unknown {
            UnknownPolicy::Menu => Selection::Menu,
            UnknownPolicy::Refuse => Selection::Refuse,
            UnknownPolicy::Default(name) => {
                let profile = &self.profiles[name];
                Selection::Default {
                    profile,
                    images: profile.images_for(arch),
                }
            }
        }
    }

    /// Base URL for images, without a trailing `/`; `None` means `images/` relative to the
    /// script's own URL.
    pub fn images_url(&self) -> Option<&str> {
        self.images_url.as_deref()
    }

    pub fn profiles(&self) -> &BTreeMap<String, Profile> {
        &self.profiles
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn unknown(&self) -> &UnknownPolicy {
        &self.unknown
    }

    /// The cluster the nodes form, for `flint-boot prepare`; every node has its part in it.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    images_url: Option<String>,
    #[serde(deserialize_with = "flint_json::unique_keys_required")]
    profiles: BTreeMap<String, RawProfile>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    unknown: Option<RawUnknown>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kernel: String,
    #[serde(default)]
    initrds: Vec<String>,
    #[serde(default)]
    cmdline: String,
    #[serde(default, deserialize_with = "flint_json::unique_keys_required")]
    arch: BTreeMap<String, RawImages>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    kernel: String,
    #[serde(default)]
    initrds: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    mac: String,
    profile: String,
    uuid: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    raft_addr: Option<String>,
    #[serde(default)]
    initial: bool,
    services: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnknown {
    policy: String,
    profile: Option<String>,
}

pub(crate) struct Validator<'f> {
    file: &'f str,
    errors: Vec<InventoryError>,
}

/// Map keys go into error paths; escape them so a hostile key cannot forge a line of output.
fn key(k: &str) -> String {
    k.escape_debug().to_string()
}

/// `serde_path_to_error` shows an unknown position (a syntax error) as `?`, and map keys raw.
fn serde_path(p: &str) -> String {
    if p == "?" { ".".into() } else { key(p) }
}

pub(crate) fn shown(s: &str) -> String {
    format!("{:?}", s.chars().take(80).collect::<String>())
}

impl Validator<'_> {
    pub(crate) fn err(&mut self, path: String, expected: impl Into<String>) {
        self.errors.push(InventoryError {
            file: self.file.into(),
            path,
            expected: expected.into(),
        });
    }

    fn check(&mut self, path: String, value: &str, rule: fn(&str) -> Result<(), &'static str>) {
        if let Err(what) = rule(value) {
            self.err(path, format!("{what}, found {}", shown(value)));
        }
    }

    fn images(&mut self, path: &str, kernel: String, initrds: Vec<String>) -> Images {
        self.check(format!("{path}.kernel"), &kernel, safe::image_path);
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in initrds.iter().enumerate() {
            self.check(format!("{path}.initrds[{i}]"), p, safe::image_path);
            // The kernel line names each initrd by its file name (`initrd=NAME`), so two with
            // the same name would be one.
            if let Some(first) = names.insert(file_name(p), i) {
                self.err(
                    format!("{path}.initrds[{i}]"),
                    format!(
                        "a file name not already used by initrds[{first}] (iPXE names an \
                         initrd by its last path segment), found {}",
                        shown(p)
                    ),
                );
            }
        }
        Images { kernel, initrds }
    }

    fn inventory(&mut self, raw: RawInventory) -> Inventory {
        let images_url = raw.images_url.map(|u| {
            self.check("images_url".into(), &u, safe::base_url);
            u.trim_end_matches('/').to_string()
        });

        if raw.profiles.is_empty() {
            self.err("profiles".into(), "at least one profile");
        }
        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            let path = format!("profiles.{}", key(&name));
            self.check(path.clone(), &name, safe::name);
            let images = self.images(&path, p.kernel, p.initrds);
            self.check(format!("{path}.cmdline"), &p.cmdline, safe::cmdline);
            let mut arch = BTreeMap::new();
            for (a, imgs) in p.arch {
                let apath = format!("{path}.arch.{}", key(&a));
                let images = self.images(&apath, imgs.kernel, imgs.initrds);
                match Arch::from_name(&a) {
                    Some(a) => {
                        arch.insert(a, images);
                    }
                    None => self.err(apath, "an architecture: \"i386\", \"x86_64\" or \"arm64\""),
                }
            }
            profiles.insert(
                name.clone(),
                Profile {
                    name,
                    images,
                    cmdline: p.cmdline,
                    arch,
                },
            );
        }

        let mut nodes = Vec::new();
        let mut by_mac = HashMap::new();
        let mut by_uuid = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut cluster_fields = Vec::new();
        for (i, n) in raw.nodes.into_iter().enumerate() {
            cluster_fields.push(RawNodeCluster {
                raft_addr: n.raft_addr,
                initial: n.initial,
                services: n.services,
            });
            let path = format!("nodes[{i}]");
            self.check(format!("{path}.name"), &n.name, safe::name);
            if let Some(first) = names.insert(n.name.clone(), i) {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "a name not already used by nodes[{first}], found {}",
                        shown(&n.name)
                    ),
                );
            }
            let mac = Mac::parse(&n.mac);
            match mac {
                None => self.err(
                    format!("{path}.mac"),
                    format!(
                        "a MAC address like \"52:54:00:12:34:56\", found {}",
                        shown(&n.mac)
                    ),
                ),
                Some(m) => {
                    if let Some(first) = by_mac.insert(m, i) {
                        self.err(
                            format!("{path}.mac"),
                            format!("a MAC not already used by nodes[{first}], found {m}"),
                        );
                    }
                }
            }
            if !profiles.contains_key(&n.profile) {
                self.err(
                    format!("{path}.profile"),
                    format!(
                        "the name of a profile in \"profiles\", found {}",
                        shown(&n.profile)
                    ),
                );
            }
            let uuid = n.uuid.as_deref().and_then(|u| {
                let parsed = Uuid::parse(u);
                match parsed {
                    None => self.err(
                        format!("{path}.uuid"),
                        format!(
                            "a UUID like \"01234567-89ab-cdef-0123-456789abcdef\", found {}",
                            shown(u)
                        ),
                    ),
                    Some(id) if id.is_placeholder() => self.err(
                        format!("{path}.uuid"),
                        format!(
                            "a UUID that identifies one machine (all zeros and all ones are what \
                             boards without one report), found {id}"
                        ),
                    ),
                    Some(id) => {
                        if let Some(first) = by_uuid.insert(id, i) {
                            self.err(
                                format!("{path}.uuid"),
                                format!("a UUID not already used by nodes[{first}], found {id}"),
                            );
                        }
                    }
                }
                parsed
            });
            let mut addresses = Vec::new();
            for (j, a) in n.addresses.iter().enumerate() {
                match a.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => self.err(
                        format!("{path}.addresses[{j}]"),
                        format!("an IPv4 or IPv6 address, found {}", shown(a)),
                    ),
                }
            }
            nodes.push(Node {
                name: n.name,
                mac: mac.unwrap_or(Mac([0; 6])),
                profile: n.profile,
                uuid,
                addresses,
                cluster: None,
            });
        }
        let (cluster, parts) = self.cluster(raw.cluster, cluster_fields);
        for (node, part) in nodes.iter_mut().zip(parts) {
            node.cluster = part;
        }

        let unknown = match raw.unknown {
            // Refusing is the only default that cannot boot the wrong image onto a machine.
            None => UnknownPolicy::Refuse,
            Some(u) => self.policy(u, &profiles),
        };

        Inventory {
            images_url,
            profiles,
            nodes,
            unknown,
            cluster,
            by_mac,
            by_uuid,
        }
    }

    fn policy(&mut self, u: RawUnknown, profiles: &BTreeMap<String, Profile>) -> UnknownPolicy {
        match (u.policy.as_str(), u.profile) {
            ("menu", None) => UnknownPolicy::Menu,
            ("refuse", None) => UnknownPolicy::Refuse,
            ("default", Some(p)) => {
                if !profiles.contains_key(&p) {
                    self.err(
                        "unknown.profile".into(),
                        format!("the name of a profile in \"profiles\", found {}", shown(&p)),
                    );
                }
                UnknownPolicy::Default(p)
            }
            ("default", None) => {
                self.err(
                    "unknown.profile".into(),
                    "a profile name (policy \"default\" needs one)",
                );
                UnknownPolicy::Refuse
            }
            ("menu" | "refuse", Some(_)) => {
                self.err(
                    "unknown.profile".into(),
                    "no profile (only policy \"default\" takes one)",
                );
                UnknownPolicy::Refuse
            }
            (other, _) => {
                self.err(
                    "unknown.policy".into(),
                    format!(
                        "\"menu\", \"default\" or \"refuse\", found {}",
                        shown(other)
                    ),
                );
                UnknownPolicy::Refuse
            }
        }
    }
}

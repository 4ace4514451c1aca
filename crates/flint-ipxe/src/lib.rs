//! Boot inventory and iPXE script rendering for flint's boot server (`flint-boot`).
//!
//! The inventory format is described in this crate's README. [`Inventory::from_json`] validates
//! it so that no value can add a command to a script; [`Inventory::select`] picks what a
//! machine boots; [`render_boot_ipxe`], [`render_static_boot_ipxe`] and [`Inventory::render`]
//! write the scripts.

mod cluster;
mod inventory;
mod render;
pub mod safe;

pub use cluster::{Cluster, ClusterNode, ClusterService, DEFAULT_SERVICES, IamIdentity, Ports};
pub use inventory::{
    Arch, Images, Inventory, InventoryError, InventoryErrors, Mac, Node, Profile, Selection,
    UnknownPolicy, Uuid,
};
pub use render::{
    COMMANDS, UrlError, check_script, render_boot_ipxe, render_refuse, render_static_boot_ipxe,
};

//! Harness shared by the integration tests.

// Each test binary compiles this module but uses only part of it.
#![allow(dead_code)]

pub mod dhcp;
pub mod etcd;
pub mod netns;
pub mod segment;
pub mod server;

//! One isolated loopback network per test: a /24 inside 127.0.0.0/8 that no other test of this
//! run uses, with a temp dir and a PKI whose server certificate covers the lab's addresses. Every
//! node gets its own IP with etcd's standard ports, as on real hosts.
use super::{Node, Pki, TcpProxy};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::SystemTime;
use tempfile::TempDir;

/// Node `i` has the IP `127.A.B.(NODE_BASE + i)`.
const NODE_BASE: u8 = 10;
const MAX_NODES: u8 = 20;
/// Proxies get `127.A.B.(PROXY_BASE + k)`: inside the server certificate, so TLS through a proxy
/// verifies like a direct connection.
const PROXY_BASE: u8 = 200;
const MAX_PROXIES: u8 = 10;
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub struct Lab {
    pub pki: Pki,
    net: [u8; 2],
    next_proxy: Cell<u8>,
    /// Held for the lab's lifetime: a second lab that draws the same /24 fails to bind it and
    /// draws again, so parallel tests (threads or processes) never share addresses.
    _claim: TcpListener,
    pub dir: TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let (net, claim) = claim_network();
        let dir = tempfile::Builder::new()
            .prefix("flint-test-")
            .tempdir()
            .expect("create temp dir");
        let mut server_ips: Vec<IpAddr> = (0..MAX_NODES)
            .map(|i| IpAddr::V4(ip_in(net, NODE_BASE + i)))
            .collect();
        server_ips.extend((0..MAX_PROXIES).map(|k| IpAddr::V4(ip_in(net, PROXY_BASE + k))));
        let pki = Pki::generate(&dir.path().join("pki"), &server_ips);
        Lab {
            pki,
            net,
            next_proxy: Cell::new(0),
            _claim: claim,
            dir,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < MAX_NODES as usize, "node index {i} out of range");
        ip_in(self.net, NODE_BASE + i as u8)
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip(i)), CLIENT_PORT)
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("https://{}:{CLIENT_PORT}", self.ip(i))
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("https://{}:{PEER_PORT}", self.ip(i))
    }

    /// `node01` for index 0, as the members are named.
    pub fn node_name(i: usize) -> String {
        format!("node{:02}", i + 1)
    }

    /// A node's config dir and state dir, with a config pointing at member 0 and no peers.
    pub fn node(&self, i: usize) -> Node {
        Node::new(self, &Lab::node_name(i), self.ip(i), &[])
    }

    /// A TCP proxy on a fresh lab address, forwarding to `target`.
    pub fn proxy(&self, target: SocketAddr) -> TcpProxy {
        let k = self.next_proxy.get();
        assert!(k < MAX_PROXIES, "too many proxies in one lab");
        self.next_proxy.set(k + 1);
        let addr = SocketAddr::new(IpAddr::V4(ip_in(self.net, PROXY_BASE + k)), CLIENT_PORT);
        TcpProxy::start(addr, target)
    }
}

fn ip_in(net: [u8; 2], host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net[0], net[1], host)
}

fn claim_network() -> ([u8; 2], TcpListener) {
    let seed = RandomState::new().hash_one((
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    ));
    for attempt in 0..200u64 {
        let n = seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let net = [100 + (n % 100) as u8, ((n >> 8) % 256) as u8];
        let Ok(claim) = TcpListener::bind((ip_in(net, 1), CLIENT_PORT)) else {
            continue;
        };
        // A leftover process of an earlier, killed run may still hold one of the addresses.
        let all_free = (0..MAX_NODES)
            .flat_map(|i| [(NODE_BASE + i, CLIENT_PORT), (NODE_BASE + i, PEER_PORT)])
            .chain((0..MAX_PROXIES).map(|k| (PROXY_BASE + k, CLIENT_PORT)))
            .all(|(host, port)| TcpListener::bind((ip_in(net, host), port)).is_ok());
        if all_free {
            return (net, claim);
        }
    }
    panic!("found no free /24 inside 127.0.0.0/8 after 200 attempts");
}

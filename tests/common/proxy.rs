//! A TCP forwarder the test can switch at any moment, to make a request reach etcd while its
//! answer never reaches flint, or to make an address refuse. It works below TLS, so flint still
//! verifies etcd's certificate end to end.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Forward client→server, but read and drop server→client bytes: requests are served,
    /// answers are lost. A connection that lost bytes never forwards again (its TLS stream is
    /// broken anyway).
    HoldResponses,
    /// Close every new connection at once.
    Refuse,
}

struct Shared {
    mode: Mutex<ProxyMode>,
    latency: Mutex<Duration>,
    stopping: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start(addr: SocketAddr, target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("proxy cannot listen on {addr}: {e}"));
        let shared = Arc::new(Shared {
            mode: Mutex::new(ProxyMode::Pass),
            latency: Mutex::new(Duration::ZERO),
            stopping: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, target, shared))
        };
        TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        *self.shared.mode.lock().expect("proxy lock") = mode;
    }

    /// Delays every server→client chunk and decides its fate (forward or drop) only after the
    /// delay. A test that flips to `HoldResponses` when flint logs "about to send X" thus catches
    /// X's answer for sure, even when etcd answers faster than the test reads the log line.
    pub fn set_response_latency(&self, latency: Duration) {
        *self.shared.latency.lock().expect("proxy lock") = latency;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept() so the acceptor sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self.shared.streams.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if *shared.mode.lock().expect("proxy lock") == ProxyMode::Refuse {
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            continue;
        };
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client_read), Ok(server_read)) = clones else {
            continue;
        };
        {
            let mut streams = shared.streams.lock().expect("proxy lock");
            if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                streams.push(c);
                streams.push(s);
            }
        }
        std::thread::spawn(move || forward_requests(client_read, server));
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || forward_responses(server_read, client, &shared));
    }
}

fn forward_requests(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn forward_responses(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    let mut broken = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        std::thread::sleep(*shared.latency.lock().expect("proxy lock"));
        if *shared.mode.lock().expect("proxy lock") == ProxyMode::HoldResponses {
            broken = true;
        }
        if !broken && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

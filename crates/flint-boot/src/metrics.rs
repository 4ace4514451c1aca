//! Counters of every service, rendered at `/metrics` in Prometheus' text format.
//!
//! Label values come from a small fixed set (routes, outcomes, arch names) or from validated
//! inventory names, so the number of series stays bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One metric with labels: a counter or a gauge.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    /// The label values known in advance: their series are rendered from the start, at 0, so
    /// that an alert on `increase()` sees the first event (a series that appears at 1 has no
    /// increase to show).
    known: &'static [&'static [&'static str]],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Family {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &'static [&'static str],
        known: &'static [&'static [&'static str]],
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels,
            known,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key = values.iter().map(|v| (*v).to_owned()).collect();
        *self.lock().entry(key).or_default() += n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, u64>> {
        // A panic elsewhere must not take the metrics down with it: counters stay usable.
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let mut series = self.lock();
        for values in self.known {
            let key = values.iter().map(|v| (*v).to_owned()).collect();
            series.entry(key).or_default();
        }
        for (values, n) in series.iter() {
            out.push_str(self.name);
            if !values.is_empty() {
                out.push('{');
                for (i, (label, value)) in self.labels.iter().zip(values).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{label}=\"{}\"", escape(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {n}");
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// How a node's report was answered (`flint_boot_reports_total{answer}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportAnswer {
    /// 204: a step of its journey.
    Recorded,
    /// 400, 404, 405, 413: a request from a node, but not a report this server takes.
    Rejected,
    /// 403: a certificate of the cluster's CA that names no inventory node.
    UnknownNode,
    /// The TLS handshake failed or did not finish in time: no client certificate, one of
    /// another CA, not TLS at all.
    BadCertificate,
}

impl ReportAnswer {
    pub const ALL: [ReportAnswer; 4] = [
        ReportAnswer::Recorded,
        ReportAnswer::Rejected,
        ReportAnswer::UnknownNode,
        ReportAnswer::BadCertificate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReportAnswer::Recorded => "recorded",
            ReportAnswer::Rejected => "rejected",
            ReportAnswer::UnknownNode => "unknown-node",
            ReportAnswer::BadCertificate => "bad-certificate",
        }
    }
}

/// What failed in the server itself (`flint_boot_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    DhcpRecv,
    DhcpSend,
    TftpSocket,
    TftpIo,
    Http,
}

impl ErrorKind {
    const KNOWN: [&'static [&'static str]; 5] = [
        &["dhcp-recv"],
        &["dhcp-send"],
        &["tftp-socket"],
        &["tftp-io"],
        &["http"],
    ];

    fn name(self) -> &'static str {
        Self::KNOWN[self as usize][0]
    }
}

pub struct Metrics {
    pub http_requests: Family,
    pub http_bytes: AtomicU64,
    pub scripts: Family,
    pub tftp_transfers: Family,
    pub tftp_bytes: AtomicU64,
    pub tftp_waiting: Family,
    pub dhcp_answers: Family,
    pub dhcp_ignored: Family,
    pub inventory_reloads: Family,
    pub inventory_nodes: AtomicU64,
    /// The etcd revision of the inventory served (0 when it comes from a file).
    pub inventory_revision: AtomicU64,
    /// 1 while the inventory's source (etcd) cannot be reached and the last one read serves.
    pub inventory_stale: AtomicU64,
    pub errors: Family,
    /// By `ReportAnswer::ALL`'s order: every answer is a series from the start, at 0, so an
    /// alert on `increase()` sees the first rejected report.
    pub reports: [AtomicU64; ReportAnswer::ALL.len()],
    /// Image downloads holding a slot (`--http-max-downloads`).
    pub downloads_in_flight: AtomicU64,
    /// TFTP transfers holding a slot (`--tftp-max-transfers`).
    tftp_in_flight: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            http_requests: Family::new(
                "flint_boot_http_requests_total",
                "HTTP requests answered, by route and status.",
                "counter",
                &["route", "status"],
                &[],
            ),
            http_bytes: AtomicU64::new(0),
            scripts: Family::new(
                "flint_boot_scripts_served_total",
                "iPXE scripts served at /ipxe, by profile (or the policy: menu, refuse).",
                "counter",
                &["profile"],
                // The inventory's profiles are added at 0 when it is loaded.
                &[&["menu"], &["refuse"]],
            ),
            tftp_transfers: Family::new(
                "flint_boot_tftp_transfers_total",
                "TFTP transfers, by outcome.",
                "counter",
                &["outcome"],
                &crate::tftp::OUTCOMES,
            ),
            tftp_bytes: AtomicU64::new(0),
            tftp_waiting: Family::new(
                "flint_boot_tftp_waiting_total",
                "TFTP read requests not started at once: queued (every slot taken), duplicate (a retransmission of a queued or running one), queue-full (left unanswered), abandoned (its client silent too long when its turn came).",
                "counter",
                &["event"],
                &[&["queued"], &["duplicate"], &["queue-full"], &["abandoned"]],
            ),
            dhcp_answers: Family::new(
                "flint_boot_dhcp_answers_total",
                "ProxyDHCP offers (port 67) and acks (port 4011), by client arch and what was handed out.",
                "counter",
                &["port", "arch", "boot"],
                &[],
            ),
            dhcp_ignored: Family::new(
                "flint_boot_dhcp_ignored_total",
                "DHCP packets not answered, by reason.",
                "counter",
                &["reason"],
                &crate::dhcp::IGNORED_REASONS,
            ),
            inventory_reloads: Family::new(
                "flint_boot_inventory_reloads_total",
                "Inventory reloads, by result (a rejected inventory leaves the previous one serving).",
                "counter",
                &["result"],
                &[&["ok"], &["rejected"]],
            ),
            inventory_nodes: AtomicU64::new(0),
            inventory_revision: AtomicU64::new(0),
            inventory_stale: AtomicU64::new(0),
            errors: Family::new(
                "flint_boot_errors_total",
                "Errors of the server itself (socket and file errors), by kind.",
                "counter",
                &["kind"],
                &ErrorKind::KNOWN,
            ),
            reports: [const { AtomicU64::new(0) }; ReportAnswer::ALL.len()],
            downloads_in_flight: AtomicU64::new(0),
            tftp_in_flight: AtomicU64::new(0),
        }
    }

    pub fn tftp_in_flight(&self, transfers: usize) {
        self.tftp_in_flight
            .store(transfers as u64, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.inc(&[kind.name()]);
    }

    pub fn report(&self, answer: ReportAnswer) {
        self.reports[answer as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP flint_boot_build_info The running flint-boot's version.\n\
             # TYPE flint_boot_build_info gauge\n\
             flint_boot_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let (open, limit) = file_descriptors();
        for (name, help, value) in [
            (
                "process_open_fds",
                "Open file descriptors (each connection, transfer and download holds one).",
                open,
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors (RLIMIT_NOFILE).",
                limit,
            ),
        ] {
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
        }
        gauge(
            &mut out,
            "flint_boot_http_downloads_in_flight",
            "Image downloads being sent, each holding one of --http-max-downloads slots.",
            &self.downloads_in_flight,
        );
        gauge(
            &mut out,
            "flint_boot_tftp_transfers_in_flight",
            "TFTP transfers being sent, each holding one of --tftp-max-transfers slots.",
            &self.tftp_in_flight,
        );
        self.http_requests.render(&mut out);
        counter(
            &mut out,
            "flint_boot_http_bytes_sent_total",
            "HTTP body bytes sent.",
            &self.http_bytes,
        );
        self.scripts.render(&mut out);
        self.tftp_transfers.render(&mut out);
        counter(
            &mut out,
            "flint_boot_tftp_bytes_sent_total",
            "TFTP file bytes acknowledged by clients.",
            &self.tftp_bytes,
        );
        self.tftp_waiting.render(&mut out);
        self.dhcp_answers.render(&mut out);
        self.dhcp_ignored.render(&mut out);
        self.inventory_reloads.render(&mut out);
        gauge(
            &mut out,
            "flint_boot_inventory_nodes",
            "Nodes in the inventory being served.",
            &self.inventory_nodes,
        );
        gauge(
            &mut out,
            "flint_boot_inventory_revision",
            "The etcd revision of the inventory being served (0: read from a file).",
            &self.inventory_revision,
        );
        gauge(
            &mut out,
            "flint_boot_inventory_stale",
            "1 while etcd cannot be reached and the last inventory read from it is served.",
            &self.inventory_stale,
        );
        self.errors.render(&mut out);
        labelled_counters(
            &mut out,
            "flint_boot_reports_total",
            "Nodes' reports of their first-boot steps, by answer.",
            "answer",
            ReportAnswer::ALL
                .map(ReportAnswer::name)
                .into_iter()
                .zip(&self.reports),
        );
        out
    }
}

/// This process's open file descriptors and their soft limit, each when it can be read.
fn file_descriptors() -> (Option<u64>, Option<u64>) {
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64);
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    (open, limit)
}

fn gauge(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    one_series(out, name, help, "gauge", value);
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    one_series(out, name, help, "counter", value);
}

fn one_series(out: &mut String, name: &str, help: &str, kind: &str, value: &AtomicU64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
        value.load(Ordering::Relaxed)
    );
}

/// A counter per value of a fixed label set, unlike a `Family` whose series appear on first
/// use: every value is a series from the start, at 0, so an alert on `increase()` sees its first
/// event. The values are names from the code, written unescaped.
pub(crate) fn labelled_counters<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in series {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{value}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_escaped_and_sorted() {
        let m = Metrics::new();
        m.scripts.inc(&["worker"]);
        m.scripts.inc(&["a\"b\\c\nd"]);
        m.scripts.add(&["worker"], 2);
        let text = m.render();
        assert!(text.contains("flint_boot_scripts_served_total{profile=\"worker\"} 3\n"));
        assert!(text.contains("{profile=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE flint_boot_inventory_nodes gauge\n"));
    }

    #[test]
    fn every_report_answer_is_a_series_from_the_start() {
        let m = Metrics::new();
        m.report(ReportAnswer::UnknownNode);
        let text = m.render();
        for line in [
            "flint_boot_reports_total{answer=\"recorded\"} 0\n",
            "flint_boot_reports_total{answer=\"rejected\"} 0\n",
            "flint_boot_reports_total{answer=\"unknown-node\"} 1\n",
            "flint_boot_reports_total{answer=\"bad-certificate\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn labelled_counters_keep_the_given_order_and_zeros() {
        let counts = [AtomicU64::new(0), AtomicU64::new(3)];
        let mut out = String::new();
        labelled_counters(
            &mut out,
            "x_total",
            "Xs, by kind.",
            "kind",
            ["b", "a"].into_iter().zip(&counts),
        );
        assert_eq!(
            out,
            "# HELP x_total Xs, by kind.\n\
             # TYPE x_total counter\n\
             x_total{kind=\"b\"} 0\n\
             x_total{kind=\"a\"} 3\n"
        );
    }
}

//! Counters of the host agent and their rendering in the Prometheus text exposition format.
//!
//! Counters are plain atomics updated on the hot path with relaxed ordering: they are monotonic
//! tallies read by `/metrics`, never used to synchronise anything.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// All counters of one agent. Share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Relay connections open right now (a gauge).
    pub relay_active: AtomicU64,
    /// Relay connections accepted and forwarded since start.
    pub relay_total: AtomicU64,
    /// Relay connections closed at once because the connection cap was reached.
    pub relay_rejected: AtomicU64,
    /// Relay connections closed at once because their source address had its most open.
    pub relay_rejected_per_source: AtomicU64,
    /// Bytes forwarded from public clients to the guest.
    pub relay_bytes_to_guest: AtomicU64,
    /// Bytes forwarded from the guest to public clients.
    pub relay_bytes_from_guest: AtomicU64,
    /// Relay connections that ended in an error: the guest refused or was unreachable, or a socket failed.
    pub relay_errors: AtomicU64,
    /// Of [`Metrics::relay_errors`], those where the guest side could not be connected.
    pub relay_guest_connect_failures: AtomicU64,
    /// Relay connections closed because the guest delivered nothing to the client for the idle
    /// timeout.
    pub relay_idle_timeouts: AtomicU64,
    /// VM (QEMU and helper) restarts after an unexpected exit.
    pub vm_restarts: AtomicU64,
    /// VM runs that ended before they were stable (QEMU exited at once, the guest powered off).
    pub vm_boot_failures: AtomicU64,
    /// Guest→host service requests answered, per service.
    pub service_requests: ServiceCounters,
    /// Guest→host service requests that failed, per service.
    pub service_errors: ServiceCounters,
    /// Collateral refreshes from the configured PCCS/PCS that failed.
    pub collateral_refresh_errors: AtomicU64,
}

/// One counter per guest→host service.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// The sim quote service.
    pub quote: AtomicU64,
    /// The collateral service.
    pub collateral: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter.
pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    /// Renders every counter in the Prometheus text format (version 0.0.4). `vm_up` is 1 while the
    /// guest runs and 0 otherwise; `vm_state` labels the supervisor's current state.
    pub fn render_prometheus(&self, vm_state: &str, uptime_seconds: u64) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "chrysalis_relay_connections_active",
            "gauge",
            "Relay connections open now.",
            &[("", get(&self.relay_active))],
        );
        metric(
            "chrysalis_relay_connections_total",
            "counter",
            "Relay connections accepted.",
            &[("", get(&self.relay_total))],
        );
        metric(
            "chrysalis_relay_connections_rejected_total",
            "counter",
            "Relay connections closed at once because the connection cap was reached.",
            &[("", get(&self.relay_rejected))],
        );
        metric(
            "chrysalis_relay_connections_rejected_per_source_total",
            "counter",
            "Relay connections closed at once because their source address had its most open.",
            &[("", get(&self.relay_rejected_per_source))],
        );
        metric(
            "chrysalis_relay_bytes_total",
            "counter",
            "Bytes forwarded by the relay, by direction.",
            &[
                ("{direction=\"to_guest\"}", get(&self.relay_bytes_to_guest)),
                (
                    "{direction=\"from_guest\"}",
                    get(&self.relay_bytes_from_guest),
                ),
            ],
        );
        metric(
            "chrysalis_relay_errors_total",
            "counter",
            "Relay connections that ended in an error.",
            &[("", get(&self.relay_errors))],
        );
        metric(
            "chrysalis_relay_guest_connect_failures_total",
            "counter",
            "Relay connections whose guest side could not be connected.",
            &[("", get(&self.relay_guest_connect_failures))],
        );
        metric(
            "chrysalis_relay_idle_timeouts_total",
            "counter",
            "Relay connections closed by the idle timeout.",
            &[("", get(&self.relay_idle_timeouts))],
        );
        metric(
            "chrysalis_vm_restarts_total",
            "counter",
            "VM restarts after an unexpected exit.",
            &[("", get(&self.vm_restarts))],
        );
        metric(
            "chrysalis_vm_boot_failures_total",
            "counter",
            "VM runs that ended before they became stable.",
            &[("", get(&self.vm_boot_failures))],
        );
        let state_label = format!("{{state=\"{}\"}}", vm_state.replace(['"', '\\', '\n'], "_"));
        metric(
            "chrysalis_vm_state",
            "gauge",
            "The supervisor's VM state (the labelled series is 1).",
            &[(&state_label, 1)],
        );
        metric(
            "chrysalis_service_requests_total",
            "counter",
            "Guest-to-host service requests answered.",
            &[
                ("{service=\"quote\"}", get(&self.service_requests.quote)),
                (
                    "{service=\"collateral\"}",
                    get(&self.service_requests.collateral),
                ),
            ],
        );
        metric(
            "chrysalis_service_errors_total",
            "counter",
            "Guest-to-host service requests that failed.",
            &[
                ("{service=\"quote\"}", get(&self.service_errors.quote)),
                (
                    "{service=\"collateral\"}",
                    get(&self.service_errors.collateral),
                ),
            ],
        );
        metric(
            "chrysalis_collateral_refresh_errors_total",
            "counter",
            "Collateral refreshes from PCCS/PCS that failed.",
            &[("", get(&self.collateral_refresh_errors))],
        );
        metric(
            "chrysalis_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            &[("", uptime_seconds)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_type_lines() {
        let m = Metrics::default();
        inc(&m.vm_restarts);
        m.relay_bytes_to_guest.fetch_add(42, Ordering::Relaxed);
        let text = m.render_prometheus("running", 7);
        assert!(text.contains(
            "# TYPE chrysalis_vm_restarts_total counter\nchrysalis_vm_restarts_total 1\n"
        ));
        assert!(text.contains("chrysalis_relay_bytes_total{direction=\"to_guest\"} 42\n"));
        assert!(text.contains("chrysalis_vm_state{state=\"running\"} 1\n"));
        assert!(text.contains("chrysalis_uptime_seconds 7\n"));
        // Every sample line belongs to a family announced by a TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}

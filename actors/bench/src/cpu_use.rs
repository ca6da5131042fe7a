//! CPU time of the processes a benchmark involves, read from `/proc` (Linux).
//!
//! `jetflow bench orders` reads it before the load and once every accepted order finished,
//! and divides by the orders finished: how much CPU one order costs in jetflow, in the
//! nats-server and in PostgreSQL, and how busy the machine was. On a machine the benchmark
//! saturates, throughput and the accept latency at a given number of clients follow from
//! these costs (Little's law), so they say where the next gain must come from.

use std::time::Duration;

use serde::Serialize;

/// The CPU time (user and system) a set of processes had used at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    /// The jetflow process (`None`: not a process of this machine, or not readable).
    pub jetflow: Option<Duration>,
    /// The nats-server process.
    pub nats: Option<Duration>,
    /// Every process named `postgres` on this machine, their reaped children included.
    pub postgres: Option<Duration>,
    /// This process: the benchmark's own clients.
    pub clients: Option<Duration>,
    /// The whole machine: busy and idle time over every CPU since boot.
    pub machine: Option<MachineTime>,
}

/// Busy and idle time of the machine, over every CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTime {
    /// User, nice, system, interrupts and steal.
    pub busy: Duration,
    /// Idle and waiting for I/O.
    pub idle: Duration,
}

/// CPU milliseconds per finished order between two samples, and how busy the machine was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuPerOrder {
    /// In the jetflow process.
    pub jetflow_ms: Option<f64>,
    /// In the nats-server.
    pub nats_ms: Option<f64>,
    /// In PostgreSQL (every local `postgres` process).
    pub postgres_ms: Option<f64>,
    /// In the benchmark's own clients, which share the machine with what they measure.
    pub clients_ms: Option<f64>,
    /// Share of the machine's CPU time that was busy (0 to 1), whatever used it.
    pub machine_busy: Option<f64>,
}

impl CpuSample {
    /// Reads the CPU time of `jetflow` and `nats` (process ids) and, with `postgres`, of
    /// every local PostgreSQL process.
    pub fn read(jetflow: Option<u32>, nats: Option<u32>, postgres: bool) -> Self {
        Self {
            jetflow: jetflow.and_then(process_cpu),
            nats: nats.and_then(process_cpu),
            postgres: postgres.then(postgres_cpu).flatten(),
            clients: process_cpu(std::process::id()),
            machine: machine_time(),
        }
    }

    /// The CPU per order from `self` (before) to `after`, over `orders` finished orders.
    pub fn per_order(&self, after: &Self, orders: usize) -> CpuPerOrder {
        let per = |b: Option<Duration>, a: Option<Duration>| {
            let (b, a) = (b?, a?);
            (orders > 0).then(|| a.saturating_sub(b).as_secs_f64() * 1000.0 / orders as f64)
        };
        let machine_busy = self.machine.zip(after.machine).and_then(|(b, a)| {
            let busy = a.busy.saturating_sub(b.busy).as_secs_f64();
            let idle = a.idle.saturating_sub(b.idle).as_secs_f64();
            (busy + idle > 0.0).then(|| busy / (busy + idle))
        });
        CpuPerOrder {
            jetflow_ms: per(self.jetflow, after.jetflow),
            nats_ms: per(self.nats, after.nats),
            postgres_ms: per(self.postgres, after.postgres),
            clients_ms: per(self.clients, after.clients),
            machine_busy,
        }
    }
}

impl CpuPerOrder {
    /// The report's line ("CPU per `per`: …"), or `None` when nothing could be read.
    pub fn line(&self, per: &str) -> Option<String> {
        let parts: Vec<String> = [
            ("jetflow", self.jetflow_ms),
            ("nats-server", self.nats_ms),
            ("PostgreSQL", self.postgres_ms),
        ]
        .iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name} {ms:.3} ms")))
        .collect();
        if parts.is_empty() {
            return None;
        }
        let clients = self
            .clients_ms
            .map(|ms| format!("; the bench's clients {ms:.3} ms"))
            .unwrap_or_default();
        let busy = self
            .machine_busy
            .map(|b| format!("; machine {:.0} % busy", b * 100.0))
            .unwrap_or_default();
        Some(format!(
            "  CPU per {per}: {}{clients}{busy}",
            parts.join(", ")
        ))
    }
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / procfs::ticks_per_second() as f64)
}

fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some(ticks(stat.utime + stat.stime))
}

/// Every `postgres` process's time, plus the time of the children it reaped (a backend that
/// exited between two samples is counted in the postmaster's `cutime`).
fn postgres_cpu() -> Option<Duration> {
    let mut total = 0u64;
    let mut seen = false;
    for process in procfs::process::all_processes().ok()?.flatten() {
        let Ok(stat) = process.stat() else { continue };
        if stat.comm == "postgres" {
            seen = true;
            let children = u64::try_from(stat.cutime + stat.cstime).unwrap_or(0);
            total += stat.utime + stat.stime + children;
        }
    }
    seen.then(|| ticks(total))
}

fn machine_time() -> Option<MachineTime> {
    use procfs::CurrentSI as _;
    let t = procfs::KernelStats::current().ok()?.total;
    let opt = |v: Option<u64>| v.unwrap_or(0);
    let busy = t.user + t.nice + t.system + opt(t.irq) + opt(t.softirq) + opt(t.steal);
    let idle = t.idle + opt(t.iowait);
    Some(MachineTime {
        busy: ticks(busy),
        idle: ticks(idle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_machine_are_readable() {
        let before = CpuSample::read(Some(std::process::id()), None, false);
        assert!(before.jetflow.is_some() && before.machine.is_some());
        assert_eq!(before.nats, None);
        assert_eq!(before.postgres, None);
        // Burn some CPU, so the per-order cost is positive.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = CpuSample::read(Some(std::process::id()), None, false);
        let cost = before.per_order(&after, 10);
        let ms = cost.jetflow_ms.expect("this process's CPU");
        assert!(ms > 0.0, "{cost:?}");
        assert!(cost.machine_busy.is_some_and(|b| (0.0..=1.0).contains(&b)));
        assert!(cost.clients_ms.is_some_and(|ms| ms > 0.0), "{cost:?}");
        assert_eq!(cost.nats_ms, None);
        assert!(
            cost.line("order")
                .is_some_and(|l| l.contains("CPU per order: jetflow"))
        );
    }

    #[test]
    fn no_orders_or_nothing_read_gives_no_figures() {
        let sample = CpuSample {
            jetflow: Some(Duration::from_secs(1)),
            ..CpuSample::default()
        };
        assert_eq!(sample.per_order(&sample, 0).jetflow_ms, None);
        assert_eq!(CpuSample::default().per_order(&sample, 5).jetflow_ms, None);
        assert_eq!(CpuPerOrder::default().line("order"), None);
    }

    #[test]
    fn costs_are_divided_by_the_orders() {
        let before = CpuSample {
            jetflow: Some(Duration::from_millis(1000)),
            nats: Some(Duration::from_millis(100)),
            postgres: Some(Duration::from_millis(0)),
            clients: None,
            machine: Some(MachineTime {
                busy: Duration::from_secs(10),
                idle: Duration::from_secs(10),
            }),
        };
        let after = CpuSample {
            jetflow: Some(Duration::from_millis(3000)),
            nats: Some(Duration::from_millis(600)),
            postgres: Some(Duration::from_millis(1000)),
            clients: None,
            machine: Some(MachineTime {
                busy: Duration::from_secs(13),
                idle: Duration::from_secs(11),
            }),
        };
        let cost = before.per_order(&after, 1000);
        assert_eq!(cost.jetflow_ms, Some(2.0));
        assert_eq!(cost.nats_ms, Some(0.5));
        assert_eq!(cost.postgres_ms, Some(1.0));
        assert_eq!(cost.machine_busy, Some(0.75));
        assert_eq!(cost.clients_ms, None);
    }
}

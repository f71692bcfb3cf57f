//! The tokio runtime families ztunnel exports (`tokio_num_workers`, `tokio_num_alive_tasks`,
//! `tokio_global_queue_depth`, and per-worker busy time and park counts), from the metrics
//! stable tokio offers (no `tokio_unstable`), read at scrape time from the runtime that runs
//! the role's work: the proxy's data path, the agent's and the controller's runtimes.

use std::fmt::Write as _;

use tokio::runtime::Handle;

/// The families in the text format, appended to the registry's exposition.
pub(crate) fn render(rt: &Handle) -> String {
    let m = rt.metrics();
    let mut out = String::new();
    let gauges = [
        ("tokio_num_workers", "the number of worker threads used by the runtime", m.num_workers()),
        ("tokio_num_alive_tasks", "the number of alive tasks in the runtime", m.num_alive_tasks()),
        ("tokio_global_queue_depth", "the number of tasks currently scheduled in the runtime's global queue", m.global_queue_depth()),
    ];
    for (name, help, v) in gauges {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    }
    per_worker(&mut out, &m);
    out
}

/// Per-worker counters; tokio keeps them only where 64-bit atomics exist.
#[cfg(target_has_atomic = "64")]
fn per_worker(out: &mut String, m: &tokio::runtime::RuntimeMetrics) {
    let workers = m.num_workers();
    let counter = |out: &mut String, name: &str, help: &str, value: &dyn Fn(usize) -> f64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        for w in 0..workers {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", value(w));
        }
    };
    counter(out, "tokio_worker_total_busy_duration_seconds_total", "the amount of time worker threads have been busy", &|w| {
        m.worker_total_busy_duration(w).as_secs_f64()
    });
    counter(out, "tokio_worker_park_count_total", "the total number of times the given worker thread has parked", &|w| {
        m.worker_park_count(w) as f64
    });
    counter(
        out,
        "tokio_worker_park_unpark_count_total",
        "the total number of times the given worker thread has parked and unparked",
        &|w| m.worker_park_unpark_count(w) as f64,
    );
}

#[cfg(not(target_has_atomic = "64"))]
fn per_worker(_: &mut String, _: &tokio::runtime::RuntimeMetrics) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_reports_its_workers_tasks_and_per_worker_counters() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(async move {
            let _ = rx.await;
        });
        let text = render(rt.handle());
        assert!(text.contains("# TYPE tokio_num_workers gauge\ntokio_num_workers 2\n"), "{text}");
        assert!(text.contains("tokio_num_alive_tasks 1\n"), "the one waiting task:\n{text}");
        assert!(text.contains("tokio_global_queue_depth "), "{text}");
        for family in
            ["tokio_worker_total_busy_duration_seconds_total", "tokio_worker_park_count_total", "tokio_worker_park_unpark_count_total"]
        {
            assert!(text.contains(&format!("# TYPE {family} counter\n")), "{family}:\n{text}");
            for w in ["0", "1"] {
                assert!(text.contains(&format!("{family}{{worker=\"{w}\"}} ")), "{family} worker {w}:\n{text}");
            }
        }
        let _ = tx.send(());
        rt.block_on(task).unwrap();
        assert!(render(rt.handle()).contains("tokio_num_alive_tasks 0\n"));
    }
}

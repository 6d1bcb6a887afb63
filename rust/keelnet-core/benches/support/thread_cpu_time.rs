//! A criterion measurement of the benchmark thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), for shared machines: wall time counts the periods the
//! thread waits for a core held by another process; CPU time does not. Cache and memory
//! bandwidth shared with other processes still count. Selected with
//! `KEELNET_BENCH_CLOCK=thread-cpu`; wall time stays the default.

use std::time::Duration;

use criterion::Throughput;
use criterion::measurement::{Measurement, ValueFormatter};

pub struct ThreadCpuTime;

/// True when the environment asks for CPU-time measurement.
pub fn requested() -> bool {
    std::env::var("KEELNET_BENCH_CLOCK").is_ok_and(|clock| clock == "thread-cpu")
}

/// The selected clock's reading, for benches that time themselves (`iter_custom`).
#[allow(dead_code)] // not every bench times itself
pub fn selected_clock_now() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    if requested() {
        now()
    } else {
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

fn now() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `spec` is a valid, writable timespec; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosecondFormatter
    }
}

struct NanosecondFormatter;

impl ValueFormatter for NanosecondFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            ns if ns < 1e3 => (1.0, "ns"),
            ns if ns < 1e6 => (1e-3, "µs"),
            ns if ns < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|value| *value *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iteration, unit, scale) = match *throughput {
            Throughput::Bytes(bytes) | Throughput::BytesDecimal(bytes) => {
                (bytes as f64, "GB/s", 1e9)
            }
            Throughput::Bits(bits) => (bits as f64, "Gb/s", 1e9),
            Throughput::Elements(elements) | Throughput::ElementsAndBytes { elements, .. } => {
                (elements as f64, "Melem/s", 1e6)
            }
        };
        values
            .iter_mut()
            .for_each(|ns| *ns = per_iteration * 1e9 / *ns / scale);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The bench binary's `main`: runs `targets` timed by the wall clock, or by the thread's
/// CPU time when `KEELNET_BENCH_CLOCK=thread-cpu`, with warm-up 1 s and measurement 3 s.
macro_rules! wall_or_cpu_time_main {
    ($($target:path),+ $(,)?) => {
        fn config() -> criterion::Criterion {
            criterion::Criterion::default()
                .warm_up_time(std::time::Duration::from_secs(1))
                .measurement_time(std::time::Duration::from_secs(3))
        }

        criterion::criterion_group! {
            name = wall_time;
            config = config();
            targets = $($target),+
        }

        criterion::criterion_group! {
            name = cpu_time;
            config = config().with_measurement(thread_cpu_time::ThreadCpuTime);
            targets = $($target),+
        }

        fn main() {
            if thread_cpu_time::requested() {
                cpu_time();
            } else {
                wall_time();
            }
            criterion::Criterion::default().configure_from_args().final_summary();
        }
    };
}

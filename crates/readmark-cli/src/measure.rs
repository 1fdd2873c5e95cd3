//! Process-level measurements: bytes this process caused to be written
//! (`/proc/self/io`), and CPU time (`getrusage`).

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent
/// to storage, counted when a page becomes dirty (a page written many times
/// between write-backs counts once). 0 where the file does not exist.
pub(crate) fn proc_write_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/io") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Resident set size of process `pid` (`"self"` for this one), in MiB,
/// from `/proc/<pid>/status`; 0 where it cannot be read.
pub(crate) fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User plus system CPU time of the whole process, in microseconds.
#[allow(unsafe_code)]
pub(crate) fn cpu_micros() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer we own; on
    // failure we read the zeroed value.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let us = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Context switches of the calling thread so far: (voluntary: it blocked,
/// involuntary: it was preempted).
#[allow(unsafe_code)]
pub(crate) fn thread_switches() -> (u64, u64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: as in `cpu_micros`.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    (
        u64::try_from(ru.ru_nvcsw).unwrap_or(0),
        u64::try_from(ru.ru_nivcsw).unwrap_or(0),
    )
}

/// Median and range of a few runs.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }

    /// Half the range, as a percentage of the median.
    pub(crate) fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median * 100.0
        }
    }
}

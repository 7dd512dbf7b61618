//! Readers for a server process's resource use from /proc.
//!
//! Owns: VmRSS from /proc/PID/status (bytes) and utime and stime from /proc/PID/stat
//! (clock ticks, converted with sysconf(_SC_CLK_TCK)).
//! Must never: write to /proc, signal or otherwise affect the observed process.

/// Resident set size in bytes, None if the process is gone or unreadable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss_bytes(&text)
}

pub fn parse_vmrss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A process's CPU time so far, split as the kernel accounts it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// utime: in user mode, seconds.
    pub user_s: f64,
    /// stime: in the kernel on the process's behalf (syscalls, io_uring task work), seconds.
    pub system_s: f64,
}

impl CpuTimes {
    /// utime + stime, seconds.
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }

    /// The CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - earlier.user_s,
            system_s: self.system_s - earlier.system_s,
        }
    }
}

/// utime and stime in seconds, None if the process is gone or unreadable.
pub fn cpu_times(pid: u32) -> Option<CpuTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_cpu_ticks_split(&text)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(CpuTimes {
        user_s: utime as f64 / hz,
        system_s: stime as f64 / hz,
    })
}

/// Fields 14 and 15 (utime, stime) of /proc/PID/stat, in clock ticks; the command name
/// may contain spaces and parentheses, so parsing starts after the last ')'.
pub fn parse_cpu_ticks_split(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14 -> index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(parse_vmrss_bytes("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_vmrss_bytes("Name: x\n"), None);
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert_eq!(parse_cpu_ticks_split(stat), Some((250, 50)));
        assert_eq!(parse_cpu_ticks_split("garbage"), None);
    }

    #[test]
    fn splits_user_and_system_ticks() {
        // utime 250, stime 50; the name holds ") " and digits that must not be counted.
        let stat = "42 (a) 1 2 3) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 8 20 0 1 0 5 1000 10";
        assert_eq!(parse_cpu_ticks_split(stat), Some((250, 50)));
        // A stat cut off before stime, or with a non-number there, is not parsed.
        assert_eq!(
            parse_cpu_ticks_split("42 (a) S 1 42 42 0 -1 4194560 100 0 0 0 250"),
            None
        );
        assert_eq!(
            parse_cpu_ticks_split("42 (a) S 1 42 42 0 -1 4194560 100 0 0 0 250 x"),
            None
        );
        assert_eq!(parse_cpu_ticks_split("no parenthesis 1 2 3"), None);
        let a = CpuTimes {
            user_s: 2.5,
            system_s: 0.5,
        };
        let b = CpuTimes {
            user_s: 4.0,
            system_s: 2.0,
        };
        let d = b.since(&a);
        assert_eq!((d.user_s, d.system_s, d.total_s()), (1.5, 1.5, 3.0));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        let t = cpu_times(pid).unwrap();
        assert!(t.user_s >= 0.0 && t.system_s >= 0.0);
    }
}

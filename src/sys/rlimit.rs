//! RLIMIT_NOFILE: raise the soft limit to the hard limit at start-up.
//!
//! Owns that one adjustment. Must never try to raise the hard limit (that needs
//! CAP_SYS_RESOURCE; io_uring direct descriptors are how we hold more).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// File-descriptor limits after the raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and reports what it got.
pub fn raise_nofile() -> NofileLimits {
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum;
    let wanted = Rlimit {
        current: hard,
        maximum: hard,
    };
    if hard.is_some() && hard != current.current {
        // Failure leaves the old soft limit; we report whatever is in force.
        let _ = setrlimit(Resource::Nofile, wanted);
    }
    let now = getrlimit(Resource::Nofile);
    NofileLimits {
        soft: now.current.unwrap_or(u64::MAX),
        hard: now.maximum.unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_hard_limit() {
        let l = super::raise_nofile();
        assert_eq!(l.soft, l.hard);
    }
}

//! Signal names and numbers as `runc kill` accepts them: `9`, `KILL`, `SIGKILL`, `kill`.

/// Errors parsing a signal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// Neither a known name nor a valid number.
    #[error("unknown signal {0:?}")]
    Unknown(String),
}

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Highest real-time signal number on Linux x86_64.
const SIGRTMAX: i32 = 64;

/// Parses a signal name or number.
pub fn parse(s: &str) -> Result<i32, SignalError> {
    let unknown = || SignalError::Unknown(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some((_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(*n);
    }
    // RTMIN, RTMIN+3, RTMAX-2 (glibc reserves the first two real-time signals).
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let off = match rest {
            "" => 0,
            r => r.parse::<i32>().ok()?,
        };
        Some(base + off)
    };
    let n = if let Some(r) = name.strip_prefix("RTMIN") {
        rt(34, r.strip_prefix('+').unwrap_or(r))
    } else if let Some(r) = name.strip_prefix("RTMAX") {
        rt(SIGRTMAX, r)
    } else {
        None
    };
    n.filter(|n| (34..=SIGRTMAX).contains(n))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("KILL"), Ok(9));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse("sigterm"), Ok(15));
        assert_eq!(parse("term"), Ok(15));
        assert_eq!(parse("SIGWINCH"), Ok(libc::SIGWINCH));
        assert_eq!(parse("RTMIN+2"), Ok(36));
        assert_eq!(parse("SIGRTMAX-1"), Ok(63));
        assert!(parse("0").is_err());
        assert!(parse("65").is_err());
        assert!(parse("BOGUS").is_err());
        assert!(parse("").is_err());
        assert_eq!(
            parse("NOPE").unwrap_err().to_string(),
            "unknown signal \"NOPE\""
        );
    }
}

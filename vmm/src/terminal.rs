//! Puts an interactive stdin into non-canonical, no-echo mode while the guest owns the
//! console, and restores it afterwards. Signal keys (Ctrl-C) keep working, so a user can
//! always stop the VM from the terminal.

pub struct RawGuard {
    saved: libc::termios,
}

impl RawGuard {
    /// Switches stdin if it is a terminal; `None` when it is not (pipe, file, /dev/null).
    pub fn stdin() -> Option<RawGuard> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: an all-zero termios is a valid value to be filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: `t` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawGuard { saved })
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the termios read by tcgetattr.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

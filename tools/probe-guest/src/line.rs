//! A fixed-size line formatter (no core::fmt: it would add tens of KiB and is not needed
//! for "key=value" lines). Output past the capacity is dropped and marked with `~`.

/// A line of at most `N` bytes.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

/// The usual line size.
pub type Line = LineBuf<256>;

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineBuf<N> {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.truncated = true;
        }
    }

    /// Append text.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Append bytes from the guest (command line, signatures): printable ASCII is kept,
    /// anything else becomes `?` so one line stays one line.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &c in b {
            self.push(if (0x20..0x7f).contains(&c) { c } else { b'?' });
        }
        self
    }

    /// Append an unsigned number in decimal.
    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.push(digits[n]);
        }
        self
    }

    /// Append `0x` and the number in lower-case hex without leading zeros.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.push(b'0');
        self.push(b'x');
        let mut shift = 60;
        while shift > 0 && (v >> shift) & 0xf == 0 {
            shift -= 4;
        }
        loop {
            self.push(DIGITS[((v >> shift) & 0xf) as usize]);
            if shift == 0 {
                break;
            }
            shift -= 4;
        }
        self
    }

    /// Append `1` or `0`.
    pub fn flag(&mut self, b: bool) -> &mut Self {
        self.push(if b { b'1' } else { b'0' });
        self
    }

    /// The formatted bytes (with `~` at the end if something was dropped).
    pub fn as_bytes(&mut self) -> &[u8] {
        if self.truncated && N > 0 {
            self.buf[N - 1] = b'~';
        }
        &self.buf[..self.len]
    }
}

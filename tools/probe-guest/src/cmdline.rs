//! Kernel-style command line parsing: whitespace-separated tokens, `key=value` or bare
//! flags; the first occurrence of a key wins.

/// A borrowed command line (without its NUL).
#[derive(Clone, Copy)]
pub struct Cmdline<'a> {
    bytes: &'a [u8],
}

impl<'a> Cmdline<'a> {
    /// Wrap the command line bytes.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The whole line.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Tokens separated by ASCII whitespace or control characters.
    pub fn tokens(&self) -> impl Iterator<Item = &'a [u8]> {
        self.bytes.split(|&c| c <= b' ').filter(|t| !t.is_empty())
    }

    /// Value of the first `key=value` token.
    pub fn value(&self, key: &str) -> Option<&'a [u8]> {
        let key = key.as_bytes();
        self.tokens().find_map(|t| {
            let rest = t.strip_prefix(key)?;
            rest.strip_prefix(b"=")
        })
    }

    /// Values of every `key=value` token, in order (for repeatable keys).
    pub fn values(&self, key: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let key = key.as_bytes();
        self.tokens()
            .filter_map(move |t| t.strip_prefix(key)?.strip_prefix(b"="))
    }

    /// Whether a bare `key` token (or `key=...`) is present.
    pub fn has(&self, key: &str) -> bool {
        let key = key.as_bytes();
        self.tokens()
            .any(|t| t == key || (t.starts_with(key) && t.get(key.len()) == Some(&b'=')))
    }

    /// Value of `key` as a number (decimal or 0x-prefixed hex).
    pub fn number(&self, key: &str) -> Option<u64> {
        parse_u64(self.value(key)?)
    }
}

/// Parse a decimal or `0x` hex number; `None` on junk or overflow.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        if u32::from(d) >= radix {
            return None;
        }
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Parse `a:b:c` numbers into `out`; returns how many there were, `None` on junk or if
/// there are more than `out` holds.
pub fn parse_fields(s: &[u8], out: &mut [u64]) -> Option<usize> {
    let mut n = 0;
    for f in s.split(|&c| c == b':') {
        *out.get_mut(n)? = parse_u64(f)?;
        n += 1;
    }
    Some(n)
}

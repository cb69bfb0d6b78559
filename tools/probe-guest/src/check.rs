//! Checksums and test patterns that the host side (capsa's integration tests) recomputes
//! independently, so the guest and the host can compare data without moving it over the
//! slow serial port.

/// FNV-1a, 64 bit.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub const fn new() -> Self {
        Self(Self::OFFSET)
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern's 8-byte word number `w` (byte offset `8 * w` of the stream) for `seed`,
/// stored little endian. Tests recompute it: keep it in sync with tests/common.
pub fn pattern_word(seed: u64, w: u64) -> u64 {
    mix(w ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// Fills `buf` with the pattern bytes at stream offset `off` (a multiple of 8).
pub fn pattern_fill(seed: u64, off: u64, buf: &mut [u8]) {
    debug_assert!(off.is_multiple_of(8));
    let mut w = off / 8;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&pattern_word(seed, w).to_le_bytes());
        w += 1;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&pattern_word(seed, w).to_le_bytes()[..n]);
}

/// Offset of the first byte of `buf` (at stream offset `off`, a multiple of 8) that
/// differs from the pattern, if any.
pub fn pattern_mismatch(seed: u64, off: u64, buf: &[u8]) -> Option<usize> {
    debug_assert!(off.is_multiple_of(8));
    for (i, c) in buf.chunks(8).enumerate() {
        let want = pattern_word(seed, off / 8 + i as u64).to_le_bytes();
        if c != &want[..c.len()] {
            let j = c.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Some(i * 8 + j);
        }
    }
    None
}

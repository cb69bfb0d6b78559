//! Intel MultiProcessor Specification 1.4 tables: find the floating pointer, validate the
//! configuration table and collect the processor entries.

/// Most processors recorded.
pub const MAX_CPUS: usize = 64;

/// What the MP table says about processors.
pub struct MpInfo {
    /// Enabled processor entries.
    pub cpus: usize,
    /// Their local APIC ids (first `cpus.min(MAX_CPUS)` entries valid).
    pub apic_ids: [u8; MAX_CPUS],
    /// APIC id of the entry flagged as bootstrap processor.
    pub bsp_apic_id: Option<u8>,
    /// Local APIC base from the table header.
    pub lapic_addr: u32,
}

/// Why no usable table was found.
pub enum MpError {
    NoFloatingPointer,
    BadFloatingChecksum,
    NoConfigTable,
    BadConfigTable,
}

impl MpError {
    /// Short reason for a FAIL line.
    pub fn as_str(&self) -> &'static str {
        match self {
            MpError::NoFloatingPointer => "no _MP_ floating pointer",
            MpError::BadFloatingChecksum => "bad _MP_ checksum",
            MpError::NoConfigTable => "no PCMP configuration table",
            MpError::BadConfigTable => "bad PCMP configuration table",
        }
    }
}

fn bytes(addr: usize, len: usize) -> &'static [u8] {
    // SAFETY: callers only pass low-memory ranges (< 1 MiB + 64 KiB) inside the identity
    // map, where the VMM writes its boot tables; they are read, never written.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Search the places the spec allows (the VMM uses 0x9fc00, the last KiB of base memory)
/// on 16-byte boundaries.
fn find_floating() -> Option<usize> {
    const AREAS: [(usize, usize); 3] = [(0x9fc00, 0x400), (0xf0000, 0x10000), (0x80000, 0x400)];
    AREAS.iter().find_map(|&(start, len)| {
        (start..start + len)
            .step_by(16)
            .find(|&a| bytes(a, 4) == b"_MP_")
    })
}

/// Parse the MP table.
pub fn read() -> Result<MpInfo, MpError> {
    let fp_addr = find_floating().ok_or(MpError::NoFloatingPointer)?;
    let fp = bytes(fp_addr, 16);
    let fp_len = usize::from(fp[8]) * 16;
    if fp_len < 16 || !checksum_ok(bytes(fp_addr, fp_len)) {
        return Err(MpError::BadFloatingChecksum);
    }
    let cfg_addr = u32_at(fp, 4) as usize;
    if cfg_addr == 0 || cfg_addr >= 0x10_0000 || bytes(cfg_addr, 4) != b"PCMP" {
        return Err(MpError::NoConfigTable);
    }
    let hdr = bytes(cfg_addr, 44);
    let base_len = usize::from(u16_at(hdr, 4));
    if base_len < 44 || cfg_addr + base_len > 0x10_0000 {
        return Err(MpError::BadConfigTable);
    }
    let table = bytes(cfg_addr, base_len);
    if !checksum_ok(table) {
        return Err(MpError::BadConfigTable);
    }
    let entries = u16_at(hdr, 34);
    let mut info = MpInfo {
        cpus: 0,
        apic_ids: [0; MAX_CPUS],
        bsp_apic_id: None,
        lapic_addr: u32_at(hdr, 36),
    };
    let mut off = 44;
    for _ in 0..entries {
        let Some(&kind) = table.get(off) else {
            return Err(MpError::BadConfigTable);
        };
        match kind {
            0 => {
                // Processor: type, APIC id, APIC version, flags (bit 0 enabled, bit 1 BSP).
                if off + 20 > table.len() {
                    return Err(MpError::BadConfigTable);
                }
                let (apic_id, flags) = (table[off + 1], table[off + 3]);
                if flags & 1 != 0 {
                    if info.cpus < MAX_CPUS {
                        info.apic_ids[info.cpus] = apic_id;
                    }
                    info.cpus += 1;
                    if flags & 2 != 0 {
                        info.bsp_apic_id = Some(apic_id);
                    }
                }
                off += 20;
            }
            // Bus, I/O APIC, I/O interrupt, local interrupt: 8 bytes each.
            1..=4 => off += 8,
            _ => return Err(MpError::BadConfigTable),
        }
    }
    Ok(info)
}

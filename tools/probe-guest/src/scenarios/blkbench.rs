//! `probe=blkbench`: virtio-blk read throughput for `bench io` (tools/bench). Reads from the
//! first virtio-blk device with the `blk` scenario's driver, between two marker lines the
//! host timestamps:
//!
//! ```text
//! PROBE-BENCH: start
//! PROBE-BENCH: end
//! PROBE-BLKBENCH: mode=rand|seq ops=N bytes=B depth=D req=R tsc=T xor=0x...
//! ```
//!
//! - `bench.mode=rand`: `bench.ops` reads of `bench.bs` bytes (default 4096) at block
//!   `pattern_word(bench.seed, i) % blocks` for i = 0, 1, ... (`blocks` = whole `bench.bs`
//!   blocks of the disk), `blk.depth` in flight.
//! - `bench.mode=seq`: the first `bench.bytes` bytes (default: the whole disk) in
//!   `blk.req`-byte requests (default 128 KiB), `blk.depth` in flight.
//!
//! `tsc` is the TSC ticks between the markers, as the guest saw them. `xor` folds the first
//! 8 bytes (little endian) of every 4 KiB of data read (rand: of every read), so the host
//! can check that the guest read the right blocks without moving the data over the serial
//! port. Nothing else is done to the data.

use super::blk::{Blk, Params, SECTOR, S_OK, T_IN};
use super::{Ctx, Outcome};
use crate::check::pattern_word;
use crate::io::rdtsc;
use crate::line::Line;
use crate::{serial, virtio};

/// Granularity of the `xor` check for sequential reads.
const CHECK_STRIDE: usize = 4096;

fn first_word(buf: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = buf.len().min(8);
    w[..n].copy_from_slice(&buf[..n]);
    u64::from_le_bytes(w)
}

/// `ops` random reads of `bs` bytes; returns the xor of their first words.
fn random_reads(b: &mut Blk, ops: u64, bs: u32, seed: u64) -> Result<u64, &'static str> {
    let blocks = b.capacity * SECTOR / u64::from(bs);
    if blocks == 0 {
        return Err("blkbench: disk smaller than one block");
    }
    let per_block = u64::from(bs) / SECTOR;
    let (mut submitted, mut completed) = (0u64, 0u64);
    let mut xor = 0;
    let depth = b.depth as u64;
    loop {
        let mut added = false;
        while submitted < ops && submitted - completed < depth {
            if b.q.num_free() < b.descs_needed(bs) {
                break;
            }
            let slot = (submitted % depth) as usize;
            let block = pattern_word(seed, submitted) % blocks;
            b.submit(slot, T_IN, block * per_block, bs)?;
            submitted += 1;
            added = true;
        }
        if added {
            b.q.kick();
        }
        if completed == ops {
            return Ok(xor);
        }
        let slot = (completed % depth) as usize;
        let (status, used) = b.wait(slot)?;
        if status != S_OK {
            return Err("blkbench: read failed");
        }
        if used != bs + 1 {
            return Err("blkbench: used length of a read is not data + status");
        }
        xor ^= first_word(b.buf(slot, 8));
        completed += 1;
    }
}

pub fn run(ctx: &Ctx) -> Outcome {
    let c = &ctx.cmdline;
    let p = Params::parse(c)?;
    let t = virtio::find(c, virtio::ID_BLOCK, 0).ok_or("no virtio-blk device")?;
    let mut b = Blk::new(t, &p)?;
    let seq = match c.value("bench.mode") {
        Some(b"rand") | None => false,
        Some(b"seq") => true,
        Some(_) => return Err("bench.mode must be rand or seq"),
    };
    let bs = c.number("bench.bs").unwrap_or(4096);
    if bs == 0 || !bs.is_multiple_of(SECTOR) || bs > u64::from(b.req) {
        return Err("bench.bs must be a multiple of 512 up to blk.req");
    }
    let bs = bs as u32;
    let disk_bytes = b.capacity * SECTOR;
    let bytes = c.number("bench.bytes").unwrap_or(disk_bytes);
    if seq && (bytes > disk_bytes || !bytes.is_multiple_of(SECTOR)) {
        return Err("bench.bytes must be a multiple of 512 within the disk");
    }
    let ops = c.number("bench.ops").unwrap_or(10_000);
    let seed = c.number("bench.seed").unwrap_or(1);

    serial::println_str("PROBE-BENCH: start");
    let t0 = rdtsc();
    let (xor, ops, bytes) = if seq {
        let mut xor = 0;
        b.stream(T_IN, 0, bytes / SECTOR, &mut |_, buf| {
            for chunk in buf.chunks(CHECK_STRIDE) {
                xor ^= first_word(chunk);
            }
            Ok(())
        })?;
        let ops = bytes.div_ceil(u64::from(b.req));
        (xor, ops, bytes)
    } else {
        let xor = random_reads(&mut b, ops, bs, seed)?;
        (xor, ops, ops * u64::from(bs))
    };
    let ticks = rdtsc().wrapping_sub(t0);
    serial::println_str("PROBE-BENCH: end");

    let mut l = Line::new();
    l.str("PROBE-BLKBENCH: mode=")
        .str(if seq { "seq" } else { "rand" })
        .str(" ops=")
        .dec(ops)
        .str(" bytes=")
        .dec(bytes)
        .str(" depth=")
        .dec(b.depth as u64)
        .str(" req=")
        .dec(u64::from(if seq { b.req } else { bs }))
        .str(" tsc=")
        .dec(ticks)
        .str(" xor=")
        .hex(xor);
    serial::println(&mut l);
    if b.t.needs_reset() {
        return Err("blk: device asks for a reset");
    }
    b.t.reset()
}

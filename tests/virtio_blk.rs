//! virtio-blk end to end: the probe guest's polled virtio-mmio driver (`probe=blk`) against
//! `capsa vm run --disk` on the real /dev/kvm, with the results checked against the host
//! files. The guest prints one `PROBE-BLK: disk=N ...` line per disk (see
//! tools/probe-guest/README.md); checksums are FNV-1a 64 over the disk bytes.

mod common;

use std::path::Path;

use common::*;

const SECTOR: usize = 512;

/// A temporary disk image holding `data`.
fn disk(data: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    f
}

fn path(f: &tempfile::NamedTempFile) -> &str {
    f.path().to_str().unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Applies the guest's `blk.write=SECTOR:COUNT:SEED` to a host copy of the disk.
fn apply_write(img: &mut [u8], sector: usize, count: usize, seed: u64) {
    let pat = probe_pattern(seed, 0, count * SECTOR);
    img[sector * SECTOR..(sector + count) * SECTOR].copy_from_slice(&pat);
}

fn line(disk: usize) -> String {
    format!("PROBE-BLK: disk={disk} ")
}

fn sum_of(o: &Output, disk: usize) -> u64 {
    let s = o.expect_field(&line(disk), "sum");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn guest_reads_match_the_host_file() {
    let data = noise(1, 1 << 20);
    let f = disk(&data);
    let o = probe_cmdline("blk", "", &["--disk", path(&f)]);
    o.assert_probe_pass("blk");
    let l = line(0);
    assert_eq!(o.expect_field(&l, "capacity"), "2048", "{o}");
    assert_eq!(o.expect_field(&l, "ro"), "0", "{o}");
    assert_eq!(o.expect_field(&l, "writes"), "0", "{o}");
    assert_eq!(o.expect_field(&l, "flush"), "0", "{o}");
    assert_eq!(sum_of(&o, 0), fnv1a64(&data), "{o}");
    // Nothing was written (the end-of-disk write was refused): byte-identical.
    assert!(read(f.path()) == data, "disk changed");
}

#[test]
fn checksum_of_a_sector_range() {
    let data = noise(2, 256 * SECTOR);
    let f = disk(&data);
    let o = probe_cmdline("blk", "blk.sum=17:33", &["--disk", path(&f)]);
    o.assert_probe_pass("blk");
    assert_eq!(
        sum_of(&o, 0),
        fnv1a64(&data[17 * SECTOR..50 * SECTOR]),
        "{o}"
    );
}

#[test]
fn guest_writes_reach_the_host_file() {
    let data = noise(3, 2 << 20);
    let f = disk(&data);
    let o = probe_cmdline(
        "blk",
        "blk.write=10:37:99 blk.write=1000:300:5",
        &["--disk", path(&f)],
    );
    o.assert_probe_pass("blk");
    assert_eq!(o.expect_field(&line(0), "writes"), "2", "{o}");
    assert_eq!(o.expect_field(&line(0), "flush"), "0", "{o}");

    let mut want = data.clone();
    apply_write(&mut want, 10, 37, 99);
    apply_write(&mut want, 1000, 300, 5);
    let got = read(f.path());
    assert_eq!(got.len(), data.len(), "disk size changed");
    // Spot checks around the written ranges, then everything.
    let w0 = probe_pattern(99, 0, 8);
    assert_eq!(&got[10 * SECTOR..10 * SECTOR + 8], &w0[..]);
    assert_eq!(got[10 * SECTOR - 1], data[10 * SECTOR - 1], "byte before");
    assert_eq!(got[47 * SECTOR], data[47 * SECTOR], "byte after");
    assert_eq!(got[1300 * SECTOR], data[1300 * SECTOR], "byte after");
    assert_ne!(
        got[1000 * SECTOR..1300 * SECTOR],
        data[1000 * SECTOR..1300 * SECTOR]
    );
    assert!(got == want, "host file differs from the expected bytes");
    // The guest's checksum (read back after the writes) agrees.
    assert_eq!(sum_of(&o, 0), fnv1a64(&want), "{o}");
}

#[test]
fn read_only_disk_refuses_writes_and_stays_untouched() {
    let data = noise(4, 64 * SECTOR);
    let f = disk(&data);
    let arg = format!("{},ro", path(&f));
    let o = probe_cmdline("blk", "", &["--disk", &arg]);
    o.assert_probe_pass("blk");
    let l = line(0);
    assert_eq!(o.expect_field(&l, "ro"), "1", "{o}");
    // VIRTIO_BLK_S_IOERR.
    assert_eq!(o.expect_field(&l, "ro_write_status"), "1", "{o}");
    assert_eq!(sum_of(&o, 0), fnv1a64(&data), "{o}");
    assert!(read(f.path()) == data, "read-only disk changed");

    // An explicit write operation fails the scenario and leaves the file alone too.
    let o = probe_cmdline("blk", "blk.write=0:4:1", &["--disk", &arg]);
    o.assert_stdout_has("PROBE-BLK: request failed type=1 sector=0 status=1");
    o.assert_stdout_has("PROBE-RESULT: FAIL blk");
    assert!(read(f.path()) == data, "read-only disk changed");
}

#[test]
fn get_id_returns_the_serial() {
    let a = disk(&noise(5, 8 * SECTOR));
    let b = disk(&noise(6, 8 * SECTOR));
    let c = disk(&noise(7, 8 * SECTOR));
    let b_arg = format!("{},id=my-serial", path(&b));
    // 20 bytes: the longest id, returned without a NUL terminator.
    let c_arg = format!("{},ro,id=abcdefghij0123456789", path(&c));
    let o = probe_cmdline(
        "blk",
        "blk.disks=3",
        &["--disk", path(&a), "--disk", &b_arg, "--disk", &c_arg],
    );
    o.assert_probe_pass("blk");
    assert_eq!(o.expect_field(&line(0), "id"), "disk0", "{o}");
    assert_eq!(o.expect_field(&line(1), "id"), "my-serial", "{o}");
    assert_eq!(
        o.expect_field(&line(2), "id"),
        "abcdefghij0123456789",
        "{o}"
    );
}

#[test]
fn requests_beyond_the_end_of_the_disk_fail() {
    // A trailing partial sector is not part of the disk and must stay as it is.
    let data = noise(8, 100 * SECTOR + 100);
    let f = disk(&data);
    let o = probe_cmdline("blk", "blk.write=98:2:3", &["--disk", path(&f)]);
    o.assert_probe_pass("blk");
    let l = line(0);
    assert_eq!(o.expect_field(&l, "capacity"), "100", "{o}");
    assert_eq!(o.expect_field(&l, "eod_status"), "1", "{o}");
    assert_eq!(o.expect_field(&l, "eod_write_status"), "1", "{o}");
    assert_eq!(o.expect_field(&l, "far_status"), "1", "{o}");
    let mut want = data.clone();
    apply_write(&mut want, 98, 2, 3);
    // The refused 2-sector write at sector 99 changed neither the last sector (it holds
    // the blk.write pattern) nor the file size.
    assert!(
        read(f.path()) == want,
        "disk differs from the expected bytes"
    );
    assert_eq!(sum_of(&o, 0), fnv1a64(&want[..100 * SECTOR]), "{o}");
}

#[test]
fn two_disks_are_independent() {
    let a_data = noise(9, 128 * SECTOR);
    let b_data = noise(10, 192 * SECTOR);
    let a = disk(&a_data);
    let b = disk(&b_data);
    let o = probe_cmdline(
        "blk",
        "blk.disks=2 blk.write=1:5:20:77",
        &["--disk", path(&a), "--disk", path(&b)],
    );
    o.assert_probe_pass("blk");
    assert_eq!(o.expect_field(&line(0), "capacity"), "128", "{o}");
    assert_eq!(o.expect_field(&line(1), "capacity"), "192", "{o}");
    assert_eq!(o.expect_field(&line(0), "writes"), "0", "{o}");
    assert_eq!(o.expect_field(&line(1), "writes"), "1", "{o}");
    let mut b_want = b_data.clone();
    apply_write(&mut b_want, 5, 20, 77);
    assert!(read(a.path()) == a_data, "disk 0 changed");
    assert!(
        read(b.path()) == b_want,
        "disk 1 differs from the expected bytes"
    );
    assert_eq!(sum_of(&o, 0), fnv1a64(&a_data), "{o}");
    assert_eq!(sum_of(&o, 1), fnv1a64(&b_want), "{o}");
}

/// Several MiB in both directions, in each descriptor layout the driver can produce.
fn large_io(params: &str) {
    let size = 16 << 20;
    let data = noise(11, size);
    let f = disk(&data);
    // 6 MiB from sector 1 and 2 MiB near the end (not request-aligned).
    let ops = "blk.write=1:12288:123 blk.write=28000:4096:321";
    let o = probe_cmdline("blk", &format!("{ops} {params}"), &["--disk", path(&f)]);
    o.assert_probe_pass("blk");
    assert_eq!(o.expect_field(&line(0), "writes"), "2", "{o}");
    let mut want = data;
    apply_write(&mut want, 1, 12288, 123);
    apply_write(&mut want, 28000, 4096, 321);
    assert!(read(f.path()) == want, "host file differs ({params})");
    assert_eq!(sum_of(&o, 0), fnv1a64(&want), "{params}\n{o}");
}

#[test]
fn large_io_with_pipelined_requests() {
    // Defaults: 4 KiB descriptors, 128 KiB requests, 8 in flight.
    large_io("");
}

#[test]
fn large_io_one_descriptor_per_sector() {
    // 254 data descriptors per request: each chain fills the 256-entry ring.
    large_io("blk.seg=512 blk.req=1048576");
}

#[test]
fn large_io_unaligned_segments_and_indirect_tables() {
    // Segments that split sectors, in indirect tables, 16 requests in flight.
    large_io("blk.seg=1000 blk.req=65536 blk.depth=16 blk.indirect=1");
}

#[test]
fn no_disk_is_a_failure() {
    let o = probe_cmdline("blk", "", &[]);
    o.assert_stdout_has("PROBE-RESULT: FAIL blk: no virtio-blk device");
}

//! The host side of a virtio-blk device: a raw image file or a host block device.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use tracing::debug;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

use super::{BlockError, SECTOR_SIZE};

// <linux/fs.h>: BLKDISCARD = _IO(0x12, 119), argument `u64 range[2]` = {offset, length}.
ioctl_io_nr!(BLKDISCARD, 0x12, 119);

/// Zero buffer size for the write-zeros fallback.
const ZERO_CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiskKind {
    File,
    BlockDevice,
}

/// An open disk image.
#[derive(Debug)]
pub(crate) struct Disk {
    file: File,
    kind: DiskKind,
    /// Capacity in 512-byte sectors; a trailing partial sector of a file is not exposed.
    sectors: u64,
    read_only: bool,
}

impl Disk {
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let file_type = file.metadata().map_err(open_err)?.file_type();
        let kind = if file_type.is_file() {
            DiskKind::File
        } else if file_type.is_block_device() {
            DiskKind::BlockDevice
        } else {
            return Err(BlockError::NotADisk(path.to_owned()));
        };
        // Seeking to the end works for both files and block devices (whose st_size is 0).
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        Ok(Disk {
            file,
            kind,
            sectors: size / SECTOR_SIZE,
            read_only,
        })
    }

    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The file positioned at byte `offset`, for streaming guest buffers in or out.
    pub(crate) fn file_at(&mut self, offset: u64) -> io::Result<&mut File> {
        self.file.seek(SeekFrom::Start(offset))?;
        Ok(&mut self.file)
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset`. Reads afterwards may return anything, but this
    /// implementation always leaves zeros behind.
    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let res = match self.kind {
            DiskKind::File => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            DiskKind::BlockDevice => self.blk_discard(offset, len),
        };
        res.or_else(|e| {
            debug!("virtio-blk: discard not supported by backend ({e}); writing zeros");
            self.write_zeros_slow(offset, len)
        })
    }

    /// Makes `len` bytes at `offset` read back as zeros. With `unmap` the space may be
    /// deallocated (hole punch); without it the blocks stay allocated.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        // Both modes read back as zeros on files and (since Linux 4.9) on block devices.
        let mut res = if unmap {
            self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len)
        } else {
            self.fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len)
        };
        if unmap && res.is_err() {
            res = self.fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len);
        }
        res.or_else(|e| {
            debug!("virtio-blk: fallocate zeroing not supported ({e}); writing zeros");
            self.write_zeros_slow(offset, len)
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate only acts on our own open fd and takes no pointers.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn blk_discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD reads two u64s through the pointer, which refers to `range`,
        // alive for the whole call; it writes no memory.
        let ret = unsafe { ioctl_with_ref(&self.file, BLKDISCARD(), &range) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zeros_slow(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn disk_with(len: usize) -> (TempFile, Disk) {
        let f = TempFile::new().unwrap();
        f.as_file().write_all(&vec![0xab; len]).unwrap();
        let d = Disk::open(f.as_path(), false).unwrap();
        (f, d)
    }

    fn check_zeroed(f: &TempFile, len: usize, start: usize, n: usize) {
        let data = std::fs::read(f.as_path()).unwrap();
        assert_eq!(data.len(), len);
        for (i, &b) in data.iter().enumerate() {
            let want = if (start..start + n).contains(&i) {
                0
            } else {
                0xab
            };
            assert_eq!(b, want, "byte {i}");
        }
    }

    #[test]
    fn open_sizes_and_modes() {
        let (f, d) = disk_with(3 * 512 + 1);
        assert_eq!(d.sectors(), 3);
        assert_eq!(d.kind, DiskKind::File);
        assert!(!d.read_only());
        let ro = Disk::open(f.as_path(), true).unwrap();
        assert!(ro.read_only());
        // Opened O_RDONLY: the kernel refuses writes whatever the device logic does.
        assert!(ro.file.write_at(b"x", 0).is_err());
    }

    #[test]
    fn write_zeros_fallback_crosses_chunks() {
        let len = 3 * ZERO_CHUNK;
        let (f, d) = disk_with(len);
        let (start, n) = (ZERO_CHUNK - 512, ZERO_CHUNK + 1024);
        d.write_zeros_slow(start as u64, n as u64).unwrap();
        check_zeroed(&f, len, start, n);
    }

    #[test]
    fn block_device_discard_falls_back_to_zeros() {
        // BLKDISCARD on a regular file fails (ENOTTY), exercising the fallback.
        let (f, mut d) = disk_with(8192);
        d.kind = DiskKind::BlockDevice;
        d.discard(1024, 2048).unwrap();
        check_zeroed(&f, 8192, 1024, 2048);
    }

    #[test]
    fn discard_and_write_zeroes_keep_size() {
        let (f, d) = disk_with(16384);
        d.discard(4096, 4096).unwrap();
        d.write_zeroes(512, 512, false).unwrap();
        d.write_zeroes(12288, 4096, true).unwrap();
        let data = std::fs::read(f.as_path()).unwrap();
        assert_eq!(data.len(), 16384);
        for (i, &b) in data.iter().enumerate() {
            let zero = (4096..8192).contains(&i) || (512..1024).contains(&i) || i >= 12288;
            assert_eq!(b, if zero { 0 } else { 0xab }, "byte {i}");
        }
        // Zero-length operations are no-ops.
        d.discard(0, 0).unwrap();
        d.write_zeroes(0, 0, true).unwrap();
        assert_eq!(std::fs::read(f.as_path()).unwrap()[0], 0xab);
    }
}

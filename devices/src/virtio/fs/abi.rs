//! The FUSE wire protocol (Linux `include/uapi/linux/fuse.h`, protocol 7.31), as far as
//! virtio-fs uses it: opcodes, flag bits, and the fixed-layout reply structures.
//!
//! Structures are serialised field by field in little-endian order (virtio-fs uses the
//! guest's native byte order; capsa only runs x86_64 guests) rather than transmuted, so no
//! `unsafe` and no layout assumptions are needed.

/// Protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version we speak: what Linux 5.10 to 6.1 guests need, without the
/// later extensions (SETXATTR_EXT, security contexts, supplementary groups) we do not
/// implement.
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Oldest minor version we accept (Linux 5.4 speaks 7.31, 4.19 speaks 7.27).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 27;
/// Node id of the root directory.
pub const ROOT_ID: u64 = 1;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;

/// Request opcodes (`enum fuse_opcode`); the complete list, used ones or not, for reference.
#[allow(missing_docs, dead_code)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits we care about.
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
}

/// `fuse_setattr_in.valid` bits (all of them, for reference).
#[allow(missing_docs, dead_code)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
}

/// `fuse_fsync_in.fsync_flags`: only flush data, not metadata.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

/// Little-endian serialiser for reply structures.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// An empty buffer.
    pub fn new() -> Self {
        Writer(Vec::new())
    }
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Pads with zeroes to a multiple of 8 bytes (FUSE_DIRENT_ALIGN).
    pub fn align8(&mut self) -> &mut Self {
        let n = self.0.len().next_multiple_of(8);
        self.0.resize(n, 0);
        self
    }
    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

/// `struct fuse_attr` (88 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Size of `struct fuse_attr`.
pub const ATTR_LEN: usize = 88;
/// Size of `struct fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// Size of `struct fuse_dirent` without its name.
pub const DIRENT_LEN: usize = 24;

impl Attr {
    /// Converts a host `stat`.
    pub fn from_stat(st: &super::sys::Stat) -> Self {
        Attr {
            ino: st.st_ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: st.st_atime as u64,
            mtime: st.st_mtime as u64,
            ctime: st.st_ctime as u64,
            atimensec: st.st_atime_nsec as u32,
            mtimensec: st.st_mtime_nsec as u32,
            ctimensec: st.st_ctime_nsec as u32,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            // The 32-bit new_encode_dev() layout the guest kernel decodes.
            rdev: new_encode_dev(st.st_rdev),
            blksize: st.st_blksize as u32,
        }
    }

    /// Appends the wire form.
    pub fn write(&self, w: &mut Writer) {
        w.u64(self.ino)
            .u64(self.size)
            .u64(self.blocks)
            .u64(self.atime)
            .u64(self.mtime)
            .u64(self.ctime)
            .u32(self.atimensec)
            .u32(self.mtimensec)
            .u32(self.ctimensec)
            .u32(self.mode)
            .u32(self.nlink)
            .u32(self.uid)
            .u32(self.gid)
            .u32(self.rdev)
            .u32(self.blksize)
            .u32(0); // flags
    }
}

/// Linux `new_encode_dev`: the 32-bit device number FUSE carries in `rdev`.
pub fn new_encode_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Linux `new_decode_dev`: the host `dev_t` for a FUSE `rdev`. Only the encoding's test
/// needs it: MKNOD of a device node is refused, so a guest `rdev` is never decoded.
#[cfg(test)]
pub fn new_decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// `struct fuse_entry_out` (128 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

impl EntryOut {
    /// Appends the wire form.
    pub fn write(&self, w: &mut Writer) {
        w.u64(self.nodeid)
            .u64(self.generation)
            .u64(self.entry_valid)
            .u64(self.attr_valid)
            .u32(self.entry_valid_nsec)
            .u32(self.attr_valid_nsec);
        self.attr.write(w);
    }

    /// The wire form alone.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_inner()
    }
}

/// `struct fuse_attr_out` (104 bytes).
pub fn attr_out(attr_valid: u64, attr: &Attr) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(attr_valid).u32(0).u32(0);
    attr.write(&mut w);
    w.into_inner()
}

/// `struct fuse_open_out` (16 bytes).
pub fn open_out(fh: u64, open_flags: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(fh).u32(open_flags).u32(0);
    w.into_inner()
}

/// `struct fuse_out_header` (16 bytes). `error` is 0 or a negated errno.
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// Appends one `struct fuse_dirent` (padded to 8 bytes).
pub fn write_dirent(w: &mut Writer, ino: u64, off: u64, typ: u32, name: &[u8]) {
    w.u64(ino)
        .u64(off)
        .u32(name.len() as u32)
        .u32(typ)
        .bytes(name)
        .align8();
}

/// Wire size of a `fuse_dirent` with a name of `name_len` bytes.
pub fn dirent_size(name_len: usize) -> usize {
    (DIRENT_LEN + name_len).next_multiple_of(8)
}

/// Wire size of a `fuse_direntplus` with a name of `name_len` bytes.
pub fn direntplus_size(name_len: usize) -> usize {
    (ENTRY_OUT_LEN + DIRENT_LEN + name_len).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_header() {
        let mut w = Writer::new();
        Attr::default().write(&mut w);
        assert_eq!(w.0.len(), ATTR_LEN);
        assert_eq!(EntryOut::default().to_bytes().len(), ENTRY_OUT_LEN);
        assert_eq!(attr_out(0, &Attr::default()).len(), 104);
        assert_eq!(open_out(0, 0).len(), 16);
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(direntplus_size(1), 160);
    }

    #[test]
    fn dirent_layout() {
        let mut w = Writer::new();
        write_dirent(&mut w, 7, 9, 4, b"abc");
        let b = w.into_inner();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..8], &7u64.to_le_bytes());
        assert_eq!(&b[8..16], &9u64.to_le_bytes());
        assert_eq!(&b[16..20], &3u32.to_le_bytes());
        assert_eq!(&b[20..24], &4u32.to_le_bytes());
        assert_eq!(&b[24..27], b"abc");
        assert_eq!(&b[27..], &[0; 5]);
    }

    #[test]
    fn device_numbers_round_trip() {
        for (maj, min) in [(0, 0), (1, 3), (8, 0), (259, 70000), (4095, 0xfffff)] {
            let dev = libc::makedev(maj, min);
            let enc = new_encode_dev(dev);
            assert_eq!(new_decode_dev(enc), dev, "{maj}:{min}");
        }
        // 1:3 (/dev/null) is 0x103 in the old and new encodings alike.
        assert_eq!(new_encode_dev(libc::makedev(1, 3)), 0x103);
    }

    #[test]
    fn out_header_layout() {
        let h = out_header(16, -2, 0x1122);
        assert_eq!(&h[0..4], &16u32.to_le_bytes());
        assert_eq!(&h[4..8], &(-2i32).to_le_bytes());
        assert_eq!(&h[8..16], &0x1122u64.to_le_bytes());
    }
}

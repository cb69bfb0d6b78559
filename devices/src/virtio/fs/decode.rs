//! Decoding FUSE requests from the bytes the driver put in the device-readable buffers.
//!
//! The decoder only checks framing (lengths, NUL terminators, name syntax); what a request
//! means for the filesystem is decided in [`super::passthrough`]. Every length is checked
//! against the buffer before it is used, so a malformed request is a [`DecodeError`], never
//! a panic.

use std::ffi::CStr;

use super::abi::{opcode, IN_HEADER_LEN};

/// Longest directory entry name (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, NUL included (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Largest xattr value (XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;

/// Why a request could not be decoded. All of them are answered with EINVAL.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a `fuse_in_header`.
    #[error("request of {0} bytes is shorter than the {IN_HEADER_LEN}-byte header")]
    ShortHeader(usize),
    /// `fuse_in_header.len` does not match the bytes the driver provided.
    #[error("header says {header} bytes, the request has {actual}")]
    LengthMismatch {
        /// `len` from the header.
        header: u32,
        /// Bytes in the device-readable buffers.
        actual: usize,
    },
    /// The body is shorter than the opcode's fixed-size argument.
    #[error("opcode {opcode}: body truncated")]
    Truncated {
        /// Request opcode.
        opcode: u32,
    },
    /// Bytes left over after every argument was read.
    #[error("opcode {opcode}: {extra} unexpected trailing bytes")]
    Trailing {
        /// Request opcode.
        opcode: u32,
        /// How many.
        extra: usize,
    },
    /// A string argument has no NUL terminator.
    #[error("opcode {opcode}: string argument is not NUL-terminated")]
    NoNul {
        /// Request opcode.
        opcode: u32,
    },
    /// A directory entry name is empty, too long, ".", ".." or contains '/'.
    #[error("opcode {opcode}: invalid name {name:?}")]
    BadName {
        /// Request opcode.
        opcode: u32,
        /// The offending name (lossy).
        name: String,
    },
    /// A length field inside the body is inconsistent with the body.
    #[error("opcode {opcode}: size field {size} does not match {actual} payload bytes")]
    SizeMismatch {
        /// Request opcode.
        opcode: u32,
        /// What the argument structure claims.
        size: u64,
        /// What is there.
        actual: usize,
    },
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    /// Total request length, header included.
    pub len: u32,
    /// Request type.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// Inode the request is about.
    pub nodeid: u64,
    /// Caller's fsuid in the guest.
    pub uid: u32,
    /// Caller's fsgid in the guest.
    pub gid: u32,
    /// Caller's pid in the guest.
    pub pid: u32,
    /// Length of request extensions at the end of the body, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Parses the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() < IN_HEADER_LEN {
            return Err(DecodeError::ShortHeader(buf.len()));
        }
        let mut r = Reader::new(buf, 0);
        let err = |_| DecodeError::ShortHeader(buf.len());
        Ok(InHeader {
            len: r.u32().map_err(err)?,
            opcode: r.u32().map_err(err)?,
            unique: r.u64().map_err(err)?,
            nodeid: r.u64().map_err(err)?,
            uid: r.u32().map_err(err)?,
            gid: r.u32().map_err(err)?,
            pid: r.u32().map_err(err)?,
            total_extlen: r.u16().map_err(err)?,
        })
    }
}

/// `struct fuse_setattr_in`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub atime: u64,
    pub mtime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One decoded request body. Names and data borrow from the request buffer.
#[derive(Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    },
    Destroy,
    Lookup {
        name: &'a CStr,
    },
    Forget {
        nlookup: u64,
    },
    /// (nodeid, nlookup) pairs.
    BatchForget {
        forgets: Vec<(u64, u64)>,
    },
    Getattr {
        flags: u32,
        fh: u64,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a CStr,
        target: &'a CStr,
    },
    Mknod {
        name: &'a CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a CStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a CStr,
    },
    Rmdir {
        name: &'a CStr,
    },
    /// RENAME and RENAME2 (flags 0 for RENAME).
    Rename {
        newdir: u64,
        flags: u32,
        oldname: &'a CStr,
        newname: &'a CStr,
    },
    Link {
        oldnodeid: u64,
        newname: &'a CStr,
    },
    Open {
        flags: u32,
    },
    Opendir {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    /// READDIR and READDIRPLUS.
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    /// RELEASE and RELEASEDIR.
    Release {
        fh: u64,
        dir: bool,
    },
    Flush {
        fh: u64,
    },
    /// FSYNC and FSYNCDIR.
    Fsync {
        fh: u64,
        flags: u32,
        dir: bool,
    },
    Setxattr {
        name: &'a CStr,
        value: &'a [u8],
        flags: u32,
    },
    Getxattr {
        name: &'a CStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a CStr,
    },
    Access {
        mask: u32,
    },
    Create {
        name: &'a CStr,
        flags: u32,
        mode: u32,
        umask: u32,
    },
    Interrupt {
        unique: u64,
    },
    Lseek {
        fh: u64,
        offset: u64,
        whence: u32,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    },
    /// Anything else; answered with ENOSYS.
    Unsupported(u32),
}

impl Op<'_> {
    /// Whether the request changes the filesystem (refused with EROFS on a read-only share).
    /// OPEN and CREATE are judged by their flags elsewhere.
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Op::Setattr(_)
                | Op::Symlink { .. }
                | Op::Mknod { .. }
                | Op::Mkdir { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
                | Op::Link { .. }
                | Op::Write { .. }
                | Op::Setxattr { .. }
                | Op::Removexattr { .. }
                | Op::Create { .. }
                | Op::Fallocate { .. }
        )
    }
}

/// Cursor over a request body.
struct Reader<'a> {
    buf: &'a [u8],
    opcode: u32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], opcode: u32) -> Self {
        Reader { buf, opcode }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                opcode: self.opcode,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.take(n).map(drop)
    }

    /// A NUL-terminated string, terminator consumed.
    fn cstr(&mut self) -> Result<&'a CStr, DecodeError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::NoNul {
                opcode: self.opcode,
            })?;
        let s = self.take(nul + 1)?;
        // Cannot fail: `s` ends with its only NUL.
        Ok(CStr::from_bytes_with_nul(s).expect("one trailing NUL"))
    }

    /// A directory entry name: one path component that stays inside its directory.
    fn name(&mut self) -> Result<&'a CStr, DecodeError> {
        let s = self.cstr()?;
        let b = s.to_bytes();
        if b.is_empty() || b.len() > NAME_MAX || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(DecodeError::BadName {
                opcode: self.opcode,
                name: String::from_utf8_lossy(b).into_owned(),
            });
        }
        Ok(s)
    }

    /// An xattr name: non-empty and at most NAME_MAX bytes; any other byte is allowed.
    fn xattr_name(&mut self) -> Result<&'a CStr, DecodeError> {
        let s = self.cstr()?;
        let b = s.to_bytes();
        if b.is_empty() || b.len() > NAME_MAX {
            return Err(DecodeError::BadName {
                opcode: self.opcode,
                name: String::from_utf8_lossy(b).into_owned(),
            });
        }
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                opcode: self.opcode,
                extra: self.buf.len(),
            })
        }
    }
}

/// Splits a whole request into its header and body, checking the header's length field.
pub fn split_request(buf: &[u8]) -> Result<(InHeader, &[u8]), DecodeError> {
    let h = InHeader::parse(buf)?;
    if h.len as usize != buf.len() {
        return Err(DecodeError::LengthMismatch {
            header: h.len,
            actual: buf.len(),
        });
    }
    let body = &buf[IN_HEADER_LEN..];
    // Request extensions (security contexts, supplementary groups) trail the body; they are
    // only sent when negotiated, which we never do, but they must not be taken for arguments.
    let ext = usize::from(h.total_extlen) * 8;
    if ext > body.len() {
        return Err(DecodeError::Truncated { opcode: h.opcode });
    }
    Ok((h, &body[..body.len() - ext]))
}

/// Decodes the body of a request with opcode `op`.
pub fn decode_op(op: u32, body: &[u8]) -> Result<Op<'_>, DecodeError> {
    let mut r = Reader::new(body, op);
    let decoded = match op {
        opcode::INIT => {
            let major = r.u32()?;
            let minor = r.u32()?;
            let max_readahead = r.u32()?;
            let flags = r.u32()?;
            // fuse_init_in grew over time (flags2 and padding since 7.36); the rest is ignored.
            r.rest();
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            }
        }
        opcode::DESTROY => Op::Destroy,
        opcode::LOOKUP => Op::Lookup { name: r.name()? },
        opcode::FORGET => Op::Forget { nlookup: r.u64()? },
        opcode::BATCH_FORGET => {
            let count = r.u32()? as usize;
            r.skip(4)?;
            let rest = r.rest();
            if Some(rest.len()) != count.checked_mul(16) {
                return Err(DecodeError::SizeMismatch {
                    opcode: op,
                    size: count as u64,
                    actual: rest.len(),
                });
            }
            let forgets = rest
                .chunks_exact(16)
                .map(|c| {
                    (
                        u64::from_le_bytes(c[..8].try_into().unwrap()),
                        u64::from_le_bytes(c[8..].try_into().unwrap()),
                    )
                })
                .collect();
            Op::BatchForget { forgets }
        }
        opcode::GETATTR => {
            let flags = r.u32()?;
            r.skip(4)?;
            Op::Getattr {
                flags,
                fh: r.u64()?,
            }
        }
        opcode::SETATTR => {
            let valid = r.u32()?;
            r.skip(4)?;
            let fh = r.u64()?;
            let size = r.u64()?;
            let _lock_owner = r.u64()?;
            let atime = r.u64()?;
            let mtime = r.u64()?;
            let _ctime = r.u64()?;
            let atimensec = r.u32()?;
            let mtimensec = r.u32()?;
            let _ctimensec = r.u32()?;
            let mode = r.u32()?;
            r.skip(4)?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            r.skip(4)?;
            Op::Setattr(SetattrIn {
                valid,
                fh,
                size,
                atime,
                mtime,
                atimensec,
                mtimensec,
                mode,
                uid,
                gid,
            })
        }
        opcode::READLINK => Op::Readlink,
        opcode::SYMLINK => {
            let name = r.name()?;
            let target = r.cstr()?;
            if target.to_bytes().is_empty() || target.to_bytes().len() >= PATH_MAX {
                return Err(DecodeError::BadName {
                    opcode: op,
                    name: String::from_utf8_lossy(target.to_bytes()).into_owned(),
                });
            }
            Op::Symlink { name, target }
        }
        opcode::MKNOD => {
            let mode = r.u32()?;
            let rdev = r.u32()?;
            let umask = r.u32()?;
            r.skip(4)?;
            Op::Mknod {
                name: r.name()?,
                mode,
                rdev,
                umask,
            }
        }
        opcode::MKDIR => {
            let mode = r.u32()?;
            let umask = r.u32()?;
            Op::Mkdir {
                name: r.name()?,
                mode,
                umask,
            }
        }
        opcode::UNLINK => Op::Unlink { name: r.name()? },
        opcode::RMDIR => Op::Rmdir { name: r.name()? },
        opcode::RENAME | opcode::RENAME2 => {
            let newdir = r.u64()?;
            let flags = if op == opcode::RENAME2 {
                let f = r.u32()?;
                r.skip(4)?;
                f
            } else {
                0
            };
            Op::Rename {
                newdir,
                flags,
                oldname: r.name()?,
                newname: r.name()?,
            }
        }
        opcode::LINK => Op::Link {
            oldnodeid: r.u64()?,
            newname: r.name()?,
        },
        opcode::OPEN | opcode::OPENDIR => {
            let flags = r.u32()?;
            let _open_flags = r.u32()?;
            if op == opcode::OPEN {
                Op::Open { flags }
            } else {
                Op::Opendir { flags }
            }
        }
        opcode::READ | opcode::READDIR | opcode::READDIRPLUS => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let size = r.u32()?;
            r.skip(4 + 8 + 4 + 4)?; // read_flags, lock_owner, flags, padding
            if op == opcode::READ {
                Op::Read { fh, offset, size }
            } else {
                Op::Readdir {
                    fh,
                    offset,
                    size,
                    plus: op == opcode::READDIRPLUS,
                }
            }
        }
        opcode::WRITE => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let size = r.u32()?;
            let write_flags = r.u32()?;
            r.skip(8 + 4 + 4)?; // lock_owner, flags, padding
            let data = r.rest();
            if data.len() != size as usize {
                return Err(DecodeError::SizeMismatch {
                    opcode: op,
                    size: size.into(),
                    actual: data.len(),
                });
            }
            Op::Write {
                fh,
                offset,
                write_flags,
                data,
            }
        }
        opcode::STATFS => Op::Statfs,
        opcode::RELEASE | opcode::RELEASEDIR => {
            let fh = r.u64()?;
            r.skip(4 + 4 + 8)?; // flags, release_flags, lock_owner
            Op::Release {
                fh,
                dir: op == opcode::RELEASEDIR,
            }
        }
        opcode::FLUSH => {
            let fh = r.u64()?;
            r.skip(4 + 4 + 8)?; // unused, padding, lock_owner
            Op::Flush { fh }
        }
        opcode::FSYNC | opcode::FSYNCDIR => {
            let fh = r.u64()?;
            let flags = r.u32()?;
            r.skip(4)?;
            Op::Fsync {
                fh,
                flags,
                dir: op == opcode::FSYNCDIR,
            }
        }
        opcode::SETXATTR => {
            // The 8-byte compat layout: FUSE_SETXATTR_EXT is never negotiated.
            let size = r.u32()?;
            let flags = r.u32()?;
            let name = r.xattr_name()?;
            let value = r.rest();
            if value.len() != size as usize || value.len() > XATTR_SIZE_MAX {
                return Err(DecodeError::SizeMismatch {
                    opcode: op,
                    size: size.into(),
                    actual: value.len(),
                });
            }
            Op::Setxattr { name, value, flags }
        }
        opcode::GETXATTR => {
            let size = r.u32()?;
            r.skip(4)?;
            Op::Getxattr {
                name: r.xattr_name()?,
                size,
            }
        }
        opcode::LISTXATTR => {
            let size = r.u32()?;
            r.skip(4)?;
            Op::Listxattr { size }
        }
        opcode::REMOVEXATTR => Op::Removexattr {
            name: r.xattr_name()?,
        },
        opcode::ACCESS => {
            let mask = r.u32()?;
            r.skip(4)?;
            Op::Access { mask }
        }
        opcode::CREATE => {
            let flags = r.u32()?;
            let mode = r.u32()?;
            let umask = r.u32()?;
            let _open_flags = r.u32()?;
            Op::Create {
                name: r.name()?,
                flags,
                mode,
                umask,
            }
        }
        opcode::INTERRUPT => Op::Interrupt { unique: r.u64()? },
        opcode::LSEEK => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let whence = r.u32()?;
            r.skip(4)?;
            Op::Lseek { fh, offset, whence }
        }
        opcode::FALLOCATE => {
            let fh = r.u64()?;
            let offset = r.u64()?;
            let length = r.u64()?;
            let mode = r.u32()?;
            r.skip(4)?;
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            }
        }
        other => {
            r.rest();
            Op::Unsupported(other)
        }
    };
    r.finish()?;
    Ok(decoded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::fs::abi::opcode as o;

    /// Builds a whole request: header (len filled in) + body.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(IN_HEADER_LEN + body.len());
        v.extend_from_slice(&((IN_HEADER_LEN + body.len()) as u32).to_le_bytes());
        v.extend_from_slice(&opcode.to_le_bytes());
        v.extend_from_slice(&unique.to_le_bytes());
        v.extend_from_slice(&nodeid.to_le_bytes());
        v.extend_from_slice(&1000u32.to_le_bytes()); // uid
        v.extend_from_slice(&1001u32.to_le_bytes()); // gid
        v.extend_from_slice(&42u32.to_le_bytes()); // pid
        v.extend_from_slice(&[0; 4]); // total_extlen, padding
        v.extend_from_slice(body);
        v
    }

    /// Little-endian body builder.
    #[derive(Default)]
    pub struct B(pub Vec<u8>);
    impl B {
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// A NUL-terminated string.
        pub fn s(self, v: &str) -> Self {
            self.bytes(v.as_bytes()).bytes(&[0])
        }
    }

    fn dec(op: u32, body: B) -> Result<Op<'static>, DecodeError> {
        let leaked: &'static [u8] = Box::leak(body.0.into_boxed_slice());
        decode_op(op, leaked)
    }

    fn c(s: &str) -> &'static CStr {
        let v = std::ffi::CString::new(s).unwrap();
        Box::leak(v.into_boxed_c_str())
    }

    #[test]
    fn header_parsing_and_length_checks() {
        let req = request(o::GETATTR, 77, 5, &B::default().u32(1).u32(0).u64(9).0);
        let (h, body) = split_request(&req).unwrap();
        assert_eq!(
            h,
            InHeader {
                len: 56,
                opcode: o::GETATTR,
                unique: 77,
                nodeid: 5,
                uid: 1000,
                gid: 1001,
                pid: 42,
                total_extlen: 0
            }
        );
        assert_eq!(body.len(), 16);

        assert_eq!(split_request(&req[..39]), Err(DecodeError::ShortHeader(39)));
        assert_eq!(split_request(&[]), Err(DecodeError::ShortHeader(0)));
        // Header claims more than was provided, and less.
        assert_eq!(
            split_request(&req[..50]),
            Err(DecodeError::LengthMismatch {
                header: 56,
                actual: 50
            })
        );
        let mut longer = req.clone();
        longer.push(0);
        assert!(matches!(
            split_request(&longer),
            Err(DecodeError::LengthMismatch { .. })
        ));
        // Extensions are cut off the body; too many of them is an error.
        let mut ext = req.clone();
        ext[36] = 1;
        assert_eq!(split_request(&ext).unwrap().1.len(), 8);
        ext[36] = 3;
        assert!(matches!(
            split_request(&ext),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn init() {
        let body = B::default().u32(7).u32(38).u32(0x20000).u32(0xabcd);
        assert_eq!(
            dec(o::INIT, body).unwrap(),
            Op::Init {
                major: 7,
                minor: 38,
                max_readahead: 0x20000,
                flags: 0xabcd
            }
        );
        // Newer kernels send the 64-byte form.
        let body = B::default().u32(7).u32(38).u32(1).u32(2).bytes(&[0; 48]);
        assert!(matches!(dec(o::INIT, body), Ok(Op::Init { minor: 38, .. })));
        let body = B::default().u32(7).u32(38).u32(1);
        assert_eq!(
            dec(o::INIT, body),
            Err(DecodeError::Truncated { opcode: o::INIT })
        );
    }

    #[test]
    fn no_argument_ops() {
        assert_eq!(dec(o::DESTROY, B::default()), Ok(Op::Destroy));
        assert_eq!(dec(o::READLINK, B::default()), Ok(Op::Readlink));
        assert_eq!(dec(o::STATFS, B::default()), Ok(Op::Statfs));
        assert_eq!(
            dec(o::STATFS, B::default().u32(0)),
            Err(DecodeError::Trailing {
                opcode: o::STATFS,
                extra: 4
            })
        );
    }

    #[test]
    fn lookup_and_names() {
        assert_eq!(
            dec(o::LOOKUP, B::default().s("etc")),
            Ok(Op::Lookup { name: c("etc") })
        );
        for bad in ["", ".", "..", "a/b", "/etc", "../x"] {
            assert!(
                matches!(
                    dec(o::LOOKUP, B::default().s(bad)),
                    Err(DecodeError::BadName { .. })
                ),
                "{bad:?}"
            );
        }
        let long = "x".repeat(NAME_MAX + 1);
        assert!(matches!(
            dec(o::LOOKUP, B::default().s(&long)),
            Err(DecodeError::BadName { .. })
        ));
        assert!(dec(o::LOOKUP, B::default().s(&long[1..])).is_ok());
        // No terminator, and bytes after the terminator.
        assert_eq!(
            dec(o::LOOKUP, B::default().bytes(b"etc")),
            Err(DecodeError::NoNul { opcode: o::LOOKUP })
        );
        assert_eq!(
            dec(o::LOOKUP, B::default()),
            Err(DecodeError::NoNul { opcode: o::LOOKUP })
        );
        assert_eq!(
            dec(o::LOOKUP, B::default().s("etc").bytes(b"x")),
            Err(DecodeError::Trailing {
                opcode: o::LOOKUP,
                extra: 1
            })
        );
        // Non-UTF-8 names are fine: Linux names are bytes.
        assert!(dec(o::LOOKUP, B::default().bytes(&[0xff, 0xfe, 0])).is_ok());
    }

    #[test]
    fn forget_and_batch_forget() {
        assert_eq!(
            dec(o::FORGET, B::default().u64(3)),
            Ok(Op::Forget { nlookup: 3 })
        );
        assert!(matches!(
            dec(o::FORGET, B::default().u32(3)),
            Err(DecodeError::Truncated { .. })
        ));
        let body = B::default().u32(2).u32(0).u64(5).u64(1).u64(6).u64(2);
        assert_eq!(
            dec(o::BATCH_FORGET, body),
            Ok(Op::BatchForget {
                forgets: vec![(5, 1), (6, 2)]
            })
        );
        // Count larger than the payload, and a huge count that would overflow.
        let body = B::default().u32(3).u32(0).u64(5).u64(1);
        assert!(matches!(
            dec(o::BATCH_FORGET, body),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let body = B::default().u32(u32::MAX).u32(0);
        assert!(matches!(
            dec(o::BATCH_FORGET, body),
            Err(DecodeError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn getattr_and_setattr() {
        assert_eq!(
            dec(o::GETATTR, B::default().u32(1).u32(0).u64(8)),
            Ok(Op::Getattr { flags: 1, fh: 8 })
        );
        assert!(dec(o::GETATTR, B::default().u32(1).u32(0)).is_err());
        let body = B::default()
            .u32(0x3f)
            .u32(0)
            .u64(9) // fh
            .u64(100) // size
            .u64(0) // lock_owner
            .u64(11) // atime
            .u64(12) // mtime
            .u64(13) // ctime
            .u32(1)
            .u32(2)
            .u32(3)
            .u32(0o644)
            .u32(0)
            .u32(5) // uid
            .u32(6) // gid
            .u32(0);
        assert_eq!(body.0.len(), 88);
        assert_eq!(
            dec(o::SETATTR, body),
            Ok(Op::Setattr(SetattrIn {
                valid: 0x3f,
                fh: 9,
                size: 100,
                atime: 11,
                mtime: 12,
                atimensec: 1,
                mtimensec: 2,
                mode: 0o644,
                uid: 5,
                gid: 6
            }))
        );
        assert!(dec(o::SETATTR, B::default().bytes(&[0; 87])).is_err());
    }

    #[test]
    fn symlink_mknod_mkdir() {
        assert_eq!(
            dec(o::SYMLINK, B::default().s("l").s("../../etc")),
            Ok(Op::Symlink {
                name: c("l"),
                target: c("../../etc")
            })
        );
        assert!(dec(o::SYMLINK, B::default().s("l")).is_err());
        assert!(dec(o::SYMLINK, B::default().s("l").s("")).is_err());
        assert!(dec(o::SYMLINK, B::default().s("a/b").s("x")).is_err());
        assert_eq!(
            dec(
                o::MKNOD,
                B::default().u32(0o10644).u32(0x103).u32(0o22).u32(0).s("p")
            ),
            Ok(Op::Mknod {
                name: c("p"),
                mode: 0o10644,
                rdev: 0x103,
                umask: 0o22
            })
        );
        assert!(dec(o::MKNOD, B::default().u32(0).u32(0).s("p")).is_err());
        assert_eq!(
            dec(o::MKDIR, B::default().u32(0o755).u32(0o22).s("d")),
            Ok(Op::Mkdir {
                name: c("d"),
                mode: 0o755,
                umask: 0o22
            })
        );
        assert!(dec(o::MKDIR, B::default().u32(0o755).u32(0).s("..")).is_err());
    }

    #[test]
    fn unlink_rmdir_rename_link() {
        assert_eq!(
            dec(o::UNLINK, B::default().s("f")),
            Ok(Op::Unlink { name: c("f") })
        );
        assert_eq!(
            dec(o::RMDIR, B::default().s("d")),
            Ok(Op::Rmdir { name: c("d") })
        );
        assert!(dec(o::RMDIR, B::default().s("d/e")).is_err());
        assert_eq!(
            dec(o::RENAME, B::default().u64(4).s("a").s("b")),
            Ok(Op::Rename {
                newdir: 4,
                flags: 0,
                oldname: c("a"),
                newname: c("b")
            })
        );
        assert_eq!(
            dec(o::RENAME2, B::default().u64(4).u32(1).u32(0).s("a").s("b")),
            Ok(Op::Rename {
                newdir: 4,
                flags: 1,
                oldname: c("a"),
                newname: c("b")
            })
        );
        assert!(dec(o::RENAME, B::default().u64(4).s("a")).is_err());
        assert!(dec(o::RENAME, B::default().u64(4).s("a").s("../b")).is_err());
        assert_eq!(
            dec(o::LINK, B::default().u64(7).s("h")),
            Ok(Op::Link {
                oldnodeid: 7,
                newname: c("h")
            })
        );
        assert!(dec(o::LINK, B::default().u64(7).s("/h")).is_err());
    }

    #[test]
    fn open_read_write_release() {
        assert_eq!(
            dec(o::OPEN, B::default().u32(2).u32(0)),
            Ok(Op::Open { flags: 2 })
        );
        assert_eq!(
            dec(o::OPENDIR, B::default().u32(0).u32(0)),
            Ok(Op::Opendir { flags: 0 })
        );
        let read = || {
            B::default()
                .u64(3)
                .u64(4096)
                .u32(512)
                .u32(0)
                .u64(0)
                .u32(0)
                .u32(0)
        };
        assert_eq!(
            dec(o::READ, read()),
            Ok(Op::Read {
                fh: 3,
                offset: 4096,
                size: 512
            })
        );
        assert_eq!(
            dec(o::READDIRPLUS, read()),
            Ok(Op::Readdir {
                fh: 3,
                offset: 4096,
                size: 512,
                plus: true
            })
        );
        assert!(matches!(
            dec(o::READDIR, read()),
            Ok(Op::Readdir { plus: false, .. })
        ));
        assert!(dec(o::READ, B::default().u64(3).u64(0).u32(5)).is_err());

        let write = |size: u32, data: &[u8]| {
            B::default()
                .u64(3)
                .u64(10)
                .u32(size)
                .u32(1)
                .u64(0)
                .u32(0)
                .u32(0)
                .bytes(data)
        };
        assert_eq!(
            dec(o::WRITE, write(3, b"abc")),
            Ok(Op::Write {
                fh: 3,
                offset: 10,
                write_flags: 1,
                data: b"abc"
            })
        );
        assert!(matches!(
            dec(o::WRITE, write(4, b"abc")),
            Err(DecodeError::SizeMismatch { .. })
        ));
        assert!(matches!(
            dec(o::WRITE, write(2, b"abc")),
            Err(DecodeError::SizeMismatch { .. })
        ));

        let rel = B::default().u64(3).u32(0).u32(0).u64(0);
        assert_eq!(dec(o::RELEASE, rel), Ok(Op::Release { fh: 3, dir: false }));
        let rel = B::default().u64(3).u32(0).u32(0).u64(0);
        assert_eq!(
            dec(o::RELEASEDIR, rel),
            Ok(Op::Release { fh: 3, dir: true })
        );
        assert_eq!(
            dec(o::FLUSH, B::default().u64(3).u32(0).u32(0).u64(0)),
            Ok(Op::Flush { fh: 3 })
        );
        assert_eq!(
            dec(o::FSYNC, B::default().u64(3).u32(1).u32(0)),
            Ok(Op::Fsync {
                fh: 3,
                flags: 1,
                dir: false
            })
        );
        assert_eq!(
            dec(o::FSYNCDIR, B::default().u64(3).u32(0).u32(0)),
            Ok(Op::Fsync {
                fh: 3,
                flags: 0,
                dir: true
            })
        );
    }

    #[test]
    fn xattrs() {
        assert_eq!(
            dec(
                o::SETXATTR,
                B::default().u32(3).u32(1).s("user.k").bytes(b"v\0x")
            ),
            Ok(Op::Setxattr {
                name: c("user.k"),
                value: b"v\0x",
                flags: 1
            })
        );
        assert!(matches!(
            dec(
                o::SETXATTR,
                B::default().u32(4).u32(0).s("user.k").bytes(b"v")
            ),
            Err(DecodeError::SizeMismatch { .. })
        ));
        assert!(dec(o::SETXATTR, B::default().u32(0).u32(0).s("")).is_err());
        assert_eq!(
            dec(o::GETXATTR, B::default().u32(64).u32(0).s("user.k")),
            Ok(Op::Getxattr {
                name: c("user.k"),
                size: 64
            })
        );
        assert!(dec(o::GETXATTR, B::default().u32(64).u32(0).bytes(b"user.k")).is_err());
        assert_eq!(
            dec(o::LISTXATTR, B::default().u32(0).u32(0)),
            Ok(Op::Listxattr { size: 0 })
        );
        assert_eq!(
            dec(o::REMOVEXATTR, B::default().s("user.k")),
            Ok(Op::Removexattr { name: c("user.k") })
        );
    }

    #[test]
    fn access_create_interrupt_lseek_fallocate() {
        assert_eq!(
            dec(o::ACCESS, B::default().u32(4).u32(0)),
            Ok(Op::Access { mask: 4 })
        );
        assert_eq!(
            dec(
                o::CREATE,
                B::default()
                    .u32(0o1101)
                    .u32(0o100644)
                    .u32(0o22)
                    .u32(0)
                    .s("n")
            ),
            Ok(Op::Create {
                name: c("n"),
                flags: 0o1101,
                mode: 0o100644,
                umask: 0o22
            })
        );
        assert!(dec(o::CREATE, B::default().u32(0).u32(0).u32(0).u32(0).s(".")).is_err());
        assert_eq!(
            dec(o::INTERRUPT, B::default().u64(99)),
            Ok(Op::Interrupt { unique: 99 })
        );
        assert_eq!(
            dec(o::LSEEK, B::default().u64(3).u64(100).u32(3).u32(0)),
            Ok(Op::Lseek {
                fh: 3,
                offset: 100,
                whence: 3
            })
        );
        assert_eq!(
            dec(
                o::FALLOCATE,
                B::default().u64(3).u64(1).u64(2).u32(1).u32(0)
            ),
            Ok(Op::Fallocate {
                fh: 3,
                offset: 1,
                length: 2,
                mode: 1
            })
        );
        assert!(dec(o::FALLOCATE, B::default().u64(3).u64(1).u64(2)).is_err());
    }

    #[test]
    fn unsupported_opcodes_decode_to_enosys_candidates() {
        for op in [
            o::GETLK,
            o::SETLK,
            o::IOCTL,
            o::BMAP,
            o::SETUPMAPPING,
            7,
            9999,
        ] {
            assert_eq!(
                dec(op, B::default().bytes(b"whatever")),
                Ok(Op::Unsupported(op))
            );
        }
    }

    #[test]
    fn mutating_classification() {
        assert!(Op::Unlink { name: c("x") }.is_mutating());
        assert!(Op::Write {
            fh: 0,
            offset: 0,
            write_flags: 0,
            data: b""
        }
        .is_mutating());
        assert!(!Op::Lookup { name: c("x") }.is_mutating());
        assert!(!Op::Open { flags: 2 }.is_mutating());
        assert!(!Op::Statfs.is_mutating());
    }
}

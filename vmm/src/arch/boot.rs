//! The Linux x86 boot protocol: kernel (ELF vmlinux or bzImage), command line, initrd and
//! the zero page with its e820 map.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel image {path}: {source}")]
    KernelOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{path} is not a kernel image: neither an x86_64 ELF vmlinux nor a bzImage")]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// An ELF file that is not linked like a kernel.
    #[error("{path} is an ELF file but not a bootable kernel: it is not linked to load at or above 1 MiB")]
    ElfNotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("{path} is a bzImage without a 64-bit entry point (XLF_KERNEL_64 unset)")]
    Not64Bit {
        /// The file.
        path: PathBuf,
    },
    /// Kernel larger than guest memory, or loaded outside it.
    #[error("kernel image {path} ({size} bytes) does not fit in guest memory ({mem_mib} MiB)")]
    KernelTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Guest memory.
        mem_mib: u64,
    },
    /// The loader refused the image for another reason.
    #[error("cannot load kernel image {path}: {reason}")]
    KernelLoad {
        /// The file.
        path: PathBuf,
        /// The loader's words.
        reason: String,
    },
    /// The initrd cannot be opened or read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No room for the initrd between the kernel and the end of low memory.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory: {available} bytes free above the kernel")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room left.
        available: u64,
    },
    /// Command line too long or malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure failed.
    #[error("cannot write {0} into guest memory")]
    Memory(&'static str),
}

/// Where and how the kernel was loaded.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image in guest memory.
    pub end: u64,
    /// The bzImage's setup header, passed back to the kernel in the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// End of RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;

/// Loads an ELF vmlinux or bzImage from `path`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let open_err = |source| BootError::KernelOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(open_err(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let too_large = || BootError::KernelTooLarge {
        path: path.to_owned(),
        size,
        mem_mib: mem_bytes >> 20,
    };
    if size > mem_bytes {
        return Err(too_large());
    }
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            return Ok(LoadedKernel {
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        // Not ELF (or too short to be): maybe a bzImage.
        Err(loader::Error::Elf(
            loader::elf::Error::InvalidElfMagicNumber | loader::elf::Error::ReadElfHeader,
        )) => {}
        Err(loader::Error::Elf(loader::elf::Error::ReadKernelImage))
        | Err(loader::Error::MemoryOverflow) => return Err(too_large()),
        // An ELF program (e.g. a PIE executable) rather than a kernel linked to load at or
        // above 1 MiB.
        Err(loader::Error::Elf(
            loader::elf::Error::InvalidEntryAddress
            | loader::elf::Error::InvalidProgramHeaderAddress,
        )) => {
            return Err(BootError::ElfNotAKernel {
                path: path.to_owned(),
            })
        }
        Err(e) => {
            return Err(BootError::KernelLoad {
                path: path.to_owned(),
                reason: format!("{e:?}"),
            })
        }
    }
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let hdr = r.setup_header.expect("bzImage loader returns its header");
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::Not64Bit {
                    path: path.to_owned(),
                });
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                end: r.kernel_end,
                setup_header: Some(hdr),
            })
        }
        Err(loader::Error::Bzimage(loader::bzimage::Error::InvalidBzImage))
        | Err(loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageHeader))
        | Err(loader::Error::Bzimage(loader::bzimage::Error::SeekBzImageHeader))
        | Err(loader::Error::Bzimage(loader::bzimage::Error::Underflow)) => {
            Err(BootError::NotAKernel {
                path: path.to_owned(),
            })
        }
        Err(loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageCompressedKernel))
        | Err(loader::Error::MemoryOverflow) => Err(too_large()),
        Err(e) => Err(BootError::KernelLoad {
            path: path.to_owned(),
            reason: format!("{e:?}"),
        }),
    }
}

/// Loads the initrd at the top of low memory, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<LoadedInitrd, BootError> {
    let open_err = |source| BootError::InitrdOpen {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let top = low_ram_end(mem_bytes);
    let available = top.saturating_sub(kernel_end);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        available,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| open_err(std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitrd { addr, size })
}

/// Parses and writes the command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<u32, BootError> {
    let c = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| BootError::Cmdline(format!("{e} (at most {} bytes)", CMDLINE_MAX_SIZE - 1)))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|_| BootError::Memory("the command line"))?;
    Ok(cmdline.len() as u32)
}

// SAFETY: boot_params is a plain C struct of integers and arrays of integers: every byte
// pattern is a valid value, and it has no references.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
unsafe impl ByteValued for ZeroPage {}

const E820_RAM: u32 = 1;

/// The e820 RAM ranges for `mem_bytes` of memory.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for (start, len) in ram_regions(mem_bytes) {
        // Low memory below 1 MiB is described above; the rest of each region is usable.
        let s = start.max(HIMEM_START);
        let end = start + len;
        if end > s {
            map.push((s, end - s));
        }
    }
    map
}

/// Fills and writes the zero page.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &LoadedKernel,
    cmdline_len: u32,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut params = ZeroPage::default();
    let p = &mut params.0;
    if let Some(hdr) = kernel.setup_header {
        p.hdr = hdr;
    }
    p.hdr.type_of_loader = 0xff; // "undefined" boot loader
    p.hdr.boot_flag = 0xaa55;
    p.hdr.header = 0x5372_6448; // "HdrS"
    p.hdr.kernel_alignment = 0x0100_0000;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len;
    if let Some(i) = initrd {
        p.hdr.ramdisk_image = i.addr as u32;
        p.hdr.ramdisk_size = i.size as u32;
    }
    let map = e820_map(mem_bytes);
    for (slot, (addr, size)) in p.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    p.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|_| BootError::Memory("the zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MEM: u64 = 64 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A minimal x86_64 ELF executable with one PT_LOAD segment at `paddr`.
    fn elf(paddr: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56];
        v[0..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // 64-bit
        v[5] = 1; // little endian
        v[6] = 1;
        v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
        v[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        v[52..54].copy_from_slice(&64u16.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut v[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(payload.len() as u64 + 0x1000).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn loads_elf_at_its_physical_address() {
        let m = mem();
        let f = tmp(&elf(0x20_0000, b"\xf4\xeb\xfd"));
        let k = load_kernel(&m, MEM, f.path()).unwrap();
        assert_eq!(k.entry, 0x20_0000);
        assert_eq!(k.end, 0x20_0000 + 3 + 0x1000);
        let mut b = [0u8; 3];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&b, b"\xf4\xeb\xfd");
    }

    #[test]
    fn elf_outside_memory_is_too_large() {
        let f = tmp(&elf(MEM + 0x1000, b"abc"));
        let e = load_kernel(&mem(), MEM, f.path()).unwrap_err();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
    }

    #[test]
    fn random_file_is_not_a_kernel() {
        let f = tmp(&[0x55u8; 8192]);
        let e = load_kernel(&mem(), MEM, f.path()).unwrap_err();
        assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("not a kernel image"));
        let empty = tmp(b"");
        assert!(matches!(
            load_kernel(&mem(), MEM, empty.path()).unwrap_err(),
            BootError::NotAKernel { .. }
        ));
    }

    #[test]
    fn elf_program_is_not_a_kernel() {
        let f = tmp(&elf(0x1000, b"abc"));
        let e = load_kernel(&mem(), MEM, f.path()).unwrap_err();
        assert!(matches!(e, BootError::ElfNotAKernel { .. }), "{e}");
    }

    #[test]
    fn missing_and_directory_kernels() {
        let e = load_kernel(&mem(), MEM, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
        let e = load_kernel(&mem(), MEM, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn oversized_kernel_file() {
        let f = tmp(&vec![0u8; (MEM + 1) as usize]);
        let e = load_kernel(&mem(), MEM, f.path()).unwrap_err();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
    }

    #[test]
    fn bzimage_header_is_kept_and_entry_is_64bit() {
        // Setup: 1 sector + boot sector; header at 0x1f1.
        let mut img = vec![0u8; 2 * 512 + 4096];
        img[0x1f1] = 1; // setup_sects
        img[0x202..0x206].copy_from_slice(&0x5372_6448u32.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
        let f = tmp(&img);
        let k = load_kernel(&mem(), MEM, f.path()).unwrap();
        assert_eq!(k.entry, 0x10_0200);
        let xloadflags = k.setup_header.unwrap().xloadflags;
        assert_eq!(xloadflags, 1);
        // Without XLF_KERNEL_64 it is refused.
        img[0x236] = 0;
        let f = tmp(&img);
        assert!(matches!(
            load_kernel(&mem(), MEM, f.path()).unwrap_err(),
            BootError::Not64Bit { .. }
        ));
    }

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        let m = mem();
        let f = tmp(&[7u8; 5000]);
        let i = load_initrd(&m, MEM, 0x20_0000, f.path()).unwrap();
        assert_eq!(i.size, 5000);
        assert_eq!(i.addr % 4096, 0);
        assert!(i.addr + i.size <= MEM && i.addr >= MEM - 5000 - 4096);
        let b: u8 = m.read_obj(GuestAddress(i.addr + 4999)).unwrap();
        assert_eq!(b, 7);
    }

    #[test]
    fn initrd_that_does_not_fit() {
        let f = tmp(&vec![0u8; 4 << 20]);
        let e = load_initrd(&mem(), MEM, MEM - (1 << 20), f.path()).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooLarge { .. }), "{e}");
        let e = load_initrd(&mem(), MEM, 0, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, BootError::InitrdOpen { .. }));
    }

    #[test]
    fn cmdline_written_and_bounded() {
        let m = mem();
        let n = write_cmdline(&m, "console=ttyS0 probe=hello").unwrap();
        assert_eq!(n, 25);
        let mut b = [0u8; 26];
        m.read_slice(&mut b, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&b, b"console=ttyS0 probe=hello\0");
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_cmdline(&m, &long),
            Err(BootError::Cmdline(_))
        ));
    }

    #[test]
    fn e820_covers_ram_and_skips_holes() {
        assert_eq!(
            e820_map(64 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (64 << 20) - HIMEM_START)]
        );
        let big = e820_map(4 << 30);
        assert_eq!(big.len(), 3);
        assert_eq!(big[1], (HIMEM_START, MMIO_GAP_START - HIMEM_START));
        assert_eq!(big[2], (1 << 32, (4 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn zero_page_fields() {
        let m = mem();
        let k = LoadedKernel {
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let init = LoadedInitrd {
            addr: 0x300_0000,
            size: 1234,
        };
        write_zero_page(&m, MEM, &k, 42, Some(init)).unwrap();
        let zp = ZERO_PAGE_START;
        let rd = |off: u64| -> u32 { m.read_obj(GuestAddress(zp + off)).unwrap() };
        assert_eq!(rd(0x228), CMDLINE_START as u32, "cmd_line_ptr");
        assert_eq!(rd(0x238), 42, "cmdline_size");
        assert_eq!(rd(0x218), 0x300_0000, "ramdisk_image");
        assert_eq!(rd(0x21c), 1234, "ramdisk_size");
        assert_eq!(rd(0x202), 0x5372_6448, "HdrS");
        let n: u8 = m.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
        assert_eq!(n, 2);
        let addr1: u64 = m.read_obj(GuestAddress(zp + 0x2d0 + 20)).unwrap();
        assert_eq!(addr1, HIMEM_START);
    }
}

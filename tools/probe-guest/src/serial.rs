//! COM1 output (16550 THR), polled. Every access is a VM exit (~20 us from ring 3 on
//! PVM), so output is kept to a few short lines.

use crate::abi;
use crate::io::{inb, outb};
use crate::line::LineBuf;

const THR: u16 = abi::SERIAL_PORT_BASE;
const LSR: u16 = abi::SERIAL_PORT_BASE + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_DATA_READY: u8 = 1;
const RBR: u16 = abi::SERIAL_PORT_BASE;

/// Receive one byte, polling the line status register.
pub fn get() -> u8 {
    while inb(LSR) & LSR_DATA_READY == 0 {
        core::hint::spin_loop();
    }
    inb(RBR)
}

/// Send one byte once the transmitter holding register is empty.
pub fn put(b: u8) {
    while inb(LSR) & LSR_THR_EMPTY == 0 {
        core::hint::spin_loop();
    }
    outb(THR, b);
}

/// Send bytes as they are.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        put(b);
    }
}

/// Send a formatted line and a newline.
pub fn println<const N: usize>(line: &mut LineBuf<N>) {
    write(line.as_bytes());
    put(b'\n');
}

/// Send a fixed line and a newline.
pub fn println_str(s: &str) {
    write(s.as_bytes());
    put(b'\n');
}

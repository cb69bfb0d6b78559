//! virtio-fs request decoding and the passthrough server; input layout in
//! `devices_fuzz::fs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices_fuzz::fs::run(data);
});

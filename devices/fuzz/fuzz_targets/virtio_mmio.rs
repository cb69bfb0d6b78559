//! virtio-mmio register interface; input layout in `devices_fuzz::mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices_fuzz::mmio::run(data);
});

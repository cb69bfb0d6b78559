//! virtio-blk request parser and processing; input layout in `devices_fuzz::blk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices_fuzz::blk::run(data);
});

//! virtio-vsock packet path with real host sockets; input layout in `devices_fuzz::vsock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices_fuzz::vsock::run(data);
});

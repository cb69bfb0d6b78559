//! Builds the freestanding probe guest (tools/probe-guest, its own cargo workspace) and
//! hands its path to the capsa binary, which embeds it as the default guest.

use std::path::PathBuf;
use std::process::Command;

/// The probe is built for the host triple, as a freestanding program.
const PROBE_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let probe = manifest.join("../tools/probe-guest");
    for p in [
        "src",
        "Cargo.toml",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", probe.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../devices/src/abi.rs").display()
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("probe-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The probe has its own flags in tools/probe-guest/.cargo/config.toml, found from the
    // working directory; flags and wrappers meant for the host crates must not reach it.
    let status = Command::new(cargo)
        .current_dir(&probe)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            PROBE_TARGET,
            "--target-dir",
        ])
        .arg(&out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .status()
        .expect("running cargo for the probe guest");
    assert!(status.success(), "building tools/probe-guest failed");
    let elf = out.join(PROBE_TARGET).join("release/probe-guest");
    assert!(elf.exists(), "probe guest not found at {}", elf.display());
    println!("cargo:rustc-env=CAPSA_PROBE_GUEST={}", elf.display());
}

//! Code layout and relocations of release builds.
//!
//! The kernel maps a binary's code into a process 64 KiB at a time around
//! each page it touches ("fault-around"), so a few hundred functions
//! scattered over 7 MB of code keep almost all of it resident. Release
//! builds on x86_64 Linux, where rustc links with its bundled lld, hand the
//! linker `scripts/symbol-order.txt` (the functions a running gateway
//! executes, made by `scripts/symbol-order`): lld places them next to each
//! other, and the rest of the code stays on disk until something needs it.
//! A symbol the list names but the binary lacks (renamed, or the list is
//! stale) is skipped; the list only changes the layout, never the program.
//!
//! The same builds pack their relative relocations (`-z
//! pack-relative-relocs`, DT_RELR): a position-independent binary carries
//! one 24-byte record per pointer in its static data (about 1 MB here),
//! which the dynamic loader reads in full at every start; packed, they take
//! a few kilobytes. It needs glibc 2.36 (Debian 12, Raspberry Pi OS
//! Bookworm) at run time; the package's dependencies say so.
//!
//! Other targets (the Pi's cross builds link with GNU ld, which has no such
//! option), older compilers (lld is the default linker from Rust 1.90) and
//! builds with a linker of their own choice are left as they are.
//! `ESTATE_GATEWAY_NO_SYMBOL_ORDER=1` turns both off.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=ESTATE_GATEWAY_NO_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/symbol-order.txt");
    // Only where the linker is known to be lld (these options are lld's or
    // need a recent GNU ld).
    let lld = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("ESTATE_GATEWAY_NO_SYMBOL_ORDER").is_empty()
        // A linker chosen by flags or config may not be lld.
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        && var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && rustc_links_with_lld();
    if !lld {
        return;
    }
    let arg = |a: &str| println!("cargo:rustc-link-arg-bin=estate-gateway={a}");
    if order.is_file() {
        arg(&format!("-Wl,--symbol-ordering-file={}", order.display()));
        arg("-Wl,--no-warn-symbol-ordering");
    }
    arg("-Wl,-z,pack-relative-relocs");
}

/// rustc 1.90 and later link x86_64 Linux binaries with their own lld.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

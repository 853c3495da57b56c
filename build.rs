//! Build script: tells the integration tests whether this build can run their GPU legs (and
//! their tests that need root), so a test that cannot run is counted by cargo as ignored, with
//! the reason, and never as passed.

use std::path::Path;

/// Where the Vulkan loader looks for installable client drivers (ICDs) when no variable names one.
const ICD_FOLDERS: [&str; 4] = [
    "/usr/share/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
    "/usr/lib/x86_64-linux-gnu/vulkan/icd.d",
];

/// Where Debian and most distributions put the Vulkan loader itself.
const LOADER_FOLDERS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(foundry_gpu_legs_off)");
    println!("cargo::rustc-check-cfg=cfg(foundry_no_vulkan_driver)");
    println!("cargo::rustc-check-cfg=cfg(foundry_not_root)");
    println!("cargo::rustc-check-cfg=cfg(foundry_no_xdelta3)");
    // The VCDIFF tests run Debian's real xdelta3 (`.ci/run` installs it); installing it
    // changes /usr/bin, which re-runs this script.
    println!("cargo::rerun-if-changed=/usr/bin");
    if !Path::new("/usr/bin/xdelta3").exists() {
        println!("cargo::rustc-cfg=foundry_no_xdelta3");
    }
    // Tests that give files to another user, or run an attacker as one, need root: without
    // it cargo counts them as ignored, with the reason. (/proc/self is the builder's own.)
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        println!("cargo::rustc-cfg=foundry_not_root");
    }
    println!("cargo::rerun-if-changed=build.rs");
    for var in [
        "FOUNDRY_TEST_GPU",
        "VK_ICD_FILENAMES",
        "VK_DRIVER_FILES",
        "LD_LIBRARY_PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // A driver added to or removed from an existing folder is noticed; a first driver installed
    // after the build needs `touch build.rs` (a missing path would re-run this on every build).
    for folder in ICD_FOLDERS {
        if Path::new(folder).is_dir() {
            println!("cargo::rerun-if-changed={folder}");
        }
    }
    match std::env::var("FOUNDRY_TEST_GPU").as_deref() {
        Ok("off") => println!("cargo::rustc-cfg=foundry_gpu_legs_off"),
        // `require` runs the legs whatever this script finds: a missing driver then fails them.
        Ok("require") => {}
        _ if !vulkan_driver_present() => println!("cargo::rustc-cfg=foundry_no_vulkan_driver"),
        _ => {}
    }
}

/// A Vulkan loader and at least one driver manifest: what wgpu needs to find an adapter.
fn vulkan_driver_present() -> bool {
    let loader = LOADER_FOLDERS
        .iter()
        .any(|folder| Path::new(folder).join("libvulkan.so.1").exists());
    let named = ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    let manifest = ICD_FOLDERS.iter().any(|folder| {
        std::fs::read_dir(folder).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
    });
    loader && (named || manifest)
}

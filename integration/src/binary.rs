//! Where the binaries under test are.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the workspace")
        .to_path_buf()
}

/// A nats-server of version 2.10 or newer: `NATS_SERVER_BIN`, the workspace's
/// `.tools/bin/nats-server`, or `PATH` (the binary's own lookup,
/// [`jetflow_runtime::local_nats::find_binary_with`]). Panics with what to do otherwise.
pub fn nats_server_bin() -> PathBuf {
    let tools = workspace_root().join(".tools/bin/nats-server");
    jetflow_runtime::local_nats::find_binary_with(&[tools])
        .unwrap_or_else(|e| panic!("{e} (Debian's 2.9.10 is too old: it lacks sync_interval)"))
}

/// The `jetflow` binary built from this workspace (`JETFLOW_BIN` overrides). The first call
/// in a test process runs `cargo build` for it, so a test never starts a stale binary.
pub fn jetflow_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("JETFLOW_BIN") {
        return PathBuf::from(p);
    }
    // The test executable lives in target/<profile>/deps/; the binary in target/<profile>/.
    let exe = std::env::current_exe().expect("the test knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| cargo_build(&["--bin", "jetflow"], profile_dir));
    let bin = profile_dir.join("jetflow");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first (cargo build -p jetflow --bin jetflow), or set JETFLOW_BIN",
        bin.display()
    );
    bin
}

/// An example of the runtime (`actors/runtime/examples/<name>.rs`), built from this workspace
/// on first use.
pub fn runtime_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps")
        .to_path_buf();
    cargo_build(&["--example", name], &profile_dir);
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "{} does not exist", bin.display());
    bin
}

/// `cargo build` of one target of this workspace, for the profile the tests run in.
fn cargo_build(target: &[&str], profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // With the whole workspace's features, as `.ci/test.sh` built it before the tests, and
    // without the variables cargo sets for this test (`ring`'s build script reruns when
    // CARGO_MANIFEST_DIR changes): otherwise half the dependencies and the target were
    // compiled again, about 25 s, in every test process.
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "--workspace"])
        .args(target);
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy();
        let set_by_cargo_for_this_test = var.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&var.as_ref());
        if set_by_cargo_for_this_test {
            cmd.env_remove(var.as_ref());
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        other => panic!("cargo build {target:?} failed: {other:?}"),
    }
}

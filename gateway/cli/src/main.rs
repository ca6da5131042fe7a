//! The `jetflow` binary: hands the command line to the library.

/// mimalloc instead of the C library's allocator: the process allocates and frees small
/// buffers per message, which cost about a third of its CPU in glibc's malloc under load;
/// mimalloc takes about 6 % off jetflow's CPU per order (`jetflow bench orders`, paired
/// runs). The container image, linked against musl, uses it too instead of musl's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jetflow_app::run::main()
}

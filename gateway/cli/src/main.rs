//! The `jetflow` binary: hands the command line to the library.

fn main() -> std::process::ExitCode {
    jetflow_app::run::main()
}

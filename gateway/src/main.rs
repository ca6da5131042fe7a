//! The `jetflow` binary: parses the command line and runs one command.

use std::process::ExitCode;

fn main() -> ExitCode {
    jetflow_gateway::run::main()
}

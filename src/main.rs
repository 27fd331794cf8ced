//! Thin entry point: parse the command line, run, print the error chain once.

use std::process::ExitCode;

fn main() -> ExitCode {
    gatehouse::cli::main()
}

//! The `wasm-cache` command. Under construction (issue 7): it refuses to run
//! rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("error: the wasm-cache command is not implemented yet (issue 7)");
    std::process::ExitCode::FAILURE
}

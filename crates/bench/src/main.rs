//! Benchmark runner of wasm-cache (`cargo xtask bench`). Under construction
//! (issue 8): it refuses to run rather than print invented figures.

fn main() -> std::process::ExitCode {
    eprintln!("error: the benchmark runner is not implemented yet (issue 8)");
    std::process::ExitCode::FAILURE
}

//! The `estafette` binary: everything lives in the library, see `lib.rs`.

fn main() -> std::process::ExitCode {
    estafette::cli::main()
}

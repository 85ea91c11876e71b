fn main() -> std::process::ExitCode {
    ds01_slices::cli::main()
}

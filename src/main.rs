fn main() -> std::process::ExitCode {
    umltest::cli::main()
}

fn main() -> std::process::ExitCode {
    vhdsync::cli::run()
}

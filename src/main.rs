fn main() {
    std::process::exit(mybuddytalk::cli::main());
}

//! `dslite`: the controller binary. All logic lives in the library (`dslite_user`).
fn main() {
    std::process::exit(dslite_user::cli::main());
}

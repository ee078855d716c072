//! Bad input (flags, configuration, interfaces) as an error of its own: `dslite` prints it
//! as one line and exits with code 2, where other errors exit with 1.

/// Bad input: printed as one line, exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// `e` as bad input, its causes joined into the one line.
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    Usage(format!("{e:#}")).into()
}

//! A buffered stdout that reports a reader closing it early (`| head -1`) as
//! a [`Failure`] the command can return through its normal path, instead of
//! the panic `println!` turns it into.

use std::io::{self, Write};

use super::Failure;

/// Buffered stdout; callers flush whenever they are about to wait, so a
/// reader at the other end of a pipe sees each line without delay.
pub struct Stdout(io::BufWriter<io::Stdout>);

impl Stdout {
    pub fn new() -> Stdout {
        Stdout(io::BufWriter::new(io::stdout()))
    }

    pub fn write(&mut self, text: &str) -> Result<(), Failure> {
        self.0.write_all(text.as_bytes()).map_err(failure)
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.0.flush().map_err(failure)
    }
}

fn failure(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::stdout_closed()
    } else {
        Failure::new(1, format!("writing to stdout: {e}"))
    }
}

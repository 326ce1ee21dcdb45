//! Argument parsing and output shared by the harness examples.

use std::future::Future;

use serde::Serialize;

pub struct Args {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Args {
    pub fn new(usage: &'static str) -> Self {
        Self {
            args: std::env::args().skip(1),
            usage,
        }
    }

    /// The next flag; `-h`/`--help` prints the usage and exits.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "-h" || flag == "--help" {
            self.fail("");
        }
        Some(flag)
    }

    pub fn value(&mut self, flag: &str) -> String {
        self.args
            .next()
            .unwrap_or_else(|| self.fail(&format!("{flag} needs a value")))
    }

    pub fn num(&mut self, flag: &str) -> u64 {
        let v = self.value(flag);
        v.parse()
            .unwrap_or_else(|_| self.fail(&format!("{flag}: not a number: {v}")))
    }

    pub fn fail(&self, msg: &str) -> ! {
        if !msg.is_empty() {
            eprintln!("error: {msg}");
        }
        eprintln!("usage: {}", self.usage);
        std::process::exit(2)
    }
}

/// Runs a harness on a multi-threaded runtime.
pub fn run<T>(harness: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(harness)
}

/// Writes the report as pretty JSON when a path was given.
pub fn write_json<T: Serialize>(args: &Args, path: Option<&str>, report: &T) {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report).unwrap();
        std::fs::write(path, text).unwrap_or_else(|e| args.fail(&format!("cannot write {path}: {e}")));
    }
}

//! pulsegate-loadgen: entry point and scenario dispatch.
//!
//! Owns: turning the parsed command line into a run (parent scenario or hidden
//! worker) and the process exit code (2 = refused/invalid options).
//! Must never: contain scenario logic, sockets or report formatting.

mod cli;
mod device;
mod mqtt;
mod net;
mod parent;
mod procstat;
mod push;
mod report;
mod srcip;
mod worker;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Hold(h) => parent::run(&h.conn, "hold", None),
        cli::Command::Push(p) => parent::run(&p.conn.clone(), "push", Some(p)),
        cli::Command::Worker(w) => worker::run(w),
    };
    std::process::exit(code);
}

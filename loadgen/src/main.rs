//! pulsegate-loadgen: entry point and scenario dispatch (subcommand -> `scenario::*`).
//!
//! Owns: turning the parsed command line into a run (parent scenario or hidden
//! worker) and the process exit code (2 = refused/invalid options).
//! Must never: contain scenario logic, sockets or report formatting.

mod cli;
mod device;
mod html;
mod net;
mod overload;
mod parent;
mod procstat;
mod push;
mod report;
mod scenario;
mod scrape;
mod srcip;
mod timeline;
mod tls;
mod token;
mod worker;

use clap::Parser;
// The client codec lives in the library half (src/lib.rs) so the fuzz targets reach it.
use pulsegate_loadgen::mqtt;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Hold(h) => parent::run(&h.conn, &mut scenario::Hold),
        cli::Command::Push(p) => parent::run(&p.conn.clone(), &mut scenario::Push::new(p)),
        cli::Command::Storm(s) => parent::run(&s.conn.clone(), &mut scenario::Storm::new(s)),
        cli::Command::Rushhour(r) => parent::run(&r.conn.clone(), &mut scenario::Rushhour::new(r)),
        cli::Command::Overload(o) => parent::run(&o.conn.clone(), &mut scenario::Overload::new(o)),
        cli::Command::Worker(w) => worker::run(w),
    };
    std::process::exit(code);
}

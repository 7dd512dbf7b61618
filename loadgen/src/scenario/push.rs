//! The `push` scenario: `hold` plus pushes at a fixed total rate through the
//! gateway's HTTP API (`crate::push::Pusher`), from `--push-start-s` or once every
//! device is connected; the devices measure the end-to-end latency.
//! Owns: when the pusher starts, and stopping it at the end of the hold.
//! Must never: push before the start condition, or keep pushing after the hold.

use super::{Scenario, Tick};
use crate::cli::{ConnArgs, PushArgs};
use crate::push::Pusher;
use crate::report::PushReport;
use std::net::SocketAddr;

pub struct Push {
    args: PushArgs,
    /// `--http`, resolved by `validate`.
    http_addr: Option<SocketAddr>,
    pusher: Option<Pusher>,
}

impl Push {
    pub fn new(args: PushArgs) -> Push {
        Push {
            args,
            http_addr: None,
            pusher: None,
        }
    }
}

impl Scenario for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn http(&self) -> Option<&str> {
        Some(&self.args.http)
    }

    fn validate(&mut self, _conn: &ConnArgs, http: Option<SocketAddr>) -> Result<(), String> {
        self.http_addr = http;
        Ok(())
    }

    fn tick(&mut self, tick: &mut Tick) {
        let (None, Some(addr)) = (&self.pusher, self.http_addr) else {
            return;
        };
        let go = match self.args.push_start_s {
            Some(s) => tick.t >= s,
            None => tick.connected >= tick.conn.connections,
        };
        if go {
            self.pusher = Some(Pusher::start(
                &self.args,
                addr,
                tick.conn.connections,
                &tick.conn.client_id_prefix,
            ));
        }
    }

    fn end_hold(&mut self) -> Option<PushReport> {
        self.pusher.take().map(Pusher::stop)
    }
}

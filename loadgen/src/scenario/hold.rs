//! The `hold` scenario: open the devices, keep them alive, measure, disconnect.
//! Everything it does is the driver's common part; it adds no options, no events
//! and no report section.
//! Must never: grow events of its own (another scenario is the place for them).

use super::Scenario;
use crate::cli::ConnArgs;
use std::net::SocketAddr;

pub struct Hold;

impl Scenario for Hold {
    fn name(&self) -> &'static str {
        "hold"
    }

    fn validate(&mut self, _conn: &ConnArgs, _http: Option<SocketAddr>) -> Result<(), String> {
        Ok(())
    }
}

//! Fleet features: who a report is about ([`identity`]), the per-service and per-stack
//! tables of a run ([`tables`]), and reports combined across hosts and runs
//! ([`merge`]) or compared before and after a deploy ([`diff`]).

pub mod diff;
pub mod identity;
pub mod merge;
pub mod tables;

//! The report algebra of a fleet: reports combined across hosts and runs ([`merge`])
//! or compared before and after a deploy ([`diff`]).

pub mod diff;
pub mod merge;

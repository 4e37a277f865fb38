//! One module per subcommand.

pub mod check;
pub mod diff;
pub mod merge;
pub mod report;
pub mod run;
pub mod serve;
pub mod trace;
pub mod tracing;

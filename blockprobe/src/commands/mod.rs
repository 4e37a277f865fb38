//! One module per subcommand.

pub mod report;
pub mod run;
pub mod trace;
pub mod tracing;

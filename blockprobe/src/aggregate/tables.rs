//! The per-service and per-stack tables of a run, built beside the per-function
//! aggregate from every stall (see [`crate::report::ServiceReport`] and
//! [`crate::report::StackReport`]), with bounded memory.

use foldhash::HashMap;

use crate::identity::StableFiles;
use crate::model::Stall;
use crate::report::{
    OTHER_FUNCTION, OTHER_STACKS, ServiceReport, StackFrame, StackKey, StackReport,
    UNKNOWN_FUNCTION, leaf_of, sort_services, sort_stacks,
};

use super::FunctionStats;

/// Distinct service labels kept; stalls of later ones count under [`OTHER_FUNCTION`].
pub const MAX_SERVICES: usize = 1_000;
/// Distinct stacks kept; stalls with later stacks count under one
/// [`OTHER_STACKS`] stack per service.
pub const MAX_STACKS: usize = 10_000;

/// The per-service and per-stack aggregates of a running session.
#[derive(Debug, Default)]
pub struct Tables {
    services: HashMap<String, FunctionStats>,
    stacks: HashMap<StackKey, (u64, u64)>,
}

impl Tables {
    /// Adds one stall of a process labelled `service` (empty: not registered) whose
    /// first-party files are under `app_root`; `files` makes its frames' files stable.
    pub fn record(
        &mut self,
        stall: &Stall,
        service: &str,
        app_root: &str,
        files: &mut StableFiles,
    ) {
        let service = if service.is_empty() {
            UNKNOWN_FUNCTION
        } else {
            service
        };
        let service = if self.services.contains_key(service) || self.services.len() < MAX_SERVICES {
            service
        } else {
            OTHER_FUNCTION
        };
        self.services
            .entry(service.to_owned())
            .or_default()
            .record(stall);

        let key = StackKey {
            service: service.to_owned(),
            leaf: leaf_of(stall),
            frames: stall
                .stack
                .iter()
                .map(|f| StackFrame {
                    function: f.function.clone(),
                    file: files.get(&f.file, app_root),
                })
                .collect(),
        };
        let key = if self.stacks.contains_key(&key) || self.stacks.len() < MAX_STACKS {
            key
        } else {
            StackKey {
                service: service.to_owned(),
                leaf: String::new(),
                frames: vec![StackFrame {
                    function: OTHER_STACKS.to_owned(),
                    file: String::new(),
                }],
            }
        };
        let slot = self.stacks.entry(key).or_default();
        slot.0 = slot.0.saturating_add(1);
        slot.1 = slot.1.saturating_add(stall.duration_ns);
    }

    /// The services, by total stall time (descending; ties by name).
    pub fn services(&self) -> Vec<ServiceReport> {
        let mut out: Vec<ServiceReport> = self
            .services
            .iter()
            .map(|(service, stats)| ServiceReport {
                service: service.clone(),
                histogram: stats.histogram.clone(),
                causes: stats.causes.clone(),
            })
            .collect();
        sort_services(&mut out);
        out
    }

    /// The stacks, by total stall time (descending; ties by key).
    pub fn stacks(&self) -> Vec<StackReport> {
        let mut out: Vec<StackReport> = self
            .stacks
            .iter()
            .map(|(k, &(count, total_ns))| StackReport {
                service: k.service.clone(),
                leaf: k.leaf.clone(),
                frames: k.frames.clone(),
                count,
                total_ns,
            })
            .collect();
        sort_stacks(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{frame, stall};

    #[test]
    fn services_and_stacks() {
        let mut t = Tables::default();
        let mut files = StableFiles::default();
        let mut s = stall(1, 0, 100, Some(frame("f", "/srv/app/a.py", 3)));
        s.stack = vec![
            frame("f", "/srv/app/a.py", 3),
            frame("main", "/srv/app/main.py", 9),
        ];
        t.record(&s, "api", "/srv/app", &mut files);
        s.stack[0].line = 4; // same stack without lines
        s.duration_ns = 50;
        t.record(&s, "api", "/srv/app", &mut files);
        t.record(&s, "", "", &mut files);
        let services = t.services();
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].service, "api");
        assert_eq!(services[0].histogram.count(), 2);
        assert_eq!(services[0].histogram.total_ns(), 150);
        assert_eq!(services[1].service, UNKNOWN_FUNCTION);
        let stacks = t.stacks();
        assert_eq!(stacks.len(), 2, "{stacks:#?}");
        assert_eq!(stacks[0].count, 2);
        assert_eq!(stacks[0].total_ns, 150);
        assert_eq!(stacks[0].leaf, "sleep: clock_nanosleep");
        assert_eq!(
            stacks[0].frames,
            [
                StackFrame {
                    function: "f".into(),
                    file: "a.py".into()
                },
                StackFrame {
                    function: "main".into(),
                    file: "main.py".into()
                }
            ]
        );
        assert_eq!(stacks[1].frames[0].file, "/srv/app/a.py", "no root, kept");
    }

    #[test]
    fn bounded() {
        let mut t = Tables::default();
        let mut files = StableFiles::default();
        for i in 0..(MAX_STACKS + 10) {
            let s = stall(1, 0, 10, Some(frame(&format!("f{i}"), "x.py", 1)));
            t.record(&s, &format!("svc{}", i % 3), "", &mut files);
        }
        let stacks = t.stacks();
        assert_eq!(
            stacks.len(),
            MAX_STACKS + 3,
            "one overflow stack per service"
        );
        let total: u64 = stacks.iter().map(|s| s.count).sum();
        assert_eq!(total, MAX_STACKS as u64 + 10);
        assert!(stacks.iter().any(|s| s.frames[0].function == OTHER_STACKS));
        for i in 0..(MAX_SERVICES + 5) {
            t.record(&stall(1, 0, 10, None), &format!("s{i}"), "", &mut files);
        }
        let services = t.services();
        assert_eq!(services.len(), MAX_SERVICES + 1);
        assert!(services.iter().any(|s| s.service == OTHER_FUNCTION));
    }
}

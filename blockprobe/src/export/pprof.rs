//! A pprof profile (`profile.proto` of github.com/google/pprof, uncompressed protobuf)
//! of blocking time, shaped like Go's block profile: sample types `stalls/count` and
//! `delay/nanoseconds` (the default), one sample per stack with a `service` label, leaf
//! first: the cause and syscall (`[sleep: clock_nanosleep]`), then the Python frames.
//! `go tool pprof`, Pyroscope and Grafana read it.
//!
//! pprof shortens function names as if they were C++ or Java ones, which drops
//! Python's `<module>`, `<lambda>` and `<listcomp>` altogether; so a function's `name`
//! has `<`/`>` replaced by `‹`/`›`, and its `system_name` keeps the exact qualname.

use std::collections::HashMap;

use super::weighted_stacks;
use crate::report::Report;
use crate::report::StackFrame;

/// The messages of `profile.proto` that blockprobe writes (field numbers as there).
pub mod proto {
    /// `perftools.profiles.Profile`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    /// `ValueType`: indexes into the string table.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// `Sample`: locations leaf first, one value per sample type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// `Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    /// `Mapping`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    /// `Location`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    /// `Line`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    /// `Function`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get(""); // index 0 is always ""
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A function name pprof shows as it is (see the module docs).
fn display_name(name: &str) -> String {
    name.replace('<', "‹").replace('>', "›")
}

/// The profile of `report`.
pub fn profile(report: &Report) -> proto::Profile {
    use proto::*;
    let (stacks, complete) = weighted_stacks(report);
    let mut strings = Strings::new();
    let stalls = strings.get("stalls");
    let count = strings.get("count");
    let delay = strings.get("delay");
    let nanoseconds = strings.get("nanoseconds");
    let service_key = strings.get("service");
    let mapping_name = strings.get("[python]");

    let mut functions: Vec<Function> = Vec::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut ids: HashMap<StackFrame, u64> = HashMap::new();
    let mut location_of = |f: &StackFrame, strings: &mut Strings| -> u64 {
        if let Some(&id) = ids.get(f) {
            return id;
        }
        let id = ids.len() as u64 + 1;
        functions.push(Function {
            id,
            name: strings.get(&display_name(&f.function)),
            system_name: strings.get(&f.function),
            filename: strings.get(&f.file),
            start_line: 0,
        });
        locations.push(Location {
            id,
            mapping_id: 1,
            address: 0,
            line: vec![Line {
                function_id: id,
                line: 0,
            }],
            is_folded: false,
        });
        ids.insert(f.clone(), id);
        id
    };

    let mut samples = Vec::with_capacity(stacks.len());
    for s in &stacks {
        let mut location_id = Vec::with_capacity(s.frames.len() + 1);
        if !s.leaf.is_empty() {
            let leaf = StackFrame {
                function: format!("[{}]", s.leaf),
                file: String::new(),
            };
            location_id.push(location_of(&leaf, &mut strings));
        }
        if s.frames.is_empty() {
            let unknown = StackFrame {
                function: crate::report::UNKNOWN_FUNCTION.to_owned(),
                file: String::new(),
            };
            location_id.push(location_of(&unknown, &mut strings));
        }
        for f in &s.frames {
            location_id.push(location_of(f, &mut strings));
        }
        samples.push(Sample {
            location_id,
            value: vec![clamp_i64(s.count), clamp_i64(s.total_ns)],
            label: vec![Label {
                key: service_key,
                str: strings.get(&s.service),
                num: 0,
                num_unit: 0,
            }],
        });
    }

    let mut comment = vec![
        strings.get(&format!("blockprobe {}", report.blockprobe_version)),
        strings.get(&format!("host {}", report.host)),
        strings.get(&format!("threshold {} ns", report.threshold_ns)),
    ];
    if !complete {
        comment.push(strings.get("longest stalls only: report without a stacks table"));
    }
    Profile {
        sample_type: vec![
            ValueType {
                r#type: stalls,
                unit: count,
            },
            ValueType {
                r#type: delay,
                unit: nanoseconds,
            },
        ],
        sample: samples,
        mapping: vec![Mapping {
            id: 1,
            memory_start: 0,
            memory_limit: 0,
            file_offset: 0,
            filename: mapping_name,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: false,
            has_inline_frames: false,
        }],
        location: locations,
        function: functions,
        string_table: strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: clamp_i64(report.started_unix_ns),
        duration_nanos: clamp_i64(report.duration_ns),
        period_type: Some(ValueType {
            r#type: stalls,
            unit: count,
        }),
        period: 1,
        comment,
        default_sample_type: delay,
    }
}

/// The encoded profile of `report`.
pub fn encode(report: &Report) -> Vec<u8> {
    prost::Message::encode_to_vec(&profile(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;
    use prost::Message as _;

    #[test]
    fn decodes_with_the_stall_totals() {
        let r = sample_report();
        let bytes = encode(&r);
        let p = proto::Profile::decode(bytes.as_slice()).unwrap();
        let s = |i: i64| p.string_table[usize::try_from(i).unwrap()].as_str();
        assert_eq!(s(0), "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("stalls", "count"), ("delay", "nanoseconds")]);
        assert_eq!(s(p.default_sample_type), "delay");
        let count: i64 = p.sample.iter().map(|x| x.value[0]).sum();
        let delay: i64 = p.sample.iter().map(|x| x.value[1]).sum();
        assert_eq!(count as u64, r.stall_count());
        let total: u64 = r.functions.iter().map(|f| f.histogram.total_ns()).sum();
        assert_eq!(delay as u64, total);
        assert_eq!(p.time_nanos as u64, r.started_unix_ns);
        // Every location resolves to a function; the culprit is among them.
        let names: Vec<&str> = p.function.iter().map(|f| s(f.name)).collect();
        assert!(names.contains(&"Client.fetch_data"), "{names:?}");
        assert!(names.contains(&"[sleep: clock_nanosleep]"), "{names:?}");
        for sample in &p.sample {
            for id in &sample.location_id {
                let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                assert!(p.function.iter().any(|f| f.id == loc.line[0].function_id));
            }
            assert_eq!(s(sample.label[0].key), "service");
        }
        // Leaf first: the cause, then the innermost Python frame.
        let fetch = p
            .sample
            .iter()
            .find(|x| x.value[0] == 30)
            .expect("the fetch_data stack");
        let leaf_fn = |i: usize| {
            let loc = p
                .location
                .iter()
                .find(|l| l.id == fetch.location_id[i])
                .unwrap();
            let f = p
                .function
                .iter()
                .find(|f| f.id == loc.line[0].function_id)
                .unwrap();
            s(f.name).to_owned()
        };
        assert_eq!(leaf_fn(0), "[sleep: clock_nanosleep]");
        assert_eq!(leaf_fn(1), "sleep");
        assert_eq!(leaf_fn(2), "Client.fetch_data");
    }

    #[test]
    fn angle_brackets_survive_pprof() {
        assert_eq!(display_name("<module>"), "‹module›");
        assert_eq!(
            display_name("Outer.<locals>.<lambda>"),
            "Outer.‹locals›.‹lambda›"
        );
        let mut r = sample_report();
        r.stacks[0].frames[0].function = "<module>".into();
        let p = profile(&r);
        let f = p
            .function
            .iter()
            .find(|f| p.string_table[f.system_name as usize] == "<module>")
            .unwrap();
        assert_eq!(p.string_table[f.name as usize], "‹module›");
    }
}

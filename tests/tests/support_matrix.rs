//! The README's support matrix ("## Support") says what is tested on which interpreter.
//! This checks it against the interpreter list (`blockprobe_pythons`), the live unit
//! tests and the sources of the suites in `tests/tests`. No root, no interpreter needed.

use std::collections::BTreeSet;

use blockprobe_pythons::{Interpreter, MATRIX, REFUSED, Source, Tier};
use blockprobe_tests::workspace_root;

/// The rows of the table under "## Support", as cells.
fn support_rows(readme: &str) -> Vec<Vec<String>> {
    readme
        .lines()
        .skip_while(|l| l.trim() != "## Support")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .skip(2) // the header and its separator
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// Every other suite of `tests/tests`: its name and source.
fn suites() -> Vec<(String, String)> {
    let dir = workspace_root().join("tests/tests");
    let mut suites: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("tests/tests is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| p.file_stem().is_some_and(|s| s != env!("CARGO_CRATE_NAME")))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read_to_string(&p).expect("suite is readable"),
            )
        })
        .collect();
    suites.sort();
    suites
}

/// How a suite's source names `interpreter` outside `python_matrix!`.
fn spellings(interpreter: &Interpreter) -> Vec<String> {
    let mut spellings = vec![format!("Python::matrix(\"{}\")", interpreter.id)];
    match interpreter.source {
        Source::Pyenv => spellings.push(format!("Python::pyenv(\"{}\")", interpreter.version)),
        Source::System(path) => {
            spellings.push("Python::debian()".into());
            spellings.push(path.into());
        }
        Source::Sid => spellings.push(format!("Python::debian_sid(\"{}\")", interpreter.minor())),
    }
    spellings
}

/// The suites whose source names `interpreter` (followed by `then`).
fn suites_using(suites: &[(String, String)], interpreter: &Interpreter, then: &str) -> Vec<String> {
    suites
        .iter()
        .filter(|(_, source)| {
            spellings(interpreter)
                .iter()
                .any(|s| source.contains(&format!("{s}{then}")))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::EveryRun => "every run",
        Tier::FullMatrix => "full matrix",
    }
}

/// What the *tested* cell of `interpreter`'s row must say.
fn tested(interpreter: &Interpreter, suites: &[(String, String)]) -> String {
    let mut parts = vec!["live unit test".to_owned()];
    if MATRIX.contains(interpreter) {
        parts.push("scenario matrix".into());
    }
    let users = suites_using(suites, interpreter, "");
    if !users.is_empty() {
        parts.push(users.join(", "));
    }
    format!("{}: {}", tier_name(interpreter.tier), parts.join("; "))
}

#[test]
fn readme_support_matrix_matches_the_tests() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let live = std::fs::read_to_string(root.join("blockprobe/src/python/live_tests.rs"))
        .expect("live_tests.rs");
    let rows = support_rows(&readme);
    let suites = suites();
    let mut problems = Vec::new();
    let mut matched = BTreeSet::new();

    for interpreter in MATRIX.iter().chain([&REFUSED]) {
        let label = interpreter.label();
        if !live.contains(&format!("fn {}()", interpreter.id)) {
            problems.push(format!("no live unit test `{}`", interpreter.id));
        }
        let found: Vec<usize> = (0..rows.len())
            .filter(|&r| rows[r][1].starts_with(&label))
            .collect();
        let [r] = found[..] else {
            problems.push(format!(
                "want one row whose build starts with `{label}`, found {}",
                found.len()
            ));
            continue;
        };
        matched.insert(r);
        let row = &rows[r];
        if !row[0].contains(interpreter.minor()) || !row[1].contains(interpreter.version) {
            problems.push(format!(
                "row `{label}` must name {} and {}",
                interpreter.minor(),
                interpreter.version
            ));
        }
        let want = tested(interpreter, &suites);
        if row[3] != want {
            problems.push(format!(
                "row `{label}`: tested must be `{want}`, is `{}`",
                row[3]
            ));
        }
    }

    // uvloop: on the interpreters some suite runs `.with_uvloop()` on.
    let uvloop: Vec<&Interpreter> = MATRIX
        .iter()
        .filter(|i| !suites_using(&suites, i, ".with_uvloop()").is_empty())
        .collect();
    match (0..rows.len()).find(|&r| rows[r][0] == "uvloop") {
        None => problems.push("no uvloop row".into()),
        Some(r) => {
            matched.insert(r);
            for i in MATRIX {
                if rows[r][1].contains(&i.label()) != uvloop.contains(&i) {
                    problems.push(format!(
                        "uvloop row: build must name exactly {:?}",
                        uvloop.iter().map(|i| i.label()).collect::<Vec<_>>()
                    ));
                }
            }
            let users: BTreeSet<String> = uvloop
                .iter()
                .flat_map(|i| suites_using(&suites, i, ".with_uvloop()"))
                .collect();
            let tier = if uvloop.iter().all(|i| i.tier == Tier::EveryRun) {
                Tier::EveryRun
            } else {
                Tier::FullMatrix
            };
            let want = format!(
                "{}: {}",
                tier_name(tier),
                users.into_iter().collect::<Vec<_>>().join(", ")
            );
            if rows[r][3] != want {
                problems.push(format!("uvloop row: tested must be `{want}`"));
            }
        }
    }

    // Other rows are no test interpreter: they claim no run on one.
    for (r, row) in rows.iter().enumerate() {
        if row.len() != 4 {
            problems.push(format!("row {row:?} does not have 4 cells"));
        } else if !matched.contains(&r) && (row[3].contains("live") || row[3].contains("scenario"))
        {
            problems.push(format!(
                "row `{}` claims a run, but is no test interpreter",
                row[0]
            ));
        }
    }

    // The suites the text calls the scenario matrix are those that use `python_matrix!`.
    let matrix_suites: Vec<&str> = suites
        .iter()
        .filter(|(_, source)| source.contains("python_matrix!("))
        .map(|(name, _)| name.as_str())
        .collect();
    let prose = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = format!(
        "The scenario matrix is every scenario of {} and {}:",
        matrix_suites[..matrix_suites.len() - 1].join(", "),
        matrix_suites[matrix_suites.len() - 1]
    );
    if !prose.contains(&want) {
        problems.push(format!("the text must say `{want}`"));
    }

    assert!(
        problems.is_empty(),
        "README.md's support matrix is out of date:\n  {}",
        problems.join("\n  ")
    );
}

//! `docs/reliability.md` names the tests that hold each case: `file::…::test` for a suite
//! of `tests/tests`, `blockprobe::module::…::test` for a unit test of `blockprobe/src`.
//! This checks that every test it names exists in the sources. No root needed.

use std::path::{Path, PathBuf};

use blockprobe_tests::{MATRIX_TEST_IDS, workspace_root};

/// Every span in backquotes of `doc` that is a test path: lowercase segments joined by `::`,
/// the last one possibly ending in `*` (all tests of that name's prefix).
fn test_paths(doc: &str) -> Vec<String> {
    let segment_ok = |s: &str| {
        let name = s.strip_suffix('*').unwrap_or(s);
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut paths: Vec<String> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.contains("::"))
        .filter(|span| span.split("::").all(|s| !s.is_empty() && segment_ok(s)))
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Source text in which a module's items are declared, and the directory of its child
/// module files.
struct Scope {
    text: String,
    dir: PathBuf,
}

impl Scope {
    /// The module file `path`, whose child modules live in `dir`.
    fn file(path: &Path, dir: PathBuf) -> Option<Scope> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(Scope { text, dir })
    }

    /// The child module `name`: its file (`name.rs` or `name/mod.rs`), else its inline
    /// block (rustfmt's layout: from `mod name {` to the `}` at the same indentation),
    /// else a module a macro makes of a scenario, holding one test per interpreter.
    fn module(&self, name: &str) -> Option<Scope> {
        let dir = self.dir.join(name);
        let file = self.dir.join(format!("{name}.rs"));
        if file.is_file() {
            return Scope::file(&file, dir);
        }
        if dir.join("mod.rs").is_file() {
            return Scope::file(&dir.join("mod.rs"), dir);
        }
        let mut lines = self.text.lines();
        let open = lines.by_ref().find(|l| {
            let item = l.trim_start();
            item == format!("mod {name} {{") || item == format!("pub mod {name} {{")
        });
        if let Some(open) = open {
            let close = format!("{}}}", &open[..open.len() - open.trim_start().len()]);
            let text = lines
                .take_while(|l| *l != close)
                .collect::<Vec<_>>()
                .join("\n");
            return Some(Scope { text, dir });
        }
        self.is_generated(name).then(|| Scope {
            text: MATRIX_TEST_IDS
                .iter()
                .map(|id| format!("fn {id}()\n"))
                .collect(),
            dir,
        })
    }

    /// Whether `name` is an argument of a macro invoked in this scope as an item
    /// (the scenario matrix's macro and the like, which make a module of one test per
    /// interpreter of a scenario).
    fn is_generated(&self, name: &str) -> bool {
        let mut lines = self.text.lines();
        while let Some(line) = lines.next() {
            let item = line.trim_start();
            let indent = &line[..line.len() - item.len()];
            let Some((macro_name, rest)) = item.split_once('!') else {
                continue;
            };
            let is_invocation = macro_name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && macro_name != "macro_rules"
                && rest.trim_start().starts_with(['(', '{', '[']);
            if !is_invocation || indent.len() > 4 {
                continue;
            }
            let mut args = vec![rest];
            if !rest.ends_with([';', ')', '}', ']']) {
                let close = |l: &&str| {
                    l.strip_prefix(indent)
                        .is_some_and(|l| l.starts_with([')', '}', ']']))
                };
                args.extend(lines.by_ref().take_while(|l| !close(l)));
            }
            let names_it = args.iter().any(|a| {
                a.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|token| token == name)
            });
            if names_it {
                return true;
            }
        }
        false
    }

    /// Whether this scope holds the test `name` (a function, a module a macro makes of
    /// it, or with a trailing `*` any function or scenario starting with it).
    fn has_test(&self, name: &str) -> bool {
        let names = self.text.split("fn ").skip(1).filter_map(|rest| {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
            Some(&rest[..end])
        });
        match name.strip_suffix('*') {
            Some(prefix) => names.clone().any(|n| n.starts_with(prefix)),
            None => names.clone().any(|n| n == name) || self.is_generated(name),
        }
    }
}

/// Why `path` names no test in the tree, or `None` when it does.
fn missing(root: &Path, path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let test = segments.pop()?;
    let (mut scope, modules) = match segments.split_first()? {
        (&"blockprobe", modules) => {
            let src = root.join("blockprobe/src");
            (Scope::file(&src.join("main.rs"), src)?, modules)
        }
        (suite, modules) => {
            let dir = root.join("tests/tests");
            let file = dir.join(format!("{suite}.rs"));
            let Some(scope) = Scope::file(&file, dir.join(suite)) else {
                return Some(format!("no suite {}", file.display()));
            };
            (scope, modules)
        }
    };
    for module in modules {
        match scope.module(module) {
            Some(inner) => scope = inner,
            None => return Some(format!("no module `{module}`")),
        }
    }
    (test != "*" && !scope.has_test(test)).then(|| format!("no test `{test}`"))
}

#[test]
fn every_test_named_in_reliability_md_exists() {
    let root = workspace_root();
    let doc = std::fs::read_to_string(root.join("docs/reliability.md"))
        .expect("docs/reliability.md is readable");
    let paths = test_paths(&doc);
    assert!(paths.len() > 50, "too few test paths found: {paths:?}");
    let stale: Vec<String> = paths
        .iter()
        .filter_map(|p| missing(&root, p).map(|why| format!("{p}: {why}")))
        .collect();
    assert!(stale.is_empty(), "stale test names:\n{}", stale.join("\n"));
}

#[test]
fn a_name_that_is_not_in_the_tree_is_found_stale() {
    let root = workspace_root();
    for path in [
        "docs::no_such_test",
        "no_such_suite::test",
        "docs::no_such_module::test",
        "blockprobe::clock::tests::no_such_test",
        "blockprobe::no_such_module::tests::test",
        "causes::no_such_scenario::*",
        "causes::many_short_sleeps::no_such_interpreter",
        "loop_life::no_such_prefix_*",
    ] {
        assert!(missing(&root, path).is_some(), "{path} was found");
    }
    for path in [
        "docs::a_name_that_is_not_in_the_tree_is_found_stale",
        "docs::every_test_*",
        "blockprobe::clock::tests::a_refresh_follows_a_step_of_the_wall_clock",
    ] {
        assert_eq!(missing(&root, path), None, "{path}");
    }
}

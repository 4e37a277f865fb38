//! Where a frame's code comes from, to pick the culprit of a stall: the innermost frame
//! of the application itself.

/// Who wrote the code of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The application being examined.
    FirstParty,
    /// Python's standard library (including frozen modules).
    Stdlib,
    /// An installed package (`site-packages`, `dist-packages`).
    ThirdParty,
}

/// Classifies a code object's file name (`co_filename`).
pub fn classify(file: &str) -> Origin {
    if file.starts_with("<frozen ") {
        return Origin::Stdlib;
    }
    let mut dirs = file.split(['/', '\\']);
    let mut in_lib = false;
    while let Some(dir) = dirs.next() {
        if dir == "site-packages" || dir == "dist-packages" {
            return Origin::ThirdParty;
        }
        if (dir == "lib" || dir == "lib64") && dirs.clone().next().is_some_and(is_python_dir) {
            in_lib = true;
        }
    }
    if in_lib {
        Origin::Stdlib
    } else {
        Origin::FirstParty
    }
}

/// Whether a directory name is `python3.X` (optionally with ABI flags such as `t`).
fn is_python_dir(dir: &str) -> bool {
    dir.strip_prefix("python3.").is_some_and(|minor| {
        minor.starts_with(|c: char| c.is_ascii_digit())
            && minor.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let cases = [
            ("<frozen importlib._bootstrap>", Origin::Stdlib),
            ("/usr/lib/python3.11/asyncio/base_events.py", Origin::Stdlib),
            (
                "/root/.pyenv/versions/3.13.0/lib/python3.13/threading.py",
                Origin::Stdlib,
            ),
            ("/usr/lib64/python3.12/selectors.py", Origin::Stdlib),
            ("/opt/py/lib/python3.13t/json/decoder.py", Origin::Stdlib),
            (
                "/usr/lib/python3/dist-packages/yaml/reader.py",
                Origin::ThirdParty,
            ),
            (
                "/usr/local/lib/python3.11/dist-packages/uvloop/__init__.py",
                Origin::ThirdParty,
            ),
            (
                "/app/.venv/lib/python3.12/site-packages/aiohttp/web.py",
                Origin::ThirdParty,
            ),
            ("/app/service/handlers.py", Origin::FirstParty),
            ("/home/me/lib/python3.11-notes/x.py", Origin::FirstParty),
            ("/srv/lib/app.py", Origin::FirstParty),
            ("main.py", Origin::FirstParty),
            ("<string>", Origin::FirstParty),
        ];
        for (file, want) in cases {
            assert_eq!(classify(file), want, "{file}");
        }
    }
}

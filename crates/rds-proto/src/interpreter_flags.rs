//! Which of the original API's `denoFlags` / `nodeFlags` a run accepts: flags that change how the
//! interpreter checks, reports or sizes a run, never what it may touch. A flag that grants
//! permissions (`--allow-all`), loads other code (`--import`, `--require`, `--config`) or opens a
//! debugger is refused; the manager and the agent (the boundary) both check with [`check`].

/// `deno run` flags taken as they are.
const DENO: &[&str] = &[
    "--no-check",
    "--check",
    "-q",
    "--quiet",
    "--no-prompt",
    "--cached-only",
    "--no-remote",
    "--no-npm",
    "--no-config",
    "--no-lock",
];
/// `node` flags taken as they are.
const NODE: &[&str] =
    &["--no-warnings", "--no-deprecation", "--enable-source-maps", "--trace-warnings", "--trace-uncaught", "--jitless"];
/// Flags taking a number, `<flag>=<digits>`, per interpreter.
const DENO_NUMERIC: &[&str] = &["--seed", "--v8-flags=--max-old-space-size"];
const NODE_NUMERIC: &[&str] = &["--max-old-space-size", "--stack-size"];

/// Checks `flags` of the request field `field` (`denoFlags` or `nodeFlags`); the error names the
/// field, the entry and what is accepted.
pub fn check(field: &str, flags: &[String]) -> Result<(), String> {
    let (plain, numeric) = match field {
        "denoFlags" => (DENO, DENO_NUMERIC),
        "nodeFlags" => (NODE, NODE_NUMERIC),
        other => return Err(format!("{other} is not an interpreter flags field")),
    };
    for (i, flag) in flags.iter().enumerate() {
        let is_numeric = |name: &&str| {
            flag.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|n| !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if !plain.contains(&flag.as_str()) && !numeric.iter().any(is_numeric) {
            return Err(format!(
                "`{field}[{i}]` ({flag:?}) is not accepted: flags that change permissions or load other code are refused \
                 (permissions derive from the VM's policy); accepted: {}, and {}",
                plain.join(", "),
                numeric.iter().map(|n| format!("{n}=<number>")).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn harmless_flags_pass_and_the_n8n_examples_with_them() {
        check("denoFlags", &flags(&["--no-check", "--quiet", "--seed=42", "--v8-flags=--max-old-space-size=256"]))
            .unwrap();
        check("nodeFlags", &flags(&["--no-warnings", "--max-old-space-size=512"])).unwrap();
        check("denoFlags", &[]).unwrap();
    }

    #[test]
    fn flags_that_widen_or_load_code_are_refused_by_name() {
        for bad in [
            "--allow-all",
            "-A",
            "--allow-net",
            "--allow-read=/",
            "--config=/x",
            "--import-map=x",
            "--seed=",
            "--seed=1x",
        ] {
            let err = check("denoFlags", &flags(&["--quiet", bad])).unwrap_err();
            assert!(err.contains("`denoFlags[1]`"), "{bad}: {err}");
        }
        for bad in
            ["--require=/tmp/x.js", "--inspect=0.0.0.0:9229", "--experimental-loader=x", "--max-old-space-size=-1"]
        {
            assert!(check("nodeFlags", &flags(&[bad])).is_err(), "{bad}");
        }
        // A flag of the other interpreter is not accepted either.
        assert!(check("nodeFlags", &flags(&["--no-check"])).is_err());
    }
}

//! The configuration reference, generated from the command line itself: every setting with
//! its environment variable, flag, default, the commands that take it, and its meaning. The
//! table in `docs/configuration.md` is this output (a test keeps them equal), so the two cannot drift.

use std::collections::BTreeMap;

use clap::CommandFactory;

use crate::cli::Cli;

struct Row {
    flag: String,
    default: String,
    help: String,
    commands: Vec<String>,
}

fn collect(cmd: &clap::Command, path: &str, rows: &mut BTreeMap<String, Row>) {
    for arg in cmd.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let env = env.to_string_lossy().into_owned();
        let row = rows.entry(env).or_insert_with(|| Row {
            flag: arg.get_long().map(|l| format!("--{l}")).unwrap_or_default(),
            default: arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
            help: arg
                .get_help()
                .map(|h| h.to_string().replace('\n', " "))
                .unwrap_or_default(),
            commands: Vec::new(),
        });
        if !path.is_empty() && !row.commands.iter().any(|c| c == path) {
            row.commands.push(path.to_string());
        }
    }
    for sub in cmd.get_subcommands() {
        let name = if path.is_empty() {
            sub.get_name().to_string()
        } else {
            format!("{path} {}", sub.get_name())
        };
        collect(sub, &name, rows);
    }
}

/// The reference as a Markdown table.
pub fn markdown() -> String {
    let mut rows = BTreeMap::new();
    collect(&Cli::command(), "", &mut rows);
    let mut out =
        String::from("| variable | flag | default | commands | meaning |\n|---|---|---|---|---|\n");
    for (env, row) in rows {
        let commands = if row.commands.is_empty() {
            "every".to_string()
        } else {
            row.commands.join(", ")
        };
        let default = if row.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", row.default)
        };
        out.push_str(&format!(
            "| `{env}` | `{}` | {default} | {commands} | {} |\n",
            row.flag,
            row.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `JETFLOW_*` variable that the README, `docs/` (but the performance notebook),
    /// `deploy/README.md`, the Kubernetes manifests, `docker-compose.yml` and the `.ci`
    /// scripts name is a setting of the command line (or one of the few the tooling reads), so
    /// no document keeps a setting that was renamed or removed.
    #[test]
    fn every_variable_the_docs_name_is_a_setting() {
        const NOT_SETTINGS: &[&str] = &[
            "JETFLOW_TAG",               // docker-compose's image tag
            "JETFLOW_BLESS",             // regenerates this table
            "JETFLOW_SKIP_LINT",         // .ci/test.sh
            "JETFLOW_PID",               // .ci scripts
            "JETFLOW_TEST_PG_ADMIN_URL", // the PostgreSQL tests
        ];
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut files = vec![
            format!("{root}/README.md"),
            format!("{root}/docker-compose.yml"),
            format!("{root}/deploy/README.md"),
        ];
        for dir in ["docs", "deploy/k8s", ".ci"] {
            for entry in std::fs::read_dir(format!("{root}/{dir}"))
                .expect(dir)
                .flatten()
            {
                let path = entry.path();
                // The performance notebook names settings of the time it measured.
                if path.is_file() && !path.ends_with("performance.md") {
                    files.push(path.display().to_string());
                }
            }
        }
        let mut settings = BTreeMap::new();
        collect(&Cli::command(), "", &mut settings);
        let mut unknown = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for (at, _) in text.match_indices("JETFLOW_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                let name = name.trim_end_matches('_');
                if name == "JETFLOW" {
                    continue; // a pattern (`JETFLOW_*`), not a name
                }
                if !settings.contains_key(name) && !NOT_SETTINGS.contains(&name) {
                    unknown.push(format!("{file}: {name}"));
                }
            }
        }
        unknown.sort();
        unknown.dedup();
        assert!(unknown.is_empty(), "not a setting: {unknown:#?}");
    }

    /// One name per setting: the flag is the variable without `JETFLOW_`, in lower case with
    /// dashes (`JETFLOW_ORDER_TIMEOUT` is `--order-timeout`, `NATS_URL` is `--nats-url`), in
    /// every command that takes it.
    #[test]
    fn every_flag_is_named_after_its_variable() {
        fn check(cmd: &clap::Command, wrong: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                    continue;
                };
                let env = env.to_string_lossy();
                let want = env
                    .trim_start_matches("JETFLOW_")
                    .to_lowercase()
                    .replace('_', "-");
                if long != want {
                    wrong.push(format!("{} {env}: --{long}, not --{want}", cmd.get_name()));
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, wrong);
            }
        }
        let mut wrong = Vec::new();
        check(&Cli::command(), &mut wrong);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn every_setting_is_listed_once_with_its_commands() {
        let md = markdown();
        assert!(md.contains("| `NATS_URL` | `--nats-url` |"), "{md}");
        assert!(
            md.contains("| `JETFLOW_SHUTDOWN_TIMEOUT` | `--shutdown-timeout` | `15s` |"),
            "{md}"
        );
        assert_eq!(md.matches("`DATABASE_URL`").count(), 1);
    }

    const BEGIN: &str = "<!-- settings:begin (generated by `JETFLOW_BLESS=1 cargo test -p jetflow reference`) -->\n";
    const END: &str = "<!-- settings:end -->";

    /// The configuration reference's table is exactly [`markdown`]; `JETFLOW_BLESS=1`
    /// rewrites it.
    #[test]
    fn the_documented_table_is_the_cli() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let readme = std::fs::read_to_string(path).expect("docs/configuration.md");
        let start = readme
            .find(BEGIN)
            .expect("docs/configuration.md has the settings:begin marker")
            + BEGIN.len();
        let end = readme[start..].find(END).expect("the settings:end marker") + start;
        let want = markdown();
        if readme[start..end] == want {
            return;
        }
        if std::env::var_os("JETFLOW_BLESS").is_some() {
            let updated = format!("{}{want}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).expect("docs/configuration.md written");
            return;
        }
        panic!(
            "docs/configuration.md's table differs from the CLI; run \
             `JETFLOW_BLESS=1 cargo test -p jetflow reference` to regenerate it. Expected:\n{want}"
        );
    }
}

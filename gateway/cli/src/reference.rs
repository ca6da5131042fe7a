//! The configuration reference, generated from the command line itself: every setting with
//! its environment variable, flag, default, the commands that take it, and its meaning. The
//! README's table is this output (a test keeps them equal), so the two cannot drift.

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
}

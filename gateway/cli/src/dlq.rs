//! `jetflow dlq list | replay | delete | purge`: the dead-letter stream for operators.
//!
//! A poison letter (it could not be decoded or failed its schema) is dead-lettered again as
//! soon as it is replayed, unless what reads it changed: `replay` skips it with the reason and
//! replays it only with `--force`. `purge` asks for confirmation unless `--yes`, and refuses
//! without a terminal to ask on.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use jetflow_runtime::connection::connect;
use jetflow_runtime::dead_letter::{self, DeadLetter};

use crate::cli::{DlqCommand, NatsArgs};
use crate::settings::Settings;

impl DlqCommand {
    /// The NATS settings of the command.
    pub fn nats(&self) -> &NatsArgs {
        match self {
            DlqCommand::List { nats, .. }
            | DlqCommand::Replay { nats, .. }
            | DlqCommand::Delete { nats, .. }
            | DlqCommand::Purge { nats, .. } => nats,
        }
    }
}

/// Runs a `dlq` command.
pub async fn run(settings: &Settings, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let config = settings.nats.connection("jetflow-dlq");
    let client = connect(&config, |_| {})
        .await
        .context("cannot connect to NATS")?;
    let js = jetstream::new(client);
    match command {
        DlqCommand::List { json, .. } => list(&js, json).await,
        DlqCommand::Replay {
            sequences,
            all,
            force,
            ..
        } => replay(&js, sequences, all, force).await,
        DlqCommand::Delete { sequences, .. } => delete(&js, sequences).await,
        DlqCommand::Purge { yes, .. } => purge(&js, yes).await,
    }
}

async fn letters(js: &jetstream::Context) -> anyhow::Result<Vec<DeadLetter>> {
    match dead_letter::list(js).await {
        Ok(l) => Ok(l),
        Err(e) if e.to_string().contains("stream not found") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

async fn list(js: &jetstream::Context, json: bool) -> anyhow::Result<ExitCode> {
    let letters = letters(js).await?;
    if json {
        for l in &letters {
            println!("{}", serde_json::to_string(l)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<25}  {:<30}  {:<13}  {:>5}  ERROR",
        "SEQ", "TIME", "SUBJECT", "REASON", "DELIV"
    );
    for l in &letters {
        println!(
            "{:>6}  {:<25}  {:<30}  {:<13}  {:>5}  {}",
            l.dlq_sequence,
            l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            l.subject,
            l.reason,
            l.deliveries.map(|d| d.to_string()).unwrap_or_default(),
            l.error
        );
    }
    println!("{} dead letter(s)", letters.len());
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    js: &jetstream::Context,
    sequences: Vec<u64>,
    all: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let chosen: Vec<DeadLetter> = if all {
        letters(js).await?
    } else {
        let mut out = Vec::new();
        for seq in sequences {
            out.push(dead_letter::get(js, seq).await?);
        }
        out
    };
    let (mut replayed, mut skipped, mut failed) = (0, 0, 0);
    for letter in &chosen {
        if letter.reason == "poison" && !force {
            skipped += 1;
            eprintln!(
                "jetflow: dead letter {} is poison ({}): replayed as it is, it is dead-lettered again. Fix what reads {}, then replay it with --force",
                letter.dlq_sequence, letter.error, letter.subject
            );
            continue;
        }
        match dead_letter::replay(js, letter.dlq_sequence).await {
            Ok(ack) => {
                replayed += 1;
                println!(
                    "replayed {} → {} #{}",
                    letter.dlq_sequence, ack.stream, ack.sequence
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("jetflow: dead letter {}: {e}", letter.dlq_sequence);
            }
        }
    }
    println!("{replayed} replayed, {skipped} skipped, {failed} failed");
    Ok(if failed > 0 || skipped > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn delete(js: &jetstream::Context, sequences: Vec<u64>) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for seq in &sequences {
        match dead_letter::delete(js, *seq).await {
            Ok(()) => println!("deleted {seq}"),
            Err(e) => {
                failed += 1;
                eprintln!("jetflow: dead letter {seq}: {e}");
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn purge(js: &jetstream::Context, yes: bool) -> anyhow::Result<ExitCode> {
    let n = letters(js).await?.len();
    if n == 0 {
        println!("no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("jetflow: dlq purge deletes {n} dead letter(s) for good; confirm with --yes");
            return Ok(ExitCode::from(2));
        }
        print!("Delete all {n} dead letter(s) for good? Type yes: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let purged = dead_letter::purge(js).await?;
    println!("purged {purged} dead letter(s)");
    Ok(ExitCode::SUCCESS)
}

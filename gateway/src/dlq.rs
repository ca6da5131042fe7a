//! `jetflow dlq list` and `jetflow dlq replay`: the dead-letter stream for operators.

use async_nats::jetstream;
use jetflow_runtime::connection::connect;
use jetflow_runtime::dead_letter;

use crate::cli::DlqCommand;
use crate::configuration::Settings;
use crate::startup::nats_config;

/// Runs a `dlq` command; returns the process exit code.
pub async fn run(settings: &Settings, command: DlqCommand) -> Result<(), String> {
    let config = nats_config(settings, "jetflow-dlq");
    let client = connect(&config, |_| {}).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    match command {
        DlqCommand::List { json } => list(&js, json).await,
        DlqCommand::Replay { sequences, all } => replay(&js, sequences, all).await,
    }
}

async fn list(js: &jetstream::Context, json: bool) -> Result<(), String> {
    let letters = match dead_letter::list(js).await {
        Ok(l) => l,
        Err(e) if e.to_string().contains("stream not found") => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    if json {
        for l in &letters {
            println!("{}", serde_json::to_string(l).map_err(|e| e.to_string())?);
        }
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    println!(
        "{:>6}  {:<25}  {:<30}  {:<9}  {:>5}  ERROR",
        "SEQ", "TIME", "SUBJECT", "REASON", "DELIV"
    );
    for l in &letters {
        println!(
            "{:>6}  {:<25}  {:<30}  {:<9}  {:>5}  {}",
            l.dlq_sequence,
            l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            l.subject,
            l.reason,
            l.deliveries.map(|d| d.to_string()).unwrap_or_default(),
            l.error
        );
    }
    println!("{} dead letter(s)", letters.len());
    Ok(())
}

async fn replay(js: &jetstream::Context, sequences: Vec<u64>, all: bool) -> Result<(), String> {
    let sequences = if all {
        dead_letter::list(js)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|l| l.dlq_sequence)
            .collect()
    } else {
        sequences
    };
    let mut failed = 0;
    for seq in &sequences {
        match dead_letter::replay(js, *seq).await {
            Ok(ack) => println!("replayed {seq} → {} #{}", ack.stream, ack.sequence),
            Err(e) => {
                failed += 1;
                eprintln!("dead letter {seq}: {e}");
            }
        }
    }
    println!("{} replayed, {failed} failed", sequences.len() - failed);
    if failed > 0 {
        Err(format!("{failed} dead letter(s) could not be replayed"))
    } else {
        Ok(())
    }
}

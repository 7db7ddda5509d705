//! `edgebus group list | describe | reset-offsets | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{AssignmentStrategy, Client};
use edgebus_proto::frame::{PartitionReset, Request, ResetTarget, Response};
use serde_json::json;

use super::consume::parse_from;
use super::table::{self, Table};
use super::{CommonArgs, Failure, Output};

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus group describe billing
  edgebus group reset-offsets billing --topic orders --to earliest --dry-run")]
pub enum GroupCommand {
    /// List groups with members or committed offsets.
    #[command(after_help = "Examples:
  edgebus group list
  edgebus group list --output json")]
    List(CommonArgs),
    /// Show members, assignment, and per partition the committed offset,
    /// log end and lag.
    #[command(after_help = "Examples:
  edgebus group describe billing
  edgebus group describe billing --output yaml")]
    Describe(NamedArgs),
    /// Point a group's offsets for a topic somewhere else (group must be
    /// empty).
    #[command(after_help = "Examples:
  edgebus group reset-offsets billing --topic orders --to earliest --dry-run
  edgebus group reset-offsets billing --topic orders --partition 2 --to shift:-100
  edgebus group reset-offsets billing --topic orders --to @2026-01-02T03:04:05Z")]
    ResetOffsets(ResetArgs),
    /// Delete a group's committed offsets (group must be empty).
    #[command(after_help = "Examples:
  edgebus group delete billing
  edgebus group delete billing --output json")]
    Delete(NamedArgs),
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Group name.
    group: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Group name.
    group: String,
    /// Topic whose partitions to reset.
    #[arg(long)]
    topic: String,
    /// earliest, latest, an offset, @RFC3339 time, or shift:N (the
    /// committed offset moved by N, back when negative; kept within the
    /// log).
    #[arg(long, value_parser = parse_reset_to, allow_hyphen_values = true)]
    to: ResetTarget,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    partition: Option<u32>,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// Parses `--to`: what `consume --from` takes, or `shift:N`.
fn parse_reset_to(s: &str) -> Result<ResetTarget, String> {
    match s.strip_prefix("shift:") {
        Some(n) => n
            .parse::<i64>()
            .map(ResetTarget::Shift)
            .map_err(|_| format!("{s:?}: shift:N takes a whole number of records, e.g. shift:-10")),
        None => parse_from(s)
            .map(ResetTarget::Position)
            .map_err(|e| format!("{e}, or shift:N")),
    }
}

/// A strategy as one word, spelled like every other value the CLI prints
/// (lowercase, hyphenated).
fn strategy_name(strategy: AssignmentStrategy) -> &'static str {
    match strategy {
        AssignmentStrategy::Range => "range",
        AssignmentStrategy::RoundRobin => "round-robin",
        AssignmentStrategy::Sticky => "sticky",
    }
}

async fn request(client: &Client, request: Request) -> Result<Response, Failure> {
    Ok(client.request(&request).await?)
}

fn unexpected(r: &Response) -> Failure {
    Failure::other(format!("unexpected response {r:?}"))
}

fn offset_text(offset: Option<u64>) -> String {
    offset.map_or_else(|| "-".to_owned(), |o| o.to_string())
}

/// Prints the resets of `group reset-offsets`, done or planned.
fn print_resets(group: &str, resets: &[PartitionReset], dry_run: bool, output: Output) {
    match output {
        o @ (Output::Json | Output::Yaml) => {
            for r in resets {
                o.emit(&json!({
                    "group": group, "topic": r.topic, "partition": r.partition,
                    "previous": r.previous, "offset": r.offset, "dry_run": dry_run,
                }));
            }
        }
        Output::Text => {
            let mut t = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "NEW-OFFSET"]);
            for r in resets {
                t.row(vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    offset_text(r.previous),
                    r.offset.to_string(),
                ]);
            }
            t.print();
            if dry_run {
                println!("dry run: group {group} unchanged; run again without --dry-run to apply");
            }
        }
    }
}

pub async fn run(cmd: GroupCommand) -> Result<(), Failure> {
    match cmd {
        GroupCommand::List(a) => {
            let client = a.connect.connect().await?;
            match request(&client, Request::ListGroups).await? {
                Response::Groups(groups) => {
                    for g in groups {
                        match a.output {
                            o @ (Output::Json | Output::Yaml) => o.emit(&json!({"group": g})),
                            Output::Text => println!("{g}"),
                        }
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        GroupCommand::Describe(a) => {
            let client = coordinator(&a.common, &a.group).await?;
            let response = request(
                &client,
                Request::DescribeGroup {
                    group: a.group.clone(),
                },
            )
            .await?;
            let Response::GroupDescription {
                generation,
                strategy,
                members,
                lag,
            } = response
            else {
                return Err(unexpected(&response));
            };
            let lag_of =
                |l: &edgebus_client::GroupLag| l.log_end.saturating_sub(l.committed.unwrap_or(0));
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({
                        "group": a.group,
                        "generation": generation,
                        "strategy": strategy_name(strategy),
                        "members": members.iter().map(|m| json!({
                            "member_id": m.member_id,
                            "topics": m.topics,
                            "partitions": m.owned.iter().map(|tp| json!({"topic": tp.topic, "partition": tp.partition})).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                        "partitions": lag.iter().map(|l| json!({
                            "topic": l.topic,
                            "partition": l.partition,
                            "committed": l.committed,
                            "log_end": l.log_end,
                            "lag": lag_of(l),
                        })).collect::<Vec<_>>(),
                    })),
                Output::Text => {
                    let total: u64 = lag.iter().map(lag_of).sum();
                    print!(
                        "{}",
                        table::summary(&[
                            ("group", a.group.clone()),
                            ("generation", generation.to_string()),
                            ("strategy", strategy_name(strategy).to_owned()),
                            ("members", members.len().to_string()),
                            ("total lag", total.to_string()),
                        ])
                    );
                    if !members.is_empty() {
                        println!();
                        let mut t = Table::new(&["MEMBER", "TOPICS", "PARTITIONS"]);
                        for m in &members {
                            let owned: Vec<String> = m
                                .owned
                                .iter()
                                .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                                .collect();
                            t.row(vec![
                                m.member_id.clone(),
                                m.topics.join(","),
                                if owned.is_empty() {
                                    "-".to_owned()
                                } else {
                                    owned.join(",")
                                },
                            ]);
                        }
                        t.print();
                    }
                    if !lag.is_empty() {
                        println!();
                        let mut t =
                            Table::new(&["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"]);
                        for l in &lag {
                            t.row(vec![
                                l.topic.clone(),
                                l.partition.to_string(),
                                offset_text(l.committed),
                                l.log_end.to_string(),
                                lag_of(l).to_string(),
                            ]);
                        }
                        t.print();
                    }
                }
            }
        }
        GroupCommand::ResetOffsets(a) => {
            let client = coordinator(&a.common, &a.group).await?;
            let response = request(
                &client,
                Request::ResetPartitionOffsets {
                    group: a.group.clone(),
                    topic: a.topic.clone(),
                    partition: a.partition,
                    to: a.to,
                    dry_run: a.dry_run,
                },
            )
            .await?;
            let Response::PartitionResets(resets) = response else {
                return Err(unexpected(&response));
            };
            print_resets(&a.group, &resets, a.dry_run, a.common.output);
        }
        GroupCommand::Delete(a) => {
            let client = coordinator(&a.common, &a.group).await?;
            request(
                &client,
                Request::DeleteGroup {
                    group: a.group.clone(),
                },
            )
            .await?;
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"deleted": a.group})),
                Output::Text => println!("deleted group {}", a.group),
            }
        }
    }
    Ok(())
}

/// The client for the node coordinating `group`: in a cluster only it
/// answers for the group's members, commits and resets.
async fn coordinator(common: &CommonArgs, group: &str) -> Result<Client, Failure> {
    Ok(common.connect.connect().await?.coordinator(group).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_client::Position;

    #[test]
    fn reset_to_takes_positions_and_shifts() {
        assert_eq!(
            parse_reset_to("earliest"),
            Ok(ResetTarget::Position(Position::Earliest))
        );
        assert_eq!(
            parse_reset_to("42"),
            Ok(ResetTarget::Position(Position::Offset(42)))
        );
        assert_eq!(parse_reset_to("shift:-10"), Ok(ResetTarget::Shift(-10)));
        assert_eq!(parse_reset_to("shift:3"), Ok(ResetTarget::Shift(3)));
        assert!(parse_reset_to("shift:").is_err());
        assert!(parse_reset_to("shift:x").is_err());
        assert!(parse_reset_to("-1").is_err());
    }
}

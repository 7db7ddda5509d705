//! `edgebus group list | describe | reset-offsets | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{Client, Position};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::consume::parse_from;
use super::{CommonArgs, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List groups with members or committed offsets.
    List(CommonArgs),
    /// Show members, assignment, and per partition the committed offset,
    /// log end and lag.
    Describe(NamedArgs),
    /// Point a group's offsets for a topic somewhere else (group must be empty).
    ResetOffsets(ResetArgs),
    /// Delete a group's committed offsets (group must be empty).
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
    /// earliest, latest, an offset, or @RFC3339 time.
    #[arg(long, value_parser = parse_from)]
    to: Position,
    #[command(flatten)]
    common: CommonArgs,
}

async fn request(client: &Client, request: Request) -> Result<Response, Failure> {
    Ok(client.request(&request).await?)
}

fn unexpected(r: &Response) -> Failure {
    Failure::other(format!("unexpected response {r:?}"))
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
            let client = a.common.connect.connect().await?;
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
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({
                        "group": a.group,
                        "generation": generation,
                        "strategy": format!("{strategy:?}").to_lowercase(),
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
                            "lag": l.log_end.saturating_sub(l.committed.unwrap_or(0)),
                        })).collect::<Vec<_>>(),
                    })),
                Output::Text => {
                    println!(
                        "group {}\tgeneration={generation}\tstrategy={strategy:?}\tmembers={}",
                        a.group,
                        members.len()
                    );
                    for m in &members {
                        let parts: Vec<String> = m
                            .owned
                            .iter()
                            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                            .collect();
                        println!("  member {}\t{}", m.member_id, parts.join(","));
                    }
                    println!("  TOPIC\tPARTITION\tCOMMITTED\tLOG-END\tLAG");
                    for l in &lag {
                        let committed = l.committed.map_or("-".into(), |c| c.to_string());
                        let lag = l.log_end.saturating_sub(l.committed.unwrap_or(0));
                        println!(
                            "  {}\t{}\t{committed}\t{}\t{lag}",
                            l.topic, l.partition, l.log_end
                        );
                    }
                }
            }
        }
        GroupCommand::ResetOffsets(a) => {
            let client = a.common.connect.connect().await?;
            let response = request(
                &client,
                Request::ResetOffsets {
                    group: a.group.clone(),
                    topic: a.topic.clone(),
                    to: a.to,
                },
            )
            .await?;
            let Response::CommittedOffsets(offsets) = response else {
                return Err(unexpected(&response));
            };
            for o in offsets {
                match a.common.output {
                    out @ (Output::Json | Output::Yaml) => out.emit(&json!({"group": a.group, "topic": o.topic, "partition": o.partition, "offset": o.offset})),
                    Output::Text => println!("{}/{} -> {}", o.topic, o.partition, o.offset),
                }
            }
        }
        GroupCommand::Delete(a) => {
            let client = a.common.connect.connect().await?;
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

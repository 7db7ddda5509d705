//! `edgebus demo`: the whole idea in one command, on embedded defaults.
//!
//! Starts a broker in a temp dir, registers the plugins embedded in the
//! binary (no wasm toolchain needed), and simulates IoT sensors. On
//! ingest, `json-filter` drops garbage and impossible readings and `redact`
//! masks the owner field; a pipeline downsamples into a second topic; a
//! consumer asks the broker to filter on its read path. Then it prints what consumers see and every counter,
//! and what to try next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use edgebus_client::{
    Client, ClientConfig, PluginRef, Position, Producer, ProducerConfig, Record, SubscribeConfig,
    Subscription, TopicSpec,
};
use edgebus_proto::frame::{FailurePolicy, Request, Response};

use super::Failure;
use super::plugin::chain_text;
use edgebus::config::Config;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  edgebus demo                                    # with the plugins embedded in the binary
  edgebus demo --sensors 8 --readings 1000 --plugins plugins/target/wasm32-wasip2/release")]
pub struct DemoArgs {
    /// Simulated sensors.
    #[arg(long, default_value_t = 4)]
    sensors: u32,
    /// Readings per sensor.
    #[arg(long, default_value_t = 100)]
    readings: u32,
    /// Directory holding plugins built with `plugins/build.sh` (`*.wasm`)
    /// to use instead of the ones embedded in the binary.
    #[arg(long)]
    plugins: Option<PathBuf>,
}

fn plugin(name: &str, params: &[(&str, &str)]) -> PluginRef {
    PluginRef {
        name: name.to_owned(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn topic(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.to_owned(),
        partitions,
        retention_ms: -1,
        retention_bytes: -1,
        max_message_bytes: 0,
        compression: edgebus_proto::batch::Compression::None,
    }
}

/// A plugin's component, from `--plugins DIR` or embedded, and where it
/// came from.
fn component(dir: Option<&Path>, name: &str) -> Result<(Vec<u8>, String), Failure> {
    let bundled = edgebus::bundled::find(name)
        .ok_or_else(|| Failure::other(format!("{name} is not a bundled plugin")))?;
    match dir {
        Some(dir) => {
            let path = dir.join(format!("{}.wasm", bundled.file));
            let wasm = std::fs::read(&path)
                .map_err(|e| Failure::other(format!("{}: {e}", path.display())))?;
            Ok((wasm, path.display().to_string()))
        }
        None => Ok((bundled.wasm.to_vec(), "embedded".to_owned())),
    }
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let data = tempfile::tempdir().map_err(Failure::other)?;
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.path().to_owned(),
        ..Config::default()
    };
    let broker = edgebus::start(config).await.map_err(Failure::other)?;
    let ca = broker
        .local_ca
        .clone()
        .ok_or_else(|| Failure::other("no local CA"))?;
    println!(
        "▶ broker on {} with data in {}",
        broker.addr,
        data.path().display()
    );
    let client = Client::connect(ClientConfig::new(broker.addr, ca)).await?;

    for name in ["json-filter", "redact", "downsample"] {
        let (wasm, from) = component(args.plugins.as_deref(), name)?;
        let added = client
            .request(&Request::PluginAdd {
                name: name.into(),
                wasm: wasm.into(),
            })
            .await?;
        if let Response::Plugins(p) = added {
            println!(
                "▶ plugin {name} v{} ({} bytes, {from})",
                p[0].version, p[0].size_bytes
            );
        }
    }

    client.create_topic(topic("sensors", 2)).await?;
    let ingest = vec![
        plugin(
            "json-filter",
            &[("field", "celsius"), ("op", ">="), ("value", "-40")],
        ),
        plugin("redact", &[("fields", "owner"), ("mode", "mask")]),
    ];
    println!("▶ topic sensors, ingest chain: {}", chain_text(&ingest));
    client
        .request(&Request::SetIngest {
            topic: "sensors".into(),
            chain: ingest,
            on_failure: FailurePolicy::DeadLetter,
        })
        .await?;
    client.create_topic(topic("sensors-1in10", 2)).await?;
    let pipeline = vec![plugin("downsample", &[("every", "10")])];
    println!(
        "▶ pipeline downsample: sensors → sensors-1in10 via {}",
        chain_text(&pipeline)
    );
    client
        .request(&Request::PipelineCreate {
            name: "downsample".into(),
            from: "sensors".into(),
            to: "sensors-1in10".into(),
            chain: pipeline,
            on_failure: FailurePolicy::DeadLetter,
        })
        .await?;

    let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
    let mut acks = Vec::new();
    let start_ms = edgebus::retention::now_ms();
    for i in 0..args.readings {
        for s in 0..args.sensors {
            let sensor = format!("sensor-{s}");
            let value = match (i + s) % 25 {
                // A glitching probe and a corrupted frame now and then.
                7 => r#"{"sensor":"X","celsius":-999}"#.to_string(),
                13 => "\u{1}garbage".to_string(),
                _ => format!(
                    r#"{{"sensor":"{sensor}","celsius":{:.1},"owner":"ops-{s}@example.com","seq":{i}}}"#,
                    20.0 + f64::from((i * 7 + s * 3) % 50) / 10.0
                ),
            };
            let record = Record::new(value, start_ms + i64::from(i) * 1000).with_key(sensor);
            acks.push(producer.send("sensors", record).await?);
        }
    }
    producer.flush().await?;
    for a in acks {
        a.await?;
    }
    println!(
        "▶ {} sensors sent {} readings",
        args.sensors,
        args.sensors * args.readings
    );

    // Let the pipeline catch up with the source.
    let (_, sources) = client.describe_topic("sensors").await?;
    for _ in 0..200 {
        let done = match client
            .request(&Request::PipelineDescribe {
                name: "downsample".into(),
            })
            .await?
        {
            Response::Pipelines(p) => sources.iter().all(|s| {
                p[0].positions
                    .iter()
                    .any(|(part, next)| *part == s.partition && *next >= s.log_end)
                    || s.log_end == 0
            }),
            _ => false,
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("\n● what a consumer of `sensors` sees (first 3):");
    for r in client
        .fetch("sensors", 0, Position::Earliest, 4096)
        .await?
        .records
        .iter()
        .take(3)
    {
        println!("  {}", String::from_utf8_lossy(&r.value));
    }
    println!("\n● what a consumer of `sensors-1in10` sees (first 3):");
    for r in client
        .fetch("sensors-1in10", 0, Position::Earliest, 4096)
        .await?
        .records
        .iter()
        .take(3)
    {
        println!("  {}", String::from_utf8_lossy(&r.value));
    }
    let filter = vec![plugin(
        "json-filter",
        &[("field", "celsius"), ("op", ">"), ("value", "24")],
    )];
    let mut sub = Subscription::start(
        client.clone(),
        "sensors",
        0,
        Position::Earliest,
        SubscribeConfig {
            chain: filter.clone(),
            ..SubscribeConfig::default()
        },
    )
    .await?;
    let mut hot = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        hot += 1;
    }
    println!(
        "\n● read-path filter {} on partition 0: {hot} records crossed the wire",
        chain_text(&filter)
    );

    println!("\n● counters");
    if let Response::TopicPlugins {
        ingest_counters: c,
        read_counters: r,
        ..
    } = client
        .request(&Request::TopicPlugins {
            topic: "sensors".into(),
        })
        .await?
    {
        println!(
            "  ingest   sensors:      in={} out={} filtered={} failed={} dead-lettered={}",
            c.records_in, c.records_out, c.filtered, c.failed, c.dead_lettered
        );
        println!(
            "  read     sensors:      in={} out={} filtered={} failed={} dead-lettered={}",
            r.records_in, r.records_out, r.filtered, r.failed, r.dead_lettered
        );
    }
    if let Response::Pipelines(p) = client
        .request(&Request::PipelineDescribe {
            name: "downsample".into(),
        })
        .await?
    {
        let c = &p[0].counters;
        println!(
            "  pipeline downsample:   in={} out={} filtered={} failed={} dead-lettered={} [{}]",
            c.records_in, c.records_out, c.filtered, c.failed, c.dead_lettered, p[0].status
        );
    }
    drop(sub);
    broker.shutdown().await;
    print_next_steps();
    Ok(())
}

/// The commands that take the demo's ideas to a broker of one's own.
fn print_next_steps() {
    println!("\n● try next, on a broker of your own");
    for (command, why) in [
        (
            "edgebus serve".to_owned(),
            "in another terminal: data in ~/.local/share/edgebus, 127.0.0.1:7171",
        ),
        (
            "edgebus plugin add --bundled json-filter".to_owned(),
            "register a plugin embedded in edgebus (`plugin list --bundled` names them)",
        ),
        (
            "edgebus topic create sensors --partitions 2 --ingest 'json-filter:field=celsius,op=>=,value=-40'"
                .to_owned(),
            "filter on ingest",
        ),
        (
            r#"echo '{"sensor":"s1","celsius":21.5}' | edgebus produce sensors"#.to_owned(),
            "one record per line",
        ),
        (
            "edgebus consume sensors --filter 'json-filter:field=celsius,op=>,value=20'".to_owned(),
            "filter on the broker's read path",
        ),
        (
            "edgebus bench produce --records 100000".to_owned(),
            "how fast this machine is",
        ),
    ] {
        println!("  # {why}\n  {command}");
    }
    println!("  more: README.md (plugins, pipelines, consumer groups, configuration)");
}

//! `edgebus demo`: the whole idea in one command, on embedded defaults.
//!
//! Starts a broker in a temp dir, registers the bundled plugins, and
//! simulates IoT sensors. On ingest, `json-filter` drops garbage and
//! impossible readings and `redact` masks the owner field; a pipeline
//! downsamples into a second topic; a consumer asks the broker to filter
//! on its read path. Then it prints what consumers see and every counter,
//! and what to try next.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use edgebus_client::{
    Client, ClientConfig, PluginRef, Position, Producer, ProducerConfig, Record, SubscribeConfig,
    Subscription, TopicSpec,
};
use edgebus_proto::frame::{FailurePolicy, Request, Response};
use indicatif::{ProgressBar, ProgressStyle};

use super::Failure;
use super::plugin::chain_text;
use edgebus::config::Config;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  edgebus demo                                    # builds the bundled plugins first (minutes, once)
  edgebus demo --sensors 8 --readings 1000 --plugins plugins/target/wasm32-wasip2/release")]
pub struct DemoArgs {
    /// Simulated sensors.
    #[arg(long, default_value_t = 4)]
    sensors: u32,
    /// Readings per sensor.
    #[arg(long, default_value_t = 100)]
    readings: u32,
    /// Directory holding the built plugins (`*.wasm`); by default the
    /// bundled plugins of this source tree, built with `plugins/build.sh`.
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

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = match args.plugins.clone() {
        Some(dir) => dir,
        None => build_plugins().await?,
    };
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

    for (name, file) in [
        ("json-filter", "json_filter"),
        ("redact", "redact"),
        ("downsample", "downsample"),
    ] {
        let wasm = std::fs::read(dir.join(format!("{file}.wasm"))).map_err(Failure::other)?;
        let added = client
            .request(&Request::PluginAdd {
                name: name.into(),
                wasm: wasm.into(),
            })
            .await?;
        if let Response::Plugins(p) = added {
            println!(
                "▶ plugin {name} v{} ({} bytes)",
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
    print_next_steps(&dir);
    Ok(())
}

/// How often a build that is not shown with a spinner (stderr is not a
/// terminal) says it is still going.
const BUILD_NOTE_INTERVAL: Duration = Duration::from_secs(15);

/// Builds the bundled plugins, showing that it is busy: a first build
/// compiles for minutes.
async fn build_plugins() -> Result<PathBuf, Failure> {
    eprintln!(
        "▶ building the bundled plugins with plugins/build.sh (the first build takes a few \
         minutes; later ones take seconds)"
    );
    let started = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("  {spinner} compiling plugins for wasm32-wasip2 {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(120));
    let on_terminal = std::io::stderr().is_terminal();
    let mut build = tokio::task::spawn_blocking(edgebus::bundled::ensure_built);
    let mut notes = tokio::time::interval(BUILD_NOTE_INTERVAL);
    notes.tick().await;
    let built = loop {
        tokio::select! {
            built = &mut build => break built.map_err(Failure::other)?,
            _ = notes.tick(), if !on_terminal => {
                eprintln!("  … still building ({} s)", started.elapsed().as_secs());
            }
        }
    };
    spinner.finish_and_clear();
    let dir = built.map_err(Failure::other)?;
    eprintln!(
        "▶ plugins built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// The commands that take the demo's ideas to a broker of one's own.
fn print_next_steps(plugins: &Path) {
    let wasm = plugins.join("json_filter.wasm");
    let wasm = std::fs::canonicalize(&wasm).unwrap_or(wasm);
    println!("\n● try next, on a broker of your own");
    for (command, why) in [
        (
            "edgebus serve".to_owned(),
            "in another terminal: data in ~/.local/share/edgebus, 127.0.0.1:7171",
        ),
        (
            format!("edgebus plugin add json-filter {}", wasm.display()),
            "register a plugin",
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

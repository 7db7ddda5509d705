//! Measures what a plugin costs the broker: cold compile, a load served by
//! the compile cache, instantiation (pooling allocator, `InstancePre`,
//! guest `init`) and one 100-record call.
//!
//! ```text
//! cargo run -p edgebus-wasm --example instantiate -- [PLUGIN.wasm [ITERATIONS [KEY=VALUE…]]]
//! ```
//!
//! The default plugin is `tag_version.wasm` from `plugins/build.sh`; the
//! `KEY=VALUE` pairs are the plugin's `init` parameters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgebus_wasm::{Engine, EngineConfig, MemState, PluginRecord};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/wasm32-wasip2/release/tag_version.wasm")
    });
    let iterations: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(1000);
    let params = args
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(anyhow::anyhow!("parameter `{pair}` is not KEY=VALUE")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let cache = tempfile::tempdir()?;
    let config = EngineConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineConfig::default()
    };

    let cold = Engine::new(config.clone())?.load(&wasm)?;
    let engine = Engine::new(config)?;
    let plugin = engine.load(&wasm)?;
    println!(
        "{}: {} bytes, {}; cold compile {:?}, cached load {:?} (cache hits {})",
        path.display(),
        wasm.len(),
        plugin.kind(),
        cold.load_time(),
        plugin.load_time(),
        engine.cache_hits()
    );

    let mut instantiate = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let instance = plugin.instantiate("bench", &params, Box::new(MemState::new()))?;
        instantiate.push(started.elapsed());
        drop(instance);
    }
    report("instantiate + init", &mut instantiate);

    let batch: Vec<PluginRecord> = (0..100)
        .map(|i| PluginRecord::with_value(format!("{{\"n\":{i}}}")))
        .collect();
    let mut instance = plugin.instantiate("bench", &params, Box::new(MemState::new()))?;
    let mut calls = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        instance.process(&batch)?;
        calls.push(started.elapsed());
    }
    report("process 100 records", &mut calls);
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: median {:?}, p90 {:?}, p99 {:?} over {}",
        at(0.5),
        at(0.9),
        at(0.99),
        samples.len()
    );
}

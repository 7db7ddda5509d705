//! The stored form of broker configuration: topics' ingest chains and
//! pipeline definitions.
//!
//! Saved configuration outlives any one release of the wire protocol, so it
//! has its own types and its own versioned encoding (JSON with a `version`
//! field), not encoded request frames: a wire change can never make a saved
//! chain unreadable, and a change here is a deliberate new version.
//!
//! ```text
//! ingest:   {"version":1,"chain":[{"name":"redact","params":[["fields","owner"]]}],"on_failure":"dead-letter"}
//! pipeline: {"version":1,"from":"a","to":"b","chain":[…],"on_failure":"halt"}
//! ```

use edgebus_proto::frame::{FailurePolicy, PluginRef};
use serde::{Deserialize, Serialize};

/// The encoding version this release writes and reads.
pub const VERSION: u32 = 1;

/// Why a saved configuration blob could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SavedError {
    /// Written by a release with another encoding.
    #[error("saved configuration version {found}, this release reads version {VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// Not a configuration blob of the expected kind.
    #[error("malformed saved configuration: {0}")]
    Malformed(#[from] serde_json::Error),
}

#[derive(Serialize, Deserialize)]
struct StoredPlugin {
    name: String,
    params: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum StoredPolicy {
    Skip,
    DeadLetter,
    Halt,
}

#[derive(Serialize, Deserialize)]
struct Ingest {
    version: u32,
    chain: Vec<StoredPlugin>,
    on_failure: StoredPolicy,
}

#[derive(Serialize, Deserialize)]
struct Pipeline {
    version: u32,
    from: String,
    to: String,
    chain: Vec<StoredPlugin>,
    on_failure: StoredPolicy,
}

/// Just the version, read first so a blob of another version is reported
/// as such rather than as malformed.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// A pipeline definition as stored (the name is the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineDefinition {
    /// Source topic.
    pub from: String,
    /// Destination topic.
    pub to: String,
    /// The plugin chain, in order.
    pub chain: Vec<PluginRef>,
    /// What to do with records a plugin fails on.
    pub on_failure: FailurePolicy,
}

fn stored_chain(chain: &[PluginRef]) -> Vec<StoredPlugin> {
    chain
        .iter()
        .map(|p| StoredPlugin {
            name: p.name.clone(),
            params: p.params.clone(),
        })
        .collect()
}

fn chain_of(stored: Vec<StoredPlugin>) -> Vec<PluginRef> {
    stored
        .into_iter()
        .map(|p| PluginRef {
            name: p.name,
            params: p.params,
        })
        .collect()
}

impl From<FailurePolicy> for StoredPolicy {
    fn from(p: FailurePolicy) -> Self {
        match p {
            FailurePolicy::Skip => StoredPolicy::Skip,
            FailurePolicy::DeadLetter => StoredPolicy::DeadLetter,
            FailurePolicy::Halt => StoredPolicy::Halt,
        }
    }
}

impl From<StoredPolicy> for FailurePolicy {
    fn from(p: StoredPolicy) -> Self {
        match p {
            StoredPolicy::Skip => FailurePolicy::Skip,
            StoredPolicy::DeadLetter => FailurePolicy::DeadLetter,
            StoredPolicy::Halt => FailurePolicy::Halt,
        }
    }
}

fn check_version(blob: &[u8]) -> Result<(), SavedError> {
    let Versioned { version } = serde_json::from_slice(blob)?;
    if version == VERSION {
        Ok(())
    } else {
        Err(SavedError::Version { found: version })
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // These types hold only strings, numbers and unit variants, which
    // always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Encodes a topic's ingest chain.
pub fn encode_ingest(chain: &[PluginRef], on_failure: FailurePolicy) -> Vec<u8> {
    to_json(&Ingest {
        version: VERSION,
        chain: stored_chain(chain),
        on_failure: on_failure.into(),
    })
}

/// Decodes what [`encode_ingest`] wrote.
pub fn decode_ingest(blob: &[u8]) -> Result<(Vec<PluginRef>, FailurePolicy), SavedError> {
    check_version(blob)?;
    let ingest: Ingest = serde_json::from_slice(blob)?;
    Ok((chain_of(ingest.chain), ingest.on_failure.into()))
}

/// Encodes a pipeline definition.
pub fn encode_pipeline(definition: &PipelineDefinition) -> Vec<u8> {
    to_json(&Pipeline {
        version: VERSION,
        from: definition.from.clone(),
        to: definition.to.clone(),
        chain: stored_chain(&definition.chain),
        on_failure: definition.on_failure.into(),
    })
}

/// Decodes what [`encode_pipeline`] wrote.
pub fn decode_pipeline(blob: &[u8]) -> Result<PipelineDefinition, SavedError> {
    check_version(blob)?;
    let pipeline: Pipeline = serde_json::from_slice(blob)?;
    Ok(PipelineDefinition {
        from: pipeline.from,
        to: pipeline.to,
        chain: chain_of(pipeline.chain),
        on_failure: pipeline.on_failure.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<PluginRef> {
        vec![
            PluginRef {
                name: "json-filter".into(),
                params: vec![("field".into(), "t".into()), ("op".into(), ">".into())],
            },
            PluginRef {
                name: "redact".into(),
                params: vec![],
            },
        ]
    }

    #[test]
    fn ingest_roundtrip_keeps_chain_and_policy() {
        for policy in [
            FailurePolicy::Skip,
            FailurePolicy::DeadLetter,
            FailurePolicy::Halt,
        ] {
            let blob = encode_ingest(&chain(), policy);
            assert_eq!(decode_ingest(&blob).unwrap(), (chain(), policy));
        }
    }

    /// Pins the stored bytes: a change to them must be a new version, not
    /// an accident of a wire or type change.
    #[test]
    fn ingest_encoding_is_the_documented_json() {
        let blob = encode_ingest(&chain()[1..], FailurePolicy::DeadLetter);
        assert_eq!(
            std::str::from_utf8(&blob).unwrap(),
            r#"{"version":1,"chain":[{"name":"redact","params":[]}],"on_failure":"dead-letter"}"#
        );
    }

    #[test]
    fn pipeline_roundtrip_keeps_definition() {
        let definition = PipelineDefinition {
            from: "a".into(),
            to: "b".into(),
            chain: chain(),
            on_failure: FailurePolicy::Halt,
        };
        assert_eq!(
            decode_pipeline(&encode_pipeline(&definition)).unwrap(),
            definition
        );
    }

    #[test]
    fn decode_other_version_or_garbage_is_a_typed_error() {
        assert!(matches!(
            decode_ingest(br#"{"version":2,"chain":[],"on_failure":"skip"}"#),
            Err(SavedError::Version { found: 2 })
        ));
        for garbage in [&b""[..], b"\x00\x01", br#"{"version":1}"#, b"[]"] {
            assert!(matches!(
                decode_pipeline(garbage),
                Err(SavedError::Malformed(_))
            ));
        }
    }
}

//! Test plugin (transform): each record's value is a command on the 0.2
//! host imports, and the record comes back with the answer as its value:
//!
//! - `set K V`: stores `V` under `K`; answers `ok`;
//! - `expire K V TTL`: stores `V` under `K`, expiring `TTL` ms of event
//!   time from now; answers `ok`;
//! - `get K`: answers the value, or `none`;
//! - `list PREFIX AFTER LIMIT` (`-` for no `AFTER`): answers the keys
//!   listed, comma-separated;
//! - `budget`: answers `state_bytes,state_keys,output_records,output_bytes`.
//!
//! Anything else rejects the batch. The broker's tests drive expiry,
//! listing and budget visibility through a real guest with it.

use edgebus_plugin::prelude::*;

/// The probe; it keeps nothing of its own.
pub struct StateProbe;

impl Transform for StateProbe {
    fn init(_params: &Params) -> Result<Self, String> {
        Ok(StateProbe)
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        let command = String::from_utf8_lossy(&record.value).into_owned();
        let words: Vec<&str> = command.split(' ').collect();
        let answer = match words.as_slice() {
            ["set", key, value] => {
                state::set(key.as_bytes(), value.as_bytes());
                "ok".to_owned()
            }
            ["expire", key, value, ttl] => {
                let ttl: u64 = ttl.parse().map_err(|e| format!("ttl {ttl:?}: {e}"))?;
                state::set_expiring(key.as_bytes(), value.as_bytes(), ttl);
                "ok".to_owned()
            }
            ["get", key] => state::get(key.as_bytes())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_else(|| "none".to_owned()),
            ["list", prefix, after, limit] => {
                let limit: u32 = limit.parse().map_err(|e| format!("limit {limit:?}: {e}"))?;
                let after = (*after != "-").then_some(after.as_bytes());
                let keys: Vec<String> = state::list(prefix.as_bytes(), after, limit)
                    .into_iter()
                    .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
                    .collect();
                keys.join(",")
            }
            ["budget"] => {
                let room = budget::remaining();
                format!(
                    "{},{},{},{}",
                    room.state_bytes, room.state_keys, room.output_records, room.output_bytes
                )
            }
            _ => return Err(format!("unknown command {command:?}")),
        };
        record.value = answer.into_bytes();
        Ok(vec![record])
    }
}

export_transform!(StateProbe);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::TransformHarness;

    fn answer(harness: &mut TransformHarness<StateProbe>, command: &str, at_ms: i64) -> String {
        let record = Record::new(command).with_timestamp_ms(at_ms);
        let out = harness.transform(vec![record]).unwrap();
        String::from_utf8_lossy(&out[0][0].value).into_owned()
    }

    #[test]
    fn commands_set_expire_and_list() {
        let mut harness = TransformHarness::<StateProbe>::new(&[]).unwrap();
        assert_eq!(answer(&mut harness, "set a 1", 0), "ok");
        assert_eq!(answer(&mut harness, "expire b 2 100", 0), "ok");
        assert_eq!(answer(&mut harness, "list - - 10", 50), "");
        assert_eq!(answer(&mut harness, "list  - 10", 50), "a,b");
        assert_eq!(answer(&mut harness, "get b", 100), "none");
    }
}

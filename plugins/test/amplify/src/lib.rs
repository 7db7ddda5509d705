//! Test plugin (transform): turns every record into `copies` copies
//! (default 50000).
//!
//! The broker's tests attach it to check the output budget per batch:
//! each single-record call fits the per-call limits, the sum must not.

use edgebus_plugin::prelude::*;

/// Copies per record unless `copies` says otherwise.
pub const DEFAULT_COPIES: u64 = 50_000;

/// A transform that multiplies its input.
pub struct Amplify {
    copies: usize,
}

impl Transform for Amplify {
    fn init(params: &Params) -> Result<Self, String> {
        let copies = params.get_u64("copies")?.unwrap_or(DEFAULT_COPIES);
        Ok(Amplify {
            copies: copies as usize,
        })
    }

    fn transform(&mut self, record: Record) -> Result<Vec<Record>, String> {
        Ok(vec![record; self.copies])
    }
}

export_transform!(Amplify);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_transform;

    #[test]
    fn transform_emits_the_configured_copies() {
        let outputs = run_transform::<Amplify>(&[("copies", "3")], vec![Record::new("v")]);
        assert_eq!(outputs.map(|o| o[0].len()), Ok(3));
    }
}

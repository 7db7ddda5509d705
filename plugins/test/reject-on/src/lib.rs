//! Test plugin (filter): rejects the whole batch, with a message naming the
//! offending record, when any record's value contains the `needle`
//! parameter (default `reject`); otherwise keeps every record. The broker's
//! tests use it to check that a rejection reaches the producer and that an
//! idempotent producer's next batch is still accepted.

use edgebus_plugin::prelude::*;

/// Rejects batches holding the needle.
pub struct RejectOn {
    needle: Vec<u8>,
}

impl Filter for RejectOn {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(RejectOn {
            needle: params.get("needle").unwrap_or("reject").as_bytes().to_vec(),
        })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        let found = !self.needle.is_empty()
            && record
                .value
                .windows(self.needle.len())
                .any(|w| w == self.needle.as_slice());
        if found {
            return Err(format!(
                "record {:?} is not allowed here",
                String::from_utf8_lossy(&record.value)
            ));
        }
        Ok(true)
    }
}

export_filter!(RejectOn);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_filter;

    #[test]
    fn filter_with_needle_rejects_batch_with_message() {
        let err = run_filter::<RejectOn>(&[], &[Record::new("ok"), Record::new("please reject")])
            .unwrap_err();
        assert!(err.contains("please reject"), "{err}");
    }

    #[test]
    fn filter_without_needle_keeps_everything() {
        let kept =
            run_filter::<RejectOn>(&[("needle", "x")], &[Record::new("a"), Record::new("b")])
                .unwrap();
        assert_eq!(kept, vec![true, true]);
    }
}

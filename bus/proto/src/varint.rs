//! Kafka's variable-length integers, as used inside records.
//!
//! Kafka has two: a *varint* holds an `int32` and a *varlong* an `int64`.
//! Both are zigzag-encoded, so -1 (Kafka's "null" length) takes one byte,
//! then written as unsigned LEB128: seven bits a byte, least significant
//! group first, the high bit set on every byte but the last. Every length
//! and count in a record is a varint, signed like the rest, so a null key
//! or value is `-1` and not a huge unsigned number.

use bytes::BufMut;

use crate::error::DecodeError;

/// Longest encoding of a varint (32 bits in groups of seven).
const VARINT_MAX_LEN: usize = 5;
/// Longest encoding of a varlong (64 bits in groups of seven).
const VARLONG_MAX_LEN: usize = 10;

/// Appends `v` as a varint.
pub fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_unsigned(buf, u64::from(zigzag32(v)));
}

/// Appends `v` as a varlong.
pub fn put_varlong(buf: &mut impl BufMut, v: i64) {
    put_unsigned(buf, zigzag64(v));
}

/// Encoded length of `v` as a varint.
pub fn len_varint(v: i32) -> usize {
    len_unsigned(u64::from(zigzag32(v)))
}

/// Encoded length of `v` as a varlong.
pub fn len_varlong(v: i64) -> usize {
    len_unsigned(zigzag64(v))
}

/// Reads a varint at `pos`; returns the value and the position after it.
///
/// Like Kafka, it refuses an encoding longer than five bytes; unlike Kafka,
/// which drops the excess bits, it also refuses a fifth byte that carries
/// bits beyond 32, since no encoder writes one.
pub fn read_varint(buf: &[u8], pos: usize) -> Result<(i32, usize), DecodeError> {
    let (v, next) = read_unsigned(buf, pos, VARINT_MAX_LEN)?;
    let v = u32::try_from(v).map_err(|_| DecodeError::VarintOverflow { offset: pos })?;
    Ok((((v >> 1) as i32) ^ -((v & 1) as i32), next))
}

/// Reads a varlong at `pos`; returns the value and the position after it.
pub fn read_varlong(buf: &[u8], pos: usize) -> Result<(i64, usize), DecodeError> {
    let (v, next) = read_unsigned(buf, pos, VARLONG_MAX_LEN)?;
    Ok((((v >> 1) as i64) ^ -((v & 1) as i64), next))
}

fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn put_unsigned(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn len_unsigned(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads unsigned LEB128 of at most `max_len` bytes and at most 64 bits.
fn read_unsigned(buf: &[u8], pos: usize, max_len: usize) -> Result<(u64, usize), DecodeError> {
    let mut value = 0u64;
    for i in 0..max_len {
        let Some(&byte) = buf.get(pos + i) else {
            return Err(DecodeError::UnexpectedEof {
                offset: pos,
                need: i + 1,
                have: buf.len().saturating_sub(pos),
            });
        };
        // The tenth byte holds bit 63 only.
        if i == VARLONG_MAX_LEN - 1 && byte > 1 {
            return Err(DecodeError::VarintOverflow { offset: pos });
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, pos + i + 1));
        }
    }
    Err(DecodeError::VarintOverflow { offset: pos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_and_varlong_roundtrip(v in any::<i32>(), l in any::<i64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), len_varint(v));
            prop_assert_eq!(read_varint(&buf, 0).unwrap(), (v, buf.len()));
            let mut buf = Vec::new();
            put_varlong(&mut buf, l);
            prop_assert_eq!(buf.len(), len_varlong(l));
            prop_assert_eq!(read_varlong(&buf, 0).unwrap(), (l, buf.len()));
        }

        #[test]
        fn varint_of_an_int32_is_its_varlong(v in any::<i32>()) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_varint(&mut a, v);
            put_varlong(&mut b, i64::from(v));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn varint_never_panics(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = read_varint(&data, 0);
            let _ = read_varlong(&data, 0);
        }
    }

    /// The bytes Kafka's `ByteUtils.writeVarint` writes for a few values:
    /// zigzag first, so small negatives are short too.
    #[test]
    fn varint_matches_kafka_encoding() {
        for (v, bytes) in [
            (0, &[0x00][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf, bytes, "varint {v}");
        }
    }

    #[test]
    fn varint_longer_than_five_bytes_or_32_bits_is_rejected() {
        assert!(matches!(
            read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 0),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
        assert!(matches!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f], 0),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
    }

    #[test]
    fn varlong_overlong_is_rejected() {
        assert!(matches!(
            read_varlong(&[0xff; 11], 0),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
        assert!(matches!(
            read_varlong(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                0
            ),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
    }
}

//! Unsigned LEB128 varints and zigzag-encoded signed varints.

use bytes::BufMut;

use crate::error::DecodeError;

/// Longest encoding of a `u64`.
const MAX_LEN: usize = 10;

/// Appends `v` as LEB128.
pub fn put_u64(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Appends `v` zigzag-encoded.
pub fn put_i64(buf: &mut impl BufMut, v: i64) {
    put_u64(buf, zigzag(v));
}

/// Encoded length of `v`.
pub fn len_u64(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Encoded length of `v` zigzag-encoded.
pub fn len_i64(v: i64) -> usize {
    len_u64(zigzag(v))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Reads a LEB128 varint at `pos`; returns the value and the position after it.
pub fn read_u64(buf: &[u8], pos: usize) -> Result<(u64, usize), DecodeError> {
    let mut value = 0u64;
    for i in 0..MAX_LEN {
        let Some(&byte) = buf.get(pos + i) else {
            return Err(DecodeError::UnexpectedEof {
                offset: pos,
                need: i + 1,
                have: buf.len().saturating_sub(pos),
            });
        };
        if i == MAX_LEN - 1 && byte > 1 {
            return Err(DecodeError::VarintOverflow { offset: pos });
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, pos + i + 1));
        }
    }
    Err(DecodeError::VarintOverflow { offset: pos })
}

/// Reads a zigzag varint at `pos`.
pub fn read_i64(buf: &[u8], pos: usize) -> Result<(i64, usize), DecodeError> {
    let (v, next) = read_u64(buf, pos)?;
    Ok((((v >> 1) as i64) ^ -((v & 1) as i64), next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_roundtrip(v in any::<u64>(), s in any::<i64>()) {
            let mut buf = Vec::new();
            put_u64(&mut buf, v);
            prop_assert_eq!(buf.len(), len_u64(v));
            prop_assert_eq!(read_u64(&buf, 0).unwrap(), (v, buf.len()));
            let mut buf = Vec::new();
            put_i64(&mut buf, s);
            prop_assert_eq!(buf.len(), len_i64(s));
            prop_assert_eq!(read_i64(&buf, 0).unwrap(), (s, buf.len()));
        }

        #[test]
        fn varint_never_panics(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = read_u64(&data, 0);
            let _ = read_i64(&data, 0);
        }
    }

    #[test]
    fn varint_overlong_is_rejected() {
        assert!(matches!(
            read_u64(&[0xff; 11], 0),
            Err(DecodeError::VarintOverflow { offset: 0 })
        ));
    }
}

//! The event-log byte cursor: bounds-checked little-endian reads that never panic and, when the
//! input is short, name the field and its offset.

use super::EventLogError;

/// A little-endian reader over a byte slice, used both to parse the log and to decode event data.
///
/// A short read is [`EventLogError::Truncated`] naming the field being read and the offset where
/// it starts. Offsets count from the cursor's base, so a cursor over a structure embedded in the
/// log ([`Cursor::at`]) reports positions in the whole log. Description code, which never fails,
/// turns the error into `None` with `.ok()?`.
#[derive(Clone, Debug)]
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`, offsets counted from there.
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self::at(buf, 0)
    }

    /// A cursor over `buf`, which starts at offset `base` of the enclosing input.
    pub(super) fn at(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// The offset of the next byte, in the enclosing input.
    pub(super) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes not yet read, without consuming them.
    pub(super) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EventLogError> {
        if n > self.remaining() {
            return Err(EventLogError::Truncated {
                offset: self.offset(),
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], EventLogError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, EventLogError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, EventLogError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, EventLogError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, EventLogError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u32 size followed by that many bytes. A short read names the offset of the size field.
    pub(super) fn sized(&mut self, what: &'static str) -> Result<&'a [u8], EventLogError> {
        let at = self.offset();
        let size = self.u32(what)?;
        // A size that does not fit usize cannot fit the buffer either.
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        self.take(size, what).map_err(|e| match e {
            EventLogError::Truncated {
                needed, available, ..
            } => EventLogError::Truncated {
                offset: at,
                what,
                needed,
                available,
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_tracks_the_offset() {
        let bytes = [
            1, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12, 8, 7, 6, 5, 4, 3, 2, 1, 0xAA,
        ];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8("a").unwrap(), 1);
        assert_eq!(c.u16("b").unwrap(), 0x1234);
        assert_eq!(c.u32("c").unwrap(), 0x1234_5678);
        assert_eq!(c.offset(), 7);
        assert_eq!(c.u64("d").unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.rest(), [0xAA]);
        assert_eq!(c.rest(), [0xAA], "rest does not consume");
    }

    #[test]
    fn a_short_read_names_the_field_and_its_offset_from_the_base() {
        let mut c = Cursor::at(&[1, 2, 3], 0x100);
        c.u8("first").unwrap();
        assert_eq!(
            c.u32("second").unwrap_err(),
            EventLogError::Truncated {
                offset: 0x101,
                what: "second",
                needed: 4,
                available: 2,
            }
        );
        // A failed read consumes nothing.
        assert_eq!(c.offset(), 0x101);
        assert_eq!(c.u16("third").unwrap(), 0x0302);
    }

    #[test]
    fn sized_reads_a_length_prefix_and_blames_the_size_field() {
        let mut c = Cursor::new(&[2, 0, 0, 0, 9, 8, 0xFF, 0, 0, 0, 1]);
        assert_eq!(c.sized("data").unwrap(), [9, 8]);
        assert_eq!(
            c.sized("data").unwrap_err(),
            EventLogError::Truncated {
                offset: 6,
                what: "data",
                needed: 255,
                available: 1,
            }
        );
        // A size beyond usize on any target cannot fit either.
        let mut c = Cursor::new(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            c.sized("data"),
            Err(EventLogError::Truncated { offset: 0, .. })
        ));
    }
}

//! Part planning: how the chunks MediaRecorder emits become multipart parts.
//!
//! The store's rules (S3's, which the server repeats in
//! [`StartUploadResponse`](shared::api::StartUploadResponse)): every part but the last is
//! at least `min_part_size` (5 MiB), no part exceeds `max_part_size`, and an upload has
//! at most `max_parts` (10,000) parts. The planner buffers chunks and cuts a part as
//! soon as enough bytes are buffered, so a part leaves while recording goes on; a part
//! takes exactly its planned size, slicing the chunk that crosses the boundary (a
//! `Blob.slice` in the browser, which copies nothing), so a huge chunk becomes several
//! parts.
//!
//! A recording's length is unknown while it is recorded, so part sizes grow instead of
//! being chosen up front: parts `1..=1000` have the base size, the next thousand twice
//! that, and so on (capped at `max_part_size`). With the 5 MiB base that is 5 GiB
//! before the first doubling and several terabytes over 10,000 parts, so the part
//! limit is never the reason a recording stops.

use std::collections::VecDeque;

/// A piece of recorded data the planner can measure and cut without copying.
pub trait Chunk: Sized {
    /// Its length in bytes.
    fn byte_len(&self) -> u64;
    /// The bytes `start..end` (within `0..=len`).
    fn slice(&self, start: u64, end: u64) -> Self;
}

/// The store's multipart limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// Smallest size of every part but the last.
    pub min_part_size: u64,
    /// Largest size of any part.
    pub max_part_size: u64,
    /// Most parts one upload may have.
    pub max_parts: u32,
}

impl PartLimits {
    /// S3's limits, which the shared contract names.
    pub const S3: PartLimits = PartLimits {
        min_part_size: shared::MIN_PART_SIZE,
        max_part_size: shared::MAX_PART_SIZE,
        max_parts: shared::MAX_PARTS,
    };
}

/// How many consecutive parts share a size before the size doubles.
pub const PARTS_PER_SIZE_STEP: u32 = 1000;

/// How parts are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSizing {
    limits: PartLimits,
    base: u64,
}

impl PartSizing {
    /// Parts of `base` bytes (raised to the store's minimum, lowered to its maximum),
    /// growing as described in the module doc.
    pub fn new(limits: PartLimits, base: u64) -> Self {
        let base = base.clamp(limits.min_part_size.max(1), limits.max_part_size.max(1));
        Self { limits, base }
    }

    /// The limits in force.
    pub fn limits(&self) -> PartLimits {
        self.limits
    }

    /// The size of part `number` (1-based) when it is not the last.
    pub fn size_of(&self, number: u32) -> u64 {
        let step = (number.saturating_sub(1) / PARTS_PER_SIZE_STEP).min(63);
        self.base
            .checked_shl(step)
            .filter(|s| s >> step == self.base)
            .unwrap_or(u64::MAX)
            .min(self.limits.max_part_size)
    }

    /// The most bytes an upload can hold with this sizing: every part at its size,
    /// and the last allowed part as large as a part may be.
    pub fn capacity(&self) -> u64 {
        (1..self.limits.max_parts).fold(self.limits.max_part_size, |sum, n| {
            sum.saturating_add(self.size_of(n))
        })
    }
}

/// A part ready to be uploaded: its number, its exact size and the chunk pieces that
/// make it up, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPart<C> {
    /// 1-based part number.
    pub number: u32,
    /// Exact size in bytes (the sum of the pieces).
    pub size: u64,
    /// The pieces, in recording order.
    pub pieces: Vec<C>,
}

/// Why the planner cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Nothing at all was recorded, so there is no part to complete an upload with.
    Empty,
    /// The recording outgrew what `max_parts` parts can hold.
    TooLarge {
        /// The bytes that fit.
        capacity: u64,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Empty => f.write_str("nothing was recorded"),
            PlanError::TooLarge { capacity } => write!(
                f,
                "the recording is larger than one upload can hold ({capacity} bytes)"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// Buffers chunks into parts (see the module doc).
#[derive(Debug)]
pub struct PartPlanner<C> {
    sizing: PartSizing,
    next: u32,
    pending: VecDeque<C>,
    pending_len: u64,
    total: u64,
}

impl<C: Chunk> PartPlanner<C> {
    /// An empty planner.
    pub fn new(sizing: PartSizing) -> Self {
        Self {
            sizing,
            next: 1,
            pending: VecDeque::new(),
            pending_len: 0,
            total: 0,
        }
    }

    /// Bytes taken in so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes buffered, not yet in a part.
    pub fn pending(&self) -> u64 {
        self.pending_len
    }

    /// The number the next part will get.
    pub fn next_number(&self) -> u32 {
        self.next
    }

    /// Takes a chunk in and returns the parts that are now complete (often none).
    /// Empty chunks are ignored. Fails once the recording cannot fit in the upload; the
    /// chunk is then not taken.
    pub fn push(&mut self, chunk: C) -> Result<Vec<PlannedPart<C>>, PlanError> {
        let len = chunk.byte_len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let limits = self.sizing.limits;
        if self.next == limits.max_parts && self.pending_len + len > limits.max_part_size {
            return Err(PlanError::TooLarge {
                capacity: self.sizing.capacity(),
            });
        }
        self.pending.push_back(chunk);
        self.pending_len += len;
        self.total += len;
        let mut ready = Vec::new();
        // The last allowed part is never cut early: it must hold whatever comes after.
        while self.next < limits.max_parts && self.pending_len >= self.sizing.size_of(self.next) {
            let size = self.sizing.size_of(self.next);
            ready.push(self.cut(size));
        }
        Ok(ready)
    }

    /// Ends the recording: returns the last part (which may be smaller than the
    /// minimum), or `None` when the bytes ended exactly on a part boundary.
    pub fn finish(&mut self) -> Result<Option<PlannedPart<C>>, PlanError> {
        if self.pending_len > 0 {
            let size = self.pending_len;
            Ok(Some(self.cut(size)))
        } else if self.next == 1 {
            Err(PlanError::Empty)
        } else {
            Ok(None)
        }
    }

    fn cut(&mut self, size: u64) -> PlannedPart<C> {
        let mut pieces = Vec::new();
        let mut taken = 0;
        while taken < size {
            let Some(front) = self.pending.pop_front() else {
                break;
            };
            let len = front.byte_len();
            if taken + len <= size {
                taken += len;
                pieces.push(front);
            } else {
                let want = size - taken;
                pieces.push(front.slice(0, want));
                self.pending.push_front(front.slice(want, len));
                taken = size;
            }
        }
        self.pending_len -= taken;
        let number = self.next;
        self.next += 1;
        PlannedPart {
            number,
            size: taken,
            pieces,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk standing for a run of the recording's bytes: `start..end`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Span(u64, u64);

    impl Chunk for Span {
        fn byte_len(&self) -> u64 {
            self.1 - self.0
        }
        fn slice(&self, start: u64, end: u64) -> Self {
            assert!(start <= end && end <= self.byte_len());
            Span(self.0 + start, self.0 + end)
        }
    }

    const MIB: u64 = 1024 * 1024;

    fn small_limits() -> PartLimits {
        PartLimits {
            min_part_size: 10,
            max_part_size: 100,
            max_parts: 5,
        }
    }

    /// Feeds `sizes` as consecutive spans and returns every part, the last included.
    fn plan(sizing: PartSizing, sizes: &[u64]) -> Result<Vec<PlannedPart<Span>>, PlanError> {
        let mut planner = PartPlanner::new(sizing);
        let mut parts = Vec::new();
        let mut at = 0;
        for &size in sizes {
            parts.extend(planner.push(Span(at, at + size))?);
            at += size;
        }
        parts.extend(planner.finish()?);
        Ok(parts)
    }

    /// Checks that parts are numbered 1..=n and cover the spans exactly, in order.
    fn assert_contiguous(parts: &[PlannedPart<Span>], total: u64) {
        let mut at = 0;
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.number as usize, i + 1);
            assert_eq!(
                part.size,
                part.pieces.iter().map(Chunk::byte_len).sum::<u64>()
            );
            for piece in &part.pieces {
                assert_eq!(piece.0, at, "pieces out of order in part {}", part.number);
                at = piece.1;
            }
        }
        assert_eq!(at, total);
    }

    #[test]
    fn parts_leave_once_five_mib_are_buffered_and_only_the_last_is_smaller() {
        let sizing = PartSizing::new(PartLimits::S3, MIB);
        // One-second chunks of 1.5 MiB for 12 seconds: 18 MiB.
        let sizes = vec![3 * MIB / 2; 12];
        let parts = plan(sizing, &sizes).unwrap();
        let part_sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
        assert_eq!(part_sizes, vec![5 * MIB, 5 * MIB, 5 * MIB, 3 * MIB]);
        assert_contiguous(&parts, 18 * MIB);
    }

    #[test]
    fn a_part_is_cut_as_soon_as_its_bytes_are_in() {
        let mut planner = PartPlanner::new(PartSizing::new(PartLimits::S3, 0));
        assert!(planner.push(Span(0, 4 * MIB)).unwrap().is_empty());
        let ready = planner.push(Span(4 * MIB, 6 * MIB)).unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].pieces,
            vec![Span(0, 4 * MIB), Span(4 * MIB, 5 * MIB)]
        );
        assert_eq!(planner.pending(), MIB);
    }

    #[test]
    fn empty_chunks_are_skipped() {
        let parts = plan(
            PartSizing::new(small_limits(), 10),
            &[0, 4, 0, 0, 6, 0, 3, 0],
        )
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert!(
            parts
                .iter()
                .flat_map(|p| &p.pieces)
                .all(|s| s.byte_len() > 0)
        );
        assert_contiguous(&parts, 13);
    }

    #[test]
    fn a_huge_chunk_is_split_into_several_parts() {
        let parts = plan(PartSizing::new(PartLimits::S3, 0), &[23 * MIB]).unwrap();
        let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
        assert_eq!(sizes, vec![5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB, 3 * MIB]);
        assert_contiguous(&parts, 23 * MIB);
    }

    #[test]
    fn a_recording_ending_on_a_boundary_has_no_empty_last_part() {
        let parts = plan(PartSizing::new(small_limits(), 10), &[10, 10]).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.size).collect::<Vec<_>>(),
            vec![10, 10]
        );
    }

    #[test]
    fn a_short_recording_is_one_small_part() {
        let parts = plan(PartSizing::new(PartLimits::S3, 0), &[1000, 24]).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].size, 1024);
    }

    #[test]
    fn nothing_recorded_is_an_error_not_an_empty_upload() {
        assert_eq!(
            plan(PartSizing::new(PartLimits::S3, 0), &[0, 0]),
            Err(PlanError::Empty)
        );
    }

    #[test]
    fn the_base_size_is_held_to_the_store_limits() {
        let limits = small_limits();
        assert_eq!(PartSizing::new(limits, 1).size_of(1), 10);
        assert_eq!(PartSizing::new(limits, 1_000).size_of(1), 100);
        assert_eq!(PartSizing::new(limits, 42).size_of(1), 42);
    }

    #[test]
    fn part_sizes_double_every_thousand_parts_up_to_the_maximum() {
        let sizing = PartSizing::new(PartLimits::S3, 0);
        assert_eq!(sizing.size_of(1), 5 * MIB);
        assert_eq!(sizing.size_of(1000), 5 * MIB);
        assert_eq!(sizing.size_of(1001), 10 * MIB);
        assert_eq!(sizing.size_of(2001), 20 * MIB);
        assert_eq!(sizing.size_of(10_000), 5 * 512 * MIB);
        let capped = PartSizing::new(
            PartLimits {
                max_part_size: 8 * MIB,
                ..PartLimits::S3
            },
            0,
        );
        assert_eq!(capped.size_of(1001), 8 * MIB);
    }

    #[test]
    fn ten_thousand_parts_hold_a_day_of_high_bitrate_video() {
        // 20 Mbit/s for 24 hours is 216 GB; 5 MiB parts alone would stop at 52 GB.
        let day = 20_000_000 / 8 * 86_400;
        assert!(10_000 * 5 * MIB < day);
        assert!(PartSizing::new(PartLimits::S3, 0).capacity() > day);
    }

    #[test]
    fn the_last_allowed_part_takes_the_rest_and_then_the_recording_is_too_large() {
        let limits = PartLimits {
            min_part_size: 10,
            max_part_size: 25,
            max_parts: 3,
        };
        let sizing = PartSizing::new(limits, 10);
        let mut planner = PartPlanner::new(sizing);
        let mut parts = Vec::new();
        for i in 0..4 {
            parts.extend(planner.push(Span(i * 10, i * 10 + 10)).unwrap());
        }
        // Parts 1 and 2 left; part 3 (the last allowed) holds the remaining 20 bytes.
        assert_eq!(parts.len(), 2);
        assert_eq!(planner.pending(), 20);
        assert_eq!(
            planner.push(Span(40, 50)),
            Err(PlanError::TooLarge { capacity: 45 })
        );
        // The refused chunk was not taken; what was taken still completes.
        parts.extend(planner.finish().unwrap());
        assert_contiguous(&parts, 40);
    }

    #[test]
    fn sizes_far_past_the_limit_do_not_overflow() {
        let sizing = PartSizing::new(
            PartLimits {
                min_part_size: u64::MAX / 2,
                max_part_size: u64::MAX,
                max_parts: u32::MAX,
            },
            0,
        );
        assert_eq!(sizing.size_of(u32::MAX), u64::MAX);
    }
}

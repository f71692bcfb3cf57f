//! Gives freed heap memory back to the kernel after a burst of connections closes. glibc's
//! `free` keeps memory that is not at the top of the heap, so without this the RSS of a node
//! proxy stays at its peak connection count forever. The decision is a pure function of the
//! allocator's free-byte count; the trim itself (in `sys`) runs on its own thread, never on the
//! data path, and glibc's own trim-on-free (which re-faults pages on the data path) is off.

use std::time::Duration;

/// How often the free-byte count is sampled.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// Free memory that must have accumulated since the last trim before trimming again.
pub(crate) const THRESHOLD: usize = 1 << 20;
/// glibc's own trim-on-free threshold, raised so the data path never trims (profiled: with
/// glibc's default, ~10 % of a bulk-copying proxy's samples were page faults on re-grown heaps).
const FREE_TRIM_THRESHOLD: usize = 64 << 20;
/// Allocations served by `mmap` rather than the heap: above every data-path buffer (256 KiB).
const MMAP_THRESHOLD: usize = 4 << 20;

/// Tracks the allocator's free bytes since the last trim.
#[derive(Debug, Default)]
pub(crate) struct Reclaimer {
    baseline: usize,
}

impl Reclaimer {
    /// Whether to trim now, given the allocator's free bytes. Reuse of freed memory lowers the
    /// baseline, so a later release of the same amount triggers a trim again.
    pub(crate) fn should_trim(&mut self, free: usize) -> bool {
        if free >= self.baseline.saturating_add(THRESHOLD) {
            return true;
        }
        self.baseline = self.baseline.min(free);
        false
    }

    /// Records the free bytes left after a trim (top-of-heap trimming shrinks them).
    pub(crate) fn trimmed(&mut self, free_after: usize) {
        self.baseline = free_after;
    }
}

/// Starts the reclaimer thread (glibc only; other allocators return memory themselves).
pub(crate) fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if !ferry_sys::tune_heap(FREE_TRIM_THRESHOLD, MMAP_THRESHOLD) {
            tracing::warn!("cannot set the allocator's trim and mmap thresholds; bulk copies will fault in fresh pages");
        }
        let spawned = std::thread::Builder::new().name("ferry-heap".into()).spawn(|| {
            let mut r = Reclaimer::default();
            loop {
                std::thread::sleep(INTERVAL);
                let free = ferry_sys::heap_free_bytes();
                if r.should_trim(free) {
                    ferry_sys::release_free_heap();
                    let after = ferry_sys::heap_free_bytes();
                    tracing::debug!(free_before = free, free_after = after, "returned free heap memory to the kernel");
                    r.trimmed(after);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the heap reclaimer; memory freed after connection bursts stays resident");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_megabyte_more_is_free_than_at_the_last_trim() {
        let mib = THRESHOLD;
        let mut r = Reclaimer::default();
        // (free bytes observed, trim expected, free left after a trim)
        let steps = [
            (100, false, 0),
            (mib - 1, false, 0),
            (mib + 100, true, 3 * mib / 2),
            (3 * mib / 2, false, 0),
            (2 * mib, false, 0),
            // memory reused, then freed again: the lower baseline makes the new release count
            (mib / 2, false, 0),
            (mib / 2 + mib, true, mib / 4),
            (mib / 4, false, 0),
        ];
        for (i, (free, want, after)) in steps.into_iter().enumerate() {
            assert_eq!(r.should_trim(free), want, "step {i}: {free} free bytes");
            if want {
                r.trimmed(after);
            }
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_freed_small_blocks_back_to_the_kernel() {
        fn rss_kib() -> usize {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4
        }
        // 32 MB of blocks, each followed by a small live one, as the buffers of closed
        // connections sit between those of open ones: `free` alone cannot return them.
        let (blocks, pins): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..2048).map(|i| (vec![i as u8; 16000], vec![1u8; 1000])).unzip();
        drop(blocks);
        let mut r = Reclaimer::default();
        assert!(r.should_trim(ferry_sys::heap_free_bytes()), "32 MB freed is above the threshold");
        let before = rss_kib();
        ferry_sys::release_free_heap();
        let after = rss_kib();
        assert!(before >= after + 16 * 1024, "RSS went from {before} KiB to {after} KiB");
        drop(pins);
    }
}
